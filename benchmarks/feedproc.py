"""A FeedServer (tests/support/feedserver.py) in a child process of its own.

Serving is the feed server's work, not the bot's: in another process it is neither
counted in the bot's CPU time nor competing with it for the GIL or the event loop, and
on two cores the bot and the server each get one. The parent drives it by JSON lines on
the child's stdin and stdout (``FeedProcess.call``): make feeds, change one, count the
requests it answered.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.feedserver import FeedItem, FeedServer, make_items, render_rss

ROOT = Path(__file__).resolve().parent.parent


def big_items(count: int, size: int, version: str) -> list[FeedItem]:
    """``count`` entries of about ``size`` bytes of HTML each (poll_stall's feed)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    paragraph = "<p>" + "Données de santé hébergées en Europe. " * 20 + "</p>"
    body = paragraph * max(1, size // len(paragraph))
    return [FeedItem(guid=f"urn:bench:big:{n}", title=f"Numéro {n} {version}",
                     link=f"https://asso.example/{n}", summary=f"Résumé {n} {version}",
                     content=f"<h2>Partie {n} {version}</h2>{body}",
                     published=start + timedelta(hours=n)) for n in range(count)]


def news_item(guid: str, title: str) -> FeedItem:
    return FeedItem(guid=guid, title=title, link=f"https://asso.example/{guid}",
                    summary="<p>Un numéro tout frais.</p>",
                    published=datetime.now(UTC).replace(microsecond=0))


class _Child:
    """The child's side: one FeedServer on a loop in a thread; commands come on stdin and
    run on that loop, so the server's state is only ever touched there."""

    def __init__(self, server: FeedServer) -> None:
        self.server = server
        self.served = 0          # answers of the changing big feed
        self.items: dict[str, list[FeedItem]] = {}
        self.idle = True         # the changing feed answers 304s while set

    def feeds(self, prefix: str, count: int, entries: int) -> list[tuple[str, str]]:
        """``count`` small unchanged feeds; returns (url, etag) of each."""
        out = []
        for n in range(count):
            path = f"/{prefix}/{n}.xml"  # the prefix names the set: count("/prefix/")
            self.server.set_feed(path, make_items(entries, prefix=f"{prefix}-{n}"))
            out.append((self.server.url(path), self.server.etag(path) or ""))
        return out

    def publish(self, path: str, guid: str, title: str) -> None:
        """Add one new entry at the top of the feed at ``path`` (made if new)."""
        items = self.items.setdefault(path, [])
        items.insert(0, news_item(guid, title))
        self.server.set_feed(path, items)

    def changing(self, path: str, count: int, size: int) -> int:
        """A feed at ``path`` whose every entry changes at each request (two versions in
        turn, compressed once here, so serving costs the server almost nothing); a
        request carrying a validator while ``idle`` is set gets a 304. Returns its size."""
        bodies = []
        for version in ("v1", "v2"):
            raw = render_rss(big_items(count, size, version), title="Lettre", lang="fr",
                             link="https://asso.example/", self_url=self.server.url(path))
            bodies.append((raw, gzip.compress(raw, mtime=0)))

        async def handler(request: web.Request) -> web.StreamResponse:
            if self.idle and "If-None-Match" in request.headers:
                return web.Response(status=304, headers={"ETag": '"idle"'})
            raw, packed = bodies[self.served % 2]
            self.served += 1
            headers = {"Content-Type": "application/rss+xml; charset=utf-8"}
            if self.idle:
                headers["ETag"] = '"idle"'
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                headers["Content-Encoding"] = "gzip"
                return web.Response(body=packed, headers=headers)
            return web.Response(body=raw, headers=headers)

        self.server.set_handler(path, handler)
        return len(bodies[0][0])

    def set_idle(self, idle: bool) -> int:
        """Turn the changing feed's 304s on or off; returns its full answers so far."""
        self.idle = idle
        return self.served

    def count(self, prefix: str) -> int:
        """Requests answered for paths starting with ``prefix`` (since ``forget``)."""
        # FeedServer.requests() copies one path's list: 10,000 paths are read in place.
        return sum(len(r) for path, r in self.server._records.items()
                   if path.startswith(prefix))

    def forget(self) -> None:
        self.server.clear_requests()

    def cpu(self) -> float:
        times = os.times()
        return times.user + times.system


def _child_main() -> None:
    """The child: commands are JSON lines on stdin, answers JSON lines on stdout; the
    end of stdin (the parent gone) ends it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FeedServer()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result()
    child = _Child(server)
    out = sys.stdout
    out.write(json.dumps(["ready", server.base_url]) + "\n")
    out.flush()
    for line in sys.stdin:
        name, args = json.loads(line)
        method: Callable[..., Any] = getattr(child, name)

        async def run(method: Callable[..., Any] = method, args: Any = args) -> Any:
            return method(*args)

        try:
            answer = ["ok", asyncio.run_coroutine_threadsafe(run(), loop).result()]
        except Exception:
            answer = ["error", traceback.format_exc()]
        out.write(json.dumps(answer) + "\n")
        out.flush()
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()


class FeedProcess:
    """The parent's handle: ``with FeedProcess() as feeds: feeds.call("feeds", ...)``."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.base_url = ""

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> FeedProcess:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.feedproc"], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        status, self.base_url = self._read()
        assert status == "ready", status
        return self

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()          # the child's loop ends on end of input
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _read(self) -> list[Any]:
        assert self._process is not None and self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the feed process ended")
        answer: list[Any] = json.loads(line)
        return answer

    def url(self, path: str) -> str:
        return self.base_url + path

    def call(self, name: str, *args: Any) -> Any:
        assert self._process is not None and self._process.stdin is not None
        with self._lock:
            self._process.stdin.write(json.dumps([name, args]) + "\n")
            self._process.stdin.flush()
            status, value = self._read()
        if status != "ok":
            raise RuntimeError(f"feed process: {name} failed:\n{value}")
        return value

    async def acall(self, name: str, *args: Any) -> Any:
        """``call`` off the event loop: the bot's loop keeps running while it waits."""
        return await asyncio.to_thread(self.call, name, *args)


if __name__ == "__main__":
    _child_main()
