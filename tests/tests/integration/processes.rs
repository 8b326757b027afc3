//! Real processes, with the broker in a process of its own: a consumer killed with SIGKILL
//! mid-stream, then a new consumer that finishes the stream and stops cleanly on SIGTERM
//! (exit 0); a message that kills its consumer every time it is consumed, which must end as a
//! failure row rather than a crash loop; consumers joining and leaving a group while their
//! handler is inside slow side effects, none of which may be applied twice.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::TestDb;
use crate::support::kafka::{
    Cluster, Produced, TIMEOUT, assert_exactly_once, distinct_side_effects, failures, wait_for_all,
    wait_for_commits, wait_until, workload,
};

/// Kills the child on drop, so a failing test leaves no process behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn broker(topic: &str, partitions: i32) -> (Process, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-broker"))
        .args([topic, &partitions.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mock-broker");
    let stdout = child.stdout.take().expect("stdout");
    let mut servers = String::new();
    BufReader::new(stdout)
        .read_line(&mut servers)
        .expect("bootstrap servers");
    (Process(child), servers.trim().to_owned())
}

fn consumer(servers: &str, topic: &str, group: &str, database: &str) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_sink-consumer"))
            .args([servers, topic, group, database])
            .env_remove("RUST_LOG")
            .spawn()
            .expect("start sink-consumer"),
    )
}

async fn a_killed_consumer_process_applies_nothing_twice(db: TestDb) {
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "killed");
    let (_broker, servers) = broker(topic, 3);
    let cluster = Cluster::external(servers.clone());
    let (messages, unique, poison) = workload(3_000, 3);
    cluster.produce(topic, &messages).await;

    let mut first = consumer(&servers, topic, group, &db.url);
    wait_until(TIMEOUT, "progress before the kill", || async {
        db.event_count().await >= 600
    })
    .await;
    first.0.kill().expect("SIGKILL");
    let status = first.0.wait().expect("wait");
    assert!(!status.success(), "killed, not exited: {status:?}");
    let applied = db.event_count().await;
    assert!(
        applied < i64::try_from(unique.len()).expect("small"),
        "killed mid-stream ({applied})"
    );

    let second = consumer(&servers, topic, group, &db.url);
    wait_for_all(&db, unique.len(), poison).await;
    wait_for_commits(&cluster, topic, group, 3).await;
    let pid = second.0.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    let mut second = second;
    let mut status = None;
    wait_until(
        Duration::from_secs(30),
        "a clean exit after SIGTERM",
        || {
            let exited = second.0.try_wait().expect("try_wait");
            status = status.or(exited);
            std::future::ready(status.is_some())
        },
    )
    .await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "SIGTERM exits 0");
    assert_exactly_once(&db, &cluster, topic, group, unique.len(), poison, 3).await;
    db.cleanup().await;
}

/// A consumer process running the per-message [`checkpoint_tests::Effects`] handler, whose
/// standard output lines are collected.
struct Effects {
    process: Process,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Effects {
    fn start(
        servers: &str,
        topic: &str,
        group: &str,
        database: &str,
        delay_ms: u64,
        hang_on: &str,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sink-consumer"))
            .args([
                servers,
                topic,
                group,
                database,
                "effects",
                &delay_ms.to_string(),
            ])
            .args((!hang_on.is_empty()).then_some(hang_on))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sink-consumer");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Self {
            process: Process(child),
            lines,
        }
    }

    fn said(&self, text: &str) -> bool {
        self.lines.lock().expect("lines").iter().any(|l| l == text)
    }

    /// Whether it printed a line starting with `prefix`.
    fn said_something_like(&self, prefix: &str) -> bool {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.starts_with(prefix))
    }

    /// SIGTERM, then the `SETTLED <n>` it prints on its clean exit.
    async fn stop(mut self) -> u64 {
        let pid = self.process.0.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        let mut status = None;
        let limit = Duration::from_secs(60);
        let deadline = std::time::Instant::now() + limit;
        while status.is_none() && std::time::Instant::now() < deadline {
            status = self.process.0.try_wait().expect("try_wait");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            status.is_some(),
            "consumer {pid} did not exit within {limit:?} after SIGTERM"
        );
        assert_eq!(status.and_then(|s| s.code()), Some(0), "SIGTERM exits 0");
        wait_until(Duration::from_secs(5), "the SETTLED line", || {
            std::future::ready(
                self.lines
                    .lock()
                    .expect("lines")
                    .iter()
                    .any(|l| l.starts_with("SETTLED ")),
            )
        })
        .await;
        let lines = self.lines.lock().expect("lines");
        lines
            .iter()
            .find_map(|l| l.strip_prefix("SETTLED "))
            .and_then(|n| n.parse().ok())
            .expect("a SETTLED count")
    }
}

fn orders(count: usize, partitions: i32) -> Vec<Produced> {
    (0..count)
        .map(|i| {
            let partition = i32::try_from(i).expect("small") % partitions;
            (
                partition,
                format!("k{i}"),
                format!(r#"{{"id":"order-{i}"}}"#).into_bytes(),
            )
        })
        .collect()
}

/// `max_retries = 2`: the consumer is killed inside `consume` of the same order three times
/// (`max_retries + 1` deliveries that never return). The fourth consumer records that order as
/// a failure without consuming it again, and handles everything else exactly once.
async fn a_message_that_kills_its_consumer_becomes_a_failure(db: TestDb) {
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "poisoned");
    let (_broker, servers) = broker(topic, 1);
    let cluster = Cluster::external(servers.clone());
    cluster.produce(topic, &orders(30, 1)).await;
    for round in 1..=3 {
        let mut consumer = Effects::start(&servers, topic, group, &db.url, 0, "order-10");
        wait_until(
            TIMEOUT,
            &format!("delivery {round} of the poison order"),
            || std::future::ready(consumer.said("INSIDE order-10")),
        )
        .await;
        consumer.process.0.kill().expect("SIGKILL");
        consumer.process.0.wait().expect("wait");
    }
    let last = Effects::start(&servers, topic, group, &db.url, 0, "order-10");
    wait_until(
        TIMEOUT,
        "every other order and the poison's failure",
        || async { db.event_count().await == 29 && failures(&db).await == 1 },
    )
    .await;
    wait_for_commits(&cluster, topic, group, 1).await;
    assert!(
        !last.said("INSIDE order-10"),
        "the poison order was not consumed a fourth time"
    );
    last.stop().await;
    let failure = db
        .store
        .list_failures(&Default::default())
        .await
        .expect("failures")
        .pop()
        .expect("one failure");
    assert_eq!(failure.error_class, "never_returned", "{failure:?}");
    assert_eq!(failure.attempts, 3, "{failure:?}");
    assert_eq!(
        db.total_side_effects().await,
        29,
        "each other order applied once"
    );
    assert_eq!(distinct_side_effects(&db).await, 29);
    db.cleanup().await;
}

/// Consumers join and leave a group while their handler sits inside a slow side effect
/// outside the checkpoint transaction: a revocation waits for the message in hand, so the
/// next owner never starts it again. (Without that wait this test applies orders twice.)
async fn rebalances_do_not_repeat_side_effects_in_flight(db: TestDb) {
    // librdkafka's mock cluster sometimes aborts on an assertion of its own under this much
    // group churn (`rd_kafka_mock_cgrp_classic_member_add: !member->resp`). That says nothing
    // about checkpoint, so the scenario runs again, once, on a new broker and a new database,
    // and says so; any other failure fails the test.
    let backend = db.store.backend();
    let (mut broker_process, servers) = broker("orders", 6);
    let scenario = std::panic::AssertUnwindSafe(rebalance_scenario(db, servers));
    let Err(failure) = futures_util::FutureExt::catch_unwind(scenario).await else {
        return;
    };
    let Some(status) = broker_process.0.try_wait().ok().flatten() else {
        std::panic::resume_unwind(failure);
    };
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "RERUN: the mock broker process ended by itself ({status}); running the rebalance \
         scenario again on a new broker and database"
    );
    drop(broker_process);
    let Some(db) = TestDb::for_backend(backend).await else {
        return;
    };
    let (_broker, servers) = broker("orders", 6);
    rebalance_scenario(db, servers).await;
}

async fn rebalance_scenario(db: TestDb, servers: String) {
    db.create_side_effects_table().await;
    let (topic, group) = ("orders", "rebalancing");
    let partitions = 6;
    let cluster = Cluster::external(servers.clone());
    // Each order takes 4 s after its side effect: longer than a rebalance takes on the mock
    // cluster (it holds the join phase open for the session timeout less 1 s, 2 s here), so
    // the next owner reaches orders its previous owner is still inside. 6 partitions at a
    // quarter order a second each: 40 s of work, longer than the rounds.
    let count = 60;
    cluster.produce(topic, &orders(count, partitions)).await;
    let start = || Effects::start(&servers, topic, group, &db.url, 4_000, "");
    let first = start();
    let mut settled = Vec::new();
    for _round in 0..2 {
        // Each newcomer is waited for until it has partitions and is inside an order, rather
        // than for a fixed time: a slow start must not make it leave with nothing settled.
        let joining = start();
        wait_until(TIMEOUT, "the joining consumer inside an order", || {
            std::future::ready(joining.said_something_like("APPLIED "))
        })
        .await;
        let another = start();
        wait_until(TIMEOUT, "the third consumer inside an order", || {
            std::future::ready(another.said_something_like("APPLIED "))
        })
        .await;
        settled.push(joining.stop().await);
        tokio::time::sleep(Duration::from_secs(2)).await;
        settled.push(another.stop().await);
    }
    let total = i64::try_from(count).expect("small");
    // Every order settles, as an event or (which would be a bug here) as a failure; should it
    // not, say where things stand rather than only that time ran out.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let (events, failed) = (db.event_count().await, failures(&db).await);
        if events + failed == total {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let committed = checkpoint::testing::committed_offsets(
                &cluster.kafka(),
                topic,
                group,
                partitions,
                Duration::from_secs(10),
            );
            panic!(
                "after {TIMEOUT:?}: {events} events and {failed} failures of {total} orders; \
                 side effects {} ({} distinct); committed offsets {committed:?}",
                db.total_side_effects().await,
                distinct_side_effects(&db).await,
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed = db
        .store
        .list_failures(&Default::default())
        .await
        .expect("failures");
    assert!(failed.is_empty(), "no order set aside: {failed:?}");
    wait_for_commits(&cluster, topic, group, partitions).await;
    settled.push(first.stop().await);
    assert_eq!(
        distinct_side_effects(&db).await,
        total,
        "every order applied"
    );
    assert_eq!(
        db.total_side_effects().await,
        total,
        "no order applied twice"
    );
    assert!(
        settled.iter().all(|n| *n > 0),
        "every consumer owned partitions and settled messages: {settled:?}"
    );
    db.cleanup().await;
}

on_every_backend!(
    a_killed_consumer_process_applies_nothing_twice,
    a_message_that_kills_its_consumer_becomes_a_failure,
    rebalances_do_not_repeat_side_effects_in_flight,
);
