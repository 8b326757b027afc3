-- Retention deletes rows older than a cutoff, a batch at a time, oldest first: an index on
-- created_at lets each batch find its rows without scanning the table, so no batch holds its
-- locks for long.
CREATE INDEX IF NOT EXISTS checkpoint_events_created_at_idx ON checkpoint_events (created_at);
CREATE INDEX IF NOT EXISTS checkpoint_failures_created_at_idx ON checkpoint_failures (created_at);
