-- Events that a handler acknowledged. One row per (topic, group_id, checksum): the unique key is
-- what makes a concurrent or redelivered duplicate unable to create a second row.
-- Timestamps are UTC text ('YYYY-MM-DD HH:MM:SS.ffffff'), which sorts chronologically.
-- SQLite sorts NULL below every value, so `DESC` already puts NULLs last.
CREATE TABLE checkpoint_events (
    id            INTEGER PRIMARY KEY NOT NULL,
    topic         TEXT    NOT NULL,
    group_id      TEXT    NOT NULL,
    "partition"   INTEGER NOT NULL,
    "offset"      BIGINT  NOT NULL,
    "key"         BLOB,
    checksum      TEXT    NOT NULL,
    entity_id     TEXT,
    event_time    TEXT,
    event_type    TEXT,
    event_version TEXT,
    payload       BLOB    NOT NULL,
    created_at    TEXT    DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    CONSTRAINT checkpoint_events_dedup_key UNIQUE (topic, group_id, checksum)
);
CREATE INDEX checkpoint_events_order_idx
    ON checkpoint_events (event_time DESC, created_at DESC, id DESC);
CREATE INDEX checkpoint_events_entity_id_idx ON checkpoint_events (entity_id);
CREATE INDEX checkpoint_events_group_id_idx ON checkpoint_events (group_id);
CREATE INDEX checkpoint_events_event_type_idx ON checkpoint_events (event_type);

-- Messages whose handler gave up (retries exhausted or an undecodable payload).
CREATE TABLE checkpoint_failures (
    id              INTEGER PRIMARY KEY NOT NULL,
    created_at      TEXT    DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    topic           TEXT    NOT NULL,
    group_id        TEXT    NOT NULL,
    "partition"     INTEGER NOT NULL,
    "offset"        BIGINT  NOT NULL,
    "key"           BLOB,
    checksum        TEXT    NOT NULL,
    entity_id       TEXT,
    event_time      TEXT,
    event_type      TEXT,
    event_version   TEXT,
    payload         BLOB    NOT NULL,
    metadata        TEXT    NOT NULL,
    error_class     TEXT    NOT NULL,
    error_message   TEXT    NOT NULL,
    error_backtrace TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    CONSTRAINT checkpoint_failures_dedup_key UNIQUE (topic, group_id, checksum)
);
CREATE INDEX checkpoint_failures_order_idx
    ON checkpoint_failures (event_time DESC, created_at DESC, id DESC);
CREATE INDEX checkpoint_failures_entity_id_idx ON checkpoint_failures (entity_id);
CREATE INDEX checkpoint_failures_group_id_idx ON checkpoint_failures (group_id);
CREATE INDEX checkpoint_failures_event_type_idx ON checkpoint_failures (event_type);
