"""The store's behaviour, on SQLite and on PostgreSQL (``open_store``), and what is
particular to each: SQLite's file, PostgreSQL's server and several instances on it."""

import asyncio
import contextlib
import sqlite3
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from bot.errors import StorageError
from bot.model import Image, Message, Target, delivery_key
from bot.store import (
    RECENT_PER_FEED,
    Correction,
    DigestItem,
    MediaRow,
    NewDelivery,
    PollOutcome,
    RecentEntry,
    RoomFeed,
    RoomFeedSettings,
    SqliteStore,
    Store,
    Subscriber,
)
from bot.store.postgres import PostgresStore
from bot.store.schema import SCHEMA_VERSION
from bot.store.schema_pg import MIGRATIONS_PG
from bot.store.sqlite import DB_FILENAME, MAX_STORED_TITLE, WRITE_BEHIND_MAX, _split_statements
from tests.support import free_port
from tests.support.postgres import PostgresServer, StoreOpener, row_of


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


async def test_poll_is_recorded_atomically_and_survives_reopen(open_store: StoreOpener) -> None:
    store = await open_store()
    await store.ensure_feed("news", "http://a/feed")
    rooms = await store.record_poll(outcome("news", ["a", "b"], ["!r1:x", "!r2:x"]))
    assert rooms == ["!r1:x", "!r2:x"]
    store.close()

    store = await open_store()
    state = await store.feed_state("news")
    assert state is not None and state.initialized and state.etag == "e1"
    assert await store.unseen("news", ["a", "b", "c"]) == {"c"}
    first = await store.next_pending("!r1:x")
    assert first is not None and first.entry_id == "a"
    assert first.key == delivery_key("news", "a", "!r1:x")
    assert await store.pending_count() == 4


async def test_outbox_is_ordered_and_sent_items_leave_it(open_store: StoreOpener) -> None:
    store = await open_store()
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


async def test_same_delivery_enqueued_twice_is_one_row(open_store: StoreOpener) -> None:
    store = await open_store()
    await store.ensure_feed("news", "http://a/feed")
    await store.record_poll(outcome("news", ["a"], ["!r:x"]))
    assert await store.record_poll(outcome("news", ["a"], ["!r:x"])) == []
    assert await store.pending_count() == 1


async def test_attempt_is_remembered(open_store: StoreOpener) -> None:
    store = await open_store()
    await store.ensure_feed("news", "http://a/feed")
    await store.record_poll(outcome("news", ["a"], ["!r:x"]))
    d = await store.next_pending("!r:x")
    assert d is not None
    await store.mark_attempt(d.key, 500.0)
    await store.mark_attempt(d.key, 900.0)
    again = await store.next_pending("!r:x")
    assert again is not None and again.first_attempt_at == 500.0 and again.attempts == 2


async def test_changed_url_keeps_seen_entries_and_drops_validators(open_store: StoreOpener) -> None:
    store = await open_store()
    await store.ensure_feed("news", "http://old/feed")
    await store.record_poll(outcome("news", ["a"], []))
    state = await store.ensure_feed("news", "http://new/feed")
    assert state.url == "http://new/feed" and state.etag is None
    assert await store.unseen("news", ["a"]) == set()


async def test_failed_write_leaves_nothing_half_done(open_store: StoreOpener) -> None:
    store = await open_store()
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


async def test_kv_roundtrip(open_store: StoreOpener) -> None:
    store = await open_store()
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


async def test_disabling_a_feed_queues_its_notices_once(open_store: StoreOpener) -> None:
    store = await open_store()
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


async def test_old_media_rows_are_forgotten(open_store: StoreOpener) -> None:
    from bot.store import MediaRow
    store = await open_store()
    await store.put_media(MediaRow("http://a/old.png", "mxc://x/1", "image/png", 10, 20, 20), 100.0)
    await store.put_media(MediaRow("http://a/new.png", "mxc://x/2", "image/png", 10, 20, 20), 900.0)
    assert await store.prune_media(500.0) == 1
    assert await store.media("http://a/old.png") is None
    assert await store.media("http://a/new.png") is not None


async def test_an_answer_goes_first_but_never_between_an_item_and_its_picture(
        open_store: StoreOpener) -> None:
    store = await open_store()
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


async def test_a_lease_is_held_by_one_owner_until_it_lapses(open_store: StoreOpener) -> None:
    store = await open_store()
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


async def test_an_event_is_taken_once_by_anyone(open_store: StoreOpener) -> None:
    store = await open_store()
    assert await store.take_once("command:$e1", "a", 100.0)
    assert not await store.take_once("command:$e1", "b", 101.0)
    assert not await store.take_once("command:$e1", "a", 102.0)
    assert await store.take_once("command:$e2", "b", 200.0)
    assert await store.prune_taken(150.0) == 1
    assert not await store.take_once("command:$e2", "a", 201.0)
    store.close()


async def test_an_attempt_needs_a_live_claim_of_its_owner(open_store: StoreOpener) -> None:
    store = await open_store()
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


# -- both stores: the same schema ------------------------------------------------------


async def test_both_stores_migrate_to_the_same_tables_and_columns(
        tmp_path: Path, postgres: PostgresServer) -> None:
    # `storage migrate` copies rows table by table and checks both are at one version.
    SqliteStore.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    in_sqlite = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
    conn.close()
    store = await PostgresStore.open(await postgres.new_database())
    try:
        assert await store.schema_version() == SCHEMA_VERSION
        async with store._pool.acquire() as c:
            rows = await c.fetch("SELECT table_name, column_name FROM information_schema.columns "
                                 "WHERE table_schema = 'public' AND table_name != 'schema_version'")
    finally:
        await store.aclose()
    in_postgres: dict[str, set[str]] = {}
    for table, column in rows:
        in_postgres.setdefault(table, set()).add(column)
    assert in_postgres == in_sqlite


# -- PostgreSQL: its server ------------------------------------------------------------


async def test_postgres_newer_schema_is_refused(postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    store = await PostgresStore.open(url)
    async with store._pool.acquire() as c:
        await c.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION + 1)
    await store.aclose()
    with pytest.raises(StorageError, match="upgrade newsbot"):
        await PostgresStore.open(url)


async def test_postgres_two_instances_starting_at_once_migrate_once(
        postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(3)))
    for store in stores:
        assert await store.schema_version() == SCHEMA_VERSION
        await store.aclose()


async def test_a_version_1_postgres_database_is_migrated_keeping_its_data(
        postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    conn = await asyncpg.connect(url)
    for statement in _split_statements(MIGRATIONS_PG[0]):
        await conn.execute(statement)
    await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL); "
                       "INSERT INTO schema_version VALUES (1); "
                       "INSERT INTO feed_state (name, url, configured_url) VALUES ('n', 'u', 'u'); "
                       "INSERT INTO seen VALUES ('n', 'e1', 1.0); "
                       "INSERT INTO outbox (key, feed, entry_id, room, content, created_at) "
                       "VALUES ('k', 'n', 'e1', '!r:x', '{\"body\": \"hi\"}', 1.0)")
    await conn.close()
    store = await PostgresStore.open(url)
    state = await store.feed_state("n")
    assert state is not None and state.disabled is None
    assert await store.unseen("n", ["e1", "e2"]) == {"e2"}
    old = await store.next_pending("!r:x")
    assert old is not None and old.payload == {"body": "hi"} and old.message is None
    assert old.network == "matrix" and old.kind == "item" and old.subject == "e1"
    # The identity goes on after the old rows: a new row comes after them.
    await store.enqueue("n", [NewDelivery("e2", "!r:x", Message("e2", "e2"))], 2.0)
    assert (await store.claim_next(Target("matrix", "!r:x"), owner="a", now=3.0,
                                   lease=60)).key == "k"  # type: ignore[union-attr]
    await store.aclose()


async def test_an_unreachable_postgres_is_a_clear_error_without_the_password(
        postgres: PostgresServer) -> None:
    with pytest.raises(StorageError) as refused:
        await PostgresStore.open(f"postgresql://newsbot:s3cr%21t@127.0.0.1:{free_port()}/db")
    text = str(refused.value)
    assert "server runs" in text and "newsbot:***@127.0.0.1" in text
    assert "s3cr" not in text and refused.value.__cause__ is None
    # A database that does not exist, on a server that does.
    url = postgres.url("missing").replace("newsbot@", "newsbot:s3cr%21t@")
    with pytest.raises(StorageError, match="create the database") as refused:
        await PostgresStore.open(url)
    assert "s3cr" not in str(refused.value)
    with pytest.raises(StorageError, match="storage.url must read") as refused:
        await PostgresStore.open("postgresql://newsbot:s3cr%21t@127.0.0.1:notaport/db")
    assert "s3cr" not in str(refused.value)


async def test_a_read_only_postgres_is_a_clear_error(postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    first = await PostgresStore.open(url)
    async with first._pool.acquire() as c:
        await c.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} "
                        "SET default_transaction_read_only = on")
    await first.aclose()
    store = await PostgresStore.open(url)     # nothing to migrate: reads work
    with pytest.raises(StorageError, match="must point at the primary"):
        await store.ensure_feed("news", "http://a/feed")
    await store.aclose()


class _Relay:
    """A TCP relay to the database that can be cut (the server gone, connections lost)
    and restored on the same port."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_lost_database_server_is_a_storage_error_until_it_is_back(
        postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    relay = _Relay(postgres.port)
    await relay.start()
    store = await PostgresStore.open(url.replace(f":{postgres.port}/", f":{relay.port}/"))
    await store.put("k", "1")
    await relay.cut()
    with pytest.raises(StorageError, match="cannot be reached or closed the connection"):
        await store.put("k", "2")
    await relay.start()
    assert await store.get("k") == "1"         # the pool connects anew
    await store.put("k", "3")
    assert await store.get("k") == "3"
    await store.aclose()
    await relay.cut()


async def test_a_connection_asyncpg_cannot_go_on_with_is_a_storage_error(
        postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen once in a process frozen past the server's idle-in-transaction timeout, then
    # woken: asyncpg's own InternalClientError at commit stopped the bot with a traceback
    # that named no database. Unit-level: asyncpg cannot be brought there on purpose.
    store = await PostgresStore.open(await postgres.new_database())
    await store.put("k", "1")

    async def stuck(self: object, *args: object, **kwargs: object) -> None:
        raise asyncpg.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress")

    monkeypatch.setattr(asyncpg.transaction.Transaction, "start", stuck)
    with pytest.raises(StorageError, match="state database .*another operation"):
        await store.put("k", "2")
    monkeypatch.undo()
    assert await store.get("k") == "1"
    await store.aclose()


# -- PostgreSQL: several instances on one database --------------------------------------

ROUNDS = 40


async def test_instances_racing_for_a_row_claim_it_once(postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    a, b = [await PostgresStore.open(url) for _ in range(2)]
    await a.ensure_feed("news", "http://a/feed")
    entries = [f"e{i:03}" for i in range(ROUNDS)]
    await a.record_poll(outcome("news", entries, ["!r:x"]))
    target = Target("matrix", "!r:x")
    sent = []
    for i in range(ROUNDS):
        # Odd rounds: the row's claim by a third instance has lapsed: both take over.
        if i % 2:
            assert await a.claim_next(target, owner="c", now=float(i), lease=0.5) is not None
        now = i + 1.0
        got = await asyncio.gather(a.claim_next(target, owner="a", now=now, lease=60),
                                   b.claim_next(target, owner="b", now=now, lease=60))
        winners = [(owner, row) for owner, row in zip("ab", got, strict=True) if row]
        assert len(winners) == 1, (i, got)
        owner, row = winners[0]
        assert row.entry_id == entries[i]           # in order, never a later row
        store = a if owner == "a" else b
        loser = b if owner == "a" else a
        assert not await loser.mark_attempt(row.key, now, owner="ba"[owner == "b"],
                                            lease=60)
        assert await store.mark_attempt(row.key, now, owner=owner, lease=60)
        await store.mark_sent(row.key, f"${row.entry_id}", now)
        sent.append(row.entry_id)
    assert sent == entries
    await a.aclose()
    await b.aclose()


async def test_instances_racing_for_a_lease_take_it_once(postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    stores = [await PostgresStore.open(url) for _ in range(3)]
    for i in range(ROUNDS):
        name = f"feed:{i // 2}"      # even rounds: a new lease; odd: the same one, lapsed
        now = 100.0 * i
        got = await asyncio.gather(*(s.take_lease(name, f"i{n}", now=now, duration=50)
                                     for n, s in enumerate(stores)))
        assert sum(got) == 1, (i, got)
        holders = [le.owner for le in await stores[0].leases(now)]
        assert holders == [f"i{got.index(True)}"]
    for store in stores:
        await store.aclose()


async def test_instances_racing_for_an_event_take_it_once(postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    stores = [await PostgresStore.open(url) for _ in range(3)]
    for i in range(ROUNDS):
        got = await asyncio.gather(*(s.take_once(f"command:$e{i}", f"i{n}", 1.0)
                                     for n, s in enumerate(stores)))
        assert sum(got) == 1, (i, got)
    for store in stores:
        await store.aclose()


async def test_an_interval_set_by_one_instance_is_read_by_another(
        postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    a, b = [await PostgresStore.open(url) for _ in range(2)]
    assert await b.feed_interval("news") is None
    await a.set_feed_interval("news", 600.0)
    assert await b.feed_interval("news") == 600.0
    await a.aclose()
    await b.aclose()


async def test_an_unchanged_poll_written_behind_never_overwrites_a_newer_one(
        postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    a, b = [await PostgresStore.open(url) for _ in range(2)]
    await a.ensure_feed("news", "http://a/feed")
    await a.record_not_modified("news", now=200.0, next_fetch=260.0, etag="old", later=True)
    state = await a.feed_state("news")          # seen at once by its instance
    assert state is not None and state.last_fetch == 200.0 and state.etag == "old"
    # The feed's lease went to b, which polled it later; a writes its poll last.
    await b.record_poll(outcome("news", ["x"], [], now=300.0, etag="new"))
    state = await a.feed_state("news")
    assert state is not None and state.last_fetch == 300.0 and state.etag == "new"
    await a.aclose()
    state = await b.feed_state("news")
    assert state is not None and state.last_fetch == 300.0 and state.next_fetch == 360.0
    assert state.etag == "new"
    await b.aclose()


async def test_unchanged_polls_written_behind_are_written_on_close(
        open_store: StoreOpener) -> None:
    store = await open_store()
    await store.ensure_feed("news", "http://a/feed")
    await store.record_not_modified("news", now=200.0, next_fetch=260.0, etag="e", later=True)
    await store.aclose()
    store = await open_store()
    state = await store.feed_state("news")
    assert state is not None and state.last_fetch == 200.0 and state.next_fetch == 260.0
    assert state.etag == "e"


async def stored_times(store: Store, feed: str) -> tuple[float, float, int] | None:
    """What the database holds (not what the store answers, which shows what waits)."""
    row = await row_of(store, "SELECT last_fetch, next_fetch, failures FROM feed_state "
                              f"WHERE name = '{feed}'")
    return None if row is None else (row[0], row[1], row[2])


async def test_unchanged_polls_are_written_behind_together(open_store: StoreOpener) -> None:
    store = await open_store()
    for n in range(5):
        await store.ensure_feed(f"f{n}", f"http://a/{n}")
        await store.record_poll(outcome(f"f{n}", [], []))
    for n in range(5):
        await store.record_not_modified(f"f{n}", now=200.0, next_fetch=260.0, later=True)
    # Not written yet, but what the store answers already shows them.
    assert await stored_times(store, "f0") == (100.0, 160.0, 0)
    state = await store.feed_state("f0")
    assert state is not None and (state.last_fetch, state.next_fetch) == (200.0, 260.0)
    async with asyncio.timeout(20):
        while await stored_times(store, "f4") != (200.0, 260.0, 0):
            await asyncio.sleep(0.05)
    assert [await stored_times(store, f"f{n}") for n in range(5)] == [(200.0, 260.0, 0)] * 5


async def test_so_many_unchanged_polls_waiting_are_written_at_once(
        open_store: StoreOpener) -> None:
    store = await open_store()
    await store.ensure_feed("f", "http://a/f")
    for n in range(WRITE_BEHIND_MAX - 1):
        await store.record_not_modified(f"other{n}", now=1.0, next_fetch=2.0, later=True)
    assert await stored_times(store, "f") == (None, None, 0)
    await store.record_not_modified("f", now=200.0, next_fetch=260.0, later=True)
    assert await stored_times(store, "f") == (200.0, 260.0, 0)


async def test_a_later_write_is_never_overtaken_by_an_unchanged_poll_waiting(
        open_store: StoreOpener) -> None:
    store = await open_store()
    await store.ensure_feed("f", "http://a/f")
    await store.record_not_modified("f", now=200.0, next_fetch=260.0, later=True)
    await store.record_failure("f", "HTTP 500", now=300.0, next_fetch=400.0)
    assert await stored_times(store, "f") == (300.0, 400.0, 1)
    await asyncio.sleep(1.5)            # past the write-behind
    assert await stored_times(store, "f") == (300.0, 400.0, 1)
    state = await store.feed_state("f")
    assert state is not None and state.failures == 1 and state.last_error == "HTTP 500"


async def test_an_interval_set_by_command_is_known_at_once_and_forgotten_with_the_feed(
        open_store: StoreOpener) -> None:
    store = await open_store()
    assert await store.feed_interval("f") is None
    await store.set_feed_interval("f", 7200.0)
    assert await store.feed_interval("f") == 7200.0
    await store.remove_room_feed("f")
    assert await store.feed_interval("f") is None


async def test_a_failed_write_behind_on_postgres_reaches_the_next_poll(
        postgres: PostgresServer) -> None:
    """The server gone: the next unchanged poll meets the error (as SQLite's does), and
    nothing waiting is lost once it is back."""
    url = await postgres.new_database()
    relay = _Relay(postgres.port)
    await relay.start()
    store = await PostgresStore.open(url.replace(f":{postgres.port}/", f":{relay.port}/"))
    try:
        await store.ensure_feed("f", "http://a/f")
        await store.record_not_modified("f", now=200.0, next_fetch=260.0, later=True)
        await relay.cut()
        await asyncio.sleep(1.5)        # the timer's write fails, and is kept
        with pytest.raises(StorageError, match="cannot be reached"):
            await store.record_not_modified("f", now=300.0, next_fetch=360.0, later=True)
        await relay.start()
        await store.record_not_modified("g", now=400.0, next_fetch=460.0, later=True)
        state = await store.feed_state("f")
        assert state is not None and (state.last_fetch, state.next_fetch) == (300.0, 360.0)
        assert await stored_times(store, "f") == (300.0, 360.0, 0)
    finally:
        await store.aclose()
        await relay.cut()


# -- both stores: corrections, subscribers, what moderators set ---------------------------


def poll(feed: str, now: float = 1.0, **changes: object) -> PollOutcome:
    base = PollOutcome(feed=feed, now=now, next_fetch=now + 60, etag=None,
                       last_modified=None, body_hash=None, title=None, new_url=None,
                       seen_entry_ids=[], deliveries=[])
    return replace(base, **changes)  # type: ignore[arg-type]


async def test_a_correction_replaces_what_was_not_sent_and_edits_what_was(
        open_store: StoreOpener) -> None:
    store = await open_store()
    await store.ensure_feed("news", "http://a/feed")
    await store.record_poll(poll("news", seen_entry_ids=["a", "b"], deliveries=[
        NewDelivery("a", "!r:x", Message("A", "A")), NewDelivery("b", "!r:x", Message("B", "B"))],
        fingerprints=[("a", "fa"), ("b", "fb")]))
    first = await store.claim_next(Target("matrix", "!r:x"), owner="o", now=2.0, lease=60)
    assert first is not None and first.entry_id == "a"
    await store.mark_attempt(first.key, 2.0, {"body": "A"})
    await store.mark_sent(first.key, "$a", 3.0)
    assert await store.event_of("news", "a", "!r:x") == "$a"
    assert await store.posted("news", ["a", "b", "c"]) == {"a": ("fa", 0), "b": ("fb", 0)}
    edit = NewDelivery("a#edit#1", "!r:x", Message("A2", "A2"), kind="edit", subject="a")
    rooms = await store.record_poll(poll("news", now=4.0, changed=[("a", "fa2"), ("b", "fb2")],
                                         corrections=[
        Correction("a", "!r:x", Message("A2", "A2"), edit),
        Correction("b", "!r:x", Message("B2", "B2"), None)]))
    assert rooms == ["!r:x"]
    assert await store.posted("news", ["a", "b"]) == {"a": ("fa2", 1), "b": ("fb2", 0)}
    # b was never attempted: its row now holds the corrected version, and no edit.
    pending = await store.next_pending("!r:x")
    assert pending is not None and pending.entry_id == "b"
    assert pending.message == Message("B2", "B2")
    await store.mark_sent(pending.key, "$b", 5.0)
    edit_row = await store.next_pending("!r:x")
    assert edit_row is not None and (edit_row.kind, edit_row.subject) == ("edit", "a")
    # An attempt recorded against what the row no longer holds is refused.
    assert not await store.mark_attempt(edit_row.key, 6.0, expected=Message("old", "old"))
    assert await store.mark_attempt(edit_row.key, 6.0, expected=edit_row.message)


async def test_subscribers_their_copies_and_digests(open_store: StoreOpener) -> None:
    store = await open_store()
    await store.ensure_feed("news", "http://a/feed")
    await store.save_subscriber("@al:x", "!dm-al:x", digest="daily", digest_due=50.0)
    await store.save_subscriber("@bo:x", "!dm-bo:x", language="fr")
    await store.subscribe("@al:x", ["news", "other"])
    await store.subscribe("@bo:x", ["news"])
    await store.subscribe("@bo:x", ["news"])          # twice is once
    al = await store.subscriber("@al:x")
    assert al == Subscriber("@al:x", "!dm-al:x", "daily", None, 50.0, ("news", "other"))
    assert await store.subscriber_by_room("!dm-bo:x") == Subscriber(
        "@bo:x", "!dm-bo:x", "off", "fr", None, ("news",))
    assert [s.user_id for s in await store.subscribers_of("news")] == ["@al:x", "@bo:x"]
    assert await store.subscriber_count("news") == 2
    assert sorted(await store.dm_rooms()) == ["!dm-al:x", "!dm-bo:x"]
    assert [s.user_id for s in await store.due_digests(60.0)] == ["@al:x"]
    assert await store.due_digests(40.0) == []
    # A personal copy goes only to who follows the feed there; digest items likewise.
    rooms = await store.record_poll(poll("news", now=10.0, seen_entry_ids=["e"], deliveries=[
        NewDelivery("e", "!dm-bo:x", Message("E", "E"), subscriber="@bo:x"),
        NewDelivery("e", "!dm-al:x", Message("E", "E"), subscriber="@bo:x"),
        NewDelivery("e", "!dm-zed:x", Message("E", "E"), subscriber="@zed:x")],
        digest=[DigestItem("@al:x", "news", "e", "t" * 5000, "http://l/" + "x" * 3000, 9.0),
                DigestItem("@al:x", "news", "d", "Older", None, 5.0),
                DigestItem("@zed:x", "news", "e", "E", None, 9.0)]))
    assert rooms == ["!dm-bo:x"]
    items = await store.digest_items("@al:x")
    assert [i.entry_id for i in items] == ["d", "e"]
    assert len(items[1].title) == MAX_STORED_TITLE and items[1].title.endswith("…")
    assert items[1].link is None                       # half a link is a broken link
    assert await store.digest_items("@zed:x") == []
    rooms = await store.send_digest("@al:x", items, [
        NewDelivery("newsbot:digest:1", "!dm-al:x", Message("D", "D"), kind="digest")],
        "newsbot:digests", next_due=150.0, now=60.0)
    assert rooms == ["!dm-al:x"] and await store.digest_items("@al:x") == []
    assert await store.due_digests(60.0) == []
    await store.unsubscribe("@al:x", ["other"])
    al = await store.subscriber("@al:x")
    assert al is not None and al.feeds == ("news",)
    # Forgetting someone: everything about them, and their conversation's rows.
    await store.forget_user("@bo:x")
    assert await store.subscriber("@bo:x") is None
    assert await store.pending_count("!dm-bo:x") == 0
    assert await store.subscribers_of("news") == [al]


async def test_a_conversation_is_forgotten_once_said_goodbye_unless_it_is_someones(
        open_store: StoreOpener) -> None:
    store = await open_store()
    await store.save_subscriber("@al:x", "!dm-al:x")
    for room in ("!dm-al:x", "!gone:x"):
        await store.enqueue("newsbot:replies", [NewDelivery(
            "bye", room, Message("Bye @al", "Bye", mentions=("@al:x",)), kind="goodbye")], 1.0)
        await store.set_room_language(room, "fr")
    assert await store.goodbyes_said() == []
    for room in ("!dm-al:x", "!gone:x"):
        row = await store.claim_next(Target("matrix", room), owner="o", now=2.0, lease=60)
        assert row is not None and row.message is not None
        await store.mark_sent(row.key, "$bye", 3.0)
    assert sorted(await store.goodbyes_said()) == ["!dm-al:x", "!gone:x"]
    # Sent: its words and whom it named are gone.
    assert await row_of(store, "SELECT message, payload FROM outbox WHERE room = '!gone:x'") \
        == (None, None)
    await store.forget_conversation("!gone:x")
    await store.forget_conversation("!dm-al:x")          # still al's: kept
    assert await store.goodbyes_said() == ["!dm-al:x"]
    assert await store.room_language("!gone:x") is None
    assert await store.room_language("!dm-al:x") == "fr"


async def test_a_row_that_keeps_failing_is_parked_and_its_words_forgotten(
        open_store: StoreOpener) -> None:
    store = await open_store()
    await store.enqueue("newsbot:replies", [
        NewDelivery("r1", "!r:x", Message("ok @al", "ok", mentions=("@al:x",)), kind="reply"),
        NewDelivery("r2", "!r:x", Message("no", "no"), kind="reply")], 1.0)
    assert sorted(await store.pending_rooms()) == ["!r:x"]
    first = await store.next_pending("!r:x")
    assert first is not None and first.entry_id == "r1"
    assert not await store.record_failure_of(first.key, "boom" * 200, 2.0, park_after=2)
    assert await store.record_failure_of(first.key, "boom", 3.0, park_after=2)
    assert await store.failed_count() == 1
    assert await row_of(store, "SELECT state, message, failures FROM outbox "
                               "WHERE entry_id = 'r1'") == ("failed", None, 2)
    second = await store.next_pending("!r:x")
    assert second is not None and second.entry_id == "r2"
    await store.mark_rejected(second.key, "M_FORBIDDEN", 4.0)
    assert await row_of(store, "SELECT state, error, message FROM outbox "
                               "WHERE entry_id = 'r2'") == ("rejected", "M_FORBIDDEN", None)
    assert await store.pending_rooms() == [] and await store.pending_count("!r:x") == 0
    assert await store.prune_sent(3.5) == 1            # the parked one, older
    assert await store.failed_count() == 0
    assert await store.prune_sent(10.0) == 1


async def test_what_moderators_set_and_the_latest_entries(open_store: StoreOpener) -> None:
    store = await open_store()
    feed = RoomFeed("blog", "http://a/blog", "!r:x", 900.0, "@mod:x", 5.0)
    await store.add_room_feed(feed)
    await store.add_room_feed(RoomFeed("older", "http://a/o", "!r:x", 600.0, "@mod:x", 1.0))
    assert [f.name for f in await store.room_feeds()] == ["older", "blog"]
    await store.set_feed_room_settings("blog", "!r:x", RoomFeedSettings(True, ("a",), ()))
    await store.set_feed_room_settings("blog", "!r:x", RoomFeedSettings(False, ("b", "c"),
                                                                        ("d",)))
    assert await store.feed_room_settings("blog") == {
        "!r:x": RoomFeedSettings(False, ("b", "c"), ("d",))}
    await store.set_feed_interval("blog", 1800.0)
    assert [f.interval for f in await store.room_feeds()] == [600.0, 1800.0]
    await store.ensure_feed("blog", "http://a/blog")
    recent = [RecentEntry("blog", f"e{n:02}", f"T{n}", None, float(n))
              for n in range(RECENT_PER_FEED + 5)]
    await store.record_poll(poll("blog", now=100.0, seen_entry_ids=["x"], recent=recent,
                                 carried=["x"], deliveries=[
                                     NewDelivery("x", "!r:x", Message("X", "X"))]))
    assert await store.carried("blog") == ["x"]
    latest = await store.latest(["blog", "none"], 3)
    assert [e.entry_id for e in latest] == ["e24", "e23", "e22"]
    assert len(await store.latest(["blog"], 100)) == RECENT_PER_FEED
    assert await store.latest([], 3) == []
    await store.record_poll(poll("blog", now=200.0, carried=[]))
    assert await store.carried("blog") == []
    await store.remove_room_feed("blog")
    assert [f.name for f in await store.room_feeds()] == ["older"]
    assert await store.feed_room_settings("blog") == {}
    assert await store.feed_interval("blog") is None
    assert await store.pending_count() == 0
    assert await store.unseen("blog", ["x"]) == set()   # seen stays: never reposted


async def test_media_rows_are_replaced_and_a_failed_poll_counted(
        open_store: StoreOpener) -> None:
    store = await open_store()
    await store.put_media(MediaRow("http://a/p.png", None, None, None, None, None), 1.0)
    await store.put_media(MediaRow("http://a/p.png", "mxc://x/1", "image/png", 3_000_000_000,
                                   640, 480), 2.0)
    assert await store.media("http://a/p.png") == MediaRow(
        "http://a/p.png", "mxc://x/1", "image/png", 3_000_000_000, 640, 480)
    assert await store.media("http://a/none.png") is None
    await store.ensure_feed("news", "http://a/feed")
    assert await store.record_failure("news", "HTTP 500", now=10.0, next_fetch=70.0) == 1
    assert await store.record_failure("news", "HTTP 502", now=70.0, next_fetch=190.0) == 2
    assert await store.record_failure("missing", "x", now=1.0, next_fetch=2.0) == 0
    state = await store.feed_state("news")
    assert state is not None and (state.failures, state.last_error, state.next_fetch) == (
        2, "HTTP 502", 190.0)
    await store.record_poll(poll("news", now=200.0, hints='{"ttl": 60}', new_url="http://b/f",
                                 title="News"))
    state = await store.feed_state("news")
    assert state is not None and state.failures == 0 and state.last_error is None
    assert (state.url, state.title, state.hints) == ("http://b/f", "News", '{"ttl": 60}')


async def test_words_holding_a_nul_are_stored_and_an_id_holding_one_is_seen_once(
        open_store: StoreOpener) -> None:
    # A JSON Feed may send "\u0000" (PostgreSQL's text cannot hold it: stored as U+FFFD).
    store = await open_store()
    await store.ensure_feed("news", "http://a/feed")
    odd = "id\x00odd"
    rooms = await store.record_poll(poll(
        "news", seen_entry_ids=[odd], title="T\x00",
        deliveries=[NewDelivery(odd, "!r:x", Message("A\x00", "A"))],
        recent=[RecentEntry("news", odd, "title\x00", None, 1.0)],
        fingerprints=[(odd, "fp\x00")]))
    assert rooms == ["!r:x"]
    assert await store.unseen("news", [odd, "other"]) == {"other"}
    assert list(await store.posted("news", [odd])) == [odd]
    assert await store.record_poll(poll("news", seen_entry_ids=[odd], deliveries=[
        NewDelivery(odd, "!r:x", Message("A", "A"))])) == []
    row = await store.next_pending("!r:x")
    assert row is not None and row.key == delivery_key("news", odd, "!r:x")
    assert row.message is not None and row.message.body == "A\x00"     # JSON keeps it
    await store.put("k", "v\x00")
    assert (await store.get("k") or "").startswith("v")
    assert len(await store.latest(["news"], 5)) == 1
