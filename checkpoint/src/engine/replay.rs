//! Operator retries (the API's `retry` routes): a stored failure or event run once more
//! through the same attempt and triage as a delivery, with errors reported rather than
//! recorded as new failures.

use std::time::Duration;

use super::attempt::Attempt;
use super::session::{Progress, WaitCause};
use super::triage::RetryMode;
use super::{Disposition, Engine, EngineError, Policy, RetryOutcome};
use crate::handler::{BoxFuture, Handler};
use crate::message::{Message, Origin};
use crate::store::{Event, Failure, FailureMetadata};

/// How long an operator's retry waits for the database once `consume` has run, before it
/// answers with an error (the request must end; the message's own delivery is not affected).
const PATIENCE: Duration = Duration::from_secs(10);

/// Waits out database errors for at most [`PATIENCE`] in total.
struct Bounded {
    waited: std::sync::Mutex<Duration>,
}

impl Progress for Bounded {
    fn wait(&self, delay: Duration, _: WaitCause) -> BoxFuture<'_, bool> {
        let within = {
            let mut waited = self.waited.lock().unwrap_or_else(|p| p.into_inner());
            *waited += delay;
            *waited <= PATIENCE
        };
        Box::pin(async move {
            if within {
                tokio::time::sleep(delay).await;
            }
            within
        })
    }
}

impl Engine {
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
        self.retry_failure_row(handler, failure).await
    }

    /// [`retry_failure`](Self::retry_failure) of a row already loaded, as the API's retry
    /// route has it.
    pub async fn retry_failure_row(
        &self,
        handler: &dyn Handler,
        failure: Failure,
    ) -> Result<RetryOutcome, EngineError> {
        let failure_id = failure.id;
        let message = Message {
            headers: FailureMetadata::parse(&failure.metadata)
                .map(|m| m.headers())
                .unwrap_or_default(),
            topic: failure.topic,
            partition: failure.partition,
            offset: failure.offset,
            key: failure.key,
            payload: failure.payload,
            timestamp: None,
        };
        let outcome = self.run_once(handler, &message, failure.group_id).await?;
        if let RetryOutcome::Failed(error) = &outcome {
            let backtrace = serde_json::Value::from(error.backtrace_lines()).to_string();
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
        self.retry_event_row(handler, event).await
    }

    /// [`retry_event`](Self::retry_event) of a row already loaded, as the API's retry route
    /// has it.
    pub async fn retry_event_row(
        &self,
        handler: &dyn Handler,
        event: Event,
    ) -> Result<RetryOutcome, EngineError> {
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

    /// One attempt on behalf of an operator: errors are reported, not recorded.
    async fn run_once(
        &self,
        handler: &dyn Handler,
        message: &Message,
        group_id: String,
    ) -> Result<RetryOutcome, EngineError> {
        let origin = Origin::new(group_id).with_listener_id("api/retry");
        let policy = Policy::default();
        let attempt = Attempt::new(handler, message, &origin, &policy, 0, None);
        let progress = Bounded {
            waited: std::sync::Mutex::new(Duration::ZERO),
        };
        let disposition = self
            .around(&attempt, RetryMode::Report, None, &progress)
            .await?;
        Ok(match disposition {
            Disposition::Retry(error) | Disposition::Failed { error, .. } => {
                RetryOutcome::Failed(error)
            }
            Disposition::Acknowledged { .. } => RetryOutcome::Acknowledged,
            Disposition::Skipped => RetryOutcome::Skipped,
            Disposition::AlreadyConsumed => RetryOutcome::AlreadyConsumed,
        })
    }
}
