//! Limits a listener keeps whatever its handler or database does: a hung `consume` is cut off
//! by `handler_timeout`, received messages stay within `max_queued_bytes`, shutdown ends
//! within `shutdown_timeout` even while the database is gone, and a store error that waiting
//! cannot fix stops the listener with an error instead of spinning.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::support::TestDb;
use crate::support::handlers::{BatchStep, Scripted, Step};
use crate::support::kafka::{Cluster, wait_until};
use crate::support::proxy::Proxy;
use checkpoint::handler::BoxFuture;
use checkpoint::listener::{Listener, ListenerError, ListenerSpec};
use checkpoint::prelude::*;
use checkpoint::testing::committed_offsets;
use checkpoint::{Backoff, Engine, Store};
use tokio::sync::{Notify, Semaphore, oneshot};

const PATIENCE: Duration = Duration::from_secs(60);

fn spec(cluster: &Cluster, handler: Arc<dyn Handler>, topic: &str, group: &str) -> ListenerSpec {
    let mut spec = ListenerSpec::new(handler, topic, group).backoff(Backoff::new(
        Duration::from_millis(20),
        Duration::from_millis(100),
    ));
    spec.kafka = cluster.kafka();
    spec
}

type Running = (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), ListenerError>>,
);

/// Runs `listener` until the sender fires.
fn start(listener: Listener) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(listener.run(async {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// Acks every message once `gate` lets it through; `entered` fires as each call begins.
/// The first `hang` calls never return.
struct Gated {
    gate: Semaphore,
    entered: Notify,
    calls: AtomicU32,
    hang: u32,
}

impl Gated {
    fn open(hang: u32) -> Self {
        Self {
            gate: Semaphore::new(Semaphore::MAX_PERMITS),
            entered: Notify::new(),
            calls: AtomicU32::new(0),
            hang,
        }
    }

    fn closed() -> Self {
        Self {
            gate: Semaphore::new(0),
            ..Self::open(0)
        }
    }
}

impl Handler for Gated {
    fn name(&self) -> &str {
        "gated"
    }

    fn max_retries(&self) -> Option<u32> {
        Some(5)
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        _ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            self.entered.notify_one();
            if call < self.hang {
                std::future::pending::<()>().await;
            }
            let permit = self.gate.acquire().await.map_err(HandlerError::new)?;
            permit.forget();
            Ok(Outcome::ack(
                format!("offset-{}", message.offset),
                Utc::now(),
            ))
        })
    }
}

async fn a_hung_consume_is_cut_off_by_handler_timeout_and_retried(db: TestDb) {
    let (topic, group) = ("orders", "hung");
    let cluster = Cluster::new(topic, 1);
    cluster
        .produce(topic, &[(0, "k".into(), b"{\"id\":\"o-1\"}".to_vec())])
        .await;
    let handler = Arc::new(Gated::open(1));
    let listener = Listener::new(
        spec(&cluster, handler.clone(), topic, group).handler_timeout(Duration::from_millis(300)),
        Engine::new(db.store.clone()),
    );
    let (stop, task) = start(listener);
    wait_until(
        PATIENCE,
        "the message after its hung first call",
        || async { db.event_count().await == 1 },
    )
    .await;
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        2,
        "one hung call, one retry"
    );
    stop.send(()).expect("stop");
    task.await.expect("join").expect("listener");
    db.cleanup().await;
}

/// A `consume_batch` that never returns is cut off at `handler_timeout` times its messages:
/// its transaction is discarded with what it wrote, and the batch's messages go through
/// `consume` one by one, each written once.
async fn a_hung_consume_batch_is_cut_off_and_its_messages_go_one_by_one(db: TestDb) {
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "hung-batch");
    let cluster = Cluster::new(topic, 1);
    let tokens = ["t1", "t2", "t3"];
    let records: Vec<_> = tokens
        .iter()
        .map(|t| (0, format!("k-{t}"), t.as_bytes().to_vec()))
        .collect();
    cluster.produce(topic, &records).await;
    let handler = Arc::new(
        Scripted::new(Step::Ack)
            .transactional()
            .batched(BatchStep::Ack, &[BatchStep::Hang]),
    );
    let listener = Listener::new(
        spec(&cluster, handler.clone(), topic, group)
            .batch_size(10)
            .handler_timeout(Duration::from_millis(200)),
        Engine::new(db.store.clone()),
    );
    let (stop, task) = start(listener);
    wait_until(PATIENCE, "the three messages stored", || async {
        db.event_count().await == 3
    })
    .await;
    assert!(
        !handler.batch_sizes().is_empty(),
        "consume_batch was called (and hung)"
    );
    for token in tokens {
        assert_eq!(db.side_effects(token).await, 1, "{token}");
    }
    assert_eq!(
        db.total_side_effects().await,
        3,
        "the hung call's writes were discarded with its transaction"
    );
    stop.send(()).expect("stop");
    task.await.expect("join").expect("listener");
    db.cleanup().await;
}

async fn received_messages_stay_within_max_queued_bytes(db: TestDb) {
    const SIZE: usize = 100 * 1024;
    const COUNT: usize = 40;
    const LIMIT: usize = 1 << 20;
    let (topic, group) = ("orders", "bounded");
    let cluster = Cluster::new(topic, 1);
    let messages: Vec<_> = (0..COUNT)
        .map(|i| {
            let mut payload = format!("{i:08}").into_bytes();
            payload.resize(SIZE, b'x');
            (0, format!("k{i}"), payload)
        })
        .collect();
    cluster.produce(topic, &messages).await;
    let handler = Arc::new(Gated::closed());
    let listener = Listener::new(
        spec(&cluster, handler.clone(), topic, group).max_queued_bytes(LIMIT),
        Engine::new(db.store.clone()),
    );
    let stats = listener.stats();
    let (stop, task) = start(listener);
    handler.entered.notified().await;
    // The handler holds the first message; the listener may take in only what fits.
    let mut peak = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let now = stats.snapshot();
        let held = usize::try_from(now.received - now.settled()).expect("small") * SIZE;
        peak = peak.max(held).max(now.queued_bytes);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peak > 0, "messages were received");
    assert!(
        peak <= LIMIT + 2 * SIZE,
        "held {peak} bytes of received messages; the limit is {LIMIT}"
    );
    handler.gate.add_permits(COUNT);
    wait_until(PATIENCE, "every message after the gate opened", || async {
        db.event_count().await == i64::try_from(COUNT).expect("small")
    })
    .await;
    assert_eq!(
        stats.snapshot().queued_bytes,
        0,
        "nothing held once all settled"
    );
    stop.send(()).expect("stop");
    task.await.expect("join").expect("listener");
    db.cleanup().await;
}

async fn a_store_error_that_waiting_cannot_fix_stops_the_listener(db: TestDb) {
    let (topic, group) = ("orders", "broken");
    let cluster = Cluster::new(topic, 1);
    cluster
        .produce(topic, &[(0, "k".into(), b"{\"id\":\"o-1\"}".to_vec())])
        .await;
    {
        let mut pooled = db.store.conn().await.expect("conn");
        pooled
            .conn()
            .batch_execute("ALTER TABLE checkpoint_events RENAME TO checkpoint_events_gone")
            .await
            .expect("rename");
    }
    let handler = Arc::new(Gated::open(0));
    let engine = Engine::new(db.store.clone()).with_outage_backoff(Backoff::new(
        Duration::from_millis(10),
        Duration::from_millis(50),
    ));
    let listener = Listener::new(spec(&cluster, handler.clone(), topic, group), engine);
    let result = tokio::time::timeout(PATIENCE, listener.run(std::future::pending()))
        .await
        .expect("the listener stops by itself");
    assert!(
        matches!(result, Err(ListenerError::Partition { partition: 0, .. })),
        "{result:?}"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0, "never consumed");
    let committed = committed_offsets(&cluster.kafka(), topic, group, 1, Duration::from_secs(10))
        .expect("committed");
    assert_eq!(
        committed,
        [None],
        "nothing committed past the unsettled message"
    );
    db.cleanup().await;
}

/// Fails the order `{"stuck": true}` forever; acks the others.
struct Stuck;

impl Handler for Stuck {
    fn name(&self) -> &str {
        "stuck"
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        _ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            if message.payload.starts_with(br#"{"stuck": true}"#) {
                return Err(HandlerError::msg("downstream refuses this order"));
            }
            Ok(Outcome::ack(
                format!("offset-{}", message.offset),
                Utc::now(),
            ))
        })
    }
}

async fn a_partition_stuck_behind_a_failing_message_holds_only_its_share(db: TestDb) {
    const SIZE: usize = 50 * 1024;
    let (topic, group) = ("orders", "shared");
    let cluster = Cluster::new(topic, 2);
    let padded = |head: String| {
        let mut payload = head.into_bytes();
        payload.resize(SIZE, b' ');
        payload
    };
    // Partition 0 first: its stuck order, and a backlog behind it larger than the budget.
    let mut stuck = vec![(
        0,
        "stuck".to_owned(),
        padded(r#"{"stuck": true}"#.to_owned()),
    )];
    stuck.extend((0..20).map(|i| (0, format!("a{i}"), padded(format!(r#"{{"a": {i}}}"#)))));
    cluster.produce(topic, &stuck).await;
    let mut listener_spec =
        spec(&cluster, Arc::new(Stuck), topic, group).max_queued_bytes(400 * 1024);
    listener_spec.max_concurrency = 2;
    let (stop, task) = start(Listener::new(listener_spec, Engine::new(db.store.clone())));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let others: Vec<_> = (0..20)
        .map(|i| (1, format!("b{i}"), padded(format!(r#"{{"b": {i}}}"#))))
        .collect();
    cluster.produce(topic, &others).await;
    // Partition 0 retries its first message forever; partition 1 must not wait for it.
    wait_until(PATIENCE, "every order of the other partition", || async {
        db.event_count().await == 20
    })
    .await;
    stop.send(()).expect("stop");
    task.await.expect("join").expect("listener");
    db.cleanup().await;
}

on_every_backend!(
    a_partition_stuck_behind_a_failing_message_holds_only_its_share,
    a_hung_consume_is_cut_off_by_handler_timeout_and_retried,
    a_hung_consume_batch_is_cut_off_and_its_messages_go_one_by_one,
    received_messages_stay_within_max_queued_bytes,
    a_store_error_that_waiting_cannot_fix_stops_the_listener,
);

/// The database goes away right after `consume` returned, and shutdown is requested while the
/// listener waits for it: the listener stops within its shutdown timeout, commits nothing of
/// the unsettled message, and a later run stores it.
async fn shutdown_during_a_database_outage_ends_within_its_bound(db: TestDb) {
    let proxy = Proxy::start(&Proxy::authority(&db.url)).await;
    let store = Store::connect(&proxy.url(&db.url)).expect("store via proxy");
    let (topic, group) = ("orders", "outage");
    let cluster = Cluster::new(topic, 1);
    cluster
        .produce(topic, &[(0, "k".into(), b"{\"id\":\"o-1\"}".to_vec())])
        .await;
    let handler = Arc::new(Gated::closed());
    let listener = Listener::new(
        spec(&cluster, handler.clone(), topic, group).shutdown_timeout(Duration::from_secs(5)),
        Engine::new(store.clone()),
    );
    let (stop, task) = start(listener);
    handler.entered.notified().await;
    proxy.cut();
    handler.gate.add_permits(1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    stop.send(()).expect("stop");
    let result = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("shutdown ends while the database is gone")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(6),
        "{:?}",
        asked.elapsed()
    );
    let committed = committed_offsets(&cluster.kafka(), topic, group, 1, Duration::from_secs(10))
        .expect("committed");
    assert_eq!(committed, [None], "the unsettled message is not committed");
    assert_eq!(db.event_count().await, 0);
    drop(store);

    // The database is back: the message is delivered again and stored (per-message mode
    // consumes it a second time: its first outcome never reached the database).
    proxy.restore();
    let again = Arc::new(Gated::open(0));
    let listener = Listener::new(
        spec(&cluster, again.clone(), topic, group),
        Engine::new(db.store.clone()),
    );
    let (stop, task) = start(listener);
    wait_until(
        PATIENCE,
        "the message once the database is back",
        || async { db.event_count().await == 1 },
    )
    .await;
    stop.send(()).expect("stop");
    task.await.expect("join").expect("listener");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_shutdown_during_a_database_outage_ends_within_its_bound() {
    if let Some(db) = TestDb::postgres().await {
        shutdown_during_a_database_outage_ends_within_its_bound(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_shutdown_during_a_database_outage_ends_within_its_bound() {
    if let Some(db) = TestDb::mysql().await {
        shutdown_during_a_database_outage_ends_within_its_bound(db).await;
    }
}
