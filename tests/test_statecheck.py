"""check-config compares the configuration with the stored state and shows each feed's
effective interval, on either store, without writing it (bot.store.readonly)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from bot.config import Config, load_config_text
from bot.feeds.hints import FeedHints
from bot.feeds.schedules import schedules
from bot.model import Message
from bot.statecheck import state_warnings
from bot.store import NewDelivery, PollOutcome, RoomFeed, SqliteStore, Store
from bot.store.readonly import StateReader
from bot.store.sqlite import DB_FILENAME
from tests.support import free_port
from tests.support.postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0

CONFIG = """
matrix:
  homeserver: http://127.0.0.1:8008
  user_id: "@bot:localhost"
  access_token: "${TOKEN}"
  device_id: BOT
storage:
  path: ./state
  {url}
feeds:
  - name: actus
    url: http://127.0.0.1/new-actus.xml
    rooms: ["!room:localhost"]
    interval: 15m
  - name: blog
    url: http://127.0.0.1/blog.xml
    rooms: ["!room:localhost"]
    interval: 30m
  - name: news
    url: http://127.0.0.1/news.xml
    rooms: ["!room:localhost"]
    interval: 15m
"""

# What the state below makes check-config say, on either store.
WARNINGS = [
    "feed actus: added by command in !other:localhost and also defined in the "
    "configuration; the configuration wins",
    "feed actus: its url changed from http://127.0.0.1/old-actus.xml to "
    "http://127.0.0.1/new-actus.xml; nothing will be reposted",
    "feed blog: switched off (HTTP 410 Gone at http://127.0.0.1/blog.xml); give it a new "
    "url to poll it again",
    "feed old: has stored state but is no longer configured (its seen entries are kept, "
    "should it come back)",
    "room !gone:localhost: 1 item(s) wait for it but no feed posts there any more; they "
    "will still be delivered"]
INTERVALS = [
    ("actus", "every 4 h (set by command to 4 h)"),
    ("blog", "every 30 min (configured 30 min)"),
    ("news", "every 2 h (the feed asks for ttl 120 min; configured 15 min)")]
CONFIGURED = [("actus", "every 15 min (configured 15 min)"),
              ("blog", "every 30 min (configured 30 min)"),
              ("news", "every 15 min (configured 15 min)")]


def config_text(url: str | None) -> str:
    return CONFIG.replace("{url}", "" if url is None else f'url: "{url}"')


def load(tmp_path: Path, url: str | None) -> Config:
    config, _ = load_config_text(config_text(url), base_dir=tmp_path,
                                 environ={"TOKEN": "t0ken-value"})
    return config


async def open_state(tmp_path: Path, server: PostgresServer | None) -> tuple[Store, str | None]:
    """An empty store of the test's kind, and its URL (None: SQLite in tmp_path/state)."""
    if server is None:
        return SqliteStore.open(tmp_path / "state"), None
    from bot.store.postgres import PostgresStore
    url = await server.new_database()
    return await PostgresStore.open(url, max_size=2), url


async def disagreeing_state(store: Store) -> None:
    """Everything check-config has something to say about, made by the store itself."""
    await store.ensure_feed("actus", "http://127.0.0.1/old-actus.xml")
    await store.ensure_feed("old", "http://127.0.0.1/old.xml")
    await store.ensure_feed("blog", "http://127.0.0.1/blog.xml")
    await store.ensure_feed("news", "http://127.0.0.1/news.xml")
    await store.disable_feed("blog", "HTTP 410 Gone at http://127.0.0.1/blog.xml", now=1.0,
                             notices=[])
    await store.add_room_feed(RoomFeed("actus", "http://x/y", "!other:localhost", 60, "@m:x",
                                       1.0))
    await store.set_feed_interval("actus", 4 * HOUR)          # `!news interval actus 4h`
    await store.record_poll(PollOutcome("old", 1.0, 2.0, None, None, None, None, None, ["e"],
                                        [NewDelivery("e", "!gone:localhost",
                                                     Message("x", "x"))]))
    await store.record_poll(PollOutcome("news", 1.0, 2.0, None, None, None, None, None, [],
                                        [], hints=FeedHints(ttl=2 * HOUR).to_json()))


def check(config: Config) -> tuple[list[str], list[tuple[str, str]]]:
    """What check-config reads: as it does, synchronously (run in a thread from a test)."""
    with StateReader(config) as state:
        return state_warnings(config, state), schedules(config, state)


async def checked(config: Config) -> tuple[list[str], list[tuple[str, str]]]:
    return await asyncio.to_thread(check, config)


async def everything(tmp_path: Path, url: str | None) -> Any:
    """Every row of every table, to show that nothing was written."""
    if url is None:
        return hashlib.sha256((tmp_path / "state" / DB_FILENAME).read_bytes()).hexdigest()
    c = await asyncpg.connect(url)
    try:
        tables = [r[0] for r in await c.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        return {t: sorted(map(repr, await c.fetch(f"SELECT * FROM {t}"))) for t in tables}
    finally:
        await c.close()


def check_config(tmp_path: Path, url: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "c.yaml").write_text(config_text(url))
    return subprocess.run(
        [sys.executable, "-m", "bot", "check-config", "-c", str(tmp_path / "c.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "TOKEN": "t0ken-value", "PYTHONPATH": str(ROOT)})


async def test_disagreements_and_intervals_are_shown_and_nothing_is_written(
        tmp_path: Path, store_server: PostgresServer | None) -> None:
    store, url = await open_state(tmp_path, store_server)
    await disagreeing_state(store)
    await store.aclose()
    before = await everything(tmp_path, url)
    config = load(tmp_path, url)
    assert await checked(config) == (WARNINGS, INTERVALS)
    assert await everything(tmp_path, url) == before

    result = await asyncio.to_thread(check_config, tmp_path, url)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"warning: {w}" for w in WARNINGS]
    assert result.stdout.splitlines()[1:] == [f"  {name}: {why}" for name, why in INTERVALS]
    assert await everything(tmp_path, url) == before


async def test_an_older_schema_is_reported_and_not_migrated(
        tmp_path: Path, store_server: PostgresServer | None) -> None:
    store, url = await open_state(tmp_path, store_server)
    await disagreeing_state(store)
    await store.aclose()
    # As a state of schema 8 would read (it lacks only the leases of 9).
    if url is None:
        where = str(tmp_path / "state" / DB_FILENAME)
        with sqlite3.connect(tmp_path / "state" / DB_FILENAME) as conn:
            conn.execute("PRAGMA user_version = 8")
    else:
        where = url
        c = await asyncpg.connect(url)
        await c.execute("UPDATE schema_version SET version = 8")
        await c.close()
    before = await everything(tmp_path, url)
    warnings, intervals = await checked(load(tmp_path, url))
    assert warnings == [f"{where}: schema version 8; `newsbot run` will migrate it to 9 "
                        "(state not compared)"]
    assert intervals == INTERVALS          # hints and intervals are read from version 8 on
    assert await everything(tmp_path, url) == before


async def test_nothing_stored_no_warning(
        tmp_path: Path, store_server: PostgresServer | None) -> None:
    url = None if store_server is None else await store_server.new_database()
    assert await checked(load(tmp_path, url)) == ([], CONFIGURED)
    if url is None:
        assert not (tmp_path / "state" / DB_FILENAME).exists()
    else:
        assert await everything(tmp_path, url) == {}       # no table made, not even the version's


async def test_an_unreachable_database_is_one_warning_without_its_password(
        tmp_path: Path, postgres: PostgresServer) -> None:
    # Nobody listens on the port: refused at once.
    refused = f"postgresql://newsbot:s3cret-pw@127.0.0.1:{free_port()}/newsbot"
    result = await asyncio.to_thread(check_config, tmp_path, refused)
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    [warning] = result.stderr.splitlines()
    assert warning.startswith("warning: cannot read the state database "
                              f"{refused.replace('s3cret-pw', '***')}: "), warning
    assert warning.endswith("check that the server runs and that storage.url (host, port) "
                            "points at it (state not compared)"), warning
    assert result.stdout.splitlines()[1:] == [f"  {name}: {why}" for name, why in CONFIGURED]

    # A server that answers, without the database.
    missing = postgres.url("nowhere").replace("newsbot@", "newsbot:s3cret-pw@")
    warnings, intervals = await checked(load(tmp_path, missing))
    assert intervals == CONFIGURED
    [warning] = warnings
    assert "s3cret-pw" not in warning
    assert warning.startswith("cannot read the state database "
                              f"{missing.replace('s3cret-pw', '***')}: "), warning
    assert "create the database first" in warning

    # A server that accepts the connection and never answers: given up after the short
    # connect timeout, once for both readers.
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        mute = f"postgresql://newsbot:s3cret-pw@127.0.0.1:{port}/newsbot"
        warnings, intervals = await checked(load(tmp_path, mute))
    finally:
        server.close()
        for writer in accepted:
            writer.close()
    assert intervals == CONFIGURED
    assert warnings == [f"cannot read the state database {mute.replace('s3cret-pw', '***')}: "
                        "TimeoutError; check that the server runs and that storage.url "
                        "(host, port) points at it (state not compared)"]
    assert len(accepted) == 1


_PROBE = """
import json, sys
from bot.cli import main
code = main(["check-config", "-c", sys.argv[1]])
print(json.dumps([code, [m for m in ("asyncpg", "bot.store.postgres") if m in sys.modules]]))
"""


async def test_a_sqlite_configuration_does_not_load_asyncpg(tmp_path: Path) -> None:
    store, _ = await open_state(tmp_path, None)
    await disagreeing_state(store)
    await store.aclose()
    (tmp_path / "c.yaml").write_text(config_text(None))
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _PROBE, str(tmp_path / "c.yaml")], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TOKEN": "t0ken-value", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "warning: feed old: has stored state" in result.stderr       # the state was read
    assert json.loads(result.stdout.splitlines()[-1]) == [0, []]
