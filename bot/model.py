"""The data that flows through the pipeline: feed entries, rendered messages, deliveries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

# What an outbox row is, stored with it (never guessed from its key): a feed item's own
# message, its separate picture, a correction of it, a subscriber's digest, a notice.
DeliveryKind = Literal["item", "image", "edit", "digest", "notice"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of a feed, as parsed. HTML fields are raw (unsanitised) feed HTML."""

    entry_id: str               # stable identity inside its feed (id/guid, link, or content hash)
    title: str                  # plain text, may be ""
    link: str | None
    summary_html: str           # may be ""
    content_html: str           # may be ""
    author: str | None = None
    published: datetime | None = None   # timezone-aware UTC
    updated: datetime | None = None
    categories: tuple[str, ...] = ()
    image_url: str | None = None        # the entry's picture (media:, enclosure, first <img>)


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A parsed feed. ``entries`` are in document order (usually newest first)."""

    title: str
    link: str | None
    entries: tuple[Entry, ...]
    language: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Message:
    """What a room receives: a plain-text body and sanitised HTML."""

    body: str
    html: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """One (entry, room) pair waiting in the outbox."""

    key: str                    # stable id of this delivery, also the basis of the txn id
    feed: str
    entry_id: str
    room: str                   # room reference as configured (alias or id)
    content: dict[str, object] = field(hash=False, compare=False)
    created_at: float = 0.0
    first_attempt_at: float | None = None
    attempts: int = 0
    kind: DeliveryKind = "item"
    subject: str | None = None  # the feed entry this row shows or corrects
    failures: int = 0           # unforeseen errors while delivering it


def delivery_key(feed: str, entry_id: str, room: str) -> str:
    """A short stable id for (feed, entry, room): same inputs, same key, across restarts."""
    digest = hashlib.sha256(f"{feed}\0{entry_id}\0{room}".encode()).hexdigest()
    return digest[:32]
