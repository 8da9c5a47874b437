from bot.store.sqlite import (
    DigestItem,
    FeedState,
    MediaRow,
    NewDelivery,
    PollOutcome,
    RecentEntry,
    RoomFeed,
    RoomFeedSettings,
    Store,
    Subscriber,
)

__all__ = ["DigestItem", "FeedState", "MediaRow", "NewDelivery", "PollOutcome", "RecentEntry",
           "RoomFeed", "RoomFeedSettings", "Store", "Subscriber"]
