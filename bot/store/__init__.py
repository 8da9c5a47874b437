"""The bot's state: value types (types), the protocol the bot asks of a store (base), and
its SQLite implementation (sqlite)."""

from bot.store.base import (
    FeedStore,
    KeyValueStore,
    LeaseStore,
    OutboxStore,
    Store,
    SubscriptionStore,
)
from bot.store.sqlite import SqliteStore
from bot.store.types import (
    RECENT_PER_FEED,
    Correction,
    DigestItem,
    FeedState,
    Lease,
    MediaRow,
    NewDelivery,
    PollOutcome,
    RecentEntry,
    RoomFeed,
    RoomFeedSettings,
    Subscriber,
)

__all__ = ["RECENT_PER_FEED", "Correction", "DigestItem", "FeedState", "FeedStore",
           "KeyValueStore", "Lease", "LeaseStore", "MediaRow", "NewDelivery", "OutboxStore",
           "PollOutcome", "RecentEntry", "RoomFeed", "RoomFeedSettings", "SqliteStore", "Store",
           "Subscriber", "SubscriptionStore"]
