//! `#[checkpoint_handler]` handlers through the real engine on every backend: a generated
//! handler behaves exactly like the equivalent hand-written one.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::support::TestDb;
use checkpoint::handler::{BoxFuture, decode_json};
use checkpoint::prelude::*;
use checkpoint::store::ListQuery;
use checkpoint::{Disposition, Engine, Origin};

#[derive(Debug, serde::Deserialize)]
struct OrderPlaced {
    id: String,
    action: String,
    kind: String,
    version: String,
    at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
#[error("order {0} was refused")]
struct Refused(String);

/// The generated handler.
#[derive(Default)]
struct Orders {
    calls: AtomicU32,
}

#[checkpoint_handler(max_retries = 2)]
impl Orders {
    async fn consume(&self, order: OrderPlaced, ctx: &mut Context<'_>) -> Result<Outcome, Refused> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        decide(order, ctx.retry_count())
    }

    #[entity_id]
    fn entity_id(order: &OrderPlaced) -> Option<String> {
        Some(order.id.clone())
    }

    #[entity_time]
    fn entity_time(order: &OrderPlaced) -> Option<DateTime<Utc>> {
        Some(order.at)
    }

    #[event_type]
    fn event_type(order: &OrderPlaced) -> Option<String> {
        Some(order.kind.clone())
    }

    #[event_version]
    fn event_version(order: &OrderPlaced) -> Option<String> {
        Some(order.version.clone())
    }
}

/// What both handlers do with an order: its `action` says ack (fields left to the
/// extractors), skip, fail, or fail until the third attempt.
fn decide(order: OrderPlaced, retry_count: u32) -> Result<Outcome, Refused> {
    match order.action.as_str() {
        "ack" => Ok(Outcome::Ack(Ack::default())),
        "skip" => Ok(Outcome::skip()),
        "flaky" if retry_count >= 2 => Ok(Outcome::Ack(Ack::default())),
        _ => Err(Refused(order.id)),
    }
}

/// The same handler, written by hand against `checkpoint::Handler`.
#[derive(Default)]
struct HandOrders {
    calls: AtomicU32,
}

impl HandOrders {
    fn order(message: &Message) -> Option<OrderPlaced> {
        decode_json(&message.payload).ok()
    }
}

impl Handler for HandOrders {
    fn name(&self) -> &str {
        "Orders"
    }

    fn max_retries(&self) -> Option<u32> {
        Some(2)
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            let order: OrderPlaced =
                decode_json(&message.payload).map_err(HandlerError::permanent)?;
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(decide(order, ctx.retry_count())?)
        })
    }

    fn entity_id(&self, message: &Message) -> Option<String> {
        Self::order(message).map(|o| o.id)
    }

    fn entity_time(&self, message: &Message) -> Option<DateTime<Utc>> {
        Self::order(message).map(|o| o.at)
    }

    fn event_type(&self, message: &Message) -> Option<String> {
        Self::order(message).map(|o| o.kind)
    }

    fn event_version(&self, message: &Message) -> Option<String> {
        Self::order(message).map(|o| o.version)
    }
}

fn order(offset: i64, id: &str, action: &str) -> Message {
    Message::new(
        "orders",
        0,
        offset,
        format!(
            r#"{{"id":"{id}","action":"{action}","kind":"order.placed","version":"v3","at":"2026-11-27T09:15:00Z"}}"#
        ),
    )
}

/// The kind of a disposition, comparable across handlers.
fn kind(disposition: &Disposition) -> &'static str {
    match disposition {
        Disposition::Acknowledged { .. } => "acknowledged",
        Disposition::Skipped => "skipped",
        Disposition::AlreadyConsumed => "already consumed",
        Disposition::Retry(_) => "retry",
        Disposition::Failed { .. } => "failed",
        _ => "other",
    }
}

async fn a_generated_handler_behaves_like_the_hand_written_one(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let generated = Orders::default();
    let hand = HandOrders::default();
    assert_eq!(generated.name(), hand.name());
    assert_eq!(generated.max_retries(), hand.max_retries());
    assert!(!generated.transactional());

    // (message, retry_count, expected disposition)
    let script = [
        (order(1, "o-1", "ack"), 0, "acknowledged"),
        (order(2, "o-1", "ack"), 0, "already consumed"),
        (order(3, "o-2", "skip"), 0, "skipped"),
        (order(3, "o-2", "skip"), 0, "skipped"),
        (order(4, "o-3", "fail"), 0, "retry"),
        (order(4, "o-3", "fail"), 1, "retry"),
        (order(4, "o-3", "fail"), 2, "failed"),
        (order(5, "o-4", "flaky"), 0, "retry"),
        (order(5, "o-4", "flaky"), 2, "acknowledged"),
        (Message::new("orders", 0, 6, "not json"), 0, "failed"),
    ];
    for (group, handler) in [
        ("generated", &generated as &dyn Handler),
        ("hand", &hand as &dyn Handler),
    ] {
        let origin = Origin::new(group);
        for (step, (message, retry_count, expected)) in script.iter().enumerate() {
            let disposition = engine
                .process(handler, message, &origin, *retry_count)
                .await
                .expect("process");
            assert_eq!(
                kind(&disposition),
                *expected,
                "{group} step {step}: {disposition:?}"
            );
        }
    }
    assert_eq!(
        generated.calls.load(Ordering::SeqCst),
        hand.calls.load(Ordering::SeqCst)
    );
    assert_eq!(
        generated.calls.load(Ordering::SeqCst),
        8,
        "of 10 deliveries, the duplicate and the undecodable payload never reach consume"
    );

    let rows_of = |group: &str| ListQuery {
        group_id: Some(group.to_owned()),
        limit: 100,
        ..ListQuery::default()
    };
    let events = |group: &'static str| {
        let store = db.store.clone();
        async move {
            let mut rows: Vec<_> = store
                .list_events(&rows_of(group))
                .await
                .expect("events")
                .into_iter()
                .map(|e| {
                    (
                        e.topic,
                        e.partition,
                        e.offset,
                        e.checksum,
                        e.entity_id,
                        e.event_time,
                        e.event_type,
                        e.event_version,
                        e.payload,
                    )
                })
                .collect();
            rows.sort();
            rows
        }
    };
    let generated_events = events("generated").await;
    assert_eq!(generated_events, events("hand").await);
    assert_eq!(generated_events.len(), 2);
    let first = &generated_events[0];
    assert_eq!(
        first.4.as_deref(),
        Some("o-1"),
        "entity_id from the extractor"
    );
    assert_eq!(first.6.as_deref(), Some("order.placed"));
    assert_eq!(first.7.as_deref(), Some("v3"));
    assert_eq!(
        first.5.map(|t| t.and_utc().to_rfc3339()).as_deref(),
        Some("2026-11-27T09:15:00+00:00")
    );

    let failures = |group: &'static str| {
        let store = db.store.clone();
        async move {
            let mut rows: Vec<_> = store
                .list_failures(&rows_of(group))
                .await
                .expect("failures")
                .into_iter()
                .map(|f| {
                    (
                        f.offset,
                        f.checksum,
                        f.entity_id,
                        f.event_time,
                        f.event_type,
                        f.event_version,
                        f.error_class,
                        f.error_message,
                        f.attempts,
                        f.payload,
                    )
                })
                .collect();
            rows.sort();
            rows
        }
    };
    let generated_failures = failures("generated").await;
    assert_eq!(generated_failures, failures("hand").await);
    assert_eq!(generated_failures.len(), 2);
    let refused = &generated_failures[0];
    assert_eq!((refused.2.as_deref(), refused.8), (Some("o-3"), 3));
    assert!(refused.6.ends_with("Refused"), "{}", refused.6);
    assert_eq!(refused.7, "order o-3 was refused");
    let undecodable = &generated_failures[1];
    assert_eq!(
        (undecodable.6.as_str(), undecodable.8),
        ("checkpoint::handler::DecodeError", 1)
    );
    assert_eq!(
        (undecodable.2.as_ref(), undecodable.4.as_ref()),
        (None, None),
        "extractors give NULL when the payload does not decode"
    );
    db.cleanup().await;
}

/// Dedups by order id rather than by payload bytes.
struct ById;

#[checkpoint_handler(name = "orders-by-id")]
impl ById {
    fn consume(&self, order: serde_json::Value) -> Outcome {
        Outcome::ack(order["id"].as_str().unwrap_or_default(), Utc::now())
    }

    #[dedup_key]
    fn dedup_key(order: &serde_json::Value) -> Option<String> {
        order["id"].as_str().map(|id| format!("order:{id}"))
    }
}

async fn a_dedup_key_dedups_by_the_extracted_key(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    assert_eq!(ById.name(), "orders-by-id");
    let origin = Origin::new("billing");
    let first = Message::new("orders", 0, 1, r#"{"id":"o-1","note":"first"}"#);
    let resent = Message::new("orders", 2, 8, r#"{"note":"resent","id":"o-1"}"#);
    let d = engine
        .process(&ById, &first, &origin, 0)
        .await
        .expect("first");
    assert_eq!(kind(&d), "acknowledged");
    let d = engine
        .process(&ById, &resent, &origin, 0)
        .await
        .expect("resent");
    assert_eq!(kind(&d), "already consumed");
    let events = db
        .store
        .list_events(&ListQuery::default())
        .await
        .expect("list");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].checksum, "order:o-1");
    db.cleanup().await;
}

/// Writes a side effect through the checkpoint transaction, then does what the payload says.
struct Shipments;

#[checkpoint_handler(transactional, max_retries = 0)]
impl Shipments {
    async fn consume(&self, token: &str, ctx: &mut Context<'_>) -> Result<Outcome, HandlerError> {
        use crate::support::handlers::side_effects;
        use diesel::prelude::*;
        ctx.tx()?
            .execute(
                diesel::insert_into(side_effects::table)
                    .values(side_effects::token.eq(token.to_owned())),
            )
            .await?;
        match token.rsplit(':').next() {
            Some("ack") => Ok(ctx.ack(token, Utc::now())),
            Some("skip") => Ok(ctx.skip()),
            _ => Err(HandlerError::msg(format!("cannot ship {token}"))),
        }
    }

    #[retry_consume]
    fn retry(_token: &str, metadata: &Metadata, _error: &HandlerError) -> bool {
        metadata.retry_count < 1
    }
}

async fn a_transactional_handler_commits_or_rolls_back_its_writes(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    assert!(Shipments.transactional());
    let origin = Origin::new("shipping");
    let ack = Message::new("orders", 0, 1, "s-1:ack");
    assert_eq!(
        kind(
            &engine
                .process(&Shipments, &ack, &origin, 0)
                .await
                .expect("ack")
        ),
        "acknowledged"
    );
    assert_eq!(
        kind(
            &engine
                .process(&Shipments, &ack, &origin, 0)
                .await
                .expect("dup")
        ),
        "already consumed"
    );
    let skip = Message::new("orders", 0, 2, "s-2:skip");
    assert_eq!(
        kind(
            &engine
                .process(&Shipments, &skip, &origin, 0)
                .await
                .expect("skip")
        ),
        "skipped"
    );
    let fail = Message::new("orders", 0, 3, "s-3:fail");
    // `#[retry_consume]` overrides max_retries = 0: one retry, then a failure.
    assert_eq!(
        kind(
            &engine
                .process(&Shipments, &fail, &origin, 0)
                .await
                .expect("fail")
        ),
        "retry"
    );
    assert_eq!(
        kind(
            &engine
                .process(&Shipments, &fail, &origin, 1)
                .await
                .expect("fail")
        ),
        "failed"
    );
    assert_eq!(db.side_effects("s-1:ack").await, 1);
    assert_eq!(
        db.total_side_effects().await,
        1,
        "skipped and failed writes were rolled back"
    );
    assert_eq!(db.event_count().await, 1);
    db.cleanup().await;
}

/// A generated transactional handler with `consume_batch`, counting the calls of each form.
#[derive(Default)]
struct Deliveries {
    batch_calls: AtomicU32,
    calls: AtomicU32,
}

#[derive(Debug, serde::Deserialize)]
struct Parcel {
    id: String,
}

#[checkpoint_handler(transactional, max_retries = 0)]
impl Deliveries {
    async fn consume(
        &self,
        parcel: Parcel,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        use crate::support::handlers::side_effects;
        use diesel::prelude::*;
        self.calls.fetch_add(1, Ordering::SeqCst);
        ctx.tx()?
            .execute(
                diesel::insert_into(side_effects::table)
                    .values(side_effects::token.eq(parcel.id.clone())),
            )
            .await?;
        Ok(ctx.ack(parcel.id, Utc::now()))
    }

    async fn consume_batch(
        &self,
        parcels: Vec<Parcel>,
        ctx: &mut BatchContext<'_>,
    ) -> Result<Vec<Outcome>, HandlerError> {
        use crate::support::handlers::side_effects;
        use diesel::prelude::*;
        self.batch_calls.fetch_add(1, Ordering::SeqCst);
        let rows: Vec<_> = parcels
            .iter()
            .map(|p| side_effects::token.eq(p.id.clone()))
            .collect();
        ctx.tx()
            .execute_owned(diesel::insert_into(side_effects::table).values(rows))
            .await?;
        Ok(parcels
            .into_iter()
            .map(|p| Outcome::ack(p.id, Utc::now()))
            .collect())
    }
}

/// The generated `consume_batch` decodes every payload for the user's fn; a payload that does
/// not decode sends the batch one by one, where that message alone fails.
async fn a_generated_batch_handler_decodes_the_batch_or_goes_one_by_one(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    let origin = Origin::new("delivery");
    let handler = Deliveries::default();
    let parcels = |payloads: &[&str], first: i64| -> Vec<Message> {
        payloads
            .iter()
            .zip(first..)
            .map(|(p, offset)| Message::new("parcels", 0, offset, *p))
            .collect()
    };
    let outcome = engine
        .process_batch(
            &handler,
            &parcels(&[r#"{"id":"p1"}"#, r#"{"id":"p2"}"#], 0),
            &origin,
            0,
        )
        .await
        .expect("batch");
    assert_eq!(
        outcome.settled.iter().map(kind).collect::<Vec<_>>(),
        ["acknowledged"; 2]
    );
    assert_eq!(handler.batch_calls.load(Ordering::SeqCst), 1);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);

    let outcome = engine
        .process_batch(
            &handler,
            &parcels(&[r#"{"id":"p3"}"#, "not json", r#"{"id":"p4"}"#], 2),
            &origin,
            0,
        )
        .await
        .expect("batch with a bad payload");
    assert_eq!(
        outcome.settled.iter().map(kind).collect::<Vec<_>>(),
        ["acknowledged", "failed", "acknowledged"]
    );
    assert_eq!(
        handler.batch_calls.load(Ordering::SeqCst),
        1,
        "the bad payload fails the generated consume_batch before the user's fn"
    );
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        2,
        "consume for p3 and p4; the bad payload fails before the user's fn"
    );
    for token in ["p1", "p2", "p3", "p4"] {
        assert_eq!(db.side_effects(token).await, 1, "{token}");
    }
    assert_eq!(db.total_side_effects().await, 4);
    assert_eq!(db.event_count().await, 4);
    db.cleanup().await;
}

on_every_backend!(
    a_generated_batch_handler_decodes_the_batch_or_goes_one_by_one,
    a_generated_handler_behaves_like_the_hand_written_one,
    a_dedup_key_dedups_by_the_extracted_key,
    a_transactional_handler_commits_or_rolls_back_its_writes,
);
