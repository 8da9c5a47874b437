"""The bot's private conversations follow what really happens to them, against a real
Synapse: welcomes open conversations only under ``commands.max_conversations`` (one log
line per period, not per newcomer) and let go of those nobody joined; a conversation the
bot was kicked from (or lost while stopped) is forgotten; the delivery worker of a
conversation the bot no longer has ends, and new deliveries start another."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

import pytest

from bot.config import Config
from bot.store import SqliteStore
from bot.transport.matrix import DIRECT_ROOMS_KEY
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
from tests.support.clock import OffsetClock
from tests.support.synapse import MatrixAPIError
from tests.test_direct_messages import accepted_dm, resolve, until
from tests.test_subscriptions import say


async def welcome_scene(synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
                        new_user: NewUserFactory, tmp_path: Path,
                        cap: int) -> tuple[RegisteredUser, Config, str]:
    bot = await new_user("newsbot")
    local = f"accueil-{uuid.uuid4().hex[:6]}"
    feed_server.set_feed(feed_path, make_items(1))
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        commands={"max_conversations": cap},
        rooms=[{"alias": local, "name": "Actualités", "welcome": "dm"}],
        feeds=[{"name": "actus", "url": feed_server.url(feed_path),
                "rooms": [f"#{local}:localhost"], "backfill": 1}])), bot)
    return bot, config, f"#{local}:localhost"


async def newcomer(new_user: NewUserFactory, member: MemberFactory, room: str,
                   name: str) -> MemberClient:
    client = await member(await new_user(name))
    deadline = time.monotonic() + 20
    while True:
        try:
            await client.join(room)     # the room may still be being set up
            return client
        except MatrixAPIError:
            assert time.monotonic() < deadline, f"{name} could not join the room"
            await asyncio.sleep(0.3)


async def invited(client: MemberClient, what: str) -> str:
    """The one private conversation the bot invited this newcomer to."""
    deadline = time.monotonic() + 20
    while not (invites := await client.pending_invites()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.3)
    [dm] = invites
    return dm


async def kickable_dm(client: MemberClient, bot: RegisteredUser) -> str:
    """A conversation whose person may kick the bot (``trusted_private_chat``, Element's
    preset, gives both the same power level: nobody can kick there)."""
    answer = await client._call("POST", "/createRoom", body={
        "preset": "private_chat", "is_direct": True, "invite": [bot.user_id]})
    dm = str(answer["room_id"])

    async def joined() -> bool:
        return bot.user_id in await client.joined_members(dm)
    await until(joined, "the bot did not accept the conversation")
    return dm


def cap_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "bot.welcome" and "max_conversations" in r.getMessage()]


async def test_welcomes_open_conversations_only_under_the_cap_with_one_log_line(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path, run_bot: BotRunner,
        caplog: pytest.LogCaptureFixture) -> None:
    bot, config, alias = await welcome_scene(synapse, feed_server, feed_path, new_user,
                                             tmp_path, cap=2)
    caplog.set_level(logging.INFO)
    alice = await member(await new_user("alice"))
    running = await run_bot(config)
    app = running.app
    try:
        room = await resolve(alice, alias)
        dm = await accepted_dm(alice, bot)     # a person who wrote to the bot: one place
        first = await newcomer(new_user, member, room, "n1")
        await invited(first, "the first newcomer was not welcomed")      # two: the cap
        # Many accounts joining: no conversation for any of them, one line in the log.
        crowd = [await newcomer(new_user, member, room, f"crowd{i}") for i in range(3)]
        await until(lambda: asyncio.sleep(0, bool(cap_lines(caplog))),
                    "no line said that newcomers were not welcomed")
        # A place frees (alice leaves): the next newcomer is welcomed again. Welcomes are
        # handled in order, so the crowd was handled before.
        await alice.leave(dm)
        await until(lambda: asyncio.sleep(0, dm not in app.transport.direct_rooms()),
                    "the bot kept the conversation alice left")
        last = await newcomer(new_user, member, room, "n2")
        await invited(last, "a newcomer was not welcomed under the cap")
        for person in crowd:
            assert await person.pending_invites() == []
        assert len(cap_lines(caplog)) == 1
        assert len(app.transport.direct_rooms()) == 2
    finally:
        await running.stop()


async def test_welcome_conversations_nobody_joins_are_let_go_after_a_week_or_when_declined(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner) -> None:
    bot, config, alias = await welcome_scene(synapse, feed_server, feed_path, new_user,
                                             tmp_path, cap=2)
    clock = OffsetClock()
    as_bot = await member(bot)
    running = await run_bot(config, clock=clock)
    app = running.app
    try:
        room = await resolve(as_bot, alias)
        first = await newcomer(new_user, member, room, "n1")
        second = await newcomer(new_user, member, room, "n2")
        first_dm = await invited(first, "the first newcomer was not welcomed")
        second_dm = await invited(second, "the second newcomer was not welcomed")
        # A week passes and nobody joined: the places are not held forever.
        clock.offset = 8 * 86400
        third = await newcomer(new_user, member, room, "n3")
        third_dm = await invited(third, "the unanswered welcomes still held every place")
        joined = await as_bot.joined_rooms()
        for dm in (first_dm, second_dm):
            assert dm not in joined
            assert dm not in app.transport.direct_rooms()
        # Declined at once: left at once.
        await third.leave(third_dm)
        await until(lambda: asyncio.sleep(0, third_dm not in app.transport.direct_rooms()),
                    "the bot kept a welcome conversation whose invitation was declined")
        assert third_dm not in await as_bot.joined_rooms()
        assert app.transport.direct_rooms() == {}
    finally:
        await running.stop()


async def test_a_conversation_the_bot_lost_is_forgotten_and_frees_its_place(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner) -> None:
    bot = await new_user("newsbot")
    owner = await member(await new_user("owner"))
    room = await owner.create_room(name="actus")
    feed_server.set_feed(feed_path, make_items(1))
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        commands={"max_conversations": 1},
        feeds=[{"name": "actus", "url": feed_server.url(feed_path), "rooms": [room],
                "public": True, "backfill": 1}])), bot)
    alice_user = await new_user("alice")
    alice = await member(alice_user)
    running = await run_bot(config)
    app = running.app
    try:
        await owner.wait_for_messages(room, 1, sender=bot.user_id)
        first = await kickable_dm(alice, bot)
        assert (await say(alice, first, bot, "subscribe")).startswith("Subscribed to actus")
        await alice.kick(first, bot.user_id)
        await until(lambda: asyncio.sleep(0, first not in app.transport.direct_rooms()),
                    "the bot still remembers a conversation it was kicked from")
        assert await app.store.subscriber(alice_user.user_id) is None     # nothing reaches her
        # A new conversation is accepted (the one place is free), not pointed to the old.
        second = await kickable_dm(alice, bot)
        assert (await say(alice, second, bot, "subscribe")).startswith("Subscribed to actus")
        assert list(app.transport.direct_rooms()) == [second]
    finally:
        await running.stop()

    # Lost while the bot was stopped (or remembered by an older newsbot): forgotten at
    # start, so the person is not pointed to a room the bot is not in.
    await alice.kick(second, bot.user_id)
    store = SqliteStore.open(config.storage.path)
    await store.put(DIRECT_ROOMS_KEY, json.dumps({second: alice_user.user_id,
                                            "!gone:localhost": "@someone:localhost"}))
    store.close()
    running = await run_bot(config)
    app = running.app
    try:
        third = await accepted_dm(alice, bot)
        # Remembered once the bot checked the room has only the two of them (a member
        # can see the bot joined a moment before).
        await until(lambda: asyncio.sleep(0, list(app.transport.direct_rooms()) == [third]),
                    "the new conversation was not remembered alone")
        assert await app.store.subscriber(alice_user.user_id) is None
    finally:
        await running.stop()


async def test_the_delivery_worker_of_a_conversation_the_bot_no_longer_has_ends(
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
    alice = await member(await new_user("alice"))
    bob = await member(await new_user("bob"))
    running = await run_bot(config)
    app = running.app
    try:
        await owner.wait_for_messages(room, 1, sender=bot.user_id)
        alice_dm = await accepted_dm(alice, bot)
        bob_dm = await accepted_dm(bob, bot)
        for client, dm in ((alice, alice_dm), (bob, bob_dm)):
            assert (await say(client, dm, bot, "subscribe")).startswith("Subscribed")
        feed_server.set_feed(feed_path, make_items(2))
        title = make_items(2)[0].title
        for client, dm in ((alice, alice_dm), (bob, bob_dm)):
            async def got_item(client: MemberClient = client, dm: str = dm) -> bool:
                return any(e["content"]["body"].startswith(title)
                           for e in await client.messages(dm, sender=bot.user_id))
            await until(got_item, "the subscriber did not get the new item")
        assert {alice_dm, bob_dm} <= set(app.delivery_workers())

        # The person leaves (so does the bot): the conversation's worker ends.
        await alice.leave(alice_dm)
        await until(lambda: asyncio.sleep(0, alice_dm not in app.delivery_workers()),
                    "the worker of a conversation the bot left kept running")
        # "forget me": the bot leaves, the worker ends.
        assert (await say(bob, bob_dm, bot, "forget me")).startswith("Done")
        await until(lambda: asyncio.sleep(0, bob_dm not in app.delivery_workers()),
                    "the worker of a forgotten conversation kept running")
        # The room's own worker stays; deliveries to a room start its worker again (it
        # then ends by itself: nothing to send, and no conversation any more).
        assert room in app.delivery_workers()
        app._enqueued([alice_dm])
        assert alice_dm in app.delivery_workers()
        await until(lambda: asyncio.sleep(0, alice_dm not in app.delivery_workers()),
                    "a worker restarted for a room the bot does not have did not end")
        assert room in app.delivery_workers()
    finally:
        await running.stop()
