//! One delivery attempt: the message, its dedup key, the listener's policy, and every call
//! into handler code, each guarded so that a panic becomes a permanent handler error instead
//! of killing the partition.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use chrono::{NaiveDateTime, Utc};
use futures_util::FutureExt as _;

use super::Backoff;
use crate::crash::{self, CrashPoint};
use crate::handler::{Ack, Context, Handler, HandlerError, Outcome, default_retry_decision};
use crate::message::{Message, Metadata, Origin, checksum};
use crate::store::{
    Conn, DedupKey, FailureMetadata, JsonBytes, MetadataHeader, NewEvent, NewFailure, StoreError,
    check_text, check_time,
};

/// What a listener decides about its messages; the engine reads it on every attempt. The
/// default: a 1 s – 60 s backoff, retries without bound, no handler timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Backoff between retries of a failing message.
    pub backoff: Backoff,
    /// Retries for handlers that declare no `max_retries` (`[db_checkpoint] max_retries`);
    /// `None` retries them forever. A handler's own `max_retries` wins.
    pub default_max_retries: Option<u32>,
    /// Longest time one `consume` call may take. When it fires, the call is dropped at its
    /// pending await and the attempt fails with a retryable error of class `timeout`: its side
    /// effects outside the checkpoint transaction may have happened, so the retry is
    /// at-least-once for them. `None` (the default) never interrupts `consume`.
    pub handler_timeout: Option<Duration>,
}

/// Why a message fails without a call to `consume`: its dedup key panicked or does not fit,
/// or its earlier deliveries never returned often enough.
pub(super) struct Unusable {
    class: String,
    message: String,
}

impl Unusable {
    pub(super) fn of(error: &HandlerError) -> Self {
        Self {
            class: error.class().to_owned(),
            message: error.message().to_owned(),
        }
    }

    pub(super) fn error(&self) -> HandlerError {
        HandlerError::with_class(self.class.clone(), &self.message).into_permanent()
    }
}

/// The dedup key of `message`: its `dedup_key` when it gives one that fits, else the payload
/// MD5 (with the problem, when `dedup_key` panicked or gave a value the store cannot hold).
pub(super) fn dedup_key(handler: &dyn Handler, message: &Message) -> (String, Option<Unusable>) {
    match guard("dedup_key", || handler.dedup_key(message)) {
        Ok(Some(key)) if !key.is_empty() => match check_text("dedup key", Some(&key)) {
            Ok(()) => (key, None),
            Err(error) => (
                checksum(&message.payload),
                Some(Unusable::of(&HandlerError::new(error))),
            ),
        },
        Ok(_) => (checksum(&message.payload), None),
        Err(panic) => (checksum(&message.payload), Some(Unusable::of(&panic))),
    }
}

/// Runs handler code `site`; a panic comes back as a permanent error of class `panic`.
pub(super) fn guard<T>(site: &str, call: impl FnOnce() -> T) -> Result<T, HandlerError> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| HandlerError::panicked(site, &*payload))
}

/// The data one attempt works with.
pub(super) struct Attempt<'a> {
    pub(super) handler: &'a dyn Handler,
    pub(super) message: &'a Message,
    pub(super) origin: &'a Origin,
    pub(super) policy: &'a Policy,
    pub(super) metadata: Metadata,
    /// Set when the message fails without a call to `consume`.
    pub(super) unusable: Option<Unusable>,
}

/// How many transactions are open on the connection `consume` is handed: the engine's own,
/// and nothing else. Known, not read: on SQLite every read of diesel's transaction state is a
/// hop to the blocking pool, and the one after the call is enough.
const HANDED_OVER_AT: u32 = 1;

/// How a call of handler code handed the checkpoint transaction (`consume`, `consume_batch`)
/// ended.
pub(super) struct Called<T = Outcome> {
    pub(super) result: Result<T, HandlerError>,
    /// The call was dropped mid-flight (`handler_timeout`), or left the checkpoint transaction
    /// in a state that could not be restored: the connection is in an unknown state.
    pub(super) interrupted: bool,
}

/// Calls handler code `site` and polls the future it returns to its end: a panic, while the
/// future is made or polled, becomes a permanent error of class `panic`, and `limit`, when
/// given, drops the call at its pending await, which counts as interrupted. `call` reaches
/// the crash point inside it ([`crash::inside`]).
pub(super) async fn guarded_call<T, F>(
    site: &str,
    call: impl FnOnce() -> F,
    limit: Option<Duration>,
) -> Called<T>
where
    F: Future<Output = Result<T, HandlerError>>,
{
    let call = AssertUnwindSafe(async move { call().await }).catch_unwind();
    let caught = match limit {
        None => call.await,
        Some(limit) => match tokio::time::timeout(limit, call).await {
            Ok(caught) => caught,
            Err(_) => {
                return Called {
                    result: Err(HandlerError::timed_out(site, limit)),
                    interrupted: true,
                };
            }
        },
    };
    Called {
        result: caught.unwrap_or_else(|payload| Err(HandlerError::panicked(site, &*payload))),
        interrupted: false,
    }
}

/// After a call that was handed `conn` with only the engine's transaction open: rolls back
/// the transactions the handler opened and left open (it panicked inside its own
/// `transaction`). A result that would keep the call's writes (`keeps`) becomes a permanent
/// error of class `transaction_left_open` when there were any: those writes were never
/// committed by the handler. When they cannot be rolled back, or the handler ended the
/// checkpoint transaction itself, the call counts as interrupted. `message` names the call
/// in the log (the first of a batch).
pub(super) async fn close_left_open<T>(
    site: &str,
    conn: &mut Conn<'_>,
    called: Called<T>,
    keeps: impl Fn(&T) -> bool,
    message: &Message,
) -> Called<T> {
    match conn.close_transactions_above(HANDED_OVER_AT).await {
        // A bug in the handler, so permanent (it would do the same again); a skip or an error
        // already gives its writes up.
        Ok(closed) if closed > 0 && called.result.as_ref().is_ok_and(keeps) => Called {
            result: Err(HandlerError::with_class(
                "transaction_left_open",
                format!(
                    "`{site}` acked with a transaction of its own still open; it was rolled back"
                ),
            )
            .into_permanent()),
            interrupted: called.interrupted,
        },
        Ok(_) => called,
        Err(error) => {
            tracing::warn!(
                target: "checkpoint", topic = %message.topic,
                partition = message.partition, offset = message.offset, %error,
                site, "handler code left the checkpoint transaction in a state that could not \
                 be restored; the connection is closed and nothing of this call is kept"
            );
            Called {
                result: called.result.and_then(|_| {
                    Err(HandlerError::with_class(
                        "transaction_left_open",
                        format!(
                            "`{site}` left the checkpoint transaction in a state that could \
                             not be restored: {error}"
                        ),
                    ))
                }),
                interrupted: true,
            }
        }
    }
}

impl<'a> Attempt<'a> {
    pub(super) fn new(
        handler: &'a dyn Handler,
        message: &'a Message,
        origin: &'a Origin,
        policy: &'a Policy,
        retry_count: u32,
        key: Option<String>,
    ) -> Self {
        let (checksum, unusable) = match key {
            Some(key) => (key, None),
            None => dedup_key(handler, message),
        };
        let metadata = Metadata {
            listener_id: origin.listener_id.clone(),
            group_id: origin.group_id.clone(),
            handler: handler.name().to_owned(),
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            key: message
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            retry_count,
            checksum,
        };
        Self {
            handler,
            message,
            origin,
            policy,
            metadata,
            unusable,
        }
    }

    pub(super) fn key(&self) -> DedupKey<'_> {
        DedupKey {
            topic: &self.message.topic,
            group_id: &self.origin.group_id,
            checksum: &self.metadata.checksum,
        }
    }

    /// Calls `consume`, with the open transaction in transactional mode, catching a panic and
    /// bounding it by `handler_timeout` ([`guarded_call`]); then closes what it left open
    /// ([`close_left_open`]): an ack from a call that left a transaction of its own open
    /// becomes a permanent error of class `transaction_left_open`.
    ///
    /// `conn`, when given, holds exactly the engine's one transaction: the engine opens it on a
    /// connection from the pool, which never hands out one with a transaction open, and in a
    /// batch each call ends with that depth restored (or the connection discarded).
    pub(super) async fn consume(&self, conn: Option<Conn<'_>>) -> Called {
        crash::reach(CrashPoint::BeforeConsume);
        let handed_over = conn.is_some();
        let mut ctx = Context::new(&self.metadata, conn);
        let called = guarded_call(
            "consume",
            || crash::inside(self.handler.consume(self.message, &mut ctx), 1),
            self.policy.handler_timeout,
        )
        .await;
        match (handed_over && !called.interrupted, ctx.tx()) {
            (true, Ok(conn)) => {
                let acked = |outcome: &Outcome| matches!(outcome, Outcome::Ack(_));
                close_left_open("consume", conn, called, acked, self.message).await
            }
            _ => called,
        }
    }

    /// Whether to retry after `error`: never for permanent errors; else the handler's
    /// `retry_consume`, bounded by the listener's default `max_retries` when the handler
    /// declares none. A panicking `retry_consume` is the error that ends the message.
    pub(super) fn retry_decision(&self, error: HandlerError) -> Result<HandlerError, HandlerError> {
        if error.is_permanent() {
            return Err(error);
        }
        let handler = self.handler;
        let decided = guard("retry_consume", || {
            handler.retry_consume(self.message, &self.metadata, &error)
        });
        // The listener's default bounds only handlers that declare no max_retries; a handler's
        // own retry decision may go past its own max_retries.
        let declared = guard("max_retries", || handler.max_retries());
        let cap = match declared {
            Ok(Some(_)) => None,
            Ok(None) => self.policy.default_max_retries,
            Err(panic) => return Err(panic),
        };
        match decided {
            Ok(true) if default_retry_decision(cap, self.metadata.retry_count) => Ok(error),
            Ok(_) => Err(error),
            Err(panic) => Err(panic),
        }
    }

    /// The ack's fields, empty ones filled from the extractors; an error when an extractor
    /// panics or a value does not fit its column (the message then fails).
    pub(super) fn ack_fields(&self, ack: Ack) -> Result<AckFields, HandlerError> {
        let (handler, message) = (self.handler, self.message);
        let fields = AckFields {
            entity_id: match ack.entity_id {
                Some(v) => Some(v),
                None => guard("entity_id", || handler.entity_id(message))?,
            },
            event_time: match ack.event_time {
                Some(v) => Some(v),
                None => guard("entity_time", || handler.entity_time(message))?,
            }
            .map(|t| t.naive_utc()),
            event_type: match ack.event_type {
                Some(v) => Some(v),
                None => guard("event_type", || handler.event_type(message))?,
            },
            event_version: match ack.event_version {
                Some(v) => Some(v),
                None => guard("event_version", || handler.event_version(message))?,
            },
        };
        fields.check().map_err(HandlerError::permanent)?;
        Ok(fields)
    }

    /// The event row for `fields`.
    pub(super) fn event_row<'r>(&'r self, fields: &'r AckFields) -> NewEvent<'r> {
        NewEvent {
            topic: &self.message.topic,
            group_id: &self.origin.group_id,
            partition: self.message.partition,
            offset: self.message.offset,
            key: self.message.key.as_deref(),
            checksum: &self.metadata.checksum,
            entity_id: fields.entity_id.as_deref(),
            event_time: fields.event_time,
            event_type: fields.event_type.as_deref(),
            event_version: fields.event_version.as_deref(),
            payload: &self.message.payload,
            created_at: Some(Utc::now().naive_utc()),
        }
    }

    /// What the failure row of this attempt holds besides the row's own columns. Extractor
    /// values that panic or do not fit are left empty and named in `omitted`.
    pub(super) fn failure(&self, error: &HandlerError) -> FailureParts {
        let (handler, message) = (self.handler, self.message);
        let mut omitted = Vec::new();
        let mut text =
            |field: &'static str, value: Result<Option<String>, HandlerError>| match value
                .map(|v| check_text(field, v.as_deref()).map(|()| v))
            {
                Ok(Ok(value)) => value,
                Ok(Err(error)) => {
                    omitted.push(error.to_string());
                    None
                }
                Err(panic) => {
                    omitted.push(format!("{field} left empty: {}", panic.message()));
                    None
                }
            };
        let entity_id = text(
            "entity_id",
            guard("entity_id", || handler.entity_id(message)),
        );
        let event_type = text(
            "event_type",
            guard("event_type", || handler.event_type(message)),
        );
        let event_version = text(
            "event_version",
            guard("event_version", || handler.event_version(message)),
        );
        let event_time = match guard("entity_time", || handler.entity_time(message)) {
            Ok(time) => {
                let time = time.map(|t| t.naive_utc());
                match check_time("event_time", time) {
                    Ok(()) => time,
                    Err(error) => {
                        omitted.push(error.to_string());
                        None
                    }
                }
            }
            Err(panic) => {
                omitted.push(format!("event_time left empty: {}", panic.message()));
                None
            }
        };
        let mut error_message = error.message().to_owned();
        if !omitted.is_empty() {
            error_message = format!("{error_message} [{}]", omitted.join("; "));
        }
        let metadata = failure_metadata(self, omitted);
        FailureParts {
            entity_id,
            event_time,
            event_type,
            event_version,
            metadata: metadata.to_json(),
            error_message,
            backtrace: serde_json::Value::from(error.backtrace_lines()).to_string(),
        }
    }
}

/// Owned ack fields, resolved against the extractors.
#[derive(Debug, Clone, Default)]
pub(super) struct AckFields {
    pub(super) entity_id: Option<String>,
    pub(super) event_time: Option<NaiveDateTime>,
    pub(super) event_type: Option<String>,
    pub(super) event_version: Option<String>,
}

impl AckFields {
    fn check(&self) -> Result<(), StoreError> {
        check_time("event_time", self.event_time)?;
        check_text("entity_id", self.entity_id.as_deref())?;
        check_text("event_type", self.event_type.as_deref())?;
        check_text("event_version", self.event_version.as_deref())
    }
}

/// The owned parts of a failure row.
pub(super) struct FailureParts {
    entity_id: Option<String>,
    event_time: Option<NaiveDateTime>,
    event_type: Option<String>,
    event_version: Option<String>,
    metadata: String,
    error_message: String,
    backtrace: String,
}

impl FailureParts {
    pub(super) fn row<'r>(
        &'r self,
        attempt: &'r Attempt<'_>,
        error: &'r HandlerError,
    ) -> NewFailure<'r> {
        let message = attempt.message;
        NewFailure {
            created_at: Some(Utc::now().naive_utc()),
            topic: &message.topic,
            group_id: &attempt.origin.group_id,
            partition: message.partition,
            offset: message.offset,
            key: message.key.as_deref(),
            checksum: &attempt.metadata.checksum,
            entity_id: self.entity_id.as_deref(),
            event_time: self.event_time,
            event_type: self.event_type.as_deref(),
            event_version: self.event_version.as_deref(),
            payload: &message.payload,
            metadata: &self.metadata,
            error_class: error.class(),
            error_message: &self.error_message,
            error_backtrace: &self.backtrace,
            attempts: i32::try_from(attempt.metadata.retry_count.saturating_add(1))
                .unwrap_or(i32::MAX),
        }
    }
}

/// The failure metadata of `attempt`, with the extractor values that could not be stored.
fn failure_metadata(attempt: &Attempt<'_>, omitted: Vec<String>) -> FailureMetadata {
    let message = attempt.message;
    FailureMetadata {
        listener_id: attempt.metadata.listener_id.clone(),
        handler: attempt.metadata.handler.clone(),
        group_id: attempt.origin.group_id.clone(),
        topic: message.topic.clone(),
        partition: message.partition,
        offset: message.offset,
        key: message.key.as_deref().map(JsonBytes::of),
        headers: message
            .headers
            .iter()
            .map(|h| MetadataHeader {
                key: JsonBytes::of(&h.key),
                value: h.value.as_deref().map(JsonBytes::of),
            })
            .collect(),
        timestamp: message.timestamp.map(|t| t.to_rfc3339()),
        retry_count: attempt.metadata.retry_count,
        omitted,
    }
}
