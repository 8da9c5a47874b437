"""`newsbot storage migrate`: a SQLite state copied into PostgreSQL, nothing lost, nothing
reposted; a target holding a state, a bad path, a wrong address or another schema version
refused with a clear message that never shows the password, and nothing half-copied."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.errors import StorageError
from bot.model import Message, Target
from bot.store import NewDelivery, PollOutcome, SqliteStore
from bot.store.postgres import PostgresStore
from bot.store.schema import SCHEMA_VERSION
from bot.store.sqlite import DB_FILENAME
from bot.store.transfer import copy_state, session_device, sqlite_file
from tests.botkit import ROOT, InProcessBot, bot_config, bot_environ, load, write_config
from tests.support import (
    FeedServer,
    MemberFactory,
    NewUserFactory,
    SynapseServer,
    free_port,
    make_items,
)
from tests.support.postgres import PostgresServer

PASSWORD = "s3cret-Pa55word"


async def newsbot(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``python -m bot ARGS``: its exit code and what it printed (stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def target_rows(url: str) -> dict[str, int]:
    """Rows in each table of the database (its version aside)."""
    conn = await asyncpg.connect(url)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename != 'schema_version'")]
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}
    finally:
        await conn.close()


def titles(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"].splitlines()[0] for e in events]


# -- the whole way: a bot on SQLite, the copy, the same bot on PostgreSQL -----------------

async def test_a_bot_moves_to_postgresql_delivering_what_was_pending_once_and_no_more(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, postgres: PostgresServer,
        tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    open_room = await alice.create_room(name="open")
    # A room the bot cannot join yet: its items wait in the outbox.
    closed = await alice.create_room(name="closed", preset="private_chat")
    items = make_items(3)                           # newest first
    feed_server.set_feed(feed_path, items[1:])
    state = tmp_path / "state"
    config = bot_config(homeserver=synapse.base_url, bot=bot, storage=state,
                        feeds=[{"name": "news", "url": feed_server.url(feed_path),
                                "rooms": [open_room, closed], "backfill": 2}])
    sqlite_config = write_config(tmp_path / "sqlite.yaml", config)
    async with InProcessBot(load(sqlite_config, bot)) as running:
        await alice.wait_for_messages(open_room, 2, sender=bot.user_id)
        store = running.app.store
        deadline = time.monotonic() + 60
        while await store.get("matrix.sync_token") is None or \
                await store.pending_count(closed) != 2:
            assert time.monotonic() < deadline, "no sync token, or not two rows pending"
            await asyncio.sleep(0.1)
        token = await store.get("matrix.sync_token")

    url = await postgres.new_database()
    code, output = await newsbot("storage", "migrate", "-c", str(sqlite_config), "--to", url,
                                 env=bot_environ(bot))
    assert code == 0, output
    assert "outbox" in output and "(2 pending)" in output, output
    assert f"kept for device {bot.device_id}" in output, output
    assert "set storage.url" in output and "keep storage.path" in output, output
    copied = await PostgresStore.open(url)
    try:
        assert await copied.pending_count(closed) == 2
        assert await copied.pending_count(open_room) == 0
        # The token is the device's own on a shared store.
        assert await copied.get(f"matrix.sync_token.{bot.device_id}") == token
        assert await copied.get("matrix.sync_token") is None
    finally:
        await copied.aclose()

    await alice.invite(closed, bot.user_id)
    shared = write_config(tmp_path / "shared.yaml",
                          {**config, "storage": {"path": str(state), "url": url}})
    async with InProcessBot(load(shared, bot)) as running:
        # What was pending is delivered; what was delivered is not, and new items flow.
        await alice.wait_for_messages(closed, 2, sender=bot.user_id, timeout=60)
        feed_server.set_feed(feed_path, items)
        for room in (open_room, closed):
            await alice.wait_for_messages(room, 3, sender=bot.user_id, timeout=60)
        deadline = time.monotonic() + 60
        while await running.app.store.pending_count():
            assert time.monotonic() < deadline, "deliveries left pending"
            await asyncio.sleep(0.1)
    expected = [item.title for item in reversed(items)]
    for room in (open_room, closed):
        assert titles(await alice.messages(room, sender=bot.user_id)) == expected, room
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT entry_id, seq FROM outbox WHERE kind = 'item'")
    finally:
        await conn.close()
    # The new item's rows are numbered after the copied ones.
    new = [r["seq"] for r in rows if r["entry_id"] == items[0].guid]
    assert len(new) == 2 and min(new) > max(r["seq"] for r in rows
                                            if r["entry_id"] != items[0].guid)


# -- every table, row for row -------------------------------------------------------------

def filled_state(tmp_path: Path) -> Path:
    """A SQLite state of the current schema with rows in every table (``fill``)."""
    state = tmp_path / "state"
    SqliteStore.open(state).close()
    fill(state)
    return state


async def migrate(state: Path, url: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``newsbot storage migrate`` from that SQLite state to ``url``."""
    return await newsbot("storage", "migrate", "--from", f"sqlite:{state}", "--to", url,
                         env=env)


def fill(state: Path) -> None:
    """One or more rows in every table, raw (what the store API would write, and what it
    never would: an id holding NUL, integers in REAL columns, claims, leases)."""
    db = sqlite3.connect(state / DB_FILENAME)
    with db:
        db.executescript("""
            INSERT OR REPLACE INTO feed_state (name, url, configured_url, etag, initialized, title,
                                    last_fetch, failures, next_fetch, disabled, hints)
                VALUES ('news', 'http://x/feed', 'http://x/feed', '"e1"', 1, 'News', 10,
                        0, 70.5, NULL, '{"ttl": 60}'),
                       ('gone', 'http://x/gone', 'http://x/gone', NULL, 1, NULL, 5, 3, NULL,
                        '410 Gone', NULL);
            INSERT INTO kv (key, value) VALUES ('matrix.sync_token', 's72_1'),
                                               ('matrix.direct_rooms', '{"@a:x": "!d:x"}'),
                                               ('poll.carried.news', '["z"]');
            INSERT INTO room_feed VALUES ('mine', 'http://y/feed', '!r:x', 600, '@a:x', 3.5);
            INSERT INTO feed_room_settings VALUES ('news', '!r:x', 1, '["a"]', '["b"]');
            INSERT INTO feed_settings VALUES ('news', 120);
            INSERT INTO room_settings VALUES ('!r:x', 'fr');
            INSERT INTO recent_entry VALUES ('news', 'e1', 'Titre', 'http://x/1', 1.5, 2);
            INSERT INTO media_cache VALUES ('http://x/i.png', 'mxc://x/y', 'image/png',
                                            5000000000, 640, 480, 9);
            INSERT INTO posted_entry VALUES ('news', 'e1', 'f1', 2);
            INSERT INTO entry_event VALUES ('news', 'e1', '!r:x', '$e1');
            INSERT INTO subscriber VALUES ('@a:x', '!d:x', 'daily', 'fr', 86400);
            INSERT INTO subscription VALUES ('@a:x', 'news'), ('@a:x', 'mine');
            INSERT INTO digest_item VALUES ('@a:x', 'news', 'e2', 'Deux', NULL, NULL, 4);
            INSERT INTO lease VALUES ('leader', 'local', 99);
            INSERT INTO taken VALUES ('command:$c1', 'local', 7);
        """)
        db.executemany("INSERT INTO seen VALUES ('news', ?, ?)",
                       [(f"e{i}", i) for i in range(10)] + [("nul\x00id", 1.25)])
    db.close()


async def test_every_table_is_copied_row_for_row(postgres: PostgresServer,
                                                 tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = SqliteStore.open(state)
    await store.ensure_feed("news", "http://x/feed")
    # Seven rows in two rooms, one sent, one attempted and claimed, one dropped (so
    # SQLite's numbering went past the last row).
    await store.record_poll(PollOutcome(
        feed="news", now=1.0, next_fetch=2.0, etag=None, last_modified=None, body_hash=None,
        title=None, new_url=None, seen_entry_ids=[],
        deliveries=[NewDelivery(f"i{i}", "!r:x" if i % 2 else "!s:x", Message(f"b{i}", "h"))
                    for i in range(8)]))
    first = await store.claim_next(Target("matrix", "!r:x"), owner="local", now=5, lease=300)
    assert first is not None
    await store.mark_attempt(first.key, 5.0, {"body": "b1"})
    await store.mark_sent(first.key, "$ev1", 6.0)
    second = await store.claim_next(Target("matrix", "!r:x"), owner="local", now=7, lease=300)
    assert second is not None
    await store.mark_attempt(second.key, 7.0, {"body": "b3"})
    store.close()
    fill(state)
    db = sqlite3.connect(state / DB_FILENAME)
    with db:
        db.execute("DELETE FROM outbox WHERE entry_id = 'i7'")
    source = {t: db.execute(f"SELECT * FROM {t}").fetchall() for (t,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    columns = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in source}
    db.close()
    # Every table holds something: a table added by a later migration fails here until
    # this test fills it (and so checks that it is copied).
    assert all(source.values()), [t for t, rows in source.items() if not rows]

    url = await postgres.new_database()
    done = await copy_state(state / DB_FILENAME, url, device_id="DEVICE1", chunk=3)
    assert done.version == SCHEMA_VERSION
    assert done.pending == 6
    assert set(done.rows) == set(source) - {"lease"}

    expected = dict(source)
    expected["lease"] = []          # held by running instances: none runs yet
    claims = [columns["outbox"].index(c) for c in ("claimed_by", "claimed_until")]
    expected["outbox"] = [tuple(None if i in claims else v for i, v in enumerate(r))
                          for r in source["outbox"]]
    expected["kv"] = [("matrix.sync_token.DEVICE1", v) if k == "matrix.sync_token" else (k, v)
                      for k, v in source["kv"]]
    # PostgreSQL's text cannot hold NUL: stored as the PostgreSQL store stores it.
    expected["seen"] = [(f, e.replace("\x00", "\ufffd"), t) for f, e, t in source["seen"]]
    conn = await asyncpg.connect(url)
    try:
        for table, rows in expected.items():
            got = [tuple(r) for r in await conn.fetch(
                f"SELECT {', '.join(columns[table])} FROM {table}")]
            assert sorted(got, key=repr) == sorted(rows, key=repr), table
            assert done.rows.get(table, 0) == len(rows)
    finally:
        await conn.close()

    copied = await PostgresStore.open(url)
    try:
        # Order kept: the oldest pending row first, the attempted one (its attempt known,
        # so it is looked for in the room before any resend).
        nxt = await copied.claim_next(Target("matrix", "!r:x"), owner="b", now=8, lease=30)
        assert nxt is not None and nxt.key == second.key and nxt.first_attempt_at == 7.0
        assert await copied.get("matrix.sync_token.DEVICE1") == "s72_1"
        assert await copied.unseen("news", ["nul\x00id", "e3", "new"]) == {"new"}
        await copied.enqueue("news", [NewDelivery("late", "!r:x", Message("l", "l"))], 9.0)
    finally:
        await copied.aclose()
    conn = await asyncpg.connect(url)
    try:
        seqs = {r["entry_id"]: r["seq"] for r in await conn.fetch("SELECT entry_id, seq "
                                                                   "FROM outbox")}
    finally:
        await conn.close()
    # Numbered after every number SQLite gave, the dropped row's too.
    assert seqs["late"] > max(s for e, s in seqs.items() if e != "late") + 1


# -- refusals --------------------------------------------------------------------------

async def test_a_target_holding_a_state_is_refused_and_left_as_it_was(
        postgres: PostgresServer, tmp_path: Path) -> None:
    state = filled_state(tmp_path)
    url = await postgres.new_database()
    code, output = await migrate(state, url)
    assert code == 0, output
    before = await target_rows(url)
    code, output = await migrate(state, url)
    assert code == 1
    assert "already holds a state" in output and "never merging" in output, output
    assert await target_rows(url) == before

    # One row anywhere is a state: here a command answered by an instance.
    other = await postgres.new_database()
    store = await PostgresStore.open(other)
    await store.take_once("command:$x", "someone", 1.0)
    await store.aclose()
    code, output = await newsbot("storage", "migrate", "--from",
                                 str(state / DB_FILENAME), "--to", other)
    assert code == 1 and "rows in taken" in output, output
    assert (await target_rows(other))["feed_state"] == 0


async def test_a_failure_midway_copies_nothing(postgres: PostgresServer,
                                               tmp_path: Path) -> None:
    state = filled_state(tmp_path)
    db = sqlite3.connect(state / DB_FILENAME)
    with db:    # SQLite keeps what its column cannot convert; PostgreSQL will not take it
        db.execute("UPDATE taken SET taken_at = 'yesterday'")
    db.close()
    url = await postgres.new_database()
    with pytest.raises(StorageError, match="table taken .* wrong type"):
        await copy_state(state / DB_FILENAME, url, device_id=None)
    assert set((await target_rows(url)).values()) == {0}


def test_a_path_that_is_no_state_says_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.db").write_text("x")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / DB_FILENAME).write_text("not a database")
    for spec, message in [
        (f"sqlite:{tmp_path / 'missing'}", "no such file or directory"),
        (f"sqlite:{tmp_path / 'empty'}", f"a directory without {DB_FILENAME}"),
        (str(tmp_path / "other.db"), f"not newsbot's state file ({DB_FILENAME})"),
        (f"sqlite:{tmp_path / 'fake'}", "not a SQLite database"),
        ("postgresql://db/newsbot", "the source is a SQLite state"),
    ]:
        with pytest.raises(StorageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            sqlite_file(spec)
    state = tmp_path / "state"
    SqliteStore.open(state).close()
    assert sqlite_file(f"sqlite:{state}") == state / DB_FILENAME
    assert sqlite_file(str(state / DB_FILENAME)) == state / DB_FILENAME


async def test_the_cli_refuses_a_bad_path_and_a_target_that_is_no_database(
        tmp_path: Path) -> None:
    code, output = await newsbot("storage", "migrate", "--from", f"sqlite:{tmp_path}/nope",
                                 "--to", "postgresql://newsbot@127.0.0.1/x")
    assert code == 2 and "no such file or directory" in output, output
    state = tmp_path / "state"
    SqliteStore.open(state).close()
    code, output = await newsbot("storage", "migrate", "--from", f"sqlite:{state}",
                                 "--to", f"mysql://newsbot:{PASSWORD}@db/x")
    assert code == 2 and "postgresql://user@host" in output and PASSWORD not in output
    code, output = await newsbot("storage", "migrate", "--to", "postgresql://db/x")
    assert code == 2 and "--from sqlite:PATH" in output, output


async def test_a_wrong_address_is_reported_without_the_password(
        postgres: PostgresServer, tmp_path: Path) -> None:
    state = filled_state(tmp_path)
    nobody = f"postgresql://newsbot:{PASSWORD}@127.0.0.1:{free_port()}/newsbot"
    missing = postgres.url("no_such_database").replace("newsbot@",
                                                       f"newsbot:{PASSWORD}@")
    for url, hint in [(nobody, "check that the server runs"),
                      (missing, "create the database first")]:
        code, output = await migrate(state, url)
        assert code == 1, output
        assert hint in output and "nothing was copied" in output, output
        assert PASSWORD not in output and "newsbot:***@127.0.0.1" in output, output
    # A password asyncpg reads from the environment is never shown either.
    code, output = await migrate(state, postgres.url("no_such_database"),
                                 env={"PGPASSWORD": PASSWORD})
    assert code == 1 and PASSWORD not in output, output


async def test_another_schema_version_is_refused(postgres: PostgresServer,
                                                 tmp_path: Path) -> None:
    state = filled_state(tmp_path)
    url = await postgres.new_database()
    await (await PostgresStore.open(url)).aclose()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    code, output = await migrate(state, url)
    assert code == 1 and "newer than this newsbot understands" in output, output
    assert (await target_rows(url))["feed_state"] == 0

    url = await postgres.new_database()
    db = sqlite3.connect(state / DB_FILENAME)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    code, output = await migrate(state, url)
    assert code == 1 and "newer than this newsbot understands" in output, output


# -- whose sync token -------------------------------------------------------------------

def test_the_device_is_the_configured_tokens_or_the_saved_sessions(tmp_path: Path) -> None:
    from bot.config import MatrixConfig
    assert session_device(tmp_path, None) is None
    (tmp_path / "matrix-session.json").write_text(json.dumps(
        {"homeserver": "https://hs", "user_id": "@bot:hs", "device_id": "SAVED",
         "access_token": "t"}))
    assert session_device(tmp_path, None) == "SAVED"
    by_password = MatrixConfig(homeserver="https://hs", user_id="@bot:hs", access_token=None,
                                password="p", device_id=None)
    assert session_device(tmp_path, by_password) == "SAVED"
    other_account = MatrixConfig(homeserver="https://hs", user_id="@other:hs",
                                 access_token=None, password="p", device_id=None)
    assert session_device(tmp_path, other_account) is None
    by_token = MatrixConfig(homeserver="https://hs", user_id="@bot:hs", access_token="t",
                            password=None, device_id="CONFIGURED")
    assert session_device(tmp_path, by_token) == "CONFIGURED"


async def test_an_unknown_device_drops_the_sync_token_with_a_note(
        postgres: PostgresServer, tmp_path: Path) -> None:
    state = filled_state(tmp_path)
    url = await postgres.new_database()
    code, output = await migrate(state, url)
    assert code == 0 and "sync token was dropped" in output, output
    conn = await asyncpg.connect(url)
    try:
        keys = {r[0] for r in await conn.fetch("SELECT key FROM kv")}
    finally:
        await conn.close()
    assert keys == {"matrix.direct_rooms", "poll.carried.news"}
