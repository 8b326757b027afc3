DROP TABLE checkpoint_failures;
DROP TABLE checkpoint_events;
