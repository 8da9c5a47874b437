"""Polling one feed on its schedule: fetch, parse, decide, enqueue — then sleep.

A poll's result (seen entries, outbox rows, validators) is committed in one transaction,
so a crash at any point either redoes the whole poll or none of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable

from bot.clock import Clock
from bot.config import FeedConfig, FetchConfig
from bot.delivery import event_content
from bot.errors import FeedError, FetchError
from bot.feeds.decide import decide
from bot.feeds.fetch import Fetcher
from bot.feeds.parse import parse_feed_async
from bot.model import delivery_key
from bot.render import render_entry
from bot.store import NewDelivery, PollOutcome, Store

log = logging.getLogger(__name__)


def failure_delay(interval: float, failures: int, cap: float,
                  retry_after: float | None = None) -> float:
    """Capped exponential backoff; a server's Retry-After is a floor, not a suggestion."""
    delay = min(interval * 2 ** max(failures - 1, 0), max(cap, interval))
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(cap, interval)))
    return delay


def jittered(interval: float, rng: random.Random) -> float:
    # Only ever earlier, never later: an item must arrive within `interval` of appearing.
    return interval * rng.uniform(0.9, 1.0)


class FeedPoller:
    def __init__(self, feed: FeedConfig, *, store: Store, fetcher: Fetcher, clock: Clock,
                 fetch_config: FetchConfig, language: str, limiter: asyncio.Semaphore,
                 on_enqueued: Callable[[list[str]], None],
                 rng: random.Random | None = None) -> None:
        self.feed = feed
        self._store = store
        self._fetcher = fetcher
        self._clock = clock
        self._fetch_config = fetch_config
        self._language = feed.language or language
        self._limiter = limiter
        self._on_enqueued = on_enqueued
        self._rng = rng or random.Random()

    async def run(self) -> None:
        state = self._store.ensure_feed(self.feed.name, self.feed.url)
        now = self._clock.now()
        if state.next_fetch is None or state.next_fetch <= now:
            # Spread the first polls a little so a restart does not hit every server at once.
            first = self._rng.uniform(0, min(2.0, self.feed.interval / 10))
        else:
            first = min(state.next_fetch - now, self.feed.interval)
        await asyncio.sleep(first)
        while True:
            async with self._limiter:
                delay = await self.poll_once()
            await asyncio.sleep(delay)

    async def poll_once(self) -> float:
        """Poll now; returns the seconds to wait before the next poll."""
        feed = self.feed
        state = self._store.feed_state(feed.name) or self._store.ensure_feed(feed.name, feed.url)
        now = self._clock.now()
        try:
            result = await self._fetcher.fetch(state.url, etag=state.etag,
                                               last_modified=state.last_modified)
            if result.status == 304 or result.body is None:
                delay = jittered(feed.interval, self._rng)
                self._store.record_not_modified(feed.name, now=now, next_fetch=now + delay)
                log.debug("feed %s: not modified", feed.name)
                return delay
            body_hash = hashlib.sha256(result.body).hexdigest()
            if body_hash == state.body_hash and state.initialized:
                delay = jittered(feed.interval, self._rng)
                self._store.record_not_modified(feed.name, now=now, next_fetch=now + delay,
                                                etag=result.etag,
                                                last_modified=result.last_modified)
                log.debug("feed %s: same body as last time", feed.name)
                return delay
            parsed = await parse_feed_async(result.body, content_type=result.content_type,
                                            url=result.final_url)
        except FeedError as exc:
            return self._failed(exc, now, state.failures + 1)

        for warning in parsed.warnings:
            log.info("feed %s: %s", feed.name, warning)
        unseen = self._store.unseen(feed.name, (e.entry_id for e in parsed.entries))
        decision = decide(parsed.entries, unseen, first_sight=not state.initialized,
                          backfill=feed.backfill, max_per_poll=feed.max_per_poll)
        if decision.flood:
            log.warning("feed %s: %d entries appeared at once (did the feed rewrite its ids?); "
                        "posting the newest %d and marking the rest as seen",
                        feed.name, decision.skipped + len(decision.to_post), len(decision.to_post))
        elif not state.initialized:
            log.info("feed %s: first sight, %d entries marked as seen, posting the newest %d",
                     feed.name, len(decision.to_mark_seen), len(decision.to_post))

        deliveries = []
        for entry in decision.to_post:
            message = render_entry(entry, feed_title=parsed.title or None,
                                   language=self._language)
            for room in feed.rooms:
                key = delivery_key(feed.name, entry.entry_id, room)
                deliveries.append(NewDelivery(entry.entry_id, room, event_content(
                    message, msgtype=feed.msgtype, key=key)))
        if result.permanent_url and result.permanent_url != state.url:
            log.warning("feed %s moved permanently to %s; fetching from there from now on",
                        feed.name, result.permanent_url)
        delay = jittered(feed.interval, self._rng)
        rooms = self._store.record_poll(PollOutcome(
            feed=feed.name, now=now, next_fetch=now + delay, etag=result.etag,
            last_modified=result.last_modified, body_hash=body_hash,
            title=parsed.title or None, new_url=result.permanent_url,
            seen_entry_ids=decision.to_mark_seen, deliveries=deliveries))
        if decision.to_post:
            log.info("feed %s: %d new item(s) queued for %d room(s)", feed.name,
                     len(decision.to_post), len(feed.rooms))
        if rooms:
            self._on_enqueued(rooms)
        return delay

    def _failed(self, exc: FeedError, now: float, failures: int) -> float:
        retry_after = exc.retry_after if isinstance(exc, FetchError) else None
        delay = failure_delay(self.feed.interval, failures, self._fetch_config.max_backoff,
                              retry_after)
        self._store.record_failure(self.feed.name, str(exc), now=now, next_fetch=now + delay)
        log.warning("feed %s: %s (failure %d in a row; next try in %.0f s)",
                    self.feed.name, exc, failures, delay)
        return delay
