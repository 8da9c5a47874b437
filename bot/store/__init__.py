from bot.store.sqlite import (
    FeedState,
    NewDelivery,
    PollOutcome,
    RecentEntry,
    RoomFeed,
    RoomFeedSettings,
    Store,
)

__all__ = ["FeedState", "NewDelivery", "PollOutcome", "RecentEntry", "RoomFeed",
           "RoomFeedSettings", "Store"]
