//! `checkpoint demo`: the whole system on embedded defaults. An in-process Kafka cluster
//! (librdkafka's mock broker), sample order events with duplicates and poison messages, a real
//! `#[checkpoint_handler]` handler, and the checkpoint database (SQLite by default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::mocking::MockCluster;

use checkpoint::engine::{Backoff, Engine};
use checkpoint::handler::{Context, Outcome};
use checkpoint::listener::{Listener, ListenerSpec, StatsSnapshot};
use checkpoint::store::{ListQuery, Store};

/// The demo's topic.
pub(crate) const TOPIC: &str = "demo.orders";
/// The demo's consumer group.
pub(crate) const GROUP: &str = "checkpoint-demo";
const PARTITIONS: i32 = 3;

/// Options of `checkpoint demo`.
#[derive(Debug, Clone)]
pub(crate) struct DemoOptions {
    /// Messages to produce.
    pub messages: usize,
    /// Checkpoint database URL.
    pub database: String,
    /// Exit after the summary instead of consuming until Ctrl-C.
    pub once: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Serve the HTTP API here while the demo runs (`None`: no API).
    pub bind: Option<std::net::SocketAddr>,
}

/// An error of the demo.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DemoError {
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(#[from] checkpoint::store::StoreError),
    /// Kafka (the embedded cluster, the producer or the listener) failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The API could not listen on its address.
    #[error("cannot serve the API on {addr}: {source}")]
    Api {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not every message was settled in time.
    #[error("only {settled} of {expected} messages were settled after {waited:?}")]
    Incomplete {
        /// Settled so far.
        settled: u64,
        /// Produced.
        expected: u64,
        /// How long the demo waited.
        waited: Duration,
    },
}

/// What the demo did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DemoSummary {
    /// Messages produced.
    pub produced: u64,
    /// Listener counters.
    pub stats: StatsSnapshot,
    /// Time from the first produce to the last settled message.
    pub elapsed: Duration,
    /// Events in the database after the run (all runs).
    pub events_total: usize,
    /// Failures in the database after the run (all runs).
    pub failures_total: i64,
}

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: String,
    customer: String,
    placed_at: DateTime<Utc>,
    kind: String,
}

#[derive(Debug, thiserror::Error)]
#[error("order {0} has no customer")]
struct NoCustomer(String);

/// The demo's handler: acknowledges each order with its id and time.
struct DemoOrders;

#[checkpoint::checkpoint_handler(max_retries = 2, name = "demo-orders")]
impl DemoOrders {
    async fn consume(
        &self,
        order: OrderPlaced,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, NoCustomer> {
        if order.customer.is_empty() {
            return Err(NoCustomer(order.id));
        }
        Ok(ctx
            .ack(order.id, order.placed_at)
            .with_event_type(order.kind))
    }

    #[entity_id]
    fn entity_id(order: &OrderPlaced) -> Option<String> {
        Some(order.id.clone())
    }

    #[event_type]
    fn event_type(order: &OrderPlaced) -> Option<String> {
        Some(order.kind.clone())
    }
}

/// The sample events of one run: fresh ids; every 20th message repeats an earlier one, every
/// 100th is not JSON, every 250th has no customer (fails, is retried, then recorded).
fn sample(run: &str, count: usize) -> Vec<(i32, String, String)> {
    let start = Utc::now();
    (0..count)
        .map(|i| {
            let partition = i32::try_from(i % 3).unwrap_or(0);
            let id = if i % 20 == 19 { i - 10 } else { i };
            let payload = if i % 100 == 99 {
                format!("corrupted bytes #{i}")
            } else {
                let customer = if id % 250 == 249 { String::new() } else { format!("customer-{}", id % 97) };
                format!(
                    r#"{{"id":"{run}-{id}","customer":"{customer}","placed_at":"{}","kind":"order.placed","amount_cents":{}}}"#,
                    (start + chrono::Duration::milliseconds(i64::try_from(id).unwrap_or(0)))
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    1_000 + id % 9_000
                )
            };
            (partition, format!("{run}-{id}"), payload)
        })
        .collect()
}

/// Runs the demo and returns its summary; with `once = false` it keeps consuming until
/// SIGINT/SIGTERM after printing the summary.
pub(crate) async fn run(options: &DemoOptions) -> Result<DemoSummary, DemoError> {
    let kafka = |e: rdkafka::error::KafkaError| DemoError::Kafka(e.to_string());
    let cluster = MockCluster::new(1).map_err(kafka)?;
    cluster.create_topic(TOPIC, PARTITIONS, 1).map_err(kafka)?;
    let servers = cluster.bootstrap_servers();

    let store = Store::connect(&options.database)?;
    store.migrate().await?;

    let run_id = format!(
        "{:x}{:04x}",
        Utc::now().timestamp_millis(),
        fastrand::u16(..)
    );
    let messages = sample(&run_id, options.messages);
    let produced = u64::try_from(messages.len()).unwrap_or(u64::MAX);
    let started = Instant::now();
    let records = messages.iter().map(|(p, key, payload)| (*p, key, payload));
    checkpoint::testing::produce(&servers, TOPIC, records, || {})
        .await
        .map_err(|e| DemoError::Kafka(e.to_string()))?;

    let spec = ListenerSpec::new(
        Arc::new(DemoOrders) as Arc<dyn checkpoint::handler::Handler>,
        TOPIC,
        GROUP,
    )
    .max_concurrency(3)
    .backoff(Backoff::new(
        Duration::from_millis(50),
        Duration::from_millis(500),
    ))
    .kafka("bootstrap.servers", servers)
    .kafka("session.timeout.ms", "6000")
    .kafka("heartbeat.interval.ms", "500");
    let handler: Arc<dyn checkpoint::handler::Handler> = Arc::new(DemoOrders);
    let engine = Engine::new(store.clone());
    let listener = Listener::new(spec, engine.clone());
    let stats = listener.stats();
    let probe = checkpoint::api::ListenerProbe::of(&listener);
    let api = match options.bind {
        Some(addr) => Some(start_api(addr, &engine, &handler, probe).await?),
        None => None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listener.run(async {
        let _ = stopped.await;
    }));

    let bar = if options.progress {
        let bar = ProgressBar::new(produced);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} consuming [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let deadline = Duration::from_secs(60) + Duration::from_millis(produced.saturating_mul(5));
    loop {
        let settled = stats.snapshot().settled();
        bar.set_position(settled.min(produced));
        if settled >= produced {
            break;
        }
        if started.elapsed() > deadline || task.is_finished() {
            bar.abandon();
            let _ = stop.send(());
            return Err(DemoError::Incomplete {
                settled,
                expected: produced,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let summary = DemoSummary {
        produced,
        stats: stats.snapshot(),
        elapsed,
        events_total: count_events(&store).await?,
        failures_total: store.count_failures(&ListQuery::default()).await?,
    };
    print_summary(options, &summary);

    if !options.once {
        println!("still consuming {TOPIC}; press Ctrl-C to stop");
        checkpoint::app::shutdown_signal().await;
    }
    let _ = stop.send(());
    if let Some((stop_api, served)) = api {
        let _ = stop_api.send(());
        let _ = served.await;
    }
    match task.await {
        Ok(result) => result.map_err(|e| DemoError::Kafka(e.to_string()))?,
        Err(join) => return Err(DemoError::Kafka(join.to_string())),
    }
    Ok(summary)
}

type RunningApi = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// Serves the API (with the demo's handler for retries) until the returned sender fires.
async fn start_api(
    addr: std::net::SocketAddr,
    engine: &Engine,
    handler: &Arc<dyn checkpoint::handler::Handler>,
    probe: checkpoint::api::ListenerProbe,
) -> Result<RunningApi, DemoError> {
    use checkpoint::api::{ApiState, Handlers, prometheus, router, serve};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Api { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| DemoError::Api { addr, source })?;
    let state = ApiState::new(engine.clone())
        .handlers(Handlers::new().register(TOPIC, GROUP, Arc::clone(handler)))
        .metrics(prometheus())
        .listeners([probe]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve(listener, router(state), async {
        let _ = stopped.await;
    }));
    println!("API on http://{local}");
    println!("  console  http://{local}/ui");
    println!("  events   http://{local}/v1/events?limit=5  http://{local}/v1/failures");
    println!("  metrics  http://{local}/metrics");
    println!("  health   http://{local}/health/live  http://{local}/health/ready");
    println!("  OpenAPI  http://{local}/openapi.json");
    Ok((stop, served))
}

async fn count_events(store: &Store) -> Result<usize, DemoError> {
    use checkpoint::store::schema::checkpoint_events;
    use diesel::prelude::*;
    let mut pooled = store.conn().await?;
    let mut conn = pooled.conn();
    let rows: Vec<i64> = conn
        .load(checkpoint_events::table.count())
        .await
        .map_err(|e| conn.query_error(e))?;
    Ok(rows.first().map_or(0, |n| usize::try_from(*n).unwrap_or(0)))
}

fn print_summary(options: &DemoOptions, s: &DemoSummary) {
    let seconds = s.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        s.stats.received as f64 / seconds
    } else {
        0.0
    };
    println!(
        "checkpoint demo: {} order events on {TOPIC} ({PARTITIONS} partitions) into {}",
        s.produced, options.database
    );
    println!("  consumed            {:>8}", s.stats.received);
    println!("  acknowledged        {:>8}", s.stats.acknowledged);
    println!("  duplicates skipped  {:>8}", s.stats.duplicates);
    println!("  skipped by handler  {:>8}", s.stats.skipped);
    println!(
        "  failures recorded   {:>8}   ({} retries before giving up)",
        s.stats.failed, s.stats.retries
    );
    println!("  elapsed             {seconds:>8.2} s");
    println!("  throughput          {rate:>8.0} messages/s");
    println!(
        "  database now holds  {} events and {} failures (all runs)",
        s.events_total, s.failures_total
    );
}
