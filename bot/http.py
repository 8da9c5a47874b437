"""The bot's own HTTP listener (``http.listen``, off by default): health, metrics, push.

- ``GET /healthz``: 200 when the sync loop, the feeds' pollers and the rooms' delivery
  workers run and the database takes a write; 503 otherwise, one reason a line.
- ``GET /metrics``: the Prometheus exposition (bot.metrics).
- ``POST /feeds/{name}/poll`` with ``Authorization: Bearer <http.push_token>``: poll that
  feed now, through its poller's own loop (the same decisions, the same exactly-once
  outbox); 202. Pushes closer together than the poller's gap make one poll. Only served
  when a push token is configured.

Anyone who reaches the listener may send anything, so: a request's body is small and read
within a few seconds, the token is compared in constant time and never logged, refusals
are logged at most once a minute (with how many there were), and what a stranger put in
the path is only logged when it is a feed's name.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.clock import Clock
from bot.errors import StorageError
from bot.metrics import Metrics
from bot.store.base import KeyValueStore

log = logging.getLogger(__name__)

HEARTBEAT_KEY = "http.health_heartbeat"
# Health is checked at most this often (seconds): a flood of /healthz costs one write.
HEALTH_CACHE = 1.0
# A push needs no body; one is accepted (and ignored) up to this size, read this fast.
MAX_BODY = 4096
BODY_TIMEOUT = 5.0
REFUSAL_LOG_EVERY = 60.0
_FEED_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

# What a push came to: a poll asked for, or joined to one asked for and not begun yet;
# no such feed; a feed no longer polled (gone for good).
PushOutcome = Literal["queued", "joined", "unknown", "stopped"]


@dataclass(frozen=True, slots=True)
class Loop:
    """One of the bot's loops, as health sees it."""

    what: str                           # "sync", "poller of feed actus"...
    task: asyncio.Task[Any] | None      # None: not running (never started, or ended)
    may_end: bool = False               # ending by itself is fine (a feed gone for good)


def loop_problem(loop: Loop) -> str | None:
    task = loop.task
    if task is None:
        return f"{loop.what}: not running"
    if not task.done():
        return None
    if task.cancelled():
        return f"{loop.what}: stopped"
    exc = task.exception()
    if exc is not None:
        # Its type only: the text may name what a stranger must not read; the log has it.
        return f"{loop.what}: ended by {type(exc).__name__}"
    return None if loop.may_end else f"{loop.what}: ended"


class HttpListener:
    def __init__(self, store: KeyValueStore, clock: Clock, *,
                 loops: Callable[[], Iterable[Loop]], metrics: Metrics | None = None,
                 push: Callable[[str], PushOutcome] | None = None,
                 push_token: str | None = None,
                 routes: Sequence[web.RouteDef] = (),
                 body_timeout: float = BODY_TIMEOUT,
                 leases: Callable[[], Awaitable[list[str]]] | None = None,
                 heartbeat_key: str = HEARTBEAT_KEY) -> None:
        """``push`` and ``push_token``: both, or push is not served. ``routes``: more
        routes on the same listener."""
        self._store = store
        self._clock = clock
        self._body_timeout = body_timeout
        self._loops = loops
        self._metrics = metrics
        self._push = push if push_token else None
        self._token = push_token.encode() if push_token else b""
        self._routes = routes
        # Several instances: the leases this one holds, shown by /healthz; each instance
        # proves the database writable under its own key.
        self._leases = leases
        self._heartbeat_key = heartbeat_key
        self._health_lock = asyncio.Lock()
        self._health: tuple[float, list[str]] | None = None     # (checked at, problems)
        self._refusals = 0                  # not logged yet
        self._refusal_logged = -math.inf

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._metrics_page)
        if self._push is not None:
            app.router.add_post("/feeds/{name}/poll", self._push_poll)
        app.router.add_routes(self._routes)
        return app

    async def serve(self, host: str, port: int) -> None:
        """Serve until cancelled."""
        # A stop waits at most a second for requests under way: a slow or stalled client
        # must not hold the bot's shutdown (aiohttp would wait a minute).
        runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                # The bot's job is the news: a busy port costs the listener, not the bot.
                log.error("http: cannot listen on %s:%d (%s); no /healthz, /metrics nor "
                          "push", host, port, exc.strerror or exc)
                return
            log.info("http: listening on http://%s:%d (/healthz%s%s)", host, port,
                     ", /metrics" if self._metrics is not None else "",
                     ", POST /feeds/NAME/poll" if self._push is not None else "")
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    # -- health -------------------------------------------------------------------------

    async def problems(self) -> list[str]:
        """Why the bot is not healthy (nothing: it is)."""
        async with self._health_lock:
            now = asyncio.get_running_loop().time()
            if self._health is not None and now - self._health[0] < HEALTH_CACHE:
                return self._health[1]
            problems = [p for p in map(loop_problem, self._loops()) if p is not None]
            try:
                await self._store.put(self._heartbeat_key, f"{self._clock.now():.0f}")
            except StorageError as exc:
                problems.append(f"database not writable: {exc}")
            self._health = (asyncio.get_running_loop().time(), problems)
            return problems

    async def _healthz(self, _request: web.Request) -> web.Response:
        problems = await self.problems()
        held = ""
        if self._leases is not None:
            try:
                names = await self._leases()
                held = f"leases held: {', '.join(names) if names else 'none'}\n"
            except StorageError:
                pass    # already a problem above
        if problems:
            return web.Response(status=503, text="".join(f"{p}\n" for p in problems) + held)
        return web.Response(text="ok\n" + held)

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        assert self._metrics is not None
        body = await self._metrics.scrape()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- push ---------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Compared whatever the scheme, so the time taken says nothing either.
        same = hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token)
        return scheme.lower() == "bearer" and same

    def _refused(self, request: web.Request, name: str, why: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._refusal_logged < REFUSAL_LOG_EVERY:
            self._refusals += 1
            return
        shown = name if _FEED_NAME_RE.fullmatch(name) else "(not a feed name)"
        more = (f" ({self._refusals} more refused since the last such line)"
                if self._refusals else "")
        log.warning("http: refused a push for feed %s from %s: %s%s", shown,
                    request.remote or "an unknown address", why, more)
        self._refusals = 0
        self._refusal_logged = now

    async def _push_poll(self, request: web.Request) -> web.Response:
        assert self._push is not None
        name = request.match_info["name"]
        length = request.content_length
        if length is not None and length > MAX_BODY:
            return _answer(413, error=f"a push needs no body (at most {MAX_BODY} bytes)")
        if not self._authorized(request):
            why = ("no bearer token" if "Authorization" not in request.headers
                   else "wrong token")
            self._refused(request, name, why)
            return _answer(401, error="a valid bearer token is needed",
                           headers={"WWW-Authenticate": 'Bearer realm="newsbot"'})
        try:
            # Read (and ignored) so the connection stays usable; bounded in size and time.
            if not await asyncio.wait_for(_small_body(request), self._body_timeout):
                return _answer(413, error=f"a push needs no body (at most {MAX_BODY} bytes)")
        except TimeoutError:
            return _answer(408, error="the body was too slow to arrive")
        outcome = self._push(name) if _FEED_NAME_RE.fullmatch(name) else "unknown"
        if outcome == "unknown":
            return _answer(404, error="no feed of that name")
        if outcome == "stopped":
            return _answer(409, error="this feed is no longer polled (see the log)")
        log.info("http: push for feed %s: poll %s", name, outcome)
        return _answer(202, feed=name, poll=outcome)


async def _small_body(request: web.Request) -> bool:
    """Read the body, unless it is larger than MAX_BODY (False). Not the application's
    client_max_size: other routes on the listener (WebSub's) take larger bodies."""
    size = 0
    async for chunk in request.content.iter_chunked(1024):
        size += len(chunk)
        if size > MAX_BODY:
            return False
    return True


def _answer(status: int, *, headers: dict[str, str] | None = None,
            **fields: str) -> web.Response:
    return web.Response(status=status, text=json.dumps(fields) + "\n",
                        content_type="application/json", headers=headers)
