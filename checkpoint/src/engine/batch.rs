//! Batch mode: many messages of one partition with one duplicate check and one multi-row
//! insert (per-message handlers), or one transaction with one multi-row claim, then either one
//! call of the handler's `consume_batch` or a savepoint per message, and the acked claims
//! completed in one pass at the end (transactional handlers). Outcomes stay per message
//! through the same
//! [`Engine::triage`] as single messages: a poison message becomes a failure without touching
//! its neighbours; a message that must be retried ends the batch there, after everything
//! before it is settled.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::Either;

use super::attempt::{AckFields, Attempt, close_left_open, guarded_call};
use super::modes::abandon;
use super::session::{CheckedAhead, Progress};
use super::triage::{RetryMode, Rows, Verdict};
use super::{BatchOutcome, Disposition, Engine, EngineError, Policy};
use crate::crash::{self, CrashPoint};
use crate::handler::{BatchContext, Delivery, Handler, HandlerError, Outcome};
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

/// The rows of a batch kept from `consume_batch`: its events were inserted complete before the
/// verdicts are concluded, so an ack has nothing left to store (it is notified with the
/// batch's commit).
struct Inserted;

impl Rows for Inserted {
    async fn ack(
        &mut self,
        _: &Engine,
        _: &Attempt<'_>,
        _: &AckFields,
        _: &dyn Progress,
    ) -> Result<Option<bool>, EngineError> {
        Ok(None)
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

    /// Inside the batch transaction: the new messages through the handler's `consume_batch`
    /// and their complete events in one insert, when it has one and its result is kept;
    /// otherwise claim every new key in one statement, consume each claimed message in a
    /// savepoint, then complete the acked claims in one pass.
    async fn claim_and_consume(
        &self,
        conn: &mut Conn<'_>,
        attempts: &[Attempt<'_>],
        existing: &HashSet<String>,
        progress: &dyn Progress,
    ) -> Result<BatchOutcome, EngineError> {
        let fresh: Vec<&Attempt<'_>> = attempts
            .iter()
            .filter(|a| !existing.contains(&a.metadata.checksum))
            .collect();
        let fits = whole_batch_fits(attempts, &fresh);
        if fits {
            conn.mark_message(true).await?;
            match self.consume_whole(conn, attempts, &fresh, progress).await? {
                Some(Consumed::Interrupted(outcome)) => return Ok(outcome),
                Some(Consumed::Settled { settled, retry }) => {
                    return Ok(BatchOutcome {
                        settled,
                        retry,
                        next_checked: None,
                        interrupted: false,
                    });
                }
                None => {}
            }
        }
        let empty = AckFields::default();
        let claims: Vec<NewEvent<'_>> = fresh.iter().map(|a| a.event_row(&empty)).collect();
        let flags = conn.insert_events(&claims).await?;
        let claimed: HashSet<&str> = claims
            .iter()
            .zip(flags)
            .filter(|(_, inserted)| *inserted)
            .map(|(row, _)| row.checksum)
            .collect();
        let mut rows = Savepoints {
            conn: &mut *conn,
            acked: Vec::new(),
            current: 0,
        };
        // The savepoint set for consume_batch serves the first message.
        let consumed = self
            .one_by_one(&mut rows, attempts, claimed, fits, progress)
            .await?;
        let (settled, retry) = match consumed {
            Consumed::Interrupted(outcome) => return Ok(outcome),
            Consumed::Settled { settled, retry } => (settled, retry),
        };
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

    /// The batch's new messages (`fresh`: those not stored at the duplicate check, in order)
    /// through the handler's `consume_batch` in one call, after the savepoint the caller set,
    /// then their events, complete, in one insert. Nothing is claimed first: a key another
    /// consumer stored since the duplicate check makes the insert skip it, and then nothing of
    /// the call is kept. `None` when the handler has no such form, or its result is not kept
    /// (see [`Handler::consume_batch`]): everything the call wrote is rolled back to that
    /// savepoint, and the messages go one by one.
    async fn consume_whole(
        &self,
        conn: &mut Conn<'_>,
        attempts: &[Attempt<'_>],
        fresh: &[&Attempt<'_>],
        progress: &dyn Progress,
    ) -> Result<Option<Consumed>, EngineError> {
        let Some(first) = fresh.first() else {
            return Ok(None);
        };
        let deliveries: Vec<Delivery<'_>> = fresh
            .iter()
            .map(|a| Delivery::new(a.message, &a.metadata))
            .collect();
        let limit = first
            .policy
            .handler_timeout
            .map(|limit| limit.saturating_mul(u32::try_from(deliveries.len()).unwrap_or(u32::MAX)));
        let count = deliveries.len();
        let mut offered = true;
        let called = {
            let mut ctx = BatchContext::new(&deliveries, conn.reborrow());
            let handler = first.handler;
            let (handed, offer) = (&mut ctx, &mut offered);
            // Made inside the guard: a panic while it makes its future is caught too.
            let call = move || {
                // Moved, not reborrowed: the future keeps the context for its whole life.
                let handed = handed;
                match handler.consume_batch(handed) {
                    Some(call) => {
                        // Made, not yet polled: each message is before its consume.
                        crash::reach_for(CrashPoint::BeforeConsume, count);
                        Either::Left(crash::inside(call, count))
                    }
                    None => {
                        *offer = false;
                        Either::Right(std::future::ready(Ok(Vec::new())))
                    }
                }
            };
            let called = guarded_call("consume_batch", call, limit).await;
            if !offered {
                return Ok(None);
            }
            if called.interrupted {
                called
            } else {
                close_left_open("consume_batch", ctx.tx(), called, |_| true, first.message).await
            }
        };
        if called.interrupted {
            let error = called.result.err();
            tracing::warn!(
                target: "checkpoint", topic = %first.message.topic,
                partition = first.message.partition, offset = first.message.offset,
                messages = count, error = error.as_ref().map(ToString::to_string),
                "consume_batch was cut off or left the batch transaction unusable; the \
                 transaction is discarded and the batch's messages go one by one"
            );
            return Ok(Some(Consumed::Interrupted(BatchOutcome::interrupted(
                error,
            ))));
        }
        let kept = match called.result {
            Err(error) => Err(format!("it failed: {error}")),
            Ok(outcomes) if outcomes.len() != fresh.len() => Err(format!(
                "it returned {} outcomes for {} messages",
                outcomes.len(),
                fresh.len()
            )),
            Ok(outcomes) => outcomes
                .into_iter()
                .zip(fresh)
                .map(|(outcome, attempt)| match outcome {
                    Outcome::Ack(ack) => attempt.ack_fields(ack).map_err(|error| {
                        format!("the ack of offset {}: {error}", attempt.message.offset)
                    }),
                    Outcome::Skip => Err(format!("it skipped offset {}", attempt.message.offset)),
                })
                .collect::<Result<Vec<AckFields>, String>>(),
        };
        let fields = match kept {
            Ok(fields) => fields,
            Err(reason) => return not_kept(conn, first.message, fresh.len(), &reason).await,
        };
        let events: Vec<NewEvent<'_>> = fresh
            .iter()
            .zip(&fields)
            .map(|(attempt, fields)| attempt.event_row(fields))
            .collect();
        let inserted = conn.insert_events(&events).await?;
        let taken = inserted.iter().filter(|inserted| !**inserted).count();
        if taken > 0 {
            let reason = format!("another consumer stored {taken} of its keys meanwhile");
            return not_kept(conn, first.message, fresh.len(), &reason).await;
        }
        // `fresh` is a subsequence of `attempts`, and its keys are distinct: pair by key.
        let mut acks: HashMap<&str, AckFields> = fresh
            .iter()
            .map(|a| a.metadata.checksum.as_str())
            .zip(fields)
            .collect();
        let mut settled = Vec::with_capacity(attempts.len());
        for attempt in attempts {
            let Some(ack) = acks.remove(attempt.metadata.checksum.as_str()) else {
                self.fire(Notification::EventAlreadyConsumed, attempt, None);
                settled.push(Disposition::AlreadyConsumed);
                continue;
            };
            let disposition = self
                .conclude(&mut Inserted, attempt, Verdict::Ack(ack), progress)
                .await?;
            settled.push(disposition);
        }
        Ok(Some(Consumed::Settled {
            settled,
            retry: None,
        }))
    }

    /// The claimed messages one by one, each in a savepoint (`marked`: one is already set).
    /// A key is claimed once per batch: a repeat of a key acked earlier in the batch is a
    /// duplicate, a repeat of one whose claim was released (skip, failure) is claimed again
    /// and consumed, as a redelivery would be.
    async fn one_by_one(
        &self,
        rows: &mut Savepoints<'_, '_>,
        attempts: &[Attempt<'_>],
        mut claimed: HashSet<&str>,
        mut marked: bool,
        progress: &dyn Progress,
    ) -> Result<Consumed, EngineError> {
        let empty = AckFields::default();
        let mut released: HashSet<&str> = HashSet::new();
        let mut settled = Vec::with_capacity(attempts.len());
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
                        return Ok(Consumed::Interrupted(BatchOutcome::interrupted(
                            called.result.err(),
                        )));
                    }
                    self.triage(attempt, called.result, RetryMode::Decide)
                }
            };
            match self.conclude(rows, attempt, verdict, progress).await? {
                Disposition::Retry(error) => {
                    // Release the claims of the messages this batch will not reach.
                    for later in &attempts[i + 1..] {
                        if claimed.remove(later.metadata.checksum.as_str()) {
                            rows.conn.delete_event(later.key()).await?;
                        }
                    }
                    return Ok(Consumed::Settled {
                        settled,
                        retry: Some(error),
                    });
                }
                disposition => {
                    if !disposition.stored_event() {
                        released.insert(key);
                    }
                    settled.push(disposition);
                }
            }
        }
        Ok(Consumed::Settled {
            settled,
            retry: None,
        })
    }
}

/// How a transactional batch's messages went through the handler.
enum Consumed {
    /// Settled in order: all of them, or those before the one that must be retried (`retry`).
    Settled {
        settled: Vec<Disposition>,
        retry: Option<HandlerError>,
    },
    /// A call was cut off (`handler_timeout`) or left the transaction unusable: nothing of the
    /// batch can be kept.
    Interrupted(BatchOutcome),
}

/// Whether the batch may go through `consume_batch`: it has new messages (`fresh`), each of
/// them usable (no dedup key problem) and its key's only one in the batch, and the first
/// message is not a retry (it failed before; it goes one by one).
fn whole_batch_fits(attempts: &[Attempt<'_>], fresh: &[&Attempt<'_>]) -> bool {
    let keys: HashSet<&str> = fresh.iter().map(|a| a.metadata.checksum.as_str()).collect();
    attempts
        .first()
        .is_some_and(|a| a.metadata.retry_count == 0)
        && !fresh.is_empty()
        && keys.len() == fresh.len()
        && fresh.iter().all(|a| a.unusable.is_none())
}

/// Rolls back what a `consume_batch` call of `count` messages from `first` wrote, to the
/// savepoint set before it, saying why (`reason`); the messages then go one by one.
async fn not_kept(
    conn: &mut Conn<'_>,
    first: &Message,
    count: usize,
    reason: &str,
) -> Result<Option<Consumed>, EngineError> {
    tracing::info!(
        target: "checkpoint", topic = %first.topic, partition = first.partition,
        offset = first.offset, messages = count, %reason,
        "consume_batch's result is not kept; its writes are rolled back and the messages go \
         through consume one by one"
    );
    conn.undo_message().await?;
    Ok(None)
}

fn per_message(total: Duration, count: usize) -> Duration {
    total / u32::try_from(count.max(1)).unwrap_or(u32::MAX)
}
