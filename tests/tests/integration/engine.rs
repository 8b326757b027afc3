//! The checkpoint algorithm on every backend, with hand-written handlers: ack, skip,
//! duplicates, the retry decision, failures, notifications, transactional exactly-once and
//! retries of stored failures.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::TestDb;
use crate::support::handlers::{Scripted, Step, event_time};
use checkpoint::handler::{BoxFuture, decode_json};
use checkpoint::instrument::{Fired, Notification};
use checkpoint::prelude::*;
use checkpoint::store::ListQuery;
use checkpoint::{Backoff, Disposition, Engine, Origin, RetryOutcome, Store};

fn origin() -> Origin {
    Origin::new("billing").with_listener_id("listener-1")
}

fn order(offset: i64, id: &str) -> Message {
    let payload = format!(
        r#"{{"id":"{id}","type":"order.created","version":"v2","at":"2026-11-27T10:00:00Z"}}"#
    );
    Message::new("orders", 2, offset, payload)
        .with_key("order-key")
        .with_header("trace", b"abc".to_vec())
}

/// Records the names of fired notifications, in order.
#[derive(Default)]
struct Recorded(Mutex<Vec<&'static str>>);

impl Recorded {
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.0.lock().expect("recorded"))
    }
}

fn engine_with_recorder(store: &Store) -> (Engine, Arc<Recorded>) {
    let recorded = Arc::new(Recorded::default());
    let sink = Arc::clone(&recorded);
    let engine = Engine::new(store.clone()).with_observer(Arc::new(move |fired: &Fired<'_>| {
        sink.0
            .lock()
            .expect("recorded")
            .push(fired.notification.name());
    }));
    (engine, recorded)
}

/// The failure row a `Failed` disposition points at; panics with `context` otherwise.
async fn stored_failure(db: &TestDb, d: Disposition, context: &str) -> checkpoint::store::Failure {
    let Disposition::Failed { failure_id, .. } = d else {
        panic!("{context}: {d:?}")
    };
    db.store
        .get_failure(failure_id)
        .await
        .expect("get")
        .expect("stored")
}

async fn ack_persists_every_field(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let handler = Scripted::new(Step::Ack);
    let message = order(41, "o-1");
    let disposition = engine
        .process(&handler, &message, &origin(), 0)
        .await
        .expect("process");
    assert!(
        matches!(disposition, Disposition::Acknowledged { inserted: true }),
        "{disposition:?}"
    );
    let events = db
        .store
        .list_events(&ListQuery::default())
        .await
        .expect("list");
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.entity_id.as_deref(), Some("entity-41"));
    assert_eq!(event.event_time, Some(event_time().naive_utc()));
    assert_eq!(event.event_type.as_deref(), Some("created"));
    assert_eq!(event.event_version.as_deref(), Some("v1"));
    assert_eq!(
        (event.topic.as_str(), event.group_id.as_str()),
        ("orders", "billing")
    );
    assert_eq!((event.partition, event.offset), (2, 41));
    assert_eq!(event.key.as_deref(), Some(&b"order-key"[..]));
    assert_eq!(event.checksum, checkpoint::checksum(&message.payload));
    assert_eq!(event.payload, message.payload);
    let created = event.created_at.expect("created_at set");
    assert!(
        (chrono::Utc::now().naive_utc() - created)
            .num_seconds()
            .abs()
            < 60
    );
    db.cleanup().await;
}

async fn ack_fields_left_empty_come_from_the_extractors(db: TestDb) {
    struct EmptyAck(Scripted);
    impl Handler for EmptyAck {
        fn name(&self) -> &str {
            "empty-ack"
        }
        fn consume<'a>(
            &'a self,
            _: &'a Message,
            _: &'a mut Context<'_>,
        ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
            Box::pin(async { Ok(Outcome::Ack(Ack::default())) })
        }
        fn entity_id(&self, message: &Message) -> Option<String> {
            self.0.entity_id(message)
        }
        fn event_type(&self, message: &Message) -> Option<String> {
            self.0.event_type(message)
        }
    }
    let engine = Engine::new(db.store.clone());
    let handler = EmptyAck(Scripted::new(Step::Ack).with_extractors());
    engine
        .process(&handler, &order(1, "o-9"), &origin(), 0)
        .await
        .expect("process");
    let event = &db
        .store
        .list_events(&ListQuery::default())
        .await
        .expect("list")[0];
    assert_eq!(event.entity_id.as_deref(), Some("o-9"));
    assert_eq!(event.event_type.as_deref(), Some("order.created"));
    assert_eq!(event.event_version, None);
    db.cleanup().await;
}

async fn a_duplicate_is_consumed_once(db: TestDb) {
    let (engine, recorded) = engine_with_recorder(&db.store);
    let handler = Scripted::new(Step::Ack);
    let first = order(1, "o-1");
    let redelivered = Message {
        offset: 2,
        ..first.clone()
    };
    engine
        .process(&handler, &first, &origin(), 0)
        .await
        .expect("first");
    recorded.take();
    let second = engine
        .process(&handler, &redelivered, &origin(), 0)
        .await
        .expect("second");
    assert!(matches!(second, Disposition::AlreadyConsumed), "{second:?}");
    assert_eq!(handler.calls(), 1);
    assert_eq!(db.event_count().await, 1);
    assert_eq!(
        recorded.take(),
        [
            "db_checkpoint.event_already_exists_check",
            "db_checkpoint.event_already_consumed",
            "db_checkpoint.around_consume"
        ]
    );
    // Another consumer group consumes the same message on its own.
    let other = Origin::new("analytics");
    let third = engine
        .process(&handler, &first, &other, 0)
        .await
        .expect("other group");
    assert!(
        matches!(third, Disposition::Acknowledged { .. }),
        "{third:?}"
    );
    db.cleanup().await;
}

async fn a_skip_stores_nothing_and_redelivery_consumes_again(db: TestDb) {
    let (engine, recorded) = engine_with_recorder(&db.store);
    let handler = Scripted::new(Step::Skip);
    let message = order(1, "o-1");
    for _ in 0..2 {
        let disposition = engine
            .process(&handler, &message, &origin(), 0)
            .await
            .expect("process");
        assert!(
            matches!(disposition, Disposition::Skipped),
            "{disposition:?}"
        );
    }
    assert_eq!(handler.calls(), 2);
    assert_eq!(db.event_count().await, 0);
    assert_eq!(
        recorded.take()[..4],
        [
            "db_checkpoint.event_already_exists_check",
            "db_checkpoint.event_action",
            "db_checkpoint.event_skipped",
            "db_checkpoint.around_consume"
        ]
    );
    db.cleanup().await;
}

async fn the_retry_decision_follows_max_retries(db: TestDb) {
    let (engine, recorded) = engine_with_recorder(&db.store);
    let message = order(1, "o-1");

    let three = Scripted::new(Step::Fail).max_retries(Some(3));
    for retry_count in 0..3 {
        let d = engine
            .process(&three, &message, &origin(), retry_count)
            .await
            .expect("process");
        assert!(
            matches!(d, Disposition::Retry(_)),
            "retry_count {retry_count}: {d:?}"
        );
    }
    assert_eq!(
        recorded.take()[..3],
        [
            "db_checkpoint.event_already_exists_check",
            "db_checkpoint.event_action",
            "db_checkpoint.around_consume"
        ]
    );
    let d = engine
        .process(&three, &message, &origin(), 3)
        .await
        .expect("process");
    let Disposition::Failed { failure_id, .. } = d else {
        panic!("expected a failure, got {d:?}")
    };
    assert_eq!(
        recorded.take(),
        [
            "db_checkpoint.event_already_exists_check",
            "db_checkpoint.event_action",
            "db_checkpoint.event_skipped",
            "db_checkpoint.around_consume"
        ]
    );
    let failure = db
        .store
        .get_failure(failure_id)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(failure.attempts, 4);

    let forever = Scripted::new(Step::Fail).max_retries(None);
    for retry_count in [0, 1, 50, 10_000] {
        let d = engine
            .process(&forever, &order(2, "o-2"), &origin(), retry_count)
            .await
            .expect("process");
        assert!(
            matches!(d, Disposition::Retry(_)),
            "unset max_retries retries at {retry_count}: {d:?}"
        );
    }

    let zero = Scripted::new(Step::Fail).max_retries(Some(0));
    let d = engine
        .process(&zero, &order(3, "o-3"), &origin(), 0)
        .await
        .expect("process");
    assert!(
        matches!(d, Disposition::Failed { .. }),
        "max_retries 0 fails at once: {d:?}"
    );
    assert_eq!(
        db.store
            .count_failures(&ListQuery::default())
            .await
            .expect("count"),
        2
    );
    assert_eq!(db.event_count().await, 0);
    db.cleanup().await;
}

async fn retries_back_off_then_succeed(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let handler = Scripted::new(Step::Ack).script(&[Step::Fail, Step::Fail]);
    let backoff = Backoff::new(Duration::from_millis(40), Duration::from_millis(500));
    let started = Instant::now();
    let d = engine
        .process_until_settled(&handler, &order(1, "o-1"), &origin(), &backoff)
        .await
        .expect("settled");
    assert!(matches!(d, Disposition::Acknowledged { .. }), "{d:?}");
    assert_eq!(handler.retry_counts(), [0, 1, 2]);
    assert!(
        started.elapsed() >= Duration::from_millis(40 + 80),
        "{:?}",
        started.elapsed()
    );
    db.cleanup().await;
}

async fn a_failure_keeps_extractor_fields_and_the_error(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let handler = Scripted::new(Step::Fail)
        .max_retries(Some(0))
        .with_extractors();
    let d = engine
        .process(&handler, &order(7, "o-7"), &origin(), 0)
        .await
        .expect("process");
    let failure = stored_failure(&db, d, "expected failure").await;
    assert_eq!(failure.entity_id.as_deref(), Some("o-7"));
    assert_eq!(failure.event_type.as_deref(), Some("order.created"));
    assert_eq!(failure.event_version.as_deref(), Some("v2"));
    assert_eq!(
        failure.event_time.map(|t| t.and_utc().to_rfc3339()),
        Some("2026-11-27T10:00:00+00:00".to_owned())
    );
    assert!(
        failure.error_class.ends_with("handlers::Refused"),
        "{}",
        failure.error_class
    );
    assert_eq!(
        failure.error_message,
        "downstream service refused the order"
    );
    let backtrace: Vec<String> =
        serde_json::from_str(&failure.error_backtrace).expect("json array");
    assert_eq!(backtrace[0], "caused by: connection reset");
    let metadata: serde_json::Value = serde_json::from_str(&failure.metadata).expect("json object");
    assert_eq!(metadata["listener_id"], "listener-1");
    assert_eq!(metadata["handler"], "scripted");
    assert_eq!(
        (metadata["partition"].as_i64(), metadata["offset"].as_i64()),
        (Some(2), Some(7))
    );
    assert_eq!(metadata["key"], "order-key");
    assert_eq!(metadata["headers"][0]["key"], "trace");
    assert_eq!(metadata["retry_count"], 0);
    assert_eq!((failure.partition, failure.offset), (2, 7));

    // No extractors, and payloads that are not JSON objects: NULL fields, stored as is.
    let plain = Scripted::new(Step::Fail).max_retries(Some(0));
    for (offset, payload) in [
        (8, br#""a json string""#.to_vec()),
        (9, vec![0xff, 0xfe, 0x00]),
    ] {
        let message = Message::new("orders", 0, offset, payload.clone());
        let d = engine
            .process(&plain, &message, &origin(), 0)
            .await
            .expect("process");
        let failure = stored_failure(&db, d, "expected failure").await;
        assert_eq!(failure.payload, payload);
        assert_eq!(
            (
                failure.entity_id,
                failure.event_time,
                failure.event_type,
                failure.event_version
            ),
            (None, None, None, None)
        );
    }
    db.cleanup().await;
}

/// Decodes JSON like `#[checkpoint_handler]` does for a typed payload.
struct Typed;

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: String,
}

impl Handler for Typed {
    fn name(&self) -> &str {
        "typed"
    }
    fn consume<'a>(
        &'a self,
        message: &'a Message,
        _: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            let order: OrderPlaced =
                decode_json(&message.payload).map_err(HandlerError::permanent)?;
            Ok(Outcome::ack(order.id, Utc::now()))
        })
    }
}

async fn an_undecodable_payload_is_a_failure_at_once(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let message = Message::new("orders", 0, 3, b"not json".to_vec());
    let d = engine
        .process(&Typed, &message, &origin(), 0)
        .await
        .expect("process");
    let failure = stored_failure(&db, d, "retries forever by default, yet no retry").await;
    assert_eq!(failure.error_class, "checkpoint::handler::DecodeError");
    assert!(
        failure
            .error_message
            .starts_with("payload is not valid JSON for `integration::engine::OrderPlaced`"),
        "{}",
        failure.error_message
    );
    assert_eq!(failure.attempts, 1);
    db.cleanup().await;
}

async fn transactional_writes_commit_with_the_event(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    let handler = Scripted::new(Step::Ack).transactional();
    let message = Message::new("orders", 0, 1, "token-ack");
    engine
        .process(&handler, &message, &origin(), 0)
        .await
        .expect("process");
    engine
        .process(&handler, &message, &origin(), 0)
        .await
        .expect("duplicate");
    assert_eq!(
        (db.side_effects("token-ack").await, db.event_count().await),
        (1, 1)
    );
    let event = &db
        .store
        .list_events(&ListQuery::default())
        .await
        .expect("list")[0];
    assert_eq!(
        event.entity_id.as_deref(),
        Some("entity-1"),
        "ack fields written in the same transaction"
    );
    db.cleanup().await;
}

async fn transactional_writes_vanish_on_error_and_skip(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    let failing = Scripted::new(Step::Fail)
        .max_retries(Some(0))
        .transactional();
    let d = engine
        .process(
            &failing,
            &Message::new("orders", 0, 1, "token-error"),
            &origin(),
            0,
        )
        .await
        .expect("process");
    assert!(matches!(d, Disposition::Failed { .. }), "{d:?}");
    let skipping = Scripted::new(Step::Skip).transactional();
    let d = engine
        .process(
            &skipping,
            &Message::new("orders", 0, 2, "token-skip"),
            &origin(),
            0,
        )
        .await
        .expect("process");
    assert!(matches!(d, Disposition::Skipped), "{d:?}");
    let retrying = Scripted::new(Step::Fail).max_retries(None).transactional();
    let d = engine
        .process(
            &retrying,
            &Message::new("orders", 0, 3, "token-retry"),
            &origin(),
            0,
        )
        .await
        .expect("process");
    assert!(matches!(d, Disposition::Retry(_)), "{d:?}");
    assert_eq!(db.total_side_effects().await, 0);
    assert_eq!(db.event_count().await, 0);
    assert_eq!(
        db.store
            .count_failures(&ListQuery::default())
            .await
            .expect("count"),
        1
    );
    db.cleanup().await;
}

async fn eight_concurrent_deliveries_apply_one_side_effect(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    let handler = Arc::new(
        Scripted::new(Step::Ack)
            .transactional()
            .with_delay(Duration::from_millis(50)),
    );
    let message = Arc::new(Message::new("orders", 0, 1, "token-concurrent"));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (engine, handler, message) =
            (engine.clone(), Arc::clone(&handler), Arc::clone(&message));
        tasks.push(tokio::spawn(async move {
            let origin = Origin::new("billing").with_listener_id(format!("worker-{i}"));
            engine
                .process_until_settled(
                    &*handler,
                    &message,
                    &origin,
                    &Backoff::new(Duration::from_millis(5), Duration::from_millis(50)),
                )
                .await
        }));
    }
    let mut acknowledged = 0;
    for task in tasks {
        match task.await.expect("join").expect("process") {
            Disposition::Acknowledged { .. } => acknowledged += 1,
            Disposition::AlreadyConsumed => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acknowledged, 1);
    assert_eq!(db.side_effects("token-concurrent").await, 1);
    assert_eq!(db.event_count().await, 1);
    db.cleanup().await;
}

async fn retrying_a_failure_acks_skips_or_keeps_it(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let fail = Scripted::new(Step::Fail).max_retries(Some(0));
    let mut ids = Vec::new();
    for offset in 1..=3 {
        let d = engine
            .process(&fail, &order(offset, &format!("o-{offset}")), &origin(), 0)
            .await
            .expect("process");
        let Disposition::Failed { failure_id, .. } = d else {
            panic!("{d:?}")
        };
        ids.push(failure_id);
    }
    let outcome = engine
        .retry_failure(&Scripted::new(Step::Ack), ids[0])
        .await
        .expect("retry ack");
    assert!(outcome.acknowledged(), "{outcome:?}");
    assert!(db.store.get_failure(ids[0]).await.expect("get").is_none());
    let events = db
        .store
        .list_events(&ListQuery::default())
        .await
        .expect("list");
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].checksum,
        checkpoint::checksum(&order(1, "o-1").payload),
        "same key as the original"
    );

    let outcome = engine
        .retry_failure(&Scripted::new(Step::Skip), ids[1])
        .await
        .expect("retry skip");
    assert!(matches!(outcome, RetryOutcome::Skipped), "{outcome:?}");
    assert!(db.store.get_failure(ids[1]).await.expect("get").is_none());

    let outcome = engine
        .retry_failure(&fail, ids[2])
        .await
        .expect("retry error");
    assert!(matches!(outcome, RetryOutcome::Failed(_)), "{outcome:?}");
    let kept = db
        .store
        .get_failure(ids[2])
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(kept.attempts, 2);

    // The stored event is the same message: retrying it finds the duplicate.
    let outcome = engine
        .retry_event(&Scripted::new(Step::Ack), events[0].id)
        .await
        .expect("retry event");
    assert!(
        matches!(outcome, RetryOutcome::AlreadyConsumed),
        "{outcome:?}"
    );
    assert!(matches!(
        engine.retry_failure(&fail, 999_999).await,
        Err(checkpoint::EngineError::FailureNotFound(999_999))
    ));
    assert_eq!(db.event_count().await, 1);
    db.cleanup().await;
}

/// Dedups by the order id in the payload instead of the payload bytes.
struct ById(Scripted);

impl Handler for ById {
    fn name(&self) -> &str {
        "by-id"
    }
    fn consume<'a>(
        &'a self,
        message: &'a Message,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        self.0.consume(message, ctx)
    }
    fn dedup_key(&self, message: &Message) -> Option<String> {
        order_key(message)
    }
}

/// `order:<id>` from a JSON payload's `id`.
fn order_key(message: &Message) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(&message.payload).ok()?;
    value.get("id")?.as_str().map(|id| format!("order:{id}"))
}

async fn a_dedup_key_replaces_the_checksum(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let handler = ById(Scripted::new(Step::Ack));
    let first = Message::new("orders", 0, 1, r#"{"id":"o-1","note":"first"}"#);
    let resent = Message::new(
        "orders",
        1,
        9,
        r#"{"id":"o-1","note":"resent with other bytes"}"#,
    );
    engine
        .process(&handler, &first, &origin(), 0)
        .await
        .expect("first");
    let d = engine
        .process(&handler, &resent, &origin(), 0)
        .await
        .expect("resent");
    assert!(matches!(d, Disposition::AlreadyConsumed), "{d:?}");
    let events = db
        .store
        .list_events(&ListQuery::default())
        .await
        .expect("list");
    assert_eq!(events[0].checksum, "order:o-1");
    assert_eq!(handler.0.calls(), 1);
    db.cleanup().await;
}

/// Counter values and histogram sample counts labelled with `topic`, read from the
/// process's Prometheus recorder (the one an `App` installs; one recorder serves every suite
/// of this binary, so each test labels its own topic).
fn metrics_for_topic(topic: &str) -> Vec<(String, u64)> {
    let text = checkpoint::api::prometheus().render();
    let mut kinds = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                kinds.insert(name.to_owned(), kind.to_owned());
            }
        }
    }
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        if !labels.contains(&format!("topic=\"{topic}\"")) {
            continue;
        }
        assert!(
            labels.contains("group_id=\""),
            "every metric carries group_id: {line}"
        );
        let (name, counted) = match kinds.get(name).map(String::as_str) {
            Some("counter") => (name, true),
            // Histograms render as summaries: their `_count` is the number of samples.
            _ => match name.strip_suffix("_count") {
                Some(base)
                    if kinds
                        .get(base)
                        .is_some_and(|k| k == "summary" || k == "histogram") =>
                {
                    (base, true)
                }
                _ => (name, false),
            },
        };
        if counted {
            let amount: f64 = value.parse().expect("a number");
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            out.push((name.to_owned(), amount as u64));
        }
    }
    out.sort();
    out
}

async fn every_notification_is_a_labelled_metric(db: TestDb) {
    // Installed before anything is measured.
    checkpoint::api::prometheus();
    let topic = format!("notified-{}", db.store.backend());
    let engine = Engine::new(db.store.clone());
    let message = Message::new(topic.clone(), 0, 1, "m");
    engine
        .process(&Scripted::new(Step::Ack), &message, &origin(), 0)
        .await
        .expect("ack");
    engine
        .process(&Scripted::new(Step::Ack), &message, &origin(), 0)
        .await
        .expect("duplicate");
    engine
        .process(
            &Scripted::new(Step::Skip),
            &Message::new(topic.clone(), 0, 2, "n"),
            &origin(),
            0,
        )
        .await
        .expect("skip");
    let expected: Vec<(String, u64)> = [
        ("db_checkpoint_around_consume_seconds", 3),
        ("db_checkpoint_around_consume_total", 3),
        ("db_checkpoint_event_acknowledged_seconds", 1),
        ("db_checkpoint_event_acknowledged_total", 1),
        ("db_checkpoint_event_action_seconds", 2),
        ("db_checkpoint_event_action_total", 2),
        ("db_checkpoint_event_already_consumed_total", 1),
        ("db_checkpoint_event_already_exists_check_seconds", 3),
        ("db_checkpoint_event_already_exists_check_total", 3),
        ("db_checkpoint_event_skipped_total", 1),
    ]
    .into_iter()
    .map(|(name, n)| (name.to_owned(), n))
    .collect();
    assert_eq!(metrics_for_topic(&topic), expected);
    for notification in Notification::ALL {
        assert!(
            expected
                .iter()
                .any(|(name, _)| name == notification.counter_name()),
            "{notification}"
        );
    }
    db.cleanup().await;
}

on_every_backend!(
    ack_persists_every_field,
    ack_fields_left_empty_come_from_the_extractors,
    a_duplicate_is_consumed_once,
    a_skip_stores_nothing_and_redelivery_consumes_again,
    the_retry_decision_follows_max_retries,
    retries_back_off_then_succeed,
    a_failure_keeps_extractor_fields_and_the_error,
    an_undecodable_payload_is_a_failure_at_once,
    transactional_writes_commit_with_the_event,
    transactional_writes_vanish_on_error_and_skip,
    eight_concurrent_deliveries_apply_one_side_effect,
    retrying_a_failure_acks_skips_or_keeps_it,
    a_dedup_key_replaces_the_checksum,
    every_notification_is_a_labelled_metric,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_down_stops_processing_before_consume() {
    let engine = Engine::new(Store::connect("postgres://root@127.0.0.1:1/test").expect("url"));
    let handler = Scripted::new(Step::Ack);
    let error = engine
        .process(&handler, &order(1, "o-1"), &origin(), 0)
        .await
        .expect_err("down");
    assert!(error.is_unavailable(), "{error}");
    assert_eq!(
        handler.calls(),
        0,
        "consume never runs without a checkpoint"
    );
}
