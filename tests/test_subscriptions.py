"""Personal subscriptions by direct message, archive and stats, against a real Synapse."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from bot.store.sqlite import DB_FILENAME
from tests.botkit import BotRunner, bot_config, load, write_config
from tests.support import (
    FeedServer,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    RegisteredUser,
    SynapseServer,
    free_port,
    make_items,
)
from tests.support.clock import OffsetClock
from tests.support.rows import rows_mentioning


async def open_dm(client: MemberClient, bot: RegisteredUser) -> str:
    answer = await client._call("POST", "/createRoom", body={
        "preset": "trusted_private_chat", "is_direct": True, "invite": [bot.user_id]})
    return str(answer["room_id"])


async def say(client: MemberClient, room: str, bot: RegisteredUser, body: str) -> str:
    """Write in the conversation; return the bot's answer."""
    event_id = await client.send_text(room, body)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for event in await client.messages(room, sender=bot.user_id):
            relates = event["content"].get("m.relates_to", {})
            if relates.get("m.in_reply_to", {}).get("event_id") == event_id:
                return str(event["content"]["body"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"no answer to {body!r}")


async def test_a_dm_subscriber_gets_each_item_once_a_digest_once_and_can_be_forgotten(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner) -> None:
    bot = await new_user("newsbot")
    owner = await member(await new_user("owner"))
    reader_user = await new_user("lectrice")
    reader = await member(reader_user)
    room = await owner.create_room(name="actus")
    feed_server.set_feed(feed_path, make_items(1))
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state", language="fr",
        feeds=[{"name": "actus", "url": feed_server.url(feed_path), "rooms": [room],
                "public": True, "backfill": 1}])), bot)
    clock = OffsetClock()
    running = await run_bot(config, clock=clock)
    app = running.app
    try:
        await owner.wait_for_messages(room, 1, sender=bot.user_id)
        dm = await open_dm(reader, bot)
        deadline = time.monotonic() + 15
        while bot.user_id not in await reader.joined_members(dm):
            assert time.monotonic() < deadline, "the bot did not accept the conversation"
            await asyncio.sleep(0.2)
        assert (await say(reader, dm, bot, "aide")).startswith("Je ne connais pas")
        assert (await say(reader, dm, bot, "help")).startswith("Bonjour !")
        assert await say(reader, dm, bot, "subscribe") == \
            "Abonnement à actus enregistré. Les nouveaux articles arriveront ici."
        feed_server.set_feed(feed_path, make_items(2))
        await reader.wait_for_messages(dm, 1, msgtypes=["m.notice"],
                                       sender=bot.user_id, timeout=20)
        await owner.wait_for_messages(room, 2, sender=bot.user_id)
        items_in_dm = [e for e in await reader.messages(dm, sender=bot.user_id)
                       if "m.relates_to" not in e["content"]]
        assert [e["content"]["body"].splitlines()[0] for e in items_in_dm] == \
            [make_items(2)[0].title]

        # A correction reaches the subscriber too, as an edit of their message.
        corrected = make_items(2)
        corrected[0].title = "Élection du bureau : résultats corrigés"
        feed_server.set_feed(feed_path, corrected)
        deadline = time.monotonic() + 20
        edits: list[dict[str, Any]] = []
        while not edits and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            edits = [e["content"] for e in await reader.messages(dm, sender=bot.user_id)
                     if e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace"]
        assert edits, "the subscriber's copy was not corrected"
        assert edits[0]["m.relates_to"]["event_id"] == items_in_dm[0]["event_id"]
        assert edits[0]["m.new_content"]["body"].startswith(corrected[0].title)

        # A weekly digest instead: nothing per item, one message when the week is over.
        assert await say(reader, dm, bot, "digest weekly") == "Résumé : hebdomadaire."
        feed_server.set_feed(feed_path, make_items(4))
        await owner.wait_for_messages(room, 4, sender=bot.user_id)
        await asyncio.sleep(1)
        assert len([e for e in await reader.messages(dm, sender=bot.user_id)
                    if "m.relates_to" not in e["content"]]) == 1      # no item, no digest
        assert await app.subscriptions.tick() == []          # not due yet
        clock.offset = 7 * 86400 + 60
        assert await app.subscriptions.tick() == [dm]
        assert await app.subscriptions.tick() == []          # once
        deadline = time.monotonic() + 20
        digests: list[dict[str, Any]] = []
        while not digests and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            digests = [e["content"] for e in await reader.messages(dm, sender=bot.user_id)
                       if e["content"]["body"].startswith("Votre résumé hebdomadaire")]
        assert len(digests) == 1
        digest = digests[0]
        assert digest["body"].startswith("Votre résumé hebdomadaire : 2 nouvel(s) article(s).")
        assert make_items(4)[0].title in digest["body"]
        assert make_items(4)[1].title in digest["body"]

        archive = await say(reader, dm, bot, "archive 2")
        assert archive.splitlines()[0] == "Les derniers numéros :"
        assert make_items(4)[0].title in archive

        assert await say(reader, dm, bot, "forget me") == \
            "C’est fait : j’ai effacé tout ce que je gardais sur vous. Au revoir !"
    finally:
        await running.stop()
    assert rows_mentioning(tmp_path / "state" / DB_FILENAME, reader_user.user_id, dm) == []


async def test_stats_and_archive_in_a_room(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner) -> None:
    bot = await new_user("newsbot")
    owner = await member(await new_user("owner"))
    room = await owner.create_room(name="stats")
    for name in ("a", "b"):
        await (await member(await new_user(name))).join(room)
    feed_server.set_feed(feed_path, make_items(3))
    port = free_port()
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        metrics={"listen": f"127.0.0.1:{port}"},
        feeds=[{"name": "actus", "url": feed_server.url(feed_path), "rooms": [room],
                "backfill": 1}])), bot)
    running = await run_bot(config)
    try:
        await owner.wait_for_messages(room, 1, sender=bot.user_id)
        stats = await say(owner, room, bot, "!news stats")
        assert stats.splitlines()[1] == "• actus: 3 room member(s), 0 subscriber(s)"
        archive = await say(owner, room, bot, "!news archive 3")
        assert archive.splitlines()[0] == "The last issues:"
        assert len(archive.splitlines()) == 4
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            metrics = await resp.text()
        assert 'newsbot_feed_readers{feed="actus"} 3.0' in metrics.splitlines()
        assert 'newsbot_feed_failures{feed="actus"} 0.0' in metrics.splitlines()
        assert "newsbot_outbox_pending 0.0" in metrics.splitlines()
        assert "@" not in metrics            # counted, never listed
    finally:
        await running.stop()
