//! Retention on every backend: rows older than the cutoff go, in batches, and newer rows stay;
//! a dry run counts without deleting; and pruning while a listener consumes loses nothing and
//! duplicates nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::support::TestDb;
use crate::support::kafka::{Cluster, TIMEOUT, assert_exactly_once, wait_for_all, workload};
use checkpoint::listener::{Listener, ListenerSpec};
use checkpoint::retention::{self, PRUNED_METRIC};
use checkpoint::store::{ListQuery, NewEvent, NewFailure, PrunedTable};
use checkpoint::{Backoff, Engine};
use checkpoint_tests::Sink;
use chrono::{NaiveDateTime, Utc};

const DAY: Duration = Duration::from_secs(86_400);

fn days_ago(days: i64) -> NaiveDateTime {
    (Utc::now() - chrono::Duration::days(days)).naive_utc()
}

/// An event of `group` on `orders`, created at `created_at`.
fn event<'a>(group: &'a str, checksum: &'a str, created_at: NaiveDateTime) -> NewEvent<'a> {
    NewEvent {
        topic: "orders",
        group_id: group,
        partition: 0,
        offset: 0,
        key: None,
        checksum,
        entity_id: None,
        event_time: None,
        event_type: None,
        event_version: None,
        payload: b"{}",
        created_at: Some(created_at),
    }
}

async fn insert_event(db: &TestDb, group: &str, checksum: &str, created_at: NaiveDateTime) {
    let row = event(group, checksum, created_at);
    assert!(db.store.insert_event(&row).await.expect("insert event"));
}

async fn insert_failure(db: &TestDb, checksum: &str, created_at: NaiveDateTime) {
    let row = NewFailure {
        created_at: Some(created_at),
        topic: "orders",
        group_id: "billing",
        partition: 0,
        offset: 0,
        key: None,
        checksum,
        entity_id: None,
        event_time: None,
        event_type: None,
        event_version: None,
        payload: b"{}",
        metadata: "{}",
        error_class: "app::Boom",
        error_message: "boom",
        error_backtrace: "[]",
        attempts: 1,
    };
    db.store.record_failure(&row).await.expect("record failure");
}

async fn checksums(db: &TestDb, table: PrunedTable) -> Vec<String> {
    let query = ListQuery {
        limit: 1_000,
        ..ListQuery::default()
    };
    let mut found: Vec<String> = match table {
        PrunedTable::Events => db
            .store
            .list_events(&query)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.checksum)
            .collect(),
        PrunedTable::Failures => db
            .store
            .list_failures(&query)
            .await
            .expect("failures")
            .into_iter()
            .map(|f| f.checksum)
            .collect(),
    };
    found.sort();
    found
}

/// 23 events and 7 failures 40 days old, 5 events and 3 failures from today: a dry run counts
/// the old ones, a prune in batches of 4 deletes exactly them and counts them in the metric.
async fn old_rows_go_and_new_rows_stay(db: TestDb) {
    for i in 0..23 {
        insert_event(&db, "billing", &format!("old-{i:02}"), days_ago(40)).await;
    }
    for i in 0..5 {
        insert_event(&db, "billing", &format!("new-{i:02}"), days_ago(0)).await;
    }
    for i in 0..7 {
        insert_failure(&db, &format!("old-{i:02}"), days_ago(40)).await;
    }
    for i in 0..3 {
        insert_failure(&db, &format!("new-{i:02}"), days_ago(0)).await;
    }
    let never = || false;
    let dry = retention::prune(&db.store, PrunedTable::Events, 30 * DAY, 4, true, &never)
        .await
        .expect("dry run");
    assert_eq!((dry.rows, dry.dry_run), (23, true));
    assert_eq!(checksums(&db, PrunedTable::Events).await.len(), 28);

    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (events, failures) = {
        let _guard = metrics::set_default_local_recorder(&recorder);
        let events = retention::prune(&db.store, PrunedTable::Events, 30 * DAY, 4, false, &never)
            .await
            .expect("prune events");
        let failures =
            retention::prune(&db.store, PrunedTable::Failures, 30 * DAY, 4, false, &never)
                .await
                .expect("prune failures");
        (events, failures)
    };
    assert_eq!((events.rows, failures.rows), (23, 7));
    let expected_new = |n: usize| (0..n).map(|i| format!("new-{i:02}")).collect::<Vec<_>>();
    assert_eq!(checksums(&db, PrunedTable::Events).await, expected_new(5));
    assert_eq!(checksums(&db, PrunedTable::Failures).await, expected_new(3));

    let counted: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == PRUNED_METRIC)
        .filter_map(|(key, _, _, value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => Some((
                key.key()
                    .labels()
                    .find(|l| l.key() == "table")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default(),
                n,
            )),
            _ => None,
        })
        .collect();
    assert!(
        counted.contains(&("events".to_owned(), 23))
            && counted.contains(&("failures".to_owned(), 7)),
        "{counted:?}"
    );

    let again = retention::prune(&db.store, PrunedTable::Events, 30 * DAY, 4, false, &never)
        .await
        .expect("prune again");
    assert_eq!(again.rows, 0, "nothing old is left");
    db.cleanup().await;
}

/// 3,000 old events of another group are pruned in batches of 50 while a listener checkpoints
/// 2,000 new messages with a transactional handler: every new message is applied exactly
/// once, every old row is gone, and no new row is touched.
async fn pruning_while_consuming_loses_and_duplicates_nothing(db: TestDb) {
    db.create_side_effects_table().await;
    for chunk in 0..30 {
        let names: Vec<String> = (0..100).map(|i| format!("old-{chunk}-{i}")).collect();
        let rows: Vec<NewEvent<'_>> = names
            .iter()
            .map(|checksum| event("archive", checksum, days_ago(40)))
            .collect();
        db.store.insert_events(&rows).await.expect("old events");
    }
    let (topic, group) = ("orders", "billing");
    let cluster = Cluster::new(topic, 3);
    let (messages, unique, poison) = workload(2_000, 3);
    cluster.produce(topic, &messages).await;
    let mut spec = ListenerSpec::new(Arc::new(Sink), topic, group)
        .max_concurrency(3)
        .backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ));
    spec.kafka = cluster.kafka();
    let listener = Listener::new(spec, Engine::new(db.store.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consuming = tokio::spawn(listener.run(async {
        let _ = stopped.await;
    }));
    let store = db.store.clone();
    let pruning = tokio::spawn(async move {
        let mut pruned = 0;
        let never = || false;
        // Small batches, again and again, so deletes interleave with the listener's writes.
        for _ in 0..200 {
            pruned += retention::prune(&store, PrunedTable::Events, 30 * DAY, 50, false, &never)
                .await
                .expect("prune")
                .rows;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pruned
    });
    wait_for_all(&db, unique.len(), poison).await;
    let pruned = tokio::time::timeout(TIMEOUT, pruning)
        .await
        .expect("pruning finishes")
        .expect("join");
    stop.send(()).expect("stop");
    consuming.await.expect("join").expect("listener");
    assert_eq!(pruned, 3_000, "every old row, and only those");
    assert_exactly_once(&db, &cluster, topic, group, unique.len(), poison, 3).await;
    let archive = ListQuery {
        group_id: Some("archive".to_owned()),
        ..ListQuery::default()
    };
    assert!(
        db.store
            .list_events(&archive)
            .await
            .expect("list")
            .is_empty(),
        "old rows are gone"
    );
    db.cleanup().await;
}

on_every_backend!(
    old_rows_go_and_new_rows_stay,
    pruning_while_consuming_loses_and_duplicates_nothing,
);
