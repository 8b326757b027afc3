//! Diesel table definitions of the checkpoint tables, shared by every backend.
//!
//! They are public so an application can query its own checkpoints with its own diesel code,
//! for example `checkpoint_events::table.filter(checkpoint_events::entity_id.eq("42"))`.
//! Timestamps are UTC, mapped to [`chrono::NaiveDateTime`]; payloads and keys are the exact
//! bytes Kafka delivered.
#![allow(missing_docs)]

diesel::table! {
    /// Events a handler acknowledged, one per `(topic, group_id, checksum)`.
    checkpoint_events (id) {
        id -> BigInt,
        topic -> Text,
        group_id -> Text,
        partition -> Integer,
        offset -> BigInt,
        key -> Nullable<Binary>,
        checksum -> Text,
        entity_id -> Nullable<Text>,
        event_time -> Nullable<Timestamp>,
        event_type -> Nullable<Text>,
        event_version -> Nullable<Text>,
        payload -> Binary,
        created_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// Messages whose handler gave up, one per `(topic, group_id, checksum)`.
    checkpoint_failures (id) {
        id -> BigInt,
        created_at -> Nullable<Timestamp>,
        topic -> Text,
        group_id -> Text,
        partition -> Integer,
        offset -> BigInt,
        key -> Nullable<Binary>,
        checksum -> Text,
        entity_id -> Nullable<Text>,
        event_time -> Nullable<Timestamp>,
        event_type -> Nullable<Text>,
        event_version -> Nullable<Text>,
        payload -> Binary,
        metadata -> Text,
        error_class -> Text,
        error_message -> Text,
        error_backtrace -> Text,
        attempts -> Integer,
    }
}

diesel::table! {
    /// Unsettled deliveries of a message, one row per `(topic, group_id, checksum)` while it
    /// has not settled after a delivery that may have been a repeat (see the migration).
    checkpoint_attempts (topic, group_id, checksum) {
        topic -> Text,
        group_id -> Text,
        checksum -> Text,
        attempts -> Integer,
        last_delivery -> Text,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// The current owner of each partition's stream; a row left behind by an owner that died.
    checkpoint_owners (topic, group_id, partition) {
        topic -> Text,
        group_id -> Text,
        partition -> Integer,
        owner -> Text,
        since -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    checkpoint_events,
    checkpoint_failures,
    checkpoint_attempts,
    checkpoint_owners
);
