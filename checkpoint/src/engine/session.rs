//! The one retry loop: a partition's messages taken until settled, handler retries backed
//! off, database outages waited out, and store steps after `consume` retried on their own.
//! The listener feeds a [`Session`] and tells it, through [`Progress`], how to wait and when
//! to stop; operator retries and tests use the same loop.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
                Err(error) => self.wait_after(error, &mut tries, progress).await?,
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
/// message to the next (the duplicate check made ahead) and the retry loop.
pub struct Session {
    engine: Engine,
    handler: Arc<dyn Handler>,
    origin: Origin,
    policy: Policy,
    ahead: Option<CheckedAhead>,
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
        }
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
        let ahead = self.ahead.as_mut();
        self.engine
            .settle(
                self.handler.as_ref(),
                message,
                &self.origin,
                &self.policy,
                ahead,
                progress,
            )
            .await
    }

    /// Takes a batch (one topic and partition, in order) until every message in it is
    /// settled, reporting each to `progress` as it settles. The duplicate check of `next` (the
    /// caller's next batch) runs meanwhile and is kept for the next call. `Ok(false)` when
    /// `progress` stopped it first (the rest of the batch is not settled).
    pub async fn settle_batch(
        &mut self,
        mut batch: Vec<Message>,
        next: &[Message],
        progress: &dyn Progress,
    ) -> Result<bool, EngineError> {
        let handler = self.handler.as_ref();
        let mut retry_count = 0;
        let mut tries = Tries::default();
        let mut ahead = self.ahead.take();
        while !batch.is_empty() {
            let result = self
                .engine
                .batch(
                    handler,
                    &batch,
                    &self.origin,
                    &self.policy,
                    retry_count,
                    // Only the first attempt: a retry checks again what is left.
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
            let done = outcome.settled.len();
            for (message, disposition) in batch.iter().zip(&outcome.settled) {
                progress.settled(message, disposition);
            }
            batch.drain(..done);
            let Some(error) = outcome.retry else {
                self.ahead = outcome.next_checked;
                return Ok(true);
            };
            // The failing message is now first; it has failed once more.
            retry_count = if done > 0 { 1 } else { retry_count + 1 };
            let delay = self.policy.backoff.delay(retry_count - 1);
            tracing::warn!(
                target: "checkpoint", listener_id = %self.origin.listener_id,
                partition = batch.first().map(|m| m.partition),
                offset = batch.first().map(|m| m.offset),
                retry_count, %error, "consume failed in a batch; backing off"
            );
            let cause = WaitCause::Retry {
                retry_count: retry_count - 1,
            };
            if !progress.wait(delay, cause).await {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Engine {
    /// The retry loop of one message (see [`Session::settle`]); `ahead`, when given, is the
    /// duplicate check of the run it belongs to, used by its first attempt.
    pub(super) async fn settle(
        &self,
        handler: &dyn Handler,
        message: &Message,
        origin: &Origin,
        policy: &Policy,
        mut ahead: Option<&mut CheckedAhead>,
        progress: &dyn Progress,
    ) -> Result<Option<Disposition>, EngineError> {
        let mut retry_count = 0;
        let mut tries = Tries::default();
        loop {
            let attempt = match ahead.take() {
                // The first attempt uses the run's duplicate check; later ones check again.
                Some(ahead) => {
                    self.attempt_checked(handler, message, origin, policy, ahead, progress)
                        .await
                }
                None => {
                    self.attempt_once(handler, message, origin, policy, retry_count, progress)
                        .await
                }
            };
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
                    progress.settled(message, &settled);
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
