//! The store on every backend: ordering, filters, paging, lossless payloads, failure upserts,
//! migrations, and clear errors for bad input and a database that is down.

use crate::support::TestDb;
use checkpoint::store::{DedupKey, ListQuery, NewEvent, NewFailure, Store, StoreError};
use chrono::{Duration, NaiveDateTime, Utc};

fn event<'a>(checksum: &'a str, payload: &'a [u8]) -> NewEvent<'a> {
    NewEvent {
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
        payload,
        created_at: Some(Utc::now().naive_utc()),
    }
}

fn failure<'a>(
    checksum: &'a str,
    payload: &'a [u8],
    attempts: i32,
    message: &'a str,
) -> NewFailure<'a> {
    NewFailure {
        created_at: Some(Utc::now().naive_utc()),
        topic: "orders",
        group_id: "billing",
        partition: 1,
        offset: 7,
        key: Some(b"k"),
        checksum,
        entity_id: None,
        event_time: None,
        event_type: None,
        event_version: None,
        payload,
        metadata: "{}",
        error_class: "app::Boom",
        error_message: message,
        error_backtrace: "[]",
        attempts,
    }
}

/// Whole milliseconds, as every backend stores at least that precision.
fn at(offset_secs: i64) -> NaiveDateTime {
    let now = Utc::now().naive_utc() - Duration::seconds(offset_secs);
    now - Duration::nanoseconds(i64::from(
        now.and_utc().timestamp_subsec_nanos() % 1_000_000,
    ))
}

async fn orders_by_event_time_then_created_at_with_nulls_last(db: TestDb) {
    // (event_time, created_at) for rows 1..=6; expected order 3 5 6 1 2 4.
    let rows = [
        (None, Some(at(100))),
        (None, Some(at(200))),
        (Some(at(300)), Some(at(300))),
        (None, None),
        (Some(at(400)), None),
        (Some(at(500)), None),
    ];
    let names: Vec<String> = (1..=6).map(|i| format!("row-{i}")).collect();
    for (name, (event_time, created_at)) in names.iter().zip(rows) {
        let row = NewEvent {
            entity_id: Some(name),
            event_time,
            created_at,
            ..event(name, b"{}")
        };
        assert!(db.store.insert_event(&row).await.expect("insert"));
    }
    let listed = db
        .store
        .list_events(&ListQuery::default())
        .await
        .expect("list");
    let order: Vec<&str> = listed.iter().map(|e| e.checksum.as_str()).collect();
    assert_eq!(
        order,
        ["row-3", "row-5", "row-6", "row-1", "row-2", "row-4"]
    );

    let page = db
        .store
        .list_events(&ListQuery {
            limit: 2,
            offset: 1,
            ..ListQuery::default()
        })
        .await
        .expect("page");
    let order: Vec<&str> = page.iter().map(|e| e.checksum.as_str()).collect();
    assert_eq!(order, ["row-5", "row-6"]);

    // Failures use the same ordering.
    for (name, (event_time, created_at)) in names.iter().zip(rows) {
        let row = NewFailure {
            event_time,
            created_at,
            ..failure(name, b"{}", 1, "boom")
        };
        db.store.record_failure(&row).await.expect("record");
    }
    let listed = db
        .store
        .list_failures(&ListQuery::default())
        .await
        .expect("list failures");
    let order: Vec<&str> = listed.iter().map(|f| f.checksum.as_str()).collect();
    assert_eq!(
        order,
        ["row-3", "row-5", "row-6", "row-1", "row-2", "row-4"]
    );
    db.cleanup().await;
}

async fn filters_each_column_exactly(db: TestDb) {
    let specs = [
        ("a", "orders", "billing", Some("e1"), Some("created")),
        ("b", "orders", "shipping", Some("e1"), Some("updated")),
        ("c", "payments", "billing", Some("e2"), Some("created")),
        ("d", "orders", "billing", None, None),
    ];
    for (checksum, topic, group_id, entity_id, event_type) in specs {
        let row = NewEvent {
            topic,
            group_id,
            entity_id,
            event_type,
            ..event(checksum, b"{}")
        };
        db.store.insert_event(&row).await.expect("insert");
        let row = NewFailure {
            topic,
            group_id,
            entity_id,
            event_type,
            ..failure(checksum, b"{}", 1, "x")
        };
        db.store.record_failure(&row).await.expect("record");
    }
    let cases: [(ListQuery, &[&str]); 5] = [
        (
            ListQuery {
                entity_id: Some("e1".into()),
                ..ListQuery::default()
            },
            &["a", "b"],
        ),
        (
            ListQuery {
                topic: Some("payments".into()),
                ..ListQuery::default()
            },
            &["c"],
        ),
        (
            ListQuery {
                group_id: Some("billing".into()),
                ..ListQuery::default()
            },
            &["a", "c", "d"],
        ),
        (
            ListQuery {
                event_type: Some("created".into()),
                ..ListQuery::default()
            },
            &["a", "c"],
        ),
        (
            ListQuery {
                topic: Some("orders".into()),
                group_id: Some("billing".into()),
                ..ListQuery::default()
            },
            &["a", "d"],
        ),
    ];
    for (query, expected) in cases {
        let mut events: Vec<String> = db
            .store
            .list_events(&query)
            .await
            .expect("list")
            .into_iter()
            .map(|e| e.checksum)
            .collect();
        events.sort();
        assert_eq!(events, expected, "events for {query:?}");
        let mut failures: Vec<String> = db
            .store
            .list_failures(&query)
            .await
            .expect("list")
            .into_iter()
            .map(|f| f.checksum)
            .collect();
        failures.sort();
        assert_eq!(failures, expected, "failures for {query:?}");
        let count = db.store.count_failures(&query).await.expect("count");
        assert_eq!(
            count,
            i64::try_from(expected.len()).expect("small"),
            "count for {query:?}"
        );
    }
    // Exact match: case and prefixes do not match.
    let query = ListQuery {
        topic: Some("Orders".into()),
        ..ListQuery::default()
    };
    assert!(db.store.list_events(&query).await.expect("list").is_empty());
    db.cleanup().await;
}

async fn payloads_round_trip_byte_for_byte(db: TestDb) {
    let big: Vec<u8> = (0..1024 * 1024)
        .map(|i| u8::try_from(i % 251).expect("byte"))
        .collect();
    let payloads: [(&str, Vec<u8>); 5] = [
        ("binary", vec![0, 159, 146, 150, 255, 0, 1]),
        ("invalid-utf8", b"caf\xe9 \xc3\x28".to_vec()),
        ("empty", Vec::new()),
        ("one-mebibyte", big),
        ("json-string", br#""just a string""#.to_vec()),
    ];
    for (name, payload) in &payloads {
        let key = [0xffu8, 0x00, 0x7f];
        let row = NewEvent {
            key: Some(&key),
            ..event(name, payload)
        };
        assert!(db.store.insert_event(&row).await.expect("insert"), "{name}");
        let row = failure(name, payload, 1, "boom");
        db.store.record_failure(&row).await.expect("record");
    }
    let events = db
        .store
        .list_events(&ListQuery {
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    let failures = db
        .store
        .list_failures(&ListQuery {
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    for (name, payload) in &payloads {
        let stored = events
            .iter()
            .find(|e| e.checksum == *name)
            .expect("event stored");
        assert_eq!(&stored.payload, payload, "event payload {name}");
        assert_eq!(
            stored.key.as_deref(),
            Some(&[0xffu8, 0x00, 0x7f][..]),
            "event key {name}"
        );
        let again = db
            .store
            .get_event(stored.id)
            .await
            .expect("get")
            .expect("found");
        assert_eq!(&again.payload, payload, "event payload by id {name}");
        let stored = failures
            .iter()
            .find(|f| f.checksum == *name)
            .expect("failure stored");
        assert_eq!(&stored.payload, payload, "failure payload {name}");
    }
    db.cleanup().await;
}

async fn insert_is_race_free_and_reports_duplicates(db: TestDb) {
    let row = event("same", b"{\"n\":1}");
    assert!(db.store.insert_event(&row).await.expect("first"));
    assert!(!db.store.insert_event(&row).await.expect("second"));
    let key = DedupKey {
        topic: "orders",
        group_id: "billing",
        checksum: "same",
    };
    assert!(db.store.event_exists(key).await.expect("exists"));
    // Same checksum in another group is another event.
    let other = NewEvent {
        group_id: "shipping",
        ..row.clone()
    };
    assert!(db.store.insert_event(&other).await.expect("other group"));

    // Many at once: stored keys and keys repeated inside the batch are reported.
    let batch = [
        event("same", b"1"),
        event("n1", b"2"),
        event("n2", b"3"),
        event("n1", b"4"),
    ];
    let flags = db.store.insert_events(&batch).await.expect("batch");
    assert_eq!(flags, [false, true, true, false]);
    let existing = db
        .store
        .existing_checksums("orders", "billing", &["same", "n1", "n2", "missing"])
        .await
        .expect("existing");
    let mut existing: Vec<String> = existing.into_iter().collect();
    existing.sort();
    assert_eq!(existing, ["n1", "n2", "same"]);
    assert_eq!(db.event_count().await, 4);
    db.cleanup().await;
}

async fn repeated_failure_updates_one_row(db: TestDb) {
    let first = db
        .store
        .record_failure(&failure("f", b"{}", 4, "first error"))
        .await
        .expect("first");
    let again = db
        .store
        .record_failure(&failure("f", b"{}", 2, "second error"))
        .await
        .expect("again");
    assert_eq!(first, again);
    let stored = db
        .store
        .get_failure(first)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(stored.attempts, 6);
    assert_eq!(stored.error_message, "second error");
    assert!(
        db.store
            .record_failed_retry(first, "app::Other", "third", "[\"x\"]")
            .await
            .expect("retry")
    );
    let stored = db
        .store
        .get_failure(first)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(
        (stored.attempts, stored.error_class.as_str()),
        (7, "app::Other")
    );
    assert_eq!(
        db.store
            .count_failures(&ListQuery::default())
            .await
            .expect("count"),
        1
    );
    assert!(db.store.delete_failure(first).await.expect("delete"));
    assert!(!db.store.delete_failure(first).await.expect("delete again"));
    assert!(db.store.get_failure(first).await.expect("get").is_none());
    db.cleanup().await;
}

async fn overlong_fields_are_rejected_not_truncated(db: TestDb) {
    let long = "x".repeat(256);
    let row = NewEvent {
        entity_id: Some(&long),
        ..event("long", b"{}")
    };
    let error = db.store.insert_event(&row).await.expect_err("too long");
    assert!(
        matches!(
            error,
            StoreError::FieldTooLong {
                field: "entity_id",
                len: 256,
                max: 255
            }
        ),
        "{error}"
    );
    assert_eq!(db.event_count().await, 0);
    db.cleanup().await;
}

async fn migrations_roll_back_and_reapply(db: TestDb) {
    let status = db.store.migration_status().await.expect("status");
    assert!(
        !status.is_empty() && status.iter().all(|(_, applied)| *applied),
        "{status:?}"
    );
    assert!(db.store.migrate().await.expect("idempotent").is_empty());
    // Revert every migration, newest first.
    for _ in &status {
        let reverted = db.store.rollback().await.expect("rollback");
        assert!(reverted.is_some());
    }
    assert_eq!(db.store.rollback().await.expect("nothing left"), None);
    assert!(
        db.store.list_events(&ListQuery::default()).await.is_err(),
        "tables are gone"
    );
    assert!(
        db.store
            .migration_status()
            .await
            .expect("status")
            .iter()
            .all(|(_, applied)| !applied)
    );
    assert_eq!(
        db.store.migrate().await.expect("reapply").len(),
        status.len()
    );
    assert!(
        db.store
            .list_events(&ListQuery::default())
            .await
            .expect("tables back")
            .is_empty()
    );
    db.cleanup().await;
}

on_every_backend!(
    orders_by_event_time_then_created_at_with_nulls_last,
    filters_each_column_exactly,
    payloads_round_trip_byte_for_byte,
    insert_is_race_free_and_reports_duplicates,
    repeated_failure_updates_one_row,
    overlong_fields_are_rejected_not_truncated,
    migrations_roll_back_and_reapply,
);

#[tokio::test]
async fn a_database_that_is_down_is_a_clear_unavailable_error() {
    for url in [
        "postgres://root@127.0.0.1:1/test",
        "mysql://root@127.0.0.1:1/test",
    ] {
        let store = Store::connect(url).expect("valid url");
        let error = store.ping().await.expect_err("nothing listens on port 1");
        assert!(error.is_unavailable(), "{error}");
        let text = error.to_string();
        assert!(text.contains("database unavailable"), "{text}");
        let error = store.migrate().await.expect_err("migrate");
        assert!(error.is_unavailable(), "{error}");
    }
}

#[test]
fn bad_urls_name_the_url_and_the_reason() {
    let error = Store::connect("oracle://scott:tiger@db/orcl").expect_err("unsupported");
    let text = error.to_string();
    assert!(text.contains("oracle://scott:***@db/orcl"), "{text}");
    assert!(text.contains("expected sqlite://PATH"), "{text}");
    assert!(!text.contains("tiger"), "{text}");
}

#[tokio::test]
async fn in_memory_sqlite_keeps_one_database() {
    let store = Store::connect("sqlite::memory:").expect("memory");
    store.migrate().await.expect("migrate");
    assert!(store.insert_event(&event("m", b"x")).await.expect("insert"));
    assert_eq!(
        store
            .list_events(&ListQuery::default())
            .await
            .expect("list")
            .len(),
        1
    );
}
