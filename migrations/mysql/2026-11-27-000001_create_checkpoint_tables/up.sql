-- Events that a handler acknowledged. One row per (topic, group_id, checksum): the unique key is
-- what makes a concurrent or redelivered duplicate unable to create a second row.
-- utf8mb4_bin: identifiers compare byte for byte (the default collation would fold case and make
-- topic "Orders" a duplicate of "orders"). 3 x VARCHAR(255) x 4 bytes = 3060 bytes fits InnoDB's
-- 3072-byte key limit, so the whole unique key is enforced, not a prefix.
-- MySQL sorts NULL below every value, so `DESC` already puts NULLs last. Timestamps are UTC.
CREATE TABLE checkpoint_events (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    topic         VARCHAR(255) NOT NULL,
    group_id      VARCHAR(255) NOT NULL,
    `partition`   INT          NOT NULL,
    `offset`      BIGINT       NOT NULL,
    `key`         LONGBLOB,
    checksum      VARCHAR(255) NOT NULL,
    entity_id     VARCHAR(255),
    event_time    DATETIME(6),
    event_type    VARCHAR(255),
    event_version VARCHAR(255),
    payload       LONGBLOB     NOT NULL,
    created_at    DATETIME(6)  DEFAULT (UTC_TIMESTAMP(6)),
    CONSTRAINT checkpoint_events_dedup_key UNIQUE (topic, group_id, checksum),
    INDEX checkpoint_events_order_idx (event_time DESC, created_at DESC, id DESC),
    INDEX checkpoint_events_entity_id_idx (entity_id),
    INDEX checkpoint_events_group_id_idx (group_id),
    INDEX checkpoint_events_event_type_idx (event_type)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin ROW_FORMAT = DYNAMIC;

-- Messages whose handler gave up (retries exhausted or an undecodable payload).
CREATE TABLE checkpoint_failures (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    created_at      DATETIME(6)  DEFAULT (UTC_TIMESTAMP(6)),
    topic           VARCHAR(255) NOT NULL,
    group_id        VARCHAR(255) NOT NULL,
    `partition`     INT          NOT NULL,
    `offset`        BIGINT       NOT NULL,
    `key`           LONGBLOB,
    checksum        VARCHAR(255) NOT NULL,
    entity_id       VARCHAR(255),
    event_time      DATETIME(6),
    event_type      VARCHAR(255),
    event_version   VARCHAR(255),
    payload         LONGBLOB     NOT NULL,
    metadata        MEDIUMTEXT   NOT NULL,
    error_class     TEXT         NOT NULL,
    error_message   MEDIUMTEXT   NOT NULL,
    error_backtrace MEDIUMTEXT   NOT NULL,
    attempts        INT          NOT NULL,
    CONSTRAINT checkpoint_failures_dedup_key UNIQUE (topic, group_id, checksum),
    INDEX checkpoint_failures_order_idx (event_time DESC, created_at DESC, id DESC),
    INDEX checkpoint_failures_entity_id_idx (entity_id),
    INDEX checkpoint_failures_group_id_idx (group_id),
    INDEX checkpoint_failures_event_type_idx (event_type)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin ROW_FORMAT = DYNAMIC;
