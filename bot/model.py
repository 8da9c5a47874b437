"""The data that flows through the pipeline: feed entries, rendered messages, deliveries."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from bot.feeds.hints import FeedHints

# What an outbox row is, stored with it (never guessed from its key): a feed item's own
# message, its separate picture, a correction of it, a subscriber's digest, a notice, a
# command's reply, the last answer of a private conversation (after which the bot leaves
# it), a newcomer's welcome.
DeliveryKind = Literal["item", "image", "edit", "digest", "notice", "reply", "goodbye",
                       "welcome"]
ImageMode = Literal["inline", "separate"]
# The networks a target can be on. A room reference without a network is a Matrix one;
# an XMPP one starts with "xmpp:".
Network = Literal["matrix", "xmpp"]


XMPP_PREFIX = "xmpp:"
# xmpp: then a bare JID (no resource), bounded like XMPP's own limits: a group chat, or a
# person (one-to-one chats, admins, moderators). The one definition the config and the
# XMPP transport both check addresses with.
XMPP_ADDRESS_RE = re.compile(r"xmpp:[^@/\s\"&'<>:]{1,1023}@[A-Za-z0-9.\-]{1,253}")


def network_of(room: str) -> Network:
    return "xmpp" if room.startswith(XMPP_PREFIX) else "matrix"


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
    # What the document asks about its polling (RSS ttl, skipHours/skipDays, sy:), bounded.
    hints: FeedHints = field(default_factory=FeedHints)


@dataclass(frozen=True, slots=True)
class Image:
    """A picture to show with a message: at its place in the text (inline) or as a message
    of its own right after it (separate). Checked and hosted when it is first sent."""

    url: str
    mode: ImageMode
    alt: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """What a room receives, in no network's format: a plain-text body and sanitised HTML,
    with what a transport may want besides (the picture, who is addressed). Each transport
    turns it into its network's payload when it sends it."""

    body: str
    html: str
    image: Image | None = None
    # A notice from a bot (clients may show it quieter) rather than a plain message.
    notice: bool = True
    # People addressed by it (a command's answer names who asked); nobody else is pinged.
    mentions: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        # By hand: dataclasses.asdict deep-copies every field, and a poll writes hundreds.
        image = self.image
        return {"body": self.body, "html": self.html,
                "image": None if image is None else
                {"url": image.url, "mode": image.mode, "alt": image.alt},
                "notice": self.notice, "mentions": list(self.mentions)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        image = data.get("image")
        return cls(body=str(data["body"]), html=str(data["html"]),
                   image=Image(str(image["url"]), image["mode"], str(image.get("alt", "")))
                   if isinstance(image, dict) else None,
                   notice=bool(data.get("notice", True)),
                   mentions=tuple(str(m) for m in data.get("mentions", ())))


@dataclass(frozen=True, slots=True)
class Target:
    """Where a delivery goes: a network and an address on it (a room id or alias)."""

    network: Network
    address: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row: a message for one target, claimed by that target's worker."""

    key: str                    # stable id of this delivery, also its transport's idempotency key
    feed: str
    entry_id: str
    room: str                   # the target's address: room reference as configured
    message: Message | None     # None only for rows queued by an older newsbot
    # The transport's own encoding, fixed before the first attempt so that a resend is
    # the very same message (older newsbots stored theirs here from the start).
    payload: dict[str, Any] | None = None
    created_at: float = 0.0
    first_attempt_at: float | None = None
    attempts: int = 0
    kind: DeliveryKind = "item"
    # What it relates to: the feed entry it shows or corrects, the command it answers.
    subject: str | None = None
    failures: int = 0           # unforeseen errors while delivering it
    network: Network = "matrix"

    @property
    def target(self) -> Target:
        return Target(self.network, self.room)


@dataclass(frozen=True, slots=True)
class Sent:
    """A row's message on its network: its id there, and whether it was already there
    (found after a crash, not sent again)."""

    message_id: str
    already_there: bool = False


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What a transport is asked to encode: a row's message, what kind it is, and the
    message it relates to on that network (the event an edit replaces, the command a
    reply answers)."""

    key: str
    kind: DeliveryKind
    message: Message | None
    payload: dict[str, Any] | None = None       # a row's earlier encoding, if any
    relates_to: str | None = None
    room: str = ""                              # the target's address, if known


def delivery_key(feed: str, entry_id: str, room: str) -> str:
    """A short stable id for (feed, entry, room): same inputs, same key, across restarts."""
    digest = hashlib.sha256(f"{feed}\0{entry_id}\0{room}".encode()).hexdigest()
    return digest[:32]
