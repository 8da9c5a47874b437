"""The bot's state in one SQLite database (WAL mode): feed state, seen entries, outbox, sync token.

Every write that must be atomic with another happens in one transaction: a poll's seen
entries, its outbox rows and the feed's new ETag commit together or not at all, so a crash
at any point either redoes the whole poll or none of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from bot.errors import StorageError
from bot.filemodes import private_dir, private_file, tighten
from bot.model import Delivery, Message, Target, delivery_key
from bot.store.schema import MIGRATIONS, SCHEMA_VERSION
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

DB_FILENAME = "newsbot.sqlite3"


# What is stored of a feed's own words is bounded, whatever the feed sends: a longer
# title is cut, a longer link is not kept (half a link is a broken link).
MAX_STORED_TITLE = 1000
MAX_STORED_LINK = 2048
_CARRIED_KEY = "poll.carried."
# An answer or a welcome, once sent (or refused, or parked), is kept only as the fact that
# it was (so it never goes twice), not with its words nor whom it named.
_FORGET_WORDS = ("UPDATE outbox SET message = NULL, payload = NULL WHERE key = ? AND "
                 "kind IN ('reply', 'goodbye', 'welcome')")


# Unchanged polls recorded with ``later=True`` wait in memory and are written together in
# one transaction: after this many seconds, at this many, with the store's next
# transaction, or when it closes.
WRITE_BEHIND_SECONDS = 1.0
WRITE_BEHIND_MAX = 1000
_NOT_MODIFIED = ("UPDATE feed_state SET last_fetch = ?, last_success = ?, last_error = NULL, "
                 "failures = 0, next_fetch = ?, etag = COALESCE(?, etag), "
                 "last_modified = COALESCE(?, last_modified) WHERE name = ?")
# The same for a poll that brought no validators (a 304): a third cheaper than the above.
_NOT_MODIFIED_TIMES = ("UPDATE feed_state SET last_fetch = ?, last_success = ?, "
                       "last_error = NULL, failures = 0, next_fetch = ? WHERE name = ?")


def _write_waiting(c: sqlite3.Connection, waiting: dict[str, _NotModified]) -> None:
    times, full = [], []
    for feed, w in waiting.items():
        if w.etag is None and w.last_modified is None:
            times.append((w.now, w.now, w.next_fetch, feed))
        else:
            full.append(w.row(feed))
    if times:
        c.executemany(_NOT_MODIFIED_TIMES, times)
    if full:
        c.executemany(_NOT_MODIFIED, full)


@dataclass(slots=True)     # not frozen: made at every unchanged poll, never changed
class _NotModified:
    """An unchanged poll not written yet."""

    now: float
    next_fetch: float
    etag: str | None
    last_modified: str | None

    def row(self, feed: str) -> tuple[float, float, float, str | None, str | None, str]:
        return (self.now, self.now, self.next_fetch, self.etag, self.last_modified, feed)

    def after(self, earlier: _NotModified) -> _NotModified:
        """This one, keeping the validators an earlier unwritten one brought."""
        return replace(self, etag=self.etag if self.etag is not None else earlier.etag,
                       last_modified=self.last_modified if self.last_modified is not None
                       else earlier.last_modified)

    def over(self, state: FeedState) -> FeedState:
        """The stored state as it is once this is written."""
        return replace(state, last_fetch=self.now, last_success=self.now, last_error=None,
                       failures=0, next_fetch=self.next_fetch,
                       etag=self.etag if self.etag is not None else state.etag,
                       last_modified=self.last_modified if self.last_modified is not None
                       else state.last_modified)


def _title(title: str) -> str:
    return title if len(title) <= MAX_STORED_TITLE else title[:MAX_STORED_TITLE - 1] + "…"


def _link(link: str | None) -> str | None:
    return link if link is None or len(link) <= MAX_STORED_LINK else None



def _storage_error(path: Path, exc: sqlite3.Error) -> StorageError:
    text = str(exc)
    if "disk is full" in text or "disk I/O" in text:
        hint = "free some disk space; nothing was half-written (the transaction was rolled back)"
    elif "readonly" in text or "read-only" in text:
        hint = "the storage directory must be writable by the bot"
    elif "not a database" in text or "malformed" in text:
        hint = ("the file is damaged: restore it from a backup, or move it aside to start "
                "afresh (the bot will then treat every feed as new and post only its backfill)")
    else:
        hint = "check the file and its directory"
    return StorageError(f"state database {path}: {text}; {hint}")


class SqliteStore:
    """The Store protocol (bot.store.base) on one SQLite file. Its calls are short and
    run on the event loop's thread, each to its end without yielding: a call is one
    transaction, and nothing else runs in the middle of it.

    Unchanged polls may be written behind (``record_not_modified(later=True)``): each
    transaction writes those waiting first, so no later write is overtaken by an older
    one, and reads see them as if written."""

    shared = False      # one process's alone: SQLite is not for several instances

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._waiting: dict[str, _NotModified] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        # A written-behind flush that failed: the next unchanged poll writes at once
        # and so meets the error itself (the bot stops, as on any write).
        self._flush_failed = False
        # Intervals set by command, by feed, as read or written (None: none set); this
        # store is the only writer of its database.
        self._intervals: dict[str, float | None] = {}

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path) -> SqliteStore:
        try:
            private_dir(directory)
        except OSError as exc:
            raise StorageError(f"cannot create or make private (mode 0700) the storage "
                               f"directory {directory}: "
                               f"{exc.strerror}; it must belong to the bot's user") from exc
        path = directory / DB_FILENAME
        # Subscribers' ids live here: 0600 whatever existed. The file is made before SQLite
        # opens it, and SQLite gives the -wal and -shm files it creates the database's mode;
        # ones left by an older newsbot are tightened.
        journals = [path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal")]
        try:
            private_file(path)
            for journal in journals:
                tighten(journal)
        except OSError as exc:
            raise StorageError(f"state database {path}: {exc.strerror}; the storage "
                               "directory must be writable by the bot") from exc
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _storage_error(path, exc) from exc
        store = cls(conn, path)
        try:
            store._prepare()
            for journal in journals:
                tighten(journal)
        except sqlite3.Error as exc:
            conn.close()
            raise _storage_error(path, exc) from exc
        except OSError as exc:
            conn.close()
            raise StorageError(f"state database {path}: {exc.strerror}") from exc
        return store

    def _prepare(self) -> None:
        c = self._conn
        c.execute("PRAGMA busy_timeout = 5000")
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("SQLite refused WAL mode (%s); continuing in %s mode", self.path, mode)
        # NORMAL in WAL mode: a commit survives a process crash; a power loss may undo the
        # last commits, which the delivery protocol tolerates (a poll is redone, a resend
        # is deduplicated or found in the room's history), and polls cost no fsync.
        c.execute("PRAGMA synchronous = NORMAL")
        c.execute("PRAGMA foreign_keys = ON")
        check = c.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed ({check})")
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"state database {self.path} has schema version {version}, newer than this "
                f"newsbot understands ({SCHEMA_VERSION}); upgrade newsbot")
        for number in range(version, SCHEMA_VERSION):
            with self._transaction():
                for statement in _split_statements(MIGRATIONS[number]):
                    c.execute(statement)
                c.execute(f"PRAGMA user_version = {number + 1}")
            log.info("state database migrated to schema version %d", number + 1)

    def close(self) -> None:
        try:
            self.flush()
        except StorageError as exc:
            # Only times of unchanged polls are lost: the next start polls those feeds
            # once more, with their validators.
            log.error("%s; the last unchanged polls were not recorded", exc)
        finally:
            self._conn.close()

    async def aclose(self) -> None:
        self.close()

    def flush(self) -> None:
        """Write the unchanged polls waiting in memory, now."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._waiting:
            with self._guard(), self._transaction():
                pass        # the transaction writes what waits

    def _flush_due(self) -> None:
        self._flush_timer = None
        try:
            self.flush()
        except StorageError as exc:
            self._flush_failed = True
            log.warning("%s; retried with the next write", exc)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            waiting = self._waiting
            if waiting:
                _write_waiting(c, waiting)
            yield c
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk): a second
            # rollback would fail and hide the real reason.
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        else:
            c.execute("COMMIT")
            if waiting:
                # Nothing ran in between: a store call does not yield to the loop.
                self._waiting = {}
                self._flush_failed = False

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _storage_error(self.path, exc) from exc

    # -- feeds -------------------------------------------------------------------------

    async def ensure_feed(self, name: str, configured_url: str) -> FeedState:
        """The feed's state, created on first sight. A changed config URL replaces the
        stored one (and its validators) but keeps everything seen: identity is the name."""
        with self._guard(), self._transaction() as c:
            row = c.execute("SELECT configured_url FROM feed_state WHERE name = ?",
                            (name,)).fetchone()
            if row is None:
                c.execute("INSERT INTO feed_state (name, url, configured_url) VALUES (?, ?, ?)",
                          (name, configured_url, configured_url))
            elif row[0] != configured_url:
                # A new address is also how an operator revives a feed that was gone.
                c.execute("UPDATE feed_state SET url = ?, configured_url = ?, etag = NULL, "
                          "last_modified = NULL, disabled = NULL, failures = 0, "
                          "last_error = NULL, next_fetch = NULL, hints = NULL WHERE name = ?",
                          (configured_url, configured_url, name))
        state = self._feed_state(name)
        assert state is not None
        return state

    async def feed_state(self, name: str) -> FeedState | None:
        return self._feed_state(name)

    def _feed_state(self, name: str) -> FeedState | None:
        with self._guard():
            row = self._conn.execute(
                "SELECT name, url, configured_url, etag, last_modified, body_hash, initialized, "
                "title, last_fetch, last_success, last_error, failures, next_fetch, disabled, "
                "hints FROM feed_state WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        state = FeedState(name=row[0], url=row[1], configured_url=row[2], etag=row[3],
                          last_modified=row[4], body_hash=row[5], initialized=bool(row[6]),
                          title=row[7], last_fetch=row[8], last_success=row[9],
                          last_error=row[10], failures=row[11], next_fetch=row[12],
                          disabled=row[13], hints=row[14])
        waiting = self._waiting.get(name)
        return state if waiting is None else waiting.over(state)

    def _for_entries(self, select: str, feed: str, ids: list[str]) -> Iterator[Any]:
        """Rows of ``SELECT ... WHERE feed = ? AND entry_id IN (...)`` for these ids, asked
        500 at a time (SQLite bounds the number of parameters)."""
        with self._guard():
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                yield from self._conn.execute(
                    f"{select} WHERE feed = ? AND entry_id IN ({marks})", (feed, *chunk))

    async def unseen(self, feed: str, entry_ids: Iterable[str]) -> set[str]:
        """Those of ``entry_ids`` never seen in this feed."""
        ids = list(dict.fromkeys(entry_ids))
        seen = {r[0] for r in self._for_entries("SELECT entry_id FROM seen", feed, ids)}
        return {i for i in ids if i not in seen}

    async def record_poll(self, outcome: PollOutcome) -> list[str]:
        """Commit a successful poll atomically. Returns the rooms that got new deliveries."""
        with self._guard(), self._transaction() as c:
            c.executemany("INSERT OR IGNORE INTO seen (feed, entry_id, seen_at) VALUES (?, ?, ?)",
                          [(outcome.feed, e, outcome.now) for e in outcome.seen_entry_ids])
            rooms = self._enqueue(c, outcome.feed, outcome.deliveries, outcome.now)
            if outcome.recent:
                self._remember_recent(c, outcome.feed, outcome.recent, outcome.now)
            # Only for people who still follow the feed (a `forget me` during the poll).
            c.executemany(
                "INSERT OR IGNORE INTO digest_item (user_id, feed, entry_id, title, link, "
                "published, added_at) SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM "
                "subscription WHERE user_id = ? AND feed = ?)",
                [(d.user_id, d.feed, d.entry_id, _title(d.title), _link(d.link), d.published,
                  outcome.now, d.user_id, d.feed) for d in outcome.digest])
            c.executemany(
                "INSERT INTO posted_entry (feed, entry_id, fingerprint) VALUES (?, ?, ?) "
                "ON CONFLICT (feed, entry_id) DO UPDATE SET fingerprint = excluded.fingerprint",
                [(outcome.feed, entry_id, fp) for entry_id, fp in outcome.fingerprints])
            rooms += [r for r in self._correct(c, outcome.feed, outcome.changed,
                                               outcome.corrections, outcome.now)
                      if r not in rooms]
            if outcome.carried is not None:
                key = _CARRIED_KEY + outcome.feed
                if outcome.carried:
                    c.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) "
                              "DO UPDATE SET value = excluded.value",
                              (key, json.dumps(list(outcome.carried))))
                else:
                    c.execute("DELETE FROM kv WHERE key = ?", (key,))
            c.execute(
                "UPDATE feed_state SET etag = ?, last_modified = ?, body_hash = ?, "
                "initialized = 1, title = COALESCE(?, title), url = COALESCE(?, url), "
                "last_fetch = ?, last_success = ?, last_error = NULL, failures = 0, "
                "next_fetch = ?, hints = COALESCE(?, hints) WHERE name = ?",
                (outcome.etag, outcome.last_modified, outcome.body_hash, outcome.title,
                 outcome.new_url, outcome.now, outcome.now, outcome.next_fetch,
                 outcome.hints, outcome.feed))
        return rooms

    async def carried(self, feed: str) -> list[str]:
        """Entries an earlier poll chose to post but could not render in time."""
        raw = self._get(_CARRIED_KEY + feed)
        return list(json.loads(raw)) if raw else []

    async def record_not_modified(self, feed: str, *, now: float, next_fetch: float,
                                  etag: str | None = None, last_modified: str | None = None,
                                  later: bool = False) -> None:
        record = _NotModified(now, next_fetch, etag, last_modified)
        earlier = self._waiting.get(feed)
        self._waiting[feed] = record if earlier is None else record.after(earlier)
        if not later or self._flush_failed:
            self.flush()
            return
        if len(self._waiting) >= WRITE_BEHIND_MAX:
            self.flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                WRITE_BEHIND_SECONDS, self._flush_due)

    async def disable_feed(self, feed: str, reason: str, *, now: float,
                     notices: Sequence[NewDelivery]) -> list[str]:
        """Stop polling a feed for good and queue the rooms' notices, in one transaction."""
        with self._guard(), self._transaction() as c:
            c.execute("UPDATE feed_state SET disabled = ?, last_fetch = ?, last_error = ?, "
                      "failures = failures + 1, next_fetch = NULL WHERE name = ?",
                      (reason, now, reason, feed))
            rooms = self._enqueue(c, feed, notices, now)
        return rooms

    async def enqueue(self, feed: str, deliveries: Sequence[NewDelivery], now: float) -> list[str]:
        """Queue rows that no poll made (a command's answer, a welcome), at once; returns
        the rooms that got new rows (a row already queued under its key is not twice)."""
        with self._guard(), self._transaction() as c:
            return self._enqueue(c, feed, deliveries, now)

    def _enqueue(self, c: sqlite3.Connection, feed: str, deliveries: Sequence[NewDelivery],
                 now: float) -> list[str]:
        rooms: list[str] = []
        for d in deliveries:
            if d.subscriber is not None and c.execute(
                    "SELECT 1 FROM subscription JOIN subscriber USING (user_id) WHERE "
                    "user_id = ? AND feed = ? AND dm_room = ?",
                    (d.subscriber, feed, d.room)).fetchone() is None:
                continue
            key = delivery_key(feed, d.entry_id, d.room)
            subject = d.subject if d.subject is not None else (
                d.entry_id if d.kind == "item" else None)
            cur = c.execute(
                "INSERT OR IGNORE INTO outbox (key, feed, entry_id, kind, network, room, "
                "subject, message, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, feed, d.entry_id, d.kind, d.network, d.room, subject,
                 _message_json(d.message), now))
            if cur.rowcount and d.room not in rooms:
                rooms.append(d.room)
        return rooms

    def _correct(self, c: sqlite3.Connection, feed: str, changed: Sequence[tuple[str, str]],
                 corrections: Sequence[Correction], now: float) -> list[str]:
        """Apply corrections of posted entries; returns the rooms given an edit."""
        edited: set[str] = set()
        edits: list[NewDelivery] = []
        for fix in corrections:
            key = delivery_key(feed, fix.entry_id, fix.room)
            # An encoding made for the old version goes with it.
            cur = c.execute("UPDATE outbox SET message = ?, payload = NULL WHERE key = ? AND "
                            "state = 'pending' AND first_attempt_at IS NULL",
                            (_message_json(fix.message), key))
            if cur.rowcount:
                continue            # not sent yet: the corrected version goes out instead
            shown = c.execute(
                "SELECT 1 FROM outbox WHERE key = ? AND (state = 'pending' OR "
                "(state = 'sent' AND event_id IS NOT NULL)) UNION ALL SELECT 1 FROM "
                "entry_event WHERE feed = ? AND entry_id = ? AND room = ? LIMIT 1",
                (key, feed, fix.entry_id, fix.room)).fetchone()
            if shown is not None and fix.edit is not None:   # sent, or being sent: edit it
                edits.append(fix.edit)
                edited.add(fix.entry_id)
        c.executemany("UPDATE posted_entry SET fingerprint = ? WHERE feed = ? AND entry_id = ?",
                      [(fp, feed, entry_id) for entry_id, fp in changed])
        c.executemany("UPDATE posted_entry SET edits = edits + 1 WHERE feed = ? AND "
                      "entry_id = ?", [(feed, entry_id) for entry_id in edited])
        return self._enqueue(c, feed, edits, now)

    async def record_failure(self, feed: str, error: str, *, now: float, next_fetch: float) -> int:
        """Store a failed poll; returns the number of consecutive failures."""
        with self._guard(), self._transaction() as c:
            c.execute("UPDATE feed_state SET last_fetch = ?, last_error = ?, "
                      "failures = failures + 1, next_fetch = ? WHERE name = ?",
                      (now, error, next_fetch, feed))
            row = c.execute("SELECT failures FROM feed_state WHERE name = ?", (feed,)).fetchone()
        return int(row[0]) if row else 0

    # -- outbox ------------------------------------------------------------------------

    _ROW = ("SELECT key, feed, entry_id, room, message, payload, created_at, first_attempt_at, "
            "attempts, kind, subject, failures, network FROM outbox")

    async def next_pending(self, room: str, network: str = "matrix") -> Delivery | None:
        """A target's oldest pending row, without claiming it."""
        with self._guard():
            row = self._conn.execute(
                f"{self._ROW} WHERE network = ? AND room = ? AND state = 'pending' "
                "ORDER BY seq LIMIT 1", (network, room)).fetchone()
        return None if row is None else _delivery(row)

    async def claim_next(self, target: Target, *, owner: str, now: float,
                   lease: float) -> Delivery | None:
        """Claim the target's next row for ``lease`` seconds. None when it has none, or
        when that row is claimed by another owner whose claim has not lapsed: a target's
        rows are sent one at a time, in order, by one worker."""
        with self._guard(), self._transaction() as c:
            where = "WHERE network = ? AND room = ? AND state = 'pending'"
            params = (target.network, target.address)
            row = c.execute(f"{self._ROW} {where} ORDER BY seq LIMIT 1", params).fetchone()
            if row is None:
                return None
            if row[9] != "image":
                # A command's answer goes first (but never between an item and its
                # picture); the rows of feeds keep their order.
                row = c.execute(f"{self._ROW} {where} ORDER BY kind NOT IN "
                                "('reply', 'goodbye'), seq LIMIT 1", params).fetchone()
            claim = c.execute("SELECT claimed_by, claimed_until FROM outbox WHERE key = ?",
                              (row[0],)).fetchone()
            if claim[0] not in (None, owner) and (claim[1] or 0) > now:
                return None
            c.execute("UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE key = ?",
                      (owner, now + lease, row[0]))
        return _delivery(row)

    async def event_of(self, feed: str, entry_id: str, room: str) -> str | None:
        """The event that shows this feed entry in this room, if it was posted there."""
        with self._guard():
            row = self._conn.execute(
                "SELECT event_id FROM entry_event WHERE feed = ? AND entry_id = ? AND room = ? "
                "UNION ALL SELECT event_id FROM outbox WHERE feed = ? AND subject = ? AND "
                "room = ? AND kind = 'item' AND state = 'sent' AND event_id IS NOT NULL "
                "LIMIT 1", (feed, entry_id, room, feed, entry_id, room)).fetchone()
        return None if row is None else str(row[0])

    async def record_failure_of(self, key: str, error: str, now: float, *, park_after: int) -> bool:
        """An unforeseen error while delivering a row. After ``park_after`` of them the row
        is parked as 'failed' (True), so the room's later rows go on."""
        with self._guard(), self._transaction() as c:
            c.execute("UPDATE outbox SET failures = failures + 1, error = ? WHERE key = ?",
                      (error[:500], key))
            c.execute("UPDATE outbox SET state = 'failed', sent_at = ? WHERE key = ? AND "
                      "failures >= ?", (now, key, park_after))
            c.execute(_FORGET_WORDS + " AND state = 'failed'", (key,))
            row = c.execute("SELECT state FROM outbox WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] == "failed"

    async def failed_count(self) -> int:
        with self._guard():
            row = self._conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'failed'").fetchone()
        return int(row[0])

    async def pending_rooms(self) -> list[str]:
        with self._guard():
            return [r[0] for r in self._conn.execute(
                "SELECT DISTINCT room FROM outbox WHERE state = 'pending'")]

    async def pending_count(self, room: str | None = None) -> int:
        with self._guard():
            if room is None:
                row = self._conn.execute(
                    "SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()
            else:
                row = self._conn.execute(
                    "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND room = ?",
                    (room,)).fetchone()
        return int(row[0])

    async def mark_attempt(self, key: str, now: float, payload: dict[str, Any] | None = None, *,
                     expected: Message | None | Literal[False] = False,
                     owner: str | None = None, lease: float = 0.0) -> bool:
        """Recorded *before* sending, so a crash mid-send is known on restart, with the
        ``payload`` about to be sent (kept: a resend sends the very same). With
        ``expected`` (the message the row held when read, None for a row of an older
        newsbot), only if the row still holds that (a correction may have replaced it
        meanwhile): False, and nothing recorded, when it does not."""
        sets = "attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, ?)"
        set_params: list[object] = [now]
        if payload is not None:
            sets += ", payload = ?"
            set_params.append(json.dumps(payload, ensure_ascii=False))
        where = "key = ?"
        where_params: list[object] = [key]
        if expected is not False:
            where += " AND message IS ?"
            where_params.append(None if expected is None else _message_json(expected))
        if owner is not None:
            sets += ", claimed_until = ?"
            set_params.append(now + lease)
            where += " AND claimed_by = ? AND claimed_until > ?"
            where_params += [owner, now]
        params = set_params + where_params
        with self._guard(), self._transaction() as c:
            cur = c.execute(f"UPDATE outbox SET {sets} WHERE {where}", params)
        return cur.rowcount > 0

    async def mark_sent(self, key: str, event_id: str, now: float) -> None:
        with self._guard(), self._transaction() as c:
            c.execute("UPDATE outbox SET state = 'sent', event_id = ?, sent_at = ? WHERE key = ?",
                      (event_id, now, key))
            c.execute(_FORGET_WORDS, (key,))
            # Remember which event shows a feed entry in a room, for edits in place (the
            # outbox row itself is forgotten after 30 days).
            c.execute("INSERT OR IGNORE INTO entry_event (feed, entry_id, room, event_id) "
                      "SELECT feed, subject, room, ? FROM outbox WHERE key = ? "
                      "AND kind = 'item' AND subject IS NOT NULL", (event_id, key))

    async def posted(self, feed: str, entry_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """Of these entries, the posted ones: entry id -> (fingerprint of what was posted
        or last edited, how many times it was edited)."""
        return {entry_id: (fp, edits) for entry_id, fp, edits in self._for_entries(
            "SELECT entry_id, fingerprint, edits FROM posted_entry", feed,
            list(dict.fromkeys(entry_ids)))}

    async def subscriber(self, user_id: str) -> Subscriber | None:
        return self._subscriber(user_id)

    def _subscriber(self, user_id: str) -> Subscriber | None:
        with self._guard():
            row = self._conn.execute(
                "SELECT user_id, dm_room, digest, language, digest_due FROM subscriber "
                "WHERE user_id = ?", (user_id,)).fetchone()
            if row is None:
                return None
            feeds = tuple(r[0] for r in self._conn.execute(
                "SELECT feed FROM subscription WHERE user_id = ? ORDER BY feed", (user_id,)))
        return Subscriber(row[0], row[1], row[2], row[3], row[4], feeds)

    async def subscriber_by_room(self, dm_room: str) -> Subscriber | None:
        with self._guard():
            row = self._conn.execute("SELECT user_id FROM subscriber WHERE dm_room = ?",
                                     (dm_room,)).fetchone()
        return None if row is None else self._subscriber(row[0])

    async def subscribers_of(self, feed: str) -> list[Subscriber]:
        with self._guard():
            users = [r[0] for r in self._conn.execute(
                "SELECT user_id FROM subscription WHERE feed = ? ORDER BY user_id", (feed,))]
        return [s for s in (self._subscriber(u) for u in users) if s is not None]

    async def subscriber_count(self, feed: str) -> int:
        with self._guard():
            row = self._conn.execute("SELECT COUNT(*) FROM subscription WHERE feed = ?",
                                     (feed,)).fetchone()
        return int(row[0])

    async def dm_rooms(self) -> list[str]:
        with self._guard():
            return [r[0] for r in self._conn.execute("SELECT dm_room FROM subscriber")]

    async def save_subscriber(self, user_id: str, dm_room: str, *, digest: str | None = None,
                        language: str | None = None, digest_due: float | None = None) -> None:
        with self._guard(), self._transaction() as c:
            c.execute("INSERT INTO subscriber (user_id, dm_room) VALUES (?, ?) "
                      "ON CONFLICT (user_id) DO UPDATE SET dm_room = excluded.dm_room",
                      (user_id, dm_room))
            if digest is not None:
                c.execute("UPDATE subscriber SET digest = ?, digest_due = ? WHERE user_id = ?",
                          (digest, digest_due, user_id))
            if language is not None:
                c.execute("UPDATE subscriber SET language = ? WHERE user_id = ?",
                          (language, user_id))

    async def subscribe(self, user_id: str, feeds: Sequence[str]) -> None:
        with self._guard(), self._transaction() as c:
            c.executemany("INSERT OR IGNORE INTO subscription (user_id, feed) VALUES (?, ?)",
                          [(user_id, f) for f in feeds])

    async def unsubscribe(self, user_id: str, feeds: Sequence[str]) -> None:
        with self._guard(), self._transaction() as c:
            c.executemany("DELETE FROM subscription WHERE user_id = ? AND feed = ?",
                          [(user_id, f) for f in feeds])
            c.executemany("DELETE FROM digest_item WHERE user_id = ? AND feed = ?",
                          [(user_id, f) for f in feeds])

    async def forget_user(self, user_id: str) -> None:
        """Everything stored about a person, gone in one transaction."""
        with self._guard(), self._transaction() as c:
            row = c.execute("SELECT dm_room FROM subscriber WHERE user_id = ?",
                            (user_id,)).fetchone()
            c.execute("DELETE FROM subscription WHERE user_id = ?", (user_id,))
            c.execute("DELETE FROM digest_item WHERE user_id = ?", (user_id,))
            c.execute("DELETE FROM subscriber WHERE user_id = ?", (user_id,))
            # The conversation's rows go only if it was this person's alone: someone else
            # whose items go there keeps them.
            if row is not None and c.execute("SELECT 1 FROM subscriber WHERE dm_room = ?",
                                             (row[0],)).fetchone() is None:
                self._forget_room(c, row[0])

    async def goodbyes_said(self) -> list[str]:
        """Conversations whose goodbye is no longer pending (sent, refused or parked):
        the bot leaves them and forgets them (after a restart in between, too)."""
        with self._guard():
            return [r[0] for r in self._conn.execute(
                "SELECT DISTINCT room FROM outbox WHERE kind = 'goodbye' AND "
                "state != 'pending'")]

    async def forget_conversation(self, room: str) -> None:
        """What is kept about a private conversation the bot left, unless it is still
        someone's: its rows, its events, its settings."""
        with self._guard(), self._transaction() as c:
            if c.execute("SELECT 1 FROM subscriber WHERE dm_room = ?", (room,)).fetchone() is None:
                self._forget_room(c, room)

    @staticmethod
    def _forget_room(c: sqlite3.Connection, room: str) -> None:
        for table in ("outbox", "entry_event", "room_settings"):
            c.execute(f"DELETE FROM {table} WHERE room = ?", (room,))

    async def due_digests(self, now: float) -> list[Subscriber]:
        with self._guard():
            users = [r[0] for r in self._conn.execute(
                "SELECT user_id FROM subscriber WHERE digest != 'off' AND digest_due <= ?",
                (now,))]
        return [s for s in (self._subscriber(u) for u in users) if s is not None]

    async def digest_items(self, user_id: str) -> list[DigestItem]:
        with self._guard():
            rows = self._conn.execute(
                "SELECT user_id, feed, entry_id, title, link, published FROM digest_item "
                "WHERE user_id = ? ORDER BY COALESCE(published, added_at), added_at",
                (user_id,)).fetchall()
        return [DigestItem(*row) for row in rows]

    async def send_digest(self, user_id: str, items: Sequence[DigestItem],
                    deliveries: Sequence[NewDelivery], feed: str, next_due: float,
                    now: float) -> list[str]:
        """Queue one digest (its messages) and forget its items, at once: never twice,
        never lost."""
        with self._guard(), self._transaction() as c:
            c.executemany("DELETE FROM digest_item WHERE user_id = ? AND feed = ? AND "
                          "entry_id = ?", [(i.user_id, i.feed, i.entry_id) for i in items])
            c.execute("UPDATE subscriber SET digest_due = ? WHERE user_id = ?",
                      (next_due, user_id))
            return self._enqueue(c, feed, deliveries, now)

    # -- media ---------------------------------------------------------------------------

    async def media(self, url: str) -> MediaRow | None:
        with self._guard():
            row = self._conn.execute(
                "SELECT url, mxc, mimetype, size, width, height FROM media_cache WHERE url = ?",
                (url,)).fetchone()
        return None if row is None else MediaRow(*row)

    async def prune_media(self, older_than: float) -> int:
        with self._guard(), self._transaction() as c:
            cur = c.execute("DELETE FROM media_cache WHERE fetched_at < ?", (older_than,))
        return cur.rowcount

    async def put_media(self, media: MediaRow, now: float) -> None:
        with self._guard(), self._transaction() as c:
            c.execute("INSERT OR REPLACE INTO media_cache (url, mxc, mimetype, size, width, "
                      "height, fetched_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (media.url, media.mxc, media.mimetype, media.size, media.width,
                       media.height, now))

    async def mark_rejected(self, key: str, error: str, now: float) -> None:
        with self._guard(), self._transaction() as c:
            c.execute("UPDATE outbox SET state = 'rejected', error = ?, sent_at = ? WHERE key = ?",
                      (error[:500], now, key))
            c.execute(_FORGET_WORDS, (key,))

    async def prune_sent(self, older_than: float) -> int:
        """Forget delivered rows; ``seen`` alone keeps entries from being posted again."""
        with self._guard(), self._transaction() as c:
            cur = c.execute("DELETE FROM outbox WHERE state != 'pending' AND sent_at < ?",
                            (older_than,))
        return cur.rowcount

    # -- recent entries (for `latest`) ---------------------------------------------------

    def _remember_recent(self, c: sqlite3.Connection, feed: str,
                         entries: Sequence[RecentEntry], now: float) -> None:
        c.executemany(
            "INSERT INTO recent_entry (feed, entry_id, title, link, published, seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (feed, entry_id) DO UPDATE SET "
            "title = excluded.title, link = excluded.link, published = excluded.published",
            [(feed, e.entry_id, _title(e.title), _link(e.link), e.published, now)
             for e in entries])
        c.execute(
            "DELETE FROM recent_entry WHERE feed = ? AND entry_id NOT IN (SELECT entry_id "
            "FROM recent_entry WHERE feed = ? ORDER BY COALESCE(published, seen_at) DESC "
            "LIMIT ?)", (feed, feed, RECENT_PER_FEED))

    async def latest(self, feeds: Sequence[str], count: int) -> list[RecentEntry]:
        """The newest ``count`` entries of these feeds, newest first."""
        if not feeds:
            return []
        marks = ",".join("?" * len(feeds))
        with self._guard():
            rows = self._conn.execute(
                f"SELECT feed, entry_id, title, link, published FROM recent_entry "
                f"WHERE feed IN ({marks}) ORDER BY COALESCE(published, seen_at) DESC LIMIT ?",
                (*feeds, count)).fetchall()
        return [RecentEntry(*row) for row in rows]

    # -- what moderators set -------------------------------------------------------------

    async def room_feeds(self) -> list[RoomFeed]:
        with self._guard():
            rows = self._conn.execute(
                "SELECT name, url, room, interval, added_by, added_at FROM room_feed "
                "ORDER BY added_at").fetchall()
        return [RoomFeed(*row) for row in rows]

    async def add_room_feed(self, feed: RoomFeed) -> None:
        with self._guard(), self._transaction() as c:
            c.execute("INSERT INTO room_feed (name, url, room, interval, added_by, added_at) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (feed.name, feed.url, feed.room,
                                                    feed.interval, feed.added_by, feed.added_at))

    async def remove_room_feed(self, name: str) -> None:
        """Forget the subscription and its settings; ``seen`` stays, so adding the feed
        again later does not repost what the room already had."""
        with self._guard(), self._transaction() as c:
            c.execute("DELETE FROM room_feed WHERE name = ?", (name,))
            c.execute("DELETE FROM feed_room_settings WHERE feed = ?", (name,))
            c.execute("DELETE FROM feed_settings WHERE feed = ?", (name,))
            c.execute("DELETE FROM kv WHERE key = ?", (_CARRIED_KEY + name,))
            c.execute("DELETE FROM outbox WHERE feed = ? AND state = 'pending'", (name,))
        self._intervals.pop(name, None)

    async def feed_room_settings(self, feed: str) -> dict[str, RoomFeedSettings]:
        with self._guard():
            rows = self._conn.execute(
                "SELECT room, paused, include, exclude FROM feed_room_settings WHERE feed = ?",
                (feed,)).fetchall()
        return {room: RoomFeedSettings(bool(paused), tuple(json.loads(inc)),
                                       tuple(json.loads(exc)))
                for room, paused, inc, exc in rows}

    async def set_feed_room_settings(self, feed: str, room: str,
                                     settings: RoomFeedSettings) -> None:
        with self._guard(), self._transaction() as c:
            c.execute(
                "INSERT INTO feed_room_settings (feed, room, paused, include, exclude) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (feed, room) DO UPDATE SET "
                "paused = excluded.paused, include = excluded.include, "
                "exclude = excluded.exclude",
                (feed, room, int(settings.paused), json.dumps(list(settings.include)),
                 json.dumps(list(settings.exclude))))

    async def feed_interval(self, feed: str) -> float | None:
        # Read at every poll: from memory once known (set_feed_interval keeps it).
        if feed in self._intervals:
            return self._intervals[feed]
        with self._guard():
            row = self._conn.execute("SELECT interval FROM feed_settings WHERE feed = ?",
                                     (feed,)).fetchone()
        interval = None if row is None else row[0]
        self._intervals[feed] = interval
        return interval

    async def set_feed_interval(self, feed: str, interval: float) -> None:
        with self._guard(), self._transaction() as c:
            c.execute("INSERT INTO feed_settings (feed, interval) VALUES (?, ?) "
                      "ON CONFLICT (feed) DO UPDATE SET interval = excluded.interval",
                      (feed, interval))
            c.execute("UPDATE room_feed SET interval = ? WHERE name = ?", (interval, feed))
        self._intervals[feed] = interval

    async def room_language(self, room: str) -> str | None:
        with self._guard():
            row = self._conn.execute("SELECT language FROM room_settings WHERE room = ?",
                                     (room,)).fetchone()
        return None if row is None else row[0]

    async def set_room_language(self, room: str, language: str) -> None:
        with self._guard(), self._transaction() as c:
            c.execute("INSERT INTO room_settings (room, language) VALUES (?, ?) "
                      "ON CONFLICT (room) DO UPDATE SET language = excluded.language",
                      (room, language))

    # -- leases (several instances; one here, but the same rules) ------------------------

    async def take_lease(self, name: str, owner: str, *, now: float, duration: float) -> bool:
        with self._guard(), self._transaction() as c:
            cur = c.execute(
                "INSERT INTO lease (name, owner, until) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET owner = excluded.owner, until = excluded.until "
                "WHERE lease.owner = excluded.owner OR lease.until <= ?",
                (name, owner, now + duration, now))
        return cur.rowcount > 0

    async def release_lease(self, name: str, owner: str) -> None:
        with self._guard(), self._transaction() as c:
            c.execute("DELETE FROM lease WHERE name = ? AND owner = ?", (name, owner))

    async def leases(self, now: float) -> list[Lease]:
        with self._guard():
            rows = self._conn.execute("SELECT name, owner, until FROM lease WHERE until > ? "
                                      "ORDER BY name", (now,)).fetchall()
        return [Lease(*row) for row in rows]

    async def take_once(self, key: str, owner: str, now: float) -> bool:
        with self._guard(), self._transaction() as c:
            cur = c.execute("INSERT OR IGNORE INTO taken (key, owner, taken_at) VALUES (?, ?, ?)",
                            (key, owner, now))
        return cur.rowcount > 0

    async def prune_taken(self, older_than: float) -> int:
        with self._guard(), self._transaction() as c:
            cur = c.execute("DELETE FROM taken WHERE taken_at < ?", (older_than,))
        return cur.rowcount

    # -- small facts -------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        return self._get(key)

    def _get(self, key: str) -> str | None:
        with self._guard():
            row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    async def put(self, key: str, value: str) -> None:
        with self._guard(), self._transaction() as c:
            c.execute("INSERT INTO kv (key, value) VALUES (?, ?) "
                      "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


def _message_json(message: Message) -> str:
    return json.dumps(message.to_json(), ensure_ascii=False, sort_keys=True)


def _delivery(row: Any) -> Delivery:
    return Delivery(key=row[0], feed=row[1], entry_id=row[2], room=row[3],
                    message=Message.from_json(json.loads(row[4])) if row[4] else None,
                    payload=json.loads(row[5]) if row[5] else None, created_at=row[6],
                    first_attempt_at=row[7], attempts=row[8], kind=row[9], subject=row[10],
                    failures=row[11], network=row[12])


def _split_statements(script: str) -> list[str]:
    # Migrations hold plain DDL without semicolons inside literals, so a split is enough
    # and lets each statement run inside our own transaction (executescript would commit).
    return [s.strip() for s in script.split(";") if s.strip()]
