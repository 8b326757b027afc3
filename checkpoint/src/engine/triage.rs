//! The one decision every mode makes after `consume` returns — ack, skip, retry or fail — and
//! the one place that carries it out. A mode supplies only how rows are stored ([`Rows`]):
//! inserted at once, completed in the claiming transaction, or buffered for a batch insert.

use std::future::Future;
use std::time::Instant;

use super::attempt::{AckFields, Attempt};
use super::session::Progress;
use super::{Disposition, Engine, EngineError};
use crate::crash::{self, CrashPoint};
use crate::handler::{HandlerError, Outcome};
use crate::instrument::Notification;
use crate::store::NewFailure;

/// Whether a failed attempt may be retried by the caller or must be settled now.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RetryMode {
    /// Ask the handler's retry decision; record a failure when it says no.
    Decide,
    /// Never record a failure: report the error (operator retries update the existing
    /// failure).
    Report,
}

/// What `consume`'s result means for the message.
pub(super) enum Verdict {
    /// Store the event with these fields.
    Ack(AckFields),
    /// Store nothing.
    Skip,
    /// Store nothing; try again after a backoff.
    Retry(HandlerError),
    /// Store a failure row with this error.
    Fail(HandlerError),
}

/// How a mode stores what a verdict needs.
pub(super) trait Rows: Send {
    /// Stores the acked event: `Some(inserted)` once it is durable, `None` when the caller
    /// stores it later (a batch insert).
    fn ack(
        &mut self,
        engine: &Engine,
        attempt: &Attempt<'_>,
        fields: &AckFields,
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<Option<bool>, EngineError>> + Send;

    /// Undoes what the attempt wrote (its claim and the handler's writes) before a skip,
    /// retry or failure; by default there is nothing to undo.
    fn release(
        &mut self,
        _engine: &Engine,
        _attempt: &Attempt<'_>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        async { Ok(()) }
    }

    /// Stores a failure row; returns its id. By default on a connection of its own, as a
    /// store step (`consume` has run: only the store is tried again).
    fn fail(
        &mut self,
        engine: &Engine,
        row: &NewFailure<'_>,
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<i64, EngineError>> + Send {
        async move {
            engine
                .store_step(progress, || engine.store.record_failure(row))
                .await
        }
    }
}

impl Engine {
    /// The verdict on `consume`'s `result`. An ack whose fields an extractor cannot give (it
    /// panics) or the store cannot hold becomes a permanent error; a permanent error is never
    /// retried.
    pub(super) fn triage(
        &self,
        attempt: &Attempt<'_>,
        result: Result<Outcome, HandlerError>,
        mode: RetryMode,
    ) -> Verdict {
        let error = match result {
            Ok(Outcome::Ack(ack)) => match attempt.ack_fields(ack) {
                Ok(fields) => return Verdict::Ack(fields),
                Err(error) => error,
            },
            Ok(_) => return Verdict::Skip,
            Err(error) => error,
        };
        match mode {
            RetryMode::Report => Verdict::Retry(error),
            RetryMode::Decide => match attempt.retry_decision(error) {
                Ok(error) => Verdict::Retry(error),
                Err(error) => Verdict::Fail(error),
            },
        }
    }

    /// Carries out `verdict` through `rows` and fires its notifications.
    pub(super) async fn conclude<R: Rows>(
        &self,
        rows: &mut R,
        attempt: &Attempt<'_>,
        verdict: Verdict,
        progress: &dyn Progress,
    ) -> Result<Disposition, EngineError> {
        let error = match verdict {
            Verdict::Ack(fields) => {
                crash::reach(CrashPoint::AfterConsume);
                let started = Instant::now();
                let Some(inserted) = rows.ack(self, attempt, &fields, progress).await? else {
                    // Stored, and notified, with its batch.
                    return Ok(Disposition::Acknowledged { inserted: true });
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
                return Ok(Disposition::Acknowledged { inserted });
            }
            Verdict::Skip => {
                rows.release(self, attempt).await?;
                self.fire(Notification::EventSkipped, attempt, None);
                return Ok(Disposition::Skipped);
            }
            Verdict::Retry(error) => {
                rows.release(self, attempt).await?;
                return Ok(Disposition::Retry(error));
            }
            Verdict::Fail(error) => error,
        };
        rows.release(self, attempt).await?;
        let parts = attempt.failure(&error);
        let failure_id = rows
            .fail(self, &parts.row(attempt, &error), progress)
            .await?;
        tracing::error!(
            target: "checkpoint",
            topic = %attempt.message.topic, partition = attempt.message.partition,
            offset = attempt.message.offset, failure_id, error = %error,
            "consume failed for good; failure recorded and message skipped"
        );
        self.fire(Notification::EventSkipped, attempt, None);
        Ok(Disposition::Failed { failure_id, error })
    }
}
