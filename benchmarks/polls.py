"""Unchanged polls (lines 1 and 2): newsbot's pollers against a bare aiohttp loop.

newsbot: the real FeedPoller of each feed (tests/support/pollers.py), over a real
SqliteStore in a temporary directory on disk and one shared Fetcher, polled the way
App runs them (every feed due, at most ``concurrency`` at once: ``fetch.concurrency``).
The limit: one aiohttp session GETting the same URLs with If-None-Match, at the same
concurrency, reading each 304. Both meet the same feed server, in another process
(benchmarks/feedproc.py), and both warm up first (newsbot's first sight of each feed,
the bare loop's first round), so what is measured is unchanged polls on open
connections. Rounds alternate (newsbot, bare, newsbot, bare...) so a change in the
machine's load falls on both.

CPU is the whole process's (every thread: ``time.process_time``); it includes the event
loop, the store's SQLite work and the fetch, and excludes the feed server's.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from benchmarks.feedproc import FeedProcess
from bot.config import FeedConfig, FetchConfig
from bot.feeds.fetch import Fetcher
from bot.poller import FeedPoller
from bot.store import SqliteStore
from tests.support.pollers import feed_poller

CONCURRENCY = 8      # fetch.concurrency's default


@dataclass
class Round:
    polls: int
    cpu: float          # seconds of this process's CPU
    wall: float         # seconds
    server_cpu: float   # seconds of the feed server's CPU in the same time

    @property
    def per_second(self) -> float:
        return self.polls / self.wall

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu / self.polls * 1000


@dataclass
class PollFigures:
    feeds: int
    newsbot: list[Round] = field(default_factory=list)
    bare: list[Round] = field(default_factory=list)
    warmup_seconds: float = 0.0     # newsbot's first sight of every feed

    def summary(self) -> dict[str, object]:
        def side(rounds: list[Round]) -> dict[str, object]:
            return {
                "rounds": [{"polls": r.polls, "cpu_s": round(r.cpu, 4), "wall_s": round(r.wall, 4),
                            "server_cpu_s": round(r.server_cpu, 4)} for r in rounds],
                "cpu_per_1000_s": statistics.median(r.cpu_per_1000 for r in rounds),
                "requests_per_s": statistics.median(r.per_second for r in rounds),
                "server_busy": statistics.median(r.server_cpu / r.wall for r in rounds),
            }
        return {"feeds": self.feeds, "concurrency": CONCURRENCY,
                "newsbot_first_sight_s": round(self.warmup_seconds, 2),
                "newsbot": side(self.newsbot), "bare": side(self.bare)}


async def _measured(feeds: FeedProcess, polls: int,
                    work: Callable[[], Awaitable[None]]) -> Round:
    gc.collect()
    server_before = await feeds.acall("cpu")
    cpu, wall = time.process_time(), time.perf_counter()
    await work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server = await feeds.acall("cpu") - server_before
    return Round(polls, cpu, wall, server)


async def _newsbot_round(pollers: list[FeedPoller]) -> None:
    limiter = asyncio.Semaphore(CONCURRENCY)

    async def one(poller: FeedPoller) -> None:
        async with limiter:      # as Polls does, with App's shared limiter
            await poller.poll_once()

    await asyncio.gather(*(one(p) for p in pollers))


async def _bare_round(session: aiohttp.ClientSession, feeds: list[tuple[str, str]]) -> None:
    limiter = asyncio.Semaphore(CONCURRENCY)

    async def one(url: str, etag: str) -> None:
        async with limiter, session.get(url, headers={"If-None-Match": etag}) as resp:
            await resp.read()
            if resp.status != 304:
                raise RuntimeError(f"bare loop: {url} answered {resp.status}, not 304")

    await asyncio.gather(*(one(url, etag) for url, etag in feeds))


async def measure(feeds: FeedProcess, count: int, rounds: int, prefix: str, state: Path,
                  log: Callable[[str], None] = print,
                  ) -> tuple[PollFigures, list[tuple[str, str, str]]]:
    """``rounds`` alternating rounds of ``count`` unchanged polls on each side; returns
    the figures and the feeds (name, url, etag), whose state stays in ``state``."""
    urls = await feeds.acall("feeds", prefix, count, 2)
    names = [f"{prefix}-{n}" for n in range(count)]
    figures = PollFigures(count)
    store = SqliteStore.open(state)
    try:
        async with Fetcher(allow_private_networks=True) as fetcher:
            # A one-second interval leaves every feed due again soon after: a bot started
            # later on this state (line 6) polls each once at its start.
            pollers = [feed_poller(FeedConfig(name=name, url=url, rooms=("!bench:localhost",),
                                              interval=1),
                                   store, fetcher,
                                   fetch_config=FetchConfig(allow_private_networks=True))
                       for name, (url, _etag) in zip(names, urls, strict=True)]
            for poller in pollers:
                await store.ensure_feed(poller.feed.name, poller.feed.url)
            started = time.perf_counter()
            await _newsbot_round(pollers)                # first sight: parsed, not timed
            figures.warmup_seconds = time.perf_counter() - started
            log(f"    first sight of {count:,} feeds: {figures.warmup_seconds:.1f} s")
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                # newsbot's first sight opened its connections and read its store; the
                # bare loop gets one round to open its own.
                await _bare_round(session, urls)
                for _ in range(rounds):
                    figures.newsbot.append(await _measured(
                        feeds, count, lambda: _newsbot_round(pollers)))
                    figures.bare.append(await _measured(
                        feeds, count, lambda: _bare_round(session, urls)))
                    n, b = figures.newsbot[-1], figures.bare[-1]
                    log(f"    round: newsbot {n.per_second:,.0f}/s, "
                        f"{n.cpu_per_1000:.2f} s CPU per 1,000; bare {b.per_second:,.0f}/s, "
                        f"{b.cpu_per_1000:.2f} s CPU per 1,000")
    finally:
        store.close()
    await feeds.acall("forget")
    return figures, [(name, url, etag) for name, (url, etag) in zip(names, urls, strict=True)]
