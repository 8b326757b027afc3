-- The duplicate check looks events up by (topic, group_id, checksum), which the unique key
-- answers with one index probe. A separate index on group_id alone competes with it: while a
-- new consumer group's rows are not yet in the table statistics (autovacuum has not analyzed
-- them, or is off), the planner estimates one row for that group, prefers the narrower
-- group_id index and filters every row of the group on each check, so each check is slower
-- than the last. Filtering events by group_id alone (an operator's listing) does without it.
DROP INDEX IF EXISTS checkpoint_events_group_id_idx;
