"""``check-config``'s second look: where the configuration and the stored state disagree.

Read-only, on either store (bot.store.readonly): never migrated, never written.
"""

from __future__ import annotations

from typing import Any

from bot.config import Config
from bot.store.readonly import StateReader, UnreadableState
from bot.store.schema import SCHEMA_VERSION


def state_warnings(config: Config, state: StateReader) -> list[str]:
    try:
        return _compare(config, state)
    except UnreadableState as exc:
        return [str(exc)]


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def _compare(config: Config, state: StateReader) -> list[str]:
    version = state.version()
    if version is None:
        return []               # nothing stored yet
    if version != SCHEMA_VERSION:
        return [f"{state.where}: schema version {version}; `newsbot run` will migrate it to "
                f"{SCHEMA_VERSION} (state not compared)"]
    warnings = []
    configured = {feed.name: feed for feed in config.feeds}
    rooms = {room for feed in config.feeds for room in feed.rooms}
    added: dict[str, str] = dict(state.rows("SELECT name, room FROM room_feed"))
    for name, room in sorted(added.items()):
        if name in configured:
            warnings.append(f"feed {name}: added by command in {room} and also defined in "
                            "the configuration; the configuration wins")
    # Sorted here, not by ORDER BY: the two databases may collate names differently.
    for name, url, configured_url, disabled in sorted(state.rows(
            "SELECT name, url, configured_url, disabled FROM feed_state"), key=_first):
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
    for room, count in sorted(state.rows(
            "SELECT room, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY room"),
            key=_first):
        if room not in rooms and room not in added.values():
            warnings.append(f"room {room}: {count} item(s) wait for it but no feed posts "
                            "there any more; they will still be delivered")
    return warnings
