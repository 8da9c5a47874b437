"""Polling one feed on its schedule: fetch, parse, decide, enqueue — then sleep.

A poll's result (seen entries, outbox rows, validators) is committed in one transaction,
so a crash at any point either redoes the whole poll or none of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime

from bot.clock import Clock
from bot.config import FeedConfig, FetchConfig
from bot.delivery import edit_content, event_content
from bot.errors import FeedError, FetchError, StorageError
from bot.feeds.decide import chronological, decide, fingerprint
from bot.feeds.fetch import Fetcher, FetchResult
from bot.feeds.parse import parse_feed_async
from bot.filters import entry_text, wanted
from bot.i18n import text
from bot.media import IMAGE_FIELD
from bot.model import Entry, Message, delivery_key
from bot.render import render_entry
from bot.store import (
    FeedState,
    NewDelivery,
    PollOutcome,
    RecentEntry,
    RoomFeedSettings,
    Store,
)
from bot.store.sqlite import RECENT_PER_FEED
from bot.subscriptions import personal_deliveries
from bot.transport.base import DELIVERY_KEY_FIELD

log = logging.getLogger(__name__)


_DEFAULT_SETTINGS = RoomFeedSettings()


def failure_delay(interval: float, failures: int, cap: float,
                  retry_after: float | None = None) -> float:
    """Capped exponential backoff; a server's Retry-After is a floor, not a suggestion."""
    delay = min(interval * 2 ** max(failures - 1, 0), max(cap, interval))
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(cap, interval)))
    return delay


def _recent(feed: str, entries: tuple[Entry, ...]) -> list[RecentEntry]:
    recent = []
    for entry in chronological(entries)[-RECENT_PER_FEED:]:
        date = entry.published or entry.updated
        recent.append(RecentEntry(feed, entry.entry_id, entry.title, entry.link,
                                  date.timestamp() if date else None))
    return recent


def jittered(interval: float, rng: random.Random) -> float:
    # Only ever earlier, never later: an item must arrive within `interval` of appearing.
    return interval * rng.uniform(0.9, 1.0)


class FeedPoller:
    def __init__(self, feed: FeedConfig, *, store: Store, fetcher: Fetcher, clock: Clock,
                 fetch_config: FetchConfig, language: str, limiter: asyncio.Semaphore,
                 on_enqueued: Callable[[list[str]], None],
                 room_language: Callable[[str], str | None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.feed = feed
        self._store = store
        self._fetcher = fetcher
        self._clock = clock
        self._fetch_config = fetch_config
        self._language = feed.language or language
        self._limiter = limiter
        self._on_enqueued = on_enqueued
        self._room_language = room_language or (lambda _room: None)
        self._rng = rng or random.Random()

    @property
    def interval(self) -> float:
        """The config's interval, unless a moderator set another by command."""
        return self._store.feed_interval(self.feed.name) or self.feed.interval

    async def run(self) -> None:
        state = self._store.ensure_feed(self.feed.name, self.feed.url)
        if state.disabled:
            log.warning("feed %s is not polled: %s; give it a new url in the config to "
                        "poll it again", self.feed.name, state.disabled)
            return
        now = self._clock.now()
        if state.next_fetch is None or state.next_fetch <= now:
            # Spread the first polls a little so a restart does not hit every server at once.
            first = self._rng.uniform(0, min(2.0, self.interval / 10))
        else:
            first = min(state.next_fetch - now, self.interval)
        await asyncio.sleep(first)
        while True:
            started = asyncio.get_running_loop().time()
            async with self._limiter:
                delay = await self.poll_once()
            if math.isinf(delay):
                return
            # Counted from the start of the poll: waiting for a slot or a slow server
            # must not stretch the interval.
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(delay - elapsed, 0.0))

    async def poll_once(self) -> float:
        """Poll now; returns the seconds to wait before the next poll (inf: never again)."""
        feed = self.feed
        state = self._store.feed_state(feed.name) or self._store.ensure_feed(feed.name, feed.url)
        now = self._clock.now()
        try:
            return await self._poll(state, now)
        except FeedError as exc:
            if isinstance(exc, FetchError) and exc.status == 410:
                self._gone(state.url, now)
                return math.inf
            return self._failed(exc, now, state.failures + 1)
        except StorageError:
            raise       # the state cannot be written: the bot must stop, not skip
        except Exception as exc:
            # An input nobody foresaw (or a bug) costs this feed a poll, never the bot.
            log.debug("feed %s: unexpected error", feed.name, exc_info=True)
            error = FeedError(f"unexpected error while reading the feed "
                              f"({type(exc).__name__}: {str(exc)[:200]})")
            return self._failed(error, now, state.failures + 1)

    async def _poll(self, state: FeedState, now: float) -> float:
        feed = self.feed
        # Paused feeds are still fetched (one conditional request): what appears during
        # a pause is marked seen, so resuming does not dump a backlog into the room.
        interval = self.interval
        result = await self._fetcher.fetch(state.url, etag=state.etag,
                                           last_modified=state.last_modified)
        if result.status == 304 or result.body is None:
            delay = jittered(interval, self._rng)
            if not self._moved_unchanged(state, result, now, delay, state.body_hash):
                self._store.record_not_modified(feed.name, now=now, next_fetch=now + delay)
            log.debug("feed %s: not modified", feed.name)
            return delay
        body_hash = hashlib.sha256(result.body).hexdigest()
        if body_hash == state.body_hash and state.initialized:
            delay = jittered(interval, self._rng)
            if not self._moved_unchanged(state, result, now, delay, body_hash):
                self._store.record_not_modified(feed.name, now=now, next_fetch=now + delay,
                                                etag=result.etag,
                                                last_modified=result.last_modified)
            log.debug("feed %s: same body as last time", feed.name)
            return delay
        parsed = await parse_feed_async(result.body, content_type=result.content_type,
                                        url=result.final_url)

        for warning in parsed.warnings:
            log.info("feed %s: %s", feed.name, warning)
        unseen = self._store.unseen(feed.name, (e.entry_id for e in parsed.entries))
        known_until = (datetime.fromtimestamp(state.last_success, UTC)
                       if state.last_success else None)
        decision = decide(parsed.entries, unseen, first_sight=not state.initialized,
                          backfill=feed.backfill, max_per_poll=feed.max_per_poll,
                          known_until=known_until, now=datetime.fromtimestamp(now, UTC))
        if decision.flood:
            log.warning("feed %s: %d entries appeared at once (did the feed rewrite its ids?); "
                        "posting the newest %d and marking the rest as seen",
                        feed.name, decision.skipped + len(decision.to_post), len(decision.to_post))
        elif not state.initialized:
            log.info("feed %s: first sight, %d entries marked as seen, posting the newest %d",
                     feed.name, len(decision.to_mark_seen), len(decision.to_post))

        deliveries = self._deliveries(decision.to_post, parsed.title or None)
        personal, digest = personal_deliveries(feed, decision.to_post, parsed.title or None,
                                               self._store, self._language)
        deliveries += personal
        if result.permanent_url and result.permanent_url != state.url:
            log.warning("feed %s moved permanently to %s; fetching from there from now on",
                        feed.name, result.permanent_url)
        delay = jittered(interval, self._rng)
        rooms = self._store.record_poll(PollOutcome(
            feed=feed.name, now=now, next_fetch=now + delay, etag=result.etag,
            last_modified=result.last_modified, body_hash=body_hash,
            title=parsed.title or None, new_url=result.permanent_url,
            seen_entry_ids=decision.to_mark_seen, deliveries=deliveries,
            recent=_recent(feed.name, parsed.entries),
            fingerprints=[(e.entry_id, fingerprint(e)) for e in decision.to_post],
            digest=digest))
        rooms = list(dict.fromkeys(
            [*rooms, *self._edits(parsed.entries, unseen, parsed.title or None, now)]))
        if decision.to_post:
            log.info("feed %s: %d new item(s) queued for %d room(s)", feed.name,
                     len(decision.to_post), len(feed.rooms))
        if rooms:
            self._on_enqueued(rooms)
        return delay

    def _deliveries(self, entries: tuple[Entry, ...], feed_title: str | None,
                    ) -> list[NewDelivery]:
        """One delivery per entry and room, in each room's language, skipping rooms that
        paused the feed or filter the entry out."""
        feed = self.feed
        settings = self._store.feed_room_settings(feed.name)
        deliveries = []
        for entry in entries:
            text = entry_text(entry) if settings else None
            messages: dict[str, Message] = {}
            for room in feed.rooms:
                if not wanted(entry, settings.get(room, _DEFAULT_SETTINGS), text=text):
                    continue
                language = self._room_language(room) or self._language
                if language not in messages:
                    messages[language] = render_entry(
                        entry, feed_title=feed_title, language=language,
                        template=feed.template, content=feed.content,
                        summary_chars=feed.summary_length,
                        max_bytes=feed.max_message_bytes, feed=feed.name)
                key = delivery_key(feed.name, entry.entry_id, room)
                content = event_content(messages[language], msgtype=feed.msgtype, key=key)
                deliveries.append(NewDelivery(entry.entry_id, room, content))
                if entry.image_url and feed.images != "off":
                    image = {"url": entry.image_url, "mode": feed.images,
                             "alt": entry.title[:200]}
                    if feed.images == "inline":
                        content[IMAGE_FIELD] = image
                    else:
                        # Its own m.image event, right after the text (the outbox keeps
                        # the order); resolved when it is first sent.
                        image_id = f"{entry.entry_id}#image"
                        deliveries.append(NewDelivery(image_id, room, {
                            "msgtype": "m.image", "body": entry.title[:200] or "image",
                            "m.mentions": {}, IMAGE_FIELD: image,
                            DELIVERY_KEY_FIELD: delivery_key(feed.name, image_id, room)}))
        return deliveries

    def _edits(self, entries: tuple[Entry, ...], unseen: set[str], feed_title: str | None,
               now: float) -> list[str]:
        """Posted entries whose title, text or link changed: edit their messages in place
        (or, not sent yet, change what will be sent). Returns the rooms to wake."""
        feed = self.feed
        known = [e for e in entries if e.entry_id not in unseen]
        stored = self._store.fingerprints(feed.name, (e.entry_id for e in known))
        changed = [(e, fp) for e in known if e.entry_id in stored
                   and (fp := fingerprint(e)) != stored[e.entry_id]]
        if not changed:
            return []
        if feed.on_update != "edit":
            self._store.record_edits(feed.name, [(e.entry_id, fp) for e, fp in changed], [],
                                     now)
            return []
        deliveries = []
        settled: list[tuple[str, str]] = []
        for entry, fp in changed:
            sent = self._store.entry_events(feed.name, entry.entry_id)
            deferred = False
            personal, _ = personal_deliveries(feed, (entry,), feed_title, self._store,
                                              self._language)
            for new in [*self._deliveries((entry,), feed_title), *personal]:
                if new.entry_id != entry.entry_id:
                    continue          # a separate image stays as it was
                original_key = delivery_key(feed.name, entry.entry_id, new.room)
                original = sent.get(new.room)
                if original is None:
                    # Not delivered yet: deliver the corrected version instead — unless a
                    # send was already attempted (the homeserver may hold the first
                    # version): then wait for it, and edit on a later poll.
                    if not self._store.update_pending_content(original_key, new.content) \
                            and self._store.pending_key(original_key):
                        deferred = True
                    continue
                edit_id = f"{entry.entry_id}#edit#{fp[:16]}#{int(now)}"
                key = delivery_key(feed.name, edit_id, new.room)
                deliveries.append(NewDelivery(edit_id, new.room, edit_content(
                    new.content, original_event_id=original, key=key)))
            if not deferred:
                settled.append((entry.entry_id, fp))
                log.info("feed %s: entry %s changed; editing its message(s) in place",
                         feed.name, entry.entry_id)
        return self._store.record_edits(feed.name, settled, deliveries, now)

    def _gone(self, url: str, now: float) -> None:
        """410 Gone: the publisher says the feed will not come back. Stop, and tell the
        rooms once (through the outbox, so the notice too is sent exactly once)."""
        feed = self.feed
        notices = []
        for room in feed.rooms:
            language = self._room_language(room) or self._language
            body = text("feed_gone", language, name=feed.name, url=url)
            html_body = html.escape(body, quote=False)
            entry_id = f"newsbot:gone:{url}"
            key = delivery_key(feed.name, entry_id, room)
            notices.append(NewDelivery(entry_id, room, event_content(
                Message(body, html_body), msgtype="m.notice", key=key)))
        rooms = self._store.disable_feed(feed.name, f"HTTP 410 Gone at {url}", now=now,
                                         notices=notices)
        log.error("feed %s: HTTP 410 Gone at %s; polling stopped and %d room(s) told",
                  feed.name, url, len(rooms))
        if rooms:
            self._on_enqueued(rooms)

    def _failed(self, exc: FeedError, now: float, failures: int) -> float:
        retry_after = exc.retry_after if isinstance(exc, FetchError) else None
        delay = failure_delay(self.interval, failures, self._fetch_config.max_backoff,
                              retry_after)
        self._store.record_failure(self.feed.name, str(exc), now=now, next_fetch=now + delay)
        log.warning("feed %s: %s (failure %d in a row; next try in %.0f s)",
                    self.feed.name, exc, failures, delay)
        return delay

    def _moved_unchanged(self, state: FeedState, result: FetchResult, now: float, delay: float,
                         body_hash: str | None) -> bool:
        """A permanent redirect to the same content (a 304 or the same body) still moves
        the feed: record the new URL with the not-modified poll. False if it did not move."""
        new_url = result.permanent_url
        if not state.initialized or new_url is None or new_url == state.url:
            return False
        log.warning("feed %s moved permanently to %s; fetching from there from now on",
                    self.feed.name, new_url)
        self._store.record_poll(PollOutcome(
            feed=self.feed.name, now=now, next_fetch=now + delay, etag=result.etag,
            last_modified=result.last_modified, body_hash=body_hash, title=None,
            new_url=new_url, seen_entry_ids=(), deliveries=()))
        return True
