//! The checkpoint algorithm for one message, pure of Kafka and HTTP: duplicate check →
//! consume → ack (race-free insert) / skip / retry / failure, with the six notifications.
//!
//! Two modes, chosen by [`Handler::transactional`]:
//! - **per-message**: the duplicate check, then `consume`, then `INSERT … ON CONFLICT DO
//!   NOTHING` of the event. A crash between the handler's side effect and the insert means the
//!   message is consumed again on redelivery (at-least-once for effects outside the database).
//! - **transactional**: one database transaction claims the event row first, runs `consume`
//!   with that transaction ([`Context::tx`]), and commits on ack or rolls back on skip and
//!   error. The handler's writes and the checkpoint commit or vanish together — exactly once,
//!   also across crashes, rebalances and concurrent consumers (a concurrent claim of the same
//!   key waits for the first transaction, then finds the row).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::Utc;

use crate::error::StoreError;
use crate::handler::{Ack, Context, Handler, HandlerError, Outcome};
use crate::instrument::{Instrument, Notification, Observer};
use crate::message::{Message, Metadata, Origin};
use crate::store::{Conn, DedupKey, NewEvent, NewFailure, Store};

/// Exponential backoff with jitter: attempt `n` waits `min · 2ⁿ`, capped at `max`, plus up to
/// 20% random jitter (still capped at `max`). Never less than the configured delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub min: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `min` to `max` (swapped if given the wrong way round).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min: min.min(max),
            max: max.max(min),
        }
    }

    /// The delay before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let base = self.min.saturating_mul(factor).min(self.max);
        let jitter_ms = u64::try_from(base.as_millis() / 5).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(fastrand::u64(0..=jitter_ms));
        (base + jitter).min(self.max).max(base)
    }
}

impl Default for Backoff {
    /// 1 s to 60 s.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// The result of [`Engine::check_ahead`]: which keys of a run of messages are stored.
#[derive(Debug, Default)]
pub struct CheckedAhead {
    /// The topic of the checked run.
    topic: String,
    /// The partition of the checked run.
    partition: i32,
    /// The dedup key of each checked message, by offset: computed once, for the check and the
    /// attempt.
    keys: HashMap<i64, String>,
    /// Dedup keys of the run's stored events.
    stored: HashSet<String>,
    /// The check's time per message.
    share: Duration,
}

impl CheckedAhead {
    /// Records `checksum` as stored (a message settled after the check); a key of another
    /// topic than the checked one is left to its own check.
    fn add_stored(&mut self, topic: &str, checksum: &str) {
        if topic == self.topic {
            self.stored.insert(checksum.to_owned());
        }
    }

    /// The dedup key the check computed for `message`, if it was checked.
    fn take_key(&mut self, message: &Message) -> Option<String> {
        if message.topic == self.topic && message.partition == self.partition {
            self.keys.remove(&message.offset)
        } else {
            None
        }
    }
}

/// How one delivery attempt of a message ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Disposition {
    /// `consume` acked and the event row is stored (committed). `inserted` is false when a
    /// concurrent per-message consumer stored the same key first.
    Acknowledged {
        /// Whether this attempt inserted the row.
        inserted: bool,
    },
    /// `consume` skipped; nothing stored.
    Skipped,
    /// The event was already stored; `consume` was not called.
    AlreadyConsumed,
    /// `consume` failed and the retry decision says to try again (after a backoff, with
    /// `retry_count + 1`). Nothing was stored.
    Retry(HandlerError),
    /// `consume` failed for good; the failure row is stored.
    Failed {
        /// Id of the failure row.
        failure_id: i64,
        /// The last error.
        error: HandlerError,
    },
}

impl Disposition {
    /// True when the message is settled and its offset may be committed.
    pub fn is_settled(&self) -> bool {
        !matches!(self, Self::Retry(_))
    }
}

/// How a retry of a stored failure or event ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum RetryOutcome {
    /// `consume` acked: the event is stored (and the failure deleted).
    Acknowledged,
    /// `consume` skipped (the failure is deleted).
    Skipped,
    /// The event was already stored; `consume` was not called (the failure is deleted).
    AlreadyConsumed,
    /// `consume` failed: the failure is kept with one more attempt and this error.
    Failed(HandlerError),
}

impl RetryOutcome {
    /// True when the retry acknowledged the event.
    pub fn acknowledged(&self) -> bool {
        matches!(self, Self::Acknowledged)
    }
}

/// An error of the engine itself (not of the handler).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed; when [`StoreError::is_unavailable`], try again later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No failure with this id.
    #[error("failure not found")]
    FailureNotFound(i64),
    /// No event with this id.
    #[error("event not found")]
    EventNotFound(i64),
}

impl EngineError {
    /// True when waiting and trying again may succeed (the database is unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_unavailable())
    }
}

/// Whether a failed attempt may be retried by the caller or must be settled now.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RetryMode {
    /// Ask the handler's retry decision; record a failure when it says no.
    Decide,
    /// Never record a failure: report the error (API retries update the existing failure).
    Report,
}

/// Takes messages through the checkpoint algorithm against a [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    instrument: Instrument,
    outage_backoff: Backoff,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .finish()
    }
}

/// The data one attempt works with.
struct Attempt<'a> {
    handler: &'a dyn Handler,
    message: &'a Message,
    origin: &'a Origin,
    metadata: Metadata,
}

impl Attempt<'_> {
    fn key(&self) -> DedupKey<'_> {
        DedupKey {
            topic: &self.message.topic,
            group_id: &self.origin.group_id,
            checksum: &self.metadata.checksum,
        }
    }

    /// The event row for `ack`; fields the ack leaves empty come from the extractors.
    fn event_row<'r>(&'r self, ack: &'r AckFields) -> NewEvent<'r> {
        NewEvent {
            topic: &self.message.topic,
            group_id: &self.origin.group_id,
            partition: self.message.partition,
            offset: self.message.offset,
            key: self.message.key.as_deref(),
            checksum: &self.metadata.checksum,
            entity_id: ack.entity_id.as_deref(),
            event_time: ack.event_time,
            event_type: ack.event_type.as_deref(),
            event_version: ack.event_version.as_deref(),
            payload: &self.message.payload,
            created_at: Some(Utc::now().naive_utc()),
        }
    }

    fn ack_fields(&self, ack: Ack) -> AckFields {
        let handler = self.handler;
        let message = self.message;
        AckFields {
            entity_id: ack.entity_id.or_else(|| handler.entity_id(message)),
            event_time: ack
                .event_time
                .or_else(|| handler.entity_time(message))
                .map(|t| t.naive_utc()),
            event_type: ack.event_type.or_else(|| handler.event_type(message)),
            event_version: ack.event_version.or_else(|| handler.event_version(message)),
        }
    }
}

/// Owned ack fields, resolved against the extractors.
#[derive(Default)]
struct AckFields {
    entity_id: Option<String>,
    event_time: Option<chrono::NaiveDateTime>,
    event_type: Option<String>,
    event_version: Option<String>,
}

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            instrument: Instrument::default(),
            outage_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// Adds an observer that receives every notification.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.instrument.add(observer);
        self
    }

    /// Sets how long to wait between attempts while the database is unreachable after
    /// `consume` ran (default 100 ms to 5 s).
    pub fn with_outage_backoff(mut self, backoff: Backoff) -> Self {
        self.outage_backoff = backoff;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The duplicate key of `message` for `handler`: its `dedup_key`, else the payload MD5.
    pub fn dedup_key(handler: &dyn Handler, message: &Message) -> String {
        handler
            .dedup_key(message)
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| message.checksum())
    }

    /// Runs one delivery attempt (`retry_count` earlier attempts failed).
    ///
    /// Returns [`Disposition::Retry`] when the handler failed and may be retried; the caller
    /// backs off and calls again with `retry_count + 1`. An `Err` means the store failed before
    /// the message was settled: nothing is lost, try the same attempt again later.
    pub async fn process(
        &self,
        handler: &dyn Handler,
        message: &Message,
        origin: &Origin,
        retry_count: u32,
    ) -> Result<Disposition, EngineError> {
        let attempt = self.attempt(handler, message, origin, retry_count, None);
        self.around(&attempt, RetryMode::Decide).await
    }

    /// The duplicate check of a run of messages of one topic and partition (the first message's
    /// topic), ahead of
    /// processing them one by one with [`Engine::process_checked`]: one query instead of one
    /// per message. Each message is still consumed, stored and settled on its own.
    pub async fn check_ahead(
        &self,
        handler: &dyn Handler,
        messages: &[Message],
        origin: &Origin,
    ) -> Result<CheckedAhead, EngineError> {
        let started = Instant::now();
        let Some(first) = messages.first() else {
            return Ok(CheckedAhead::default());
        };
        let keys: Vec<String> = messages
            .iter()
            .map(|m| Self::dedup_key(handler, m))
            .collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let stored = self
            .store
            .existing_checksums(&first.topic, &origin.group_id, &refs)
            .await?;
        Ok(CheckedAhead {
            topic: first.topic.clone(),
            partition: first.partition,
            keys: messages.iter().map(|m| m.offset).zip(keys).collect(),
            stored,
            share: started.elapsed() / u32::try_from(messages.len().max(1)).unwrap_or(u32::MAX),
        })
    }

    /// [`Engine::process`] with the duplicate check taken from `ahead` (see
    /// [`Engine::check_ahead`]). A message this call settles as stored is added to `ahead`, so a
    /// repeat later in the run counts as a duplicate. A key stored by someone else after the
    /// check is still caught: by the insert's conflict handling in per-message mode, by the
    /// claim in transactional mode.
    pub async fn process_checked(
        &self,
        handler: &dyn Handler,
        message: &Message,
        origin: &Origin,
        retry_count: u32,
        ahead: &mut CheckedAhead,
    ) -> Result<Disposition, EngineError> {
        let key = ahead.take_key(message);
        let attempt = self.attempt(handler, message, origin, retry_count, key);
        let started = Instant::now();
        // A message of another topic than the checked run's is checked by its own insert.
        let exists =
            message.topic == ahead.topic && ahead.stored.contains(&attempt.metadata.checksum);
        self.fire(
            Notification::EventAlreadyExistsCheck,
            &attempt,
            Some(ahead.share),
        );
        let result = self.after_check(&attempt, RetryMode::Decide, exists).await;
        self.fire(
            Notification::AroundConsume,
            &attempt,
            Some(started.elapsed() + ahead.share),
        );
        if let Ok(Disposition::Acknowledged { .. } | Disposition::AlreadyConsumed) = &result {
            ahead.add_stored(&message.topic, &attempt.metadata.checksum);
        }
        result
    }

    /// Runs attempts until the message is settled: backs off between handler retries (per
    /// `backoff`) and waits out database outages. Returns the settling disposition.
    pub async fn process_until_settled(
        &self,
        handler: &dyn Handler,
        message: &Message,
        origin: &Origin,
        backoff: &Backoff,
    ) -> Result<Disposition, EngineError> {
        let mut retry_count = 0;
        let mut outages = 0;
        loop {
            match self.process(handler, message, origin, retry_count).await {
                Ok(Disposition::Retry(error)) => {
                    let delay = backoff.delay(retry_count);
                    tracing::warn!(
                        target: "checkpoint",
                        topic = %message.topic, partition = message.partition, offset = message.offset,
                        retry_count, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error = %error, "consume failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    retry_count += 1;
                }
                Ok(settled) => return Ok(settled),
                Err(error) if error.is_unavailable() => {
                    let delay = self.outage_backoff.delay(outages);
                    tracing::warn!(target: "checkpoint", %error, "database unavailable; waiting");
                    tokio::time::sleep(delay).await;
                    outages += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Re-runs a stored failure through `handler` once, with the same duplicate key as the
    /// original message. Ack → event stored, failure deleted; skip or already consumed →
    /// failure deleted; error → failure kept with `attempts + 1` and the new error.
    pub async fn retry_failure(
        &self,
        handler: &dyn Handler,
        failure_id: i64,
    ) -> Result<RetryOutcome, EngineError> {
        let failure = self
            .store
            .get_failure(failure_id)
            .await?
            .ok_or(EngineError::FailureNotFound(failure_id))?;
        let stored: serde_json::Value = serde_json::from_str(&failure.metadata).unwrap_or_default();
        let message = Message {
            topic: failure.topic,
            partition: failure.partition,
            offset: failure.offset,
            key: failure.key,
            payload: failure.payload,
            headers: headers_from_json(&stored),
            timestamp: None,
        };
        let outcome = self.run_once(handler, &message, failure.group_id).await?;
        if let RetryOutcome::Failed(error) = &outcome {
            let backtrace = backtrace_json(error);
            self.store
                .record_failed_retry(failure_id, error.class(), error.message(), &backtrace)
                .await?;
            return Ok(outcome);
        }
        self.store.delete_failure(failure_id).await?;
        Ok(outcome)
    }

    /// Re-runs a stored event through `handler` once, with the same duplicate check as any
    /// delivery: since the event is stored, this reports [`RetryOutcome::AlreadyConsumed`]
    /// without calling `consume` unless the row's key no longer matches what the handler
    /// derives.
    pub async fn retry_event(
        &self,
        handler: &dyn Handler,
        event_id: i64,
    ) -> Result<RetryOutcome, EngineError> {
        let event = self
            .store
            .get_event(event_id)
            .await?
            .ok_or(EngineError::EventNotFound(event_id))?;
        let message = Message {
            topic: event.topic,
            partition: event.partition,
            offset: event.offset,
            key: event.key,
            payload: event.payload,
            headers: Vec::new(),
            timestamp: None,
        };
        self.run_once(handler, &message, event.group_id).await
    }

    /// One attempt on behalf of an operator (API retry): errors are reported, not recorded.
    async fn run_once(
        &self,
        handler: &dyn Handler,
        message: &Message,
        group_id: String,
    ) -> Result<RetryOutcome, EngineError> {
        let origin = Origin::new(group_id).with_listener_id("api/retry");
        let attempt = self.attempt(handler, message, &origin, 0, None);
        Ok(match self.around(&attempt, RetryMode::Report).await? {
            Disposition::Retry(error) | Disposition::Failed { error, .. } => {
                RetryOutcome::Failed(error)
            }
            Disposition::Acknowledged { .. } => RetryOutcome::Acknowledged,
            Disposition::Skipped => RetryOutcome::Skipped,
            Disposition::AlreadyConsumed => RetryOutcome::AlreadyConsumed,
        })
    }

    /// The data of one attempt; `checksum` is the message's dedup key when a duplicate check
    /// ahead already computed it.
    fn attempt<'a>(
        &self,
        handler: &'a dyn Handler,
        message: &'a Message,
        origin: &'a Origin,
        retry_count: u32,
        checksum: Option<String>,
    ) -> Attempt<'a> {
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
            checksum: checksum.unwrap_or_else(|| Self::dedup_key(handler, message)),
        };
        Attempt {
            handler,
            message,
            origin,
            metadata,
        }
    }

    /// `around_consume`: wraps the whole attempt, whatever its result.
    async fn around(
        &self,
        attempt: &Attempt<'_>,
        mode: RetryMode,
    ) -> Result<Disposition, EngineError> {
        let started = Instant::now();
        let result = self.checked(attempt, mode).await;
        self.fire(
            Notification::AroundConsume,
            attempt,
            Some(started.elapsed()),
        );
        result
    }

    async fn checked(
        &self,
        attempt: &Attempt<'_>,
        mode: RetryMode,
    ) -> Result<Disposition, EngineError> {
        let started = Instant::now();
        let exists = self.store.event_exists(attempt.key()).await?;
        self.fire(
            Notification::EventAlreadyExistsCheck,
            attempt,
            Some(started.elapsed()),
        );
        self.after_check(attempt, mode, exists).await
    }

    /// Everything after the duplicate check: consume unless `exists`.
    async fn after_check(
        &self,
        attempt: &Attempt<'_>,
        mode: RetryMode,
        exists: bool,
    ) -> Result<Disposition, EngineError> {
        if exists {
            self.fire(Notification::EventAlreadyConsumed, attempt, None);
            return Ok(Disposition::AlreadyConsumed);
        }
        if attempt.handler.transactional() {
            self.consume_in_transaction(attempt, mode).await
        } else {
            self.consume_then_insert(attempt, mode).await
        }
    }

    /// `event_action`: calls `consume`, with the open transaction in transactional mode.
    async fn consume(
        &self,
        attempt: &Attempt<'_>,
        conn: Option<Conn<'_>>,
    ) -> Result<Outcome, HandlerError> {
        let started = Instant::now();
        let result = {
            let mut ctx = Context::new(&attempt.metadata, conn);
            attempt.handler.consume(attempt.message, &mut ctx).await
        };
        self.fire(Notification::EventAction, attempt, Some(started.elapsed()));
        result
    }

    /// Per-message mode.
    async fn consume_then_insert(
        &self,
        attempt: &Attempt<'_>,
        mode: RetryMode,
    ) -> Result<Disposition, EngineError> {
        let result = self.consume(attempt, None).await;
        match result {
            Ok(Outcome::Ack(ack)) => {
                let started = Instant::now();
                let fields = attempt.ack_fields(ack);
                let row = attempt.event_row(&fields);
                // consume has run: never run it again because the database blinked.
                let inserted = match self.wait_out_outage(|| self.store.insert_event(&row)).await {
                    Ok(inserted) => inserted,
                    Err(EngineError::Store(error @ StoreError::FieldTooLong { .. })) => {
                        let error = HandlerError::permanent(error);
                        return self.settle_error(attempt, error, mode, None).await;
                    }
                    Err(error) => return Err(error),
                };
                if !inserted {
                    tracing::warn!(
                        target: "checkpoint",
                        topic = %attempt.message.topic, checksum = %attempt.metadata.checksum,
                        "a concurrent consumer stored this event first; use transactional mode \
                         to make the handler's effects exactly-once too"
                    );
                }
                self.fire(
                    Notification::EventAcknowledged,
                    attempt,
                    Some(started.elapsed()),
                );
                Ok(Disposition::Acknowledged { inserted })
            }
            Ok(_) => {
                self.fire(Notification::EventSkipped, attempt, None);
                Ok(Disposition::Skipped)
            }
            Err(error) => self.settle_error(attempt, error, mode, None).await,
        }
    }

    /// Transactional mode: claim, consume with the transaction, commit on ack only.
    async fn consume_in_transaction(
        &self,
        attempt: &Attempt<'_>,
        mode: RetryMode,
    ) -> Result<Disposition, EngineError> {
        let mut pooled = self.store.conn().await?;
        let mut conn = pooled.conn();
        conn.begin().await?;
        let claim_fields = AckFields::default();
        let claimed = match conn.insert_event(&attempt.event_row(&claim_fields)).await {
            Ok(claimed) => claimed,
            Err(error) => return Err(abandon(&mut conn, error).await),
        };
        if !claimed {
            // Another consumer committed this key while we checked.
            conn.rollback().await?;
            self.fire(Notification::EventAlreadyConsumed, attempt, None);
            return Ok(Disposition::AlreadyConsumed);
        }
        let result = self.consume(attempt, Some(conn.reborrow())).await;
        match result {
            Ok(Outcome::Ack(ack)) => {
                let started = Instant::now();
                let fields = attempt.ack_fields(ack);
                let row = attempt.event_row(&fields);
                let completed = match conn.complete_event(attempt.key(), &row).await {
                    Ok(()) => conn.commit().await,
                    Err(error) => Err(error),
                };
                match completed {
                    Ok(()) => {
                        self.fire(
                            Notification::EventAcknowledged,
                            attempt,
                            Some(started.elapsed()),
                        );
                        Ok(Disposition::Acknowledged { inserted: true })
                    }
                    Err(error @ StoreError::FieldTooLong { .. }) => {
                        conn.rollback().await?;
                        drop(pooled);
                        self.settle_error(attempt, HandlerError::permanent(error), mode, None)
                            .await
                    }
                    Err(error) => Err(abandon(&mut conn, error).await),
                }
            }
            Ok(_) => {
                conn.rollback().await?;
                self.fire(Notification::EventSkipped, attempt, None);
                Ok(Disposition::Skipped)
            }
            Err(error) => {
                conn.rollback().await?;
                drop(pooled);
                self.settle_error(attempt, error, mode, None).await
            }
        }
    }

    /// Retry, or record the failure and skip.
    async fn settle_error(
        &self,
        attempt: &Attempt<'_>,
        error: HandlerError,
        mode: RetryMode,
        conn: Option<&mut Conn<'_>>,
    ) -> Result<Disposition, EngineError> {
        let retry = match mode {
            // The caller owns the failure row already; it only needs the error.
            RetryMode::Report => true,
            RetryMode::Decide => {
                !error.is_permanent()
                    && attempt
                        .handler
                        .retry_consume(attempt.message, &attempt.metadata, &error)
            }
        };
        if retry {
            return Ok(Disposition::Retry(error));
        }
        let failure_id = self.record_failure(attempt, &error, conn).await?;
        tracing::error!(
            target: "checkpoint",
            topic = %attempt.message.topic, partition = attempt.message.partition,
            offset = attempt.message.offset, failure_id, error = %error,
            "consume failed for good; failure recorded and message skipped"
        );
        self.fire(Notification::EventSkipped, attempt, None);
        Ok(Disposition::Failed { failure_id, error })
    }

    async fn record_failure(
        &self,
        attempt: &Attempt<'_>,
        error: &HandlerError,
        conn: Option<&mut Conn<'_>>,
    ) -> Result<i64, EngineError> {
        let handler = attempt.handler;
        let message = attempt.message;
        let entity_id = handler.entity_id(message);
        let event_type = handler.event_type(message);
        let event_version = handler.event_version(message);
        let metadata = failure_metadata(attempt);
        let backtrace = backtrace_json(error);
        let row = NewFailure {
            created_at: Some(Utc::now().naive_utc()),
            topic: &message.topic,
            group_id: &attempt.origin.group_id,
            partition: message.partition,
            offset: message.offset,
            key: message.key.as_deref(),
            checksum: &attempt.metadata.checksum,
            entity_id: entity_id.as_deref(),
            event_time: handler.entity_time(message).map(|t| t.naive_utc()),
            event_type: event_type.as_deref(),
            event_version: event_version.as_deref(),
            payload: &message.payload,
            metadata: &metadata,
            error_class: error.class(),
            error_message: error.message(),
            error_backtrace: &backtrace,
            attempts: i32::try_from(attempt.metadata.retry_count.saturating_add(1))
                .unwrap_or(i32::MAX),
        };
        match conn {
            // Inside the caller's transaction: an outage aborts it, and the caller retries.
            Some(conn) => Ok(conn.record_failure(&row).await?),
            None => {
                self.wait_out_outage(|| self.store.record_failure(&row))
                    .await
            }
        }
    }

    /// Runs `op` until it succeeds or fails for a reason other than an unreachable database.
    async fn wait_out_outage<T, F, Fut>(&self, mut op: F) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut outages = 0;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) if error.is_unavailable() => {
                    tracing::warn!(target: "checkpoint", %error, "database unavailable; waiting to store the outcome");
                    tokio::time::sleep(self.outage_backoff.delay(outages)).await;
                    outages += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    fn fire(&self, notification: Notification, attempt: &Attempt<'_>, duration: Option<Duration>) {
        self.instrument
            .fire(notification, &attempt.metadata, duration);
    }
}

/// Rolls back after `error` (best effort: the connection may be gone) and returns the error.
async fn abandon(conn: &mut Conn<'_>, error: StoreError) -> EngineError {
    if let Err(rollback) = conn.rollback().await {
        tracing::debug!(target: "checkpoint", %rollback, "rollback after a failed checkpoint step failed");
    }
    error.into()
}

/// Renders bytes as text when they are UTF-8, else as `{"base64": "…"}`.
fn bytes_json(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::Value::String(text.to_owned()),
        Err(_) => {
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
    }
}

fn json_bytes(value: &serde_json::Value) -> Option<Vec<u8>> {
    match value {
        serde_json::Value::String(text) => Some(text.clone().into_bytes()),
        serde_json::Value::Object(map) => map
            .get("base64")
            .and_then(serde_json::Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()),
        _ => None,
    }
}

fn failure_metadata(attempt: &Attempt<'_>) -> String {
    let message = attempt.message;
    let headers: Vec<serde_json::Value> = message
        .headers
        .iter()
        .map(|h| serde_json::json!({ "key": h.key, "value": h.value.as_deref().map(bytes_json) }))
        .collect();
    serde_json::json!({
        "listener_id": attempt.metadata.listener_id,
        "handler": attempt.metadata.handler,
        "group_id": attempt.origin.group_id,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": message.key.as_deref().map(bytes_json),
        "headers": headers,
        "timestamp": message.timestamp.map(|t| t.to_rfc3339()),
        "retry_count": attempt.metadata.retry_count,
    })
    .to_string()
}

fn headers_from_json(metadata: &serde_json::Value) -> Vec<crate::message::Header> {
    metadata
        .get("headers")
        .and_then(serde_json::Value::as_array)
        .map(|headers| {
            headers
                .iter()
                .filter_map(|h| {
                    Some(crate::message::Header {
                        key: h.get("key")?.as_str()?.to_owned(),
                        value: h.get("value").and_then(json_bytes),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn backtrace_json(error: &HandlerError) -> String {
    serde_json::Value::from(error.backtrace_lines()).to_string()
}

mod batch;
pub use self::batch::BatchOutcome;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_min_and_caps_at_max() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for (attempt, base) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1000),
            (40, 1000),
        ] {
            let delay = backoff.delay(attempt);
            assert!(
                delay >= Duration::from_millis(base),
                "attempt {attempt}: {delay:?}"
            );
            assert!(
                delay <= Duration::from_millis((base * 6 / 5).min(1000)),
                "attempt {attempt}: {delay:?}"
            );
        }
    }

    #[test]
    fn binary_header_values_round_trip_through_metadata() {
        let value = bytes_json(&[0xff, 0x00]);
        assert_eq!(json_bytes(&value), Some(vec![0xff, 0x00]));
        assert_eq!(json_bytes(&bytes_json(b"text")), Some(b"text".to_vec()));
    }
}
