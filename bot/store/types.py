"""The store's value types: what its methods take and give, whatever the database."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.model import DeliveryKind, Message, Network, network_of

# The newest entries kept per feed (for `latest`, topics and welcomes).
RECENT_PER_FEED = 20


@dataclass(frozen=True, slots=True)
class FeedState:
    name: str
    url: str
    configured_url: str
    etag: str | None
    last_modified: str | None
    body_hash: str | None
    initialized: bool
    disabled: str | None
    title: str | None
    last_fetch: float | None
    last_success: float | None
    last_error: str | None
    failures: int
    next_fetch: float | None
    # What the feed last asked about its polling, JSON (bot.feeds.hints); None: not read.
    hints: str | None = None


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """An outbox row to add: a message for one target, in no network's format."""

    entry_id: str                 # the row's id in its feed: the entry id, "<id>#image"...
    room: str                     # the target's address
    message: Message
    kind: DeliveryKind = "item"
    # What it relates to: the feed entry it shows or corrects (items: entry_id), the
    # command it answers.
    subject: str | None = None
    # For a personal subscriber's copy: who. Queued only if they still follow the feed
    # in that conversation when the poll commits (not if they left or were forgotten).
    subscriber: str | None = None
    network: Network = "matrix"

    def __post_init__(self) -> None:
        # The address says the network (bot.model.network_of): an xmpp: room is on XMPP.
        if self.network != network_of(self.room):
            object.__setattr__(self, "network", network_of(self.room))


@dataclass(frozen=True, slots=True)
class Correction:
    """A posted entry's new version for one room: replaces the pending message if no send
    was attempted yet, else becomes an edit of it (``edit``, whose target event is looked
    up when it is sent: the outbox sends a room's rows in order, so the original is sent
    or refused by then)."""

    entry_id: str
    room: str
    message: Message              # the new version, as the original would show it
    edit: NewDelivery | None      # None: past max_edits, posted messages stay as they are


@dataclass(frozen=True, slots=True)
class RecentEntry:
    feed: str
    entry_id: str
    title: str
    link: str | None
    published: float | None


@dataclass(frozen=True, slots=True)
class RoomFeed:
    """A feed a moderator added to a room by command."""

    name: str
    url: str
    room: str
    interval: float
    added_by: str
    added_at: float


@dataclass(frozen=True, slots=True)
class RoomFeedSettings:
    paused: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Subscriber:
    user_id: str
    dm_room: str
    digest: str                  # off | daily | weekly
    language: str | None
    digest_due: float | None
    feeds: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DigestItem:
    user_id: str
    feed: str
    entry_id: str
    title: str
    link: str | None
    published: float | None


@dataclass(frozen=True, slots=True)
class MediaRow:
    """An image fetched once: its mxc URI, or None when it is not one to show."""

    url: str
    mxc: str | None
    mimetype: str | None
    size: int | None
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """Everything a successful poll changes, written in one transaction."""

    feed: str
    now: float
    next_fetch: float
    etag: str | None
    last_modified: str | None
    body_hash: str | None
    title: str | None
    new_url: str | None              # set after a permanent redirect
    seen_entry_ids: Sequence[str]
    deliveries: Sequence[NewDelivery]
    recent: Sequence[RecentEntry] = ()
    fingerprints: Sequence[tuple[str, str]] = ()     # (entry id, fingerprint) of posted ones
    digest: Sequence[DigestItem] = ()                 # for subscribers' next digests
    # Posted entries that changed: their new fingerprints (recorded whether an edit is
    # sent or not), and the corrections to apply.
    changed: Sequence[tuple[str, str]] = ()
    corrections: Sequence[Correction] = ()
    # Entries chosen for posting that this poll could not render in time: owed to the
    # next poll (None: leave what is stored).
    carried: Sequence[str] | None = None
    # What the feed asks about its polling, JSON (bot.feeds.hints); None: leave it.
    hints: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds a lease (a feed's polling, the leadership) until when."""

    name: str
    owner: str
    until: float
