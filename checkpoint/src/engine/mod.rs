//! The checkpoint algorithm, pure of Kafka and HTTP: duplicate check → consume → ack
//! (race-free insert) / skip / retry / failure, with the six notifications.
//!
//! Two modes, chosen by [`Handler::transactional`]:
//! - **per-message**: the duplicate check, then `consume`, then `INSERT … ON CONFLICT DO
//!   NOTHING` of the event. A crash between the handler's side effect and the insert means the
//!   message is consumed again on redelivery (at-least-once for effects outside the database).
//! - **transactional**: one database transaction claims the event row first, runs `consume`
//!   with that transaction ([`Context::tx`](crate::Context::tx)), and commits on ack or rolls
//!   back on skip and error. The handler's writes and the checkpoint commit or vanish together
//!   — exactly once, also across crashes, rebalances and concurrent consumers (a concurrent
//!   claim of the same key waits for the first transaction, then finds the row).
//!
//! Both, single or batched, end every message in exactly one of: an event row, a failure row,
//! or "not settled" (the caller does not commit its offset, so it is delivered again):
//! - a panic in any handler code is a permanent error of class `panic`: a failure row;
//! - an ack whose fields the store cannot hold (too long, NUL) is a failure row naming the
//!   field; a failure row's extractor fields that do not fit are left empty and named;
//! - once `consume` has returned, a store error retries only the store step
//!   ([`Session`] waits it out), so `consume` never runs twice for one delivery in
//!   per-message mode; in transactional mode the transaction is gone and the attempt runs
//!   again, its writes having vanished with it.
//!
//! Rooms: [`attempt`](self) (one attempt and every guarded call into handler code), `triage`
//! (the one ack/skip/retry/fail decision), `modes` and `batch` (how each mode stores rows),
//! `session` (the one retry loop), `replay` (operator retries), `backoff`, `outcome`.

mod attempt;
mod backoff;
mod batch;
mod modes;
mod outcome;
mod replay;
mod session;
mod triage;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use self::attempt::Policy;
pub use self::backoff::Backoff;
pub use self::outcome::{BatchOutcome, Disposition, EngineError, RetryOutcome};
pub use self::session::{CheckedAhead, Progress, Session, Sleep, WaitCause};

use self::attempt::Attempt;
use self::session::{Start, Window};
use crate::handler::Handler;
use crate::instrument::{Instrument, Notification, Observer};
use crate::message::{Message, Origin};
use crate::store::Store;

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

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            instrument: Instrument::default(),
            outage_backoff: Backoff::outage(),
        }
    }

    /// Adds an observer that receives every notification.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.instrument.add(observer);
        self
    }

    /// Sets how long to wait between tries while the database fails (default 100 ms to 5 s).
    pub fn with_outage_backoff(mut self, backoff: Backoff) -> Self {
        self.outage_backoff = backoff;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The duplicate key of `message` for `handler`: its `dedup_key`, else the payload MD5
    /// (also when `dedup_key` panics or gives a key the store cannot hold; such a message
    /// becomes a failure without being consumed).
    pub fn dedup_key(handler: &dyn Handler, message: &Message) -> String {
        attempt::dedup_key(handler, message).0
    }

    /// Runs one delivery attempt (`retry_count` earlier attempts failed), with the default
    /// [`Policy`].
    ///
    /// Returns [`Disposition::Retry`] when the handler failed and may be retried; the caller
    /// backs off and calls again with `retry_count + 1`. An `Err` means the store failed before
    /// the message was settled: nothing is lost, try the same attempt again later. A store
    /// error after `consume` returned is waited out here, without running `consume` again.
    pub async fn process(
        &self,
        handler: &dyn Handler,
        message: &Message,
        origin: &Origin,
        retry_count: u32,
    ) -> Result<Disposition, EngineError> {
        self.attempt_once(
            handler,
            message,
            origin,
            &Policy::default(),
            retry_count,
            None,
            &Sleep,
        )
        .await
    }

    /// Runs attempts until the message is settled, through the same loop as the listener
    /// ([`Session::settle`]): backs off between handler retries (per `backoff`) and waits out
    /// database outages.
    pub async fn process_until_settled(
        &self,
        handler: &dyn Handler,
        message: &Message,
        origin: &Origin,
        backoff: &Backoff,
    ) -> Result<Disposition, EngineError> {
        let policy = Policy {
            backoff: *backoff,
            ..Policy::default()
        };
        let start = Start {
            ahead: None,
            retry_count: 0,
        };
        let mut window = Window::default();
        match self
            .settle(
                handler,
                message,
                origin,
                &policy,
                start,
                &mut window,
                &Sleep,
            )
            .await?
        {
            Some(settled) => Ok(settled),
            // Sleep never stops a wait.
            None => Err(EngineError::Interrupted),
        }
    }

    /// The duplicate check of a run of messages of one topic and partition (the first
    /// message's topic), ahead of processing them one by one: one query instead of one per
    /// message. Each message is still consumed, stored and settled on its own.
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
        let keys: Vec<(String, bool)> = messages
            .iter()
            .map(|m| {
                let (key, problem) = attempt::dedup_key(handler, m);
                (key, problem.is_none())
            })
            .collect();
        let refs: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        let stored = self
            .store
            .existing_checksums(&first.topic, &origin.group_id, &refs)
            .await?;
        Ok(CheckedAhead {
            topic: first.topic.clone(),
            partition: first.partition,
            // A key with a problem is worked out again by its attempt, which fails it.
            keys: messages
                .iter()
                .zip(keys)
                .filter(|(_, (_, usable))| *usable)
                .map(|(m, (key, _))| (m.offset, key))
                .collect(),
            stored,
            share: started.elapsed() / u32::try_from(messages.len().max(1)).unwrap_or(u32::MAX),
        })
    }

    fn fire(&self, notification: Notification, attempt: &Attempt<'_>, duration: Option<Duration>) {
        self.instrument
            .fire(notification, &attempt.metadata, duration);
    }
}
