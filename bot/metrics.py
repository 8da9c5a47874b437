"""Reader counts and health, for ``!news stats`` and an optional local metrics endpoint.

Readers are counted, never listed: the joined members of a feed's rooms (the bot aside)
plus its personal subscribers. No read receipts are collected, nothing per person is kept.
The endpoint (``metrics.listen``, off by default) speaks the Prometheus text format.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from bot.clock import Clock
from bot.config import FeedConfig
from bot.errors import TransportError
from bot.store import Store
from bot.transport.base import Transport

log = logging.getLogger(__name__)

# Reader counts cost one request per room: counted on a scrape, at most this often.
COUNT_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Readers:
    members: int         # joined members of the feed's rooms, each person once
    subscribers: int     # personal subscriptions

    @property
    def total(self) -> int:
        return self.members + self.subscribers


async def count_readers(transport: Transport, store: Store, feed: FeedConfig,
                        bot_user: str,
                        seen: dict[str, list[str]] | None = None) -> Readers:
    """``seen`` (room -> members) lets one counting pass ask for each room once."""
    members: set[str] = set()
    for ref in feed.rooms:
        if seen is None or ref not in seen:
            room_members = await transport.joined_members(await transport.resolve_room(ref))
            if seen is not None:
                seen[ref] = room_members
        else:
            room_members = seen[ref]
        members.update(room_members)
    members.discard(bot_user)
    return Readers(len(members), store.subscriber_count(feed.name))


class Metrics:
    def __init__(self, store: Store, transport: Transport, clock: Clock,
                 feeds: Callable[[], list[FeedConfig]], bot_user: str,
                 delivered: Callable[[], int]) -> None:
        self._store = store
        self._transport = transport
        self._clock = clock
        self._feeds = feeds
        self._bot_user = bot_user
        self._delivered = delivered
        self.readers: dict[str, Readers] = {}
        self._counted_at: float | None = None

    async def refresh(self) -> None:
        now = self._clock.now()
        if self._counted_at is not None and now - self._counted_at < COUNT_EVERY:
            return
        seen: dict[str, list[str]] = {}
        counted: dict[str, Readers] = {}
        for feed in self._feeds():
            try:
                counted[feed.name] = await count_readers(
                    self._transport, self._store, feed, self._bot_user, seen)
            except TransportError as exc:
                log.info("metrics: readers of %s not counted now: %s", feed.name, exc)
                if feed.name in self.readers:
                    counted[feed.name] = self.readers[feed.name]
        self.readers = counted      # removed feeds disappear
        self._counted_at = self._clock.now()

    def render(self) -> str:
        lines = [
            "# HELP newsbot_feed_readers Joined members of the feed's rooms plus personal "
            "subscribers.",
            "# TYPE newsbot_feed_readers gauge",
        ]
        lines += [f'newsbot_feed_readers{{feed="{_label(name)}"}} {r.total}'
                  for name, r in sorted(self.readers.items())]
        lines += ["# HELP newsbot_feed_subscribers Personal subscriptions by direct message.",
                  "# TYPE newsbot_feed_subscribers gauge"]
        lines += [f'newsbot_feed_subscribers{{feed="{_label(name)}"}} {r.subscribers}'
                  for name, r in sorted(self.readers.items())]
        lines += ["# HELP newsbot_feed_failures Consecutive failed fetches.",
                  "# TYPE newsbot_feed_failures gauge",
                  "# HELP newsbot_feed_last_success_seconds When the feed was last read.",
                  "# TYPE newsbot_feed_last_success_seconds gauge"]
        for feed in self._feeds():
            state = self._store.feed_state(feed.name)
            if state is None:
                continue
            label = _label(feed.name)
            lines.append(f'newsbot_feed_failures{{feed="{label}"}} {state.failures}')
            if state.last_success is not None:
                lines.append(f'newsbot_feed_last_success_seconds{{feed="{label}"}} '
                             f"{state.last_success:.0f}")
        lines += ["# HELP newsbot_outbox_pending Items waiting to be delivered.",
                  "# TYPE newsbot_outbox_pending gauge",
                  f"newsbot_outbox_pending {self._store.pending_count()}",
                  "# HELP newsbot_delivered_total Items delivered since the bot started.",
                  "# TYPE newsbot_delivered_total counter",
                  f"newsbot_delivered_total {self._delivered()}",
                  "# HELP newsbot_outbox_failed Deliveries parked after repeated unforeseen "
                  "errors (see the log for each reason).",
                  "# TYPE newsbot_outbox_failed gauge",
                  f"newsbot_outbox_failed {self._store.failed_count()}"]
        return "\n".join(lines) + "\n"

    async def serve(self, host: str, port: int) -> None:
        """Serve /metrics until cancelled. Nothing runs between scrapes."""
        async def handler(_request: web.Request) -> web.Response:
            await self.refresh()
            return web.Response(text=self.render(), content_type="text/plain",
                                charset="utf-8")

        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                # The bot's job is the news: a busy port costs the metrics, not the bot.
                log.error("metrics: cannot listen on %s:%d (%s); no metrics endpoint",
                          host, port, exc.strerror or exc)
                return
            log.info("metrics on http://%s:%d/metrics", host, port)
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
