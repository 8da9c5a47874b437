"""The main job against a real Synapse and real feed servers, checked from a member's client."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from bot.app import Waits
from bot.delivery import Deliverer
from bot.model import Message, delivery_key
from bot.store import NewDelivery, PollOutcome, SqliteStore
from bot.transport.matrix import MatrixTransport
from bot.transport.matrix.events import (
    DELIVERY_KEY_FIELD,
    TXN_MEMORY_SECONDS,
    message_content,
    txn_id_for,
)
from tests.botkit import BotProcess, InProcessBot, bot_config, load, write_config
from tests.support import (
    FeedServer,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    SynapseServer,
    make_items,
)


async def setup_rooms(new_user: NewUserFactory, member: MemberFactory, count: int = 2,
                      ) -> tuple[object, MemberClient, list[str]]:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    rooms = [await alice.create_room(name=f"news {i}") for i in range(count)]
    return bot, alice, rooms


def bodies(events: list[dict]) -> list[str]:
    return [e["content"]["body"].splitlines()[0] for e in events]


async def test_new_items_reach_two_rooms_once_each_and_restart_reposts_nothing(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot, alice, rooms = await setup_rooms(new_user, member)
    items = make_items(3)
    feed_server.set_feed(feed_path, items)
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": rooms,
                "interval": "1s", "backfill": 1}])), bot)

    async with InProcessBot(cfg):
        for room in rooms:   # backfill: the newest item only
            seen = await alice.wait_for_messages(room, 1, sender=bot.user_id)
            assert bodies(seen) == [items[0].title]
        new = make_items(5)[:2]          # items 5 and 4 are new; 5 is the newest
        feed_server.set_feed(feed_path, new + items)
        # How soon they arrive is measured by ./dev bench (line 5), not asserted here.
        for room in rooms:
            seen = await alice.wait_for_messages(room, 3, sender=bot.user_id, timeout=60)

    async with InProcessBot(cfg):      # a restart: nothing is posted again
        new_again = make_items(6)[:1]
        feed_server.set_feed(feed_path, new_again + new + items)
        for room in rooms:
            await alice.wait_for_messages(room, 4, sender=bot.user_id, timeout=10)
    for room in rooms:
        seen = await alice.messages(room, sender=bot.user_id)
        assert bodies(seen) == [items[0].title, new[1].title, new[0].title, new_again[0].title]
        content = seen[0]["content"]
        assert content["msgtype"] == "m.notice"
        assert content["format"] == "org.matrix.custom.html"
        assert content["m.mentions"] == {}
        assert items[0].link in content["formatted_body"]
        assert content[DELIVERY_KEY_FIELD] == delivery_key("news", items[0].guid, room)


async def test_first_sight_backfill_and_flood_cap(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    bot, alice, rooms = await setup_rooms(new_user, member, count=1)
    room = rooms[0]
    items = make_items(10)
    feed_server.set_feed(feed_path, items)
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
                "backfill": 3, "max_per_poll": 4}])), bot)
    caplog.set_level(logging.INFO)
    async with InProcessBot(cfg):
        seen = await alice.wait_for_messages(room, 3, sender=bot.user_id)
        assert bodies(seen) == [items[2].title, items[1].title, items[0].title]
        # The feed rewrites every id: 10 "new" entries at once.
        rewritten = make_items(10, prefix="rewritten")
        feed_server.set_feed(feed_path, rewritten)
        seen = await alice.wait_for_messages(room, 7, sender=bot.user_id)
        await asyncio.sleep(2.5)  # two more polls: nothing else may come
    seen = await alice.messages(room, sender=bot.user_id)
    assert bodies(seen)[3:] == [i.title for i in reversed(rewritten[:4])]
    assert len(seen) == 7
    assert any("feed news: 10 entries appeared at once" in r.getMessage()
               for r in caplog.records)


async def test_broken_feed_is_isolated(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    bot, alice, rooms = await setup_rooms(new_user, member, count=1)
    good, broken = feed_path, feed_path + "-broken"
    feed_server.set_raw(broken, b"\x00\x01 definitely { not a feed", content_type="text/xml")
    feed_server.set_raw(broken + "-html", b"<html><body>Hello</body></html>",
                        content_type="text/html")
    feed_server.set_feed(good, make_items(1))
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "broken", "url": feed_server.url(broken), "rooms": rooms},
               {"name": "html", "url": feed_server.url(broken + "-html"), "rooms": rooms},
               {"name": "good", "url": feed_server.url(good), "rooms": rooms,
                "backfill": 1}])), bot)
    caplog.set_level(logging.INFO)
    async with InProcessBot(cfg) as running:
        await alice.wait_for_messages(rooms[0], 1, sender=bot.user_id)
        feed_server.set_feed(good, make_items(2))
        await alice.wait_for_messages(rooms[0], 2, sender=bot.user_id)
        assert running.app is not None
        state = await running.app.store.feed_state("broken")
        assert state is not None and state.failures >= 1 and state.last_error
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("feed broken: ") for w in warnings)
    assert any(w.startswith("feed html: ") for w in warnings)


async def test_unchanged_feed_costs_one_conditional_request(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot, alice, rooms = await setup_rooms(new_user, member, count=1)
    feed_server.set_feed(feed_path, make_items(2))
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": rooms}])), bot)
    async with InProcessBot(cfg):
        deadline = time.monotonic() + 10
        while len(feed_server.requests(feed_path)) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    requests = feed_server.requests(feed_path)
    assert len(requests) >= 3
    assert requests[0].status == 200
    assert all(r.conditional and r.status == 304 for r in requests[1:])
    assert "newsbot/" in requests[0].headers["User-Agent"]


async def test_invites_accepted_from_admins_only(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    bot = await new_user("newsbot")
    admin = await member(await new_user("admin"))
    stranger = await member(await new_user("stranger"))
    feed_server.set_feed(feed_path, make_items(1))
    own_room = await admin.create_room(name="own")
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        admins=[admin.user_id],
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": [own_room]}])), bot)
    caplog.set_level(logging.INFO)
    async with InProcessBot(cfg):
        await asyncio.sleep(1)
        by_admin = await admin.create_room(name="by admin", preset="private_chat",
                                           invite=[bot.user_id])
        by_stranger = await stranger.create_room(name="by stranger", preset="private_chat",
                                                 invite=[bot.user_id])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            members_a = await admin.joined_members(by_admin)
            members_s = await stranger.joined_members(by_stranger)
            state = await stranger.room_state(by_stranger)
            rejected = any(e["type"] == "m.room.member" and e["state_key"] == bot.user_id
                           and e["content"]["membership"] == "leave" for e in state)
            if bot.user_id in members_a and rejected:
                break
            await asyncio.sleep(0.3)
    assert bot.user_id in members_a
    assert bot.user_id not in members_s and rejected
    assert any("rejecting the invite" in r.getMessage() and stranger.user_id in r.getMessage()
               for r in caplog.records)


async def test_lost_acknowledgement_is_found_in_history_not_resent(
        synapse: SynapseServer, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    """A send whose answer was lost, retried after the homeserver forgot the txn id."""
    bot, alice, rooms = await setup_rooms(new_user, member, count=1)
    room = rooms[0]
    store = SqliteStore.open(tmp_path / "state")
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": "http://127.0.0.1:9/feed", "rooms": [room]}])), bot)
    transport = MatrixTransport(cfg.matrix, store, tmp_path / "state")
    await transport.connect()
    room_id = await transport.join_room(room)
    await store.ensure_feed("news", "http://127.0.0.1:9/feed")
    key = delivery_key("news", "entry-1", room)
    message = Message("Titre\nhttp://x", "<p>Titre</p>")
    content = message_content(message, key=key)
    await store.record_poll(PollOutcome("news", 0.0, 60.0, None, None, None, None, None,
                                  ["entry-1"], [NewDelivery("entry-1", room, message)]))
    # The crash: the event reached the room, the bot died before recording it.
    await store.mark_attempt(key, 1000.0)
    sent_id = await transport.send_message(room_id, content, txn_id_for(key))

    class LaterClock:
        def now(self) -> float:
            return 1000.0 + TXN_MEMORY_SECONDS + 60

    deliverer = Deliverer(store, transport, LaterClock())
    worker = asyncio.create_task(deliverer.run_room(room))
    try:
        deadline = time.monotonic() + 10
        while await store.pending_count(room) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        deliverer.stop()
        await asyncio.wait_for(worker, 10)
        await transport.close()
    assert await store.pending_count(room) == 0
    assert deliverer.delivered == 0           # found, not sent again
    row = store._conn.execute("SELECT event_id FROM outbox WHERE key = ?", (key,)).fetchone()
    assert row[0] == sent_id
    assert len(await alice.messages(room, sender=bot.user_id)) == 1


async def test_rate_limited_homeserver_gets_everything_in_order(
        tmp_path: Path, feed_server: FeedServer, feed_path: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """A homeserver with the default-like message limit: every item arrives, in order."""
    async with SynapseServer(tmp_path / "hs", rate_limits={
            "rc_message": {"per_second": 2, "burst_count": 2}}) as hs:
        bot = await hs.register("newsbot-rl", "pw-bot-rl")
        alice_user = await hs.register("alice-rl", "pw-alice-rl")
        async with MemberClient(hs.base_url, alice_user) as alice:
            room = await alice.create_room(name="busy")
            items = make_items(8)
            feed_server.set_feed(feed_path, items)
            cfg = load(write_config(tmp_path / "c.yaml", bot_config(
                homeserver=hs.base_url, bot=bot, storage=tmp_path / "state",
                feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
                        "backfill": 8, "max_per_poll": 8}])), bot)
            caplog.set_level(logging.INFO)
            async with InProcessBot(cfg):
                seen = await alice.wait_for_messages(room, 8, sender=bot.user_id, timeout=60)
            assert bodies(seen) == [i.title for i in reversed(items)]
            assert any("rate limited by the homeserver" in r.getMessage()
                       for r in caplog.records), "the test never hit the rate limit"
            assert len(await alice.messages(room, sender=bot.user_id)) == 8


async def test_homeserver_down_at_start_and_during_delivery(
        tmp_path: Path, feed_server: FeedServer, feed_path: str,
        caplog: pytest.LogCaptureFixture) -> None:
    hs = SynapseServer(tmp_path / "hs")
    await hs.start()
    try:
        bot = await hs.register("newsbot-down", "pw-bot-down")
        alice_user = await hs.register("alice-down", "pw-alice-down")
        async with MemberClient(hs.base_url, alice_user) as alice:
            room = await alice.create_room(name="outage")
        feed_server.set_feed(feed_path, make_items(1))
        cfg = load(write_config(tmp_path / "c.yaml", bot_config(
            homeserver=hs.base_url, bot=bot, storage=tmp_path / "state", auth="password",
            feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
                    "backfill": 1}])), bot)
        caplog.set_level(logging.INFO)
        await hs.stop()
        async with InProcessBot(cfg, waits=Waits(delivery_retry_cap=2.0,
                                                 reconnect_cap=2.0)) as running:
            async with asyncio.timeout(30):   # the bot waits for the homeserver, no crash
                while not any("homeserver unreachable" in r.getMessage()
                              for r in caplog.records):
                    await asyncio.sleep(0.1)
            await hs.start()
            async with MemberClient(hs.base_url, alice_user) as alice:
                await alice.wait_for_messages(room, 1, sender=bot.user_id, timeout=40)
                await hs.stop()               # down while new items arrive
                items = make_items(4)
                feed_server.set_feed(feed_path, items)
                async with asyncio.timeout(30):     # polled and queued while it is down
                    while await running.app.store.pending_count(room) < 3:
                        await asyncio.sleep(0.1)
                await hs.start()
                seen = await alice.wait_for_messages(room, 4, sender=bot.user_id, timeout=60)
        async with MemberClient(hs.base_url, alice_user) as alice:
            seen = await alice.messages(room, sender=bot.user_id)
        assert bodies(seen) == [i.title for i in reversed(items)]
    finally:
        await hs.stop()


async def test_no_secret_in_debug_logs_and_sigterm_exits_cleanly(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot, alice, rooms = await setup_rooms(new_user, member, count=1)
    feed_server.set_feed(feed_path, make_items(1))
    config_path = write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state", auth="password",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": rooms,
                "backfill": 1}]))
    process = BotProcess(config_path, bot, tmp_path / "bot.log", "--log-level", "DEBUG")
    await process.start()
    try:
        await alice.wait_for_messages(rooms[0], 1, sender=bot.user_id)
    finally:
        assert await process.terminate() == 0
    session = tmp_path / "state" / "matrix-session.json"
    assert session.stat().st_mode & 0o777 == 0o600
    token = json.loads(session.read_text())["access_token"]
    log = process.log()
    assert "posted item" in log and "stopped" in log
    assert bot.password not in log
    assert token not in log


async def test_rooms_by_alias_unjoinable_rooms_named_display_name_and_sync_token(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    alias_local = f"actus-{bot.localpart}"
    by_alias = await alice.create_room(name="actus", alias_localpart=alias_local)
    private = await alice.create_room(name="closed", preset="private_chat")
    feed_server.set_feed(feed_path, make_items(1))
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "backfill": 1,
                "rooms": [f"#{alias_local}:localhost", "#nowhere-to-be-found:localhost",
                          private]}],
        matrix={"homeserver": synapse.base_url, "user_id": bot.user_id,
                "access_token": "${BOT_TOKEN}", "device_id": bot.device_id,
                "display_name": "Actualités InterHop"})), bot)
    caplog.set_level(logging.INFO)
    async with InProcessBot(cfg) as running:
        seen = await alice.wait_for_messages(by_alias, 1, sender=bot.user_id)
        await asyncio.sleep(1)
        assert running.app is not None
        assert await running.app.store.pending_count() == 2   # kept for the rooms it cannot join
    assert bodies(seen) == [make_items(1)[0].title]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("#nowhere-to-be-found:localhost" in e for e in errors)
    assert any(private in e for e in errors)
    assert await alice.display_name(bot.user_id) == "Actualités InterHop"
    store = SqliteStore.open(tmp_path / "state")
    assert await store.get("matrix.sync_token")


async def test_one_room_named_by_alias_and_by_id_gets_each_item_once(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    alias_local = f"same-{bot.localpart}"
    room = await alice.create_room(name="same", alias_localpart=alias_local)
    alias = f"#{alias_local}:localhost"
    feed_server.set_feed(feed_path, make_items(2))
    other_path = feed_path + "-other"
    feed_server.set_feed(other_path, make_items(1, prefix="autre"))
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "backfill": 2,
                "rooms": [alias, room]},
               {"name": "other", "url": feed_server.url(other_path), "backfill": 1,
                "rooms": [room]}])), bot)
    caplog.set_level(logging.INFO)
    async with InProcessBot(cfg):
        await alice.wait_for_messages(room, 3, sender=bot.user_id)
        await asyncio.sleep(2)
    assert len(await alice.messages(room, sender=bot.user_id)) == 3
    assert any("are the same room" in r.getMessage() for r in caplog.records)
