"""Unchanged polls stay cheap (issue 13): a 304 reads nothing from the store and its
record is written behind, with others, in one transaction — without weakening what
a poll that changed anything commits, nor what a crash may cost.

Real SQLite files, a real feed server on loopback; statements are watched with
SQLite's own trace callback.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from bot.config import FeedConfig, FetchConfig
from bot.errors import BlockedURLError, StorageError
from bot.feeds.fetch import Fetcher
from bot.poller import FeedPoller
from bot.store import PollOutcome, SqliteStore
from bot.store import sqlite as sqlite_store
from bot.store.sqlite import DB_FILENAME, WRITE_BEHIND_MAX
from tests.support.clock import FakeClock
from tests.support.feedserver import FeedServer, make_items
from tests.support.pollers import feed_poller


def first_sight(feed: str, now: float = 100.0) -> PollOutcome:
    return PollOutcome(feed=feed, now=now, next_fetch=now + 60, etag='"e1"',
                       last_modified=None, body_hash="h", title="T", new_url=None,
                       seen_entry_ids=["a"], deliveries=[])


def on_disk(directory: Path, feed: str) -> tuple[float | None, float | None, int]:
    """(last_fetch, next_fetch, failures) as another connection reads them."""
    conn = sqlite3.connect(directory / DB_FILENAME)
    try:
        row = conn.execute("SELECT last_fetch, next_fetch, failures FROM feed_state "
                           "WHERE name = ?", (feed,)).fetchone()
    finally:
        conn.close()
    return row[0], row[1], row[2]


class Statements:
    """The SQL statements a store's connection runs, as SQLite reports them."""

    def __init__(self, store: SqliteStore) -> None:
        self.seen: list[str] = []
        store._conn.set_trace_callback(self.seen.append)

    def commits(self) -> int:
        return sum(1 for s in self.seen if s.strip().upper() == "COMMIT")


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


# --- the store ----------------------------------------------------------------------


async def test_unchanged_polls_written_behind_in_one_transaction(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    try:
        for n in range(5):
            await store.ensure_feed(f"f{n}", f"http://a/{n}")
            await store.record_poll(first_sight(f"f{n}"))
        statements = Statements(store)
        for n in range(5):
            await store.record_not_modified(f"f{n}", now=200.0, next_fetch=260.0, later=True)
        # Not written yet, but what the store answers already shows them.
        assert statements.commits() == 0
        assert on_disk(tmp_path, "f0") == (100.0, 160.0, 0)
        state = await store.feed_state("f0")
        assert state is not None
        assert (state.last_fetch, state.next_fetch, state.etag) == (200.0, 260.0, '"e1"')
        # About a second later, all five in one transaction.
        await eventually(lambda: on_disk(tmp_path, "f4") == (200.0, 260.0, 0),
                         "the waiting unchanged polls written")
        assert statements.commits() == 1
        assert all(on_disk(tmp_path, f"f{n}") == (200.0, 260.0, 0) for n in range(5))
    finally:
        store.close()


async def test_so_many_waiting_are_written_at_once(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    try:
        await store.ensure_feed("f", "http://a/f")
        statements = Statements(store)
        for n in range(WRITE_BEHIND_MAX - 1):
            await store.record_not_modified(f"other{n}", now=1.0, next_fetch=2.0, later=True)
        assert statements.commits() == 0
        await store.record_not_modified("f", now=200.0, next_fetch=260.0, later=True)
        assert statements.commits() == 1
        assert on_disk(tmp_path, "f") == (200.0, 260.0, 0)
    finally:
        store.close()


async def test_a_later_write_is_never_overtaken_by_a_waiting_one(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    try:
        await store.ensure_feed("f", "http://a/f")
        await store.record_not_modified("f", now=200.0, next_fetch=260.0, later=True)
        await store.record_failure("f", "HTTP 500", now=300.0, next_fetch=400.0)
        # The waiting 304 went first, in the failure's transaction; nothing is left to
        # write over the failure afterwards.
        assert on_disk(tmp_path, "f") == (300.0, 400.0, 1)
        await asyncio.sleep(1.5)
        assert on_disk(tmp_path, "f") == (300.0, 400.0, 1)
        state = await store.feed_state("f")
        assert state is not None and state.failures == 1 and state.last_error == "HTTP 500"
    finally:
        store.close()


async def test_closing_writes_what_waits(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("f", "http://a/f")
    await store.record_not_modified("f", now=200.0, next_fetch=260.0, later=True)
    store.close()
    assert on_disk(tmp_path, "f") == (200.0, 260.0, 0)


async def test_a_failed_write_behind_reaches_the_next_poll(tmp_path: Path) -> None:
    """A database that stops taking writes stops the bot at the next unchanged poll, as
    it did when each 304 wrote at once (StorageError: the poller does not skip it)."""
    store = SqliteStore.open(tmp_path)
    try:
        await store.ensure_feed("f", "http://a/f")
        await store.record_not_modified("f", now=200.0, next_fetch=260.0, later=True)
        store._conn.execute("PRAGMA query_only = ON")
        await asyncio.sleep(1.5)        # the timer's write fails, and is kept
        with pytest.raises(StorageError, match="readonly"):
            await store.record_not_modified("f", now=300.0, next_fetch=360.0, later=True)
        store._conn.execute("PRAGMA query_only = OFF")
        await store.record_not_modified("f", now=400.0, next_fetch=460.0, later=True)
        assert on_disk(tmp_path, "f") == (400.0, 460.0, 0)
    finally:
        store.close()


async def test_an_interval_set_by_command_is_known_at_once_and_forgotten_with_the_feed(
        tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    try:
        assert await store.feed_interval("f") is None
        await store.set_feed_interval("f", 7200.0)
        assert await store.feed_interval("f") == 7200.0
        await store.remove_room_feed("f")
        assert await store.feed_interval("f") is None
    finally:
        store.close()


# --- the poller ---------------------------------------------------------------------


@dataclass
class Rig:
    directory: Path
    store: SqliteStore
    fetcher: Fetcher
    server: FeedServer
    clock: FakeClock = field(default_factory=lambda: FakeClock(1_800_000_000.0))
    enqueued: list[str] = field(default_factory=list)

    def poller(self) -> FeedPoller:
        feed = FeedConfig(name="actus", url=self.server.url("/actus.xml"),
                          rooms=("!actus:test",), interval=900)
        return feed_poller(feed, self.store, self.fetcher, clock=self.clock,
                           fetch_config=FetchConfig(allow_private_networks=True),
                           on_enqueued=self.enqueued.extend)


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = SqliteStore.open(tmp_path / "state")
    try:
        async with FeedServer() as server, Fetcher(allow_private_networks=True) as fetcher:
            server.set_feed("/actus.xml", make_items(3, prefix="actus"))
            yield Rig(tmp_path / "state", store, fetcher, server)
    finally:
        store.close()


async def test_an_unchanged_poll_reads_and_writes_nothing_at_once(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    # However slow the machine, no timed write lands among the polls.
    monkeypatch.setattr(sqlite_store, "WRITE_BEHIND_SECONDS", 3600.0)
    poller = rig.poller()
    await rig.store.ensure_feed("actus", poller.feed.url)
    await poller.poll_once()                            # first sight: read and committed
    statements = Statements(rig.store)
    for _ in range(20):
        rig.clock.t += 900
        await poller.poll_once()
    assert all(r.conditional and r.status == 304
               for r in rig.server.requests("/actus.xml")[1:])
    assert statements.seen == [], "an unchanged poll ran SQL at once"
    rig.store.flush()
    assert statements.commits() == 1
    assert on_disk(rig.directory, "actus")[0] == rig.clock.t
    # A changed body still commits in its own transaction, at once.
    rig.server.set_feed("/actus.xml", make_items(4, prefix="actus"))
    rig.clock.t += 900
    await poller.poll_once()
    assert statements.commits() == 2
    assert rig.enqueued == ["!actus:test"]
    conn = sqlite3.connect(rig.directory / DB_FILENAME)
    try:
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
    finally:
        conn.close()


async def test_a_crash_losing_unchanged_polls_costs_one_conditional_request(
        rig: Rig) -> None:
    poller = rig.poller()
    await rig.store.ensure_feed("actus", poller.feed.url)
    await poller.poll_once()
    rig.clock.t += 900
    await poller.poll_once()
    # The process dies before the 304 is written (nothing yields to the loop, whose
    # timer would write it, before the restarted bot reads): a second store on the
    # same files sees the first sight's state.
    restarted = SqliteStore.open(rig.directory)
    before = await restarted.feed_state("actus")
    rig.store._waiting.clear()          # what the dead process never wrote
    rig.store.flush()
    try:
        assert before is not None and before.last_fetch == rig.clock.t - 900
        rig.server.clear_requests()
        again = feed_poller(poller.feed, restarted, rig.fetcher, clock=rig.clock,
                            fetch_config=FetchConfig(allow_private_networks=True),
                            on_enqueued=rig.enqueued.extend)
        await again.poll_once()
        [request] = rig.server.requests("/actus.xml")
        assert request.conditional and request.status == 304
        assert rig.enqueued == []                           # nothing posted twice
    finally:
        restarted.close()


async def test_a_checked_address_is_still_refused_after_a_redirect(rig: Rig) -> None:
    """The fetcher remembers which feed addresses passed its checks; a redirect's
    target is checked at every hop all the same."""
    from aiohttp import web

    async def to_private(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://10.0.0.1/feed.xml")

    def public_loopback(host: str, ip: object) -> str | None:
        return None if str(ip) == "127.0.0.1" else "a private address"

    async with Fetcher(_address_policy=public_loopback) as guarded:
        url = rig.server.url("/actus.xml")
        for _ in range(2):
            assert (await guarded.fetch(url)).status == 200
        rig.server.set_handler("/actus.xml", to_private)
        for _ in range(2):
            with pytest.raises(BlockedURLError, match="10.0.0.1"):
                await guarded.fetch(url)
        for _ in range(2):
            with pytest.raises(BlockedURLError, match="10.0.0.2"):
                await guarded.fetch("http://10.0.0.2/feed.xml")
