//! `checkpoint bench`: checkpointed throughput against raw Kafka consumption and the naive
//! check-then-insert pattern, measured in one process and one run so that the ratios compare
//! like with like.
//!
//! Every mode reads the same produced messages (or, for the ceilings, writes the same rows) in
//! its own consumer group, verifies its own result (one row per message, none missing, none
//! twice) before its figure counts, and cleans its rows up afterwards.

mod ceiling;
mod database;
mod modes;
mod report;
mod stopwatch;
mod workload;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::{AggregateExpressionMethods, ExpressionMethods, QueryDsl};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;

use checkpoint::engine::Engine;
use checkpoint::handler::{BatchContext, Context, Handler, HandlerError, Outcome};
use checkpoint::listener::{Listener, ListenerSpec, ListenerStats};
use checkpoint::message::checksum;
use checkpoint::store::schema::checkpoint_events;
use checkpoint::store::{Backend, DedupKey, NewEvent, Store, StoreError, StoreOptions};
use checkpoint::testing::Brokers as Kafka;
pub(crate) use checkpoint::testing::{BrokerError, serve_broker};

use self::database::*;
use self::modes::*;
pub(crate) use self::report::render;
use self::report::*;
use self::stopwatch::{Span, Stopwatch, span_of};
use self::workload::*;

/// Partitions of the benchmark topic unless told otherwise.
pub(crate) const DEFAULT_PARTITIONS: i32 = 3;

/// The librdkafka consumer settings every Kafka mode runs with. They decide fetch pacing: with
/// librdkafka's defaults the 1 s `fetch.queue.backoff.ms` dominates and the numbers mean
/// nothing.
pub(crate) const CONSUMER_SETTINGS: [(&str, &str); 6] = [
    ("fetch.wait.max.ms", "10"),
    ("fetch.queue.backoff.ms", "10"),
    ("queued.min.messages", "20000"),
    ("queued.max.messages.kbytes", "16384"),
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "500"),
];

/// Default PostgreSQL of `checkpoint bench`, used when it answers.
pub(crate) const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// What one benchmark mode measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mode {
    /// rdkafka consumption only, no database: the ceiling.
    Raw,
    /// The original's pattern: per message, `SELECT` whether it exists, then an autocommitted
    /// `INSERT`.
    Naive,
    /// checkpoint's per-message mode through the real engine, listener and a real handler.
    PerMessage,
    /// Per-message, with the handler writing one row of its own through the checkpoint
    /// transaction.
    Transactional,
    /// Batch mode (`batch_size` messages per batch), same handler as `per-message`.
    Batch,
    /// Batch mode with the handler of `transactional`: each batch's events and the handler's
    /// rows commit in one transaction.
    TransactionalBatch,
    /// No Kafka: multi-row `INSERT … ON CONFLICT DO NOTHING` of the same rows, 500 per
    /// statement, straight into the events table: what the batch mode's statements can do.
    DbCeiling,
    /// No Kafka: the database's fastest bulk load of the same rows into the same table
    /// (PostgreSQL binary `COPY`, MySQL `LOAD DATA LOCAL INFILE`, SQLite prepared inserts in
    /// one transaction): an upper bound that checkpointing, which must skip duplicates, does
    /// not reach.
    CopyCeiling,
}

impl Mode {
    /// Every mode, in the order they run.
    pub(crate) const ALL: [Mode; 8] = [
        Mode::Raw,
        Mode::Naive,
        Mode::PerMessage,
        Mode::Transactional,
        Mode::Batch,
        Mode::TransactionalBatch,
        Mode::DbCeiling,
        Mode::CopyCeiling,
    ];

    /// The mode's name on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Naive => "naive",
            Self::PerMessage => "per-message",
            Self::Transactional => "transactional",
            Self::Batch => "batch",
            Self::TransactionalBatch => "transactional-batch",
            Self::DbCeiling => "db-ceiling",
            Self::CopyCeiling => "copy-ceiling",
        }
    }

    fn uses_database(self) -> bool {
        self != Self::Raw
    }

    fn uses_kafka(self) -> bool {
        !matches!(self, Self::DbCeiling | Self::CopyCeiling)
    }

    /// The handler writes a row of its own in the checkpoint transaction.
    fn transactional(self) -> bool {
        matches!(self, Self::Transactional | Self::TransactionalBatch)
    }

    /// Messages go through the engine in batches.
    fn batched(self) -> bool {
        matches!(self, Self::Batch | Self::TransactionalBatch)
    }
}

impl std::str::FromStr for Mode {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| BenchError::UnknownMode(s.to_owned()))
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of `checkpoint bench`.
#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    /// Messages to produce (and rows to write per mode).
    pub messages: usize,
    /// Databases to measure; empty: a SQLite file in the temp dir and, when it answers,
    /// [`DEFAULT_POSTGRES`].
    pub databases: Vec<String>,
    /// Modes to run; empty: all.
    pub modes: Vec<Mode>,
    /// An external Kafka (`host:port,…`) instead of the embedded mock cluster.
    pub brokers: Option<String>,
    /// Runs the mock cluster in a child process started from this executable (as
    /// `<exe> bench-broker --topic T --partitions N`, see [`serve_broker`]) instead of in this
    /// process, so that its log of the produced messages is not counted in this process's
    /// memory. `None`: in this process.
    pub broker_exe: Option<std::path::PathBuf>,
    /// Partitions of the benchmark topic. The mock cluster keeps about 5 MiB of compressed
    /// messages (about 120,000 of these) per partition.
    pub partitions: i32,
    /// Messages per batch in `batch` and `transactional-batch` modes.
    pub batch_size: usize,
    /// Partitions in flight at once (`max_concurrency`) in the listener modes; `naive` gets as
    /// many connections, each serving its share of the partitions.
    pub concurrency: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            messages: 200_000,
            databases: Vec::new(),
            modes: Vec::new(),
            brokers: None,
            broker_exe: None,
            partitions: DEFAULT_PARTITIONS,
            batch_size: 500,
            concurrency: 1,
            progress: false,
        }
    }
}

/// An error that stops the benchmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum BenchError {
    /// `--modes` named a mode that does not exist.
    #[error(
        "unknown mode `{0}` (expected raw, naive, per-message, transactional, batch, \
         transactional-batch, db-ceiling or copy-ceiling)"
    )]
    UnknownMode(String),
    /// Nothing to measure.
    #[error("--messages must be at least 1")]
    NoMessages,
    /// A topic needs a partition.
    #[error("--partitions must be at least 1 (got {0})")]
    NoPartitions(i32),
    /// A database failed.
    #[error("{database}: {source}")]
    Store {
        /// The database, password masked.
        database: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// Kafka (the embedded cluster, the producer or a consumer) failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The brokers could not be started or reached.
    #[error(transparent)]
    Brokers(#[from] BrokerError),
    /// The broker does not hold every produced message (the embedded cluster keeps about
    /// 5 MiB per partition): the figures would be meaningless.
    #[error(
        "the broker holds {held} of the {produced} produced messages (offsets before {first:?} \
         were dropped); use fewer --messages, more --partitions or an external --brokers"
    )]
    BrokerDropped {
        /// Messages produced.
        produced: u64,
        /// Messages still on the broker.
        held: u64,
        /// First offset still held, per partition.
        first: Vec<i64>,
    },
    /// A mode did not see every message in time.
    #[error(
        "{mode} on {database}: {done} of {expected} messages after {waited:?} without progress"
    )]
    Stalled {
        /// The mode.
        mode: Mode,
        /// The database (or `-`).
        database: String,
        /// Messages done.
        done: u64,
        /// Messages expected.
        expected: u64,
        /// How long it waited.
        waited: Duration,
    },
    /// A mode's result does not hold exactly one row per message.
    #[error("{mode} on {database}: verification failed: {what}")]
    Verification {
        /// The mode.
        mode: Mode,
        /// The database (or `-`).
        database: String,
        /// What was wrong.
        what: String,
    },
}

/// One measured mode on one database.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BenchRow {
    /// The mode.
    pub mode: Mode,
    /// The database's backend (`sqlite`, `postgres`, `mysql`); `None` for `raw`.
    pub backend: Option<Backend>,
    /// The database (password masked), or `-` for `raw`.
    pub database: String,
    /// Messages processed (verified).
    pub messages: u64,
    /// Seconds from the first message to the last settled one.
    pub seconds: f64,
    /// Messages per second.
    pub messages_per_second: f64,
    /// Throughput relative to `naive` on the same database.
    pub vs_naive: Option<f64>,
    /// Throughput relative to `db-ceiling` on the same database.
    pub vs_db_ceiling: Option<f64>,
    /// Throughput relative to `copy-ceiling` on the same database.
    pub vs_copy_ceiling: Option<f64>,
    /// Throughput relative to `raw`.
    pub vs_raw: Option<f64>,
    /// Peak resident memory of the process during the mode, in bytes (Linux).
    pub peak_rss_bytes: Option<u64>,
    /// CPUs the bench process kept busy on average over `seconds` (Linux): SQLite's work is
    /// in it, a server database's is not.
    pub process_cpus: Option<f64>,
    /// Share of the whole machine's CPU time that was busy over `seconds`, 0 to 1 (Linux):
    /// this process, the database server and the broker together.
    pub machine_busy: Option<f64>,
}

/// Everything a run measured, with the settings that produced it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BenchReport {
    /// Messages per mode.
    pub messages: u64,
    /// Kafka: `embedded mock cluster` or the brokers given.
    pub kafka: String,
    /// Partitions of the benchmark topic.
    pub partitions: i32,
    /// Messages per batch in `batch` and `transactional-batch` modes.
    pub batch_size: usize,
    /// Partitions in flight at once in the listener modes (connections of `naive`).
    pub concurrency: usize,
    /// Logical CPUs of this machine.
    pub cpus: usize,
    /// Memory of this machine in bytes (Linux).
    pub memory_bytes: Option<u64>,
    /// The pinned librdkafka consumer settings.
    pub consumer_settings: Vec<(String, String)>,
    /// Default databases that did not answer and were left out.
    pub skipped: Vec<String>,
    /// One row per mode and database.
    pub rows: Vec<BenchRow>,
}

/// Peak resident memory since the last reset, in bytes (Linux only).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak resident memory to the current one (Linux ≥ 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn memory_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Partitions as a count (at least 1).
fn partition_count(partitions: i32) -> usize {
    usize::try_from(partitions).unwrap_or(1).max(1)
}

/// Runs the benchmark and returns its report; any lost or duplicated message is an error.
pub(crate) async fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    if options.messages == 0 {
        return Err(BenchError::NoMessages);
    }
    if options.partitions < 1 {
        return Err(BenchError::NoPartitions(options.partitions));
    }
    let concurrency = options.concurrency.max(1);
    let modes: Vec<Mode> = if options.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        Mode::ALL
            .into_iter()
            .filter(|m| options.modes.contains(m))
            .collect()
    };
    let run_id = format!(
        "{:x}{:04x}",
        Utc::now().timestamp_millis(),
        fastrand::u16(..)
    );
    let mut skipped = Vec::new();
    let mut databases = Vec::new();
    if modes.iter().any(|m| m.uses_database()) {
        if options.databases.is_empty() {
            let path = std::env::temp_dir().join(format!("checkpoint-bench-{run_id}.db"));
            let url = format!("sqlite://{}", path.display());
            databases.push(Database::open(&url, Some(path), concurrency).await?);
            match Database::open(DEFAULT_POSTGRES, None, concurrency).await {
                Ok(db) => databases.push(db),
                Err(error) => skipped.push(error.to_string()),
            }
        } else {
            for url in &options.databases {
                databases.push(Database::open(url, None, concurrency).await?);
            }
        }
    }
    let result = measure(options, &modes, &run_id, &databases).await;
    for (index, db) in databases.iter().enumerate() {
        let _ = db.clean_all(&run_id, index).await;
        db.remove_temp();
    }
    let (kafka, rows) = result?;
    Ok(BenchReport {
        messages: u64::try_from(options.messages).unwrap_or(u64::MAX),
        kafka,
        partitions: options.partitions,
        batch_size: options.batch_size.max(1),
        concurrency: options.concurrency.max(1),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        memory_bytes: memory_total(),
        consumer_settings: CONSUMER_SETTINGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        skipped,
        rows: with_ratios(rows),
    })
}

/// The consumer group (and checkpoint group_id) of one mode on the `index`-th database: each
/// reads the topic from the start.
fn group_of(run_id: &str, mode: Mode, index: usize) -> String {
    format!("checkpoint-bench-{run_id}-{}-{index}", mode.name())
}

async fn measure(
    options: &BenchOptions,
    modes: &[Mode],
    run_id: &str,
    databases: &[Database],
) -> Result<(String, Vec<BenchRow>), BenchError> {
    let n = options.messages;
    let expected = u64::try_from(n).unwrap_or(u64::MAX);
    let topic = format!("checkpoint-bench-{run_id}");
    let needs_kafka = modes.iter().any(|m| m.uses_kafka());
    let kafka = if needs_kafka {
        let kafka = Kafka::start(
            options.brokers.as_deref(),
            options.broker_exe.as_deref(),
            &topic,
            options.partitions,
        )
        .await?;
        let bar = bar(options.progress, expected, "produce");
        produce(&kafka, &topic, run_id, n, &bar).await?;
        bar.finish_and_clear();
        check_held(&kafka, &topic, expected)?;
        Some(kafka)
    } else {
        None
    };
    let label = kafka
        .as_ref()
        .map_or_else(|| "-".to_owned(), |k| k.label.clone());
    let mut rows = Vec::new();
    for &mode in modes {
        let targets: Vec<Option<&Database>> = if mode.uses_database() {
            databases.iter().map(Some).collect()
        } else {
            vec![None]
        };
        for (index, db) in targets.into_iter().enumerate() {
            let name = db.map_or("-", |d| d.label.as_str());
            let bar = bar(options.progress, expected, &format!("{mode} {name}"));
            let group = group_of(run_id, mode, index);
            reset_peak_rss();
            let load = |db| ceiling::Load {
                db,
                mode,
                group: &group,
                run_id,
                messages: n,
                partitions: options.partitions,
                bar: &bar,
            };
            let span = match (mode, db, &kafka) {
                (Mode::DbCeiling, Some(db), _) => load(db).db_ceiling().await?,
                (Mode::CopyCeiling, Some(db), _) => load(db).copy_ceiling().await?,
                (Mode::Raw, _, Some(kafka)) => raw(kafka, &topic, &group, expected, &bar).await?,
                (Mode::Naive, Some(db), Some(kafka)) => {
                    let naive = Naive {
                        kafka,
                        db,
                        topic: &topic,
                        group: &group,
                        expected,
                        bar: &bar,
                    };
                    naive.run(options.concurrency.max(1)).await?
                }
                (_, Some(db), Some(kafka)) => {
                    let spec = listener_spec(kafka, mode, &topic, &group, options);
                    listen(spec, db, mode, expected, &bar).await?
                }
                _ => continue,
            };
            let peak_rss_bytes = peak_rss();
            bar.finish_and_clear();
            if let Some(db) = db {
                verify(db, mode, &group, expected).await?;
                db.clean(&group).await?;
            }
            rows.push(BenchRow {
                mode,
                backend: db.map(|d| d.store.backend()),
                database: name.to_owned(),
                messages: expected,
                seconds: span.seconds,
                messages_per_second: expected as f64 / span.seconds.max(1e-9),
                vs_naive: None,
                vs_db_ceiling: None,
                vs_copy_ceiling: None,
                vs_raw: None,
                peak_rss_bytes,
                process_cpus: span.process_cpus,
                machine_busy: span.machine_busy,
            });
        }
    }
    Ok((label, rows))
}

fn bar(visible: bool, len: u64, what: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>40} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_about_200_bytes_and_decode() {
        for i in [0, 7, 99_999, 1_000_000] {
            let body = payload("18c0ffee0000", i);
            assert!(
                (180..=240).contains(&body.len()),
                "{} bytes: {body}",
                body.len()
            );
            let order: BenchOrder = serde_json::from_str(&body).expect("an order");
            assert_eq!(order.id, format!("18c0ffee0000-{i:08}"));
        }
    }

    #[test]
    fn modes_parse_by_name() {
        for mode in Mode::ALL {
            assert_eq!(mode.name().parse::<Mode>().expect("known"), mode);
        }
        let error = "fast".parse::<Mode>().expect_err("unknown");
        assert!(error.to_string().contains("unknown mode `fast`"), "{error}");
        for mode in Mode::ALL {
            assert!(error.to_string().contains(mode.name()), "{error}");
        }
    }

    #[test]
    fn ratios_compare_within_a_database_and_to_raw() {
        let row = |mode, database: &str, rate| BenchRow {
            mode,
            backend: (database != "-").then_some(Backend::Sqlite),
            database: database.to_owned(),
            messages: 10,
            seconds: 1.0,
            messages_per_second: rate,
            vs_naive: None,
            vs_db_ceiling: None,
            vs_copy_ceiling: None,
            vs_raw: None,
            peak_rss_bytes: None,
            process_cpus: None,
            machine_busy: None,
        };
        let rows = with_ratios(vec![
            row(Mode::Raw, "-", 100.0),
            row(Mode::Naive, "a", 10.0),
            row(Mode::Naive, "b", 20.0),
            row(Mode::Batch, "a", 40.0),
            row(Mode::DbCeiling, "a", 50.0),
            row(Mode::CopyCeiling, "a", 80.0),
        ]);
        let batch = &rows[3];
        assert_eq!(batch.vs_naive, Some(4.0));
        assert_eq!(batch.vs_db_ceiling, Some(0.8));
        assert_eq!(batch.vs_copy_ceiling, Some(0.5));
        assert_eq!(batch.vs_raw, Some(0.4));
        assert_eq!(rows[2].vs_db_ceiling, None);
        let json = serde_json::to_value(&rows[3]).expect("row as JSON");
        assert_eq!(json["backend"], "sqlite");
        assert_eq!(json["mode"], "batch");
    }
}
