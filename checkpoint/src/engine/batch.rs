//! Batch mode: many messages of one partition with one duplicate check and one multi-row
//! insert (per-message handlers), or one transaction with one multi-row claim, a savepoint
//! per message and the acked claims completed in one pass at the end (transactional
//! handlers). Outcomes stay per message through the same
//! [`Engine::triage`] as single messages: a poison message becomes a failure without touching
//! its neighbours; a message that must be retried ends the batch there, after everything
//! before it is settled.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::attempt::{AckFields, Attempt};
use super::modes::abandon;
use super::session::{CheckedAhead, Progress};
use super::triage::{RetryMode, Rows, Verdict};
use super::{BatchOutcome, Disposition, Engine, EngineError, Policy};
use crate::handler::Handler;
use crate::instrument::Notification;
use crate::message::{Message, Origin};
use crate::store::{Conn, NewEvent, NewFailure};

/// Per-message batch rows: acks are buffered for one multi-row insert after the batch's
/// `consume` calls; failures are stored on their own at once.
#[derive(Default)]
struct Buffered {
    /// Index in the batch and fields of each acked message.
    acked: Vec<(usize, AckFields)>,
    /// Index of the message being concluded.
    current: usize,
}

impl Rows for Buffered {
    async fn ack(
        &mut self,
        _: &Engine,
        _: &Attempt<'_>,
        fields: &AckFields,
        _: &dyn Progress,
    ) -> Result<Option<bool>, EngineError> {
        self.acked.push((self.current, fields.clone()));
        Ok(None)
    }
}

/// Transactional batch rows: the batch transaction, a savepoint around each message. Acks are
/// buffered and their claims completed in one pass before the commit.
struct Savepoints<'t, 'c> {
    conn: &'t mut Conn<'c>,
    /// Index in the batch and fields of each acked message.
    acked: Vec<(usize, AckFields)>,
    /// Index of the message being concluded.
    current: usize,
}

impl Rows for Savepoints<'_, '_> {
    async fn ack(
        &mut self,
        _: &Engine,
        _: &Attempt<'_>,
        fields: &AckFields,
        _: &dyn Progress,
    ) -> Result<Option<bool>, EngineError> {
        self.acked.push((self.current, fields.clone()));
        // Completed, durable and notified with the batch's commit.
        Ok(None)
    }

    async fn release(&mut self, _: &Engine, attempt: &Attempt<'_>) -> Result<(), EngineError> {
        self.conn.undo_message().await?;
        self.conn.delete_event(attempt.key()).await?;
        Ok(())
    }

    async fn fail(
        &mut self,
        _: &Engine,
        row: &NewFailure<'_>,
        _: &dyn Progress,
    ) -> Result<i64, EngineError> {
        // Inside the batch transaction: an outage aborts it, and the batch is run again.
        Ok(self.conn.record_failure(row).await?)
    }
}

impl Engine {
    /// Processes `messages` (one topic and partition, in order) as one batch; the first
    /// message has had `retry_count` failed attempts, the others none.
    pub async fn process_batch(
        &self,
        handler: &dyn Handler,
        messages: &[Message],
        origin: &Origin,
        retry_count: u32,
    ) -> Result<BatchOutcome, EngineError> {
        self.process_batch_checked(handler, messages, origin, retry_count, None, &[])
            .await
    }

    /// [`Engine::process_batch`] for consecutive batches of one partition, overlapping the
    /// database work of one batch with the duplicate check of the next:
    /// - `ahead`, when given, is the duplicate check of `messages` (the previous call's
    ///   [`BatchOutcome::next_checked`]), so this batch makes no check of its own;
    /// - the duplicate check of `next` (the messages of the caller's next call) runs on a
    ///   second connection while this batch is processed, and comes back in
    ///   [`BatchOutcome::next_checked`] with the keys this batch stored added to it.
    ///
    /// Nothing else may store events of this topic and consumer group between the two calls
    /// (the listener holds its concurrency permit across them); a key stored by someone else
    /// after a check is still caught by the insert's conflict handling or the claim.
    pub async fn process_batch_checked(
        &self,
        handler: &dyn Handler,
        messages: &[Message],
        origin: &Origin,
        retry_count: u32,
        ahead: Option<CheckedAhead>,
        next: &[Message],
    ) -> Result<BatchOutcome, EngineError> {
        let policy = Policy::default();
        let progress = super::Sleep;
        self.batch(
            handler,
            messages,
            origin,
            &policy,
            retry_count,
            ahead,
            next,
            &progress,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn batch(
        &self,
        handler: &dyn Handler,
        messages: &[Message],
        origin: &Origin,
        policy: &Policy,
        retry_count: u32,
        mut ahead: Option<CheckedAhead>,
        next: &[Message],
        progress: &dyn Progress,
    ) -> Result<BatchOutcome, EngineError> {
        let attempts: Vec<Attempt<'_>> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let key = ahead.as_mut().and_then(|a| a.take_key(m));
                let retries = if i == 0 { retry_count } else { 0 };
                Attempt::new(handler, m, origin, policy, retries, key)
            })
            .collect();
        let work = async {
            let started = Instant::now();
            let existing = self.batch_existing(&attempts, ahead).await?;
            let outcome = if handler.transactional() {
                self.transactional_batch(&attempts, &existing, progress)
                    .await
            } else {
                self.per_message_batch(&attempts, existing, progress).await
            };
            outcome.map(|outcome| (outcome, started.elapsed()))
        };
        let check_next = async {
            if next.is_empty() {
                return None;
            }
            // A failed check is made again by the next batch itself.
            self.check_ahead(handler, next, origin).await.ok()
        };
        let (result, next_checked) = tokio::join!(work, check_next);
        let (mut outcome, elapsed) = result?;
        // around_consume of every message the batch took through the algorithm.
        let processed = outcome.settled.len() + usize::from(outcome.retry.is_some());
        let share = per_message(elapsed, processed);
        for attempt in &attempts[..processed] {
            self.fire(Notification::AroundConsume, attempt, Some(share));
        }
        if outcome.retry.is_none() {
            outcome.next_checked = next_checked.map(|mut checked| {
                for (attempt, disposition) in attempts.iter().zip(&outcome.settled) {
                    if disposition.stored_event() {
                        checked.add_stored(&attempt.message.topic, &attempt.metadata.checksum);
                    }
                }
                checked
            });
        }
        Ok(outcome)
    }

    /// The batch's duplicate check: `ahead` when given, else one query for every key.
    async fn batch_existing(
        &self,
        attempts: &[Attempt<'_>],
        ahead: Option<CheckedAhead>,
    ) -> Result<HashSet<String>, EngineError> {
        let Some(first) = attempts.first() else {
            return Ok(HashSet::new());
        };
        if let Some(ahead) = ahead.filter(|a| a.topic == first.message.topic) {
            for attempt in attempts {
                self.fire(
                    Notification::EventAlreadyExistsCheck,
                    attempt,
                    Some(ahead.share),
                );
            }
            return Ok(ahead.stored);
        }
        let started = Instant::now();
        let keys: Vec<&str> = attempts
            .iter()
            .map(|a| a.metadata.checksum.as_str())
            .collect();
        let existing = self
            .store
            .existing_checksums(&first.message.topic, &first.origin.group_id, &keys)
            .await?;
        let share = per_message(started.elapsed(), attempts.len());
        for attempt in attempts {
            self.fire(Notification::EventAlreadyExistsCheck, attempt, Some(share));
        }
        Ok(existing)
    }

    async fn per_message_batch(
        &self,
        attempts: &[Attempt<'_>],
        mut seen: HashSet<String>,
        progress: &dyn Progress,
    ) -> Result<BatchOutcome, EngineError> {
        let mut settled = Vec::with_capacity(attempts.len());
        let mut rows = Buffered::default();
        let mut retry = None;
        for (i, attempt) in attempts.iter().enumerate() {
            if seen.contains(&attempt.metadata.checksum) {
                self.fire(Notification::EventAlreadyConsumed, attempt, None);
                settled.push(Disposition::AlreadyConsumed);
                continue;
            }
            let verdict = match &attempt.unusable {
                Some(problem) => Verdict::Fail(problem.error()),
                None => {
                    let called = self.consume(attempt, None).await;
                    self.triage(attempt, called.result, RetryMode::Decide)
                }
            };
            rows.current = i;
            match self.conclude(&mut rows, attempt, verdict, progress).await? {
                Disposition::Retry(error) => {
                    retry = Some(error);
                    break;
                }
                disposition => {
                    if disposition.stored_event() {
                        seen.insert(attempt.metadata.checksum.clone());
                    }
                    settled.push(disposition);
                }
            }
        }
        // consume has run for these: store them even if the database blinks meanwhile.
        let started = Instant::now();
        let events: Vec<NewEvent<'_>> = rows
            .acked
            .iter()
            .map(|(i, fields)| attempts[*i].event_row(fields))
            .collect();
        let inserted = self
            .store_step(progress, || self.store.insert_events(&events))
            .await?;
        let share = per_message(started.elapsed(), events.len());
        for ((i, _), inserted) in rows.acked.iter().zip(inserted) {
            self.fire(Notification::EventAcknowledged, &attempts[*i], Some(share));
            settled[*i] = Disposition::Acknowledged { inserted };
        }
        Ok(BatchOutcome {
            settled,
            retry,
            next_checked: None,
            interrupted: false,
        })
    }

    async fn transactional_batch(
        &self,
        attempts: &[Attempt<'_>],
        existing: &HashSet<String>,
        progress: &dyn Progress,
    ) -> Result<BatchOutcome, EngineError> {
        let mut pooled = self.store.conn().await?;
        let mut conn = pooled.conn();
        conn.begin().await?;
        let outcome = match self
            .claim_and_consume(&mut conn, attempts, existing, progress)
            .await
        {
            Ok(outcome) if outcome.interrupted => {
                // The connection's state is unknown: never commit on it, never reuse it.
                pooled.discard();
                return Ok(outcome);
            }
            Ok(outcome) => outcome,
            Err(EngineError::Store(error)) => return Err(abandon(&mut conn, error).await),
            Err(other) => {
                let _ = conn.rollback().await;
                return Err(other);
            }
        };
        if let Err(error) = conn.commit().await {
            return Err(abandon(&mut conn, error).await);
        }
        for (attempt, disposition) in attempts.iter().zip(&outcome.settled) {
            if matches!(disposition, Disposition::Acknowledged { .. }) {
                self.fire(Notification::EventAcknowledged, attempt, None);
            }
        }
        Ok(outcome)
    }

    /// Inside the batch transaction: claim every new key in one statement, consume each
    /// claimed message in a savepoint, then complete the acked claims in one pass. A key is
    /// claimed once per batch: a repeat of a key
    /// acked earlier in the batch is a duplicate, a repeat of one whose claim was released
    /// (skip, failure) is claimed again and consumed, as a redelivery would be.
    async fn claim_and_consume(
        &self,
        conn: &mut Conn<'_>,
        attempts: &[Attempt<'_>],
        existing: &HashSet<String>,
        progress: &dyn Progress,
    ) -> Result<BatchOutcome, EngineError> {
        let empty = AckFields::default();
        let claims: Vec<NewEvent<'_>> = attempts
            .iter()
            .filter(|a| !existing.contains(&a.metadata.checksum))
            .map(|a| a.event_row(&empty))
            .collect();
        let flags = conn.insert_events(&claims).await?;
        let mut claimed: HashSet<&str> = claims
            .iter()
            .zip(flags)
            .filter(|(_, inserted)| *inserted)
            .map(|(row, _)| row.checksum)
            .collect();
        let mut released: HashSet<&str> = HashSet::new();
        let mut settled = Vec::with_capacity(attempts.len());
        let mut retry = None;
        let mut rows = Savepoints {
            conn: &mut *conn,
            acked: Vec::new(),
            current: 0,
        };
        let mut marked = false;
        for (i, attempt) in attempts.iter().enumerate() {
            let key = attempt.metadata.checksum.as_str();
            let ours = claimed.remove(key)
                || (released.remove(key)
                    && rows.conn.insert_event(&attempt.event_row(&empty)).await?);
            if !ours {
                self.fire(Notification::EventAlreadyConsumed, attempt, None);
                settled.push(Disposition::AlreadyConsumed);
                continue;
            }
            rows.conn.mark_message(!marked).await?;
            marked = true;
            rows.current = i;
            let verdict = match &attempt.unusable {
                Some(problem) => Verdict::Fail(problem.error()),
                None => {
                    let called = self.consume(attempt, Some(rows.conn.reborrow())).await;
                    if called.interrupted {
                        return Ok(BatchOutcome {
                            settled: Vec::new(),
                            retry: called.result.err(),
                            next_checked: None,
                            interrupted: true,
                        });
                    }
                    self.triage(attempt, called.result, RetryMode::Decide)
                }
            };
            match self.conclude(&mut rows, attempt, verdict, progress).await? {
                Disposition::Retry(error) => {
                    // Release the claims of the messages this batch will not reach.
                    for later in &attempts[i + 1..] {
                        if claimed.remove(later.metadata.checksum.as_str()) {
                            rows.conn.delete_event(later.key()).await?;
                        }
                    }
                    retry = Some(error);
                    break;
                }
                disposition => {
                    if !disposition.stored_event() {
                        released.insert(key);
                    }
                    settled.push(disposition);
                }
            }
        }
        let events: Vec<NewEvent<'_>> = rows
            .acked
            .iter()
            .map(|(i, fields)| attempts[*i].event_row(fields))
            .collect();
        rows.conn.complete_events(&events).await?;
        Ok(BatchOutcome {
            settled,
            retry,
            next_checked: None,
            interrupted: false,
        })
    }
}

fn per_message(total: Duration, count: usize) -> Duration {
    total / u32::try_from(count.max(1)).unwrap_or(u32::MAX)
}
