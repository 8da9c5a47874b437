"""The Prometheus text format of one scrape (bot.metrics's Snapshot), by ``prometheus-client``.

Imported by a scrape only: a bot without the HTTP listener never loads prometheus-client.
Each scrape writes from a registry of its own, never the library's global one, so several
bots in one process (the tests) never share a metric.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bot.metrics import DELAY_BUCKETS, DELIVERY_OUTCOMES, DIRECT_ROOMS, Snapshot


class _SnapshotCollector(Collector):
    """Writes one snapshot; a metric family is rebuilt on each scrape, so a feed removed
    from the config disappears from the next one."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot
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
        # What was counted as it happened, written as prometheus-client's own Counter and
        # Histogram write themselves (with their _created series).
        fetches = CounterMetricFamily(
            "newsbot_fetches", "Feed fetches by outcome: 304 (not modified), 200 (a body "
            "read), error (no body: network, HTTP error, refused address).",
            labels=["outcome"])
        for outcome, count in s.fetches.items():
            fetches.add_metric([outcome], count, created=s.created)
        parse_failures = CounterMetricFamily(
            "newsbot_parse_failures", "Bodies read that are not a feed newsbot can read.",
            labels=[])
        parse_failures.add_metric([], s.parse_failures, created=s.created)
        delay = HistogramMetricFamily(
            "newsbot_delivery_delay_seconds", "From a feed item's first sight (its outbox "
            "row queued) to the event id the homeserver returned.", labels=[])
        cumulative, buckets = 0, []
        for le, count in zip(DELAY_BUCKETS, s.delays or (0,) * len(DELAY_BUCKETS),
                             strict=True):
            cumulative += count
            buckets.append((floatToGoString(le), float(cumulative)))
        delay.add_metric([], buckets, s.delay_sum)
        delay.add_sample("newsbot_delivery_delay_seconds_created", {}, s.created)
        yield from (fetches, parse_failures, delay)


def exposition(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)
