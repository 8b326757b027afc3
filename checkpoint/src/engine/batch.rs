//! Batch mode: many messages of one partition with one duplicate check and one multi-row
//! insert (per-message handlers), or one transaction with one multi-row claim and a savepoint
//! per message (transactional handlers). Outcomes stay per message: a poison message becomes a
//! failure without touching its neighbours; a message that must be retried ends the batch
//! there, after everything before it is settled.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{
    AckFields, Attempt, CheckedAhead, Disposition, Engine, EngineError, RetryMode, abandon,
};
use crate::handler::{Handler, HandlerError, Outcome};
use crate::instrument::Notification;
use crate::message::{Message, Origin};
use crate::store::{Conn, NewEvent};

/// What a batch did.
#[derive(Debug)]
pub struct BatchOutcome {
    /// One disposition per settled message, in order: messages `0..settled.len()` may have
    /// their offsets committed.
    pub settled: Vec<Disposition>,
    /// Set when message `settled.len()` failed and may be retried (with `retry_count + 1`);
    /// the messages after it were not processed.
    pub retry: Option<HandlerError>,
    /// The duplicate check of the `next` messages given to [`Engine::process_batch_checked`],
    /// with this batch's stored keys added; `None` when none were given, when the check
    /// failed, or when this batch ends in a retry (its remaining messages may still store
    /// keys the check does not know).
    pub next_checked: Option<CheckedAhead>,
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
        mut ahead: Option<CheckedAhead>,
        next: &[Message],
    ) -> Result<BatchOutcome, EngineError> {
        let attempts: Vec<Attempt<'_>> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let key = ahead.as_mut().and_then(|a| a.take_key(m));
                self.attempt(
                    handler,
                    m,
                    origin,
                    if i == 0 { retry_count } else { 0 },
                    key,
                )
            })
            .collect();
        let work = async {
            let started = Instant::now();
            let existing = self.batch_existing(&attempts, ahead).await?;
            let outcome = if handler.transactional() {
                self.transactional_batch(&attempts, &existing).await
            } else {
                self.per_message_batch(&attempts, existing).await
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
                    if matches!(
                        disposition,
                        Disposition::Acknowledged { .. } | Disposition::AlreadyConsumed
                    ) {
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
    ) -> Result<BatchOutcome, EngineError> {
        let mut settled: Vec<Option<Disposition>> = Vec::with_capacity(attempts.len());
        let mut acked: Vec<(usize, AckFields)> = Vec::new();
        let mut retry = None;
        for (i, attempt) in attempts.iter().enumerate() {
            if seen.contains(&attempt.metadata.checksum) {
                self.fire(Notification::EventAlreadyConsumed, attempt, None);
                settled.push(Some(Disposition::AlreadyConsumed));
                continue;
            }
            let result = self.consume(attempt, None).await;
            match result {
                Ok(Outcome::Ack(ack)) => {
                    seen.insert(attempt.metadata.checksum.clone());
                    acked.push((i, attempt.ack_fields(ack)));
                    settled.push(None);
                }
                Ok(_) => {
                    self.fire(Notification::EventSkipped, attempt, None);
                    settled.push(Some(Disposition::Skipped));
                }
                Err(error) => match self
                    .settle_error(attempt, error, RetryMode::Decide, None)
                    .await?
                {
                    Disposition::Retry(error) => {
                        retry = Some(error);
                        break;
                    }
                    other => settled.push(Some(other)),
                },
            }
        }
        // consume has run for these: store them even if the database blinks meanwhile.
        let started = Instant::now();
        let rows: Vec<NewEvent<'_>> = acked
            .iter()
            .map(|(i, f)| attempts[*i].event_row(f))
            .collect();
        let inserted = self
            .wait_out_outage(|| self.store.insert_events(&rows))
            .await?;
        let share = per_message(started.elapsed(), rows.len());
        for ((i, _), inserted) in acked.iter().zip(inserted) {
            self.fire(Notification::EventAcknowledged, &attempts[*i], Some(share));
            settled[*i] = Some(Disposition::Acknowledged { inserted });
        }
        Ok(BatchOutcome {
            settled: settled.into_iter().flatten().collect(),
            retry,
            next_checked: None,
        })
    }

    async fn transactional_batch(
        &self,
        attempts: &[Attempt<'_>],
        existing: &HashSet<String>,
    ) -> Result<BatchOutcome, EngineError> {
        let mut pooled = self.store.conn().await?;
        let mut conn = pooled.conn();
        conn.begin().await?;
        match self.claim_and_consume(&mut conn, attempts, existing).await {
            Ok(outcome) => {
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
            Err(EngineError::Store(error)) => Err(abandon(&mut conn, error).await),
            Err(other) => {
                let _ = conn.rollback().await;
                Err(other)
            }
        }
    }

    /// Inside the batch transaction: claim every new key in one statement, then consume each
    /// claimed message in a savepoint.
    async fn claim_and_consume(
        &self,
        conn: &mut Conn<'_>,
        attempts: &[Attempt<'_>],
        existing: &HashSet<String>,
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
        let mut settled = Vec::with_capacity(attempts.len());
        let mut retry = None;
        for (i, attempt) in attempts.iter().enumerate() {
            // A key is claimed once per batch: a repeat inside the batch is a duplicate.
            if !claimed.remove(attempt.metadata.checksum.as_str()) {
                self.fire(Notification::EventAlreadyConsumed, attempt, None);
                settled.push(Disposition::AlreadyConsumed);
                continue;
            }
            conn.begin().await?;
            let result = self.consume(attempt, Some(conn.reborrow())).await;
            match result {
                Ok(Outcome::Ack(ack)) => {
                    let fields = attempt.ack_fields(ack);
                    conn.complete_event(attempt.key(), &attempt.event_row(&fields))
                        .await?;
                    conn.commit().await?;
                    settled.push(Disposition::Acknowledged { inserted: true });
                }
                Ok(_) => {
                    conn.rollback().await?;
                    conn.delete_event(attempt.key()).await?;
                    self.fire(Notification::EventSkipped, attempt, None);
                    settled.push(Disposition::Skipped);
                }
                Err(error) => {
                    conn.rollback().await?;
                    conn.delete_event(attempt.key()).await?;
                    match self
                        .settle_error(attempt, error, RetryMode::Decide, Some(&mut *conn))
                        .await?
                    {
                        Disposition::Retry(error) => {
                            // Release the claims of the messages this batch will not reach.
                            for later in &attempts[i + 1..] {
                                if claimed.remove(later.metadata.checksum.as_str()) {
                                    conn.delete_event(later.key()).await?;
                                }
                            }
                            retry = Some(error);
                            break;
                        }
                        other => settled.push(other),
                    }
                }
            }
        }
        Ok(BatchOutcome {
            settled,
            retry,
            next_checked: None,
        })
    }
}

fn per_message(total: Duration, count: usize) -> Duration {
    total / u32::try_from(count.max(1)).unwrap_or(u32::MAX)
}
