-- Events that a handler acknowledged. One row per (topic, group_id, checksum): the unique key is
-- what makes a concurrent or redelivered duplicate unable to create a second row.
-- Timestamps are UTC.
CREATE TABLE checkpoint_events (
    id            BIGSERIAL PRIMARY KEY,
    topic         VARCHAR(255) NOT NULL,
    group_id      VARCHAR(255) NOT NULL,
    "partition"   INTEGER      NOT NULL,
    "offset"      BIGINT       NOT NULL,
    "key"         BYTEA,
    checksum      VARCHAR(255) NOT NULL,
    entity_id     VARCHAR(255),
    event_time    TIMESTAMP,
    event_type    VARCHAR(255),
    event_version VARCHAR(255),
    payload       BYTEA        NOT NULL,
    created_at    TIMESTAMP    DEFAULT (now() AT TIME ZONE 'utc'),
    CONSTRAINT checkpoint_events_dedup_key UNIQUE (topic, group_id, checksum)
);
CREATE INDEX checkpoint_events_order_idx
    ON checkpoint_events (event_time DESC NULLS LAST, created_at DESC NULLS LAST, id DESC);
CREATE INDEX checkpoint_events_entity_id_idx ON checkpoint_events (entity_id);
CREATE INDEX checkpoint_events_group_id_idx ON checkpoint_events (group_id);
CREATE INDEX checkpoint_events_event_type_idx ON checkpoint_events (event_type);

-- Messages whose handler gave up (retries exhausted or an undecodable payload).
CREATE TABLE checkpoint_failures (
    id              BIGSERIAL PRIMARY KEY,
    created_at      TIMESTAMP    DEFAULT (now() AT TIME ZONE 'utc'),
    topic           VARCHAR(255) NOT NULL,
    group_id        VARCHAR(255) NOT NULL,
    "partition"     INTEGER      NOT NULL,
    "offset"        BIGINT       NOT NULL,
    "key"           BYTEA,
    checksum        VARCHAR(255) NOT NULL,
    entity_id       VARCHAR(255),
    event_time      TIMESTAMP,
    event_type      VARCHAR(255),
    event_version   VARCHAR(255),
    payload         BYTEA        NOT NULL,
    metadata        TEXT         NOT NULL,
    error_class     TEXT         NOT NULL,
    error_message   TEXT         NOT NULL,
    error_backtrace TEXT         NOT NULL,
    attempts        INTEGER      NOT NULL,
    CONSTRAINT checkpoint_failures_dedup_key UNIQUE (topic, group_id, checksum)
);
CREATE INDEX checkpoint_failures_order_idx
    ON checkpoint_failures (event_time DESC NULLS LAST, created_at DESC NULLS LAST, id DESC);
CREATE INDEX checkpoint_failures_entity_id_idx ON checkpoint_failures (entity_id);
CREATE INDEX checkpoint_failures_group_id_idx ON checkpoint_failures (group_id);
CREATE INDEX checkpoint_failures_event_type_idx ON checkpoint_failures (event_type);
