//! Hand-written test handlers that count calls and write countable side effects.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use checkpoint::handler::BoxFuture;
use checkpoint::prelude::*;
use chrono::TimeZone;

pub use checkpoint_tests::side_effects;

/// What one call of [`Scripted::consume`] does after its side effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Ack,
    Skip,
    Fail,
    FailPermanent,
    /// Writes a second side effect (`<token>-inner`) inside a transaction of the handler's own,
    /// opened on the checkpoint transaction, and panics inside it (transactional only).
    PanicInOwnTransaction,
    /// Opens a transaction of its own, writes `<token>-inner` in it and acks without closing
    /// it (transactional only).
    AckLeavingOwnTransactionOpen,
}

/// What one call of [`Scripted::consume_batch`] does after writing every message's side effect
/// in one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStep {
    /// Acks every message as [`Step::Ack`] does.
    Ack,
    /// Fails the whole call (retryable).
    Fail,
    /// Acks every message but the last, which it skips.
    SkipLast,
    /// Panics after its write.
    Panic,
    /// Returns one outcome too few.
    WrongCount,
    /// Acks the first message with an entity id longer than the store holds.
    OverLongAck,
    /// Opens a transaction of its own, writes `batch-inner` in it and acks without closing it.
    AckLeavingOwnTransactionOpen,
    /// Never returns.
    Hang,
}

#[derive(Debug, thiserror::Error)]
#[error("downstream service refused the order")]
pub struct Refused(#[source] pub std::io::Error);

/// A handler that follows a script of steps (then `default`), records every retry_count it
/// sees, optionally writes a side effect through the checkpoint transaction, and optionally
/// extracts fields from a JSON payload `{"id", "type", "version", "at"}`.
pub struct Scripted {
    pub name: &'static str,
    pub max_retries: Option<u32>,
    pub transactional: bool,
    pub extractors: bool,
    pub delay: Duration,
    /// `Some`: the handler has a `consume_batch` that follows `batch_script`, then this.
    batch_default: Option<BatchStep>,
    batch_script: Mutex<VecDeque<BatchStep>>,
    batch_sizes: Mutex<Vec<usize>>,
    script: Mutex<VecDeque<Step>>,
    default: Step,
    calls: AtomicU32,
    retry_counts: Mutex<Vec<u32>>,
}

impl Scripted {
    pub fn new(default: Step) -> Self {
        Self {
            name: "scripted",
            max_retries: Some(3),
            transactional: false,
            extractors: false,
            delay: Duration::ZERO,
            batch_default: None,
            batch_script: Mutex::new(VecDeque::new()),
            batch_sizes: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            default,
            calls: AtomicU32::new(0),
            retry_counts: Mutex::new(Vec::new()),
        }
    }

    pub fn script(self, steps: &[Step]) -> Self {
        *self.script.lock().expect("script") = steps.iter().copied().collect();
        self
    }

    pub fn max_retries(mut self, max: Option<u32>) -> Self {
        self.max_retries = max;
        self
    }

    pub fn transactional(mut self) -> Self {
        self.transactional = true;
        self
    }

    /// Gives the handler a `consume_batch` that follows `steps`, then `default`.
    pub fn batched(mut self, default: BatchStep, steps: &[BatchStep]) -> Self {
        self.batch_default = Some(default);
        *self.batch_script.lock().expect("batch script") = steps.iter().copied().collect();
        self
    }

    /// How many messages each call of `consume_batch` got.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batch_sizes.lock().expect("batch sizes").clone()
    }

    pub fn with_extractors(mut self) -> Self {
        self.extractors = true;
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn retry_counts(&self) -> Vec<u32> {
        self.retry_counts.lock().expect("retry counts").clone()
    }

    fn field(message: &Message, name: &str) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(&message.payload).ok()?;
        value.get(name)?.as_str().map(str::to_owned)
    }
}

pub fn event_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 30, 45)
        .single()
        .expect("valid time")
        + chrono::Duration::milliseconds(123)
}

impl Handler for Scripted {
    fn name(&self) -> &str {
        self.name
    }

    fn max_retries(&self) -> Option<u32> {
        self.max_retries
    }

    fn transactional(&self) -> bool {
        self.transactional
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.retry_counts
                .lock()
                .expect("retry counts")
                .push(ctx.retry_count());
            if self.transactional {
                use diesel::prelude::*;
                let token = String::from_utf8_lossy(&message.payload).into_owned();
                ctx.tx()?
                    .execute(
                        diesel::insert_into(side_effects::table)
                            .values(side_effects::token.eq(token)),
                    )
                    .await?;
            }
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let step = self
                .script
                .lock()
                .expect("script")
                .pop_front()
                .unwrap_or(self.default);
            let inner = format!("{}-inner", String::from_utf8_lossy(&message.payload));
            match step {
                Step::PanicInOwnTransaction => in_own_transaction(ctx.tx()?, inner, true).await,
                Step::AckLeavingOwnTransactionOpen => {
                    in_own_transaction(ctx.tx()?, inner, false).await
                }
                _ => {}
            }
            match step {
                Step::Ack | Step::PanicInOwnTransaction | Step::AckLeavingOwnTransactionOpen => Ok(
                    Outcome::ack(format!("entity-{}", message.offset), event_time())
                        .with_event_type("created")
                        .with_event_version("v1"),
                ),
                Step::Skip => Ok(Outcome::skip()),
                Step::Fail => Err(Refused(std::io::Error::other("connection reset")).into()),
                Step::FailPermanent => Err(HandlerError::permanent(Refused(
                    std::io::Error::other("bad data"),
                ))),
            }
        })
    }

    fn consume_batch<'a>(
        &'a self,
        ctx: &'a mut BatchContext<'_>,
    ) -> Option<BoxFuture<'a, Result<Vec<Outcome>, HandlerError>>> {
        let default = self.batch_default?;
        Some(Box::pin(async move {
            use diesel::prelude::*;
            let batch = ctx.deliveries();
            self.batch_sizes
                .lock()
                .expect("batch sizes")
                .push(batch.len());
            let step = self
                .batch_script
                .lock()
                .expect("batch script")
                .pop_front()
                .unwrap_or(default);
            let tokens: Vec<_> = batch
                .iter()
                .map(|d| {
                    side_effects::token.eq(String::from_utf8_lossy(&d.message.payload).into_owned())
                })
                .collect();
            ctx.tx()
                .execute_owned(diesel::insert_into(side_effects::table).values(tokens))
                .await?;
            match step {
                BatchStep::Panic => panic!("bug in consume_batch"),
                BatchStep::Hang => std::future::pending::<()>().await,
                BatchStep::AckLeavingOwnTransactionOpen => {
                    in_own_transaction(ctx.tx(), "batch-inner".to_owned(), false).await;
                }
                _ => {}
            }
            let mut outcomes: Vec<Outcome> = batch
                .iter()
                .map(|d| {
                    Outcome::ack(format!("entity-{}", d.message.offset), event_time())
                        .with_event_type("created")
                        .with_event_version("v1")
                })
                .collect();
            match step {
                BatchStep::Fail => {
                    return Err(Refused(std::io::Error::other("connection reset")).into());
                }
                BatchStep::SkipLast => {
                    if let Some(last) = outcomes.last_mut() {
                        *last = Outcome::skip();
                    }
                }
                BatchStep::WrongCount => {
                    outcomes.pop();
                }
                BatchStep::OverLongAck => {
                    if let Some(first) = outcomes.first_mut() {
                        *first = Outcome::ack("x".repeat(300), event_time());
                    }
                }
                BatchStep::Ack
                | BatchStep::Panic
                | BatchStep::Hang
                | BatchStep::AckLeavingOwnTransactionOpen => {}
            }
            Ok(outcomes)
        }))
    }

    fn entity_id(&self, message: &Message) -> Option<String> {
        self.extractors
            .then(|| Self::field(message, "id"))
            .flatten()
    }

    fn entity_time(&self, message: &Message) -> Option<DateTime<Utc>> {
        let at = self
            .extractors
            .then(|| Self::field(message, "at"))
            .flatten()?;
        DateTime::parse_from_rfc3339(&at)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    fn event_type(&self, message: &Message) -> Option<String> {
        self.extractors
            .then(|| Self::field(message, "type"))
            .flatten()
    }

    fn event_version(&self, message: &Message) -> Option<String> {
        self.extractors
            .then(|| Self::field(message, "version"))
            .flatten()
    }
}

/// Opens a diesel transaction of the handler's own on `conn` (a savepoint inside the checkpoint
/// transaction) and writes `token` in it; then panics there when `panic`, else returns with it
/// still open. Either way, as a handler bug would, diesel's transaction manager is left one
/// level deeper than the engine set it.
async fn in_own_transaction(conn: &mut checkpoint::store::Conn<'_>, token: String, panic: bool) {
    use checkpoint::store::Conn;
    use diesel::prelude::*;
    use diesel_async::{AsyncConnection, RunQueryDsl, TransactionManager};
    macro_rules! write_in_own {
        ($c:expr, $manager:ty) => {{
            if panic {
                let _: Result<(), diesel::result::Error> = $c
                    .transaction(async |c| {
                        diesel::insert_into(side_effects::table)
                            .values(side_effects::token.eq(&token))
                            .execute(c)
                            .await?;
                        panic!("bug inside the handler's own transaction")
                    })
                    .await;
            }
            <$manager>::begin_transaction($c).await.expect("begin");
            diesel::insert_into(side_effects::table)
                .values(side_effects::token.eq(&token))
                .execute($c)
                .await
                .expect("write");
        }};
    }
    match conn {
        Conn::Sqlite(c) => write_in_own!(
            &mut **c,
            <checkpoint::store::SqliteConn as AsyncConnection>::TransactionManager
        ),
        Conn::Postgres(c) => write_in_own!(
            &mut **c,
            <checkpoint::store::AsyncPgConnection as AsyncConnection>::TransactionManager
        ),
        Conn::Mysql(c) => write_in_own!(
            &mut **c,
            <checkpoint::store::AsyncMysqlConnection as AsyncConnection>::TransactionManager
        ),
        other => panic!("no test for {other:?}"),
    }
}
