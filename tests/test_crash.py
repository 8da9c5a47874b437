"""kill -9 and abrupt deaths at every step of delivery: each item exactly once, in order."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

import pytest

from bot.store import SqliteStore
from tests.botkit import ROOT, BotProcess, bot_config, write_config
from tests.support import (
    FeedServer,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    RegisteredUser,
    SynapseServer,
    make_items,
)


async def assert_exactly_once(alice: MemberClient, rooms: list[str], bot: RegisteredUser,
                              expected_titles: list[str], state: Path) -> None:
    """Once the running bot's outbox (in ``state``) has nothing left to send, each room
    holds exactly these items, in this order: nothing more can come (the feed no longer
    changes), whatever the bot still had to send or to find in a room after a crash."""
    for room in rooms:
        await alice.wait_for_messages(room, len(expected_titles), sender=bot.user_id,
                                      timeout=60)
    store = SqliteStore.open(state)      # a reader beside the bot (SQLite's WAL)
    try:
        deadline = time.monotonic() + 60
        while await store.pending_count():
            assert time.monotonic() < deadline, "the bot kept deliveries pending"
            await asyncio.sleep(0.05)
    finally:
        store.close()
    for room in rooms:
        seen = await alice.messages(room, sender=bot.user_id)
        titles = [e["content"]["body"].splitlines()[0] for e in seen]
        assert titles == expected_titles, f"room {room}: duplicates or losses"


async def wait_until_ready(process: BotProcess, starts: int, timeout: float = 60) -> None:
    """Until the log says the bot started for the ``starts``-th time."""
    deadline = time.monotonic() + timeout
    while process.log().count("watching ") < starts:
        assert time.monotonic() < deadline, "the bot did not start"
        await asyncio.sleep(0.05)


async def fetched_since(feed_server: FeedServer, path: str, since: float,
                        timeout: float = 60) -> None:
    """Until the feed server has answered a poll of ``path`` with its body (200) after
    ``since``."""
    deadline = time.monotonic() + timeout
    while not any(r.status == 200 and r.at >= since for r in feed_server.requests(path)):
        assert time.monotonic() < deadline, "the bot did not poll the feed"
        await asyncio.sleep(0.02)


async def test_kill_9_at_random_points_over_many_cycles(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    rooms = [await alice.create_room(name=f"crash {i}") for i in range(3)]
    all_items = make_items(24 * 3 + 1)          # newest first
    # Items pile up when kills land before a poll's commit several cycles running: with
    # a flood cap above them all, none is ever dropped as a flood (not this test's topic).
    published = 1
    feed_server.set_feed(feed_path, all_items[-published:])
    config_path = write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": rooms,
                "interval": "1s", "backfill": 1, "max_per_poll": len(all_items)}]))
    # The feed is known (first sight done, its backfill posted) before the crashes begin.
    process = BotProcess(config_path, bot, tmp_path / "bot.log")
    await process.start()
    for room in rooms:
        await alice.wait_for_messages(room, 1, sender=bot.user_id)
    assert await process.terminate() == 0
    rng = random.Random(20261128)
    cycles = 24
    # Each next process imports while the current one works: it only starts working
    # once the current one is dead, as a restarted bot would.
    upcoming = BotProcess(config_path, bot, tmp_path / "bot.log")
    await upcoming.prepare()
    try:
        for cycle in range(cycles):
            process, upcoming = upcoming, BotProcess(config_path, bot, tmp_path / "bot.log")
            await process.start()
            await upcoming.prepare()
            # Killed at a random point of its work, counted from when it is ready: on a
            # busy machine a process can take seconds to start, and a kill before that
            # tests nothing (and would let every item pile up for one last poll).
            await wait_until_ready(process, cycle + 2)
            published += 3                           # three new items for three rooms
            since = time.time()
            feed_server.set_feed(feed_path, all_items[-published:])
            # ... and from when it read them: each cycle kills it somewhere in handling
            # them (parse, commit, sends), however long its start and first poll took.
            await fetched_since(feed_server, feed_path, since)
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            process.kill9()
            await process.wait()
    except BaseException:
        await upcoming.discard()
        raise
    process = upcoming
    await process.start()
    try:
        # Started for good (its stop handled) before it is checked and stopped: when the
        # earlier ones had sent everything, the check could end while it still started,
        # and a SIGTERM then found no handler yet (-15).
        await wait_until_ready(process, cycles + 2)
        expected = [item.title for item in reversed(all_items[-published:])]
        await assert_exactly_once(alice, rooms, bot, expected, tmp_path / "state")
    finally:
        assert await process.terminate() == 0


CRASH_POINTS = [
    ("record_poll", "before"),     # fetched and parsed, nothing committed
    ("record_poll", "after"),      # outbox committed, nothing sent
    ("mark_attempt", "after"),     # attempt recorded, not sent
    ("mark_sent", "before"),       # event in the room, outbox still says pending
    ("mark_sent", "after"),        # recorded as sent
]


@pytest.mark.parametrize(("point", "when"), CRASH_POINTS)
async def test_abrupt_death_between_each_step(
        point: str, when: str, synapse: SynapseServer, feed_server: FeedServer,
        feed_path: str, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    rooms = [await alice.create_room(name="steps")]
    items = make_items(4)
    feed_server.set_feed(feed_path, items[2:])
    config_path = write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": rooms,
                "backfill": 2}]))
    # A first, normal run: the feed is known and its backfill delivered.
    process = BotProcess(config_path, bot, tmp_path / "bot.log")
    await process.start()
    await alice.wait_for_messages(rooms[0], 2, sender=bot.user_id)
    assert await process.terminate() == 0

    # Two new items; the bot dies at the chosen step while handling them.
    feed_server.set_feed(feed_path, items)
    env = {**process.env, "CRASH_POINT": point, "CRASH_WHEN": when, "CRASH_AT": "1",
           "PYTHONPATH": str(ROOT)}
    crashing = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tests" / "crashbot.py"), "run", "-c", str(config_path),
        env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    assert await asyncio.wait_for(crashing.wait(), 60) == 137, "crash point not reached"

    process = BotProcess(config_path, bot, tmp_path / "bot.log")
    await process.start()
    try:
        await assert_exactly_once(alice, rooms, bot, [i.title for i in reversed(items)],
                                  tmp_path / "state")
    finally:
        assert await process.terminate() == 0
