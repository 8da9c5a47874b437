"""Reader counts and health, for ``!news stats`` and the listener's ``/metrics`` (bot.http).

Readers are counted, never listed: the joined members of a feed's rooms (the bot aside)
plus its personal subscribers. No read receipts are collected, nothing per person is kept:
private conversations' outbox depth is one sum, never one line per conversation.
The exposition is the Prometheus text format, written by ``prometheus-client`` from a
registry of this app's own: several bots in one process (the tests) never share a metric.

What is counted as it happens (fetches, parse failures, the delay to delivery) is
recorded in the registry's own counters; what the store or the deliverer already knows
is read at each scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class _SnapshotCollector(Collector):
    """Writes the last snapshot; a metric family is rebuilt on each scrape, so a feed
    removed from the config disappears from the next one."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        readers = GaugeMetricFamily(
            "newsbot_feed_readers",
            "Joined members of the feed's rooms plus personal subscribers.", labels=["feed"])
        subscribers = GaugeMetricFamily(
            "newsbot_feed_subscribers", "Personal subscriptions by direct message.",
            labels=["feed"])
        for name, r in sorted(s.readers.items()):
            readers.add_metric([name], r.total)
            subscribers.add_metric([name], r.subscribers)
        failures = GaugeMetricFamily("newsbot_feed_failures", "Consecutive failed fetches.",
                                     labels=["feed"])
        last_success = GaugeMetricFamily("newsbot_feed_last_success_seconds",
                                         "When the feed was last read.", labels=["feed"])
        for name, health in s.feeds.items():
            failures.add_metric([name], health.failures)
            if health.last_success is not None:
                last_success.add_metric([name], round(health.last_success))
        yield from (readers, subscribers, failures, last_success)
        yield GaugeMetricFamily("newsbot_outbox_pending", "Items waiting to be delivered.",
                                value=s.pending)
        yield CounterMetricFamily("newsbot_delivered_total",
                                  "Items delivered since the bot started.", value=s.delivered)
        yield GaugeMetricFamily("newsbot_outbox_failed",
                                "Deliveries parked after repeated unforeseen errors "
                                "(see the log for each reason).", value=s.failed)
        depth = GaugeMetricFamily(
            "newsbot_outbox_depth", "Rows waiting to be delivered, by room (private "
            f"conversations summed as room=\"{DIRECT_ROOMS}\").", labels=["room"])
        for room, count in sorted(s.depth.items()):
            depth.add_metric([room], count)
        deliveries = CounterMetricFamily(
            "newsbot_deliveries", "Deliveries since the bot started, by outcome: sent, "
            "refused by the homeserver, parked after repeated errors.", labels=["outcome"])
        for outcome in DELIVERY_OUTCOMES:
            deliveries.add_metric([outcome], s.deliveries.get(outcome, 0))
        yield from (depth, deliveries)


class Metrics:
    def __init__(self, store: Store, transport: Messaging, clock: Clock,
                 feeds: Callable[[], list[FeedConfig]], bot_user: str,
                 delivered: Callable[[], int], *,
                 deliveries: Callable[[], Mapping[str, int]] | None = None) -> None:
        """``delivered``: items sent since the start; ``deliveries``: every outcome's
        count (DELIVERY_OUTCOMES), when known."""
        self._store = store
        self._transport = transport
        self._clock = clock
        self._feeds = feeds
        self._bot_user = bot_user
        self._delivered = delivered
        self._deliveries = deliveries or (lambda: {"sent": delivered()})
        self.readers: dict[str, Readers] = {}
        self._counted_at: float | None = None
        self._snapshot = Snapshot()
        # Not prometheus-client's global registry: each app (and each test's bot) has its own.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(lambda: self._snapshot))
        self._fetches = Counter(
            "newsbot_fetches", "Feed fetches by outcome: 304 (not modified), 200 (a body "
            "read), error (no body: network, HTTP error, refused address).", ["outcome"],
            registry=self.registry)
        for outcome in FETCH_OUTCOMES:
            self._fetches.labels(outcome)      # every outcome shown, from 0
        self._parse_failures = Counter(
            "newsbot_parse_failures", "Bodies read that are not a feed newsbot can read.",
            registry=self.registry)
        self._delay = Histogram(
            "newsbot_delivery_delay_seconds", "From a feed item's first sight (its outbox "
            "row queued) to the event id the homeserver returned.", buckets=DELAY_BUCKETS,
            registry=self.registry)

    def fetched(self, outcome: str) -> None:
        """A poll's fetch ended: one of FETCH_OUTCOMES, or PARSE_ERROR."""
        if outcome == PARSE_ERROR:
            self._parse_failures.inc()
            outcome = "200"
        if outcome in FETCH_OUTCOMES:
            self._fetches.labels(outcome).inc()

    def sent(self, delivery: Delivery) -> None:
        """A row was sent (the homeserver returned its event id); feed items' delay."""
        if delivery.kind == "item":
            self._delay.observe(max(self._clock.now() - delivery.created_at, 0.0))

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
                    self._transport, self._store, feed, self._bot_user, seen)
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
        self._snapshot = Snapshot(readers=dict(self.readers), feeds=feeds,
                                  pending=await self._store.pending_count(),
                                  delivered=self._delivered(),
                                  failed=await self._store.failed_count(),
                                  depth=depth, deliveries=dict(self._deliveries()))
        return generate_latest(self.registry)
