"""Homeserver and process faults: gone feeds, kicks and bans, revoked tokens, a misbehaving
reverse proxy, a homeserver restarting mid-delivery, unusable storage."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import aiohttp
import pytest

from bot.app import Waits
from bot.store.sqlite import DB_FILENAME
from tests.botkit import BotProcess, InProcessBot, bot_config, load, write_config
from tests.support import (
    FeedServer,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    RegisteredUser,
    SynapseServer,
    make_items,
)
from tests.support.proxy import FaultyProxy

# Outages end in seconds here: the bot retries within 2 s, not after its usual backoff.
SHORT_WAITS = Waits(delivery_retry_cap=2.0, reconnect_cap=2.0)


def titles(events: list[dict]) -> list[str]:
    return [e["content"]["body"].splitlines()[0] for e in events]


async def logout(base_url: str, token: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{base_url}/_matrix/client/v3/logout",
            headers={"Authorization": f"Bearer {token}"}, json={}) as resp:
        assert resp.status == 200, await resp.text()


async def test_feed_gone_410_disables_it_and_tells_each_room_once(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    rooms = [await alice.create_room(name="fr"), await alice.create_room(name="fr 2")]
    feed_server.set_feed(feed_path, make_items(1))
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state", language="fr",
        feeds=[{"name": "actus", "url": feed_server.url(feed_path), "rooms": rooms}])), bot)
    async with InProcessBot(cfg):
        await asyncio.sleep(1.5)
        feed_server.set_raw(feed_path, b"gone", status=410, content_type="text/plain")
        for room in rooms:
            notice = (await alice.wait_for_messages(room, 1, sender=bot.user_id))[0]
            assert notice["content"]["msgtype"] == "m.notice"
            assert "Le flux « actus »" in notice["content"]["body"]
            assert "410" in notice["content"]["body"]
        await asyncio.sleep(2)
    requests_after_gone = len(feed_server.requests(feed_path))
    async with InProcessBot(cfg):         # restarted: the feed stays off, no second notice
        await asyncio.sleep(2.5)
    assert len(feed_server.requests(feed_path)) == requests_after_gone
    for room in rooms:
        assert len(await alice.messages(room, sender=bot.user_id)) == 1


async def test_kicked_or_banned_rooms_wait_and_the_others_go_on(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    kicked, banned, fine = [await alice.create_room(name=n) for n in ("kick", "ban", "fine")]
    items = make_items(3)
    feed_server.set_feed(feed_path, items[2:])
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        admins=[alice.user_id],
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "backfill": 1,
                "rooms": [kicked, banned, fine]}])), bot)
    caplog.set_level(logging.INFO)
    async with InProcessBot(cfg):
        for room in (kicked, banned, fine):
            await alice.wait_for_messages(room, 1, sender=bot.user_id)
        await alice.kick(kicked, bot.user_id, reason="trop de messages")
        await alice.ban(banned, bot.user_id)
        await asyncio.sleep(1.5)          # the bot's sync sees both
        feed_server.set_feed(feed_path, items[1:])
        await alice.wait_for_messages(fine, 2, sender=bot.user_id)
        await asyncio.sleep(2)
        # A public room it was kicked from is not rejoined behind the moderators' back.
        assert bot.user_id not in await alice.joined_members(kicked)
        assert len(await alice.messages(kicked, sender=bot.user_id)) == 1
        assert len(await alice.messages(banned, sender=bot.user_id)) == 1
        # Invited again by an admin: the waiting item goes out.
        await alice.invite(kicked, bot.user_id)
        seen = await alice.wait_for_messages(kicked, 2, sender=bot.user_id)
        assert titles(seen) == [items[2].title, items[1].title]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum(f"removed from {kicked}" in e and "trop de messages" in e
               for e in errors) >= 1
    assert sum(f"banned from {banned}" in e for e in errors) >= 1
    # Logged once per room, not once per retry.
    assert sum(e.startswith(f"room {banned}:") for e in errors) == 1


async def test_revoked_token_without_password_stops_with_a_clear_error(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="revoked")
    feed_server.set_feed(feed_path, make_items(1))
    config_path = write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
                "backfill": 1}]))
    process = BotProcess(config_path, bot, tmp_path / "bot.log")
    await process.start()
    await alice.wait_for_messages(room, 1, sender=bot.user_id)
    await logout(synapse.base_url, bot.access_token)
    feed_server.set_feed(feed_path, make_items(2))
    assert await process.wait(30) == 1
    log = process.log()
    assert "refused newsbot's access token" in log
    assert "Traceback" not in log
    assert bot.access_token not in log


async def test_revoked_token_with_password_logs_in_again_and_carries_on(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot", password="a-long-bot-password")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="relogin")
    feed_server.set_feed(feed_path, make_items(1))
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state", auth="password",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
                "backfill": 1}])), bot)
    session = tmp_path / "state" / "matrix-session.json"
    async with InProcessBot(cfg):
        await alice.wait_for_messages(room, 1, sender=bot.user_id)
        first_token = json.loads(session.read_text())["access_token"]
        await logout(synapse.base_url, first_token)
        items = make_items(3)
        feed_server.set_feed(feed_path, items)
        seen = await alice.wait_for_messages(room, 3, sender=bot.user_id, timeout=40)
    assert titles(seen) == [i.title for i in reversed(items)]
    assert json.loads(session.read_text())["access_token"] != first_token


async def test_reverse_proxy_502_504_and_slow_answers_lose_nothing(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="proxied")
    feed_server.set_feed(feed_path, make_items(1))
    async with FaultyProxy(synapse.base_url, slow_seconds=2.0) as proxy:
        cfg = load(write_config(tmp_path / "c.yaml", bot_config(
            homeserver=proxy.base_url, bot=bot, storage=tmp_path / "state",
            feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
                    "backfill": 1}])), bot)
        async with InProcessBot(cfg, waits=SHORT_WAITS):
            await alice.wait_for_messages(room, 1, sender=bot.user_id)
            published = 1
            for mode in ("502", "504", "slow"):
                proxy.mode = mode  # type: ignore[assignment]
                faults = proxy.faults_served
                published += 2
                feed_server.set_feed(feed_path, make_items(published))
                deadline = time.monotonic() + 10
                while proxy.faults_served < faults + 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert proxy.faults_served >= faults + 2, f"the bot never hit the {mode}"
                proxy.mode = "pass"
                await alice.wait_for_messages(room, published, sender=bot.user_id,
                                              timeout=40)
    seen = await alice.messages(room, sender=bot.user_id)
    assert titles(seen) == [i.title for i in reversed(make_items(published))]


async def test_homeserver_restarted_mid_delivery(
        tmp_path: Path, feed_server: FeedServer, feed_path: str) -> None:
    async with SynapseServer(tmp_path / "hs", rate_limits={
            "rc_message": {"per_second": 2, "burst_count": 2}}) as hs:
        bot = await hs.register("newsbot-rs", "pw-newsbot-rs")
        alice_user = await hs.register("alice-rs", "pw-alice-rs")
        async with MemberClient(hs.base_url, alice_user) as alice:
            room = await alice.create_room(name="restart")
        items = make_items(10)
        feed_server.set_feed(feed_path, items)
        cfg = load(write_config(tmp_path / "c.yaml", bot_config(
            homeserver=hs.base_url, bot=bot, storage=tmp_path / "state",
            feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
                    "backfill": 10, "max_per_poll": 10}])), bot)
        async with InProcessBot(cfg, waits=SHORT_WAITS) as running:
            assert running.app is not None
            store = running.app.store
            deadline = time.monotonic() + 20
            async def polled() -> bool:
                state = await store.feed_state("news")
                return state is not None and state.initialized

            while (not await polled() or await store.pending_count() > 7) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert 0 < await store.pending_count() <= 7, "the restart must land mid-delivery"
            await hs.restart()
            async with MemberClient(hs.base_url, alice_user) as alice:
                await alice.wait_for_messages(room, 10, sender=bot.user_id, timeout=60)
                await asyncio.sleep(1)
                seen = await alice.messages(room, sender=bot.user_id)
    assert titles(seen) == [i.title for i in reversed(items)]


async def test_corrupt_database_refuses_to_start_with_advice(
        tmp_path: Path, new_user: NewUserFactory, synapse: SynapseServer) -> None:
    bot: RegisteredUser = await new_user("newsbot")
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_FILENAME).write_bytes(b"garbage" * 1000)
    config_path = write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=state,
        feeds=[{"name": "news", "url": "http://127.0.0.1:9/feed", "rooms": ["!a:localhost"]}]))
    process = BotProcess(config_path, bot, tmp_path / "bot.log")
    await process.start()
    assert await process.wait(30) == 1
    log = process.log()
    assert "restore it from a backup" in log
    assert "Traceback" not in log
    assert (state / DB_FILENAME).read_bytes() == b"garbage" * 1000
