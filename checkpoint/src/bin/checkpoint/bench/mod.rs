//! `checkpoint bench`: checkpointed throughput against raw Kafka consumption and the naive
//! check-then-insert pattern, measured in one process and one run so that the ratios compare
//! like with like.
//!
//! Every mode reads the same produced messages (or, for the ceilings, writes the same rows) in
//! its own consumer group, verifies its own result (one row per message, none missing, none
//! twice) before its figure counts, and cleans its rows up afterwards.

mod ceiling;

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
use checkpoint::handler::{Context, Handler, HandlerError, Outcome};
use checkpoint::listener::{Listener, ListenerSpec, ListenerStats};
use checkpoint::message::checksum;
use checkpoint::store::schema::checkpoint_events;
use checkpoint::store::{Backend, DedupKey, NewEvent, Store, StoreError, StoreOptions};
use checkpoint::testing::Brokers as Kafka;
pub(crate) use checkpoint::testing::{BrokerError, serve_broker};

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

/// The order every benchmark message carries (about 200 bytes of JSON).
#[derive(Debug, serde::Deserialize)]
struct BenchOrder {
    id: String,
    placed_at: DateTime<Utc>,
    kind: String,
}

/// The payload of message `i` of run `run`.
fn payload(run: &str, i: usize) -> String {
    let placed = DateTime::<Utc>::from_timestamp(1_790_000_000 + (i as i64 % 86_400), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"id":"{run}-{i:08}","customer":"customer-{:05}","placed_at":"{placed}","kind":"order.placed","amount_cents":{},"currency":"EUR","items":[{{"sku":"sku-{:04}","qty":{}}}],"channel":"web"}}"#,
        i % 50_021,
        1_000 + i % 9_000,
        i % 7_919,
        1 + i % 5,
    )
}

/// The per-message and batch handler: decodes the order and acknowledges it.
struct BenchOrders;

#[checkpoint::checkpoint_handler(name = "bench-orders")]
impl BenchOrders {
    async fn consume(
        &self,
        order: BenchOrder,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        Ok(ctx
            .ack(order.id, order.placed_at)
            .with_event_type(order.kind))
    }
}

diesel::table! {
    /// The transactional handler's own table: one row per applied order.
    checkpoint_bench_effects (id) {
        /// Row id.
        id -> BigInt,
        /// Consumer group of the mode that wrote it.
        group_id -> Text,
        /// The order applied.
        order_id -> Text,
    }
}

/// The transactional handler: writes one row through the checkpoint transaction, then acks.
struct BenchEffects;

#[checkpoint::checkpoint_handler(transactional, name = "bench-effects")]
impl BenchEffects {
    async fn consume(
        &self,
        order: BenchOrder,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let group = ctx.metadata().group_id.clone();
        ctx.tx()?
            .execute(
                diesel::insert_into(checkpoint_bench_effects::table).values((
                    checkpoint_bench_effects::group_id.eq(group),
                    checkpoint_bench_effects::order_id.eq(order.id.clone()),
                )),
            )
            .await?;
        Ok(ctx
            .ack(order.id, order.placed_at)
            .with_event_type(order.kind))
    }
}

fn effects_ddl(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "CREATE TABLE IF NOT EXISTS checkpoint_bench_effects (id INTEGER PRIMARY KEY, \
             group_id TEXT NOT NULL, order_id TEXT NOT NULL)"
        }
        Backend::Postgres => {
            "CREATE TABLE IF NOT EXISTS checkpoint_bench_effects (id BIGSERIAL PRIMARY KEY, \
             group_id TEXT NOT NULL, order_id TEXT NOT NULL)"
        }
        // `Backend` is non-exhaustive: MySQL/MariaDB.
        _ => {
            "CREATE TABLE IF NOT EXISTS checkpoint_bench_effects (id BIGINT AUTO_INCREMENT \
             PRIMARY KEY, group_id VARCHAR(255) NOT NULL, order_id VARCHAR(255) NOT NULL)"
        }
    }
}

fn kafka_err(error: impl std::fmt::Display) -> BenchError {
    BenchError::Kafka(error.to_string())
}

/// A consumer of `topic` in `group` on `kafka`, from the start.
fn subscribe(kafka: &Kafka, topic: &str, group: &str) -> Result<StreamConsumer, BenchError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.servers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest");
    for (key, value) in CONSUMER_SETTINGS {
        config.set(key, value);
    }
    let consumer: StreamConsumer = config.create().map_err(kafka_err)?;
    consumer.subscribe(&[topic]).map_err(kafka_err)?;
    Ok(consumer)
}

/// Produces `count` messages round-robin over the partitions.
async fn produce(
    kafka: &Kafka,
    topic: &str,
    run: &str,
    count: usize,
    bar: &ProgressBar,
) -> Result<(), BenchError> {
    let partitions = partition_count(kafka.partitions);
    let records = (0..count).map(|i| {
        let partition = i32::try_from(i % partitions).unwrap_or(0);
        (partition, format!("order-{i}"), payload(run, i))
    });
    checkpoint::testing::produce(&kafka.servers, topic, records, || bar.inc(1))
        .await
        .map_err(kafka_err)
}

/// Checks that the broker still holds every produced message.
fn check_held(kafka: &Kafka, topic: &str, produced: u64) -> Result<(), BenchError> {
    let marks = checkpoint::testing::watermarks(&kafka.servers, topic, kafka.partitions)
        .map_err(kafka_err)?;
    let held = marks
        .iter()
        .map(|(low, high)| u64::try_from(high - low).unwrap_or(0))
        .sum();
    let first: Vec<i64> = marks.iter().map(|(low, _)| *low).collect();
    if held != produced || first.iter().any(|low| *low != 0) {
        return Err(BenchError::BrokerDropped {
            produced,
            held,
            first,
        });
    }
    Ok(())
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

/// A database of the run.
struct Database {
    label: String,
    store: Store,
    /// A temp file to remove at the end.
    temp: Option<std::path::PathBuf>,
}

impl Database {
    fn error(&self, source: StoreError) -> BenchError {
        BenchError::Store {
            database: self.label.clone(),
            source,
        }
    }

    async fn open(
        url: &str,
        temp: Option<std::path::PathBuf>,
        concurrency: usize,
    ) -> Result<Self, BenchError> {
        let store_error = |source| BenchError::Store {
            database: checkpoint::__private::mask_password(url),
            source,
        };
        // A connection per partition in flight, and room for the duplicate checks ahead.
        let options = StoreOptions {
            max_connections: (concurrency + 2).max(4),
        };
        let store = Store::connect_with(url, &options).map_err(store_error)?;
        let label = store.url().to_string();
        let db = Self { label, store, temp };
        match tokio::time::timeout(Duration::from_secs(5), db.store.ping()).await {
            Ok(result) => result.map_err(|e| db.error(e))?,
            Err(_) => {
                return Err(db.error(StoreError::Unavailable {
                    backend: db.store.backend(),
                    message: "no answer within 5 s".into(),
                }));
            }
        }
        db.store.migrate().await.map_err(|e| db.error(e))?;
        let mut pooled = db.store.conn().await.map_err(|e| db.error(e))?;
        let mut conn = pooled.conn();
        let ddl = effects_ddl(db.store.backend());
        if let Err(e) = conn.batch_execute(ddl).await {
            let error = conn.query_error(e);
            return Err(db.error(error));
        }
        drop(pooled);
        Ok(db)
    }

    async fn count(&self, group: &str, effects: bool) -> Result<(i64, i64), BenchError> {
        let mut pooled = self.store.conn().await.map_err(|e| self.error(e))?;
        let mut conn = pooled.conn();
        let rows = if effects {
            use checkpoint_bench_effects as fx;
            conn.load(fx::table.filter(fx::group_id.eq(group.to_owned())).select((
                diesel::dsl::count_star(),
                diesel::dsl::count(fx::order_id).aggregate_distinct(),
            )))
            .await
        } else {
            use checkpoint_events as ev;
            conn.load(ev::table.filter(ev::group_id.eq(group.to_owned())).select((
                diesel::dsl::count_star(),
                diesel::dsl::count(ev::checksum).aggregate_distinct(),
            )))
            .await
        };
        let rows: Vec<(i64, i64)> = rows.map_err(|e| self.error(conn.query_error(e)))?;
        Ok(rows.first().copied().unwrap_or((0, 0)))
    }

    async fn clean(&self, group: &str) -> Result<(), BenchError> {
        let mut pooled = self.store.conn().await.map_err(|e| self.error(e))?;
        let mut conn = pooled.conn();
        let events = diesel::delete(
            checkpoint_events::table.filter(checkpoint_events::group_id.eq(group.to_owned())),
        );
        if let Err(e) = conn.execute(events).await {
            return Err(self.error(conn.query_error(e)));
        }
        let effects = diesel::delete(
            checkpoint_bench_effects::table
                .filter(checkpoint_bench_effects::group_id.eq(group.to_owned())),
        );
        if let Err(e) = conn.execute(effects).await {
            return Err(self.error(conn.query_error(e)));
        }
        // Every mode starts from a table without dead rows, autovacuum or not.
        if self.store.backend() == Backend::Postgres {
            let vacuum = "VACUUM checkpoint_events, checkpoint_bench_effects";
            if let Err(e) = conn.batch_execute(vacuum).await {
                return Err(self.error(conn.query_error(e)));
            }
        }
        Ok(())
    }

    fn remove_temp(&self) {
        if let Some(path) = &self.temp {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

/// One mode's measured run before ratios.
struct Measured {
    seconds: f64,
    peak_rss: Option<u64>,
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

impl Database {
    /// Removes whatever a failed run of `run_id` left behind.
    async fn clean_all(&self, run_id: &str, index: usize) -> Result<(), BenchError> {
        for mode in Mode::ALL {
            self.clean(&group_of(run_id, mode, index)).await?;
        }
        Ok(())
    }
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
            let seconds = match (mode, db, &kafka) {
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
            let measured = Measured {
                seconds,
                peak_rss: peak_rss(),
            };
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
                seconds: measured.seconds,
                messages_per_second: expected as f64 / measured.seconds.max(1e-9),
                vs_naive: None,
                vs_db_ceiling: None,
                vs_copy_ceiling: None,
                vs_raw: None,
                peak_rss_bytes: measured.peak_rss,
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

/// Fails unless `group` holds exactly one event (and, transactional, one effect) per message.
async fn verify(db: &Database, mode: Mode, group: &str, expected: u64) -> Result<(), BenchError> {
    let expected = i64::try_from(expected).unwrap_or(i64::MAX);
    let fail = |what: String| BenchError::Verification {
        mode,
        database: db.label.clone(),
        what,
    };
    let (rows, distinct) = db.count(group, false).await?;
    if rows != expected || distinct != expected {
        return Err(fail(format!(
            "{rows} event rows ({distinct} distinct) for {expected} messages"
        )));
    }
    if mode.transactional() {
        let (effects, distinct) = db.count(group, true).await?;
        if effects != expected || distinct != expected {
            return Err(fail(format!(
                "{effects} handler rows ({distinct} distinct orders) for {expected} messages"
            )));
        }
    }
    Ok(())
}

/// How long a mode may go without progress before it counts as stalled.
const STALL: Duration = Duration::from_secs(60);

/// Tracks progress; errors when nothing moved for [`STALL`].
struct Progress {
    last: u64,
    moved: Instant,
}

impl Progress {
    /// The next message of `consumer`; fails when none came for [`STALL`].
    async fn next_message<'c>(
        &mut self,
        consumer: &'c StreamConsumer,
        done: u64,
        expected: u64,
        mode: Mode,
        database: &str,
    ) -> Result<rdkafka::message::BorrowedMessage<'c>, BenchError> {
        loop {
            match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
                Ok(message) => return message.map_err(kafka_err),
                Err(_) => self.check(done, expected, mode, database)?,
            }
        }
    }

    fn new() -> Self {
        Self {
            last: 0,
            moved: Instant::now(),
        }
    }

    fn check(
        &mut self,
        done: u64,
        expected: u64,
        mode: Mode,
        database: &str,
    ) -> Result<(), BenchError> {
        if done != self.last {
            self.last = done;
            self.moved = Instant::now();
        } else if self.moved.elapsed() > STALL {
            return Err(BenchError::Stalled {
                mode,
                database: database.to_owned(),
                done,
                expected,
                waited: self.moved.elapsed(),
            });
        }
        Ok(())
    }
}

/// `raw`: receive every message, check each partition's offsets are contiguous, nothing else.
async fn raw(
    kafka: &Kafka,
    topic: &str,
    group: &str,
    expected: u64,
    bar: &ProgressBar,
) -> Result<f64, BenchError> {
    let consumer = subscribe(kafka, topic, group)?;
    let mut next = vec![0i64; partition_count(kafka.partitions)];
    let mut received = 0u64;
    let mut started = None;
    let mut progress = Progress::new();
    while received < expected {
        let message = progress
            .next_message(&consumer, received, expected, Mode::Raw, "-")
            .await?;
        started.get_or_insert_with(Instant::now);
        let slot = usize::try_from(message.partition())
            .ok()
            .and_then(|p| next.get_mut(p));
        match slot {
            Some(next) if *next == message.offset() => *next += 1,
            _ => {
                return Err(BenchError::Verification {
                    mode: Mode::Raw,
                    database: "-".into(),
                    what: format!(
                        "partition {} offset {} out of order (expected {:?})",
                        message.partition(),
                        message.offset(),
                        next
                    ),
                });
            }
        }
        received += 1;
        if received.is_multiple_of(1024) {
            bar.set_position(received);
        }
    }
    Ok(started.map_or(0.0, |s| s.elapsed().as_secs_f64()))
}

/// A message as `naive`'s workers take it.
struct Received {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// `naive`: the original's pattern, two autocommitted round trips per message (a `SELECT`
/// whether it exists, then an `INSERT`), on as many connections as the listener modes have
/// partitions in flight, each serving its share of the partitions in order.
struct Naive<'a> {
    kafka: &'a Kafka,
    db: &'a Database,
    topic: &'a str,
    group: &'a str,
    expected: u64,
    bar: &'a ProgressBar,
}

impl Naive<'_> {
    async fn run(&self, connections: usize) -> Result<f64, BenchError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let consumer = subscribe(self.kafka, self.topic, self.group)?;
        let done = AtomicU64::new(0);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..connections)
            .map(|_| tokio::sync::mpsc::channel::<Received>(1024))
            .unzip();
        let mut started = None;
        let receive = async {
            let mut received = 0u64;
            let mut progress = Progress::new();
            while received < self.expected {
                let message = progress
                    .next_message(
                        &consumer,
                        done.load(Ordering::Relaxed),
                        self.expected,
                        Mode::Naive,
                        &self.db.label,
                    )
                    .await?;
                started.get_or_insert_with(Instant::now);
                let share = usize::try_from(message.partition()).unwrap_or(0) % connections;
                let item = Received {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                };
                let sent = match senders.get(share) {
                    Some(sender) => tokio::time::timeout(STALL, sender.send(item)).await,
                    None => Ok(Ok(())),
                };
                if !matches!(sent, Ok(Ok(()))) {
                    return Err(BenchError::Stalled {
                        mode: Mode::Naive,
                        database: self.db.label.clone(),
                        done: done.load(Ordering::Relaxed),
                        expected: self.expected,
                        waited: STALL,
                    });
                }
                received += 1;
            }
            drop(senders);
            Ok(())
        };
        let work = futures_util::future::try_join_all(
            receivers.into_iter().map(|inbox| self.serve(inbox, &done)),
        );
        let (received, served) = tokio::join!(receive, work);
        received?;
        served?;
        Ok(started.map_or(0.0, |s| s.elapsed().as_secs_f64()))
    }

    /// One connection's share: check, then insert, message by message.
    async fn serve(
        &self,
        mut inbox: tokio::sync::mpsc::Receiver<Received>,
        done: &std::sync::atomic::AtomicU64,
    ) -> Result<(), BenchError> {
        use std::sync::atomic::Ordering;
        let db = self.db;
        let mut pooled = db.store.conn().await.map_err(|e| db.error(e))?;
        let mut conn = pooled.conn();
        while let Some(message) = inbox.recv().await {
            let sum = checksum(&message.payload);
            let key = DedupKey {
                topic: self.topic,
                group_id: self.group,
                checksum: &sum,
            };
            if !conn.event_exists(key).await.map_err(|e| db.error(e))? {
                let order: BenchOrder = serde_json::from_slice(&message.payload).map_err(|e| {
                    BenchError::Verification {
                        mode: Mode::Naive,
                        database: db.label.clone(),
                        what: format!("payload is not an order: {e}"),
                    }
                })?;
                let row = NewEvent {
                    topic: self.topic,
                    group_id: self.group,
                    partition: message.partition,
                    offset: message.offset,
                    key: message.key.as_deref(),
                    checksum: &sum,
                    entity_id: Some(&order.id),
                    event_time: Some(order.placed_at.naive_utc()),
                    event_type: Some(&order.kind),
                    event_version: None,
                    payload: &message.payload,
                    created_at: Some(Utc::now().naive_utc()),
                };
                conn.insert_event(&row).await.map_err(|e| db.error(e))?;
            }
            let total = done.fetch_add(1, Ordering::Relaxed) + 1;
            if total.is_multiple_of(256) {
                self.bar.set_position(total);
            }
        }
        Ok(())
    }
}

fn listener_spec(
    kafka: &Kafka,
    mode: Mode,
    topic: &str,
    group: &str,
    options: &BenchOptions,
) -> ListenerSpec {
    let handler: Arc<dyn Handler> = if mode.transactional() {
        Arc::new(BenchEffects)
    } else {
        Arc::new(BenchOrders)
    };
    let mut spec = ListenerSpec::new(handler, topic, group)
        .batch_size(if mode.batched() {
            options.batch_size.max(1)
        } else {
            1
        })
        .max_concurrency(options.concurrency.max(1))
        .kafka("bootstrap.servers", kafka.servers.clone());
    for (key, value) in CONSUMER_SETTINGS {
        spec = spec.kafka(key, value);
    }
    spec
}

/// `per-message`, `transactional` and `batch`: the real listener and engine.
async fn listen(
    spec: ListenerSpec,
    db: &Database,
    mode: Mode,
    expected: u64,
    bar: &ProgressBar,
) -> Result<f64, BenchError> {
    let listener = Listener::new(spec, Engine::new(db.store.clone()));
    let stats: Arc<ListenerStats> = listener.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listener.run(async {
        let _ = stopped.await;
    }));
    let mut started = None;
    let mut progress = Progress::new();
    let outcome = loop {
        let snapshot = stats.snapshot();
        if snapshot.received > 0 {
            started.get_or_insert_with(Instant::now);
        }
        bar.set_position(snapshot.settled());
        if snapshot.settled() >= expected {
            break Ok(snapshot);
        }
        if task.is_finished() {
            break Err(kafka_err("the listener stopped early"));
        }
        if let Err(error) = progress.check(snapshot.settled(), expected, mode, &db.label) {
            break Err(error);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let _ = stop.send(());
    match task.await {
        Ok(result) => result.map_err(kafka_err)?,
        Err(join) => return Err(kafka_err(join)),
    }
    let snapshot = outcome?;
    if snapshot.acknowledged != expected || snapshot.settled() != expected {
        return Err(BenchError::Verification {
            mode,
            database: db.label.clone(),
            what: format!("listener counters {snapshot:?} for {expected} messages"),
        });
    }
    Ok(seconds)
}

/// Fills in each row's ratios: to `naive` and both ceilings on the same database, to `raw`.
fn with_ratios(mut rows: Vec<BenchRow>) -> Vec<BenchRow> {
    let rate = |rows: &[BenchRow], mode: Mode, database: &str| {
        rows.iter()
            .find(|r| r.mode == mode && (mode == Mode::Raw || r.database == database))
            .map(|r| r.messages_per_second)
    };
    let snapshot = rows.clone();
    for row in &mut rows {
        let ratio = |base: Option<f64>| base.map(|b| row.messages_per_second / b);
        row.vs_naive = ratio(rate(&snapshot, Mode::Naive, &row.database));
        row.vs_db_ceiling = ratio(rate(&snapshot, Mode::DbCeiling, &row.database));
        row.vs_copy_ceiling = ratio(rate(&snapshot, Mode::CopyCeiling, &row.database));
        row.vs_raw = ratio(rate(&snapshot, Mode::Raw, &row.database));
    }
    rows
}

/// The report as a text table with a header of settings.
pub(crate) fn render(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "checkpoint bench: {} messages (~200 B JSON, keyed, {} partitions), kafka: {}",
        report.messages, report.partitions, report.kafka
    );
    let memory = report
        .memory_bytes
        .map_or_else(|| "?".to_owned(), |b| format!("{:.1} GiB", gib(b)));
    let _ = writeln!(
        out,
        "machine: {} CPUs, {memory}; batch size {}; concurrency {}",
        report.cpus, report.batch_size, report.concurrency
    );
    let settings: Vec<String> = report
        .consumer_settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(out, "consumer: {}", settings.join(" "));
    for skipped in &report.skipped {
        let _ = writeln!(out, "skipped: {skipped}");
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<40} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "mode",
        "database",
        "messages",
        "seconds",
        "msg/s",
        "x naive",
        "x ceil",
        "x copy",
        "x raw",
        "peak RSS"
    );
    let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
    for row in &report.rows {
        let rss = row
            .peak_rss_bytes
            .map_or_else(|| "-".to_owned(), |b| format!("{:.0} MiB", mib(b)));
        let _ = writeln!(
            out,
            "{:<20} {:<40} {:>9} {:>8.2} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>9}",
            row.mode.name(),
            truncate(&row.database, 40),
            row.messages,
            row.seconds,
            row.messages_per_second,
            ratio(row.vs_naive),
            ratio(row.vs_db_ceiling),
            ratio(row.vs_copy_ceiling),
            ratio(row.vs_raw),
            rss
        );
    }
    out
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0 * 1024.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let tail: String = text
        .chars()
        .rev()
        .take(max - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
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
