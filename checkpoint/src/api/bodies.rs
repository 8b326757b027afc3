//! The typed JSON bodies the API answers with. The OpenAPI document describes these types, and
//! a test holds the two together field by field.

use base64::Engine as _;
use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::store::{Event, Failure};

/// A stored payload (or key) as JSON: the stored JSON text as it is, else the UTF-8 text, else
/// standard base64.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Payload {
    /// The payload's own JSON text, embedded unchanged (surrounding whitespace aside): big
    /// integers, `-0`, exponents, key order and duplicate keys survive.
    Json(Box<RawValue>),
    /// UTF-8 text that is not JSON.
    Utf8(String),
    /// Other bytes, in standard base64.
    Base64(String),
}

/// How [`Payload`] encodes the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// JSON text, embedded as JSON.
    Json,
    /// UTF-8 text, as a JSON string.
    Utf8,
    /// Any bytes, as a base64 string.
    Base64,
}

impl Payload {
    /// `bytes` as JSON when they are a JSON text, else UTF-8 text, else base64.
    pub fn of(bytes: &[u8]) -> (Self, PayloadEncoding) {
        match std::str::from_utf8(bytes) {
            Ok(text) => match json_text(text) {
                Some(raw) => (Self::Json(raw), PayloadEncoding::Json),
                None => (Self::Utf8(text.to_owned()), PayloadEncoding::Utf8),
            },
            Err(_) => (Self::Base64(base64(bytes)), PayloadEncoding::Base64),
        }
    }
}

/// `text` as raw JSON when it is JSON every parser accepts. `RawValue` alone lets an unpaired
/// surrogate escape (`"\ud800"`) through, which would make a client's parser refuse the whole
/// answer; a full parse refuses it.
fn json_text(text: &str) -> Option<Box<RawValue>> {
    serde_json::from_str::<serde_json::Value>(text).ok()?;
    RawValue::from_string(text.to_owned()).ok()
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// RFC 3339 UTC with milliseconds and `Z`.
fn timestamp(t: Option<NaiveDateTime>) -> Option<String> {
    t.map(|t| t.and_utc().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// `key_encoding` is present only when the key is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyEncoding {
    /// The key is standard base64.
    Base64,
}

/// An event: one row of `checkpoint_events`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct EventBody {
    /// Row id.
    pub id: i64,
    /// Topic.
    pub topic: String,
    /// Consumer group.
    pub group_id: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The message key: UTF-8 text, or base64 with `key_encoding`.
    pub key: Option<String>,
    /// `base64` when the key is not UTF-8; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_encoding: Option<KeyEncoding>,
    /// The handler's entity id.
    pub entity_id: Option<String>,
    /// The handler's event time (RFC 3339, UTC, milliseconds).
    pub event_time: Option<String>,
    /// The handler's event type.
    pub event_type: Option<String>,
    /// The handler's event version.
    pub event_version: Option<String>,
    /// The duplicate key.
    pub checksum: String,
    /// The payload.
    pub payload: Payload,
    /// How `payload` encodes the stored bytes.
    pub payload_encoding: PayloadEncoding,
    /// When the row was written (RFC 3339, UTC, milliseconds).
    pub created_at: Option<String>,
}

/// The message fields events and failures share.
struct Common<'a> {
    id: i64,
    topic: &'a str,
    group_id: &'a str,
    partition: i32,
    offset: i64,
    key: Option<&'a [u8]>,
    entity_id: Option<&'a str>,
    event_time: Option<NaiveDateTime>,
    event_type: Option<&'a str>,
    event_version: Option<&'a str>,
    checksum: &'a str,
    payload: &'a [u8],
    created_at: Option<NaiveDateTime>,
}

impl From<Common<'_>> for EventBody {
    fn from(c: Common<'_>) -> Self {
        let (key, key_encoding) = match c.key.map(|k| (k, std::str::from_utf8(k))) {
            None => (None, None),
            Some((_, Ok(text))) => (Some(text.to_owned()), None),
            Some((bytes, Err(_))) => (Some(base64(bytes)), Some(KeyEncoding::Base64)),
        };
        let (payload, payload_encoding) = Payload::of(c.payload);
        Self {
            id: c.id,
            topic: c.topic.to_owned(),
            group_id: c.group_id.to_owned(),
            partition: c.partition,
            offset: c.offset,
            key,
            key_encoding,
            entity_id: c.entity_id.map(str::to_owned),
            event_time: timestamp(c.event_time),
            event_type: c.event_type.map(str::to_owned),
            event_version: c.event_version.map(str::to_owned),
            checksum: c.checksum.to_owned(),
            payload,
            payload_encoding,
            created_at: timestamp(c.created_at),
        }
    }
}

impl From<&Event> for EventBody {
    fn from(e: &Event) -> Self {
        Common {
            id: e.id,
            topic: &e.topic,
            group_id: &e.group_id,
            partition: e.partition,
            offset: e.offset,
            key: e.key.as_deref(),
            entity_id: e.entity_id.as_deref(),
            event_time: e.event_time,
            event_type: e.event_type.as_deref(),
            event_version: e.event_version.as_deref(),
            checksum: &e.checksum,
            payload: &e.payload,
            created_at: e.created_at,
        }
        .into()
    }
}

/// A failure's `metadata` as stored: JSON embedded as it is (the engine writes
/// [`FailureMetadata`]; a row from a newer version or another tool keeps every field), else the
/// text.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum FailureMetadataBody {
    /// JSON, embedded as stored.
    Json(Box<RawValue>),
    /// Not JSON.
    Text(String),
}

impl FailureMetadataBody {
    fn of(stored: &str) -> Self {
        json_text(stored).map_or_else(|| Self::Text(stored.to_owned()), Self::Json)
    }
}

/// A failure: the event fields of the message, plus what went wrong.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct FailureBody {
    /// The message's fields, as in [`EventBody`].
    #[serde(flatten)]
    pub event: EventBody,
    /// Where the message came from and how it was handled.
    pub metadata: FailureMetadataBody,
    /// The error's class (its type name, `panic`, `timeout`, …).
    pub error_class: String,
    /// The error's message.
    pub error_message: String,
    /// The error and its sources, one line each.
    pub error_backtrace: Vec<String>,
    /// Attempts so far.
    pub attempts: i32,
}

impl From<&Failure> for FailureBody {
    fn from(f: &Failure) -> Self {
        let event = Common {
            id: f.id,
            topic: &f.topic,
            group_id: &f.group_id,
            partition: f.partition,
            offset: f.offset,
            key: f.key.as_deref(),
            entity_id: f.entity_id.as_deref(),
            event_time: f.event_time,
            event_type: f.event_type.as_deref(),
            event_version: f.event_version.as_deref(),
            checksum: &f.checksum,
            payload: &f.payload,
            created_at: f.created_at,
        }
        .into();
        let error_backtrace = match serde_json::from_str::<Vec<String>>(&f.error_backtrace) {
            Ok(lines) => lines,
            Err(_) if f.error_backtrace.is_empty() => Vec::new(),
            Err(_) => vec![f.error_backtrace.clone()],
        };
        Self {
            event,
            metadata: FailureMetadataBody::of(&f.metadata),
            error_class: f.error_class.clone(),
            error_message: f.error_message.clone(),
            error_backtrace,
            attempts: f.attempts,
        }
    }
}

/// The answer of a retry or a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Acknowledged {
    /// Whether the message is now settled (acknowledged, skipped or consumed before).
    pub acknowledged: bool,
}

/// The answer of `/v1/failures/count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Count {
    /// Failures matching the filters.
    pub count: i64,
}

/// Every error's body: `{"error":true,"message":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// Always `true`.
    pub error: bool,
    /// What went wrong.
    pub message: String,
}

/// The body of `/health/live`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Liveness {
    /// Always `true`: the process answers.
    pub live: bool,
}

/// The body of `/health/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Whether every check passed.
    pub ready: bool,
    /// The database check.
    pub database: Check,
    /// Each listener's membership.
    pub listeners: Vec<ListenerReadiness>,
}

/// One check: passed, or why not.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Passed.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One listener in `/v1/listeners`: its settings, counters, partitions and recent throughput.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerBody {
    /// The listener's id.
    pub listener_id: String,
    /// Its settings, secrets masked (absent when the probe carries none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<crate::listener::ListenerSettings>,
    /// Whether it has joined its group.
    pub joined: bool,
    /// The last Kafka client error since it last joined, secrets masked.
    pub kafka_error: Option<String>,
    /// Its counters since it started.
    pub counters: Counters,
    /// Each assigned partition's state.
    pub partitions: Vec<crate::listener::PartitionSnapshot>,
    /// Partitions an operator paused on this instance, assigned now or not: a pause outlives
    /// a rebalance.
    pub paused_partitions: Vec<i32>,
    /// Messages settled, sampled every five seconds over the last ten minutes, oldest first.
    pub throughput: Vec<crate::listener::ThroughputSample>,
}

/// A listener's counters (see [`StatsSnapshot`](crate::listener::StatsSnapshot)).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Counters {
    /// Messages received from Kafka.
    pub received: u64,
    /// Events stored.
    pub acknowledged: u64,
    /// Messages the handler skipped.
    pub skipped: u64,
    /// Duplicates of stored events.
    pub duplicates: u64,
    /// Failure rows recorded.
    pub failed: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Bytes received and not yet settled.
    pub queued_bytes: usize,
    /// Partitions assigned now.
    pub assigned_partitions: usize,
}

impl From<&super::ListenerProbe> for ListenerBody {
    fn from(probe: &super::ListenerProbe) -> Self {
        let stats = probe.stats.snapshot();
        Self {
            listener_id: probe.listener_id.clone(),
            settings: probe.settings.clone(),
            joined: stats.joined,
            kafka_error: probe.stats.last_client_error(),
            counters: stats.into(),
            partitions: probe.stats.partitions(),
            paused_partitions: probe.control.paused(),
            throughput: probe.stats.throughput(),
        }
    }
}

impl From<crate::listener::StatsSnapshot> for Counters {
    fn from(s: crate::listener::StatsSnapshot) -> Self {
        Self {
            received: s.received,
            acknowledged: s.acknowledged,
            skipped: s.skipped,
            duplicates: s.duplicates,
            failed: s.failed,
            retries: s.retries,
            queued_bytes: s.queued_bytes,
            assigned_partitions: s.assigned_partitions,
        }
    }
}

/// The answer to a bulk retry or delete of the failures matching a filter.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BulkOutcome {
    /// Failures that matched the filters when the request came.
    pub matched: i64,
    /// Failures this request took on: the oldest `limit` of those matching.
    pub processed: usize,
    /// Retries whose handler acknowledged (event stored, failure deleted).
    pub acknowledged: usize,
    /// Retries that ended without a new event: the handler skipped, or the event was already
    /// stored (failure deleted either way).
    pub settled_otherwise: usize,
    /// Retries whose handler failed again (failure kept, one more attempt).
    pub failed: usize,
    /// Retries with no handler for the row's topic and group in this process (kept).
    pub conflicts: usize,
    /// Failures deleted.
    pub deleted: usize,
    /// Rows gone before their turn (settled or deleted by someone else meanwhile).
    pub vanished: usize,
}

/// The answer to a pause or resume.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionControl {
    /// The listener.
    pub listener_id: String,
    /// The partition.
    pub partition: i32,
    /// Paused by an operator now.
    pub paused_by_operator: bool,
    /// False when it already was in that state.
    pub changed: bool,
}

/// One listener in `/health/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerReadiness {
    /// The listener's id.
    pub listener_id: String,
    /// Whether it has joined its group.
    pub joined: bool,
    /// Partitions assigned to it.
    pub assigned_partitions: usize,
    /// Why a listener has not joined, often: a broker unreachable, a TLS certificate refused.
    pub kafka_error: Option<String>,
}
