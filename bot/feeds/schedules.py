"""``check-config``'s view of polite polling: each configured feed's effective interval
and why, from the hints its stored state keeps when there is a state.

Read-only, like bot.statecheck: the database is opened read-only and never migrated.
"""

from __future__ import annotations

import sqlite3

from bot.config import Config
from bot.feeds.hints import FeedHints, describe, effective_interval
from bot.store.sqlite import DB_FILENAME

# The first schema whose feed_state has the hints column (bot.store.schema).
_HINTS_SCHEMA = 8


def schedules(config: Config) -> list[tuple[str, str]]:
    """(feed name, "every 2 h (the feed asks for ttl 120 min; configured 15 min)")."""
    hints, set_by_command = _stored(config)
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


def _stored(config: Config) -> tuple[dict[str, str | None], dict[str, float]]:
    path = config.storage.path / DB_FILENAME
    if not path.exists():
        return {}, {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            intervals = {str(name): float(seconds) for name, seconds in conn.execute(
                "SELECT feed, interval FROM feed_settings WHERE interval IS NOT NULL")} \
                if version >= 3 else {}
            hints = dict(conn.execute("SELECT name, hints FROM feed_state")) \
                if version >= _HINTS_SCHEMA else {}
            return hints, intervals
        finally:
            conn.close()
    except sqlite3.Error:
        return {}, {}      # bot.statecheck already says the state cannot be read
