CREATE INDEX checkpoint_events_group_id_idx ON checkpoint_events (group_id);
