"""Reading a feed once: a conditional fetch, an unchanged body recognised without parsing,
the entries parsed, their ids bounded, and sorted into new and known.

The result (a ``PollResult``) names no room and no network: deciding what to post
(bot.feeds.decide) and planning the rows (bot.plan) come after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

from bot.feeds.fetch import Fetcher, FetchResult
from bot.feeds.hints import FeedHints, http_freshness
from bot.feeds.parse import parse_feed_async
from bot.model import Entry

# Longer entry ids are stored as their hash.
MAX_ID_BYTES = 256

# The ids, of those given, that the feed never had.
Unseen = Callable[[Iterable[str]], Awaitable[set[str]]]


# Not frozen, as FetchResult: made at every poll, never changed.
@dataclass(slots=True)
class Validators:
    """What lets the next poll of an unchanged feed cost one conditional request and no
    parsing."""

    etag: str | None
    last_modified: str | None
    body_hash: str | None           # None after a 304: there was no body


@dataclass(slots=True)      # not frozen, as Validators
class PollResult:
    """One poll of a feed: its validators, and (unless the body was unchanged) its
    entries sorted into new ones and known ones."""

    validators: Validators
    moved_to: str | None            # the address a permanent redirect gave, if any
    unchanged: bool                 # a 304, or the same body as last time: nothing parsed
    title: str | None = None
    entries: tuple[Entry, ...] = ()     # every entry of the body, in document order
    new: frozenset[str] = frozenset()   # ids the feed never had: the decision's choice
    # Known entries (the others) are compared with what was posted, for corrections.
    # Entries first seen under their whole long id, before ids were bounded: known.
    seen_unbounded: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()
    # How long the server asked us not to come back (Cache-Control max-age, Expires), and
    # everything the feed asks about its polling when its body was read (None: unchanged,
    # the last known hints still hold).
    max_age: float | None = None
    hints: FeedHints | None = None


def stable_ids(entries: tuple[Entry, ...]) -> tuple[tuple[Entry, ...], dict[str, str]]:
    """Entries whose id is over ``MAX_ID_BYTES`` get a hash of it instead: a feed must not
    grow the database by the size of its ids. Returns the entries and, for those
    changed, hashed id -> the whole id (which older versions stored)."""
    legacy: dict[str, str] = {}
    bounded = []
    for entry in entries:
        encoded = entry.entry_id.encode("utf-8", "surrogatepass")
        if len(encoded) > MAX_ID_BYTES:
            hashed = "sha256:" + hashlib.sha256(encoded).hexdigest()
            legacy[hashed] = entry.entry_id
            entry = replace(entry, entry_id=hashed)
        bounded.append(entry)
    return tuple(bounded), legacy


async def read_feed(fetcher: Fetcher, url: str, *, etag: str | None,
                    last_modified: str | None, body_hash: str | None, initialized: bool,
                    unseen: Unseen, fetched: FetchResult | None = None) -> PollResult:
    """Poll ``url`` once (or read ``fetched``, a body already fetched). ``etag``,
    ``last_modified`` and ``body_hash`` are what the last successful poll kept."""
    result = fetched or await fetcher.fetch(url, etag=etag, last_modified=last_modified)
    problems: list[str] = []
    max_age = None
    if result.caching:      # most 304s have none of these headers
        caching = dict(result.caching)
        max_age = http_freshness(caching.get("Cache-Control"), caching.get("Expires"),
                                 caching.get("Date"), caching.get("Age"), problems)
    if result.status == 304 or result.body is None:
        return PollResult(Validators(result.etag, result.last_modified, None),
                          result.permanent_url, unchanged=True, max_age=max_age)
    new_hash = hashlib.sha256(result.body).hexdigest()
    validators = Validators(result.etag, result.last_modified, new_hash)
    if new_hash == body_hash and initialized:
        return PollResult(validators, result.permanent_url, unchanged=True, max_age=max_age)
    parsed = await parse_feed_async(result.body, content_type=result.content_type,
                                    url=result.final_url)
    entries, legacy = stable_ids(parsed.entries)
    new = await unseen(e.entry_id for e in entries)
    # Entries first seen under their whole long id (before ids were bounded).
    already = set(legacy) & new
    if already:
        already -= await unseen(legacy[i] for i in already)
        new -= already
    return PollResult(validators, result.permanent_url, unchanged=False,
                      title=parsed.title or None, entries=entries, new=frozenset(new),
                      seen_unbounded=frozenset(already),
                      warnings=parsed.warnings + tuple(problems), max_age=max_age,
                      hints=replace(parsed.hints, max_age=max_age))
