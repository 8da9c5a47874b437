from bot.store.sqlite import (
    FeedState,
    MediaRow,
    NewDelivery,
    PollOutcome,
    RecentEntry,
    RoomFeed,
    RoomFeedSettings,
    Store,
)

__all__ = ["FeedState", "MediaRow", "NewDelivery", "PollOutcome", "RecentEntry", "RoomFeed",
           "RoomFeedSettings", "Store"]
