//! Listeners on librdkafka's mock cluster against real databases. Every test counts the side
//! effects a transactional handler writes and compares them with what was produced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::TestDb;
use crate::support::handlers::{Scripted, Step};
use crate::support::kafka::{
    Cluster, TIMEOUT, assert_exactly_once, failures, wait_for_all, wait_for_commits, wait_until,
    workload,
};
use checkpoint::listener::{Listener, ListenerSpec};
use checkpoint::prelude::*;
use checkpoint::testing::committed_offsets;
use checkpoint::{Backoff, Engine};
use checkpoint_tests::Sink;
use tokio::sync::oneshot;

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

/// A listener dropped mid-stream (its task cancelled): the consumer closes at once, which
/// commits the offsets already stored and leaves the group, while each worker finishes the
/// message in hand in the background without storing its offset. Three such drops, then a
/// listener that consumes the rest: nothing applied twice or lost. `processes.rs` kills real
/// consumer processes with SIGKILL, which abandons transactions in flight.
async fn consumers_dropped_mid_stream_apply_nothing_twice(db: TestDb) {
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "crashy");
    let cluster = Cluster::new(topic, 3);
    let (messages, unique, poison) = workload(1_500, 3);
    cluster.produce(topic, &messages).await;
    for (round, threshold) in [200u64, 500, 900].into_iter().enumerate() {
        // The crashing "process" has its own connection pool, which dies with it: a query
        // interrupted mid-flight must not leave a half-read connection to anyone else.
        let own_pool = checkpoint::Store::connect(&db.url).expect("store");
        let listener = Listener::new(
            spec(&cluster, Arc::new(Sink), topic, group),
            Engine::new(own_pool),
        );
        let stats = listener.stats();
        let task = tokio::spawn(listener.run(std::future::pending::<()>()));
        let events_before = db.event_count().await;
        wait_until(TIMEOUT, "progress before the crash", || async {
            stats.snapshot().settled() >= threshold / 3 && db.event_count().await > events_before
        })
        .await;
        // No drain: the consumer closes now; the workers finish in the background.
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
    let (first_half, second_half) = messages.split_at(1_500);
    cluster.produce(topic, first_half).await;
    let (stop_a, task_a) = start(
        spec(&cluster, Arc::new(Sink), topic, group).listener_id("a"),
        &db,
    );
    wait_until(TIMEOUT, "the first consumer's progress", || async {
        db.event_count().await >= 600
    })
    .await;
    let b = Listener::new(
        spec(&cluster, Arc::new(Sink), topic, group).listener_id("b"),
        Engine::new(db.store.clone()),
    );
    let b_stats = b.stats();
    let (stop_b, stopped_b) = oneshot::channel::<()>();
    let task_b = tokio::spawn(b.run(async {
        let _ = stopped_b.await;
    }));
    // Produced once b is in the group: the rebalance gives it partitions with work in them.
    cluster.produce(topic, second_half).await;
    wait_until(
        TIMEOUT,
        "the second consumer to settle messages",
        || async { b_stats.snapshot().settled() >= 100 },
    )
    .await;
    stop_b.send(()).expect("stop b");
    task_b.await.expect("join b").expect("listener b");
    wait_for_all(&db, unique.len(), poison).await;
    wait_for_commits(&cluster, topic, group, 3).await;
    stop_a.send(()).expect("stop a");
    task_a.await.expect("join a");
    assert!(
        b_stats.snapshot().settled() >= 100,
        "the second consumer owned partitions and did work: {:?}",
        b_stats.snapshot()
    );
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
    cluster
        .mock
        .as_ref()
        .expect("in-process broker")
        .broker_down(1)
        .expect("broker down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster
        .mock
        .as_ref()
        .expect("in-process broker")
        .broker_up(1)
        .expect("broker up");
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

async fn batches_are_exactly_once_too(db: TestDb) {
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "batches");
    let cluster = Cluster::new(topic, 3);
    let (messages, unique, poison) = workload(3_000, 3);
    cluster.produce(topic, &messages).await;
    let (stop, task) = start(
        spec(&cluster, Arc::new(Sink), topic, group).batch_size(100),
        &db,
    );
    wait_for_all(&db, unique.len(), poison).await;
    wait_for_commits(&cluster, topic, group, 3).await;
    stop.send(()).expect("stop");
    task.await.expect("join");
    assert_exactly_once(&db, &cluster, topic, group, unique.len(), poison, 3).await;
    db.cleanup().await;
}

/// A partition paused while its worker backs off, then revoked (a second consumer joins) and
/// assigned again (it leaves), fetches again: librdkafka keeps a pause flag across unassign
/// and assign, so the listener clears it on assignment.
async fn a_paused_partition_consumes_again_after_a_rebalance(db: TestDb) {
    let (topic, group) = ("orders", "paused");
    let cluster = Cluster::new(topic, 1);
    let messages: Vec<_> = (0..2_500)
        .map(|i| {
            (
                0,
                "k".to_owned(),
                format!(r#"{{"id":"o-{i}"}}"#).into_bytes(),
            )
        })
        .collect();
    cluster.produce(topic, &messages).await;
    // Fails three times, 1.5 s apart: its queue fills past the pause mark meanwhile.
    let failing = Arc::new(
        Scripted::new(Step::Ack)
            .script(&[Step::Fail, Step::Fail, Step::Fail])
            .max_retries(None),
    );
    let slow_backoff = Backoff::new(Duration::from_millis(1_500), Duration::from_millis(1_500));
    let mut a_spec = spec(&cluster, failing.clone(), topic, group)
        .backoff(slow_backoff)
        .listener_id("a");
    a_spec.max_concurrency = 1;
    let (stop_a, task_a) = start(a_spec, &db);
    wait_until(TIMEOUT, "the first failure", || async {
        failing.calls() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A slow second member: it owns the partition for a while, or takes none.
    let slow = Arc::new(Scripted::new(Step::Ack).with_delay(Duration::from_millis(20)));
    let (stop_b, task_b) = start(spec(&cluster, slow, topic, group).listener_id("b"), &db);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_b.send(()).expect("stop b");
    task_b.await.expect("join b");
    wait_until(TIMEOUT, "every message after the rebalances", || async {
        db.event_count().await == 2_500
    })
    .await;
    stop_a.send(()).expect("stop a");
    task_a.await.expect("join a");
    db.cleanup().await;
}

on_every_backend!(
    a_paused_partition_consumes_again_after_a_rebalance,
    batches_are_exactly_once_too,
    five_thousand_messages_with_duplicates_and_poison,
    consumers_dropped_mid_stream_apply_nothing_twice,
    a_second_consumer_joins_then_leaves,
    a_broker_outage_is_waited_out,
    a_failing_message_backs_off_then_the_partition_moves_on,
);

async fn an_app_runs_its_configured_listeners(db: TestDb) {
    use checkpoint::App;
    use checkpoint::config::Config;
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "app");
    let cluster = Cluster::new(topic, 3);
    let (messages, unique, poison) = workload(600, 3);
    cluster.produce(topic, &messages).await;
    let text = format!(
        r#"
[kafka]
"bootstrap.servers" = "{}"
"session.timeout.ms" = 3000
"heartbeat.interval.ms" = 500
"auto.commit.interval.ms" = 200

[database]
url = "{}"

[api]
bind = "127.0.0.1:0"

[[listeners]]
handler = "sink"
topic = "{topic}"
group_id = "{group}"
max_concurrency = 3
backoff = {{ min_ms = 10, max_ms = 100 }}
"#,
        cluster.servers, db.url
    );
    let config = Config::parse(&text, "app.toml").expect("config");
    let unregistered = App::builder()
        .config(config.clone())
        .build()
        .await
        .expect_err("no sink handler");
    assert_eq!(
        unregistered.to_string(),
        "app.toml: listeners[0].handler: no handler named `sink` is registered (no handlers are registered)"
    );
    let mut app = App::builder()
        .handler(Sink)
        .config(config)
        .build()
        .await
        .expect("app");
    let api = app
        .bind_api()
        .await
        .expect("bind")
        .expect("the API is on by default");
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    // The App serves the health checks next to its listener: ready once it joined its group.
    let mut ready = None;
    wait_until(TIMEOUT, "/health/ready to answer 200", || {
        let answer = http_get(api, "/health/ready");
        let ok = answer.as_ref().is_some_and(|(status, _)| *status == 200);
        ready = answer;
        std::future::ready(ok)
    })
    .await;
    let (_, body) = ready.expect("an answer");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["database"]["ok"], true, "{body}");
    assert_eq!(body["listeners"][0]["listener_id"], "app/orders", "{body}");
    assert_eq!(body["listeners"][0]["assigned_partitions"], 3, "{body}");
    assert_eq!(http_get(api, "/health/live").map(|(s, _)| s), Some(200));
    let metrics = http_get(api, "/metrics").expect("metrics");
    assert_eq!(metrics.0, 200);
    wait_for_all(&db, unique.len(), poison).await;
    wait_for_commits(&cluster, topic, group, 3).await;
    stop.send(()).expect("stop");
    running.await.expect("join").expect("app ran");
    assert!(
        std::net::TcpStream::connect(api).is_err(),
        "the API stops with the app"
    );
    assert_exactly_once(&db, &cluster, topic, group, unique.len(), poison, 3).await;
    db.cleanup().await;
}

/// Passes the first 10 messages, holds the others until the gate opens.
struct Gated(tokio::sync::watch::Receiver<bool>);

impl Handler for Gated {
    fn name(&self) -> &str {
        "gated"
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        _ctx: &'a mut Context<'_>,
    ) -> checkpoint::handler::BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            if message.offset >= 10 {
                let mut open = self.0.clone();
                open.wait_for(|open| *open)
                    .await
                    .map_err(HandlerError::new)?;
            }
            Ok(Outcome::ack(message.offset.to_string(), Utc::now()))
        })
    }
}

/// The lag gauge of `topic`'s partition 0 in the Prometheus text, if reported yet.
fn lag_of(text: &str, topic: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(checkpoint::listener::telemetry::CONSUMER_LAG))
        .filter(|l| l.contains(&format!("topic=\"{topic}\"")) && l.contains("partition=\"0\""))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Consumer lag, from librdkafka's statistics: it rises while the handler is held and the
/// offsets stand still, and falls back to 0 once everything is settled and committed. The
/// other listener gauges are exported beside it.
async fn lag_rises_while_a_handler_is_held_and_returns_to_zero(db: TestDb) {
    let topic = "lagging";
    let cluster = Cluster::new(topic, 1);
    let messages: Vec<_> = (0..50)
        .map(|i| {
            (
                0,
                format!("k{i}"),
                format!(r#"{{"id":"lag-{i}"}}"#).into_bytes(),
            )
        })
        .collect();
    cluster.produce(topic, &messages).await;
    let metrics = checkpoint::api::prometheus();
    let (open, gate) = tokio::sync::watch::channel(false);
    let spec = spec(&cluster, Arc::new(Gated(gate)), topic, "lag")
        .kafka("statistics.interval.ms", "200")
        .kafka("auto.commit.interval.ms", "200");
    let (stop, task) = start(spec, &db);
    wait_until(TIMEOUT, "a lag of the 40 messages held back", || {
        std::future::ready(lag_of(&metrics.render(), topic) == Some(40.0))
    })
    .await;
    let text = metrics.render();
    {
        use checkpoint::listener::telemetry as t;
        // Retries, failures and the last settled time appear once there is one.
        for name in [
            t::CONSUMER_LAG,
            t::ASSIGNED,
            t::PAUSED,
            t::BACKING_OFF,
            t::QUEUED_MESSAGES,
            t::QUEUED_BYTES,
            t::IN_FLIGHT,
            t::REBALANCES,
        ] {
            assert!(text.contains(name), "{name} is exported: {text}");
        }
    }
    open.send(true).expect("open the gate");
    wait_until(TIMEOUT, "the lag back at 0", || {
        std::future::ready(lag_of(&metrics.render(), topic) == Some(0.0))
    })
    .await;
    // Gauges are refreshed once a second.
    wait_until(TIMEOUT, "the time of the last settled message", || {
        std::future::ready(
            metrics
                .render()
                .contains(checkpoint::listener::telemetry::LAST_SETTLED),
        )
    })
    .await;
    stop.send(()).expect("stop");
    task.await.expect("listener");
    db.cleanup().await;
}

/// The metric names a PromQL expression uses (`checkpoint_…`, `db_checkpoint_…`).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("checkpoint_") || word.starts_with("db_checkpoint_"))
        .map(str::to_owned)
        .collect()
}

/// The Grafana dashboard shipped in `checkpoint/dashboards` cannot drift from the code: an App
/// runs on the mock cluster (with a retry, a failure, duplicates, retention and API requests,
/// so every kind of metric has fired) and every metric the dashboard queries is in its
/// `/metrics`.
async fn the_dashboard_queries_only_metrics_an_app_exports(db: TestDb) {
    use checkpoint::App;
    use checkpoint::config::Config;
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../checkpoint/dashboards/grafana.json"))
            .expect("the dashboard is JSON");
    let mut queried: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .flat_map(|target| metric_names(target["expr"].as_str().unwrap_or_default()))
        .collect();
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 12, "{queried:?}");

    let (topic, group) = ("dashboard", "ops");
    let cluster = Cluster::new(topic, 3);
    let (messages, unique, _) = workload(200, 3);
    let messages: Vec<_> = messages
        .into_iter()
        .filter(|(_, _, payload)| payload.starts_with(b"{"))
        .collect();
    cluster.produce(topic, &messages).await;
    let text = format!(
        r#"
[kafka]
"bootstrap.servers" = "{}"
"session.timeout.ms" = 3000
"heartbeat.interval.ms" = 500
"statistics.interval.ms" = 200

[database]
url = "{}"

[api]
bind = "127.0.0.1:0"

[retention]
events_older_than = "30d"
interval = "1h"

[[listeners]]
handler = "scripted"
topic = "{topic}"
group_id = "{group}"
max_concurrency = 3
backoff = {{ min_ms = 10, max_ms = 100 }}
"#,
        cluster.servers, db.url
    );
    let config = Config::parse(&text, "app.toml").expect("config");
    let handler = Scripted::new(Step::Ack).script(&[Step::Fail, Step::FailPermanent]);
    let mut app = App::builder()
        .handler(handler)
        .config(config)
        .build()
        .await
        .expect("app");
    let api = app.bind_api().await.expect("bind").expect("enabled");
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    wait_until(TIMEOUT, "every message settled", || async {
        db.event_count().await == i64::try_from(unique.len()).expect("small") - 1
            && failures(&db).await == 1
    })
    .await;
    // A redelivery of a message settled long ago: the duplicate check skips it.
    cluster
        .produce(
            topic,
            &[(0, "again".to_owned(), br#"{"id":"order-30"}"#.to_vec())],
        )
        .await;
    // Gauges are refreshed once a second and lag every statistics interval: a few scrapes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let scraped = http_get(api, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        let missing: Vec<&String> = queried
            .iter()
            .filter(|name| !scraped.contains(name.as_str()))
            .collect();
        if missing.is_empty() || std::time::Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    stop.send(()).expect("stop");
    running.await.expect("join").expect("app ran");
    db.cleanup().await;
}

/// One plain HTTP/1.1 GET: the status and the body, or `None` when nothing answers.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

mod lag {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lag_rises_while_a_handler_is_held_and_returns_to_zero() {
        super::lag_rises_while_a_handler_is_held_and_returns_to_zero(
            crate::support::TestDb::sqlite().await,
        )
        .await;
    }
}

mod dashboard {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dashboard_queries_only_metrics_an_app_exports() {
        super::the_dashboard_queries_only_metrics_an_app_exports(
            crate::support::TestDb::sqlite().await,
        )
        .await;
    }
}

mod app {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_app_runs_its_configured_listeners() {
        super::an_app_runs_its_configured_listeners(crate::support::TestDb::sqlite().await).await;
    }
}

/// An order `id` on `partition`, as `Sink` reads it.
fn order(partition: i32, id: String) -> crate::support::kafka::Produced {
    let payload = format!(r#"{{"id":"{id}"}}"#).into_bytes();
    (partition, id, payload)
}

/// A database with the side-effects table, and `topic` with two partitions holding the orders
/// `a-0` and `a-1`, one each.
async fn two_partitions_with_an_order_each(topic: &str) -> (TestDb, Cluster) {
    let db = TestDb::sqlite().await;
    db.create_side_effects_table().await;
    let cluster = Cluster::new(topic, 2);
    cluster
        .produce(topic, &[order(0, "a-0".into()), order(1, "a-1".into())])
        .await;
    (db, cluster)
}

/// An operator pauses one partition of a running listener: the other keeps flowing, the paused
/// one applies nothing more while paused (its state says so), and once resumed it applies
/// what arrived meanwhile, each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pause_holds_a_partition_until_resumed() {
    let (topic, group) = ("paused", "operators");
    let (db, cluster) = two_partitions_with_an_order_each(topic).await;
    let listener = Listener::new(
        spec(&cluster, Arc::new(Sink), topic, group),
        Engine::new(db.store.clone()),
    );
    let stats = listener.stats();
    let control = listener.control();
    let api = checkpoint::api::router(
        checkpoint::api::ApiState::new(Engine::new(db.store.clone()))
            .listeners([checkpoint::api::ListenerProbe::of(&listener)]),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(listener.run(async {
        let _ = stopped.await;
    }));
    wait_until(TIMEOUT, "the first two orders", || async {
        db.total_side_effects().await == 2
    })
    .await;
    wait_until(TIMEOUT, "both partitions published", || async {
        stats.partitions().len() == 2
    })
    .await;
    // Through the API, as the console does it; the listener id is percent-encoded.
    let (status, body) = crate::api::send(
        &api,
        "POST",
        "/v1/listeners/operators%2Fpaused/partitions/0/pause",
        None,
    )
    .await;
    assert_eq!(status, axum::http::StatusCode::OK, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"listener_id": "operators/paused", "partition": 0,
                           "paused_by_operator": true, "changed": true})
    );
    assert!(!control.pause(0), "a second pause changes nothing");
    wait_until(
        TIMEOUT,
        "partition 0 shown paused by the operator",
        || async {
            stats
                .partitions()
                .iter()
                .any(|p| p.partition == 0 && p.paused && p.paused_by_operator)
        },
    )
    .await;

    let later: Vec<_> = (0..20).map(|i| order(i % 2, format!("b-{i}"))).collect();
    cluster.produce(topic, &later).await;
    wait_until(TIMEOUT, "partition 1's ten orders", || async {
        db.total_side_effects().await == 12
    })
    .await;
    // Partition 0 stays where it was: nothing of it is applied while paused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        db.total_side_effects().await,
        12,
        "a paused partition moved"
    );
    for i in (0..20).step_by(2) {
        assert_eq!(db.side_effects(&format!("b-{i}")).await, 0, "b-{i}");
    }
    let state = stats.partitions();
    assert!(
        state
            .iter()
            .any(|p| p.partition == 1 && !p.paused_by_operator),
        "{state:?}"
    );
    // Its lag shows the ten orders waiting (librdkafka's statistics, every 5 s).
    wait_until(TIMEOUT, "partition 0's lag of ten", || async {
        let state = stats.partitions();
        state.iter().any(|p| p.partition == 0 && p.lag == Some(10))
    })
    .await;

    let (status, body) = crate::api::send(
        &api,
        "POST",
        "/v1/listeners/operators%2Fpaused/partitions/0/resume",
        None,
    )
    .await;
    assert_eq!(status, axum::http::StatusCode::OK, "{body}");
    assert_eq!(body["changed"], true, "{body}");
    assert!(!control.is_paused(0));
    wait_until(
        TIMEOUT,
        "partition 0's ten orders after the resume",
        || async { db.total_side_effects().await == 22 },
    )
    .await;
    stop.send(()).expect("stop");
    task.await.expect("join").expect("listener");
    for i in 0..20 {
        assert_eq!(db.side_effects(&format!("b-{i}")).await, 1, "b-{i}");
    }
    assert_eq!(db.event_count().await, 22);
    db.cleanup().await;
}

/// A pause outlives a rebalance: while partition 0 is paused here, a second member joins the
/// group and leaves again; when the partition comes back to this listener it is still paused,
/// and what was produced meanwhile waits until the operator resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pause_outlives_a_rebalance() {
    let (topic, group) = ("paused-across", "operators-across");
    let (db, cluster) = two_partitions_with_an_order_each(topic).await;
    let here = Listener::new(
        spec(&cluster, Arc::new(Sink), topic, group),
        Engine::new(db.store.clone()),
    );
    let stats = here.stats();
    let control = here.control();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(here.run(async {
        let _ = stopped.await;
    }));
    wait_until(TIMEOUT, "the first two orders", || async {
        db.total_side_effects().await == 2
    })
    .await;
    assert!(control.pause(0));

    // A second member takes one partition, then leaves: both come back here.
    let other = Listener::new(
        spec(&cluster, Arc::new(Sink), topic, group),
        Engine::new(db.store.clone()),
    );
    let other_stats = other.stats();
    let (stop_other, other_stopped) = oneshot::channel::<()>();
    let other_task = tokio::spawn(other.run(async {
        let _ = other_stopped.await;
    }));
    wait_until(TIMEOUT, "the partitions shared by two members", || async {
        other_stats.snapshot().assigned_partitions == 1 && stats.partitions().len() == 1
    })
    .await;
    stop_other.send(()).expect("stop the other member");
    other_task.await.expect("join").expect("other listener");
    wait_until(
        TIMEOUT,
        "both partitions back here, 0 still paused",
        || async {
            let state = stats.partitions();
            state.len() == 2
                && state
                    .iter()
                    .any(|p| p.partition == 0 && p.paused && p.paused_by_operator)
        },
    )
    .await;

    let later: Vec<_> = (0..10).map(|i| order(0, format!("c-{i}"))).collect();
    cluster.produce(topic, &later).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        db.total_side_effects().await,
        2,
        "partition 0 moved while paused after the rebalance"
    );
    assert!(control.resume(0));
    wait_until(
        TIMEOUT,
        "partition 0's ten orders after the resume",
        || async { db.total_side_effects().await == 12 },
    )
    .await;
    stop.send(()).expect("stop");
    task.await.expect("join").expect("listener");
    for i in 0..10 {
        assert_eq!(db.side_effects(&format!("c-{i}")).await, 1, "c-{i}");
    }
    db.cleanup().await;
}
