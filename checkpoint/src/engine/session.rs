//! The one retry loop: a partition's messages taken until settled, handler retries backed
//! off, database outages waited out, and store steps after `consume` retried on their own.
//! The listener feeds a [`Session`] and tells it, through [`Progress`], how to wait and when
//! to stop; operator retries and tests use the same loop.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::modes::Count;
use super::{Disposition, Engine, EngineError, Policy};
use crate::handler::{BoxFuture, Handler};
use crate::message::{Message, Origin};
use crate::store::StoreError;

/// Tries of a store error that is transient but not an outage (a deadlock, a lock wait, a
/// killed connection, SQLite busy) before it is taken as permanent. An outage is waited out
/// without bound.
const TRANSIENT_TRIES: u32 = 8;

/// Why the engine waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitCause {
    /// Before retry number `retry_count + 1` of a failing message.
    Retry {
        /// Failed attempts so far, minus one.
        retry_count: u32,
    },
    /// The database failed; the same step is tried again.
    Database,
}

/// How the engine waits between tries, and what it tells its caller: the listener marks the
/// partition as backing off, counts, stores offsets, and stops waiting on shutdown.
pub trait Progress: Send + Sync {
    /// Waits `delay` before the next try; `false` stops trying (the message stays unsettled
    /// and is delivered again later).
    fn wait(&self, delay: Duration, cause: WaitCause) -> BoxFuture<'_, bool>;

    /// `message` is settled: its offset may be committed.
    fn settled(&self, _message: &Message, _disposition: &Disposition) {}
}

/// Waits every delay in full and never stops: for callers without a shutdown signal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

impl Progress for Sleep {
    fn wait(&self, delay: Duration, _cause: WaitCause) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            true
        })
    }
}

/// The result of [`Engine::check_ahead`]: which keys of a run of messages are stored.
#[derive(Debug, Default)]
pub struct CheckedAhead {
    /// The topic of the checked run.
    pub(super) topic: String,
    /// The partition of the checked run.
    pub(super) partition: i32,
    /// The dedup key of each checked message, by offset: computed once, for the check and the
    /// attempt.
    pub(super) keys: HashMap<i64, String>,
    /// Dedup keys of the run's stored events.
    pub(super) stored: HashSet<String>,
    /// The check's time per message.
    pub(super) share: Duration,
}

impl CheckedAhead {
    /// Records `checksum` as stored (a message settled after the check); a key of another
    /// topic than the checked one is left to its own check.
    pub(super) fn add_stored(&mut self, topic: &str, checksum: &str) {
        if topic == self.topic {
            self.stored.insert(checksum.to_owned());
        }
    }

    /// The dedup key the check computed for `message`, if it was checked.
    pub(super) fn take_key(&mut self, message: &Message) -> Option<String> {
        if message.topic == self.topic && message.partition == self.partition {
            self.keys.remove(&message.offset)
        } else {
            None
        }
    }
}

/// Store errors seen by one step, for [`Engine::wait_after`].
#[derive(Debug, Default)]
pub(super) struct Tries {
    total: u32,
    transient: u32,
}

impl Engine {
    /// Runs a store step until it succeeds, waiting out transient errors: the step after
    /// `consume` ran, which must never run `consume` again.
    pub(super) async fn store_step<T, F, Fut>(
        &self,
        progress: &dyn Progress,
        mut step: F,
    ) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        let mut tries = Tries::default();
        loop {
            match step().await {
                Ok(value) => return Ok(value),
                Err(error) => match self.wait_after(error, &mut tries, progress).await {
                    Ok(()) => {}
                    // `consume` has run: the attempt must not be run again for this error.
                    Err(EngineError::Store(error)) => return Err(EngineError::Unsettled(error)),
                    Err(other) => return Err(other),
                },
            }
        }
    }

    /// After a store error: waits with the outage backoff when trying again may help (without
    /// bound while the database is unavailable, [`TRANSIENT_TRIES`] times for other transient
    /// errors), else returns the error. [`EngineError::Interrupted`] when `progress` stops.
    pub(super) async fn wait_after(
        &self,
        error: StoreError,
        tries: &mut Tries,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        if !error.is_transient() {
            return Err(error.into());
        }
        // The connection that failed went back to the pool; it and its idle siblings may be
        // dead, so the next try opens fresh ones.
        self.store.drop_idle_connections();
        if !error.is_unavailable() {
            tries.transient += 1;
            if tries.transient > TRANSIENT_TRIES {
                return Err(error.into());
            }
        }
        let delay = self.outage_backoff.delay(tries.total);
        tries.total += 1;
        tracing::warn!(
            target: "checkpoint", %error, tries = tries.total,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "checkpoint store failed; waiting before trying the same step again"
        );
        if progress.wait(delay, WaitCause::Database).await {
            Ok(())
        } else {
            Err(EngineError::Interrupted)
        }
    }
}

/// One partition's messages through the engine, in order: the state that lives from one
/// message to the next (the duplicate check made ahead, whether deliveries are counted) and
/// the retry loop.
///
/// A session begins when its partition is assigned. Until the first message it consumes has
/// settled, a message may be one that a previous owner was inside of when it crashed, was
/// killed or lost the partition; so deliveries are counted durably (`checkpoint_attempts`)
/// until then, and for every retry. A message that keeps killing its consumer thus becomes a
/// failure (class `never_returned`) after `max_retries + 1` deliveries, while a healthy
/// stream writes no counts at all.
pub struct Session {
    engine: Engine,
    handler: Arc<dyn Handler>,
    origin: Origin,
    policy: Policy,
    ahead: Option<CheckedAhead>,
    window: Window,
    /// The partition this session owns (see [`Session::begin`]) and its owner id.
    owned: Option<(String, i32, String)>,
}

/// Whether the next message a session consumes may repeat a delivery of a previous owner.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// No message consumed by this session has settled yet: deliveries are counted.
    pub(super) uncertain: bool,
    /// The previous owner of the partition died without letting it go: the first message
    /// consumed here is counted as one more delivery that never returned.
    pub(super) previous_died: bool,
}

/// Where a message's retry loop starts.
pub(super) struct Start<'a> {
    /// The duplicate check of the run the message belongs to, for its first attempt.
    pub(super) ahead: Option<&'a mut CheckedAhead>,
    /// Attempts of this process that already failed.
    pub(super) retry_count: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("handler", &self.handler.name())
            .field("origin", &self.origin)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session of `handler`'s messages for `origin`, under `policy`.
    pub fn new(engine: Engine, handler: Arc<dyn Handler>, origin: Origin, policy: Policy) -> Self {
        Self {
            engine,
            handler,
            origin,
            policy,
            ahead: None,
            window: Window {
                uncertain: true,
                previous_died: false,
            },
            owned: None,
        }
    }

    /// Takes ownership of `partition` of `topic` for this session, durably: a previous owner
    /// that did not let it go cleanly died, so the first message consumed here may be the one
    /// it died inside of, and is counted so.
    pub async fn begin(
        &mut self,
        topic: &str,
        partition: i32,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        let owner: String = format!(
            "{}#{}#{:016x}",
            self.origin.listener_id,
            std::process::id(),
            fastrand::u64(..)
        )
        .chars()
        .rev()
        .take(crate::store::MAX_TEXT_LEN)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
        let store = self.engine.store();
        let group_id = &self.origin.group_id;
        self.window.previous_died = self
            .engine
            .store_step(progress, || {
                store.claim_partition(topic, group_id, partition, &owner)
            })
            .await?;
        if self.window.previous_died {
            tracing::warn!(
                target: "checkpoint", listener_id = %self.origin.listener_id, topic, partition,
                "the partition's previous owner did not let it go cleanly; its first unsettled \
                 message counts as a delivery that never returned"
            );
        }
        self.owned = Some((topic.to_owned(), partition, owner));
        Ok(())
    }

    /// Lets the partition go cleanly: everything this session took in hand is settled or left
    /// unsettled on purpose (revoked, shutting down), none of it mid-`consume`.
    pub async fn end(&mut self, progress: &dyn Progress) -> Result<(), EngineError> {
        let Some((topic, partition, owner)) = self.owned.take() else {
            return Ok(());
        };
        let store = self.engine.store();
        let group_id = &self.origin.group_id;
        self.engine
            .store_step(progress, || {
                store.release_partition(&topic, group_id, partition, &owner)
            })
            .await
    }

    /// Checks a run of queued messages (one topic and partition) for duplicates in one query,
    /// ahead of settling them one by one with [`Session::settle`]. When the check fails, each
    /// message makes its own.
    pub async fn check_ahead(&mut self, run: &[Message]) {
        self.ahead = if run.len() > 1 {
            self.engine
                .check_ahead(self.handler.as_ref(), run, &self.origin)
                .await
                .ok()
        } else {
            None
        };
    }

    /// Takes `message` until it is settled: retries a failing `consume` after the policy's
    /// backoff, waits out database outages. `Ok(None)` when `progress` stopped it first (not
    /// settled); `Err` for a store error that waiting cannot fix.
    pub async fn settle(
        &mut self,
        message: &Message,
        progress: &dyn Progress,
    ) -> Result<Option<Disposition>, EngineError> {
        let start = Start {
            ahead: self.ahead.as_mut(),
            retry_count: 0,
        };
        self.engine
            .settle(
                self.handler.as_ref(),
                message,
                &self.origin,
                &self.policy,
                start,
                &mut self.window,
                progress,
            )
            .await
    }

    /// Takes a batch (one topic and partition, in order) until every message in it is
    /// settled, reporting each to `progress` as it settles. The duplicate check of `next` (the
    /// caller's next batch) runs meanwhile and is kept for the next call. A message the batch
    /// must retry goes through [`Session::settle`]'s loop on its own, then the batch goes on;
    /// so do the messages before the first one consumed after the assignment (their
    /// deliveries are counted). `Ok(false)` when `progress` stopped it first (the rest of the
    /// batch is not settled).
    pub async fn settle_batch(
        &mut self,
        batch: Vec<Message>,
        next: &[Message],
        progress: &dyn Progress,
    ) -> Result<bool, EngineError> {
        let mut batch = std::collections::VecDeque::from(batch);
        let mut tries = Tries::default();
        let mut ahead = self.ahead.take();
        let mut retry_count = 0;
        // After a batch transaction was discarded (a consume cut off by handler_timeout), the
        // rest of this batch goes one by one.
        let mut singly = false;
        loop {
            while self.window.uncertain || retry_count > 0 || singly {
                let Some(message) = batch.pop_front() else {
                    return Ok(true);
                };
                let start = Start {
                    ahead: None,
                    retry_count,
                };
                let settled = self
                    .engine
                    .settle(
                        self.handler.as_ref(),
                        &message,
                        &self.origin,
                        &self.policy,
                        start,
                        &mut self.window,
                        progress,
                    )
                    .await?;
                if settled.is_none() {
                    return Ok(false);
                }
                retry_count = 0;
                // The check made ahead covered the whole batch; what is left checks again.
                ahead = None;
            }
            if batch.is_empty() {
                return Ok(true);
            }
            let messages = batch.make_contiguous();
            let result = self
                .engine
                .batch(
                    self.handler.as_ref(),
                    messages,
                    &self.origin,
                    &self.policy,
                    0,
                    ahead.take(),
                    next,
                    progress,
                )
                .await;
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(error) => {
                    if !self.engine.try_again(error, &mut tries, progress).await? {
                        return Ok(false);
                    }
                    continue;
                }
            };
            if outcome.interrupted {
                singly = true;
                continue;
            }
            for disposition in &outcome.settled {
                if let Some(message) = batch.pop_front() {
                    progress.settled(&message, disposition);
                }
            }
            let Some(error) = outcome.retry else {
                self.ahead = outcome.next_checked;
                return Ok(true);
            };
            let delay = self.policy.backoff.delay(0);
            tracing::warn!(
                target: "checkpoint", listener_id = %self.origin.listener_id,
                partition = batch.front().map(|m| m.partition),
                offset = batch.front().map(|m| m.offset),
                %error, "consume failed in a batch; backing off"
            );
            if !progress
                .wait(delay, WaitCause::Retry { retry_count: 0 })
                .await
            {
                return Ok(false);
            }
            // The failing message is first now, with one failed attempt.
            retry_count = 1;
        }
    }
}

impl Engine {
    /// The retry loop of one message (see [`Session::settle`]). While the window is
    /// uncertain, and for every retry, deliveries are counted durably; the window closes when
    /// a message that was not stored yet settles.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn settle(
        &self,
        handler: &dyn Handler,
        message: &Message,
        origin: &Origin,
        policy: &Policy,
        start: Start<'_>,
        window: &mut Window,
        progress: &dyn Progress,
    ) -> Result<Option<Disposition>, EngineError> {
        let Start {
            mut ahead,
            mut retry_count,
        } = start;
        let mut tries = Tries::default();
        let mut counted = false;
        let mut first = true;
        // Names this message's deliveries in this loop: an attempt tried again after a store
        // error is the same delivery, and is not counted twice.
        let deliveries = fastrand::u64(..);
        loop {
            let count = window.uncertain || retry_count > 0;
            let died = u32::from(count && window.previous_died);
            let checked_ahead = first && !count && ahead.is_some();
            first = false;
            let delivery = format!("{deliveries:016x}-{retry_count}");
            let attempt = match ahead.as_deref_mut() {
                // The first attempt uses the run's duplicate check; later ones check again.
                Some(ahead) if checked_ahead => {
                    self.attempt_checked(handler, message, origin, policy, ahead, progress)
                        .await
                }
                _ => {
                    let count = count.then_some(Count {
                        died,
                        delivery: &delivery,
                    });
                    self.attempt_once(
                        handler,
                        message,
                        origin,
                        policy,
                        retry_count,
                        count,
                        progress,
                    )
                    .await
                }
            };
            if count && !matches!(attempt, Ok(Disposition::AlreadyConsumed) | Err(_)) {
                // Counted (a stored event is not): what the previous owner died inside of,
                // if anything, is accounted for.
                counted = true;
                window.previous_died = false;
            }
            match attempt {
                Ok(Disposition::Retry(error)) => {
                    let delay = policy.backoff.delay(retry_count);
                    tracing::warn!(
                        target: "checkpoint", listener_id = %origin.listener_id,
                        topic = %message.topic, partition = message.partition,
                        offset = message.offset, retry_count,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        %error, "consume failed; backing off"
                    );
                    if !progress.wait(delay, WaitCause::Retry { retry_count }).await {
                        return Ok(None);
                    }
                    retry_count += 1;
                }
                Ok(settled) => {
                    if !matches!(settled, Disposition::AlreadyConsumed) {
                        window.uncertain = false;
                    }
                    progress.settled(message, &settled);
                    if !checked_ahead {
                        // Off the hot path: a retried or counted message.
                        let checksum = Self::dedup_key(handler, message);
                        if let Some(ahead) = ahead.as_deref_mut()
                            && settled.stored_event()
                        {
                            // A repeat later in the run is a duplicate.
                            ahead.add_stored(&message.topic, &checksum);
                        }
                        if counted {
                            self.forget_count(&message.topic, &origin.group_id, &checksum)
                                .await;
                        }
                    }
                    return Ok(Some(settled));
                }
                Err(error) => {
                    if !self.try_again(error, &mut tries, progress).await? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Deletes the count of a settled message: one try, best effort. The message is settled
    /// whatever happens here; a count left behind only makes a later redelivery of it (after
    /// a skip or a failure) start higher.
    async fn forget_count(&self, topic: &str, group_id: &str, checksum: &str) {
        let key = crate::store::DedupKey {
            topic,
            group_id,
            checksum,
        };
        if let Err(error) = self.store.clear_attempts(key).await {
            tracing::warn!(target: "checkpoint", %error, topic, checksum, "the count of a settled message was not deleted");
        }
    }

    /// After an attempt ended in `error` before its message was settled: `Ok(true)` to try
    /// the attempt again (after waiting), `Ok(false)` when `progress` stopped the wait, `Err`
    /// when waiting cannot help.
    async fn try_again(
        &self,
        error: EngineError,
        tries: &mut Tries,
        progress: &dyn Progress,
    ) -> Result<bool, EngineError> {
        let result = match error {
            EngineError::Store(error) => self.wait_after(error, tries, progress).await,
            other => Err(other),
        };
        match result {
            Ok(()) => Ok(true),
            Err(EngineError::Interrupted) => Ok(false),
            Err(error) => Err(error),
        }
    }
}
