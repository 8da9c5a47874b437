from bot.store.sqlite import FeedState, NewDelivery, PollOutcome, Store

__all__ = ["FeedState", "NewDelivery", "PollOutcome", "Store"]
