//! Batch mode through the engine on every backend: one duplicate check and one insert (or one
//! claim) for many messages, outcomes per message.

use crate::support::TestDb;
use crate::support::handlers::{BatchStep, Scripted, Step, event_time};
use checkpoint::handler::BoxFuture;
use checkpoint::prelude::*;
use checkpoint::store::ListQuery;
use checkpoint::{Disposition, Engine, Origin};

fn kinds(settled: &[Disposition]) -> Vec<&'static str> {
    settled
        .iter()
        .map(|d| match d {
            Disposition::Acknowledged { inserted: true } => "ack",
            Disposition::Acknowledged { inserted: false } => "ack (already stored)",
            Disposition::Skipped => "skip",
            Disposition::AlreadyConsumed => "duplicate",
            Disposition::Failed { .. } => "failed",
            _ => "other",
        })
        .collect()
}

fn batch(payloads: &[&str]) -> Vec<Message> {
    batch_of("orders", payloads)
}

fn batch_of(topic: &str, payloads: &[&str]) -> Vec<Message> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Message::new(topic, 0, i64::try_from(i).expect("small") + 10, *p))
        .collect()
}

/// Stores the event "old" for `origin`'s group before a batch runs.
async fn store_old(engine: &Engine, origin: &Origin) {
    engine
        .process(
            &Scripted::new(Step::Ack),
            &Message::new("orders", 0, 1, "old"),
            origin,
            0,
        )
        .await
        .expect("old");
}

async fn outcomes_are_per_message(db: TestDb, transactional: bool) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    let origin = Origin::new("billing");
    let mut handler = Scripted::new(Step::Ack)
        .script(&[
            Step::Ack,
            Step::Skip,
            Step::FailPermanent,
            Step::Ack,
            Step::Ack,
        ])
        .max_retries(Some(0));
    if transactional {
        handler = handler.transactional();
    }
    store_old(&engine, &origin).await;
    let messages = batch(&["a", "b", "old", "c", "a", "d", "e"]);
    let outcome = engine
        .process_batch(&handler, &messages, &origin, 0)
        .await
        .expect("batch");
    assert!(outcome.retry.is_none());
    assert_eq!(
        kinds(&outcome.settled),
        [
            "ack",
            "skip",
            "duplicate",
            "failed",
            "duplicate",
            "ack",
            "ack"
        ]
    );
    assert_eq!(
        handler.calls(),
        5,
        "duplicates, stored or within the batch, are not consumed"
    );
    assert_eq!(db.event_count().await, 4, "old, a, d, e");
    let events = db
        .store
        .list_events(&ListQuery::default())
        .await
        .expect("events");
    type Fields = (
        i64,
        Option<String>,
        Option<chrono::NaiveDateTime>,
        Option<String>,
    );
    let mut stored: Vec<Fields> = events
        .iter()
        .filter(|e| e.offset >= 10)
        .map(|e| {
            let kind = e.event_type.clone();
            (e.offset, e.entity_id.clone(), e.event_time, kind)
        })
        .collect();
    stored.sort();
    let at = Some(event_time().naive_utc());
    assert_eq!(
        stored,
        [10, 15, 16].map(|offset| (
            offset,
            Some(format!("entity-{offset}")),
            at,
            Some("created".to_owned())
        )),
        "each acked event is stored once, with its ack's fields"
    );
    assert_eq!(
        db.store
            .count_failures(&Default::default())
            .await
            .expect("count"),
        1
    );
    if transactional {
        assert_eq!(
            db.total_side_effects().await,
            3,
            "the skipped and failed messages' writes are rolled back"
        );
        for token in ["a", "d", "e"] {
            assert_eq!(db.side_effects(token).await, 1, "{token}");
        }
    }
    db.cleanup().await;
}

/// A transactional handler that panics inside a transaction of its own leaves diesel's
/// transaction manager one level deep; the panic must still end as a failure row, with the
/// rest of the batch committed and nothing of the panicking message kept. A handler that acks
/// with its own transaction still open fails for good, in both modes.
async fn a_panic_inside_the_handlers_own_transaction_fails_only_its_message(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    let origin = Origin::new("billing");
    let handler = Scripted::new(Step::Ack)
        .script(&[Step::Ack, Step::PanicInOwnTransaction, Step::Ack])
        .max_retries(Some(0))
        .transactional();
    let outcome = engine
        .process_batch(&handler, &batch(&["a", "b", "c"]), &origin, 0)
        .await
        .expect("batch");
    assert_eq!(kinds(&outcome.settled), ["ack", "failed", "ack"]);
    assert_eq!(db.event_count().await, 2, "a and c are stored");
    for (token, count) in [("a", 1), ("b", 0), ("b-inner", 0), ("c", 1)] {
        assert_eq!(db.side_effects(token).await, count, "{token}");
    }
    let failures = db
        .store
        .list_failures(&ListQuery::default())
        .await
        .expect("failures");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].offset, 11, "b failed");
    // One message on its own, in transactional mode: the same.
    let outcome = engine
        .process(
            &Scripted::new(Step::PanicInOwnTransaction)
                .max_retries(Some(0))
                .transactional(),
            &Message::new("orders", 0, 20, "d"),
            &origin,
            0,
        )
        .await
        .expect("single");
    assert_eq!(kinds(&[outcome]), ["failed"]);
    assert_eq!(db.event_count().await, 2);
    assert_eq!(
        db.side_effects("d").await + db.side_effects("d-inner").await,
        0
    );
    // Acking with a transaction of its own still open fails the message for good (retries
    // allowed, none made), and nothing it wrote is kept.
    let leaves_open = Scripted::new(Step::AckLeavingOwnTransactionOpen)
        .max_retries(Some(3))
        .transactional();
    for (offset, token) in [(21, "e"), (22, "f")] {
        let message = Message::new("orders", 0, offset, token);
        let outcome = if offset == 21 {
            engine.process(&leaves_open, &message, &origin, 0).await
        } else {
            engine
                .process_batch(&leaves_open, std::slice::from_ref(&message), &origin, 0)
                .await
                .map(|batch| batch.settled.into_iter().next().expect("settled"))
        };
        match outcome.expect(token) {
            Disposition::Failed { error, .. } => {
                assert_eq!(error.class(), "transaction_left_open", "{token}");
            }
            other => panic!("{token}: {other:?}"),
        }
        let inner = format!("{token}-inner");
        assert_eq!(
            db.side_effects(token).await + db.side_effects(&inner).await,
            0
        );
    }
    assert_eq!(leaves_open.calls(), 2, "no retry of a permanent error");
    assert_eq!(db.event_count().await, 2);
    db.cleanup().await;
}

async fn per_message_batches(db: TestDb) {
    outcomes_are_per_message(db, false).await;
}

async fn transactional_batches(db: TestDb) {
    outcomes_are_per_message(db, true).await;
}

async fn a_retryable_failure_ends_the_batch_after_what_came_before(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    for transactional in [false, true] {
        let group = if transactional { "tx" } else { "plain" };
        let origin = Origin::new(group);
        let mut handler = Scripted::new(Step::Ack)
            .script(&[Step::Ack, Step::Fail])
            .max_retries(Some(3));
        if transactional {
            handler = handler.transactional();
        }
        let messages = batch(&[
            &format!("{group}-1"),
            &format!("{group}-2"),
            &format!("{group}-3"),
        ]);
        let outcome = engine
            .process_batch(&handler, &messages, &origin, 0)
            .await
            .expect("batch");
        assert_eq!(kinds(&outcome.settled), ["ack"], "{group}");
        assert!(outcome.retry.is_some(), "{group}");
        // The caller retries from the failing message: it now succeeds, and the rest follows.
        let outcome = engine
            .process_batch(&handler, &messages[1..], &origin, 1)
            .await
            .expect("retry");
        assert_eq!(kinds(&outcome.settled), ["ack", "ack"], "{group}");
        assert_eq!(handler.retry_counts(), [0, 0, 1, 0], "{group}");
    }
    assert_eq!(db.event_count().await, 6);
    assert_eq!(
        db.total_side_effects().await,
        3,
        "transactional: the failed attempt's write vanished"
    );
    db.cleanup().await;
}

/// Consecutive batches: the duplicate check of the next batch runs while this one is
/// processed, and still counts what this one stores after the check.
async fn the_next_batch_is_checked_while_this_one_runs(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    for transactional in [false, true] {
        let group = if transactional { "tx" } else { "plain" };
        let origin = Origin::new(group);
        store_old(&engine, &origin).await;
        // Slow enough that the next batch's check is done before "a" is stored.
        let mut handler = Scripted::new(Step::Ack)
            .script(&[Step::Ack, Step::Skip])
            .with_delay(std::time::Duration::from_millis(150));
        if transactional {
            handler = handler.transactional();
        }
        let first = batch(&["a", "s"]);
        let next: Vec<Message> = ["a", "old", "s", "n"]
            .iter()
            .zip(20..)
            .map(|(p, offset)| Message::new("orders", 0, offset, *p))
            .collect();
        let outcome = engine
            .process_batch_checked(&handler, &first, &origin, 0, None, &next)
            .await
            .expect("first batch");
        assert_eq!(kinds(&outcome.settled), ["ack", "skip"], "{group}");
        let checked = outcome.next_checked.expect("the next batch was checked");
        let outcome = engine
            .process_batch_checked(&handler, &next, &origin, 0, Some(checked), &[])
            .await
            .expect("next batch");
        assert_eq!(
            kinds(&outcome.settled),
            ["duplicate", "duplicate", "ack", "ack"],
            "{group}: \"a\" was stored after the check, \"s\" was skipped, not stored"
        );
        assert!(outcome.next_checked.is_none(), "{group}: no next batch");
        assert_eq!(handler.calls(), 4, "{group}: a, s, s, n");
    }
    assert_eq!(db.event_count().await, 8, "old, a, s, n in each group");
    assert_eq!(
        db.total_side_effects().await,
        3,
        "transactional: a, s (acked the second time), n"
    );

    // A batch that ends in a retry hands no check on: the messages after the failing one may
    // still store keys the check does not know.
    let origin = Origin::new("retry");
    let handler = Scripted::new(Step::Ack)
        .script(&[Step::Fail])
        .max_retries(Some(3));
    let outcome = engine
        .process_batch_checked(
            &handler,
            &batch(&["r1", "r2"]),
            &origin,
            0,
            None,
            &batch(&["r2"]),
        )
        .await
        .expect("batch");
    assert!(outcome.retry.is_some());
    assert!(outcome.next_checked.is_none());
    db.cleanup().await;
}

/// A transactional handler with `consume_batch` gets the batch's new messages in one call;
/// its rows and the events commit together, each once, with the ack's fields.
async fn a_batch_handler_takes_the_new_messages_in_one_call(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    let origin = Origin::new("billing");
    let handler = Scripted::new(Step::Ack)
        .transactional()
        .batched(BatchStep::Ack, &[]);
    store_old(&engine, &origin).await;
    let messages = batch(&["a", "b", "old", "c"]);
    let outcome = engine
        .process_batch(&handler, &messages, &origin, 0)
        .await
        .expect("batch");
    assert!(outcome.retry.is_none());
    assert_eq!(kinds(&outcome.settled), ["ack", "ack", "duplicate", "ack"]);
    assert_eq!(
        handler.batch_sizes(),
        [3],
        "one call with the messages not stored yet"
    );
    assert_eq!(handler.calls(), 0, "consume did not run");
    for token in ["a", "b", "c"] {
        assert_eq!(db.side_effects(token).await, 1, "{token}");
    }
    let events = db
        .store
        .list_events(&ListQuery::default())
        .await
        .expect("events");
    let mut stored: Vec<(i64, Option<String>, Option<String>)> = events
        .iter()
        .filter(|e| e.offset >= 10)
        .map(|e| (e.offset, e.entity_id.clone(), e.event_version.clone()))
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        [10, 11, 13].map(|offset| (offset, Some(format!("entity-{offset}")), Some("v1".into())))
    );

    // Redelivered: everything is a duplicate, and consume_batch is not called.
    let again = engine
        .process_batch(&handler, &messages, &origin, 0)
        .await
        .expect("again");
    assert_eq!(kinds(&again.settled), ["duplicate"; 4]);
    assert_eq!(handler.batch_sizes(), [3]);

    // A key twice in one batch: one by one, so that a skipped first one is consumed again.
    let origin = Origin::new("repeats");
    let handler = Scripted::new(Step::Ack)
        .transactional()
        .batched(BatchStep::Ack, &[]);
    let outcome = engine
        .process_batch(&handler, &batch_of("repeats", &["r", "s", "r"]), &origin, 0)
        .await
        .expect("repeats");
    assert_eq!(kinds(&outcome.settled), ["ack", "ack", "duplicate"]);
    assert!(handler.batch_sizes().is_empty());
    assert_eq!(handler.calls(), 2);
    db.cleanup().await;
}

/// Every way a `consume_batch` result is not kept (an error, a skip, a panic, a wrong
/// number of outcomes, an ack that does not fit, a transaction of its own left open) rolls
/// back what it wrote; the messages then go through `consume`, with the outcome each one
/// gives there, and every write of theirs is kept exactly once.
async fn a_batch_result_that_is_not_kept_goes_one_message_at_a_time(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    for step in [
        BatchStep::Fail,
        BatchStep::SkipLast,
        BatchStep::Panic,
        BatchStep::WrongCount,
        BatchStep::OverLongAck,
        BatchStep::AckLeavingOwnTransactionOpen,
    ] {
        let topic = format!("{step:?}");
        let origin = Origin::new("billing");
        let handler = Scripted::new(Step::Ack)
            .transactional()
            .max_retries(Some(0))
            .script(&[Step::Ack, Step::Skip, Step::FailPermanent, Step::Ack])
            .batched(BatchStep::Ack, &[step]);
        let tokens = ["a", "b", "c", "d"].map(|t| format!("{topic}-{t}"));
        let payloads: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let outcome = engine
            .process_batch(&handler, &batch_of(&topic, &payloads), &origin, 0)
            .await
            .expect("batch");
        assert!(outcome.retry.is_none(), "{step:?}");
        assert_eq!(
            kinds(&outcome.settled),
            ["ack", "skip", "failed", "ack"],
            "{step:?}: each message as consume decided"
        );
        assert_eq!(handler.batch_sizes(), [4], "{step:?}");
        assert_eq!(handler.calls(), 4, "{step:?}");
        let effects: Vec<i64> =
            futures_util::future::join_all(tokens.iter().map(|t| db.side_effects(t))).await;
        assert_eq!(
            effects,
            [1, 0, 0, 1],
            "{step:?}: the batch call's writes are gone, consume's acked ones kept once"
        );
        assert_eq!(db.side_effects("batch-inner").await, 0, "{step:?}");

        // The next batch is taken whole again.
        let next = [format!("{topic}-e")];
        let outcome = engine
            .process_batch(&handler, &batch_of(&topic, &[next[0].as_str()]), &origin, 0)
            .await
            .expect("next batch");
        assert_eq!(kinds(&outcome.settled), ["ack"], "{step:?}");
        assert_eq!(handler.batch_sizes(), [4, 1], "{step:?}");
        assert_eq!(db.side_effects(&next[0]).await, 1, "{step:?}");
    }
    assert_eq!(
        db.store
            .count_failures(&Default::default())
            .await
            .expect("count"),
        6,
        "one failure row per round: the message consume failed"
    );
    db.cleanup().await;
}

/// `consume_batch` runs before anything is claimed: a key another consumer stores after the
/// duplicate check makes the batch's insert skip it, and then nothing of the call is kept.
/// The messages go one by one: that key is a duplicate, and only the others are written.
async fn a_key_stored_meanwhile_undoes_the_batch_call(db: TestDb) {
    db.create_side_effects_table().await;
    let engine = Engine::new(db.store.clone());
    let origin = Origin::new("billing");
    let handler = Scripted::new(Step::Ack)
        .transactional()
        .batched(BatchStep::Ack, &[]);
    let first = batch(&["f"]);
    let next: Vec<Message> = ["x", "y"]
        .iter()
        .zip(20..)
        .map(|(p, offset)| Message::new("orders", 0, offset, *p))
        .collect();
    let outcome = engine
        .process_batch_checked(&handler, &first, &origin, 0, None, &next)
        .await
        .expect("first batch");
    let checked = outcome.next_checked.expect("the next batch was checked");
    // Another consumer stores "x" after the check.
    engine
        .process(
            &Scripted::new(Step::Ack),
            &Message::new("orders", 0, 5, "x"),
            &origin,
            0,
        )
        .await
        .expect("x stored elsewhere");
    let outcome = engine
        .process_batch_checked(&handler, &next, &origin, 0, Some(checked), &[])
        .await
        .expect("next batch");
    assert_eq!(kinds(&outcome.settled), ["duplicate", "ack"]);
    assert_eq!(
        handler.batch_sizes(),
        [1, 2],
        "the check did not know \"x\", so it was in the call"
    );
    assert_eq!(handler.calls(), 1, "consume for \"y\" alone");
    assert_eq!(
        db.side_effects("x").await,
        0,
        "the call's write of \"x\" was rolled back"
    );
    assert_eq!(db.side_effects("y").await, 1);
    assert_eq!(db.event_count().await, 3, "f, x, y");
    db.cleanup().await;
}

/// A hand-written transactional handler whose `consume` and `consume_batch` panic on the
/// payload `boom` themselves, before they make the future they return.
struct EagerPanic;

impl Handler for EagerPanic {
    fn name(&self) -> &str {
        "eager-panic"
    }

    fn max_retries(&self) -> Option<u32> {
        Some(0)
    }

    fn transactional(&self) -> bool {
        true
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        _ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        assert!(message.payload != b"boom", "boom before the future");
        Box::pin(async move { Ok(Outcome::ack("eager", event_time())) })
    }

    fn consume_batch<'a>(
        &'a self,
        ctx: &'a mut BatchContext<'_>,
    ) -> Option<BoxFuture<'a, Result<Vec<Outcome>, HandlerError>>> {
        let batch = ctx.deliveries();
        assert!(
            batch.iter().all(|d| d.message.payload != b"boom"),
            "boom before the batch future"
        );
        Some(Box::pin(async move {
            Ok(batch
                .iter()
                .map(|_| Outcome::ack("eager", event_time()))
                .collect())
        }))
    }
}

/// A panic while `consume` or `consume_batch` makes its future is caught like one inside it:
/// the batch goes one by one and only the panicking message fails.
async fn a_panic_before_the_future_exists_fails_only_its_message(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let origin = Origin::new("eager");
    let outcome = engine
        .process_batch(&EagerPanic, &batch(&["x", "boom", "y"]), &origin, 0)
        .await
        .expect("batch");
    assert_eq!(kinds(&outcome.settled), ["ack", "failed", "ack"]);
    let Some(Disposition::Failed { error, .. }) = outcome.settled.get(1) else {
        panic!("the second message failed: {:?}", outcome.settled);
    };
    assert_eq!(error.class(), "panic");
    assert!(
        error.message().contains("boom before the future"),
        "{error}"
    );
    let outcome = engine
        .process_batch(&EagerPanic, &batch(&["z1", "z2"]), &origin, 0)
        .await
        .expect("a clean batch");
    assert_eq!(kinds(&outcome.settled), ["ack", "ack"]);
    db.cleanup().await;
}

on_every_backend!(
    a_key_stored_meanwhile_undoes_the_batch_call,
    a_panic_before_the_future_exists_fails_only_its_message,
    a_batch_handler_takes_the_new_messages_in_one_call,
    a_batch_result_that_is_not_kept_goes_one_message_at_a_time,
    per_message_batches,
    transactional_batches,
    a_panic_inside_the_handlers_own_transaction_fails_only_its_message,
    a_retryable_failure_ends_the_batch_after_what_came_before,
    the_next_batch_is_checked_while_this_one_runs,
);
