"""The metrics endpoint's exposition, without a homeserver: names, labels, one registry per app."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bot.config import FeedConfig
from bot.errors import TransportError
from bot.metrics import COUNT_EVERY, Metrics
from bot.store import SqliteStore
from tests.support.clock import FakeClock


class Rooms:
    """The two transport calls counting needs; a room can be made to fail."""

    def __init__(self, members: dict[str, list[str]]) -> None:
        self.members = members
        self.broken: set[str] = set()

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
                            lambda: [feed("actus", "!r:x")], "@bot:x", lambda n=n: 10 * n))
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
                      lambda: feeds, "@bot:x", lambda: 0)
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
