"""Copying a SQLite state into PostgreSQL (``newsbot storage migrate``), so that a
deployment switches to a shared database losing nothing and reposting nothing.

Both stores are first opened as the bot opens them, so each is migrated to this newsbot's
schema version; the copy then runs in one PostgreSQL transaction (all or nothing), table
by table, every table of the schema, columns named from the source, rows streamed in
chunks (bounded memory for any size of state). The target must hold no state: two states
are never merged. What belongs to a running instance is not copied: the claims on outbox
rows and the leases (none runs on the new database yet), and the Matrix sync token is
kept under the key of the device that owns the storage directory (a shared store keeps
one per device), or dropped when that device is unknown (the first sync then starts
afresh, and commands sent before the start are never answered late).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from bot.config import MatrixConfig
from bot.errors import StorageError
from bot.store.postgres import (
    _DB_ERRORS,
    CONNECT_TIMEOUT,
    PostgresStore,
    _storage_error,
    _text,
    masked,
)
from bot.store.sqlite import DB_FILENAME, SqliteStore
from bot.transport.matrix.session import SESSION_FILENAME, load_saved_session
from bot.transport.matrix.sync import SYNC_TOKEN_KEY

log = logging.getLogger(__name__)

CHUNK = 1000
# Held by running instances, and none runs on the new database yet.
NOT_COPIED = ("lease",)
_CLEARED = {"outbox": ("claimed_by", "claimed_until")}
_SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True, slots=True)
class Transfer:
    """What was copied: rows per table (in copy order), and what to know about it."""

    source: Path            # the SQLite file
    target: str             # the URL without its password
    version: int
    rows: dict[str, int]
    pending: int            # outbox rows still to send
    notes: tuple[str, ...]


def sqlite_file(spec: str) -> Path:
    """The state file ``--from`` names: ``sqlite:PATH`` or ``PATH``, the storage directory
    (``storage.path``) or the newsbot.sqlite3 file in it. StorageError saying what is
    wrong otherwise."""
    raw = spec.removeprefix("sqlite:")
    if "://" in raw:
        raise StorageError(f"--from {raw!r}: the source is a SQLite state, named "
                           "sqlite:PATH (the storage directory, storage.path, or the "
                           f"{DB_FILENAME} file in it)")
    path = Path(raw).expanduser()
    if path.is_dir():
        file = path / DB_FILENAME
        if not file.is_file():
            raise StorageError(f"{path}: a directory without {DB_FILENAME}: no newsbot "
                               "state there (sqlite:PATH names the storage directory, "
                               "storage.path, or the file itself)")
        path = file
    elif not path.exists():
        raise StorageError(f"{path}: no such file or directory (sqlite:PATH names the "
                           f"storage directory, storage.path, or the {DB_FILENAME} file)")
    elif path.name != DB_FILENAME:
        raise StorageError(f"{path}: not newsbot's state file ({DB_FILENAME}); name the "
                           "storage directory or that file")
    try:
        with path.open("rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StorageError(f"{path}: cannot read: {exc.strerror}") from exc
    if header != _SQLITE_HEADER:
        raise StorageError(f"{path}: not a SQLite database")
    return path


def session_device(directory: Path, matrix: MatrixConfig | None) -> str | None:
    """The Matrix device the state in ``directory`` belongs to, as the bot would log in:
    the configured token's device, else the session a password login saved there (with
    no configuration, the session file's device as it is)."""
    if matrix is not None:
        if matrix.access_token:
            return matrix.device_id or None
        session = load_saved_session(directory, matrix)
        return None if session is None else session.device_id
    try:
        data = json.loads((directory / SESSION_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    device = data.get("device_id") if isinstance(data, dict) else None
    return device if isinstance(device, str) and device else None


async def copy_state(source: Path, url: str, *, device_id: str | None,
                     chunk: int = CHUNK) -> Transfer:
    """Copy the SQLite state file ``source`` into the empty PostgreSQL database at ``url``,
    in one transaction. StorageError (never showing the password) when it cannot."""
    label = masked(url)
    secret = _password(url)
    # Opened as the bot opens them: each brought to this newsbot's schema version.
    SqliteStore.open(source.parent).close()
    await (await PostgresStore.open(url, max_size=1)).aclose()
    reader = _read_only(source)
    try:
        # One read transaction: a consistent snapshot of the source.
        reader.execute("BEGIN")
        try:
            conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT,
                                         server_settings={"application_name": "newsbot"})
        except (*_DB_ERRORS, ValueError) as exc:
            raise _storage_error(label, exc, secret, opening=True) from None
        try:
            return await _copy(reader, conn, source, label, device_id, chunk)
        except _DB_ERRORS as exc:
            raise _storage_error(label, exc, secret) from exc
        finally:
            await conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"state database {source}: {exc}") from exc
    finally:
        reader.close()


def _read_only(source: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"state database {source}: {exc}") from exc


def _password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    # Shown in no message, as the URL holds it or as asyncpg reads it from the environment.
    return unquote(password or "") or os.environ.get("PGPASSWORD") or None


async def _copy(reader: sqlite3.Connection, conn: asyncpg.Connection, source: Path,
                label: str, device_id: str | None, chunk: int) -> Transfer:
    version = reader.execute("PRAGMA user_version").fetchone()[0]
    tables = sorted(r[0] for r in reader.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
    notes: list[str] = []
    rows: dict[str, int] = {}
    pending = 0
    async with conn.transaction():
        target_version = await conn.fetchval("SELECT version FROM schema_version")
        if target_version != version:
            raise StorageError(f"{source} is at schema version {version} and {label} at "
                               f"{target_version}: both must be at the same version (run "
                               "the same newsbot on both)")
        columns = await _target_columns(conn)
        if sorted(columns) != tables:
            # The same migrations make the same tables: a difference is a bug of newsbot.
            raise StorageError(f"{source} and {label} do not hold the same tables "
                               f"({', '.join(sorted(set(tables) ^ set(columns)))})")
        # Nobody writes meanwhile (an instance started too soon waits for the commit),
        # and a state already there is found and refused, never merged.
        await conn.execute(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")
        held = [t for t in tables if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {t})")]
        if held:
            raise StorageError(
                f"{label} already holds a state (rows in {', '.join(held)}): storage migrate "
                "copies into an empty database only, never merging two states; name a new "
                "database (createdb), or empty this one if what it holds is worth nothing")
        for table in tables:
            if table in NOT_COPIED:
                continue
            names = [r[1] for r in reader.execute(f"PRAGMA table_info({table})")]
            if sorted(names) != sorted(columns[table]):
                raise StorageError(f"table {table}: {source} and {label} have different "
                                   "columns")
            convert = _converter([columns[table][n] for n in names])
            transform = _transform(table, names, device_id, notes)
            order = " ORDER BY seq" if table == "outbox" else ""
            cursor = reader.execute(f"SELECT {', '.join(names)} FROM {table}{order}")
            count = 0
            while batch := cursor.fetchmany(chunk):
                try:
                    records = [convert(r) for r in transform(batch)]
                except (TypeError, ValueError) as exc:
                    raise StorageError(f"table {table} of {source} holds a value of the "
                                       f"wrong type ({exc}): is the file damaged?") from exc
                if table == "outbox":
                    state = names.index("state")
                    pending += sum(1 for r in records if r[state] == "pending")
                if records:
                    await conn.copy_records_to_table(table, records=records, columns=names)
                count += len(records)
            rows[table] = count
        await _continue_outbox_numbers(reader, conn)
    return Transfer(source, label, version, rows, pending, tuple(notes))


async def _target_columns(conn: asyncpg.Connection) -> dict[str, dict[str, str]]:
    """Every table of the target but its version, with its columns' types."""
    columns: dict[str, dict[str, str]] = {}
    for r in await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name != 'schema_version'"):
        columns.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
    return columns


def _converter(types: Sequence[str]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A source row as the target's columns take it: SQLite does not enforce types, and
    PostgreSQL's text cannot hold NUL (stored as the PostgreSQL store stores it)."""
    kinds: list[Callable[[Any], Any]] = [
        float if t == "double precision" else int if t in ("integer", "bigint") else _as_text
        for t in types]

    def convert(row: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(None if v is None else k(v) for k, v in zip(kinds, row, strict=True))

    return convert


def _as_text(value: Any) -> str:
    return _text(value if isinstance(value, str) else str(value))


def _transform(table: str, names: list[str], device_id: str | None, notes: list[str]
               ) -> Callable[[list[Any]], list[Sequence[Any]]]:
    """What changes on the way: claims are cleared (no instance holds anything yet); the
    sync token goes under its device's key (a shared store keeps one per device)."""
    cleared = [names.index(n) for n in _CLEARED.get(table, ())]
    if cleared:
        def clear(batch: list[Any]) -> list[Sequence[Any]]:
            return [[None if i in cleared else v for i, v in enumerate(r)] for r in batch]
        return clear
    if table == "kv":
        key = names.index("key")

        def rekey(batch: list[Any]) -> list[Sequence[Any]]:
            out: list[Sequence[Any]] = []
            for r in batch:
                if r[key] != SYNC_TOKEN_KEY:
                    out.append(r)
                elif device_id is not None:
                    out.append([f"{SYNC_TOKEN_KEY}.{device_id}" if i == key else v
                                for i, v in enumerate(r)])
                    notes.append(f"the Matrix sync token is kept for device {device_id}")
                else:
                    notes.append("the Matrix sync token was dropped: this storage "
                                 "directory's device is unknown (no session file; pass "
                                 "-c CONFIG for a configured token's device). The first "
                                 "sync starts afresh: nothing is lost, commands sent "
                                 "before the start are not answered")
            return out
        return rekey
    return list


async def _continue_outbox_numbers(reader: sqlite3.Connection, conn: asyncpg.Connection
                                   ) -> None:
    """New outbox rows are numbered after every copied one (and after any number SQLite
    ever gave: AUTOINCREMENT never reuses one)."""
    numbers = [r[0] for r in reader.execute(
        "SELECT MAX(seq) FROM outbox UNION ALL "
        "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'") if r[0] is not None]
    if numbers and max(numbers) > 0:
        await conn.execute("SELECT setval(pg_get_serial_sequence('outbox', 'seq'), $1)",
                           int(max(numbers)))
