//! Real processes: a consumer killed with SIGKILL while the broker lives in another process,
//! then a new consumer that finishes the stream and stops cleanly on SIGTERM (exit 0).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::TestDb;
use support::kafka::{
    Cluster, TIMEOUT, assert_exactly_once, wait_for_all, wait_for_commits, wait_until, workload,
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

on_every_backend!(a_killed_consumer_process_applies_nothing_twice);
