//! What the engine reports: how a delivery attempt, a batch or an operator's retry ended, and
//! the engine's own errors.

use crate::error::StoreError;
use crate::handler::HandlerError;

use super::CheckedAhead;

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
    /// `consume` failed for good (or panicked, or produced a value the store cannot hold);
    /// the failure row is stored.
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

    /// True when the message's key is now stored as an event (acknowledged or found stored).
    pub(crate) fn stored_event(&self) -> bool {
        matches!(self, Self::Acknowledged { .. } | Self::AlreadyConsumed)
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

/// What a batch did.
#[derive(Debug)]
pub struct BatchOutcome {
    /// One disposition per settled message, in order: messages `0..settled.len()` may have
    /// their offsets committed.
    pub settled: Vec<Disposition>,
    /// Set when message `settled.len()` failed and may be retried (with `retry_count + 1`);
    /// the messages after it were not processed.
    pub retry: Option<HandlerError>,
    /// The duplicate check of the `next` messages given to
    /// [`Engine::process_batch_checked`](super::Engine::process_batch_checked), with this
    /// batch's stored keys added; `None` when none were given, when the check failed, or when
    /// this batch ends in a retry (its remaining messages may still store keys the check does
    /// not know).
    pub next_checked: Option<CheckedAhead>,
    /// A `consume` or `consume_batch` call was cut off by `handler_timeout` inside the batch
    /// transaction, or left that transaction in a state that could not be restored: the
    /// transaction and its connection were discarded, nothing of the batch is settled, and its
    /// messages are taken one by one.
    pub(crate) interrupted: bool,
}

impl BatchOutcome {
    /// A batch whose transaction must be discarded because a call of handler code was
    /// interrupted (see [`BatchOutcome::interrupted`]); `error` is why, when there is one.
    pub(crate) fn interrupted(error: Option<HandlerError>) -> Self {
        Self {
            settled: Vec::new(),
            retry: error,
            next_checked: None,
            interrupted: true,
        }
    }
}

/// An error of the engine itself (not of the handler).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed; when [`StoreError::is_transient`], the same attempt may be tried
    /// again (`consume` has not run, or its writes were rolled back with the transaction).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `consume` ran, but storing its outcome failed in a way waiting did not fix. The
    /// message is not settled (its offset is not committed) and the attempt is not run again
    /// here: the listener stops, and the message is delivered again after a restart.
    #[error("the outcome of consume could not be stored: {0}")]
    Unsettled(#[source] StoreError),
    /// A stop was requested (shutdown) while the engine waited for the database; the message
    /// is not settled and is delivered again later.
    #[error("stopped while waiting for the database; the message is not settled")]
    Interrupted,
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
