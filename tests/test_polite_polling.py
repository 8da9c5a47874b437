"""Polite polling (issue 13): a feed's hints raise its interval, never beyond the ceiling.

The real FeedPoller on a real SqliteStore and Fetcher, a real feed server on 127.0.0.1
serving the hints (RSS ttl, skipHours/skipDays, sy:, Cache-Control), and a FakeClock: the
delay a poll returns and the next fetch it stores are what is checked. Then what people
see: `check-config` and `!news status` against a real Synapse.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from bot.config import FeedConfig, FetchConfig
from bot.feeds.fetch import Fetcher
from bot.feeds.hints import FeedHints, effective_interval, http_freshness, next_allowed
from bot.feeds.parse import parse_feed
from bot.poller import FeedPoller
from bot.store import SqliteStore
from bot.store.types import FeedState
from tests.botkit import BotRunner, bot_config, load, write_config
from tests.support import (
    FeedServer,
    MemberFactory,
    NewUserFactory,
    SynapseServer,
)
from tests.support.clock import FakeClock
from tests.support.pollers import feed_poller
from tests.test_commands import ask

ROOT = Path(__file__).resolve().parent.parent
# Monday 5 January 2026, 09:30 UTC.
MONDAY_0930 = datetime(2026, 1, 5, 9, 30, tzinfo=UTC).timestamp()
HOUR = 3600.0
DAY = 86400.0
SY = 'xmlns:sy="http://purl.org/rss/1.0/modules/syndication/"'


def rss(channel_extra: str = "", *, items: int = 2, namespaces: str = SY) -> bytes:
    """An RSS 2.0 document with these channel elements before its items."""
    entries = "".join(f"<item><title>Article {i}</title><guid>urn:polite:{i}</guid>"
                      f"<link>http://127.0.0.1/a/{i}</link></item>"
                      for i in range(items, 0, -1))
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0" {namespaces}>'
            f"<channel><title>Actualités</title><link>http://127.0.0.1/</link>"
            f"{channel_extra}{entries}</channel></rss>").encode()


@dataclass
class Rig:
    store: SqliteStore
    fetcher: Fetcher
    server: FeedServer
    clock: FakeClock = field(default_factory=lambda: FakeClock(MONDAY_0930))
    enqueued: list[str] = field(default_factory=list)

    async def poller(self, path: str, *, interval: float = 900.0,
                     ceiling: float = DAY, name: str = "actus") -> FeedPoller:
        feed = FeedConfig(name=name, url=self.server.url(path), rooms=("!actus:test",),
                          interval=interval)
        await self.store.ensure_feed(name, feed.url)
        return feed_poller(feed, self.store, self.fetcher, clock=self.clock,
                           fetch_config=FetchConfig(allow_private_networks=True,
                                                    max_interval=ceiling),
                           on_enqueued=self.enqueued.extend, seed=7)

    async def state(self, name: str = "actus") -> FeedState:
        state = await self.store.feed_state(name)
        assert state is not None
        return state


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = SqliteStore.open(tmp_path / "state")
    try:
        async with FeedServer() as server, Fetcher(allow_private_networks=True) as fetcher:
            yield Rig(store, fetcher, server)
    finally:
        store.close()


def jittered_within(delay: float, interval: float) -> bool:
    # The poller only ever polls a little early (jitter 0.9-1.0), never late.
    return 0.9 * interval - 1e-6 <= delay <= interval + 1e-6


# --- the poller ----------------------------------------------------------------------


async def test_ttl_raises_the_interval_and_a_304_keeps_it(rig: Rig) -> None:
    rig.server.set_raw("/ttl.xml", rss("<ttl>120</ttl>"))
    poller = await rig.poller("/ttl.xml", interval=900)
    delay = await poller.poll_once()
    assert jittered_within(delay, 2 * HOUR), delay
    state = await rig.state()
    assert state.next_fetch == pytest.approx(rig.clock.now() + delay)
    assert json.loads(state.hints or "") == {"ttl": 7200.0}

    rig.clock.advance(delay)
    delay = await poller.poll_once()
    assert rig.server.requests("/ttl.xml")[-1].status == 304
    assert jittered_within(delay, 2 * HOUR), delay

    # A restart (a new poller) still honours it, from the stored hints, on a 304.
    rig.clock.advance(delay)
    again = await rig.poller("/ttl.xml", interval=900)
    delay = await again.poll_once()
    assert rig.server.requests("/ttl.xml")[-1].status == 304
    assert jittered_within(delay, 2 * HOUR), delay


async def test_without_hints_the_configured_interval_stays(rig: Rig) -> None:
    rig.server.set_raw("/plain.xml", rss())
    poller = await rig.poller("/plain.xml", interval=900)
    assert jittered_within(await poller.poll_once(), 900)
    assert (await rig.state()).hints == "{}"


async def test_a_hint_shorter_than_the_interval_changes_nothing(rig: Rig) -> None:
    rig.server.set_raw("/short.xml", rss("<ttl>5</ttl>"),
                       headers={"Cache-Control": "max-age=60"})
    poller = await rig.poller("/short.xml", interval=HOUR)
    assert jittered_within(await poller.poll_once(), HOUR)


async def test_the_ceiling_caps_a_huge_ttl(rig: Rig) -> None:
    rig.server.set_raw("/huge.xml", rss("<ttl>1000000000</ttl>"))
    poller = await rig.poller("/huge.xml", interval=900, ceiling=6 * HOUR)
    assert jittered_within(await poller.poll_once(), 6 * HOUR)
    rig.server.set_raw("/huger.xml", rss("<ttl>" + "9" * 5000 + "</ttl>"))
    poller = await rig.poller("/huger.xml", interval=900, ceiling=6 * HOUR, name="huger")
    assert jittered_within(await poller.poll_once(), 6 * HOUR)


async def test_cache_control_raises_it_and_a_304_may_renew_it(rig: Rig) -> None:
    rig.server.set_raw("/cc.xml", rss(), headers={"Cache-Control": "public, max-age=3600"})
    poller = await rig.poller("/cc.xml", interval=600)
    delay = await poller.poll_once()
    assert jittered_within(delay, HOUR), delay
    assert json.loads((await rig.state()).hints or "") == {"max_age": 3600.0}
    # The feed server sends the same headers with its 304s: still one hour.
    rig.clock.advance(delay)
    delay = await poller.poll_once()
    assert rig.server.requests("/cc.xml")[-1].status == 304
    assert jittered_within(delay, HOUR), delay


async def test_sy_update_period_raises_it(rig: Rig) -> None:
    rig.server.set_raw("/sy.xml", rss("<sy:updatePeriod>daily</sy:updatePeriod>"
                                      "<sy:updateFrequency>4</sy:updateFrequency>"))
    poller = await rig.poller("/sy.xml", interval=900)
    assert jittered_within(await poller.poll_once(), 6 * HOUR)


async def test_a_moderators_interval_stays_the_base(rig: Rig) -> None:
    rig.server.set_raw("/base.xml", rss("<ttl>120</ttl>"))
    poller = await rig.poller("/base.xml", interval=900)
    await rig.store.set_feed_interval("actus", 4 * HOUR)    # what `!news interval` does
    assert jittered_within(await poller.poll_once(), 4 * HOUR)
    await rig.store.set_feed_interval("actus", 30 * 60)
    rig.server.set_raw("/base.xml", rss("<ttl>120</ttl>", items=3))
    assert jittered_within(await poller.poll_once(), 2 * HOUR)


async def test_skip_hours_defer_the_next_poll_to_the_first_allowed_hour(rig: Rig) -> None:
    # 09:30 + 1 h falls in the skipped 10:00-12:59: the next poll is at 13:00 sharp.
    rig.server.set_raw("/skiph.xml", rss(
        "<skipHours><hour>10</hour><hour>11</hour><hour>12</hour></skipHours>"))
    poller = await rig.poller("/skiph.xml", interval=HOUR)
    delay = await poller.poll_once()
    assert rig.clock.now() + delay == datetime(2026, 1, 5, 13, 0, tzinfo=UTC).timestamp()
    assert (await rig.state()).next_fetch == rig.clock.now() + delay


async def test_skip_days_defer_but_never_beyond_the_ceiling(rig: Rig) -> None:
    friday_2330 = datetime(2026, 1, 9, 23, 30, tzinfo=UTC).timestamp()
    rig.clock.t = friday_2330
    body = rss("<skipDays><day>Saturday</day><day>Sunday</day></skipDays>")
    rig.server.set_raw("/skipd.xml", body)
    poller = await rig.poller("/skipd.xml", interval=HOUR, ceiling=3 * DAY)
    delay = await poller.poll_once()
    assert rig.clock.now() + delay == datetime(2026, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    # With a one-day ceiling, the poll comes a day later, skipped day or not.
    rig.server.set_raw("/skipd-capped.xml", body)
    capped = await rig.poller("/skipd-capped.xml", interval=HOUR, ceiling=DAY, name="capped")
    assert await capped.poll_once() == DAY


async def test_an_old_state_without_hints_reads_the_body_once(rig: Rig) -> None:
    """A state from before hints were stored: its first poll is unconditional, so the
    hints of a feed that answers 304 for ever are learnt."""
    rig.server.set_raw("/old.xml", rss("<ttl>60</ttl>"))
    poller = await rig.poller("/old.xml", interval=900)
    await poller.poll_once()
    rig.store._conn.execute("UPDATE feed_state SET hints = NULL")
    rig.server.clear_requests()
    fresh = await rig.poller("/old.xml", interval=900)
    delay = await fresh.poll_once()
    request = rig.server.requests("/old.xml")[-1]
    assert not request.conditional and request.status == 200
    assert jittered_within(delay, HOUR)
    assert not rig.enqueued                     # read again, nothing posted again
    assert json.loads((await rig.state()).hints or "") == {"ttl": 3600.0}


HOSTILE = [
    pytest.param(rss("<ttl>soon</ttl>"), {}, "<ttl>", id="ttl-words"),
    pytest.param(rss("<ttl>-5</ttl>"), {}, "<ttl>", id="ttl-negative"),
    pytest.param(rss("<skipHours>" + "".join(f"<hour>{h}</hour>" for h in range(24))
                     + "</skipHours>"), {}, "every hour", id="skip-every-hour"),
    pytest.param(rss("<skipDays>" + "".join(f"<day>{d}</day>" for d in (
        "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"))
        + "</skipDays>"), {}, "every day", id="skip-every-day"),
    pytest.param(rss("<skipHours><hour>99</hour><hour>x</hour></skipHours>"), {},
                 "hour '99'", id="skip-garbage"),
    pytest.param(rss("<skipHours><hour>" + "x" * 100_000 + "</hour></skipHours>"), {},
                 "longer than", id="skip-long"),
    pytest.param(rss("<skipHours>" + "<hour>3</hour>" * 200_000 + "</skipHours>"), {},
                 None, id="skip-megabytes"),
    pytest.param(rss("<sy:updatePeriod>fortnightly</sy:updatePeriod>"), {},
                 "sy:updatePeriod", id="sy-period"),
    pytest.param(rss("<sy:updatePeriod>hourly</sy:updatePeriod>"
                     "<sy:updateFrequency>0</sy:updateFrequency>"), {},
                 "sy:updateFrequency", id="sy-zero"),
    pytest.param(rss(), {"Cache-Control": "max-age=banana"}, "Cache-Control",
                 id="cc-words"),
    pytest.param(rss(), {"Cache-Control": "no-store, max-age=999999"}, None, id="cc-no-store"),
    pytest.param(rss(), {"Expires": "0"}, None, id="expires-zero"),
]


@pytest.mark.parametrize(("body", "headers", "logged"), HOSTILE)
async def test_a_hostile_hint_does_nothing_bad(
        rig: Rig, caplog: pytest.LogCaptureFixture, body: bytes, headers: dict[str, str],
        logged: str | None) -> None:
    """Garbage is ignored with an INFO line: the configured interval holds, the items are
    posted, nothing is raised nor logged as an error."""
    caplog.set_level(logging.INFO)
    path = f"/hostile-{uuid.uuid4().hex[:6]}.xml"
    rig.server.set_raw(path, body, headers=headers)
    poller = await rig.poller(path, interval=900)
    delay = await poller.poll_once()
    assert jittered_within(delay, 900), delay
    state = await rig.state()
    assert state.failures == 0 and state.last_error is None
    assert state.initialized
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], \
        [r.getMessage() for r in caplog.records]
    if logged is not None:
        assert any(logged in r.getMessage() and r.levelno == logging.INFO
                   for r in caplog.records), [r.getMessage() for r in caplog.records]


async def test_the_interval_and_why_are_logged_when_they_change(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.poller")
    rig.server.set_raw("/log.xml", rss("<ttl>120</ttl>"))
    poller = await rig.poller("/log.xml", interval=900)
    await poller.poll_once()
    await poller.poll_once()                    # a 304: nothing new to say
    rig.server.set_raw("/log.xml", rss("<ttl>180</ttl>"))
    await poller.poll_once()
    lines = [r.getMessage() for r in caplog.records if "polled every" in r.getMessage()]
    assert lines == ["feed actus: polled every 2 h (the feed asks for ttl 120 min; "
                     "configured 15 min)",
                     "feed actus: polled every 3 h (the feed asks for ttl 180 min; "
                     "configured 15 min)"]


# --- the arithmetic and the readers --------------------------------------------------


def test_effective_interval_is_the_base_raised_by_hints_and_capped() -> None:
    assert effective_interval(900, FeedHints(), DAY).seconds == 900
    assert effective_interval(900, FeedHints(ttl=7200), DAY).seconds == 7200
    capped = effective_interval(900, FeedHints(ttl=60e9, max_age=10), DAY)
    assert (capped.seconds, capped.hint, capped.ceiling) == (DAY, "ttl", DAY)
    # The ceiling bounds what feeds ask for, not what people configure.
    assert effective_interval(2 * DAY, FeedHints(ttl=3 * DAY), DAY).seconds == 2 * DAY


def test_next_allowed_stops_at_the_latest() -> None:
    every_hour_but_one = FeedHints(skip_hours=frozenset(range(23)))
    assert next_allowed(MONDAY_0930, every_hour_but_one, MONDAY_0930 + DAY) == \
        datetime(2026, 1, 5, 23, 0, tzinfo=UTC).timestamp()
    assert next_allowed(MONDAY_0930, every_hour_but_one, MONDAY_0930 + HOUR) == \
        MONDAY_0930 + HOUR


def test_http_freshness() -> None:
    problems: list[str] = []
    assert http_freshness("max-age=600", None, None, None, problems) == 600
    assert http_freshness('public, max-age="600"', None, None, "100", problems) == 500
    assert http_freshness(None, "Mon, 05 Jan 2026 10:30:00 GMT",
                          "Mon, 05 Jan 2026 09:30:00 GMT", None, problems) == HOUR
    assert http_freshness(None, "Mon, 05 Jan 2026 10:30:00 GMT", None, None, problems) is None
    assert http_freshness("no-cache", None, None, None, problems) is None
    assert problems == []
    assert http_freshness("max-age=" + "9" * 10_000, None, None, None, problems) == 10 ** 9 - 1


def test_stored_hints_are_read_defensively() -> None:
    for text in (None, "", "[]", "{", '{"ttl": "x", "skip_hours": [99, -1, true, "3"]}',
                 '{"ttl": -5, "sy": 1e999, "skip_days": 7}'):
        hints = FeedHints.from_json(text)
        assert not hints.skips and hints.ttl is None
    assert FeedHints.from_json('{"skip_hours": [1, 2], "max_age": 60}') == \
        FeedHints(max_age=60.0, skip_hours=frozenset({1, 2}))


def test_the_feed_document_gives_its_hints() -> None:
    parsed = parse_feed(rss("<ttl>90</ttl><sy:updatePeriod>weekly</sy:updatePeriod>"
                            "<skipHours><hour>0</hour><hour> 24 </hour><hour>5</hour>"
                            "</skipHours><skipDays><day>sunday</day></skipDays>"))
    assert parsed.hints == FeedHints(ttl=5400.0, update_period=7 * DAY,
                                     skip_hours=frozenset({0, 5}), skip_days=frozenset({6}))
    assert parsed.warnings == ()


# --- what people see -----------------------------------------------------------------


async def test_check_config_shows_the_effective_interval_from_the_state(
        rig: Rig, tmp_path: Path) -> None:
    rig.server.set_raw("/cc-state.xml", rss("<ttl>120</ttl>"))
    poller = await rig.poller("/cc-state.xml", interval=900)
    await poller.poll_once()
    rig.store.close()
    config = tmp_path / "c.yaml"
    config.write_text(
        'matrix: {homeserver: "http://127.0.0.1:1", user_id: "@bot:localhost", '
        'access_token: t0ken, device_id: BOT}\n'
        f"storage: {{path: {tmp_path / 'state'}}}\n"
        "feeds:\n"
        f"  - {{name: actus, url: '{rig.server.url('/cc-state.xml')}', "
        "rooms: ['!a:localhost'], interval: 15m}\n"
        f"  - {{name: autre, url: '{rig.server.url('/x.xml')}', rooms: ['!a:localhost'], "
        "interval: 30m}\n", encoding="utf-8")
    result = subprocess.run(  # noqa: ASYNC221 - a short command; nothing else runs here
        [sys.executable, "-m", "bot", "check-config", "-c", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "  actus: every 2 h (the feed asks for ttl 120 min; configured 15 min)",
        "  autre: every 30 min (configured 30 min)"]
    rig.store = SqliteStore.open(tmp_path / "state")     # closed by the fixture


async def test_status_shows_the_effective_interval_and_why(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, run_bot: BotRunner,
        tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    moderator = await member(await new_user("moderator"))
    room = await moderator.create_room(name="actus")
    feed_server.set_raw(feed_path, rss("<ttl>120</ttl><skipDays><day>Sunday</day>"
                                       "</skipDays>"))
    config_path = write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "officiel", "url": feed_server.url(feed_path), "rooms": [room],
                "backfill": 1, "interval": "15m"}]))
    await run_bot(load(config_path, bot))
    await moderator.wait_for_messages(room, 1, sender=bot.user_id)   # the first poll
    status = await ask(moderator, room, bot, "!news status")
    line = [li for li in status.splitlines() if li.startswith("• officiel")][0]
    assert line.endswith("; every 2 h (the feed asks for ttl 120 min; configured 15 min); "
                         "no polls on Sun (UTC)"), line
    await ask(moderator, room, bot, "!news lang fr")
    await ask(moderator, room, bot, "!news interval officiel 3h")
    status = await ask(moderator, room, bot, "!news status")
    line = [li for li in status.splitlines() if li.startswith("• officiel")][0]
    assert line.endswith(" ; toutes les 3 h (fixé par commande à 3 h) ; "
                         "pas de lecture le dim. (UTC)"), line
