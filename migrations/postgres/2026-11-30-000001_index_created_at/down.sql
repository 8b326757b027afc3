DROP INDEX IF EXISTS checkpoint_failures_created_at_idx;
DROP INDEX IF EXISTS checkpoint_events_created_at_idx;
