"""Every feed's schedule in one task (bot.poller.Polls, issue 13 bench line 6): no task
waits per feed, at most ``fetch.concurrency`` polls run at once, and a feed's schedule is
what it was with a task of its own: its stored next poll, the interval it returns
(backed off after failures), pushes, feeds added and removed at runtime, a feed gone for
good ending, and stopping cancelling the polls under way.

The real FeedPoller on a real SqliteStore and Fetcher, feeds served on 127.0.0.1. Time
is only ever asserted from below (a poll not sooner than due): a busy machine makes
things later, never earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio
from aiohttp import web

from bot.config import FeedConfig
from bot.feeds.fetch import Fetcher
from bot.poller import FeedPoller, Polls
from bot.store import SqliteStore
from tests.support.feedserver import FeedServer, make_items, render_rss
from tests.support.pollers import feed_poller

DEADLINE = 60.0


async def until(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def polls_running() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("poll ")]


def bot_tasks() -> int:
    """Tasks but the feed server's own (one per open connection)."""
    return sum(1 for t in asyncio.all_tasks()
               if not getattr(t.get_coro(), "__qualname__", "").startswith("RequestHandler."))


@dataclass
class Rig:
    server: FeedServer
    base: str
    store: SqliteStore
    fetcher: Fetcher
    in_flight: int = 0
    most_in_flight: int = 0
    held: asyncio.Event = field(default_factory=asyncio.Event)   # set: slow feeds answer
    asked: list[str] = field(default_factory=list)       # feeds, as each request came
    answered: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def serve(self, name: str, *, slow: bool = False, status: int = 200) -> str:
        """A feed answering ``status`` (200: the same small RSS body each time); a slow
        one answers only once ``held`` is set. Returns its URL."""
        path = f"{self.base}/{name}.xml"
        body = render_rss(make_items(2, prefix=name), title=name, lang="fr",
                          link="https://example.org/", self_url=self.server.url(path))

        async def handler(request: web.Request) -> web.StreamResponse:
            self.asked.append(name)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                if slow:
                    await self.held.wait()
                self.answered.append(name)
                if status != 200:
                    return web.Response(status=status)
                return web.Response(body=body, content_type="application/rss+xml")
            finally:
                self.in_flight -= 1

        self.server.set_handler(path, handler)
        return self.server.url(path)

    def requests(self, name: str) -> list[float]:
        return [r.at for r in self.server.requests(f"{self.base}/{name}.xml")]

    def poller(self, name: str, *, interval: float = 3600, slow: bool = False,
               status: int = 200) -> FeedPoller:
        feed = FeedConfig(name=name, url=self.serve(name, slow=slow, status=status),
                          rooms=("!r:x",), interval=interval)
        return feed_poller(feed, self.store, self.fetcher)

    def run(self, polls: Polls) -> asyncio.Task[None]:
        task = asyncio.create_task(polls.run())
        self.tasks.append(task)
        return task


@pytest_asyncio.fixture
async def rig(tmp_path: Path, feed_server: FeedServer, feed_path: str) -> AsyncIterator[Rig]:
    store = SqliteStore.open(tmp_path)
    async with Fetcher(allow_private_networks=True) as fetcher:
        rig = Rig(feed_server, feed_path.rsplit("/", 1)[0], store, fetcher)
        try:
            yield rig
        finally:
            rig.held.set()
            for task in rig.tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    store.close()


async def test_one_task_polls_many_feeds_never_more_than_the_slots_at_once(rig: Rig) -> None:
    before = bot_tasks()
    polls = Polls(asyncio.Semaphore(3))
    pollers = [rig.poller(f"f{n}") for n in range(40)]
    for poller in pollers:
        polls.add(poller)
    rig.run(polls)
    await until(lambda: all(len(rig.requests(p.feed.name)) == 1 for p in pollers),
                "every feed's first poll")
    assert rig.most_in_flight <= 3
    # Every feed now waits an hour: one task for all of them, none per feed.
    await until(lambda: not polls_running(), "the polls to end")
    assert bot_tasks() == before + 1
    await asyncio.sleep(1.0)
    assert all(len(rig.requests(p.feed.name)) == 1 for p in pollers)


async def test_the_stored_next_poll_holds_after_a_restart_and_a_push_brings_it_forward(
        rig: Rig) -> None:
    polls = Polls(asyncio.Semaphore(2))
    polls.add(rig.poller("due"))
    first = rig.run(polls)
    await until(lambda: len(rig.requests("due")) == 1, "the first poll")
    await until(lambda: not polls_running(), "the poll to end")
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first

    # A restart: the state says the next poll is due in about an hour.
    polls = Polls(asyncio.Semaphore(2))
    poller, other = rig.poller("due"), rig.poller("other")
    polls.add(poller)
    polls.add(other)
    rig.run(polls)
    await until(lambda: len(rig.requests("other")) == 1, "a new feed's first poll")
    await asyncio.sleep(2.5)        # past the spread of a restart's first polls
    assert len(rig.requests("due")) == 1
    assert poller.poll_soon() is True
    assert poller.poll_soon() is False          # the same poll, not begun yet
    await until(lambda: len(rig.requests("due")) == 2, "the push's poll")
    await asyncio.sleep(1.0)
    assert len(rig.requests("due")) == 2
    assert len(rig.requests("other")) == 1      # a push moves its own feed only


async def test_a_failing_feed_backs_off_and_a_healthy_one_follows_its_interval(
        rig: Rig) -> None:
    polls = Polls(asyncio.Semaphore(2))
    polls.add(rig.poller("broken", interval=1, status=500))
    polls.add(rig.poller("fine", interval=1.5))
    rig.run(polls)
    await until(lambda: len(rig.requests("broken")) >= 3 and len(rig.requests("fine")) >= 3,
                "three polls of each")
    broken, fine = rig.requests("broken"), rig.requests("fine")
    # Failures: 1 s, then 2 s (failure_delay doubles), each counted from when the last
    # poll was due: less than that, by a request's latency at most (0.3 s here).
    assert broken[1] - broken[0] >= 0.7 and broken[2] - broken[1] >= 1.7
    # Jitter only ever makes it earlier, by a tenth at most.
    assert all(later - earlier >= 1.5 * 0.9 - 0.3 for earlier, later in itertools.pairwise(fine))


async def test_feeds_added_and_removed_while_it_runs(rig: Rig) -> None:
    polls = Polls(asyncio.Semaphore(1))
    rig.run(polls)
    slow = rig.poller("slow", slow=True)
    polls.add(slow)
    await until(lambda: rig.in_flight == 1, "the slow feed's poll under way")
    assert [t.get_name() for t in polls_running()] == ["poll slow"]
    later = rig.poller("later")
    polls.add(later)
    await asyncio.sleep(0.5)
    assert rig.requests("later") == []          # the only slot is taken
    polls.remove(slow)                          # its poll is cancelled, its slot freed
    await until(lambda: len(rig.requests("later")) == 1, "the feed added later")
    assert "slow" not in rig.answered
    # Added and removed at once: never polled, and its slot is not lost.
    gone = rig.poller("gone")
    polls.add(gone)
    polls.remove(gone)
    assert slow.poll_soon() is True             # a removed feed: nothing happens
    last = rig.poller("last")
    polls.add(last)
    await until(lambda: len(rig.requests("last")) == 1, "the last feed")
    await asyncio.sleep(0.5)
    assert rig.asked.count("gone") == 0 and rig.asked.count("slow") == 1


async def test_a_feed_gone_for_good_ends_and_is_not_polled_after_a_restart(
        rig: Rig) -> None:
    polls = Polls(asyncio.Semaphore(2))
    gone, fine = rig.poller("gone", interval=1, status=410), rig.poller("fine", interval=1)
    polls.add(gone)
    polls.add(fine)
    task = rig.run(polls)
    await until(lambda: gone.ended, "the feed to end")
    count = len(rig.requests("fine"))
    await until(lambda: len(rig.requests("fine")) >= count + 2, "the other feed's polls")
    assert len(rig.requests("gone")) == 1 and not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    polls = Polls(asyncio.Semaphore(2))
    again = rig.poller("gone", interval=1, status=410)
    polls.add(again)
    rig.run(polls)
    await until(lambda: again.ended, "the disabled feed to be known as ended")
    await asyncio.sleep(1.5)
    assert len(rig.requests("gone")) == 1


async def test_stopping_cancels_the_polls_under_way(rig: Rig) -> None:
    limiter = asyncio.Semaphore(2)
    polls = Polls(limiter)
    for name in ("a", "b", "c"):
        polls.add(rig.poller(name, slow=True))
    task = rig.run(polls)
    await until(lambda: rig.in_flight == 2, "two polls under way")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert polls_running() == []
    # Their slots are back.
    await asyncio.wait_for(asyncio.gather(limiter.acquire(), limiter.acquire()), DEADLINE)
