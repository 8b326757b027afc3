//! `checkpoint chaos`: the chaos harness of [`checkpoint::testing`] run with a demo handler whose
//! side effect is a row in `checkpoint_chaos_effects`, once per mode and database, printed as
//! one table of kills, duplicates and losses.
//!
//! The consumer processes are this same executable, started as the hidden
//! `checkpoint chaos-consumer --mode M`, exactly as a user's own binary would be.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;

use checkpoint::engine::Engine;
use checkpoint::handler::{BatchContext, BoxFuture, Context, Handler, HandlerError, Outcome};
use checkpoint::message::Message;
use checkpoint::store::Store;
use checkpoint::testing::{
    Chaos, ChaosConsumer, ChaosError, ChaosMessage, ChaosReport, SideEffects,
};

diesel::table! {
    /// One row per side effect the chaos handler applied (no key: a duplicate shows as a
    /// second row).
    checkpoint_chaos_effects (effect) {
        /// The message's effect token.
        effect -> Text,
    }
}

const CREATE_EFFECTS: &str =
    "CREATE TABLE IF NOT EXISTS checkpoint_chaos_effects (effect VARCHAR(255) NOT NULL)";

/// How the demo handler stores what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ChaosMode {
    /// Per-message: the effect is written on a connection of its own, then the checkpoint
    /// row. A crash between the two applies the effect again on redelivery.
    PerMessage,
    /// Transactional: the effect is written in the checkpoint transaction.
    Transactional,
    /// Transactional batches of 50, each taken in one `consume_batch` call: the effects of a
    /// batch commit with its checkpoint rows.
    Batch,
}

impl ChaosMode {
    /// Every mode.
    pub(crate) const ALL: [ChaosMode; 3] = [
        ChaosMode::PerMessage,
        ChaosMode::Transactional,
        ChaosMode::Batch,
    ];

    /// Its name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ChaosMode::PerMessage => "per-message",
            ChaosMode::Transactional => "transactional",
            ChaosMode::Batch => "batch",
        }
    }
}

impl std::str::FromStr for ChaosMode {
    type Err = ChaosError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChaosMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                ChaosError::Invalid(format!(
                    "unknown mode {s:?} (expected per-message, transactional or batch)"
                ))
            })
    }
}

/// Messages per batch in [`ChaosMode::Batch`].
const BATCH_SIZE: usize = 50;

/// The demo handler: applies the message's effect token, then acknowledges it.
struct ChaosOrders {
    transactional: bool,
    store: Store,
}

impl Handler for ChaosOrders {
    fn name(&self) -> &str {
        "chaos-orders"
    }

    /// Generous: only a message that kills its consumer this often is set aside.
    fn max_retries(&self) -> Option<u32> {
        Some(10)
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
            use diesel::ExpressionMethods;
            let effect = effect_of(message)?;
            let insert = diesel::insert_into(checkpoint_chaos_effects::table)
                .values(checkpoint_chaos_effects::effect.eq(effect.clone()));
            if self.transactional {
                ctx.tx()?.execute(insert).await?;
            } else {
                let mut pooled = self.store.conn().await.map_err(HandlerError::new)?;
                pooled.conn().execute(insert).await?;
            }
            Ok(Outcome::ack(effect, Utc::now()))
        })
    }

    /// Transactional batches in one call: the batch's effects in one insert through the
    /// batch's transaction, as a handler written for volume does. A payload that is not UTF-8
    /// fails the call, and the batch goes one message at a time through `consume`.
    fn consume_batch<'a>(
        &'a self,
        ctx: &'a mut BatchContext<'_>,
    ) -> Option<BoxFuture<'a, Result<Vec<Outcome>, HandlerError>>> {
        if !self.transactional {
            return None;
        }
        Some(Box::pin(async move {
            use diesel::ExpressionMethods;
            let effects = ctx
                .deliveries()
                .iter()
                .map(|delivery| effect_of(delivery.message))
                .collect::<Result<Vec<String>, HandlerError>>()?;
            let rows: Vec<_> = effects
                .iter()
                .map(|effect| checkpoint_chaos_effects::effect.eq(effect.clone()))
                .collect();
            ctx.tx()
                .execute_owned(diesel::insert_into(checkpoint_chaos_effects::table).values(rows))
                .await?;
            let now = Utc::now();
            Ok(effects
                .into_iter()
                .map(|effect| Outcome::ack(effect, now))
                .collect())
        }))
    }
}

/// The effect token a message carries: its payload, which must be UTF-8.
fn effect_of(message: &Message) -> Result<String, HandlerError> {
    std::str::from_utf8(&message.payload)
        .map(str::to_owned)
        .map_err(HandlerError::permanent)
}

/// The consumer side (`checkpoint chaos-consumer --mode M`): runs the demo handler as the
/// harness's environment says.
pub(crate) async fn consume(mode: ChaosMode) -> Result<(), ChaosError> {
    let Some(consumer) = ChaosConsumer::from_env()? else {
        return Err(ChaosError::Env {
            var: checkpoint::testing::env::BROKERS,
            reason: "not set: chaos-consumer is started by `checkpoint chaos`".to_owned(),
        });
    };
    let store = Store::connect(consumer.database())?;
    let handler = Arc::new(ChaosOrders {
        transactional: mode != ChaosMode::PerMessage,
        store: store.clone(),
    });
    let mut spec = consumer.spec(handler).max_concurrency(3);
    if mode == ChaosMode::Batch {
        spec = spec.batch_size(BATCH_SIZE);
    }
    consumer.run(spec, Engine::new(store)).await
}

/// Options of `checkpoint chaos`.
#[derive(Debug, Clone)]
pub(crate) struct ChaosOptions {
    /// Kills per mode and database.
    pub kills: usize,
    /// Modes to run.
    pub modes: Vec<ChaosMode>,
    /// Databases to run on (migrated first).
    pub databases: Vec<String>,
    /// Messages per mode and database.
    pub messages: usize,
    /// Seed of the crash points.
    pub seed: u64,
    /// External Kafka bootstrap servers instead of the mock cluster.
    pub brokers: Option<String>,
    /// The executable to start as `<exe> chaos-consumer --mode M`.
    pub consumer_exe: PathBuf,
}

/// One mode on one database.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ChaosRow {
    /// The database, password masked.
    pub database: String,
    /// The mode.
    pub mode: ChaosMode,
    /// What the harness found.
    pub report: ChaosReport,
}

/// Runs every mode on every database, one after the other.
pub(crate) async fn run(options: &ChaosOptions) -> Result<Vec<ChaosRow>, ChaosError> {
    let stamp = Utc::now().format("%Y%m%d%H%M%S").to_string();
    let mut rows = Vec::new();
    for database in &options.databases {
        let store = Store::connect(database)?;
        store.migrate().await?;
        {
            let mut pooled = store.conn().await?;
            pooled
                .conn()
                .batch_execute(CREATE_EFFECTS)
                .await
                .map_err(|e| ChaosError::SideEffects(e.to_string()))?;
        }
        for &mode in &options.modes {
            let run = format!("{stamp}-{}-{}", options.seed, mode.name());
            let messages = (0..options.messages).map(|i| {
                ChaosMessage::new(
                    format!("order-{i}"),
                    format!("{run}-{i}"),
                    format!("{run}-{i}"),
                )
            });
            let exe = options.consumer_exe.clone();
            let mut chaos = Chaos::new(
                database.as_str(),
                move || {
                    let mut command = std::process::Command::new(&exe);
                    command
                        .args(["chaos-consumer", "--mode", mode.name()])
                        .stdout(std::process::Stdio::null());
                    command
                },
                SideEffects::table("checkpoint_chaos_effects", "effect")?,
            )
            .messages(messages)
            .kills(options.kills)
            .seed(options.seed)
            .topic(format!("chaos-{run}"))
            .group(format!("checkpoint-chaos-{run}"));
            if let Some(brokers) = &options.brokers {
                chaos = chaos.brokers(brokers.as_str());
            }
            let report = chaos.run().await?;
            rows.push(ChaosRow {
                database: store.url().to_string(),
                mode,
                report,
            });
        }
    }
    Ok(rows)
}

/// The table `checkpoint chaos` prints.
pub(crate) fn render(rows: &[ChaosRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:<14} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>6} {:>8} {:>7}",
        "database",
        "mode",
        "messages",
        "kills",
        "before",
        "inside",
        "after",
        "commit",
        "rebalance",
        "dups",
        "lost",
        "seconds"
    );
    for row in rows {
        let report = &row.report;
        let at = |point| report.kills.get(&point).copied().unwrap_or(0);
        use checkpoint::testing::CrashPoint as P;
        let _ = writeln!(
            out,
            "{:<40} {:<14} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>6} {:>8} {:>7.1}",
            row.database,
            row.mode.name(),
            report.messages,
            report.total_kills(),
            at(P::BeforeConsume),
            at(P::InsideConsume),
            at(P::AfterConsume),
            at(P::AfterCommit),
            at(P::Rebalance),
            report.extra_applications(),
            report.lost.len(),
            report.elapsed.as_secs_f64(),
        );
    }
    let _ = writeln!(
        out,
        "\nkills by crash point: before = before consume, inside = inside consume, after = after \
         consume and before the checkpoint commit, commit = after the checkpoint commit and \
         before the offset is stored for Kafka, rebalance = while a rebalance revokes the \
         partitions.\ndups = side \
         effects applied more than once (extra applications); lost = side effects never applied."
    );
    out
}
