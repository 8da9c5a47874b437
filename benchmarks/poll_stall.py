"""The longest event-loop stall while newsbot polls a 2 MB feed. Prints it; asserts nothing.

    .venv/bin/python benchmarks/poll_stall.py            # 2 MB, 3 rooms, 3 runs

A ticker on the loop asks to wake every 5 ms and records how late it woke; the figure is
the worst lateness during each kind of poll of one feed of about 2 MB (400 entries of
5 KB): its first sight (50 entries planned for 3 rooms), the same body again, and a
body where every entry changed (each posted one compared, 50 corrections planned). The
feed server runs on a loop of its own in another thread: serving and compressing 2 MB is
not counted. A body this large is parsed in a worker process (bot.feeds.parse.LARGE_BODY),
deciding and planning run in a worker thread; what remains on the loop is the fetch, the
store's writes (record_poll: about 5 ms here) and the bookkeeping between them, plus
waiting for the GIL while the planning thread runs Python.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.clock import SystemClock  # noqa: E402
from bot.config import FeedConfig, FetchConfig  # noqa: E402
from bot.feeds.fetch import Fetcher  # noqa: E402
from bot.poller import FeedPoller  # noqa: E402
from bot.store import SqliteStore  # noqa: E402
from tests.support import FeedItem, FeedServer  # noqa: E402

TICK = 0.005


def items(count: int, size: int, version: str) -> list[FeedItem]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    paragraph = "<p>" + "Données de santé hébergées en Europe. " * 20 + "</p>"
    body = paragraph * max(1, size // len(paragraph))
    return [FeedItem(guid=f"urn:stall:{n}", title=f"Numéro {n} {version}",
                     link=f"https://asso.example/{n}", summary=f"Résumé {n} {version}",
                     content=f"<h2>Partie {n} {version}</h2>{body}",
                     published=start + timedelta(hours=n)) for n in range(count)]


async def worst_stall(work: asyncio.Future[object] | asyncio.Task[object]) -> float:
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not work.done():
        before = loop.time()
        await asyncio.sleep(TICK)
        worst = max(worst, loop.time() - before - TICK)
    await work
    return worst


class Served:
    """A FeedServer on its own loop in another thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: FeedServer) -> None:
        self._loop, self._server = loop, server

    def url(self, path: str) -> str:
        return self._server.url(path)

    def set_feed(self, path: str, entries: list[FeedItem]) -> bytes:
        async def put() -> bytes:
            return self._server.set_feed(path, entries)
        return asyncio.run_coroutine_threadsafe(put(), self._loop).result()


@contextmanager
def served() -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FeedServer()
    asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result()
    try:
        yield Served(loop, server)
    finally:
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


async def run(state: Path, server: Served, rooms: int) -> dict[str, float]:
    path = f"/stall-{state.name}.xml"
    size = len(server.set_feed(path, items(400, 5000, "v1")))
    feed = FeedConfig(name="lettre", url=server.url(path),
                      rooms=tuple(f"!room{n}:x" for n in range(rooms)),
                      interval=3600, backfill=50, max_per_poll=50)
    store = SqliteStore.open(state)
    figures = {}
    async with Fetcher(allow_private_networks=True) as fetcher:
        poller = FeedPoller(feed, store=store, fetcher=fetcher, clock=SystemClock(),
                            fetch_config=FetchConfig(allow_private_networks=True),
                            language="fr",
                            on_enqueued=lambda _rooms: None)
        for label, version in (("first sight", "v1"), ("same body", "v1"),
                               ("every entry changed", "v2")):
            server.set_feed(path, items(400, 5000, version))
            started = time.perf_counter()
            figures[label] = await worst_stall(asyncio.ensure_future(poller.poll_once()))
            figures[label + " (poll)"] = time.perf_counter() - started
    figures["feed bytes"] = float(size)
    store.close()
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rooms", type=int, default=3)
    args = parser.parse_args()
    with served() as server, tempfile.TemporaryDirectory() as tmp:
        results = [await run(Path(tmp) / f"run{n}", server, args.rooms)
                   for n in range(args.runs)]
    for label in ("first sight", "same body", "every entry changed"):
        stalls = [r[label] * 1000 for r in results]
        polls = [r[label + " (poll)"] for r in results]
        print(f"{label:22} worst stall {max(stalls):7.1f} ms "
              f"(median {statistics.median(stalls):.1f}), poll {statistics.median(polls):.2f} s")
    print(f"feed of {results[0]['feed bytes'] / 1e6:.1f} MB, {args.rooms} rooms, "
          f"{args.runs} runs")


if __name__ == "__main__":
    asyncio.run(main())
