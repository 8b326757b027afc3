//! The chaos harness of `checkpoint::testing`, used as a user would: a consumer binary of our
//! own (`chaos-consumer`) killed with SIGKILL at random crash points, 24 times per mode and
//! database, from a fixed seed, then finished by an unarmed consumer. The transactional modes
//! must show no duplicated and no lost side effect; per-message mode loses nothing, and may
//! apply an effect again only where a kill fell between the effect and its checkpoint row.

use std::process::{Command, Stdio};

use crate::support::TestDb;
use checkpoint::testing::{Chaos, ChaosMessage, ChaosReport, SideEffects};

const KILLS: usize = 24;
const MESSAGES: usize = 2_000;
const PARTITIONS: i32 = 3;
const SEED: u64 = 20261129;

async fn chaos(db: &TestDb, mode: &str) -> ChaosReport {
    db.create_side_effects_table().await;
    let mode = mode.to_owned();
    let report = Chaos::new(
        db.url.clone(),
        move || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_chaos-consumer"));
            command
                .arg(&mode)
                .env_remove("RUST_LOG")
                .stdout(Stdio::null());
            command
        },
        SideEffects::table("side_effects", "token").expect("plain identifiers"),
    )
    .messages((0..MESSAGES).map(|i| {
        ChaosMessage::new(
            format!("k{i}"),
            format!(r#"{{"id":"order-{i}"}}"#),
            format!("order-{i}"),
        )
    }))
    .kills(KILLS)
    .seed(SEED)
    .partitions(PARTITIONS)
    .run()
    .await
    .expect("the chaos run completes");
    println!("{report}");
    assert!(
        report.total_kills() >= 20,
        "at least 20 kills landed: {report}"
    );
    assert!(
        report.kills.len() >= 4,
        "the kills cover most crash points: {report}"
    );
    assert!(report.lost.is_empty(), "no side effect lost: {report}");
    assert_eq!(report.failure_rows, 0, "no message set aside: {report}");
    report
}

async fn transactional_mode_survives_random_kills(db: TestDb) {
    let report = chaos(&db, "transactional").await;
    assert!(
        report.duplicates.is_empty(),
        "no side effect applied twice: {:?}",
        report.duplicates
    );
    db.cleanup().await;
}

async fn transactional_batches_survive_random_kills(db: TestDb) {
    let report = chaos(&db, "batch").await;
    assert!(
        report.duplicates.is_empty(),
        "no side effect applied twice: {:?}",
        report.duplicates
    );
    db.cleanup().await;
}

async fn transactional_batches_one_by_one_survive_random_kills(db: TestDb) {
    let report = chaos(&db, "batch-one-by-one").await;
    assert!(
        report.duplicates.is_empty(),
        "no side effect applied twice: {:?}",
        report.duplicates
    );
    db.cleanup().await;
}

/// Per-message mode writes the effect, then the checkpoint row, on two connections: a kill
/// between them (at `inside-consume` or `after-consume` in the killed partition, or anywhere
/// in a partition being processed at that moment) applies that message again when it is
/// redelivered. So duplicates are possible, but each is one message cut by one kill on one of
/// the partitions in flight: never more than kills × partitions extra applications.
async fn per_message_mode_repeats_only_what_a_kill_cut(db: TestDb) {
    let report = chaos(&db, "per-message").await;
    let bound = report.total_kills() * usize::try_from(PARTITIONS).expect("small");
    assert!(
        report.extra_applications() <= bound,
        "at most one repeat per partition in flight per kill ({bound}): {report}"
    );
    db.cleanup().await;
}

on_every_backend!(
    transactional_mode_survives_random_kills,
    transactional_batches_survive_random_kills,
    transactional_batches_one_by_one_survive_random_kills,
    per_message_mode_repeats_only_what_a_kill_cut,
);
