//! The single-message modes: per-message (duplicate check, `consume`, then the insert) and
//! transactional (claim, `consume` inside the claiming transaction, commit on ack). Each
//! supplies only its [`Rows`]; the decision is [`Engine::triage`]'s.

use std::time::Instant;

use super::attempt::{AckFields, Attempt, Unusable};
use super::session::{CheckedAhead, Progress};
use super::triage::{RetryMode, Rows, Verdict};
use super::{Disposition, Engine, EngineError, Policy};
use crate::handler::{Handler, HandlerError, NEVER_RETURNED_CLASS};
use crate::instrument::Notification;
use crate::message::{Message, Origin};
use crate::store::{Conn, PooledConn, StoreError};

/// How to count a delivery durably (see [`Engine::count_delivery`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Count<'a> {
    /// Deliveries a dead previous owner made without counting them (0 or 1).
    pub(super) died: u32,
    /// Names this delivery, so counting it again changes nothing.
    pub(super) delivery: &'a str,
}

/// Per-message rows: the event inserted after `consume` (`INSERT … ON CONFLICT DO NOTHING`)
/// and a failure row on its own (the default), both retried as store steps, never by running
/// `consume` again.
pub(super) struct Direct;

impl Rows for Direct {
    async fn ack(
        &mut self,
        engine: &Engine,
        attempt: &Attempt<'_>,
        fields: &AckFields,
        progress: &dyn Progress,
    ) -> Result<Option<bool>, EngineError> {
        let row = attempt.event_row(fields);
        engine
            .store_step(progress, || engine.store.insert_event(&row))
            .await
            .map(Some)
    }
}

/// Transactional rows: the claiming transaction, committed with the completed event on ack,
/// rolled back (and its connection returned) otherwise; a failure row is then stored on a
/// connection of its own (the default).
struct Claimed {
    pooled: Option<PooledConn>,
    /// `consume` was dropped mid-flight or left the transaction in a state that could not be
    /// restored: the connection's state is unknown, so it is closed rather than returned to
    /// the pool.
    interrupted: bool,
}

impl Claimed {
    /// The claiming transaction. Only `release` gives it up, and nothing uses it after that;
    /// were that ever broken, the attempt fails as if the connection had been lost (it is
    /// tried again), never with a panic.
    fn conn(&mut self, engine: &Engine) -> Result<Conn<'_>, EngineError> {
        match &mut self.pooled {
            Some(pooled) => Ok(pooled.conn()),
            None => Err(EngineError::Store(StoreError::Unavailable {
                backend: engine.store.backend(),
                message: "the checkpoint transaction was already released".to_owned(),
            })),
        }
    }
}

impl Rows for Claimed {
    async fn ack(
        &mut self,
        engine: &Engine,
        attempt: &Attempt<'_>,
        fields: &AckFields,
        _: &dyn Progress,
    ) -> Result<Option<bool>, EngineError> {
        let mut conn = self.conn(engine)?;
        let completed = match conn
            .complete_event(attempt.key(), &attempt.event_row(fields))
            .await
        {
            Ok(()) => conn.commit().await,
            Err(error) => Err(error),
        };
        match completed {
            Ok(()) => Ok(Some(true)),
            // The transaction is gone, and the handler's writes with it: the attempt is run
            // again, which is exactly-once for what it wrote through the transaction.
            Err(error) => Err(abandon(&mut conn, error).await),
        }
    }

    async fn release(&mut self, _: &Engine, _: &Attempt<'_>) -> Result<(), EngineError> {
        let Some(mut pooled) = self.pooled.take() else {
            return Ok(());
        };
        if self.interrupted {
            pooled.discard();
            return Ok(());
        }
        pooled.conn().rollback().await?;
        Ok(())
    }
}

/// Rolls back after `error` (best effort: the connection may be gone) and returns the error.
pub(super) async fn abandon(conn: &mut Conn<'_>, error: StoreError) -> EngineError {
    if let Err(rollback) = conn.rollback().await {
        tracing::debug!(target: "checkpoint", %rollback, "rollback after a failed checkpoint step failed");
    }
    error.into()
}

impl Engine {
    /// One delivery attempt with its own duplicate check; `retry_count` attempts of this
    /// process failed before it. With `count`, a message that is not stored yet has this
    /// delivery counted durably first (see [`Engine::count_delivery`]), plus that many
    /// deliveries known to have died without being counted.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempt_once(
        &self,
        handler: &dyn Handler,
        message: &Message,
        origin: &Origin,
        policy: &Policy,
        retry_count: u32,
        count: Option<Count<'_>>,
        progress: &dyn Progress,
    ) -> Result<Disposition, EngineError> {
        let mut attempt = Attempt::new(handler, message, origin, policy, retry_count, None);
        let checked = if let Some(count) = count
            && attempt.unusable.is_none()
        {
            let started = Instant::now();
            let exists = self.store.event_exists(attempt.key()).await?;
            if !exists {
                self.count_delivery(&mut attempt, retry_count, count)
                    .await?;
            }
            Some((exists, started.elapsed()))
        } else {
            None
        };
        self.around(&attempt, RetryMode::Decide, checked, progress)
            .await
    }

    /// Counts this delivery of `attempt`'s message durably, before `consume` runs, and makes
    /// the count its `retry_count`. When earlier deliveries never returned (the consumer
    /// crashed, was killed or lost the partition inside them), the retry decision is asked
    /// whether one more is allowed, as after any failed attempt; if not, the message fails
    /// without being consumed, with error class `never_returned`.
    async fn count_delivery(
        &self,
        attempt: &mut Attempt<'_>,
        local: u32,
        count: Count<'_>,
    ) -> Result<(), EngineError> {
        // This delivery, plus the one a dead previous owner died inside of when it had not
        // counted it (a count it made is there already).
        let counted = self
            .store
            .count_attempt(
                attempt.key(),
                count.delivery,
                count.died,
                local.saturating_add(1),
            )
            .await?;
        let earlier = counted.saturating_sub(1);
        attempt.metadata.retry_count = earlier;
        if earlier <= local {
            return Ok(());
        }
        let lost = earlier - local;
        let error = HandlerError::with_class(
            NEVER_RETURNED_CLASS,
            format!(
                "{lost} earlier deliver{} of this message never returned: the consumer crashed, \
                 was killed or lost its partition inside `consume`",
                if lost == 1 { "y" } else { "ies" }
            ),
        );
        // The decision is the one the last of those deliveries would have asked for.
        attempt.metadata.retry_count = earlier - 1;
        match attempt.retry_decision(error) {
            Ok(_) => attempt.metadata.retry_count = earlier,
            Err(error) => {
                tracing::error!(
                    target: "checkpoint", topic = %attempt.message.topic,
                    partition = attempt.message.partition, offset = attempt.message.offset,
                    deliveries = earlier, "earlier deliveries never returned; failing the message"
                );
                attempt.unusable = Some(Unusable::of(&error));
            }
        }
        Ok(())
    }

    /// The first delivery attempt of a message whose duplicate check `ahead` made. A message
    /// this call settles as stored is added to `ahead`, so a repeat later in the run counts as
    /// a duplicate. A key stored by someone else after the check is still caught: by the
    /// insert's conflict handling in per-message mode, by the claim in transactional mode.
    pub(super) async fn attempt_checked(
        &self,
        handler: &dyn Handler,
        message: &Message,
        origin: &Origin,
        policy: &Policy,
        ahead: &mut CheckedAhead,
        progress: &dyn Progress,
    ) -> Result<Disposition, EngineError> {
        let key = ahead.take_key(message);
        let attempt = Attempt::new(handler, message, origin, policy, 0, key);
        // A message of another topic than the checked run's is checked by its own insert.
        let exists =
            message.topic == ahead.topic && ahead.stored.contains(&attempt.metadata.checksum);
        let result = self
            .around(
                &attempt,
                RetryMode::Decide,
                Some((exists, ahead.share)),
                progress,
            )
            .await;
        if let Ok(disposition) = &result
            && disposition.stored_event()
        {
            ahead.add_stored(&message.topic, &attempt.metadata.checksum);
        }
        result
    }

    /// `around_consume`: the duplicate check (or the one `checked` made ahead, with its time
    /// per message), then the mode's attempt.
    pub(super) async fn around(
        &self,
        attempt: &Attempt<'_>,
        mode: RetryMode,
        checked: Option<(bool, std::time::Duration)>,
        progress: &dyn Progress,
    ) -> Result<Disposition, EngineError> {
        let started = Instant::now();
        let result = async {
            let exists = match checked {
                Some((exists, share)) => {
                    self.fire(Notification::EventAlreadyExistsCheck, attempt, Some(share));
                    exists
                }
                None if attempt.unusable.is_some() => false,
                None => {
                    let started = Instant::now();
                    let exists = self.store.event_exists(attempt.key()).await?;
                    self.fire(
                        Notification::EventAlreadyExistsCheck,
                        attempt,
                        Some(started.elapsed()),
                    );
                    exists
                }
            };
            if exists {
                self.fire(Notification::EventAlreadyConsumed, attempt, None);
                return Ok(Disposition::AlreadyConsumed);
            }
            if let Some(problem) = &attempt.unusable {
                let verdict = Verdict::Fail(problem.error());
                return self.conclude(&mut Direct, attempt, verdict, progress).await;
            }
            if attempt.handler.transactional() {
                self.in_transaction(attempt, mode, progress).await
            } else {
                let called = self.consume(attempt, None).await;
                let verdict = self.triage(attempt, called.result, mode);
                self.conclude(&mut Direct, attempt, verdict, progress).await
            }
        }
        .await;
        self.fire(
            Notification::AroundConsume,
            attempt,
            Some(started.elapsed() + checked.map(|(_, share)| share).unwrap_or_default()),
        );
        result
    }

    /// `event_action`: calls `consume`.
    pub(super) async fn consume(
        &self,
        attempt: &Attempt<'_>,
        conn: Option<Conn<'_>>,
    ) -> super::attempt::Called {
        let started = Instant::now();
        let called = attempt.consume(conn).await;
        self.fire(Notification::EventAction, attempt, Some(started.elapsed()));
        called
    }

    /// Transactional mode: claim, consume with the transaction, commit on ack only.
    async fn in_transaction(
        &self,
        attempt: &Attempt<'_>,
        mode: RetryMode,
        progress: &dyn Progress,
    ) -> Result<Disposition, EngineError> {
        let mut rows = Claimed {
            pooled: Some(self.store.conn().await?),
            interrupted: false,
        };
        let mut conn = rows.conn(self)?;
        conn.begin().await?;
        let claimed = match conn
            .insert_event(&attempt.event_row(&AckFields::default()))
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => return Err(abandon(&mut conn, error).await),
        };
        if !claimed {
            // Another consumer committed this key while we checked.
            conn.rollback().await?;
            self.fire(Notification::EventAlreadyConsumed, attempt, None);
            return Ok(Disposition::AlreadyConsumed);
        }
        let called = self.consume(attempt, Some(conn)).await;
        rows.interrupted = called.interrupted;
        let verdict = self.triage(attempt, called.result, mode);
        self.conclude(&mut rows, attempt, verdict, progress).await
    }
}
