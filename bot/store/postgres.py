"""The bot's state in PostgreSQL, shared by several instances (asyncpg).

The same protocol and the same behaviour as SqliteStore (bot.store.sqlite), method by
method, with its pure helpers. What differs is how atomicity is kept: SqliteStore's
calls never yield to the loop and it is its database's only writer, so a call is atomic
by construction; here several processes call at once, so every call is one transaction,
and every read-modify-write keeps its invariant with the database's own means: a row
lock (claim_next: the target's next row ``FOR UPDATE SKIP LOCKED``), an upsert whose
condition is evaluated on the locked row (take_lease), a unique key (take_once), or a
conditional UPDATE (mark_attempt only under a live claim).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from bot.errors import StorageError
from bot.model import Delivery, Message, Target, delivery_key
from bot.store.schema_pg import MIGRATIONS_PG, SCHEMA_VERSION_PG
from bot.store.sqlite import (
    _CARRIED_KEY,
    WRITE_BEHIND_MAX,
    WRITE_BEHIND_SECONDS,
    _delivery,
    _link,
    _message_json,
    _NotModified,
    _split_statements,
    _title,
)
from bot.store.types import (
    RECENT_PER_FEED,
    Correction,
    DigestItem,
    FeedState,
    Lease,
    MediaRow,
    NewDelivery,
    PollOutcome,
    RecentEntry,
    RoomFeed,
    RoomFeedSettings,
    Subscriber,
)

log = logging.getLogger(__name__)

# Taken (for its transaction) by whoever migrates: instances starting together migrate
# one after the other, and the later ones find nothing to do.
_MIGRATION_LOCK = 0x6E657773626F74      # "newsbot"
CONNECT_TIMEOUT = 10.0
# A transaction of ours is a few statements sent at once: one left open this long belongs
# to an instance that stopped (frozen, or its machine gone while its connection lingers).
# The server then ends its session, so the rows it locked (a claim being taken) go to the
# others instead of waiting for it (milliseconds, as PostgreSQL takes it).
IDLE_IN_TRANSACTION = "10000"
CLOSE_TIMEOUT = 10.0

# As SqliteStore's, with PostgreSQL's parameters. Guarded by last_fetch: a poll recorded
# behind never overwrites a newer fetch (another instance's, or a later write of this
# one that committed first: here a flush and a later call may run at once).
_NOT_MODIFIED = ("UPDATE feed_state SET last_fetch = $1, last_success = $2, "
                 "last_error = NULL, failures = 0, next_fetch = $3, "
                 "etag = COALESCE($4, etag), last_modified = COALESCE($5, last_modified) "
                 "WHERE name = $6 AND (last_fetch IS NULL OR last_fetch <= $1)")
_FORGET_WORDS = ("UPDATE outbox SET message = NULL, payload = NULL WHERE key = $1 AND "
                 "kind IN ('reply', 'goodbye', 'welcome')")
_COLUMNS = ("key, feed, entry_id, room, message, payload, created_at, first_attempt_at, "
            "attempts, kind, subject, failures, network")
_ROW = f"SELECT {_COLUMNS} FROM outbox"
_SUBSCRIBER = (
    "SELECT s.user_id, s.dm_room, s.digest, s.language, s.digest_due, "
    "COALESCE(array_agg(f.feed ORDER BY f.feed) FILTER (WHERE f.feed IS NOT NULL), "
    "'{}'::text[]) FROM subscriber s LEFT JOIN subscription f ON f.user_id = s.user_id")
_CONNECTION_LOST = ("the database server cannot be reached or closed the connection "
                    "(nothing was half-written: the transaction was rolled back); check "
                    "that it runs and that storage.url points at it")


def masked(url: str) -> str:
    """The URL as it may be shown: without its password (in the address or a parameter)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        # Whatever the password holds (even what would end it unencoded), all between the
        # user's ':' and the last '@' is hidden, before anything tries to parse it.
        userinfo, _, host = rest.rpartition("@")
        if ":" in userinfo:
            url = f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password not in (None, "***"):
            userinfo, _, hostinfo = netloc.rpartition("@")
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
        query = urlencode([(k, "***" if k.lower() == "password" else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                          safe="*")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "the PostgreSQL URL (unreadable)"


def _text(value: str) -> str:
    """PostgreSQL's text cannot hold NUL (SQLite's can), and a feed's or a person's words
    may (a JSON Feed's "\u0000"): stored as U+FFFD instead, the same way in every query,
    so an id holding one is still one id, seen once."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _texts(values: Iterable[str | None]) -> list[str | None]:
    # Arrays bypass the connection's text codec (_init_connection).
    return [None if v is None else _text(v) for v in values]


async def _init_connection(c: asyncpg.Connection) -> None:
    await c.set_type_codec("text", schema="pg_catalog", encoder=_text, decoder=str,
                           format="text")


def _status_count(status: str) -> int:
    """The row count of a command's status ("UPDATE 3", "INSERT 0 1", "DELETE 0")."""
    return int(status.rsplit(" ", 1)[-1])


def _hint(exc: BaseException) -> str:
    code = getattr(exc, "sqlstate", None) or ""
    if code == "53100" or code.startswith("53"):
        return ("the database server is out of disk space or memory: free some; nothing was "
                "half-written (the transaction was rolled back)")
    if code == "25006":
        return ("the database is read-only (a standby, or default_transaction_read_only): "
                "storage.url must point at the primary")
    if code.startswith("28"):
        return "check the user and password of storage.url"
    if code == "3D000":
        return "create the database first (createdb), or fix its name in storage.url"
    if code == "42501":
        return "the user needs the right to create and write tables in this database"
    if code.startswith(("08", "57")) or not code:
        return _CONNECTION_LOST
    return "check the database server and its log"


def _storage_error(label: str, exc: BaseException, secret: str | None, *,
                   opening: bool = False) -> StorageError:
    text = str(exc) or type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    hint = _hint(exc)
    if isinstance(exc, ValueError) and not isinstance(exc, asyncpg.PostgresError):
        hint = "storage.url must read postgresql://user@host[:port]/database"
    elif opening and hint == _CONNECTION_LOST:
        hint = "check that the server runs and that storage.url (host, port) points at it"
    return StorageError(f"state database {label}: {text}; {hint}")


# What an asyncpg call raises when the database fails (not when the bot passes it a
# wrong value: asyncpg's DataError for a bad argument is a bug, and stays one). A
# connection asyncpg finds in a state it cannot go on from (InternalClientError: seen in
# a process frozen past the server's idle-in-transaction timeout, then woken) is one too:
# the bot stops with the database named, for its supervisor to restart it.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
              OSError, TimeoutError)


class PostgresStore:
    """The Store protocol (bot.store.base) on a PostgreSQL database several instances
    share. Each call is one transaction on a connection of the pool.

    Unchanged polls may be written behind (``record_not_modified(later=True)``), as in
    SqliteStore: they wait in memory (reads of this instance see them), and are written
    together about a second later, or when ``aclose`` is awaited."""

    shared = True

    def __init__(self, pool: asyncpg.Pool, label: str, secret: str | None = None) -> None:
        self._pool = pool
        self.label = label          # the URL without its password: for messages
        self._secret = secret
        self._waiting: dict[str, _NotModified] = {}
        self._flushing: dict[str, _NotModified] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_failed = False
        self._closed = False

    # -- opening -----------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresStore:
        """Connect (a pool of up to ``max_size`` connections) and bring the schema up to
        date. StorageError, without the password, when that fails."""
        label = masked(url)
        try:
            secret = urlsplit(url).password
        except ValueError:
            secret = None
        try:
            pool = await asyncpg.create_pool(
                url, min_size=min_size, max_size=max_size, timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": "newsbot",
                                 "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION},
                init=_init_connection)
        except (*_DB_ERRORS, ValueError) as exc:
            raise _storage_error(label, exc, secret, opening=True) from None
        store = cls(pool, label, secret)
        try:
            await store._migrate()
        except BaseException:
            pool.terminate()
            raise
        return store

    async def _migrate(self) -> None:
        async with self._transaction() as c:
            await c.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            # Written only when there is something to do: an up-to-date database opens
            # read-only too (and then refuses the first write, with a hint).
            if await c.fetchval("SELECT to_regclass('schema_version')") is None:
                await c.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            version = await c.fetchval("SELECT version FROM schema_version")
            if version is None:
                version = 0
                await c.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > SCHEMA_VERSION_PG:
                raise StorageError(
                    f"state database {self.label} has schema version {version}, newer than "
                    f"this newsbot understands ({SCHEMA_VERSION_PG}); upgrade newsbot")
            # All steps in one transaction: PostgreSQL's DDL is transactional, so a failed
            # step leaves the database as it was.
            for number in range(version, SCHEMA_VERSION_PG):
                for statement in _split_statements(MIGRATIONS_PG[number]):
                    await c.execute(statement)
                await c.execute("UPDATE schema_version SET version = $1", number + 1)
                log.info("state database migrated to schema version %d", number + 1)

    async def schema_version(self) -> int:
        async with self._transaction() as c:
            return int(await c.fetchval("SELECT version FROM schema_version"))

    def close(self) -> None:
        """Close at once (the protocol's synchronous close): unchanged polls still waiting
        are not written (``aclose`` writes them)."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        if self._waiting or self._flushing:
            log.error("state database %s closed at once; the last unchanged polls were not "
                      "recorded", self.label)
        self._pool.terminate()

    async def aclose(self) -> None:
        """Write what waits, then close the connections gracefully."""
        if self._closed:
            return
        try:
            await self.flush()
        except StorageError as exc:
            # Only times of unchanged polls are lost: the next start polls those feeds
            # once more, with their validators.
            log.error("%s; the last unchanged polls were not recorded", exc)
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT)
        except _DB_ERRORS:
            self._pool.terminate()

    # -- write-behind of unchanged polls ------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    async def flush(self) -> None:
        """Write the unchanged polls waiting in memory, now."""
        self._cancel_timer()
        task = self._flush_task
        if task is not None:
            # The background flush in flight (its failure is its own to report).
            with contextlib.suppress(StorageError):
                await task
        await self._write_waiting()

    def _flush_due(self) -> None:
        self._flush_timer = None
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._background_flush())

    async def _background_flush(self) -> None:
        # Awaited by flush() and aclose(); it never raises (the next write meets the error).
        try:
            await self._write_waiting()
        except StorageError as exc:
            self._flush_failed = True
            log.warning("%s; retried with the next write", exc)
        finally:
            self._flush_task = None
            if self._waiting and not self._flush_failed and self._flush_timer is None:
                # Recorded while this flush ran.
                self._flush_timer = asyncio.get_running_loop().call_later(
                    WRITE_BEHIND_SECONDS, self._flush_due)

    async def _write_waiting(self) -> None:
        if not self._waiting:
            return
        # Taken out before the first await: records made meanwhile wait for the next flush.
        batch, self._waiting = self._waiting, {}
        self._flushing = batch
        try:
            async with self._transaction() as c:
                await c.executemany(_NOT_MODIFIED, [w.row(feed) for feed, w in batch.items()])
        except BaseException:
            for feed, record in batch.items():
                newer = self._waiting.get(feed)
                self._waiting[feed] = record if newer is None else newer.after(record)
            raise
        else:
            self._flush_failed = False
        finally:
            self._flushing = {}

    def _unwritten(self, feed: str) -> _NotModified | None:
        return self._waiting.get(feed) or self._flushing.get(feed)

    # -- transactions ------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self, *, readonly: bool = False
                           ) -> AsyncIterator[asyncpg.Connection]:
        """One connection of the pool, in one transaction; the database's errors become
        StorageError (with what to do), a rollback having undone everything."""
        try:
            async with self._pool.acquire() as c, c.transaction(readonly=readonly):
                yield c
        except _DB_ERRORS as exc:
            raise _storage_error(self.label, exc, self._secret) from exc

    # -- feeds -------------------------------------------------------------------------

    async def ensure_feed(self, name: str, configured_url: str) -> FeedState:
        """The feed's state, created on first sight. A changed config URL replaces the
        stored one (and its validators) but keeps everything seen: identity is the name."""
        async with self._transaction() as c:
            # Two instances starting together: one inserts, the other finds it.
            await c.execute("INSERT INTO feed_state (name, url, configured_url) "
                            "VALUES ($1, $2, $2) ON CONFLICT (name) DO NOTHING",
                            name, configured_url)
            stored = await c.fetchval("SELECT configured_url FROM feed_state WHERE name = $1 "
                                      "FOR UPDATE", name)
            if stored != configured_url:
                # A new address is also how an operator revives a feed that was gone.
                await c.execute(
                    "UPDATE feed_state SET url = $1, configured_url = $1, etag = NULL, "
                    "last_modified = NULL, disabled = NULL, failures = 0, last_error = NULL, "
                    "next_fetch = NULL, hints = NULL WHERE name = $2", configured_url, name)
            state = await self._feed_state(c, name)
        assert state is not None
        return state

    async def feed_state(self, name: str) -> FeedState | None:
        async with self._transaction(readonly=True) as c:
            return await self._feed_state(c, name)

    async def _feed_state(self, c: asyncpg.Connection, name: str) -> FeedState | None:
        row = await c.fetchrow(
            "SELECT name, url, configured_url, etag, last_modified, body_hash, initialized, "
            "title, last_fetch, last_success, last_error, failures, next_fetch, disabled, "
            "hints FROM feed_state WHERE name = $1", name)
        if row is None:
            return None
        state = FeedState(name=row[0], url=row[1], configured_url=row[2], etag=row[3],
                          last_modified=row[4], body_hash=row[5], initialized=bool(row[6]),
                          title=row[7], last_fetch=row[8], last_success=row[9],
                          last_error=row[10], failures=row[11], next_fetch=row[12],
                          disabled=row[13], hints=row[14])
        waiting = self._unwritten(name)
        if waiting is None or (state.last_fetch is not None and state.last_fetch > waiting.now):
            return state        # (a newer fetch is stored: the waiting one will not be)
        return waiting.over(state)

    async def unseen(self, feed: str, entry_ids: Iterable[str]) -> set[str]:
        """Those of ``entry_ids`` never seen in this feed."""
        ids = list(dict.fromkeys(entry_ids))
        if not ids:
            return set()
        async with self._transaction(readonly=True) as c:
            rows = await c.fetch("SELECT entry_id FROM seen WHERE feed = $1 AND "
                                 "entry_id = ANY($2::text[])", feed, _texts(ids))
        seen = {r[0] for r in rows}
        return {i for i in ids if _text(i) not in seen}

    async def record_poll(self, outcome: PollOutcome) -> list[str]:
        """Commit a successful poll atomically. Returns the rooms that got new deliveries."""
        feed, now = outcome.feed, outcome.now
        async with self._transaction() as c:
            if outcome.seen_entry_ids:
                await c.execute(
                    "INSERT INTO seen (feed, entry_id, seen_at) SELECT $1::text, e, $3::float8 "
                    "FROM unnest($2::text[]) AS e ON CONFLICT DO NOTHING",
                    feed, _texts(outcome.seen_entry_ids), now)
            rooms = await self._enqueue(c, feed, outcome.deliveries, now)
            if outcome.recent:
                await self._remember_recent(c, feed, outcome.recent, now)
            if outcome.digest:
                # Only for people who still follow the feed (a `forget me` during the poll).
                await c.executemany(
                    "INSERT INTO digest_item (user_id, feed, entry_id, title, link, published, "
                    "added_at) SELECT $1::text, $2::text, $3::text, $4::text, $5::text, "
                    "$6::float8, $7::float8 WHERE EXISTS (SELECT 1 FROM subscription s JOIN "
                    "subscriber p ON p.user_id = s.user_id WHERE s.user_id = $1 AND "
                    "s.feed = $2 FOR SHARE OF p) ON CONFLICT DO NOTHING",
                    [(d.user_id, d.feed, d.entry_id, _title(d.title), _link(d.link),
                      d.published, now) for d in outcome.digest])
            if outcome.fingerprints:
                await c.executemany(
                    "INSERT INTO posted_entry (feed, entry_id, fingerprint) VALUES ($1, $2, $3) "
                    "ON CONFLICT (feed, entry_id) DO UPDATE SET fingerprint = excluded.fingerprint",
                    [(feed, entry_id, fp) for entry_id, fp in outcome.fingerprints])
            rooms += [r for r in await self._correct(c, feed, outcome.changed,
                                                     outcome.corrections, now)
                      if r not in rooms]
            if outcome.carried is not None:
                key = _CARRIED_KEY + feed
                if outcome.carried:
                    await c.execute("INSERT INTO kv (key, value) VALUES ($1, $2) ON CONFLICT "
                                    "(key) DO UPDATE SET value = excluded.value",
                                    key, json.dumps(list(outcome.carried)))
                else:
                    await c.execute("DELETE FROM kv WHERE key = $1", key)
            await c.execute(
                "UPDATE feed_state SET etag = $1, last_modified = $2, body_hash = $3, "
                "initialized = 1, title = COALESCE($4, title), url = COALESCE($5, url), "
                "last_fetch = $6, last_success = $6, last_error = NULL, failures = 0, "
                "next_fetch = $7, hints = COALESCE($8, hints) WHERE name = $9",
                outcome.etag, outcome.last_modified, outcome.body_hash, outcome.title,
                outcome.new_url, now, outcome.next_fetch, outcome.hints, feed)
        return rooms

    async def carried(self, feed: str) -> list[str]:
        """Entries an earlier poll chose to post but could not render in time."""
        raw = await self.get(_CARRIED_KEY + feed)
        return list(json.loads(raw)) if raw else []

    async def record_not_modified(self, feed: str, *, now: float, next_fetch: float,
                                  etag: str | None = None, last_modified: str | None = None,
                                  later: bool = False) -> None:
        record = _NotModified(now, next_fetch, etag, last_modified)
        earlier = self._waiting.get(feed)
        self._waiting[feed] = record if earlier is None else record.after(earlier)
        if not later or self._flush_failed or len(self._waiting) >= WRITE_BEHIND_MAX:
            await self._write_waiting()
        elif self._flush_timer is None and self._flush_task is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                WRITE_BEHIND_SECONDS, self._flush_due)

    async def disable_feed(self, feed: str, reason: str, *, now: float,
                           notices: Sequence[NewDelivery]) -> list[str]:
        """Stop polling a feed for good and queue the rooms' notices, in one transaction."""
        async with self._transaction() as c:
            await c.execute("UPDATE feed_state SET disabled = $1, last_fetch = $2, "
                            "last_error = $1, failures = failures + 1, next_fetch = NULL "
                            "WHERE name = $3", reason, now, feed)
            return await self._enqueue(c, feed, notices, now)

    async def enqueue(self, feed: str, deliveries: Sequence[NewDelivery], now: float) -> list[str]:
        """Queue rows that no poll made (a command's answer, a welcome), at once; returns
        the rooms that got new rows (a row already queued under its key is not twice)."""
        async with self._transaction() as c:
            return await self._enqueue(c, feed, deliveries, now)

    async def _enqueue(self, c: asyncpg.Connection, feed: str,
                       deliveries: Sequence[NewDelivery], now: float) -> list[str]:
        if not deliveries:
            return []
        keys = [delivery_key(feed, d.entry_id, d.room) for d in deliveries]
        subjects = [d.subject if d.subject is not None else (
            d.entry_id if d.kind == "item" else None) for d in deliveries]
        # One statement for the whole batch, in order (seq follows the list); a personal
        # copy only while its subscriber follows the feed in that conversation.
        rows = await c.fetch(
            "INSERT INTO outbox (key, feed, entry_id, kind, network, room, subject, message, "
            "created_at) SELECT d.key, $1::text, d.entry_id, d.kind, d.network, d.room, "
            "d.subject, d.message, $2::float8 FROM unnest($3::text[], $4::text[], $5::text[], "
            "$6::text[], $7::text[], $8::text[], $9::text[], $10::text[]) WITH ORDINALITY AS "
            "d(key, entry_id, kind, network, room, subject, message, subscriber, n) "
            "WHERE d.subscriber IS NULL OR EXISTS (SELECT 1 FROM subscription s JOIN "
            "subscriber p ON p.user_id = s.user_id WHERE s.user_id = d.subscriber AND "
            "s.feed = $1 AND p.dm_room = d.room FOR SHARE OF p) ORDER BY d.n "
            "ON CONFLICT (key) DO NOTHING RETURNING key",
            feed, now, keys, _texts(d.entry_id for d in deliveries),
            [d.kind for d in deliveries], [d.network for d in deliveries],
            _texts(d.room for d in deliveries), _texts(subjects),
            [_message_json(d.message) for d in deliveries],
            _texts(d.subscriber for d in deliveries))
        added = {r[0] for r in rows}
        rooms: list[str] = []
        for key, d in zip(keys, deliveries, strict=True):
            if key in added and d.room not in rooms:
                rooms.append(d.room)
        return rooms

    async def _correct(self, c: asyncpg.Connection, feed: str,
                       changed: Sequence[tuple[str, str]], corrections: Sequence[Correction],
                       now: float) -> list[str]:
        """Apply corrections of posted entries; returns the rooms given an edit."""
        edited: set[str] = set()
        edits: list[NewDelivery] = []
        for fix in corrections:
            key = delivery_key(feed, fix.entry_id, fix.room)
            # An encoding made for the old version goes with it.
            status = await c.execute(
                "UPDATE outbox SET message = $1, payload = NULL WHERE key = $2 AND "
                "state = 'pending' AND first_attempt_at IS NULL", _message_json(fix.message), key)
            if _status_count(status):
                continue            # not sent yet: the corrected version goes out instead
            shown = await c.fetchval(
                "SELECT 1 FROM outbox WHERE key = $1 AND (state = 'pending' OR "
                "(state = 'sent' AND event_id IS NOT NULL)) UNION ALL SELECT 1 FROM "
                "entry_event WHERE feed = $2 AND entry_id = $3 AND room = $4 LIMIT 1",
                key, feed, fix.entry_id, fix.room)
            if shown is not None and fix.edit is not None:   # sent, or being sent: edit it
                edits.append(fix.edit)
                edited.add(fix.entry_id)
        if changed:
            await c.executemany("UPDATE posted_entry SET fingerprint = $1 WHERE feed = $2 AND "
                                "entry_id = $3", [(fp, feed, entry_id) for entry_id, fp in changed])
        if edited:
            await c.executemany("UPDATE posted_entry SET edits = edits + 1 WHERE feed = $1 AND "
                                "entry_id = $2", [(feed, entry_id) for entry_id in edited])
        return await self._enqueue(c, feed, edits, now)

    async def record_failure(self, feed: str, error: str, *, now: float, next_fetch: float) -> int:
        """Store a failed poll; returns the number of consecutive failures."""
        async with self._transaction() as c:
            failures = await c.fetchval(
                "UPDATE feed_state SET last_fetch = $1, last_error = $2, "
                "failures = failures + 1, next_fetch = $3 WHERE name = $4 RETURNING failures",
                now, error, next_fetch, feed)
        return int(failures) if failures is not None else 0

    # -- outbox ------------------------------------------------------------------------

    async def next_pending(self, room: str, network: str = "matrix") -> Delivery | None:
        """A target's oldest pending row, without claiming it."""
        async with self._transaction(readonly=True) as c:
            row = await c.fetchrow(f"{_ROW} WHERE network = $1 AND room = $2 AND "
                                   "state = 'pending' ORDER BY seq LIMIT 1", network, room)
        return None if row is None else _delivery(row)

    async def claim_next(self, target: Target, *, owner: str, now: float,
                         lease: float) -> Delivery | None:
        """Claim the target's next row for ``lease`` seconds. None when it has none, or
        when that row is claimed by another owner whose claim has not lapsed, or is being
        claimed or written by another transaction this very moment: a target's rows are
        sent one at a time, in order, by one worker."""
        where = "WHERE network = $1 AND room = $2 AND state = 'pending'"
        async with self._transaction() as c:
            head = await c.fetchrow(f"SELECT key, kind FROM outbox {where} ORDER BY seq LIMIT 1",
                                    target.network, target.address)
            if head is None:
                return None
            key = head[0]
            if head[1] != "image":
                # A command's answer goes first (but never between an item and its
                # picture); the rows of feeds keep their order.
                key = await c.fetchval(f"SELECT key FROM outbox {where} ORDER BY kind NOT IN "
                                       "('reply', 'goodbye'), seq LIMIT 1",
                                       target.network, target.address)
            # Lock that row only: SKIP LOCKED never passes over it to a later one (order),
            # and a row another instance holds locked is theirs for now.
            row = await c.fetchrow(f"SELECT {_COLUMNS}, claimed_by, claimed_until FROM outbox "
                                   "WHERE key = $1 AND state = 'pending' FOR UPDATE SKIP LOCKED",
                                   key)
            if row is None:
                return None
            if row["claimed_by"] not in (None, owner) and (row["claimed_until"] or 0) > now:
                return None
            await c.execute("UPDATE outbox SET claimed_by = $1, claimed_until = $2 "
                            "WHERE key = $3", owner, now + lease, key)
        return _delivery(row)

    async def event_of(self, feed: str, entry_id: str, room: str) -> str | None:
        """The event that shows this feed entry in this room, if it was posted there."""
        async with self._transaction(readonly=True) as c:
            event = await c.fetchval(
                "SELECT event_id FROM entry_event WHERE feed = $1 AND entry_id = $2 AND "
                "room = $3 UNION ALL SELECT event_id FROM outbox WHERE feed = $1 AND "
                "subject = $2 AND room = $3 AND kind = 'item' AND state = 'sent' AND "
                "event_id IS NOT NULL LIMIT 1", feed, entry_id, room)
        return None if event is None else str(event)

    async def record_failure_of(self, key: str, error: str, now: float, *, park_after: int) -> bool:
        """An unforeseen error while delivering a row. After ``park_after`` of them the row
        is parked as 'failed' (True), so the room's later rows go on."""
        async with self._transaction() as c:
            await c.execute("UPDATE outbox SET failures = failures + 1, error = $1 WHERE key = $2",
                            error[:500], key)
            await c.execute("UPDATE outbox SET state = 'failed', sent_at = $1 WHERE key = $2 AND "
                            "failures >= $3", now, key, park_after)
            await c.execute(_FORGET_WORDS + " AND state = 'failed'", key)
            state = await c.fetchval("SELECT state FROM outbox WHERE key = $1", key)
        return state == "failed"

    async def failed_count(self) -> int:
        async with self._transaction(readonly=True) as c:
            return int(await c.fetchval("SELECT COUNT(*) FROM outbox WHERE state = 'failed'"))

    async def pending_rooms(self) -> list[str]:
        async with self._transaction(readonly=True) as c:
            return [r[0] for r in await c.fetch(
                "SELECT DISTINCT room FROM outbox WHERE state = 'pending'")]

    async def pending_count(self, room: str | None = None) -> int:
        async with self._transaction(readonly=True) as c:
            if room is None:
                count = await c.fetchval("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
            else:
                count = await c.fetchval("SELECT COUNT(*) FROM outbox WHERE state = 'pending' "
                                         "AND room = $1", room)
        return int(count)

    async def mark_attempt(self, key: str, now: float, payload: dict[str, Any] | None = None, *,
                           expected: Message | None | Literal[False] = False,
                           owner: str | None = None, lease: float = 0.0) -> bool:
        """Recorded *before* sending, so a crash mid-send is known on restart, with the
        ``payload`` about to be sent (kept: a resend sends the very same). With
        ``expected`` (the message the row held when read, None for a row of an older
        newsbot), only if the row still holds that (a correction may have replaced it
        meanwhile): False, and nothing recorded, when it does not. With ``owner``, only
        while its claim is live (renewed for ``lease`` seconds)."""
        params: list[object] = [now]
        sets = "attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, $1)"
        if payload is not None:
            params.append(json.dumps(payload, ensure_ascii=False))
            sets += f", payload = ${len(params)}"
        params.append(key)
        where = f"key = ${len(params)}"
        if expected is not False:
            params.append(None if expected is None else _message_json(expected))
            where += f" AND message IS NOT DISTINCT FROM ${len(params)}::text"
        if owner is not None:
            params += [now + lease, owner]
            sets += f", claimed_until = ${len(params) - 1}"
            # The claim checked on the row as locked by this UPDATE: another instance's
            # take-over commits before or after, never in between.
            where += f" AND claimed_by = ${len(params)} AND claimed_until > $1"
        async with self._transaction() as c:
            status = await c.execute(f"UPDATE outbox SET {sets} WHERE {where}", *params)
        return _status_count(status) > 0

    async def mark_sent(self, key: str, event_id: str, now: float) -> None:
        async with self._transaction() as c:
            await c.execute("UPDATE outbox SET state = 'sent', event_id = $1, sent_at = $2 "
                            "WHERE key = $3", event_id, now, key)
            await c.execute(_FORGET_WORDS, key)
            # Remember which event shows a feed entry in a room, for edits in place (the
            # outbox row itself is forgotten after 30 days).
            await c.execute("INSERT INTO entry_event (feed, entry_id, room, event_id) "
                            "SELECT feed, subject, room, $1::text FROM outbox WHERE key = $2 "
                            "AND kind = 'item' AND subject IS NOT NULL ON CONFLICT DO NOTHING",
                            event_id, key)

    async def mark_rejected(self, key: str, error: str, now: float) -> None:
        async with self._transaction() as c:
            await c.execute("UPDATE outbox SET state = 'rejected', error = $1, sent_at = $2 "
                            "WHERE key = $3", error[:500], now, key)
            await c.execute(_FORGET_WORDS, key)

    async def prune_sent(self, older_than: float) -> int:
        """Forget delivered rows; ``seen`` alone keeps entries from being posted again."""
        async with self._transaction() as c:
            return _status_count(await c.execute(
                "DELETE FROM outbox WHERE state != 'pending' AND sent_at < $1", older_than))

    async def posted(self, feed: str, entry_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """Of these entries, the posted ones: entry id -> (fingerprint of what was posted
        or last edited, how many times it was edited)."""
        ids = list(dict.fromkeys(entry_ids))
        if not ids:
            return {}
        async with self._transaction(readonly=True) as c:
            rows = await c.fetch("SELECT entry_id, fingerprint, edits FROM posted_entry WHERE "
                                 "feed = $1 AND entry_id = ANY($2::text[])", feed, _texts(ids))
        asked = {_text(i): i for i in ids}
        return {asked.get(entry_id, entry_id): (fp, edits) for entry_id, fp, edits in rows}

    # -- subscribers -------------------------------------------------------------------

    @staticmethod
    def _subscriber_of(row: Any) -> Subscriber:
        return Subscriber(row[0], row[1], row[2], row[3], row[4], tuple(row[5]))

    async def _subscribers(self, where: str, *args: object) -> list[Subscriber]:
        async with self._transaction(readonly=True) as c:
            rows = await c.fetch(f"{_SUBSCRIBER} WHERE {where} GROUP BY s.user_id "
                                 "ORDER BY s.user_id", *args)
        return [self._subscriber_of(r) for r in rows]

    async def subscriber(self, user_id: str) -> Subscriber | None:
        found = await self._subscribers("s.user_id = $1", user_id)
        return found[0] if found else None

    async def subscriber_by_room(self, dm_room: str) -> Subscriber | None:
        # SqliteStore takes the first its index gives; one conversation is one person's.
        found = await self._subscribers("s.dm_room = $1", dm_room)
        return found[0] if found else None

    async def subscribers_of(self, feed: str) -> list[Subscriber]:
        return await self._subscribers(
            "s.user_id IN (SELECT user_id FROM subscription WHERE feed = $1)", feed)

    async def subscriber_count(self, feed: str) -> int:
        async with self._transaction(readonly=True) as c:
            return int(await c.fetchval("SELECT COUNT(*) FROM subscription WHERE feed = $1",
                                        feed))

    async def dm_rooms(self) -> list[str]:
        async with self._transaction(readonly=True) as c:
            return [r[0] for r in await c.fetch("SELECT dm_room FROM subscriber")]

    async def save_subscriber(self, user_id: str, dm_room: str, *, digest: str | None = None,
                              language: str | None = None,
                              digest_due: float | None = None) -> None:
        async with self._transaction() as c:
            await c.execute("INSERT INTO subscriber (user_id, dm_room) VALUES ($1, $2) "
                            "ON CONFLICT (user_id) DO UPDATE SET dm_room = excluded.dm_room",
                            user_id, dm_room)
            if digest is not None:
                await c.execute("UPDATE subscriber SET digest = $1, digest_due = $2 "
                                "WHERE user_id = $3", digest, digest_due, user_id)
            if language is not None:
                await c.execute("UPDATE subscriber SET language = $1 WHERE user_id = $2",
                                language, user_id)

    async def subscribe(self, user_id: str, feeds: Sequence[str]) -> None:
        async with self._transaction() as c:
            await c.execute("INSERT INTO subscription (user_id, feed) SELECT $1::text, f FROM "
                            "unnest($2::text[]) AS f ON CONFLICT DO NOTHING",
                            user_id, _texts(feeds))

    async def unsubscribe(self, user_id: str, feeds: Sequence[str]) -> None:
        async with self._transaction() as c:
            await self._lock_subscriber(c, user_id)
            await c.execute("DELETE FROM subscription WHERE user_id = $1 AND "
                            "feed = ANY($2::text[])", user_id, _texts(feeds))
            await c.execute("DELETE FROM digest_item WHERE user_id = $1 AND "
                            "feed = ANY($2::text[])", user_id, _texts(feeds))

    async def forget_user(self, user_id: str) -> None:
        """Everything stored about a person, gone in one transaction."""
        async with self._transaction() as c:
            await self._lock_subscriber(c, user_id)
            room = await c.fetchval("DELETE FROM subscriber WHERE user_id = $1 "
                                    "RETURNING dm_room", user_id)
            await c.execute("DELETE FROM subscription WHERE user_id = $1", user_id)
            await c.execute("DELETE FROM digest_item WHERE user_id = $1", user_id)
            # The conversation's rows go only if it was this person's alone: someone else
            # whose items go there keeps them.
            if room is not None and await c.fetchval(
                    "SELECT 1 FROM subscriber WHERE dm_room = $1", room) is None:
                await self._forget_room(c, room)

    @staticmethod
    async def _lock_subscriber(c: asyncpg.Connection, user_id: str) -> None:
        # A poll queueing this person's copies holds their row FOR SHARE (another instance,
        # the same moment): the forgetting waits for it and then sees its rows, or goes
        # first and the poll finds nobody to send to. One row, one lock: no deadlock.
        await c.execute("SELECT 1 FROM subscriber WHERE user_id = $1 FOR UPDATE", user_id)

    async def goodbyes_said(self) -> list[str]:
        """Conversations whose goodbye is no longer pending (sent, refused or parked):
        the bot leaves them and forgets them (after a restart in between, too)."""
        async with self._transaction(readonly=True) as c:
            return [r[0] for r in await c.fetch(
                "SELECT DISTINCT room FROM outbox WHERE kind = 'goodbye' AND "
                "state != 'pending'")]

    async def forget_conversation(self, room: str) -> None:
        """What is kept about a private conversation the bot left, unless it is still
        someone's: its rows, its events, its settings."""
        async with self._transaction() as c:
            if await c.fetchval("SELECT 1 FROM subscriber WHERE dm_room = $1", room) is None:
                await self._forget_room(c, room)

    @staticmethod
    async def _forget_room(c: asyncpg.Connection, room: str) -> None:
        for table in ("outbox", "entry_event", "room_settings"):
            await c.execute(f"DELETE FROM {table} WHERE room = $1", room)

    async def due_digests(self, now: float) -> list[Subscriber]:
        return await self._subscribers("s.digest != 'off' AND s.digest_due <= $1", now)

    async def digest_items(self, user_id: str) -> list[DigestItem]:
        async with self._transaction(readonly=True) as c:
            rows = await c.fetch(
                "SELECT user_id, feed, entry_id, title, link, published FROM digest_item "
                "WHERE user_id = $1 ORDER BY COALESCE(published, added_at), added_at", user_id)
        return [DigestItem(*row) for row in rows]

    async def send_digest(self, user_id: str, items: Sequence[DigestItem],
                          deliveries: Sequence[NewDelivery], feed: str, next_due: float,
                          now: float) -> list[str]:
        """Queue one digest (its messages) and forget its items, at once: never twice,
        never lost."""
        async with self._transaction() as c:
            if items:
                await c.executemany("DELETE FROM digest_item WHERE user_id = $1 AND feed = $2 "
                                    "AND entry_id = $3",
                                    [(i.user_id, i.feed, i.entry_id) for i in items])
            await c.execute("UPDATE subscriber SET digest_due = $1 WHERE user_id = $2",
                            next_due, user_id)
            return await self._enqueue(c, feed, deliveries, now)

    # -- media ---------------------------------------------------------------------------

    async def media(self, url: str) -> MediaRow | None:
        async with self._transaction(readonly=True) as c:
            row = await c.fetchrow("SELECT url, mxc, mimetype, size, width, height "
                                   "FROM media_cache WHERE url = $1", url)
        return None if row is None else MediaRow(*row)

    async def prune_media(self, older_than: float) -> int:
        async with self._transaction() as c:
            return _status_count(await c.execute(
                "DELETE FROM media_cache WHERE fetched_at < $1", older_than))

    async def put_media(self, media: MediaRow, now: float) -> None:
        async with self._transaction() as c:
            await c.execute(
                "INSERT INTO media_cache (url, mxc, mimetype, size, width, height, fetched_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (url) DO UPDATE SET "
                "mxc = excluded.mxc, mimetype = excluded.mimetype, size = excluded.size, "
                "width = excluded.width, height = excluded.height, "
                "fetched_at = excluded.fetched_at",
                media.url, media.mxc, media.mimetype, media.size, media.width, media.height, now)

    # -- recent entries (for `latest`) ---------------------------------------------------

    @staticmethod
    async def _remember_recent(c: asyncpg.Connection, feed: str,
                               entries: Sequence[RecentEntry], now: float) -> None:
        await c.executemany(
            "INSERT INTO recent_entry (feed, entry_id, title, link, published, seen_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (feed, entry_id) DO UPDATE SET "
            "title = excluded.title, link = excluded.link, published = excluded.published",
            [(feed, e.entry_id, _title(e.title), _link(e.link), e.published, now)
             for e in entries])
        await c.execute(
            "DELETE FROM recent_entry WHERE feed = $1 AND entry_id NOT IN (SELECT entry_id "
            "FROM recent_entry WHERE feed = $1 ORDER BY COALESCE(published, seen_at) DESC "
            "LIMIT $2)", feed, RECENT_PER_FEED)

    async def latest(self, feeds: Sequence[str], count: int) -> list[RecentEntry]:
        """The newest ``count`` entries of these feeds, newest first."""
        if not feeds:
            return []
        async with self._transaction(readonly=True) as c:
            rows = await c.fetch(
                "SELECT feed, entry_id, title, link, published FROM recent_entry "
                "WHERE feed = ANY($1::text[]) ORDER BY COALESCE(published, seen_at) DESC "
                "LIMIT $2", _texts(feeds), count)
        return [RecentEntry(*row) for row in rows]

    # -- what moderators set -------------------------------------------------------------

    async def room_feeds(self) -> list[RoomFeed]:
        async with self._transaction(readonly=True) as c:
            rows = await c.fetch("SELECT name, url, room, interval, added_by, added_at "
                                 "FROM room_feed ORDER BY added_at")
        return [RoomFeed(*row) for row in rows]

    async def add_room_feed(self, feed: RoomFeed) -> None:
        async with self._transaction() as c:
            await c.execute("INSERT INTO room_feed (name, url, room, interval, added_by, "
                            "added_at) VALUES ($1, $2, $3, $4, $5, $6)", feed.name, feed.url,
                            feed.room, feed.interval, feed.added_by, feed.added_at)

    async def remove_room_feed(self, name: str) -> None:
        """Forget the subscription and its settings; ``seen`` stays, so adding the feed
        again later does not repost what the room already had."""
        async with self._transaction() as c:
            await c.execute("DELETE FROM room_feed WHERE name = $1", name)
            await c.execute("DELETE FROM feed_room_settings WHERE feed = $1", name)
            await c.execute("DELETE FROM feed_settings WHERE feed = $1", name)
            await c.execute("DELETE FROM kv WHERE key = $1", _CARRIED_KEY + name)
            await c.execute("DELETE FROM outbox WHERE feed = $1 AND state = 'pending'", name)

    async def feed_room_settings(self, feed: str) -> dict[str, RoomFeedSettings]:
        async with self._transaction(readonly=True) as c:
            rows = await c.fetch("SELECT room, paused, include, exclude FROM "
                                 "feed_room_settings WHERE feed = $1", feed)
        return {room: RoomFeedSettings(bool(paused), tuple(json.loads(inc)),
                                       tuple(json.loads(exc)))
                for room, paused, inc, exc in rows}

    async def set_feed_room_settings(self, feed: str, room: str,
                                     settings: RoomFeedSettings) -> None:
        async with self._transaction() as c:
            await c.execute(
                "INSERT INTO feed_room_settings (feed, room, paused, include, exclude) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (feed, room) DO UPDATE SET "
                "paused = excluded.paused, include = excluded.include, "
                "exclude = excluded.exclude",
                feed, room, int(settings.paused), json.dumps(list(settings.include)),
                json.dumps(list(settings.exclude)))

    async def feed_interval(self, feed: str) -> float | None:
        # Read at every poll, not cached: another instance may have set it (a primary-key
        # lookup, small beside the poll it schedules).
        async with self._transaction(readonly=True) as c:
            return await c.fetchval("SELECT interval FROM feed_settings WHERE feed = $1",
                                    feed)

    async def set_feed_interval(self, feed: str, interval: float) -> None:
        async with self._transaction() as c:
            await c.execute("INSERT INTO feed_settings (feed, interval) VALUES ($1, $2) "
                            "ON CONFLICT (feed) DO UPDATE SET interval = excluded.interval",
                            feed, interval)
            await c.execute("UPDATE room_feed SET interval = $1 WHERE name = $2",
                            interval, feed)

    async def room_language(self, room: str) -> str | None:
        async with self._transaction(readonly=True) as c:
            return await c.fetchval(
                "SELECT language FROM room_settings WHERE room = $1", room)

    async def set_room_language(self, room: str, language: str) -> None:
        async with self._transaction() as c:
            await c.execute("INSERT INTO room_settings (room, language) VALUES ($1, $2) "
                            "ON CONFLICT (room) DO UPDATE SET language = excluded.language",
                            room, language)

    # -- leases (several instances) ------------------------------------------------------

    async def take_lease(self, name: str, owner: str, *, now: float, duration: float) -> bool:
        # The WHERE is evaluated on the conflicting row, locked: of two instances taking
        # a lapsed lease at once, the second sees the first's and is refused.
        async with self._transaction() as c:
            taken = await c.fetchval(
                "INSERT INTO lease (name, owner, until) VALUES ($1, $2, $3) ON CONFLICT (name) "
                "DO UPDATE SET owner = excluded.owner, until = excluded.until "
                "WHERE lease.owner = excluded.owner OR lease.until <= $4 RETURNING 1",
                name, owner, now + duration, now)
        return taken is not None

    async def release_lease(self, name: str, owner: str) -> None:
        async with self._transaction() as c:
            await c.execute("DELETE FROM lease WHERE name = $1 AND owner = $2", name, owner)

    async def leases(self, now: float) -> list[Lease]:
        async with self._transaction(readonly=True) as c:
            rows = await c.fetch("SELECT name, owner, until FROM lease WHERE until > $1 "
                                 "ORDER BY name", now)
        return [Lease(*row) for row in rows]

    async def take_once(self, key: str, owner: str, now: float) -> bool:
        async with self._transaction() as c:
            taken = await c.fetchval("INSERT INTO taken (key, owner, taken_at) VALUES "
                                     "($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
                                     key, owner, now)
        return taken is not None

    async def prune_taken(self, older_than: float) -> int:
        async with self._transaction() as c:
            return _status_count(await c.execute("DELETE FROM taken WHERE taken_at < $1",
                                                 older_than))

    # -- small facts -------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        async with self._transaction(readonly=True) as c:
            value = await c.fetchval("SELECT value FROM kv WHERE key = $1", key)
        return None if value is None else str(value)

    async def put(self, key: str, value: str) -> None:
        async with self._transaction() as c:
            await c.execute("INSERT INTO kv (key, value) VALUES ($1, $2) "
                            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value)
