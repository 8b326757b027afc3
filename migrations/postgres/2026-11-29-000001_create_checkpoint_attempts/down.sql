DROP TABLE checkpoint_owners;
DROP TABLE checkpoint_attempts;
