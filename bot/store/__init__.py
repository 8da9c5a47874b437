"""The bot's state: value types (types), the protocol the bot asks of a store (base), and
its implementations: SQLite (sqlite), PostgreSQL (postgres, loaded only when used)."""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from bot.config import StorageConfig


async def open_store(storage: StorageConfig) -> Store:
    """The state the configuration names: PostgreSQL at ``storage.url`` (shared by
    several instances), or SQLite in ``storage.path``."""
    if storage.url is None:
        return SqliteStore.open(storage.path)
    # asyncpg is loaded only by a bot whose state is in PostgreSQL.
    from bot.store.postgres import PostgresStore
    return await PostgresStore.open(storage.url)


__all__ = ["RECENT_PER_FEED", "Correction", "DigestItem", "FeedState", "FeedStore",
           "KeyValueStore", "Lease", "LeaseStore", "MediaRow", "NewDelivery", "OutboxStore",
           "PollOutcome", "RecentEntry", "RoomFeed", "RoomFeedSettings", "SqliteStore", "Store",
           "Subscriber", "SubscriptionStore", "open_store"]
