//! Listeners on librdkafka's mock cluster against real databases. Every test counts the side
//! effects a transactional handler writes and compares them with what was produced.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use checkpoint::listener::{Listener, ListenerSpec, committed_offsets};
use checkpoint::prelude::*;
use checkpoint::{Backoff, Engine};
use support::TestDb;
use support::handlers::{Scripted, Step, side_effects};
use support::kafka::{Cluster, Produced, wait_until};
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(serde::Deserialize)]
struct Order {
    id: String,
}

/// Writes one side effect per order through the checkpoint transaction.
struct Sink;

#[checkpoint_handler(transactional, name = "sink")]
impl Sink {
    async fn consume(&self, order: Order, ctx: &mut Context<'_>) -> Result<Outcome, HandlerError> {
        use diesel::prelude::*;
        ctx.tx()?
            .execute(
                diesel::insert_into(side_effects::table)
                    .values(side_effects::token.eq(order.id.clone())),
            )
            .await?;
        Ok(ctx.ack(order.id, Utc::now()))
    }
}

/// `count` messages over `partitions`: every 20th repeats an earlier payload (a duplicate),
/// every 100th is not JSON (poison). Returns the messages, the unique good ids and the poison
/// count.
fn workload(count: usize, partitions: i32) -> (Vec<Produced>, HashSet<String>, usize) {
    let mut messages = Vec::with_capacity(count);
    let mut unique = HashSet::new();
    let mut poison = 0;
    for i in 0..count {
        let partition = i32::try_from(i).expect("small") % partitions;
        let payload = if i % 100 == 99 {
            poison += 1;
            format!("poison #{i}: not json").into_bytes()
        } else if i % 20 == 19 {
            format!(r#"{{"id":"order-{}"}}"#, i - 10).into_bytes()
        } else {
            unique.insert(format!("order-{i}"));
            format!(r#"{{"id":"order-{i}"}}"#).into_bytes()
        };
        messages.push((partition, format!("key-{}", i % 37), payload));
    }
    (messages, unique, poison)
}

fn spec(cluster: &Cluster, handler: Arc<dyn Handler>, topic: &str, group: &str) -> ListenerSpec {
    let mut spec = ListenerSpec::new(handler, topic, group)
        .max_concurrency(3)
        .backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ));
    spec.kafka = cluster.kafka();
    spec
}

/// Starts a listener; the sender stops it gracefully.
fn start(spec: ListenerSpec, db: &TestDb) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = Listener::new(spec, Engine::new(db.store.clone()));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        listener
            .run(async {
                let _ = stopped.await;
            })
            .await
            .expect("listener");
    });
    (stop, task)
}

async fn failures(db: &TestDb) -> i64 {
    db.store
        .count_failures(&Default::default())
        .await
        .expect("count failures")
}

async fn distinct_side_effects(db: &TestDb) -> i64 {
    use diesel::prelude::*;
    let mut pooled = db.store.conn().await.expect("conn");
    let tokens: Vec<String> = pooled
        .conn()
        .load(side_effects::table.select(side_effects::token))
        .await
        .expect("tokens");
    i64::try_from(tokens.into_iter().collect::<HashSet<_>>().len()).expect("small")
}

/// Every unique good message has exactly one side effect and one event, every poison message
/// one failure, and the group's committed offsets reach the end of every partition.
async fn assert_exactly_once(
    db: &TestDb,
    cluster: &Cluster,
    topic: &str,
    group: &str,
    unique: usize,
    poison: usize,
    partitions: i32,
) {
    let unique = i64::try_from(unique).expect("small");
    assert_eq!(
        db.event_count().await,
        unique,
        "one event row per unique message"
    );
    assert_eq!(
        db.total_side_effects().await,
        unique,
        "one side effect per unique message"
    );
    assert_eq!(
        distinct_side_effects(db).await,
        unique,
        "no message applied twice"
    );
    assert_eq!(
        failures(db).await,
        i64::try_from(poison).expect("small"),
        "one failure per poison message"
    );
    let ends: Vec<Option<i64>> = cluster
        .high_watermarks(topic, partitions)
        .into_iter()
        .map(Some)
        .collect();
    let committed = committed_offsets(
        &cluster.kafka(),
        topic,
        group,
        partitions,
        Duration::from_secs(10),
    )
    .expect("committed");
    assert_eq!(committed, ends, "every offset committed");
}

/// Waits until the group's committed offsets reach the end of every partition (after an
/// outage the group rejoins, gets redelivered what it had not committed, dedups it, commits).
async fn wait_for_commits(cluster: &Cluster, topic: &str, group: &str, partitions: i32) {
    let ends: Vec<Option<i64>> = cluster
        .high_watermarks(topic, partitions)
        .into_iter()
        .map(Some)
        .collect();
    wait_until(TIMEOUT, "every offset to be committed", || async {
        committed_offsets(
            &cluster.kafka(),
            topic,
            group,
            partitions,
            Duration::from_secs(10),
        )
        .ok()
        .as_ref()
            == Some(&ends)
    })
    .await;
}

async fn wait_for_all(db: &TestDb, unique: usize, poison: usize) {
    let (unique, poison) = (
        i64::try_from(unique).expect("small"),
        i64::try_from(poison).expect("small"),
    );
    wait_until(TIMEOUT, "every message to be settled", || async {
        db.event_count().await == unique && failures(db).await == poison
    })
    .await;
}

async fn five_thousand_messages_with_duplicates_and_poison(db: TestDb) {
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "billing");
    let cluster = Cluster::new(topic, 3);
    let (messages, unique, poison) = workload(5_000, 3);
    cluster.produce(topic, &messages).await;
    let listener = Listener::new(
        spec(&cluster, Arc::new(Sink), topic, group),
        Engine::new(db.store.clone()),
    );
    let stats = listener.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(listener.run(async {
        let _ = stopped.await;
    }));
    wait_until(TIMEOUT, "5,000 messages", || async {
        stats.snapshot().settled() >= 5_000
    })
    .await;
    stop.send(()).expect("stop");
    task.await.expect("join").expect("listener");
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.received, 5_000, "{snapshot:?}");
    assert_eq!(
        snapshot.failed,
        u64::try_from(poison).expect("small"),
        "{snapshot:?}"
    );
    assert_eq!(
        snapshot.duplicates,
        5_000 - u64::try_from(unique.len() + poison).expect("small"),
        "{snapshot:?}"
    );
    assert_exactly_once(&db, &cluster, topic, group, unique.len(), poison, 3).await;
    db.cleanup().await;
}

async fn consumers_dropped_mid_stream_apply_nothing_twice(db: TestDb) {
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "crashy");
    let cluster = Cluster::new(topic, 3);
    let (messages, unique, poison) = workload(1_500, 3);
    cluster.produce(topic, &messages).await;
    for (round, threshold) in [200u64, 500, 900].into_iter().enumerate() {
        let listener = Listener::new(
            spec(&cluster, Arc::new(Sink), topic, group),
            Engine::new(db.store.clone()),
        );
        let stats = listener.stats();
        let task = tokio::spawn(listener.run(std::future::pending::<()>()));
        let events_before = db.event_count().await;
        wait_until(TIMEOUT, "progress before the crash", || async {
            stats.snapshot().settled() >= threshold / 3 && db.event_count().await > events_before
        })
        .await;
        // A crash: no drain, no final commit, transactions in flight abandoned.
        task.abort();
        let _ = task.await;
        assert!(
            db.event_count().await < i64::try_from(unique.len()).expect("small"),
            "round {round} crashed mid-stream"
        );
    }
    let (stop, task) = start(spec(&cluster, Arc::new(Sink), topic, group), &db);
    wait_for_all(&db, unique.len(), poison).await;
    wait_for_commits(&cluster, topic, group, 3).await;
    stop.send(()).expect("stop");
    task.await.expect("join");
    assert_exactly_once(&db, &cluster, topic, group, unique.len(), poison, 3).await;
    db.cleanup().await;
}

async fn a_second_consumer_joins_then_leaves(db: TestDb) {
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "scaling");
    let cluster = Cluster::new(topic, 3);
    let (messages, unique, poison) = workload(3_000, 3);
    cluster.produce(topic, &messages).await;
    let (stop_a, task_a) = start(
        spec(&cluster, Arc::new(Sink), topic, group).listener_id("a"),
        &db,
    );
    wait_until(TIMEOUT, "first third", || async {
        db.event_count().await >= 600
    })
    .await;
    let (stop_b, task_b) = start(
        spec(&cluster, Arc::new(Sink), topic, group).listener_id("b"),
        &db,
    );
    wait_until(TIMEOUT, "second third", || async {
        db.event_count().await >= 1_500
    })
    .await;
    stop_b.send(()).expect("stop b");
    task_b.await.expect("join b");
    wait_for_all(&db, unique.len(), poison).await;
    wait_for_commits(&cluster, topic, group, 3).await;
    stop_a.send(()).expect("stop a");
    task_a.await.expect("join a");
    assert_exactly_once(&db, &cluster, topic, group, unique.len(), poison, 3).await;
    db.cleanup().await;
}

async fn a_broker_outage_is_waited_out(db: TestDb) {
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "outage");
    let cluster = Cluster::new(topic, 3);
    let (messages, unique, poison) = workload(2_000, 3);
    cluster.produce(topic, &messages).await;
    let (stop, task) = start(spec(&cluster, Arc::new(Sink), topic, group), &db);
    wait_until(TIMEOUT, "progress before the outage", || async {
        db.event_count().await >= 300
    })
    .await;
    cluster.mock.broker_down(1).expect("broker down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.mock.broker_up(1).expect("broker up");
    wait_for_all(&db, unique.len(), poison).await;
    wait_for_commits(&cluster, topic, group, 3).await;
    stop.send(()).expect("stop");
    task.await.expect("join");
    assert_exactly_once(&db, &cluster, topic, group, unique.len(), poison, 3).await;
    db.cleanup().await;
}

async fn a_failing_message_backs_off_then_the_partition_moves_on(db: TestDb) {
    let (topic, group) = ("orders", "retrying");
    let cluster = Cluster::new(topic, 1);
    let backoff = Backoff::new(Duration::from_millis(150), Duration::from_secs(1));

    // Fails twice, then succeeds: three calls, retry_count 0, 1, 2, at least 150 + 300 ms apart.
    let flaky = Arc::new(
        Scripted::new(Step::Ack)
            .script(&[Step::Fail, Step::Fail])
            .max_retries(Some(3)),
    );
    cluster
        .produce(topic, &[(0, "k".into(), b"flaky".to_vec())])
        .await;
    let mut listener_spec = spec(&cluster, flaky.clone(), topic, group).backoff(backoff);
    listener_spec.max_concurrency = 1;
    let started = Instant::now();
    let (stop, task) = start(listener_spec.clone(), &db);
    wait_until(TIMEOUT, "the flaky message", || async {
        db.event_count().await == 1
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(flaky.retry_counts(), [0, 1, 2]);
    stop.send(()).expect("stop");
    task.await.expect("join");

    // Retries exhausted: a failure row, and the next message of the partition is consumed.
    let exhausted = Arc::new(
        Scripted::new(Step::Ack)
            .script(&[Step::Fail, Step::Fail])
            .max_retries(Some(1)),
    );
    cluster
        .produce(
            topic,
            &[
                (0, "k".into(), b"doomed".to_vec()),
                (0, "k".into(), b"next".to_vec()),
            ],
        )
        .await;
    listener_spec.handler = exhausted.clone();
    let (stop, task) = start(listener_spec, &db);
    wait_until(TIMEOUT, "the failure and the next message", || async {
        failures(&db).await == 1 && db.event_count().await == 2
    })
    .await;
    stop.send(()).expect("stop");
    task.await.expect("join");
    assert_eq!(exhausted.retry_counts(), [0, 1, 0]);
    let committed = committed_offsets(&cluster.kafka(), topic, group, 1, Duration::from_secs(10))
        .expect("committed");
    assert_eq!(committed, [Some(3)]);
    db.cleanup().await;
}

on_every_backend!(
    five_thousand_messages_with_duplicates_and_poison,
    consumers_dropped_mid_stream_apply_nothing_twice,
    a_second_consumer_joins_then_leaves,
    a_broker_outage_is_waited_out,
    a_failing_message_backs_off_then_the_partition_moves_on,
);
