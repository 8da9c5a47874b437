"""One way to build a feed's poller in tests: the real FeedPoller on a store and a
fetcher, with the defaults a test rarely changes."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from bot.clock import Clock, SystemClock
from bot.config import FeedConfig, FetchConfig
from bot.feeds.fetch import Fetcher
from bot.poller import FeedPoller
from bot.store import Store


def feed_poller(feed: FeedConfig, store: Store, fetcher: Fetcher, *,
                clock: Clock | None = None, language: str = "fr",
                fetch_config: FetchConfig | None = None,
                on_enqueued: Callable[[list[str]], None] | None = None,
                seed: int = 0,
                **options: Any) -> FeedPoller:
    return FeedPoller(feed, store=store, fetcher=fetcher, clock=clock or SystemClock(),
                      fetch_config=fetch_config or FetchConfig(), language=language,
                      on_enqueued=on_enqueued or (lambda _rooms: None),
                      rng=random.Random(seed), **options)
