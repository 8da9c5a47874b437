from bot.store.sqlite import (
    Correction,
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

__all__ = ["Correction", "DigestItem", "FeedState", "MediaRow", "NewDelivery", "PollOutcome",
           "RecentEntry", "RoomFeed", "RoomFeedSettings", "Store", "Subscriber"]
