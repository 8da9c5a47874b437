"""Wiring: one supervisor task tree runs the pollers, the delivery workers and the sync.

Lifecycle: open the store -> connect (waiting for the homeserver) -> run every loop in one
TaskGroup -> on SIGTERM/SIGINT stop polling, let in-flight sends finish (bounded), close.
A failure in any loop that is not handled where it happens (e.g. revoked credentials)
ends the whole tree, and with it the process, with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from bot.clock import Clock, SystemClock
from bot.config import Config
from bot.delivery import Deliverer
from bot.errors import TransportError
from bot.feeds.fetch import Fetcher
from bot.feeds.poller import FeedPoller
from bot.store import Store
from bot.transport.base import Transport

log = logging.getLogger(__name__)

T = TypeVar("T")

DRAIN_SECONDS = 10.0
PRUNE_EVERY = 24 * 3600.0
KEEP_SENT_ROWS = 30 * 24 * 3600.0


class App:
    def __init__(self, config: Config, *, transport: Transport | None = None,
                 store: Store | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.store = store or Store.open(config.storage.path)
        if transport is None:
            from bot.transport.matrix import MatrixTransport
            transport = MatrixTransport(config.matrix, self.store, config.storage.path)
        self.transport: Transport = transport
        self.deliverer = Deliverer(self.store, self.transport, self.clock)
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: no more polling; finishing the sends in flight")
        self._stop.set()

    async def _unless_stopped(self, work: Coroutine[Any, Any, T]) -> T | None:
        """Run ``work`` unless a stop is requested first (then cancel it, return None)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise       # the cancellation was aimed at us, not at ``work``
        return None

    async def _on_invite(self, room_id: str, inviter: str) -> bool:
        if inviter in self.config.admins:
            log.info("accepting the invite to %s from admin %s", room_id, inviter)
            return True
        log.warning("rejecting the invite to %s from %s: not in admins", room_id,
                    inviter or "an unknown user")
        return False

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> None:
        self._install_signal_handlers()
        try:
            connected = await self._unless_stopped(self._connect())
            if connected is None:
                return
            await self._supervise()
        finally:
            await self.transport.close()
            self.store.close()
            log.info("stopped")

    async def _connect(self) -> bool:
        await self.transport.connect()
        return True

    async def _same_rooms(self) -> dict[str, str]:
        """Map each configured room to one name per actual room: an alias and the id of
        the same room must not make two deliveries of every item."""
        first_by_id: dict[str, str] = {}
        canonical: dict[str, str] = {}
        for ref in dict.fromkeys(r for feed in self.config.feeds for r in feed.rooms):
            try:
                room_id = await self.transport.resolve_room(ref)
            except TransportError:
                canonical[ref] = ref     # resolved again when its worker joins
                continue
            first = first_by_id.setdefault(room_id, ref)
            if first != ref:
                log.warning("rooms %s and %s are the same room (%s): posting there once",
                            first, ref, room_id)
            canonical[ref] = first
        return canonical

    async def _supervise(self) -> None:
        cfg = self.config
        canonical = await self._same_rooms()
        feeds = [replace(feed, rooms=tuple(dict.fromkeys(canonical[r] for r in feed.rooms)))
                 for feed in cfg.feeds]
        rooms = list(dict.fromkeys(
            [room for feed in feeds for room in feed.rooms] + self.store.pending_rooms()))
        limiter = asyncio.Semaphore(cfg.fetch.concurrency)
        async with Fetcher(allow_private_networks=cfg.fetch.allow_private_networks,
                           max_body_bytes=cfg.fetch.max_body_bytes,
                           total_timeout=cfg.fetch.timeout,
                           connect_timeout=cfg.fetch.connect_timeout) as fetcher:
            pollers = [FeedPoller(feed, store=self.store, fetcher=fetcher, clock=self.clock,
                                  fetch_config=cfg.fetch, language=cfg.language,
                                  limiter=limiter, on_enqueued=self.deliverer.wake)
                       for feed in feeds]
            log.info("watching %d feed(s) for %d room(s)", len(pollers), len(rooms))
            async with asyncio.TaskGroup() as tg:
                workers = [tg.create_task(self.deliverer.run_room(room), name=f"deliver {room}")
                           for room in rooms]
                background = [tg.create_task(p.run(), name=f"poll {p.feed.name}")
                              for p in pollers]
                background.append(tg.create_task(
                    self.transport.run_sync(self._on_invite,
                                            lambda _room_id: self.deliverer.wake_all()),
                    name="sync"))
                background.append(tg.create_task(self._maintain(), name="maintenance"))
                await self._stop.wait()
                for task in background:
                    task.cancel()
                self.deliverer.stop()
                _, late = await asyncio.wait(workers, timeout=DRAIN_SECONDS)
                for task in late:
                    log.warning("%s: send still in flight after %.0f s; it will be retried "
                                "on the next start", task.get_name(), DRAIN_SECONDS)
                    task.cancel()

    async def _maintain(self) -> None:
        while True:
            removed = self.store.prune_sent(self.clock.now() - KEEP_SENT_ROWS)
            if removed:
                log.info("forgot %d delivered outbox rows older than 30 days", removed)
            await asyncio.sleep(PRUNE_EVERY)
