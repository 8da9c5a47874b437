"""``check-config``'s second look: where the configuration and the stored state disagree.

Read-only: the database is opened in read-only mode and never migrated from here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.config import Config
from bot.store.schema import SCHEMA_VERSION
from bot.store.sqlite import DB_FILENAME


def state_warnings(config: Config) -> list[str]:
    path = config.storage.path / DB_FILENAME
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return _compare(config, conn, path)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [f"{path}: cannot read the state database ({exc}); `newsbot run` will "
                "refuse to start until it is restored or moved aside"]


def _compare(config: Config, conn: sqlite3.Connection, path: Path) -> list[str]:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        return [f"{path}: schema version {version}; `newsbot run` will migrate it to "
                f"{SCHEMA_VERSION} (state not compared)"]
    warnings = []
    configured = {feed.name: feed for feed in config.feeds}
    rooms = {room for feed in config.feeds for room in feed.rooms}
    added: dict[str, str] = dict(conn.execute("SELECT name, room FROM room_feed"))
    for name, room in sorted(added.items()):
        if name in configured:
            warnings.append(f"feed {name}: added by command in {room} and also defined in "
                            "the configuration; the configuration wins")
    for name, url, configured_url, disabled in conn.execute(
            "SELECT name, url, configured_url, disabled FROM feed_state ORDER BY name"):
        feed = configured.get(name)
        if feed is None:
            if name not in added:
                warnings.append(f"feed {name}: has stored state but is no longer configured "
                                "(its seen entries are kept, should it come back)")
            continue
        if feed.url != configured_url:
            warnings.append(f"feed {name}: its url changed from {configured_url} to "
                            f"{feed.url}; nothing will be reposted")
        elif url != configured_url:
            warnings.append(f"feed {name}: moved permanently to {url}; consider writing that "
                            "url in the configuration")
        if disabled and feed.url == configured_url:
            warnings.append(f"feed {name}: switched off ({disabled}); give it a new url to "
                            "poll it again")
    for room, count in conn.execute(
            "SELECT room, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY room"):
        if room not in rooms and room not in added.values():
            warnings.append(f"room {room}: {count} item(s) wait for it but no feed posts "
                            "there any more; they will still be delivered")
    return warnings
