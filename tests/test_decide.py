from datetime import UTC, datetime, timedelta

from bot.feeds.decide import chronological, decide
from bot.model import Entry


def entry(n: int, *, dated: bool = True) -> Entry:
    published = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=n) if dated else None
    return Entry(entry_id=f"id{n}", title=f"t{n}", link=None, summary_html="",
                 content_html="", published=published)


def newest_first(count: int, *, dated: bool = True) -> list[Entry]:
    return [entry(n, dated=dated) for n in reversed(range(count))]


def ids(entries: tuple[Entry, ...] | list[Entry]) -> list[str]:
    return [e.entry_id for e in entries]


def test_chronological_by_date_even_when_document_order_is_mixed() -> None:
    mixed = [entry(2), entry(0), entry(3), entry(1)]
    assert ids(chronological(mixed)) == ["id0", "id1", "id2", "id3"]


def test_chronological_without_dates_reverses_document_order() -> None:
    assert ids(chronological(newest_first(3, dated=False))) == ["id0", "id1", "id2"]


def test_first_sight_marks_everything_and_posts_backfill_oldest_first() -> None:
    entries = newest_first(10)
    decision = decide(entries, {e.entry_id for e in entries}, first_sight=True,
                      backfill=3, max_per_poll=5)
    assert ids(decision.to_post) == ["id7", "id8", "id9"]
    assert sorted(decision.to_mark_seen) == sorted(ids(entries))
    assert decision.skipped == 7


def test_first_sight_without_backfill_posts_nothing() -> None:
    entries = newest_first(4)
    decision = decide(entries, {e.entry_id for e in entries}, first_sight=True,
                      backfill=0, max_per_poll=5)
    assert decision.to_post == ()
    assert len(decision.to_mark_seen) == 4


def test_known_feed_posts_only_unseen_oldest_first() -> None:
    entries = newest_first(6)
    decision = decide(entries, {"id5", "id4"}, first_sight=False, backfill=0, max_per_poll=5)
    assert ids(decision.to_post) == ["id4", "id5"]
    assert not decision.flood


def test_flood_is_capped_to_the_newest_and_flagged() -> None:
    entries = newest_first(20)
    decision = decide(entries, {e.entry_id for e in entries}, first_sight=False,
                      backfill=0, max_per_poll=5)
    assert decision.flood
    assert ids(decision.to_post) == ["id15", "id16", "id17", "id18", "id19"]
    assert len(decision.to_mark_seen) == 20
    assert decision.skipped == 15


def test_entries_dated_after_the_last_poll_are_not_capped() -> None:
    """The bot was down while 8 issues appeared: all 8 are new for sure."""
    entries = newest_first(20)
    last_poll = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=11, hours=12)
    unseen = {f"id{n}" for n in range(12, 20)}
    decision = decide(entries, unseen, first_sight=False, backfill=0, max_per_poll=5,
                      known_until=last_poll)
    assert ids(decision.to_post) == [f"id{n}" for n in range(12, 20)]
    assert not decision.flood


def test_fresh_allowance_has_a_ceiling() -> None:
    entries = newest_first(100)
    unseen = {e.entry_id for e in entries}
    decision = decide(entries, unseen, first_sight=False, backfill=0, max_per_poll=5,
                      known_until=datetime(2000, 1, 1, tzinfo=UTC))
    assert len(decision.to_post) == 20
    assert decision.flood


def test_far_future_dates_do_not_count_as_fresh() -> None:
    future = [Entry(entry_id=f"f{n}", title="t", link=None, summary_html="", content_html="",
                    published=datetime(2999, 1, 1, tzinfo=UTC) + timedelta(days=n))
              for n in range(30)]
    decision = decide(future, {e.entry_id for e in future}, first_sight=False, backfill=0,
                      max_per_poll=5, known_until=datetime(2025, 1, 1, tzinfo=UTC),
                      now=datetime(2026, 1, 1, tzinfo=UTC))
    assert len(decision.to_post) == 5
