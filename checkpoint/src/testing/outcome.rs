//! What a chaos run takes and tells: its messages, how side effects are counted, its report,
//! and why it could not run.

use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::crash::CrashPoint;
use crate::listener::ListenerError;
use crate::store::{Store, StoreError};

/// How long one read of the side effects may take.
const READ_LIMIT: Duration = Duration::from_secs(60);

/// Why the harness could not run, or could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// An environment variable of the harness's protocol is missing or unreadable.
    #[error("{var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The harness was asked for something it cannot do.
    #[error("invalid chaos run: {0}")]
    Invalid(String),
    /// The checkpoint database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The brokers could not be started or reached.
    #[error(transparent)]
    Brokers(#[from] super::kafka::BrokerError),
    /// Producing, or asking Kafka for offsets, failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The consumer's listener stopped with an error (consumer side).
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// A consumer process could not be started or watched.
    #[error("consumer process: {0}")]
    Process(#[from] std::io::Error),
    /// A consumer process ended other than at its crash point or by the harness's SIGTERM:
    /// the handler or the listener failed under the crash test.
    #[error("a consumer process ended unexpectedly ({status}) in round {round}")]
    ConsumerFailed {
        /// The round (0 for the last, unarmed consumer).
        round: usize,
        /// How it ended.
        status: ExitStatus,
    },
    /// The last consumer did not commit every offset in time.
    #[error("the stream was not finished after {waited:?}: committed {committed:?} of {ends:?}")]
    Unfinished {
        /// How long the harness waited.
        waited: Duration,
        /// Committed offsets per partition.
        committed: Vec<Option<i64>>,
        /// Where each partition ends.
        ends: Vec<i64>,
    },
    /// Reading the side effects failed.
    #[error("reading the side effects: {0}")]
    SideEffects(String),
    /// Fewer kills landed than asked (the stream ran dry, or armed consumers kept missing
    /// their points): the run proves less than it was meant to.
    #[error("only {} of {asked} kills landed: {report}", report.total_kills())]
    TooFewKills {
        /// Kills asked for.
        asked: usize,
        /// What the run found with the kills it had.
        report: Box<ChaosReport>,
    },
    /// The scratch directory for crash marks could not be made.
    #[error("cannot create the harness's scratch directory: {0}")]
    Scratch(#[source] std::io::Error),
}

/// One message of the workload, and the side effect its handling must leave exactly once.
#[derive(Debug, Clone)]
pub struct ChaosMessage {
    pub(super) key: String,
    pub(super) payload: Vec<u8>,
    pub(super) effect: String,
}

impl ChaosMessage {
    /// A message with `key` and `payload`, whose handling applies `effect` (a value the
    /// [`SideEffects`] listing shows once per application). Effects must be unique across
    /// the workload; a message repeating another's payload would be a deliberate duplicate,
    /// which is not what this harness measures.
    pub fn new(
        key: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        effect: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            payload: payload.into(),
            effect: effect.into(),
        }
    }
}

type Listing = Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<String>, String>> + Send + Sync>;

/// Where the harness reads which side effects happened: one entry per application.
#[derive(Clone)]
pub enum SideEffects {
    /// Every row of `table`, by the value of `column`, read from the checkpoint database.
    Table {
        /// The table (optionally `schema.table`).
        table: String,
        /// The column holding the effect.
        column: String,
    },
    /// Whatever the callback lists (for effects outside the database: a mock service, a file).
    Callback(Listing),
}

impl std::fmt::Debug for SideEffects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SideEffects::Table { table, column } => f
                .debug_struct("Table")
                .field("table", table)
                .field("column", column)
                .finish(),
            SideEffects::Callback(_) => f.write_str("Callback(..)"),
        }
    }
}

impl SideEffects {
    /// The rows of `table`, by `column`. Both must be plain SQL identifiers (letters, digits,
    /// `_`; the table may be `schema.table`): they are written into the query.
    pub fn table(table: &str, column: &str) -> Result<Self, ChaosError> {
        let plain = |name: &str| {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let table_ok = match table.split_once('.') {
            Some((schema, name)) => plain(schema) && plain(name),
            None => plain(table),
        };
        if !table_ok || !plain(column) {
            return Err(ChaosError::Invalid(format!(
                "side-effect table {table:?} and column {column:?} must be plain SQL identifiers"
            )));
        }
        Ok(SideEffects::Table {
            table: table.to_owned(),
            column: column.to_owned(),
        })
    }

    /// The effects `list` returns, one entry per application.
    pub fn callback<F, Fut>(list: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<String>, String>> + Send + 'static,
    {
        SideEffects::Callback(Arc::new(move || Box::pin(list())))
    }

    /// The effects so far, one entry per application; bounded in time.
    pub(super) async fn read(&self, store: &Store) -> Result<Vec<String>, ChaosError> {
        tokio::time::timeout(READ_LIMIT, self.read_unbounded(store))
            .await
            .map_err(|_| ChaosError::SideEffects(format!("no answer within {READ_LIMIT:?}")))?
    }

    async fn read_unbounded(&self, store: &Store) -> Result<Vec<String>, ChaosError> {
        match self {
            SideEffects::Callback(list) => list().await.map_err(ChaosError::SideEffects),
            SideEffects::Table { table, column } => {
                #[derive(diesel::QueryableByName)]
                struct Row {
                    #[diesel(sql_type = diesel::sql_types::Text)]
                    effect: String,
                }
                let text = match store.backend() {
                    crate::store::Backend::Mysql => "CHAR",
                    _ => "TEXT",
                };
                let sql = format!("SELECT CAST({column} AS {text}) AS effect FROM {table}");
                let mut pooled = store.conn().await?;
                let rows: Vec<Row> = pooled
                    .conn()
                    .load(diesel::sql_query(sql))
                    .await
                    .map_err(|e| ChaosError::SideEffects(e.to_string()))?;
                Ok(rows.into_iter().map(|r| r.effect).collect())
            }
        }
    }
}

/// What a chaos run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChaosReport {
    /// Messages produced.
    pub messages: usize,
    /// Kills by crash point.
    pub kills: BTreeMap<CrashPoint, usize>,
    /// Armed consumers that were stopped without reaching their point (the stream ran dry
    /// first, or the round took too long).
    pub rounds_without_kill: usize,
    /// Effects that happened more than once, with how often they happened.
    pub duplicates: BTreeMap<String, usize>,
    /// Effects that never happened.
    pub lost: Vec<String>,
    /// Failure rows the checkpoint recorded for the run's topic and group (a message whose
    /// consumer died inside it `max_retries + 1` times ends there by design).
    pub failure_rows: i64,
    /// The seed the crash points were drawn from.
    pub seed: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl ChaosReport {
    /// Every kill.
    pub fn total_kills(&self) -> usize {
        self.kills.values().sum()
    }

    /// Applications beyond the first, over all duplicated effects.
    pub fn extra_applications(&self) -> usize {
        self.duplicates.values().map(|n| n - 1).sum()
    }
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kills: Vec<String> = self
            .kills
            .iter()
            .map(|(point, n)| format!("{point} {n}"))
            .collect();
        write!(
            f,
            "{} messages, {} kills ({}), {} rounds without a kill: {} effects duplicated \
             ({} extra applications), {} lost, {} failure rows (seed {}, {:.1} s)",
            self.messages,
            self.total_kills(),
            kills.join(", "),
            self.rounds_without_kill,
            self.duplicates.len(),
            self.extra_applications(),
            self.lost.len(),
            self.failure_rows,
            self.seed,
            self.elapsed.as_secs_f64(),
        )
    }
}
