"""Reader counts and health, for ``!news stats`` and the listener's ``/metrics`` (bot.http).

Readers are counted, never listed: the joined members of a feed's rooms (the bot aside)
plus its personal subscribers. No read receipts are collected, nothing per person is kept:
private conversations' outbox depth is one sum, never one line per conversation.
The exposition is the Prometheus text format, written by ``prometheus-client`` from a
registry of this app's own: several bots in one process (the tests) never share a metric.

What is counted as it happens (fetches, parse failures, the delay to delivery) is counted
here in plain numbers; what the store or the deliverer already knows is read at each
scrape. Only a scrape loads prometheus-client (bot.exposition): a bot without the
listener never does (about 1 MiB of memory).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bot.clock import Clock
from bot.config import FeedConfig
from bot.errors import TransportError
from bot.model import Delivery
from bot.store.base import Store
from bot.transport.base import Messaging

log = logging.getLogger(__name__)

# Reader counts cost one request per room: counted on a scrape, at most this often.
COUNT_EVERY = 60.0

# What a poll's fetch came to (FeedPoller's ``observe``): "parse_error" is a body read
# (200) that is not a feed.
FETCH_OUTCOMES = ("304", "200", "error")
PARSE_ERROR = "parse_error"
DELIVERY_OUTCOMES = ("sent", "refused", "parked")
# Private conversations' rows are summed under this label, never listed one by one.
DIRECT_ROOMS = "direct"
# From a few tenths of a second (push) to hours (a room unreachable for a while).
DELAY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                 6 * 3600.0, float("inf"))


@dataclass(frozen=True, slots=True)
class Readers:
    members: int         # joined members of the feed's rooms, each person once
    subscribers: int     # personal subscriptions

    @property
    def total(self) -> int:
        return self.members + self.subscribers


async def count_readers(transport: Messaging, store: Store, feed: FeedConfig,
                        bot_ids: tuple[str, ...],
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
    members.difference_update(bot_ids)
    return Readers(len(members), await store.subscriber_count(feed.name))


@dataclass(frozen=True, slots=True)
class FeedHealth:
    failures: int                    # consecutive failed fetches
    last_success: float | None       # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every value of one scrape, read before the registry writes it: collecting is
    synchronous in prometheus-client, the reading (transport, store) need not be."""
    readers: dict[str, Readers] = field(default_factory=dict)
    feeds: dict[str, FeedHealth] = field(default_factory=dict)
    pending: int = 0
    delivered: int = 0
    failed: int = 0
    depth: dict[str, int] = field(default_factory=dict)         # room -> pending rows
    deliveries: dict[str, int] = field(default_factory=dict)    # outcome -> count
    fetches: dict[str, int] = field(default_factory=dict)       # FETCH_OUTCOMES -> count
    parse_failures: int = 0
    delays: tuple[int, ...] = ()        # items delivered within each of DELAY_BUCKETS
    delay_sum: float = 0.0
    created: float = 0.0                # when counting began (seconds since the epoch)


class Metrics:
    def __init__(self, store: Store, transport: Messaging, clock: Clock,
                 feeds: Callable[[], list[FeedConfig]], bot_ids: tuple[str, ...],
                 delivered: Callable[[], int], *,
                 deliveries: Callable[[], Mapping[str, int]] | None = None) -> None:
        """``delivered``: items sent since the start; ``deliveries``: every outcome's
        count (DELIVERY_OUTCOMES), when known."""
        self._store = store
        self._transport = transport
        self._clock = clock
        self._feeds = feeds
        self._bot_ids = bot_ids
        self._delivered = delivered
        self._deliveries = deliveries or (lambda: {"sent": delivered()})
        self.readers: dict[str, Readers] = {}
        self._counted_at: float | None = None
        self._created = time.time()
        self._fetches = dict.fromkeys(FETCH_OUTCOMES, 0)       # every outcome shown, from 0
        self._parse_failures = 0
        self._delays = [0] * len(DELAY_BUCKETS)     # per bucket, not cumulative
        self._delay_sum = 0.0

    def fetched(self, outcome: str) -> None:
        """A poll's fetch ended: one of FETCH_OUTCOMES, or PARSE_ERROR."""
        if outcome == PARSE_ERROR:
            self._parse_failures += 1
            outcome = "200"
        if outcome in FETCH_OUTCOMES:
            self._fetches[outcome] += 1

    def sent(self, delivery: Delivery) -> None:
        """A row was sent (the homeserver returned its event id); feed items' delay."""
        if delivery.kind == "item":
            delay = max(self._clock.now() - delivery.created_at, 0.0)
            self._delay_sum += delay
            self._delays[next(i for i, le in enumerate(DELAY_BUCKETS) if delay <= le)] += 1

    async def refresh(self) -> None:
        """Reader counts, at most every COUNT_EVERY seconds."""
        now = self._clock.now()
        if self._counted_at is not None and now - self._counted_at < COUNT_EVERY:
            return
        seen: dict[str, list[str]] = {}
        counted: dict[str, Readers] = {}
        for feed in self._feeds():
            try:
                counted[feed.name] = await count_readers(
                    self._transport, self._store, feed, self._bot_ids, seen)
            except TransportError as exc:
                log.info("metrics: readers of %s not counted now: %s", feed.name, exc)
                if feed.name in self.readers:
                    counted[feed.name] = self.readers[feed.name]
        self.readers = counted      # removed feeds disappear
        self._counted_at = self._clock.now()

    async def scrape(self) -> bytes:
        """The exposition of one scrape: readers as last counted, the rest read now."""
        await self.refresh()
        feeds: dict[str, FeedHealth] = {}
        for feed in self._feeds():
            state = await self._store.feed_state(feed.name)
            if state is not None:
                feeds[feed.name] = FeedHealth(state.failures, state.last_success)
        depth: dict[str, int] = {}
        for room in await self._store.pending_rooms():
            label = DIRECT_ROOMS if self._transport.is_direct(room) else room
            depth[label] = depth.get(label, 0) + await self._store.pending_count(room)
        snapshot = Snapshot(readers=dict(self.readers), feeds=feeds,
                            pending=await self._store.pending_count(),
                            delivered=self._delivered(),
                            failed=await self._store.failed_count(),
                            depth=depth, deliveries=dict(self._deliveries()),
                            fetches=dict(self._fetches), parse_failures=self._parse_failures,
                            delays=tuple(self._delays), delay_sum=self._delay_sum,
                            created=self._created)
        # prometheus-client only for a scrape: without the listener it is never loaded.
        from bot.exposition import exposition
        return exposition(snapshot)
