"""What to post from a parsed feed: a pure decision, no I/O.

Given the entries of a fetch and which of them were never seen, decide which to post and
in which order. Kept pure so every rule (first sight, backfill, floods) is tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.model import Entry

_NO_DATE = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Decision:
    to_post: tuple[Entry, ...]       # oldest first
    to_mark_seen: tuple[str, ...]    # every unseen id of this fetch, posted or not
    skipped: int                     # unseen entries deliberately not posted
    flood: bool                      # more unseen entries than max_per_poll on a known feed


def chronological(entries: tuple[Entry, ...] | list[Entry]) -> list[Entry]:
    """Oldest first. Feeds list newest first, so document order reversed breaks date ties
    and orders undated entries."""
    indexed = list(enumerate(entries))
    total = len(indexed)

    def key(item: tuple[int, Entry]) -> tuple[datetime, int]:
        index, entry = item
        date = entry.published or entry.updated or _NO_DATE
        return (date, total - index)

    dated = all((e.published or e.updated) is not None for e in entries)
    if dated:
        return [e for _, e in sorted(indexed, key=key)]
    return [e for _, e in reversed(indexed)]


# Entries dated after the last successful poll are new for sure (the bot was down, or
# the feed was busy) and are not held to max_per_poll, up to this many times it.
FRESH_ALLOWANCE = 4


def decide(entries: tuple[Entry, ...] | list[Entry], unseen_ids: set[str], *,
           first_sight: bool, backfill: int, max_per_poll: int,
           known_until: datetime | None = None, now: datetime | None = None,
           carried: frozenset[str] = frozenset()) -> Decision:
    """``carried``: entries an earlier poll chose to post but could not render in time;
    they are posted whatever the rules below say of this poll."""
    if carried & unseen_ids:
        owed = [e for e in chronological(entries) if e.entry_id in carried & unseen_ids]
        rest = decide(entries, unseen_ids - carried, first_sight=first_sight,
                      backfill=backfill, max_per_poll=max_per_poll, known_until=known_until,
                      now=now)
        chosen_ids = {e.entry_id for e in owed} | {e.entry_id for e in rest.to_post}
        return Decision(tuple(e for e in chronological(entries) if e.entry_id in chosen_ids),
                        tuple(e.entry_id for e in owed) + rest.to_mark_seen, rest.skipped,
                        rest.flood)
    unseen = [e for e in chronological(entries) if e.entry_id in unseen_ids]
    mark = tuple(e.entry_id for e in unseen)
    if first_sight:
        chosen = unseen[-backfill:] if backfill > 0 else []
        return Decision(tuple(chosen), mark, len(unseen) - len(chosen), flood=False)
    if len(unseen) <= max_per_poll:
        return Decision(tuple(unseen), mark, 0, flood=False)
    # A feed that rewrote its ids looks like a flood of "new" items with old dates: post
    # only the newest few, never the whole archive again. Items dated after the last
    # successful poll are genuinely new and are kept, within a generous ceiling.
    fresh = 0
    if known_until is not None:
        # A date in the future is a broken date, not a sign of a fresh item.
        latest = (now or datetime.now(UTC)) + timedelta(days=1)
        fresh = sum(1 for e in unseen
                    if known_until < (e.published or e.updated or _NO_DATE) <= latest)
    limit = max(max_per_poll, min(fresh, max_per_poll * FRESH_ALLOWANCE))
    chosen = unseen[-limit:]
    return Decision(tuple(chosen), mark, len(unseen) - len(chosen),
                    flood=len(chosen) < len(unseen))

