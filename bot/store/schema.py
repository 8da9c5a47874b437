"""The SQLite schema as numbered migrations; the version lives in ``PRAGMA user_version``.

A migration is appended, never edited: databases in the field have run the old ones.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: feed state, seen entries, the outbox, small key/value facts (sync token).
    """
    CREATE TABLE feed_state (
        name            TEXT PRIMARY KEY,
        url             TEXT NOT NULL,      -- where we fetch now (follows 301/308)
        configured_url  TEXT NOT NULL,      -- the config's URL when url was last set from it
        etag            TEXT,
        last_modified   TEXT,
        body_hash       TEXT,               -- skips parsing when a server ignores validators
        initialized     INTEGER NOT NULL DEFAULT 0,
        title           TEXT,
        last_fetch      REAL,
        last_success    REAL,
        last_error      TEXT,
        failures        INTEGER NOT NULL DEFAULT 0,
        next_fetch      REAL
    );
    CREATE TABLE seen (
        feed        TEXT NOT NULL,
        entry_id    TEXT NOT NULL,
        seen_at     REAL NOT NULL,
        PRIMARY KEY (feed, entry_id)
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        key              TEXT NOT NULL UNIQUE,
        feed             TEXT NOT NULL,
        entry_id         TEXT NOT NULL,
        room             TEXT NOT NULL,
        content          TEXT NOT NULL,     -- the event content, JSON, fixed at enqueue time
        created_at       REAL NOT NULL,
        first_attempt_at REAL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        state            TEXT NOT NULL DEFAULT 'pending',   -- pending | sent | rejected
        event_id         TEXT,
        sent_at          REAL
    );
    CREATE INDEX outbox_pending ON outbox (room, seq) WHERE state = 'pending';
    CREATE TABLE kv (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    """,
    # 2: a feed can be switched off for good (410 Gone); why a message was refused.
    """
    ALTER TABLE feed_state ADD COLUMN disabled TEXT;
    ALTER TABLE outbox ADD COLUMN error TEXT;
    """,
    # 3: what moderators set from their rooms, and the newest entries of each feed.
    """
    CREATE TABLE room_feed (            -- feeds added by a room command
        name        TEXT PRIMARY KEY,
        url         TEXT NOT NULL,
        room        TEXT NOT NULL,      -- the room id
        interval    REAL NOT NULL,
        added_by    TEXT NOT NULL,
        added_at    REAL NOT NULL
    );
    CREATE TABLE feed_room_settings (   -- per feed and room: pause, keyword filters
        feed        TEXT NOT NULL,
        room        TEXT NOT NULL,
        paused      INTEGER NOT NULL DEFAULT 0,
        include     TEXT NOT NULL DEFAULT '[]',
        exclude     TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (feed, room)
    ) WITHOUT ROWID;
    CREATE TABLE feed_settings (        -- per feed: the polling interval set by command
        feed        TEXT PRIMARY KEY,
        interval    REAL
    );
    CREATE TABLE room_settings (
        room        TEXT PRIMARY KEY,
        language    TEXT
    );
    CREATE TABLE recent_entry (         -- the newest entries of each feed, for `latest`
        feed        TEXT NOT NULL,
        entry_id    TEXT NOT NULL,
        title       TEXT NOT NULL,
        link        TEXT,
        published   REAL,
        seen_at     REAL NOT NULL,
        PRIMARY KEY (feed, entry_id)
    ) WITHOUT ROWID;
    """,
    # 4: images uploaded once per URL; what each posted entry looked like, and its event
    # in each room, so a corrected entry can be edited in place.
    """
    CREATE TABLE media_cache (
        url         TEXT PRIMARY KEY,
        mxc         TEXT,                   -- NULL: not an image we show (remembered too)
        mimetype    TEXT,
        size        INTEGER,
        width       INTEGER,
        height      INTEGER,
        fetched_at  REAL NOT NULL
    );
    CREATE TABLE posted_entry (
        feed        TEXT NOT NULL,
        entry_id    TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        PRIMARY KEY (feed, entry_id)
    ) WITHOUT ROWID;
    CREATE TABLE entry_event (
        feed        TEXT NOT NULL,
        entry_id    TEXT NOT NULL,
        room        TEXT NOT NULL,
        event_id    TEXT NOT NULL,
        PRIMARY KEY (feed, entry_id, room)
    ) WITHOUT ROWID;
    """,
    # 5: personal subscriptions by direct message: the user id and their choices only.
    """
    CREATE TABLE subscriber (
        user_id     TEXT PRIMARY KEY,
        dm_room     TEXT NOT NULL,       -- where their items go
        digest      TEXT NOT NULL DEFAULT 'off',   -- off | daily | weekly
        language    TEXT,
        digest_due  REAL                 -- when the next digest goes out
    );
    CREATE TABLE subscription (
        user_id     TEXT NOT NULL,
        feed        TEXT NOT NULL,
        PRIMARY KEY (user_id, feed)
    ) WITHOUT ROWID;
    CREATE TABLE digest_item (           -- items waiting for a subscriber's next digest
        user_id     TEXT NOT NULL,
        feed        TEXT NOT NULL,
        entry_id    TEXT NOT NULL,
        title       TEXT NOT NULL,
        link        TEXT,
        published   REAL,
        added_at    REAL NOT NULL,
        PRIMARY KEY (user_id, feed, entry_id)
    ) WITHOUT ROWID;
    """,
    # 6: outbox rows say what they are (kind) and which feed entry they show or correct
    # (subject), instead of both being guessed from the shape of their key; a row that
    # keeps failing for an unforeseen reason is parked ('failed'); edits are counted.
    # Existing rows are classified by the key shapes older versions wrote, and sent items
    # whose id held '#' (which older versions did not link to their event) are linked.
    """
    ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'item';
    ALTER TABLE outbox ADD COLUMN subject TEXT;
    ALTER TABLE outbox ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
    UPDATE outbox SET kind = 'digest' WHERE entry_id LIKE 'newsbot:digest:%';
    UPDATE outbox SET kind = 'notice' WHERE entry_id LIKE 'newsbot:%' AND kind = 'item';
    UPDATE outbox SET kind = 'edit', subject = substr(entry_id, 1, instr(entry_id, '#edit#') - 1)
        WHERE instr(entry_id, '#edit#') > 0 AND kind = 'item';
    UPDATE outbox SET kind = 'image', subject = substr(entry_id, 1, length(entry_id) - 6)
        WHERE entry_id LIKE '%#image' AND kind = 'item';
    UPDATE outbox SET subject = entry_id WHERE kind = 'item';
    INSERT OR IGNORE INTO entry_event (feed, entry_id, room, event_id)
        SELECT feed, subject, room, event_id FROM outbox
        WHERE kind = 'item' AND state = 'sent' AND event_id IS NOT NULL;
    ALTER TABLE posted_entry ADD COLUMN edits INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: the outbox names no network's format. A row has its target (network and address)
    # and its message in no network's format (what planning made), and the transport's
    # encoding of it (payload) is fixed before its first attempt. Rows queued by older
    # versions keep their Matrix event content as their payload, with no message: the
    # Matrix transport sends them as they are. A claim (by whom, until when) lets the
    # worker of a target take its rows, and another instance take over a lapsed claim.
    """
    CREATE TABLE outbox_v7 (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        key              TEXT NOT NULL UNIQUE,
        feed             TEXT NOT NULL,
        entry_id         TEXT NOT NULL,
        kind             TEXT NOT NULL,     -- item, image, edit, digest, notice, reply, welcome
        network          TEXT NOT NULL,     -- the target: its network (matrix)
        room             TEXT NOT NULL,     -- and its address there, as configured
        subject          TEXT,              -- the entry it shows or corrects, or a command
        message          TEXT,              -- the Message, JSON (NULL: queued by newsbot before 7)
        payload          TEXT,              -- the transport's encoding, fixed before sending
        created_at       REAL NOT NULL,
        first_attempt_at REAL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        state            TEXT NOT NULL DEFAULT 'pending',   -- pending, sent, rejected, failed
        event_id         TEXT,
        sent_at          REAL,
        error            TEXT,
        failures         INTEGER NOT NULL DEFAULT 0,
        claimed_by       TEXT,
        claimed_until    REAL
    );
    INSERT INTO outbox_v7 (seq, key, feed, entry_id, kind, network, room, subject, message,
                           payload, created_at, first_attempt_at, attempts, state, event_id,
                           sent_at, error, failures)
        SELECT seq, key, feed, entry_id, kind, 'matrix', room, subject, NULL, content,
               created_at, first_attempt_at, attempts, state, event_id, sent_at, error, failures
        FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v7 RENAME TO outbox;
    CREATE INDEX outbox_pending ON outbox (network, room, seq) WHERE state = 'pending';
    """,
    # 8: what each feed last asked about its polling (ttl, skipHours/skipDays, sy:,
    # Cache-Control), JSON as bot.feeds.hints writes it: unchanged polls (304) keep
    # honouring it, and check-config shows it. NULL: not read yet.
    """
    ALTER TABLE feed_state ADD COLUMN hints TEXT;
    """,
    # 9: several instances on one database. A lease (a feed's polling, the leadership) is
    # held by one instance until a time, renewed while it lives and taken when it lapses;
    # an event taken by one instance (a command) is never taken by another.
    """
    CREATE TABLE lease (
        name        TEXT PRIMARY KEY,   -- feed:<name>, leader
        owner       TEXT NOT NULL,      -- the instance
        until       REAL NOT NULL
    );
    CREATE TABLE taken (
        key         TEXT PRIMARY KEY,   -- e.g. command:<event id>
        owner       TEXT NOT NULL,
        taken_at    REAL NOT NULL
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
