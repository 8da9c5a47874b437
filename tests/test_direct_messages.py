"""Private conversations against a real Synapse: what a stranger may read with ``archive``,
one conversation per person, a cap on conversations, personal commands matched on the
whole message and only where the person is alone with the bot, and commands of different
rooms that never wait for each other."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.model import Message
from bot.store import NewDelivery, SqliteStore
from bot.store.sqlite import DB_FILENAME
from tests.botkit import BotRunner, bot_config, load, write_config
from tests.support import (
    FeedServer,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    RegisteredUser,
    SynapseServer,
    make_items,
)
from tests.support.rows import rows_mentioning
from tests.test_subscriptions import open_dm, say


async def until(check: Any, what: str, timeout: float = 20) -> None:
    """Wait for ``await check()`` to be true (generous deadline for a busy machine)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def accepted_dm(client: MemberClient, bot: RegisteredUser) -> str:
    dm = await open_dm(client, bot)

    async def joined() -> bool:
        return bot.user_id in await client.joined_members(dm)
    await until(joined, "the bot did not accept the conversation")
    return dm


async def resolve(client: MemberClient, alias: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        try:
            return await client.resolve_alias(alias)
        except Exception:
            assert time.monotonic() < deadline, f"{alias} was not created"
            await asyncio.sleep(0.3)


async def bot_membership(client: MemberClient, room: str, bot: RegisteredUser) -> str | None:
    for event in await client.room_state(room):
        if event.get("type") == "m.room.member" and event.get("state_key") == bot.user_id:
            return str(event["content"].get("membership"))
    return None


async def test_archive_in_private_shows_a_private_rooms_items_only_to_its_members(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner) -> None:
    bot = await new_user("newsbot")
    tag = uuid.uuid4().hex[:6]
    secret_path, open_path = feed_path + "-secret", feed_path + "-open"
    feed_server.set_feed(secret_path, make_items(2, prefix=f"secret{tag}"))
    feed_server.set_feed(open_path, make_items(2, prefix=f"open{tag}"))
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        rooms=[{"alias": f"prive-{tag}", "name": "Bureau", "join_rule": "invite",
                "history": "joined"},
               {"alias": f"ouvert-{tag}", "name": "Actualités"}],
        feeds=[{"name": "bureau", "url": feed_server.url(secret_path),
                "rooms": [f"#prive-{tag}:localhost"], "backfill": 2},
               {"name": "actus", "url": feed_server.url(open_path),
                "rooms": [f"#ouvert-{tag}:localhost"], "backfill": 2}])), bot)
    as_bot = await member(bot)           # the bot's account, to invite a member
    insider_user = await new_user("membre")
    insider = await member(insider_user)
    stranger = await member(await new_user("inconnu"))
    running = await run_bot(config)
    try:
        private_room = await resolve(insider, f"#prive-{tag}:localhost")
        await as_bot.invite(private_room, insider_user.user_id)
        await insider.join(private_room)
        insider_dm = await accepted_dm(insider, bot)
        answer = ""
        deadline = time.monotonic() + 30
        while f"secret{tag}-2" not in answer or f"open{tag}-2" not in answer:
            assert time.monotonic() < deadline, f"the member's archive: {answer!r}"
            await asyncio.sleep(0.5)
            answer = await say(insider, insider_dm, bot, "archive 20")

        stranger_dm = await accepted_dm(stranger, bot)
        seen = await say(stranger, stranger_dm, bot, "archive 20")
        assert f"open{tag}-2" in seen            # a public room anyone may read
        assert f"secret{tag}" not in seen        # not the invite-only room's items
        assert "Bureau" not in seen

        # Membership counts when they ask: gone once the member left the room.
        await insider.leave(private_room)
        after = await say(insider, insider_dm, bot, "archive 20")
        assert f"secret{tag}" not in after
        assert f"open{tag}-2" in after
    finally:
        await running.stop()


async def test_one_conversation_per_person_left_when_they_leave_and_capped(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path, run_bot: BotRunner,
        caplog: pytest.LogCaptureFixture) -> None:
    bot = await new_user("newsbot")
    tag = uuid.uuid4().hex[:6]
    feed_server.set_feed(feed_path, make_items(1))
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state", language="fr",
        commands={"max_conversations": 2},
        rooms=[{"alias": f"annonces-{tag}", "name": "Annonces"}],
        feeds=[{"name": "actus", "url": feed_server.url(feed_path),
                "rooms": [f"#annonces-{tag}:localhost"]}])), bot)
    as_bot = await member(bot)
    alice = await member(await new_user("alice"))
    bob = await member(await new_user("bob"))
    carol = await member(await new_user("carol"))
    caplog.set_level(logging.INFO)
    running = await run_bot(config)
    try:
        first = await accepted_dm(alice, bot)
        assert await say(alice, first, bot, "help")

        # A second conversation from the same person: one line pointing to the first.
        second = await open_dm(alice, bot)

        async def pointed() -> bool:
            notices = await alice.messages(second, sender=bot.user_id)
            return bool(notices) and await bot_membership(alice, second, bot) == "leave"
        await until(pointed, "the second conversation was not answered and left")
        [notice] = await alice.messages(second, sender=bot.user_id)
        assert notice["content"]["msgtype"] == "m.notice"
        assert notice["content"]["body"] == ("Nous avons déjà une conversation privée : "
                                             f"écrivez-moi là-bas, https://matrix.to/#/{first}")
        assert first in await as_bot.joined_rooms()

        await accepted_dm(bob, bot)          # two conversations: the cap
        refused = await open_dm(carol, bot)

        async def declined() -> bool:
            return await bot_membership(carol, refused, bot) == "leave"
        await until(declined, "the invitation over the cap was not declined")
        assert refused not in await as_bot.joined_rooms()
        assert any("max_conversations" in r.getMessage() for r in caplog.records)

        # Alice leaves her conversation: so does the bot, which frees a place.
        await alice.leave(first)

        async def left() -> bool:
            return first not in await as_bot.joined_rooms()
        await until(left, "the bot stayed in a conversation its person left")
        await accepted_dm(carol, bot)
    finally:
        await running.stop()


async def test_personal_commands_are_whole_messages_for_one_person_and_forget_only_the_sender(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner) -> None:
    bot = await new_user("newsbot")
    owner = await member(await new_user("owner"))
    room = await owner.create_room(name="actus")
    feed_server.set_feed(feed_path, make_items(1))
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "actus", "url": feed_server.url(feed_path), "rooms": [room],
                "public": True, "backfill": 1}])), bot)
    alice_user, bob_user = await new_user("alice"), await new_user("bob")
    alice, bob = await member(alice_user), await member(bob_user)
    running = await run_bot(config)
    app = running.app
    try:
        await owner.wait_for_messages(room, 1, sender=bot.user_id)
        dm = await accepted_dm(alice, bot)
        # A sentence that ends with "forget me" is not the command.
        assert (await say(alice, dm, bot, "please never forget me")).startswith(
            "I don’t know “please never forget me”")
        assert (await say(alice, dm, bot, "help me")).startswith("I don’t know")
        assert (await say(alice, dm, bot, "subscribe")).startswith("Subscribed to actus")
        assert await say(alice, dm, bot, "digest weekly") == "Digest: weekly."
        feed_server.set_feed(feed_path, make_items(2))

        async def waiting() -> bool:
            return bool(await app.store.digest_items(alice_user.user_id))
        await until(waiting, "the new item did not wait for alice's digest")
        assert bot.user_id in await alice.joined_members(dm)

        # Bob joins alice's conversation: no personal command binds him to it...
        await alice.invite(dm, bob_user.user_id)
        await bob.join(dm)
        refusal = await say(bob, dm, bot, "subscribe")
        assert refusal.startswith("This conversation has more than two members")
        assert await app.store.subscriber(bob_user.user_id) is None
        assert (await say(alice, dm, bot, "list")).startswith("This conversation has")
        # ... and his "forget me" forgets him only: alice keeps her item and her bot.
        assert (await say(bob, dm, bot, "forget me")).startswith("Done: I deleted")
        await asyncio.sleep(1)
        assert bot.user_id in await alice.joined_members(dm)
        subscriber = await app.store.subscriber(alice_user.user_id)
        assert subscriber is not None and subscriber.dm_room == dm
        assert subscriber.feeds == ("actus",)
        assert [i.entry_id for i in await app.store.digest_items(alice_user.user_id)] == \
            [make_items(2)[0].guid]

        # Alice leaves her conversation: the bot leaves it too and forgets her.
        await alice.leave(dm)

        async def closed() -> bool:
            return bot.user_id not in await bob.joined_members(dm)
        await until(closed, "the bot stayed after its person left")
        assert await app.store.subscriber(alice_user.user_id) is None
        # Nothing of the conversation is kept: not the answers given there (which named
        # bob and alice), not the room.
        await asyncio.sleep(0.5)
        assert rows_mentioning(tmp_path / "state" / DB_FILENAME, dm, alice_user.user_id,
                               bob_user.user_id) == []
    finally:
        await running.stop()


async def test_a_slow_add_and_a_flood_of_direct_messages_never_delay_another_rooms_command(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner) -> None:
    bot = await new_user("newsbot")
    owner_user = await new_user("owner")
    owner = await member(owner_user)
    slow_room = await owner.create_room(name="lent")
    busy_room = await owner.create_room(name="actus")
    feed_server.set_feed(feed_path, make_items(1))
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()          # a server that takes its time (up to the timeout)
        return web.Response(status=503)
    slow_path = feed_path + "-slow"
    feed_server.set_handler(slow_path, slow)
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        admins=[owner_user.user_id],
        fetch={"allow_private_networks": True, "timeout": "60s"},
        commands={"rate_limit": 5, "rate_window": "1h"},
        feeds=[{"name": "actus", "url": feed_server.url(feed_path), "rooms": [busy_room],
                "public": True, "backfill": 1}])), bot)
    flooder = await member(await new_user("flood"))
    running = await run_bot(config)
    try:
        await owner.wait_for_messages(busy_room, 1, sender=bot.user_id)
        dm = await accepted_dm(flooder, bot)
        await owner.invite(slow_room, bot.user_id)

        async def in_slow_room() -> bool:
            return bot.user_id in await owner.joined_members(slow_room)
        await until(in_slow_room, "the bot did not join the admin's room")
        add = await owner.send_text(slow_room, f"!news add {feed_server.url(slow_path)}")
        for batch in range(10):
            await asyncio.gather(*(flooder.send_text(dm, f"list {batch}-{i}")
                                   for i in range(25)))
        started = time.monotonic()
        answer = await say(owner, busy_room, bot, "!news pause actus")
        waited = time.monotonic() - started
        assert answer == "Paused “actus” in this room."
        assert waited < 15, f"the pause waited {waited:.0f} s behind other rooms"
        # The add is still waiting for its server: nothing answered it yet.
        assert not [e for e in await owner.messages(slow_room, sender=bot.user_id)
                    if e["content"].get("m.relates_to", {}).get("m.in_reply_to", {})
                    .get("event_id") == add]
        await asyncio.sleep(1)
        replies = [e["content"]["body"] for e in await flooder.messages(dm, sender=bot.user_id)]
        assert 1 <= len(replies) <= 6          # five answers, one "slow down", no more
    finally:
        release.set()
        await running.stop()


async def test_a_conversation_its_person_left_leaves_nothing_behind(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner) -> None:
    """Someone who only asked for help (never subscribed) and left: the answers given
    there, the room and who it was with are not kept."""
    bot = await new_user("newsbot")
    owner = await member(await new_user("owner"))
    room = await owner.create_room(name="actus")
    feed_server.set_feed(feed_path, make_items(1))
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "actus", "url": feed_server.url(feed_path), "rooms": [room],
                "public": True}])), bot)
    carol_user = await new_user("carol")
    carol = await member(carol_user)
    running = await run_bot(config)
    try:
        dm = await accepted_dm(carol, bot)
        assert (await say(carol, dm, bot, "help")).startswith("Hello! I can send you the news")
        await carol.leave(dm)

        async def forgotten() -> bool:
            return rows_mentioning(tmp_path / "state" / DB_FILENAME, dm,
                                   carol_user.user_id) == []
        await until(forgotten, "the conversation's rows were kept after its person left")
        assert dm not in running.app.transport.direct_rooms()
    finally:
        await running.stop()


async def test_a_goodbye_sent_just_before_a_stop_is_followed_by_leaving_at_the_next_start(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner) -> None:
    """Leaving after "forget me" is part of the goodbye's delivery: a bot stopped right
    after sending it leaves the conversation, and keeps nothing of it, when it starts
    again."""
    bot = await new_user("newsbot")
    owner = await member(await new_user("owner"))
    room = await owner.create_room(name="actus")
    feed_server.set_feed(feed_path, make_items(1))
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "actus", "url": feed_server.url(feed_path), "rooms": [room],
                "public": True}])), bot)
    dave_user = await new_user("dave")
    dave = await member(dave_user)
    running = await run_bot(config)
    dm = await accepted_dm(dave, bot)
    assert (await say(dave, dm, bot, "help")).startswith("Hello! I can send you the news")
    await running.stop()
    # The goodbye went out, and the bot stopped before it could leave.
    store = SqliteStore.open(tmp_path / "state")
    await store.enqueue("newsbot:replies", [NewDelivery(
        "reply:$goodbye", dm, Message("Bye", "Bye"), kind="goodbye", subject="$goodbye")],
        time.time())
    row = await store.next_pending(dm)
    assert row is not None and row.kind == "goodbye"
    await store.mark_sent(row.key, "$sent", time.time())
    store.close()
    await running.start()
    try:
        async def left() -> bool:
            return bot.user_id not in await dave.joined_members(dm)
        await until(left, "the bot stayed in a conversation it had said goodbye to")

        async def forgotten() -> bool:
            return rows_mentioning(tmp_path / "state" / DB_FILENAME, dm,
                                   dave_user.user_id) == []
        await until(forgotten, "the conversation was kept after the goodbye")
    finally:
        await running.stop()
