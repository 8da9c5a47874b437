"""Polite polling: what a feed and its server say about how often to poll, bounded.

A feed may ask to be polled less often (RSS ``<ttl>``, ``sy:updatePeriod`` /
``sy:updateFrequency``, HTTP ``Cache-Control: max-age`` or ``Expires``) and not at all
at some hours or on some days (RSS ``<skipHours>`` / ``<skipDays>``, in UTC). Honoured as
a floor on the configured interval, never beyond a ceiling (``fetch.max_interval``):

    effective = max(base, min(largest hint, max(ceiling, base)))

so a moderator's ``!news interval`` stays the base, and a hostile feed asking for a poll
once a century gets one every ``fetch.max_interval``. Pure: no I/O, no clock of its own.
Every reader here takes a stranger's text, so each bounds what it reads and turns garbage
into a problem string (logged by the caller), never an exception.
"""

from __future__ import annotations

import email.utils
import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from bot.i18n import format_duration, text

__all__ = ["FeedHints", "Interval", "describe", "effective_interval", "http_freshness",
           "next_allowed", "read_skips", "read_ttl", "read_update_period"]

# Numbers longer than this are "huge" and read as its largest value: whatever a feed
# writes, a hint stays a finite number of at most MAX_HINT seconds (ttl 10^9 minutes),
# shown as the feed wrote it; the ceiling does the bounding that matters.
_MAX_DIGITS: Final = 9
MAX_HINT: Final = 60.0 * 10 ** _MAX_DIGITS
_HOUR: Final = 3600.0
_SY_PERIODS: Final = {"hourly": 3600.0, "daily": 86400.0, "weekly": 7 * 86400.0,
                      "monthly": 30 * 86400.0, "yearly": 365 * 86400.0}
_DAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# skipHours/skipDays are read from the raw document (feedparser keeps only their last
# child): the first element of each, at most this many bytes of it.
_SKIP_WINDOW: Final = 4096
_HOUR_ITEM = re.compile(rb"<hour\s*>\s*([^<]{0,16}?)\s*</hour\s*>")
_DAY_ITEM = re.compile(rb"<day\s*>\s*([^<]{0,16}?)\s*</day\s*>")
_MAX_AGE = re.compile(r'(?:^|,)\s*max-age\s*=\s*"?([^",\s]*)"?\s*(?:,|$)', re.IGNORECASE)
_NO_FLOOR = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)
_MAX_HEADER: Final = 1000       # of a Cache-Control or Expires header, the part read
# Shared by every feed that skips nothing: each empty frozenset() is an object of 216
# bytes, two per feed held by its poller (2 MiB at 10,000 feeds).
_NO_SKIPS: Final[frozenset[int]] = frozenset()


@dataclass(frozen=True, slots=True)
class FeedHints:
    """What one feed asks about its polling, each already bounded (seconds, UTC)."""

    ttl: float | None = None            # RSS <ttl> (written in minutes)
    update_period: float | None = None  # sy:updatePeriod / sy:updateFrequency
    max_age: float | None = None        # Cache-Control max-age (or Expires - Date)
    skip_hours: frozenset[int] = _NO_SKIPS  # 0-23, UTC
    skip_days: frozenset[int] = _NO_SKIPS   # 0 = Monday

    @property
    def skips(self) -> bool:
        return bool(self.skip_hours or self.skip_days)

    def asked(self) -> tuple[str, float] | None:
        """The hint asking for the longest interval, as (name, seconds), or None."""
        named = [("ttl", self.ttl), ("sy", self.update_period), ("max-age", self.max_age)]
        found = [(name, s) for name, s in named if s]
        return max(found, key=lambda pair: pair[1]) if found else None

    def to_json(self) -> str:
        named = (("ttl", self.ttl), ("sy", self.update_period), ("max_age", self.max_age))
        data: dict[str, object] = {key: value for key, value in named if value is not None}
        if self.skip_hours:
            data["skip_hours"] = sorted(self.skip_hours)
        if self.skip_days:
            data["skip_days"] = sorted(self.skip_days)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> FeedHints:
        """Hints as stored; whatever is not what ``to_json`` writes is dropped."""
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        if not data:
            return _ASKS_NOTHING     # most feeds: one object for all of them

        def seconds(key: str) -> float | None:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return min(float(value), MAX_HINT) if value > 0 else None

        def ints(key: str, top: int) -> frozenset[int]:
            values = data.get(key)
            if not isinstance(values, list):
                return _NO_SKIPS
            return frozenset(v for v in values[:top + 1]
                             if isinstance(v, int) and not isinstance(v, bool)
                             and 0 <= v < top) or _NO_SKIPS

        return cls(ttl=seconds("ttl"), update_period=seconds("sy"),
                   max_age=seconds("max_age"), skip_hours=ints("skip_hours", 24),
                   skip_days=ints("skip_days", 7))


@dataclass(frozen=True, slots=True)
class Interval:
    """The interval polls follow, and why."""

    seconds: float
    base: float                 # the configured interval, or the one set by command
    hint: str | None = None     # the hint that raised it: "ttl", "sy" or "max-age"
    asked: float | None = None  # what that hint asked for, before the ceiling
    ceiling: float | None = None  # set when the ceiling cut what the hint asked


# A feed that asks for nothing: one object for all of them (most feeds, 10,000 of them).
_ASKS_NOTHING: Final = FeedHints()


@functools.lru_cache(maxsize=256)
def _plain(base: float) -> Interval:
    """The interval of a feed whose hints ask for no more than its base: shared by every
    feed of that base (frozen)."""
    return Interval(base, base)


def effective_interval(base: float, hints: FeedHints, ceiling: float) -> Interval:
    """The base, raised to the longest hint, which is capped by ``ceiling`` (a base
    longer than the ceiling stays: the ceiling bounds what feeds ask, not moderators)."""
    asked = hints.asked()
    if asked is None or asked[1] <= base:
        return _plain(base)
    name, seconds = asked
    top = max(ceiling, base)
    if seconds <= top:
        return Interval(seconds, base, name, seconds)
    return Interval(top, base, name, seconds, ceiling=ceiling)


def next_allowed(moment: float, hints: FeedHints, latest: float) -> float:
    """The first time at or after ``moment`` outside the feed's skipped hours and days
    (UTC), but never after ``latest``."""
    if not hints.skips:
        return moment
    t = moment
    for _ in range(24 * 7 + 1):
        if t >= latest:
            return latest
        when = datetime.fromtimestamp(t, UTC)
        if when.hour not in hints.skip_hours and when.weekday() not in hints.skip_days:
            return t
        t = (t // _HOUR + 1) * _HOUR    # the start of the next hour
    return min(moment, latest)          # every hour skipped: not a hint (see read_skips)


# --- reading hints -------------------------------------------------------------------


def _count(text: str) -> int | None:
    """A non-negative whole number (huge ones saturate), or None."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    return int(text) if len(text) <= _MAX_DIGITS else 10 ** _MAX_DIGITS - 1


def _short(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= 40 else text[:39] + "…")


def read_ttl(value: str, problems: list[str]) -> float | None:
    """RSS ``<ttl>``: minutes."""
    if not value.strip():
        return None
    minutes = _count(value)
    if minutes is None:
        problems.append(f"ignored <ttl> {_short(value)}: not a number of minutes")
        return None
    return min(minutes * 60.0, MAX_HINT) or None


def read_update_period(period: str, frequency: str, problems: list[str]) -> float | None:
    """``sy:updatePeriod`` (hourly ... yearly, daily when absent) over
    ``sy:updateFrequency`` (times per period, 1 when absent)."""
    if not period.strip() and not frequency.strip():
        return None
    unit = _SY_PERIODS.get(period.strip().lower() or "daily")
    if unit is None:
        problems.append(f"ignored sy:updatePeriod {_short(period)}: not hourly, daily, "
                        "weekly, monthly or yearly")
        return None
    times = _count(frequency) if frequency.strip() else 1
    if not times:
        problems.append(f"ignored sy:updateFrequency {_short(frequency)}: not a positive "
                        "whole number")
        return None
    return min(unit / times, MAX_HINT)


def _first_element(body: bytes, name: str, problems: list[str]) -> bytes | None:
    """The inside of the first ``<name>...</name>``, if it ends within ``_SKIP_WINDOW``
    bytes of its start: a linear search, whatever the document."""
    start = body.find(b"<" + name.encode())
    if start < 0:
        return None
    window = body[start:start + _SKIP_WINDOW]
    opened = window.find(b">")
    closed = window.find(b"</" + name.encode())
    if opened < 0 or closed < opened:
        problems.append(f"ignored <{name}>: unclosed or longer than {_SKIP_WINDOW} bytes")
        return None
    return window[opened + 1:closed]


def read_skips(body: bytes, problems: list[str]) -> tuple[frozenset[int], frozenset[int]]:
    """RSS ``<skipHours>`` (hours 0-23, GMT; 24 read as 0) and ``<skipDays>`` (English
    day names) from the raw document. A list that skips every hour or every day is no
    hint at all (the feed would never be polled) and is ignored."""
    hours: set[int] = set()
    inside = _first_element(body, "skipHours", problems)
    if inside is not None:
        for match in _HOUR_ITEM.finditer(inside):
            hour = _count(match[1].decode("latin-1"))
            if hour is None or hour > 24:
                problems.append(f"ignored <skipHours> hour {_short(match[1].decode('latin-1'))}")
            else:
                hours.add(hour % 24)
    days: set[int] = set()
    inside = _first_element(body, "skipDays", problems)
    if inside is not None:
        for match in _DAY_ITEM.finditer(inside):
            name = match[1].decode("latin-1").strip().lower()
            if name in _DAYS:
                days.add(_DAYS.index(name))
            else:
                problems.append(f"ignored <skipDays> day {_short(match[1].decode('latin-1'))}")
    if len(hours) >= 24:
        problems.append("ignored <skipHours>: it skips every hour")
        hours.clear()
    if len(days) >= 7:
        problems.append("ignored <skipDays>: it skips every day")
        days.clear()
    return frozenset(hours), frozenset(days)


def http_freshness(cache_control: str | None, expires: str | None, date: str | None,
                   age: str | None, problems: list[str]) -> float | None:
    """How long the server says the response stays fresh (RFC 9111): Cache-Control
    max-age less Age, else Expires less Date. ``no-cache``/``no-store``: no floor."""
    if cache_control:
        cache_control = cache_control[:_MAX_HEADER]
        if _NO_FLOOR.search(cache_control):
            return None
        match = _MAX_AGE.search(cache_control)
        if match is not None:
            seconds = _count(match[1])
            if seconds is None:
                problems.append(f"ignored Cache-Control {_short(cache_control)}: max-age is "
                                "not a number of seconds")
                return None
            used = _count(age or "") or 0
            return min(max(seconds - used, 0), MAX_HINT) or None
    if not expires:
        return None
    # An invalid Expires (often "0" or "-1") means "already stale" (RFC 9111): no floor.
    until = _http_date(expires[:_MAX_HEADER])
    sent = _http_date(date[:_MAX_HEADER]) if date else None
    if until is None or sent is None:
        return None
    return min(max(until - sent, 0.0), MAX_HINT) or None


def _http_date(value: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    try:
        return when.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def describe(interval: Interval, hints: FeedHints, *, by_command: bool,
             language: str) -> str:
    """For people: "every 2 h (the feed asks for ttl 120 min; configured 15 min)", then
    the hours and days the feed asks not to be polled in."""
    base = text("base_command" if by_command else "base_configured", language,
                interval=format_duration(interval.base, language))
    why = base
    if interval.hint is not None and interval.asked is not None:
        asked = interval.asked
        if interval.hint == "ttl":
            hint = text("hint_ttl", language, minutes=f"{asked / 60:.0f}")
        elif interval.hint == "sy":
            hint = text("hint_sy", language, period=format_duration(asked, language))
        else:
            hint = text("hint_max_age", language, seconds=f"{asked:.0f}")
        if interval.ceiling is not None:
            hint = text("hint_capped", language, hint=hint,
                        ceiling=format_duration(interval.ceiling, language))
        why = f"{hint}; {base}" if language != "fr" else f"{hint} ; {base}"
    parts = [text("every", language, every=format_duration(interval.seconds, language),
                  why=why)]
    if hints.skip_hours:
        parts.append(text("skip_hours", language, hours=_ranges(sorted(hints.skip_hours))))
    if hints.skip_days:
        names = text("weekdays", language).split(",")
        parts.append(text("skip_days", language,
                          days=", ".join(names[d] for d in sorted(hints.skip_days))))
    return ("; " if language != "fr" else " ; ").join(parts)


def _ranges(values: Iterable[int]) -> str:
    parts: list[str] = []
    run: list[int] = []
    for value in values:
        if run and value == run[-1] + 1:
            run.append(value)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [value]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts)
