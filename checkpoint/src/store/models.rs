//! Row models of the checkpoint tables and the filters the store lists them by.

use chrono::NaiveDateTime;
use diesel::prelude::{Insertable, Queryable, Selectable};

use super::schema::{checkpoint_events, checkpoint_failures};

/// An acknowledged event: one row of `checkpoint_events`.
///
/// Timestamps are UTC. `payload` and `key` are the exact bytes Kafka delivered.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = checkpoint_events)]
pub struct Event {
    /// Primary key.
    pub id: i64,
    /// Kafka topic the message came from.
    pub topic: String,
    /// Consumer group that consumed it.
    pub group_id: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset within the partition.
    pub offset: i64,
    /// Kafka message key, if any.
    pub key: Option<Vec<u8>>,
    /// Duplicate key: lowercase hex MD5 of the payload, or the handler's `dedup_key`.
    pub checksum: String,
    /// Entity the event is about (from the ack or the `entity_id` extractor).
    pub entity_id: Option<String>,
    /// When the event happened, in UTC (from the ack or the `entity_time` extractor).
    pub event_time: Option<NaiveDateTime>,
    /// Event type (from the ack or the `event_type` extractor).
    pub event_type: Option<String>,
    /// Event version (from the ack or the `event_version` extractor).
    pub event_version: Option<String>,
    /// Exact payload bytes.
    pub payload: Vec<u8>,
    /// When the row was written, in UTC.
    pub created_at: Option<NaiveDateTime>,
}

/// A message whose handler gave up: one row of `checkpoint_failures`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = checkpoint_failures)]
pub struct Failure {
    /// Primary key.
    pub id: i64,
    /// When the failure was first recorded, in UTC.
    pub created_at: Option<NaiveDateTime>,
    /// Kafka topic the message came from.
    pub topic: String,
    /// Consumer group that consumed it.
    pub group_id: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset within the partition.
    pub offset: i64,
    /// Kafka message key, if any.
    pub key: Option<Vec<u8>>,
    /// Duplicate key, computed as for events.
    pub checksum: String,
    /// From the `entity_id` extractor.
    pub entity_id: Option<String>,
    /// From the `entity_time` extractor, in UTC.
    pub event_time: Option<NaiveDateTime>,
    /// From the `event_type` extractor.
    pub event_type: Option<String>,
    /// From the `event_version` extractor.
    pub event_version: Option<String>,
    /// Exact payload bytes.
    pub payload: Vec<u8>,
    /// JSON object: listener_id, handler, group_id, topic, partition, offset, key, headers,
    /// timestamp and retry_count of the last attempt.
    pub metadata: String,
    /// Type name of the last error.
    pub error_class: String,
    /// Message of the last error.
    pub error_message: String,
    /// JSON array of strings: the error's source chain, then its backtrace when captured.
    pub error_backtrace: String,
    /// How many times consume was attempted and failed for this message.
    pub attempts: i32,
}

/// A row to insert into `checkpoint_events`.
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = checkpoint_events, treat_none_as_default_value = false)]
pub struct NewEvent<'a> {
    /// Kafka topic.
    pub topic: &'a str,
    /// Consumer group.
    pub group_id: &'a str,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Kafka key.
    pub key: Option<&'a [u8]>,
    /// Duplicate key.
    pub checksum: &'a str,
    /// Entity id.
    pub entity_id: Option<&'a str>,
    /// Event time, UTC.
    pub event_time: Option<NaiveDateTime>,
    /// Event type.
    pub event_type: Option<&'a str>,
    /// Event version.
    pub event_version: Option<&'a str>,
    /// Exact payload bytes.
    pub payload: &'a [u8],
    /// Row creation time, UTC.
    pub created_at: Option<NaiveDateTime>,
}

/// A failure to record in `checkpoint_failures`.
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = checkpoint_failures, treat_none_as_default_value = false)]
pub struct NewFailure<'a> {
    /// Row creation time, UTC.
    pub created_at: Option<NaiveDateTime>,
    /// Kafka topic.
    pub topic: &'a str,
    /// Consumer group.
    pub group_id: &'a str,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Kafka key.
    pub key: Option<&'a [u8]>,
    /// Duplicate key.
    pub checksum: &'a str,
    /// Entity id.
    pub entity_id: Option<&'a str>,
    /// Event time, UTC.
    pub event_time: Option<NaiveDateTime>,
    /// Event type.
    pub event_type: Option<&'a str>,
    /// Event version.
    pub event_version: Option<&'a str>,
    /// Exact payload bytes.
    pub payload: &'a [u8],
    /// JSON object with the delivery metadata.
    pub metadata: &'a str,
    /// Error type name.
    pub error_class: &'a str,
    /// Error message.
    pub error_message: &'a str,
    /// JSON array of strings.
    pub error_backtrace: &'a str,
    /// Failed attempts so far.
    pub attempts: i32,
}

/// Filters (exact matches, and a `created_at` range) and paging for listing events or
/// failures.
///
/// Results are ordered `event_time DESC NULLS LAST, created_at DESC NULLS LAST, id DESC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only rows with this entity id.
    pub entity_id: Option<String>,
    /// Only rows of this topic.
    pub topic: Option<String>,
    /// Only rows of this consumer group.
    pub group_id: Option<String>,
    /// Only rows of this event type.
    pub event_type: Option<String>,
    /// Only rows with this duplicate key.
    pub checksum: Option<String>,
    /// Only rows created at or after this time (UTC).
    pub created_from: Option<NaiveDateTime>,
    /// Only rows created before this time (UTC).
    pub created_until: Option<NaiveDateTime>,
    /// Maximum number of rows (default 20).
    pub limit: i64,
    /// Rows to skip (default 0).
    pub offset: i64,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            entity_id: None,
            topic: None,
            group_id: None,
            event_type: None,
            checksum: None,
            created_from: None,
            created_until: None,
            limit: 20,
            offset: 0,
        }
    }
}

/// The fields that tell one checkpoint row from another: `(topic, group_id, checksum)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupKey<'a> {
    /// Kafka topic.
    pub topic: &'a str,
    /// Consumer group.
    pub group_id: &'a str,
    /// Checksum or handler-defined duplicate key.
    pub checksum: &'a str,
}

/// A table retention prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrunedTable {
    /// `checkpoint_events`.
    Events,
    /// `checkpoint_failures`.
    Failures,
}

impl PrunedTable {
    /// `events` or `failures` (the metric label and the CLI's word).
    pub fn name(self) -> &'static str {
        match self {
            PrunedTable::Events => "events",
            PrunedTable::Failures => "failures",
        }
    }
}
