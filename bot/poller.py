"""Polling one feed on its schedule: fetch, parse, decide (bot.feeds), plan (bot.plan),
commit (bot.store) — then sleep.

A poll's whole outcome (seen entries, outbox rows, corrections, validators) is committed
in one transaction, so a crash at any point either redoes the whole poll or none of it.
Deciding and planning run in one worker-thread call: a heavy feed costs that thread
time, never the event loop's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import html
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.clock import Clock
from bot.config import FeedConfig, FetchConfig
from bot.errors import FeedError, FetchError, ParseError, StorageError
from bot.feeds.decide import Decision, chronological, decide
from bot.feeds.fetch import Fetcher, FetchResult
from bot.feeds.hints import FeedHints, Interval, describe, effective_interval, next_allowed
from bot.feeds.read import PollResult, Validators, read_feed
from bot.i18n import text
from bot.model import Entry, Message
from bot.plan import PLAN_BUDGET_SECONDS, Plan, Recipient, Snapshot, plan
from bot.store.base import Store
from bot.store.types import (
    RECENT_PER_FEED,
    FeedState,
    NewDelivery,
    PollOutcome,
    RecentEntry,
    RoomFeedSettings,
)
from bot.urls import url_for_members

if TYPE_CHECKING:
    from bot.instances import PollLeases

log = logging.getLogger(__name__)


_DEFAULT_SETTINGS = RoomFeedSettings()
# Planning (rendering) has threads of its own: heavy feeds must not queue up in the
# default executor, which also resolves host names for every fetch.
_PLANNER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="plan")


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


def _decide_and_plan(entries: tuple[Entry, ...], unseen: set[str], snapshot: Snapshot, *,
                     first_sight: bool, known_until: datetime | None, now: datetime,
                     carried: frozenset[str], budget: float) -> tuple[Decision, Plan]:
    """The poll's CPU work, run in a worker thread."""
    feed = snapshot.feed
    decision = decide(entries, unseen, first_sight=first_sight, backfill=feed.backfill,
                      max_per_poll=feed.max_per_poll, known_until=known_until, now=now,
                      carried=carried)
    return decision, plan(decision, entries, unseen, snapshot, budget=budget)


async def _no_language(_room: str) -> str | None:
    return None


# A push (bot.http) polls at once, but no sooner than this after the last push's poll
# began: pushes in between make one poll, not one each.
PUSH_GAP = 5.0


def jittered(interval: float, rng: random.Random) -> float:
    # Only ever earlier, never later: an item must arrive within `interval` of appearing.
    return interval * rng.uniform(0.9, 1.0)


def _ignore(_outcome: str) -> None:
    pass


def _decided(hints: FeedHints, set_by_command: float | None,
             interval: Interval) -> tuple[object, ...]:
    """What the log says of an interval: it is logged again when this changes (not each
    time a CDN's Age moves max-age by a few seconds)."""
    return (interval.hint, interval.base, interval.ceiling, set_by_command is not None,
            None if interval.hint == "max-age" else interval.asked,
            hints.skip_hours, hints.skip_days)


class FeedPoller:
    """One feed: its poll (``poll_once``) and what the next one needs to know. When it is
    polled is ``Polls``'s to say: a poller has no task of its own."""

    # 10,000 feeds are 10,000 of these: no __dict__, and nothing made before it is needed.
    __slots__ = ("_clock", "_entry", "_fetch_config", "_fetch_observed",
                 "_fetcher", "_first", "_hints", "_interval", "_language", "_last_push", "_leases",
                 "_polled_at",
                 "_observe", "_on_enqueued", "_plan_budget", "_polls", "_push_asked",
                 "_push_gap", "_pushed_body", "_rng", "_room_language", "_state", "_store",
                 "_task", "ended", "feed")

    def __init__(self, feed: FeedConfig, *, store: Store, fetcher: Fetcher, clock: Clock,
                 fetch_config: FetchConfig, language: str,
                 on_enqueued: Callable[[list[str]], None],
                 room_language: Callable[[str], Awaitable[str | None]] | None = None,
                 rng: random.Random | None = None,
                 plan_budget: float = PLAN_BUDGET_SECONDS,
                 observe: Callable[[str], None] | None = None,
                 push_gap: float = PUSH_GAP, leases: PollLeases | None = None) -> None:
        self.feed = feed
        # Several instances on one database: polled only under the feed's lease; when
        # this instance's last poll of it ended (clock time).
        self._leases = leases
        self._polled_at: float | None = None
        self._store = store
        self._fetcher = fetcher
        self._clock = clock
        self._fetch_config = fetch_config
        self._language = feed.language or language
        self._on_enqueued = on_enqueued
        self._room_language = room_language or _no_language
        self._rng = rng or random.Random()
        self._plan_budget = plan_budget
        # Told how each fetch ended: "304", "200", "error" or "parse_error" (metrics).
        self._observe = observe or _ignore
        self._push_gap = push_gap
        self._push_asked = False                    # a push asked for a poll not begun yet
        self._last_push: float | None = None        # loop time the last push's poll began
        self._pushed_body: FetchResult | None = None   # the latest body a hub pushed
        self._first: FetchResult | None = None      # the body its first poll reads (add)
        self._fetch_observed = False
        # The feed's last known hints, with the Cache-Control of the last 304 (which is
        # not stored); None: read them from the store.
        self._hints: FeedHints | None = None
        # The last interval worked out, and from what (an unchanged poll without
        # Cache-Control keeps the same hints object): a 304 need not work it out again.
        self._interval: tuple[FeedHints, float | None, Interval] | None = None
        # The feed's state as last read (None: read it from the store), kept after a
        # changed body and an unchanged poll. The poller is its only writer and an
        # unchanged poll moves only its times, which only a changed body reads (afresh):
        # so a 304 reads nothing.
        self._state: FeedState | None = None
        # Its place on a schedule (Polls): the schedule, its entry in the heap (None:
        # not waiting), its poll under way.
        self._polls: Polls | None = None
        self._entry: _Entry | None = None
        self._task: asyncio.Task[float] | None = None
        # It polls no more by itself: disabled (HTTP 410 Gone, now or before this start).
        self.ended = False

    def poll_soon(self) -> bool:
        """Poll now, through the schedule (one poll of a feed at a time, the same
        decisions), no sooner than PUSH_GAP after the last push's poll began. False: a
        poll asked for before, not begun yet, covers this one."""
        asked = not self._push_asked
        self._push_asked = True
        if self._polls is not None:
            self._polls.pushed(self)
        return asked

    def hand_over(self, fetched: FetchResult) -> bool:
        """A body a hub pushed: read by the schedule's next poll of the feed, as a poll of
        it (one poll at a time: a push never overlaps a scheduled poll and its state
        writes). Bodies pushed before it was read are replaced by the latest one."""
        self._pushed_body = fetched
        return self.poll_soon()

    async def interval(self) -> float:
        """The config's interval, unless a moderator set another by command."""
        return await self._store.feed_interval(self.feed.name) or self.feed.interval

    async def schedule(self, hints: FeedHints | None = None) -> Interval:
        """The interval polls follow: the base (``interval``) raised by what the feed
        asks, never beyond fetch.max_interval (bot.feeds.hints)."""
        if hints is None:
            hints = await self._last_hints()
        return effective_interval(await self.interval(), hints,
                                  self._fetch_config.max_interval)

    async def _last_hints(self) -> FeedHints:
        if self._hints is None:
            state = await self._store.feed_state(self.feed.name)
            self._hints = FeedHints.from_json(state.hints if state else None)
        return self._hints

    async def _longest_wait(self) -> float:
        """The longest a poll may be put off: the interval, or the ceiling when the feed
        asks to skip some hours or days."""
        hints = await self._last_hints()
        longest = (await self.schedule(hints)).seconds
        return max(longest, self._fetch_config.max_interval) if hints.skips else longest

    def _next_delay(self, now: float, interval: Interval, hints: FeedHints) -> float:
        """Jittered, then moved out of the hours and days the feed asks to skip; the ceiling
        still bounds the wait."""
        delay = jittered(interval.seconds, self._rng)
        if not hints.skips:
            return delay
        latest = now + max(delay, self._fetch_config.max_interval)
        return next_allowed(now + delay, hints, latest) - now

    async def _start(self) -> float | None:
        """Before the first poll: the feed's state made (or read); the seconds until that
        poll, None if the feed is disabled."""
        state = await self._store.ensure_feed(self.feed.name, self.feed.url)
        self._state = self._kept(state)
        if state.disabled:
            log.warning("feed %s is not polled: %s; give it a new url in the config to "
                        "poll it again", self.feed.name, state.disabled)
            return None
        if self._first is not None:
            return 0.0
        now = self._clock.now()
        if state.next_fetch is None or state.next_fetch <= now:
            # Spread the first polls a little so a restart does not hit every server at once.
            return self._rng.uniform(0, min(2.0, await self.interval() / 10))
        return min(state.next_fetch - now, await self._longest_wait())

    def _kept(self, state: FeedState | None) -> FeedState | None:
        """The state kept between polls, holding the config's own strings for its name
        and address when they are the same: three strings less a feed (2 MiB at 10,000)."""
        feed = self.feed
        if state is None or state.name != feed.name or state.configured_url != feed.url:
            return state
        return replace(state, name=feed.name, configured_url=feed.url,
                       url=feed.url if state.url == feed.url else state.url)

    async def _poll_due(self, pushed: bool = False) -> float:
        """The poll Polls starts: of the body given at the start, or the one a hub pushed
        last, or fetched (``pushed``: a push asked for it)."""
        fetched: FetchResult | None
        if self._first is not None:
            fetched, self._first = self._first, None
        else:
            fetched, self._pushed_body = self._pushed_body, None
        if self._leases is not None:
            return await self._poll_under_lease(self._leases, fetched, pushed)
        return await self.poll_once(fetched)

    async def _poll_under_lease(self, leases: PollLeases, fetched: FetchResult | None,
                                pushed: bool) -> float:
        """Several instances: polled here only under the feed's lease, and only if no
        other instance polled it since (the next poll it timed is then the one to wait
        for; a push polls at once)."""
        name = self.feed.name
        if not await leases.take(name):
            if fetched is not None:
                self._pushed_body = fetched     # kept for when it is this one's turn
            return leases.retry                 # another instance polls it now
        try:
            # Written by whichever instance polled last: read afresh, hints too.
            self._state = self._hints = None
            state = await self._store.feed_state(name)
            now = self._clock.now()
            ours = self._polled_at
            elsewhere = state is not None and state.last_fetch is not None and (
                ours is None or state.last_fetch > ours)
            if fetched is None and not pushed and elsewhere and state is not None and \
                    state.next_fetch is not None and state.next_fetch > now:
                return state.next_fetch - now       # polled by another since: its turn
            delay = await self.poll_once(fetched)
            self._polled_at = self._clock.now()
            return delay
        finally:
            with contextlib.suppress(StorageError):     # it lapses by itself anyway
                await leases.release(name)

    async def poll_once(self, fetched: FetchResult | None = None) -> float:
        """Poll now (or handle ``fetched``); returns the seconds to wait before the next
        poll (inf: never again)."""
        feed = self.feed
        state = (self._state or await self._store.feed_state(feed.name)
                 or await self._store.ensure_feed(feed.name, feed.url))
        self._state = None      # until the outcome is written (_poll, _unchanged)
        now = self._clock.now()
        self._fetch_observed = False
        try:
            delay, rooms = await self._poll(state, now, fetched)
        except FeedError as exc:
            if fetched is None and not self._fetch_observed:
                self._observe("parse_error" if isinstance(exc, ParseError) else "error")
            if isinstance(exc, FetchError) and exc.status == 410:
                await self._gone(state.url, now)
                return math.inf
            return await self._failed(exc, now, state.failures + 1)
        except StorageError:
            raise       # the state cannot be written: the bot must stop, not skip
        except Exception as exc:
            # An input nobody foresaw (or a bug) costs this feed a poll, never the bot.
            log.debug("feed %s: unexpected error", feed.name, exc_info=True)
            if fetched is None and not self._fetch_observed:
                self._observe("error")
            error = FeedError(f"unexpected error while reading the feed "
                              f"({type(exc).__name__}: {str(exc)[:200]})")
            return await self._failed(error, now, state.failures + 1)
        # The poll is committed: nothing after this point is a failure of the feed.
        if rooms:
            try:
                self._on_enqueued(rooms)
            except Exception:
                log.exception("feed %s: waking the delivery of %d room(s) failed; they are "
                              "delivered on their next wake-up", feed.name, len(rooms))
        return delay

    async def _poll(self, state: FeedState, now: float, fetched: FetchResult | None,
                    ) -> tuple[float, list[str]]:
        feed = self.feed
        # Paused feeds are still fetched (one conditional request): what appears during
        # a pause is marked seen, so resuming does not dump a backlog into the room.
        # A state from before hints were stored: read the body once to learn them.
        known = state.hints is not None
        read = await read_feed(self._fetcher, state.url, etag=state.etag if known else None,
                               last_modified=state.last_modified if known else None,
                               body_hash=state.body_hash if known else None,
                               initialized=state.initialized,
                               unseen=functools.partial(self._store.unseen, feed.name),
                               fetched=fetched)
        if fetched is None:
            self._fetch_observed = True     # what fails after this is not the fetch's
            self._observe("304" if read.unchanged and read.validators.body_hash is None
                          else "200")
        hints = self._hints
        if hints is None or read.hints is not None or read.max_age is not None:
            hints = await self._hints_after(read)
        delay = self._next_delay(now, await self._explain(hints), hints)
        if read.unchanged:
            await self._unchanged(state, read, now, delay)
            return delay, []
        for warning in read.warnings:
            log.info("feed %s: %s", feed.name, warning)
        entries, unseen = read.entries, set(read.new)
        state = await self._store.feed_state(feed.name) or state    # its times, as stored
        known_until = (datetime.fromtimestamp(state.last_success, UTC)
                       if state.last_success else None)
        snapshot = await self._snapshot(entries, unseen, read.title)
        carried = frozenset(await self._store.carried(feed.name))
        decision, planned = await asyncio.get_running_loop().run_in_executor(
            _PLANNER, functools.partial(
                _decide_and_plan, entries, unseen, snapshot, first_sight=not state.initialized,
                known_until=known_until, now=datetime.fromtimestamp(now, UTC),
                carried=carried, budget=self._plan_budget))
        if decision.flood:
            log.warning("feed %s: %d entries appeared at once (did the feed rewrite its ids?); "
                        "posting the newest %d and marking the rest as seen",
                        feed.name, decision.skipped + len(decision.to_post), len(decision.to_post))
        elif not state.initialized:
            log.info("feed %s: first sight, %d entries marked as seen, posting the newest %d",
                     feed.name, len(decision.to_mark_seen), len(decision.to_post))

        if read.moved_to and read.moved_to != state.url:
            log.warning("feed %s moved permanently to %s; fetching from there from now on",
                        feed.name, read.moved_to)
        # Entries the plan did not reach in its time budget stay unseen and are owed to
        # the next poll (posted then whatever its own decision); an incomplete poll keeps
        # no validators nor body hash, so the next one reads and plans the body again.
        waiting = set(planned.unplanned)
        seen = [i for i in decision.to_mark_seen if i not in waiting] + \
            sorted(read.seen_unbounded)
        kept = read.validators if planned.complete else Validators(None, None, None)
        rooms = await self._store.record_poll(PollOutcome(
            feed=feed.name, now=now, next_fetch=now + delay, etag=kept.etag,
            last_modified=kept.last_modified, body_hash=kept.body_hash,
            carried=planned.unplanned, title=read.title, new_url=read.moved_to,
            seen_entry_ids=seen, deliveries=planned.deliveries,
            recent=_recent(feed.name, entries), fingerprints=planned.posted,
            digest=planned.digest, changed=planned.changed,
            corrections=planned.corrections, hints=hints.to_json()))
        self._state = self._kept(await self._store.feed_state(feed.name))
        posted = len(decision.to_post) - len(waiting) - len(planned.failed)
        if posted:
            log.info("feed %s: %d new item(s) queued", feed.name, posted)
        return delay, rooms

    async def _hints_after(self, read: PollResult) -> FeedHints:
        """A read body's hints; an unchanged one keeps the last known, with the
        response's Cache-Control when it has one."""
        if read.hints is not None:
            hints = read.hints
        else:
            hints = await self._last_hints()
            if read.max_age is not None:
                hints = replace(hints, max_age=read.max_age)
        self._hints = hints
        return hints

    async def _explain(self, hints: FeedHints) -> Interval:
        """The interval, logged when what decides it changes (not each time a CDN's Age
        moves max-age by a few seconds), and worded only then: a 304 stays cheap."""
        set_by_command = await self._store.feed_interval(self.feed.name)
        last = self._interval
        if last is not None and last[0] is hints and last[1] == set_by_command:
            return last[2]
        interval = effective_interval(set_by_command or self.feed.interval, hints,
                                      self._fetch_config.max_interval)
        # What was decided last is worked out again from the last interval rather than
        # kept: a tuple less per feed, and only when the hints changed.
        explained = None if last is None else _decided(*last)
        if _decided(hints, set_by_command, interval) != explained and (
                explained is not None or interval.hint or hints.skips):
            log.info("feed %s: polled %s", self.feed.name, describe(
                interval, hints, by_command=set_by_command is not None, language="en"))
        self._interval = (hints, set_by_command, interval)
        return interval

    async def _snapshot(self, entries: tuple[Entry, ...], unseen: set[str],
                  feed_title: str | None) -> Snapshot:
        """The settings planning needs, read from the store before it starts."""
        feed = self.feed
        settings = await self._store.feed_room_settings(feed.name)
        recipients = [Recipient(room, await self._room_language(room) or self._language,
                                settings.get(room, _DEFAULT_SETTINGS))
                      for room in feed.rooms]
        if feed.public:
            recipients += [Recipient(
                subscriber.dm_room, subscriber.language or self._language,
                digest_user=subscriber.user_id if subscriber.digest != "off" else None,
                subscriber=subscriber.user_id)
                for subscriber in await self._store.subscribers_of(feed.name)]
        known = [e.entry_id for e in entries if e.entry_id not in unseen]
        return Snapshot(feed, feed_title, tuple(recipients),
                        await self._store.posted(feed.name, known))

    async def _gone(self, url: str, now: float) -> None:
        """410 Gone: the publisher says the feed will not come back. Stop, and tell the
        rooms once (through the outbox, so the notice too is sent exactly once)."""
        feed = self.feed
        notices = []
        for room in feed.rooms:
            language = await self._room_language(room) or self._language
            # Every member reads it: the address without credentials or query string.
            body = text("feed_gone", language, name=feed.name, url=url_for_members(url))
            notices.append(NewDelivery(f"newsbot:gone:{url}", room,
                                       Message(body, html.escape(body, quote=False)),
                                       kind="notice"))
        rooms = await self._store.disable_feed(feed.name, f"HTTP 410 Gone at {url}", now=now,
                                         notices=notices)
        log.error("feed %s: HTTP 410 Gone at %s; polling stopped and %d room(s) told",
                  feed.name, url, len(rooms))
        if rooms:
            self._on_enqueued(rooms)

    async def _failed(self, exc: FeedError, now: float, failures: int) -> float:
        retry_after = exc.retry_after if isinstance(exc, FetchError) else None
        delay = failure_delay(await self.interval(), failures, self._fetch_config.max_backoff,
                              retry_after)
        await self._store.record_failure(self.feed.name, str(exc), now=now, next_fetch=now + delay)
        log.warning("feed %s: %s (failure %d in a row; next try in %.0f s)",
                    self.feed.name, exc, failures, delay)
        return delay

    async def _unchanged(self, state: FeedState, read: PollResult, now: float,
                         delay: float) -> None:
        """A 304 or the same body: nothing to parse. A permanent redirect to the same
        content still moves the feed (recorded with the not-modified poll)."""
        feed = self.feed
        after_304 = read.validators.body_hash is None
        log.debug("feed %s: %s", feed.name, "not modified" if after_304
                  else "same body as last time")
        new_url = read.moved_to
        if not state.initialized or new_url is None or new_url == state.url:
            # After a 304 the stored validators stay; a same body refreshes them.
            # A poll that changes nothing but times is written behind, with others: a
            # crash losing it costs one more conditional request, never an entry.
            validators = read.validators
            clean = (state.failures == 0 and state.last_error is None
                     and (after_304 or (validators.etag == state.etag
                                        and validators.last_modified == state.last_modified)))
            await self._store.record_not_modified(
                feed.name, now=now, next_fetch=now + delay,
                etag=None if after_304 else read.validators.etag,
                last_modified=None if after_304 else read.validators.last_modified,
                # Several instances: the others read when it was polled, at once.
                later=clean and self._leases is None)
            if clean:
                self._state = state
            return
        log.warning("feed %s moved permanently to %s; fetching from there from now on",
                    feed.name, new_url)
        await self._store.record_poll(PollOutcome(
            feed=feed.name, now=now, next_fetch=now + delay, etag=read.validators.etag,
            last_modified=read.validators.last_modified,
            body_hash=read.validators.body_hash or state.body_hash, title=None,
            new_url=new_url, seen_entry_ids=(), deliveries=()))


# (due, order, poller): a poller's place in the heap; ``order`` breaks ties.
_Entry = tuple[float, int, FeedPoller]


class Polls:
    """When every feed is polled, kept by one task: a heap of (due, poller) instead of a
    task per feed waiting on its own timer and event (about 4 KiB a feed, 40 MiB at
    10,000). A due poll starts when one of the ``limiter``'s slots (fetch.concurrency) is
    free, as a task of its own: at most that many poll tasks at once, earliest due first.

    A feed's schedule is what its poller says: its first poll (``_start``: the stored
    next_fetch, or soon after a restart, spread), then the delay ``poll_once`` returns
    (jittered, backed off after failures, raised by hints), counted from when the poll
    began, so that a poll late for a slot is never followed by another less than an
    interval later. A push
    (``FeedPoller.poll_soon``) moves the feed's next poll to now, but no sooner than
    ``push_gap`` after the last push's poll began; one under way is followed by another. A
    feed is never polled twice at once. ``run`` is cancelled to stop: polls under way are
    cancelled with it (a poll's outcome is one transaction: all of it or none).
    """

    def __init__(self, limiter: asyncio.Semaphore) -> None:
        self._limiter = limiter
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._new: collections.deque[FeedPoller] = collections.deque()   # not started yet
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None

    def add(self, poller: FeedPoller, first: FetchResult | None = None) -> None:
        """Poll this feed from now on. ``first``: a body already fetched for it (by a
        command adding it), read as its first poll, so what was reported then is what the
        feed's first sight is."""
        poller._polls, poller._first = self, first
        self._new.append(poller)
        self._wake()

    def remove(self, poller: FeedPoller) -> None:
        """Poll it no more; a poll of it under way is cancelled."""
        if poller._polls is not self:
            return
        poller._polls = poller._entry = None
        if poller._task is not None:
            poller._task.cancel()

    def pushed(self, poller: FeedPoller) -> None:
        """``poller.poll_soon()`` was called: bring its next poll forward. A feed not
        started yet or being polled is rescheduled when that is done."""
        if poller._polls is self and poller._entry is not None:
            due = self._push_due(poller, asyncio.get_running_loop().time())
            if due < poller._entry[0]:
                self._at(poller, due)
                self._wake()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            while True:
                self._woken = False
                while self._new:
                    await self._start(self._new.popleft(), loop)
                    # A store call may not yield: 10,000 feeds starting at once must not
                    # hold the loop (the sync, commands) for seconds.
                    await asyncio.sleep(0)
                entry = self._next()
                if entry is None or entry[0] > loop.time():
                    await self._sleep(loop, None if entry is None else entry[0])
                    continue
                await self._limiter.acquire()
                # Waiting for the slot, the feed may have been removed or pushed behind
                # another: look again.
                entry = self._next()
                if entry is None or entry[0] > loop.time():
                    self._limiter.release()
                    continue
                heapq.heappop(self._heap)
                poller = entry[2]
                poller._entry = None
                pushed = poller._push_asked
                if pushed:      # this poll is the push's
                    poller._push_asked = False
                    poller._last_push = loop.time()
                task = poller._task = group.create_task(poller._poll_due(pushed),
                                                        name=f"poll {poller.feed.name}")
                # A callback, not a finally: a task cancelled before it ran (a feed
                # removed at once) runs no code of its own, and its slot must come back.
                # The next poll is counted from when this one began, not from when it was
                # due: a poll late for a slot is not followed by a catch-up one less than an
                # interval later (never more than once per interval, under load too).
                task.add_done_callback(functools.partial(self._polled, poller, loop.time()))

    async def _start(self, poller: FeedPoller, loop: asyncio.AbstractEventLoop) -> None:
        if poller._polls is not self:
            return      # removed before it started
        delay = await poller._start()
        if delay is None:
            poller.ended = True
        elif poller._polls is self:
            self._after_wait(poller, loop.time(), delay)

    def _polled(self, poller: FeedPoller, began: float, task: asyncio.Task[float]) -> None:
        self._limiter.release()
        poller._task = None
        # Cancelled: removed, or the bot stops. An exception: the task group stops the
        # bot with it (a StorageError; poll_once keeps every other one to its feed).
        if task.cancelled() or task.exception() is not None:
            return
        delay = task.result()
        if math.isinf(delay):
            poller.ended = True
        elif poller._polls is self:
            self._after_wait(poller, began, delay)
            self._wake()

    def _after_wait(self, poller: FeedPoller, start: float, delay: float) -> None:
        due = start + delay
        if poller._push_asked:
            due = min(due, self._push_due(poller, asyncio.get_running_loop().time()))
        self._at(poller, due)

    @staticmethod
    def _push_due(poller: FeedPoller, now: float) -> float:
        last = poller._last_push
        return now if last is None else max(now, last + poller._push_gap)

    def _at(self, poller: FeedPoller, due: float) -> None:
        # The entry it replaces stays in the heap, stale, until it comes to the top.
        entry = poller._entry = (due, next(self._order), poller)
        heapq.heappush(self._heap, entry)

    def _next(self) -> _Entry | None:
        """The earliest entry still valid (a stale one is dropped)."""
        heap = self._heap
        while heap:
            entry = heap[0]
            if entry[2]._entry is entry:
                return entry
            heapq.heappop(heap)
        return None

    def _wake(self) -> None:
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, until: float | None) -> None:
        """Until ``until`` (loop time; None: for ever), or until woken."""
        if self._woken:
            return
        waiter = self._waiter = loop.create_future()
        timer = None if until is None else loop.call_at(until, _done, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
