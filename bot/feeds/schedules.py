"""``check-config``'s view of polite polling: each configured feed's effective interval
and why, from the hints its stored state keeps when there is a state.

Read-only, like bot.statecheck, on either store (bot.store.readonly).
"""

from __future__ import annotations

from bot.config import Config
from bot.feeds.hints import FeedHints, describe, effective_interval
from bot.store.readonly import StateReader, UnreadableState

# The first schema whose feed_state has the hints column (bot.store.schema).
_HINTS_SCHEMA = 8


def schedules(config: Config, state: StateReader) -> list[tuple[str, str]]:
    """(feed name, "every 2 h (the feed asks for ttl 120 min; configured 15 min)")."""
    hints, set_by_command = _stored(state)
    lines = []
    for feed in config.feeds:
        feed_hints = FeedHints.from_json(hints.get(feed.name))
        by_command = set_by_command.get(feed.name)
        interval = effective_interval(by_command or feed.interval, feed_hints,
                                      config.fetch.max_interval)
        lines.append((feed.name, describe(interval, feed_hints,
                                          by_command=by_command is not None,
                                          language="en")))
    return lines


def _stored(state: StateReader) -> tuple[dict[str, str | None], dict[str, float]]:
    try:
        version = state.version()
        if version is None:
            return {}, {}
        intervals = {str(name): float(seconds) for name, seconds in state.rows(
            "SELECT feed, interval FROM feed_settings WHERE interval IS NOT NULL")} \
            if version >= 3 else {}
        hints = dict(state.rows("SELECT name, hints FROM feed_state")) \
            if version >= _HINTS_SCHEMA else {}
        return hints, intervals
    except UnreadableState:
        return {}, {}      # bot.statecheck already says the state cannot be read
