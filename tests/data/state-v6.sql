-- newsbot state, schema version 6, made by newsbot f059966 (tests/test_migration.py reads it)
PRAGMA user_version = 6;
BEGIN TRANSACTION;
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
INSERT INTO "digest_item" VALUES('@ada:legacy.test','lettre','e1','T e1','https://example.org/e1',1000.0,1000.0);
INSERT INTO "digest_item" VALUES('@ada:legacy.test','lettre','e2','T e2','https://example.org/e2',1000.0,1000.0);
CREATE TABLE entry_event (
        feed        TEXT NOT NULL,
        entry_id    TEXT NOT NULL,
        room        TEXT NOT NULL,
        event_id    TEXT NOT NULL,
        PRIMARY KEY (feed, entry_id, room)
    ) WITHOUT ROWID;
INSERT INTO "entry_event" VALUES('lettre','e1','#news:legacy.test','$sent-e1');
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
    , disabled TEXT);
INSERT INTO "feed_state" VALUES('lettre','https://example.org/feed.xml','https://example.org/feed.xml','"v2"',NULL,'h2',1,'Lettre',1200.0,1200.0,NULL,0,1300.0,NULL);
INSERT INTO "feed_state" VALUES('blog','https://example.org/blog.xml','https://example.org/blog.xml',NULL,NULL,NULL,0,NULL,1300.0,NULL,'HTTP 410 Gone',1,NULL,'HTTP 410 Gone');
CREATE TABLE kv (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
CREATE TABLE media_cache (
        url         TEXT PRIMARY KEY,
        mxc         TEXT,                   -- NULL: not an image we show (remembered too)
        mimetype    TEXT,
        size        INTEGER,
        width       INTEGER,
        height      INTEGER,
        fetched_at  REAL NOT NULL
    );
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
    , error TEXT, kind TEXT NOT NULL DEFAULT 'item', subject TEXT, failures INTEGER NOT NULL DEFAULT 0);
INSERT INTO "outbox" VALUES(1,'336dbeae18a2b072e0f1804d21e70d7d','lettre','e1','#news:legacy.test','{"msgtype": "m.notice", "body": "Un\nhttps://example.org/e1", "format": "org.matrix.custom.html", "formatted_body": "<b>Un</b><br><a href=\"https://example.org/e1\">link</a>", "m.mentions": {}, "org.interhop.newsbot.delivery": "336dbeae18a2b072e0f1804d21e70d7d"}',1000.0,1001.0,1,'sent','$sent-e1',1001.5,NULL,'item','e1',0);
INSERT INTO "outbox" VALUES(2,'f01b4a1edb36bc17e937c5bb76c9c86d','lettre','e2','#news:legacy.test','{"msgtype": "m.notice", "body": "Deux\nhttps://example.org/e2", "format": "org.matrix.custom.html", "formatted_body": "<b>Deux</b><br><a href=\"https://example.org/e2\">link</a>", "m.mentions": {}, "org.interhop.newsbot.delivery": "f01b4a1edb36bc17e937c5bb76c9c86d"}',1000.0,1002.0,1,'pending',NULL,NULL,NULL,'item','e2',0);
INSERT INTO "outbox" VALUES(3,'a4a17ec69271df7aa563aa2eb8977d72','lettre','e3','#news:legacy.test','{"msgtype": "m.text", "body": "Trois (corrigé)\nhttps://example.org/e3", "format": "org.matrix.custom.html", "formatted_body": "<b>Trois (corrigé)</b><br><a href=\"https://example.org/e3\">link</a>", "m.mentions": {}, "org.interhop.newsbot.delivery": "a4a17ec69271df7aa563aa2eb8977d72"}',1000.0,NULL,0,'pending',NULL,NULL,NULL,'item','e3',0);
INSERT INTO "outbox" VALUES(4,'e704632d105e86907f8a3a72982a3cbc','lettre','e4','#news:legacy.test','{"msgtype": "m.notice", "body": "Quatre\nhttps://example.org/e4", "format": "org.matrix.custom.html", "formatted_body": "<b>Quatre</b><br><a href=\"https://example.org/e4\">link</a>", "m.mentions": {}, "org.interhop.newsbot.delivery": "e704632d105e86907f8a3a72982a3cbc", "org.interhop.newsbot.image": {"url": "https://example.org/4.png", "mode": "inline", "alt": "Quatre"}}',1000.0,NULL,0,'pending',NULL,NULL,NULL,'item','e4',0);
INSERT INTO "outbox" VALUES(5,'ffca62f4052541731ed5b4cb7d66a57e','lettre','e5','#news:legacy.test','{"msgtype": "m.notice", "body": "Cinq\nhttps://example.org/e5", "format": "org.matrix.custom.html", "formatted_body": "<b>Cinq</b><br><a href=\"https://example.org/e5\">link</a>", "m.mentions": {}, "org.interhop.newsbot.delivery": "ffca62f4052541731ed5b4cb7d66a57e"}',1000.0,NULL,0,'pending',NULL,NULL,NULL,'item','e5',0);
INSERT INTO "outbox" VALUES(6,'7ca8c592e09a1e02852633c2c47381d0','lettre','e5#image','#news:legacy.test','{"msgtype": "m.image", "body": "Cinq", "m.mentions": {}, "org.interhop.newsbot.image": {"url": "https://example.org/5.png", "mode": "separate", "alt": "Cinq"}, "org.interhop.newsbot.delivery": "7ca8c592e09a1e02852633c2c47381d0"}',1000.0,NULL,0,'pending',NULL,NULL,NULL,'image','e5',0);
INSERT INTO "outbox" VALUES(7,'c1a4c71a7df8659daed5ea5670243afa','lettre','e1#edit#1','#news:legacy.test','{"msgtype": "m.notice", "body": "Un (corrigé)\nhttps://example.org/e1#edit#1", "format": "org.matrix.custom.html", "formatted_body": "<b>Un (corrigé)</b><br><a href=\"https://example.org/e1#edit#1\">link</a>", "m.mentions": {}, "org.interhop.newsbot.delivery": "c1a4c71a7df8659daed5ea5670243afa"}',1200.0,NULL,0,'pending',NULL,NULL,NULL,'edit','e1',0);
INSERT INTO "outbox" VALUES(8,'41695104f7ae7bb56d9aea49eaf8724d','newsbot:digests','newsbot:digest:1500','!dmbob:legacy.test','{"msgtype": "m.notice", "body": "Votre résumé hebdomadaire : 1 nouvel(s) article(s).\n\n• Zéro — 1er janvier 1970 — https://example.org/e0", "format": "org.matrix.custom.html", "formatted_body": "<p>Votre résumé hebdomadaire : 1 nouvel(s) article(s).</p><ul><li><a href=\"https://example.org/e0\">Zéro</a> — 1er janvier 1970</li></ul>", "m.mentions": {}, "org.interhop.newsbot.delivery": "af5863f43d535cafe86a788c8637d547"}',1500.0,NULL,0,'pending',NULL,NULL,NULL,'digest',NULL,0);
INSERT INTO "outbox" VALUES(9,'37525d4cde6b6da75b8cafc39e516888','blog','newsbot:gone:https://example.org/blog.xml','#news:legacy.test','{"msgtype": "m.notice", "body": "gone", "format": "org.matrix.custom.html", "formatted_body": "gone", "m.mentions": {}, "org.interhop.newsbot.delivery": "37525d4cde6b6da75b8cafc39e516888"}',1300.0,NULL,0,'pending',NULL,NULL,NULL,'notice',NULL,0);
CREATE TABLE posted_entry (
        feed        TEXT NOT NULL,
        entry_id    TEXT NOT NULL,
        fingerprint TEXT NOT NULL, edits INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (feed, entry_id)
    ) WITHOUT ROWID;
INSERT INTO "posted_entry" VALUES('lettre','e1','fp-e1b',1);
INSERT INTO "posted_entry" VALUES('lettre','e2','fp-e2',0);
INSERT INTO "posted_entry" VALUES('lettre','e3','fp-e3b',0);
INSERT INTO "posted_entry" VALUES('lettre','e4','fp-e4',0);
INSERT INTO "posted_entry" VALUES('lettre','e5','fp-e5',0);
CREATE TABLE recent_entry (         -- the newest entries of each feed, for `latest`
        feed        TEXT NOT NULL,
        entry_id    TEXT NOT NULL,
        title       TEXT NOT NULL,
        link        TEXT,
        published   REAL,
        seen_at     REAL NOT NULL,
        PRIMARY KEY (feed, entry_id)
    ) WITHOUT ROWID;
CREATE TABLE room_feed (            -- feeds added by a room command
        name        TEXT PRIMARY KEY,
        url         TEXT NOT NULL,
        room        TEXT NOT NULL,      -- the room id
        interval    REAL NOT NULL,
        added_by    TEXT NOT NULL,
        added_at    REAL NOT NULL
    );
CREATE TABLE room_settings (
        room        TEXT PRIMARY KEY,
        language    TEXT
    );
CREATE TABLE seen (
        feed        TEXT NOT NULL,
        entry_id    TEXT NOT NULL,
        seen_at     REAL NOT NULL,
        PRIMARY KEY (feed, entry_id)
    ) WITHOUT ROWID;
INSERT INTO "seen" VALUES('lettre','e1',1000.0);
INSERT INTO "seen" VALUES('lettre','e2',1000.0);
INSERT INTO "seen" VALUES('lettre','e3',1000.0);
INSERT INTO "seen" VALUES('lettre','e4',1000.0);
INSERT INTO "seen" VALUES('lettre','e5',1000.0);
CREATE TABLE subscriber (
        user_id     TEXT PRIMARY KEY,
        dm_room     TEXT NOT NULL,       -- where their items go
        digest      TEXT NOT NULL DEFAULT 'off',   -- off | daily | weekly
        language    TEXT,
        digest_due  REAL                 -- when the next digest goes out
    );
INSERT INTO "subscriber" VALUES('@ada:legacy.test','!dm:legacy.test','daily',NULL,2000.0);
INSERT INTO "subscriber" VALUES('@bob:legacy.test','!dmbob:legacy.test','weekly',NULL,606300.0);
CREATE TABLE subscription (
        user_id     TEXT NOT NULL,
        feed        TEXT NOT NULL,
        PRIMARY KEY (user_id, feed)
    ) WITHOUT ROWID;
INSERT INTO "subscription" VALUES('@ada:legacy.test','lettre');
INSERT INTO "subscription" VALUES('@bob:legacy.test','lettre');
CREATE INDEX outbox_pending ON outbox (room, seq) WHERE state = 'pending';
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('outbox',9);
COMMIT;
