"""Shows, with the bot's own Fetcher and nothing else, why feeds that share a host with
slow feeds time out in tests/test_load.py although their server answers at once.

Fetcher's TCPConnector allows 2 connections per host (bot/feeds/fetch.py), and the
asyncio.timeout around Fetcher.fetch() also runs while a request waits for one of them.
Two slow fetches on a host make a third, instant one on the same host wait until they
time out: it spends ~95 % of its own timeout queued, so any further delay (a third slow
feed, a busy event loop) makes it fail with "timed out after <timeout> s". The same
instant fetch on another host takes milliseconds.

    .venv/bin/python benchmarks/host_slot_timeout.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.errors import FetchError  # noqa: E402
from bot.feeds.fetch import Fetcher  # noqa: E402
from tests.support import FeedServer, make_items  # noqa: E402

TIMEOUT = 2.0


async def slow(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(100):
        if request.transport is None or request.transport.is_closing():
            break
        await response.write(b" ")
        await asyncio.sleep(0.05)
    return response


async def timed(fetcher: Fetcher, url: str) -> str:
    start = time.monotonic()
    try:
        result = await fetcher.fetch(url)
        outcome = f"HTTP {result.status}"
    except FetchError as exc:
        outcome = f"FetchError: {exc}"
    return f"{outcome} after {time.monotonic() - start:.2f} s"


async def main() -> None:
    async with FeedServer() as shared, FeedServer() as other:
        shared.set_handler("/slow-1", slow)
        shared.set_handler("/slow-2", slow)
        shared.set_feed("/healthy", make_items(2))
        other.set_feed("/healthy", make_items(2))
        async with Fetcher(allow_private_networks=True, total_timeout=TIMEOUT) as fetcher:
            tasks = [asyncio.create_task(timed(fetcher, shared.url(p)))
                     for p in ("/slow-1", "/slow-2")]
            await asyncio.sleep(0.1)         # both slow fetches hold the host's 2 slots
            same_host = asyncio.create_task(timed(fetcher, shared.url("/healthy")))
            other_host = asyncio.create_task(timed(fetcher, other.url("/healthy")))
            for label, task in [("slow feed 1", tasks[0]), ("slow feed 2", tasks[1]),
                                ("healthy feed, same host", same_host),
                                ("healthy feed, other host", other_host)]:
                print(f"{label:26} {await task}")
        print(f"(timeout {TIMEOUT:g} s; /healthy is answered at once by both servers)")


if __name__ == "__main__":
    asyncio.run(main())
