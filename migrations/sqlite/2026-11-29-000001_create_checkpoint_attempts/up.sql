-- Deliveries of a message that did not settle, per checkpoint key, so that max_retries counts
-- across restarts: a message that kills or hangs its consumer becomes a failure after
-- max_retries + 1 deliveries instead of crash-looping. A row is written (incremented) only
-- before an attempt whose message may have been attempted before (the first message a
-- partition owner consumes after an assignment, and every retry), and deleted when the
-- message settles, so a healthy stream writes nothing here.
CREATE TABLE checkpoint_attempts (
    topic      TEXT    NOT NULL,
    group_id   TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    -- The delivery the count was last raised for: raising it again for the same delivery (a
    -- retried statement, a lost reply) changes nothing.
    last_delivery TEXT    NOT NULL DEFAULT '',
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    PRIMARY KEY (topic, group_id, checksum)
);

-- Who owns a partition's stream now: written when a consumer starts on a partition, deleted
-- when it lets the partition go cleanly (revoke or shutdown after its in-flight work settled).
-- A row left behind means the previous owner died (crash, kill, revoke timeout); the next
-- owner then counts the first message it consumes as a delivery that never returned.
CREATE TABLE checkpoint_owners (
    topic       TEXT    NOT NULL,
    group_id    TEXT    NOT NULL,
    "partition" INTEGER NOT NULL,
    owner       TEXT    NOT NULL,
    since       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    PRIMARY KEY (topic, group_id, "partition")
);
