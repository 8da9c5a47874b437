"""The metrics endpoint's exposition, without a homeserver: names, labels, one registry per app."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bot.config import FeedConfig
from bot.errors import TransportError
from bot.metrics import COUNT_EVERY, Metrics
from bot.model import Delivery, Message
from bot.store import NewDelivery, SqliteStore
from tests.support.clock import FakeClock


class Rooms:
    """The two transport calls counting needs; a room can be made to fail."""

    def __init__(self, members: dict[str, list[str]], direct: tuple[str, ...] = ()) -> None:
        self.members = members
        self.broken: set[str] = set()
        self.direct = set(direct)

    def is_direct(self, room_id: str) -> bool:
        return room_id in self.direct

    async def resolve_room(self, ref: str) -> str:
        return ref

    async def joined_members(self, room_id: str) -> list[str]:
        if room_id in self.broken:
            raise TransportError("unreachable")
        return self.members[room_id]


def feed(name: str, *rooms: str) -> FeedConfig:
    return FeedConfig(name=name, url=f"https://example.org/{name}", rooms=rooms, interval=60)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


async def test_two_apps_in_one_process_keep_their_own_metrics(tmp_path: Path) -> None:
    clock = FakeClock()
    apps = []
    for n, members in ((1, ["@bot:x", "@a:x"]), (2, ["@bot:x", "@a:x", "@b:x", "@c:x"])):
        store = SqliteStore.open(tmp_path / str(n))
        await store.ensure_feed("actus", "https://example.org/actus")
        apps.append(Metrics(store, Rooms({"!r:x": members}), clock,
                            lambda: [feed("actus", "!r:x")], ("@bot:x",), lambda n=n: 10 * n))
    first, second = [samples(await m.scrape()) for m in apps]
    actus = (("feed", "actus"),)
    assert first[("newsbot_feed_readers", actus)] == 1
    assert second[("newsbot_feed_readers", actus)] == 3
    assert first[("newsbot_delivered_total", ())] == 10
    assert second[("newsbot_delivered_total", ())] == 20
    for got in (first, second):
        assert got[("newsbot_feed_subscribers", actus)] == 0
        assert got[("newsbot_feed_failures", actus)] == 0
        assert ("newsbot_feed_last_success_seconds", actus) not in got    # never read yet
        assert got[("newsbot_outbox_pending", ())] == 0
        assert got[("newsbot_outbox_failed", ())] == 0


async def test_readers_are_counted_at_most_once_a_minute_and_kept_through_a_failure(
        tmp_path: Path) -> None:
    clock = FakeClock()
    rooms = Rooms({"!r:x": ["@bot:x", "@a:x"], "!s:x": ["@a:x", "@b:x"]})
    feeds = [feed("actus", "!r:x"), feed("lettre", "!s:x")]
    metrics = Metrics(SqliteStore.open(tmp_path), rooms, clock,
                      lambda: feeds, ("@bot:x",), lambda: 0)
    got = samples(await metrics.scrape())
    assert got[("newsbot_feed_readers", (("feed", "lettre"),))] == 2
    rooms.members["!s:x"].append("@c:x")
    assert samples(await metrics.scrape()) == got              # not counted again yet
    clock.t += COUNT_EVERY
    rooms.broken.add("!r:x")
    got = samples(await metrics.scrape())
    assert got[("newsbot_feed_readers", (("feed", "lettre"),))] == 3
    assert got[("newsbot_feed_readers", (("feed", "actus"),))] == 1     # the last count
    feeds.pop()
    clock.t += COUNT_EVERY
    got = samples(await metrics.scrape())
    assert ("newsbot_feed_readers", (("feed", "lettre"),)) not in got   # removed feed gone


async def test_fetches_parse_failures_deliveries_depth_and_the_delay_to_delivery(
        tmp_path: Path) -> None:
    clock = FakeClock()
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("actus", "https://example.org/actus")
    rows = [NewDelivery(f"e{i}", room, Message(f"item {i}", f"item {i}"), subject=f"e{i}")
            for i, room in enumerate(["!r:x", "!r:x", "!dm1:x", "!dm2:x", "!dm2:x"])]
    await store.enqueue("actus", rows, clock.now())
    outcomes = {"sent": 7, "refused": 1, "parked": 2}
    metrics = Metrics(store, Rooms({"!r:x": ["@bot:x"]}, direct=("!dm1:x", "!dm2:x")), clock,
                      lambda: [feed("actus", "!r:x")], ("@bot:x",), lambda: 7,
                      deliveries=lambda: outcomes)
    for outcome in ("304", "304", "200", "error", "parse_error", "bogus"):
        metrics.fetched(outcome)
    item = Delivery(key="k", feed="actus", entry_id="e0", room="!r:x", message=None,
                    created_at=clock.now())
    clock.t += 0.4
    metrics.sent(item)
    clock.t += 100
    metrics.sent(item)
    metrics.sent(Delivery(key="r", feed="", entry_id="", room="!r:x", message=None,
                          kind="reply"))                      # not a feed item: not counted
    got = samples(await metrics.scrape())
    assert got[("newsbot_fetches_total", (("outcome", "304"),))] == 2
    assert got[("newsbot_fetches_total", (("outcome", "200"),))] == 2   # the parse failure too
    assert got[("newsbot_fetches_total", (("outcome", "error"),))] == 1
    assert got[("newsbot_parse_failures_total", ())] == 1
    for outcome, count in outcomes.items():
        assert got[("newsbot_deliveries_total", (("outcome", outcome),))] == count
    assert got[("newsbot_outbox_depth", (("room", "!r:x"),))] == 2
    # Private conversations are one sum: no line names a person's conversation.
    assert got[("newsbot_outbox_depth", (("room", "direct"),))] == 3
    assert not any("dm" in dict(labels).get("room", "") for _, labels in got)
    assert got[("newsbot_outbox_pending", ())] == 5
    delay = "newsbot_delivery_delay_seconds"
    assert got[(f"{delay}_count", ())] == 2
    assert abs(got[(f"{delay}_sum", ())] - 100.8) < 1e-6
    assert got[(f"{delay}_bucket", (("le", "0.5"),))] == 1
    assert got[(f"{delay}_bucket", (("le", "60.0"),))] == 1
    assert got[(f"{delay}_bucket", (("le", "300.0"),))] == 2


async def test_every_fetch_outcome_is_shown_from_zero(tmp_path: Path) -> None:
    metrics = Metrics(SqliteStore.open(tmp_path), Rooms({}), FakeClock(), lambda: [],
                      ("@bot:x",), lambda: 0)
    got = samples(await metrics.scrape())
    for outcome in ("304", "200", "error"):
        assert got[("newsbot_fetches_total", (("outcome", outcome),))] == 0
    assert got[("newsbot_deliveries_total", (("outcome", "refused"),))] == 0
    assert got[("newsbot_delivery_delay_seconds_count", ())] == 0
