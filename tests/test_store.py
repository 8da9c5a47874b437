import sqlite3
from pathlib import Path

import pytest

from bot.errors import StorageError
from bot.model import Image, Message, Target, delivery_key
from bot.store import NewDelivery, PollOutcome, SqliteStore
from bot.store.schema import SCHEMA_VERSION
from bot.store.sqlite import DB_FILENAME


def outcome(feed: str, entries: list[str], rooms: list[str], *, now: float = 100.0,
            etag: str | None = "e1") -> PollOutcome:
    return PollOutcome(
        feed=feed, now=now, next_fetch=now + 60, etag=etag, last_modified=None,
        body_hash="h", title="T", new_url=None, seen_entry_ids=entries,
        deliveries=[NewDelivery(e, r, Message(e, r)) for e in entries for r in rooms])


def test_schema_version_and_wal(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


async def test_poll_is_recorded_atomically_and_survives_reopen(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("news", "http://a/feed")
    rooms = await store.record_poll(outcome("news", ["a", "b"], ["!r1:x", "!r2:x"]))
    assert rooms == ["!r1:x", "!r2:x"]
    store.close()

    store = SqliteStore.open(tmp_path)
    state = await store.feed_state("news")
    assert state is not None and state.initialized and state.etag == "e1"
    assert await store.unseen("news", ["a", "b", "c"]) == {"c"}
    first = await store.next_pending("!r1:x")
    assert first is not None and first.entry_id == "a"
    assert first.key == delivery_key("news", "a", "!r1:x")
    assert await store.pending_count() == 4


async def test_outbox_is_ordered_and_sent_items_leave_it(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("news", "http://a/feed")
    await store.record_poll(outcome("news", ["a", "b"], ["!r:x"]))
    await store.record_poll(outcome("news", ["c"], ["!r:x"], now=200))
    order = []
    while (d := await store.next_pending("!r:x")) is not None:
        await store.mark_attempt(d.key, 300)
        await store.mark_sent(d.key, f"$ev{d.entry_id}", 301)
        order.append(d.entry_id)
    assert order == ["a", "b", "c"]
    assert await store.pending_count() == 0


async def test_same_delivery_enqueued_twice_is_one_row(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("news", "http://a/feed")
    await store.record_poll(outcome("news", ["a"], ["!r:x"]))
    assert await store.record_poll(outcome("news", ["a"], ["!r:x"])) == []
    assert await store.pending_count() == 1


async def test_attempt_is_remembered(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("news", "http://a/feed")
    await store.record_poll(outcome("news", ["a"], ["!r:x"]))
    d = await store.next_pending("!r:x")
    assert d is not None
    await store.mark_attempt(d.key, 500.0)
    await store.mark_attempt(d.key, 900.0)
    again = await store.next_pending("!r:x")
    assert again is not None and again.first_attempt_at == 500.0 and again.attempts == 2


async def test_changed_url_keeps_seen_entries_and_drops_validators(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("news", "http://old/feed")
    await store.record_poll(outcome("news", ["a"], []))
    state = await store.ensure_feed("news", "http://new/feed")
    assert state.url == "http://new/feed" and state.etag is None
    assert await store.unseen("news", ["a"]) == set()


async def test_failed_write_leaves_nothing_half_done(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("news", "http://a/feed")
    bad = outcome("news", ["a", "b"], ["!r:x"])
    unwritable = Message("z", "z", mentions=({1},))     # type: ignore[arg-type]
    object.__setattr__(bad, "deliveries", [*bad.deliveries, NewDelivery("z", "!r:x", unwritable)])
    with pytest.raises(TypeError):
        await store.record_poll(bad)
    assert await store.unseen("news", ["a", "b"]) == {"a", "b"}
    assert await store.pending_count() == 0


def test_corrupt_database_refuses_to_start_with_advice(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StorageError, match="restore it from a backup"):
        SqliteStore.open(tmp_path)
    # Nothing was reset behind the user's back.
    assert (tmp_path / DB_FILENAME).read_bytes().startswith(b"this is not sqlite")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StorageError, match="upgrade newsbot"):
        SqliteStore.open(tmp_path)


async def test_kv_roundtrip(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.put("k", "1")
    await store.put("k", "2")
    assert await store.get("k") == "2"
    assert await store.get("missing") is None


async def test_a_version_1_database_is_migrated_keeping_its_data(tmp_path: Path) -> None:
    from bot.store.schema import MIGRATIONS
    from bot.store.sqlite import _split_statements
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    for statement in _split_statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("INSERT INTO feed_state (name, url, configured_url) VALUES ('n', 'u', 'u')")
    conn.execute("INSERT INTO seen VALUES ('n', 'e1', 1.0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SqliteStore.open(tmp_path)
    state = await store.feed_state("n")
    assert state is not None and state.disabled is None
    assert await store.unseen("n", ["e1", "e2"]) == {"e2"}


async def test_disabling_a_feed_queues_its_notices_once(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("news", "http://a/feed")
    notice = [NewDelivery("gone", "!r:x", Message("gone", "gone"))]
    assert await store.disable_feed("news", "410", now=1.0, notices=notice) == ["!r:x"]
    assert await store.disable_feed("news", "410", now=2.0, notices=notice) == []
    state = await store.feed_state("news")
    assert state is not None and state.disabled == "410"
    # A new URL in the config brings the feed back with a clean record.
    state = await store.ensure_feed("news", "http://b/feed")
    assert state.disabled is None and state.failures == 0


async def test_full_storage_is_a_clear_error_and_leaves_nothing_half_written(
        tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("news", "http://a/feed")
    # A database that cannot grow any more behaves like a full disk.
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    big = Message("x" * 200_000, "")
    with pytest.raises(StorageError, match="free some disk space"):
        await store.record_poll(PollOutcome(
            feed="news", now=1.0, next_fetch=2.0, etag="e", last_modified=None,
            body_hash=None, title=None, new_url=None, seen_entry_ids=["a"],
            deliveries=[NewDelivery("a", "!r:x", big)]))
    assert await store.unseen("news", ["a"]) == {"a"}
    assert await store.pending_count() == 0
    state = await store.feed_state("news")
    assert state is not None and state.etag is None


async def test_read_only_storage_is_a_clear_error(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path).close()
    conn = sqlite3.connect(f"file:{tmp_path / DB_FILENAME}?mode=ro", uri=True,
                           isolation_level=None)
    store = SqliteStore(conn, tmp_path / DB_FILENAME)
    with pytest.raises(StorageError, match="must be writable"):
        await store.ensure_feed("news", "http://a/feed")


async def test_old_media_rows_are_forgotten(tmp_path: Path) -> None:
    from bot.store import MediaRow
    store = SqliteStore.open(tmp_path)
    await store.put_media(MediaRow("http://a/old.png", "mxc://x/1", "image/png", 10, 20, 20), 100.0)
    await store.put_media(MediaRow("http://a/new.png", "mxc://x/2", "image/png", 10, 20, 20), 900.0)
    assert await store.prune_media(500.0) == 1
    assert await store.media("http://a/old.png") is None
    assert await store.media("http://a/new.png") is not None


async def test_an_answer_goes_first_but_never_between_an_item_and_its_picture(
        tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("news", "http://a/feed")
    picture = Message("a", "", image=Image("https://a/a.png", "separate", "a"))
    await store.record_poll(PollOutcome(
        feed="news", now=1.0, next_fetch=2.0, etag=None, last_modified=None, body_hash=None,
        title=None, new_url=None, seen_entry_ids=["a", "b"],
        deliveries=[NewDelivery("a", "!r:x", Message("a", "a")),
                    NewDelivery("a#image", "!r:x", picture, kind="image", subject="a"),
                    NewDelivery("b", "!r:x", Message("b", "b"))]))

    async def answer(command: str) -> None:
        await store.enqueue("newsbot:replies", [NewDelivery(
            f"reply:{command}", "!r:x", Message("ok", "ok"), kind="reply",
            subject=command)], 3.0)

    async def send_next() -> str:
        row = await store.claim_next(Target("matrix", "!r:x"), owner="local", now=4.0,
                                     lease=60)
        assert row is not None
        await store.mark_sent(row.key, f"${row.entry_id}", 5.0)
        return row.entry_id

    await answer("$1")
    assert [await send_next() for _ in range(2)] == ["reply:$1", "a"]
    await answer("$2")          # the item's picture is next: the answer waits for it
    assert [await send_next() for _ in range(3)] == ["a#image", "reply:$2", "b"]
    assert await store.claim_next(Target("matrix", "!r:x"), owner="local", now=6.0,
                                  lease=60) is None
    store.close()


async def test_a_lease_is_held_by_one_owner_until_it_lapses(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    assert await store.take_lease("feed:news", "a", now=100.0, duration=30.0)
    assert not await store.take_lease("feed:news", "b", now=110.0, duration=30.0)
    assert await store.take_lease("feed:news", "a", now=120.0, duration=30.0)   # renewed
    assert not await store.take_lease("feed:news", "b", now=140.0, duration=30.0)
    assert [(le.name, le.owner, le.until) for le in await store.leases(140.0)] == \
        [("feed:news", "a", 150.0)]
    assert await store.take_lease("feed:news", "b", now=150.0, duration=30.0)   # lapsed
    assert not await store.take_lease("feed:news", "a", now=151.0, duration=30.0)
    await store.release_lease("feed:news", "a")          # not a's: nothing changes
    assert [le.owner for le in await store.leases(151.0)] == ["b"]
    await store.release_lease("feed:news", "b")
    assert await store.leases(151.0) == []
    assert await store.take_lease("feed:news", "a", now=152.0, duration=30.0)
    store.close()


async def test_an_event_is_taken_once_by_anyone(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    assert await store.take_once("command:$e1", "a", 100.0)
    assert not await store.take_once("command:$e1", "b", 101.0)
    assert not await store.take_once("command:$e1", "a", 102.0)
    assert await store.take_once("command:$e2", "b", 200.0)
    assert await store.prune_taken(150.0) == 1
    assert not await store.take_once("command:$e2", "a", 201.0)
    store.close()


async def test_an_attempt_needs_a_live_claim_of_its_owner(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    await store.ensure_feed("news", "http://a/feed")
    await store.record_poll(outcome("news", ["a"], ["!r:x"]))
    target = Target("matrix", "!r:x")
    d = await store.claim_next(target, owner="a", now=100.0, lease=10.0)
    assert d is not None
    assert await store.claim_next(target, owner="b", now=105.0, lease=10.0) is None
    # a's attempt renews its claim: b still cannot take it after the first lease.
    assert await store.mark_attempt(d.key, 108.0, owner="a", lease=10.0)
    assert await store.claim_next(target, owner="b", now=112.0, lease=10.0) is None
    # a froze past its claim; b takes the row over, and a's late attempt is refused.
    taken = await store.claim_next(target, owner="b", now=119.0, lease=10.0)
    assert taken is not None and taken.key == d.key and taken.attempts == 1
    assert not await store.mark_attempt(d.key, 120.0, owner="a", lease=10.0)
    assert await store.mark_attempt(d.key, 120.0, owner="b", lease=10.0)
    again = await store.next_pending("!r:x")
    assert again is not None and again.attempts == 2
    store.close()
