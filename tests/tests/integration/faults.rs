//! Faults a listener must get through without wedging a partition, losing a message or
//! consuming one twice: a handler that panics, values too long for the checkpoint tables, a
//! repeat after a skip in a transactional batch, a store that loses its connections after
//! `consume` ran, and a Kafka header whose name is not UTF-8.
//!
//! Every test states what a user expects. A fault that wedges a partition shows as a timeout on
//! a short clock ([`FAULT_TIMEOUT`]), not as a hang.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::TestDb;
use crate::support::kafka::{Cluster, Produced};
use checkpoint::handler::{BoxFuture, decode_json};
use checkpoint::listener::{Listener, ListenerError, ListenerSpec};
use checkpoint::prelude::*;
use checkpoint::store::{Conn, Failure, ListQuery, StoreOptions};
use checkpoint::testing::committed_offsets;
use checkpoint::{Backend, Backoff, Disposition, Engine, Origin, Store};
use checkpoint_tests::Order;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, AsyncPgConnection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a message may take to settle here: every workload is a few dozen messages.
const FAULT_TIMEOUT: Duration = Duration::from_secs(20);

const TOPIC: &str = "orders";
const GROUP: &str = "faults";

/// An entity id longer than the checkpoint tables take (255 characters).
fn overlong_entity_id() -> String {
    "e".repeat(300)
}

fn order(n: usize) -> Vec<u8> {
    format!(r#"{{"id":"order-{n}"}}"#).into_bytes()
}

/// `count` orders `{"id":"order-N"}` on partition 0.
fn orders(count: usize) -> Vec<Produced> {
    (0..count)
        .map(|n| (0, format!("key-{n}"), order(n)))
        .collect()
}

/// The one failure row a test expects.
fn the_only(failures: &[Failure]) -> &Failure {
    match failures {
        [failure] => failure,
        _ => panic!("one failure row expected: {failures:?}"),
    }
}

fn ack(id: &str) -> Result<Outcome, HandlerError> {
    Ok(Outcome::ack(id, Utc::now()))
}

type Decide = dyn Fn(&str, usize) -> Result<Outcome, HandlerError> + Send + Sync;

/// A hand-written handler of JSON orders: `decide` gets the order id and the number of calls
/// before this one, and says what `consume` returns (or panics). Records every id it consumes.
struct Orders {
    decide: Box<Decide>,
    max_retries: Option<u32>,
    transactional: bool,
    extracted_entity_id: Option<String>,
    consumed: Mutex<Vec<String>>,
}

impl Orders {
    fn new(
        decide: impl Fn(&str, usize) -> Result<Outcome, HandlerError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            decide: Box::new(decide),
            max_retries: Some(3),
            transactional: false,
            extracted_entity_id: None,
            consumed: Mutex::new(Vec::new()),
        }
    }

    fn max_retries(mut self, max: Option<u32>) -> Self {
        self.max_retries = max;
        self
    }

    fn transactional(mut self) -> Self {
        self.transactional = true;
        self
    }

    /// The `entity_id` extractor returns `id` for every message.
    fn extracting_entity_id(mut self, id: String) -> Self {
        self.extracted_entity_id = Some(id);
        self
    }

    fn consumed(&self) -> Vec<String> {
        self.consumed.lock().expect("consumed").clone()
    }
}

impl Handler for Orders {
    fn name(&self) -> &str {
        "orders"
    }

    fn max_retries(&self) -> Option<u32> {
        self.max_retries
    }

    fn transactional(&self) -> bool {
        self.transactional
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        _ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        // Decided inside the future, where a handler's own code runs (and panics).
        Box::pin(async move {
            let id = decode_json::<Order>(&message.payload)
                .map_err(HandlerError::permanent)?
                .id;
            let calls_before = {
                let mut consumed = self.consumed.lock().expect("consumed");
                consumed.push(id.clone());
                consumed.len() - 1
            };
            (self.decide)(&id, calls_before)
        })
    }

    fn entity_id(&self, _message: &Message) -> Option<String> {
        self.extracted_entity_id.clone()
    }
}

/// A listener of [`TOPIC`] (one partition) in [`GROUP`], running in a task.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ListenerError>>,
}

/// What a listener has settled so far.
#[derive(Debug, PartialEq, Eq)]
struct Settled {
    failures: i64,
    events: i64,
    /// The group's committed offset of the partition.
    committed: Option<i64>,
}

impl Settled {
    async fn now(db: &TestDb, cluster: &Cluster) -> Self {
        let committed =
            committed_offsets(&cluster.kafka(), TOPIC, GROUP, 1, Duration::from_secs(10))
                .ok()
                .and_then(|offsets| offsets.first().copied().flatten());
        Self {
            failures: failure_count(db).await,
            events: db.event_count().await,
            committed,
        }
    }
}

impl Running {
    fn start(
        cluster: &Cluster,
        handler: Arc<dyn Handler>,
        batch_size: usize,
        store: Store,
    ) -> Self {
        let mut spec = ListenerSpec::new(handler, TOPIC, GROUP)
            .batch_size(batch_size)
            .backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(50),
            ));
        spec.kafka = cluster.kafka();
        let listener = Listener::new(spec, Engine::new(store));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(listener.run(async {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Waits until the listener has stored `failures` failure rows and `events` events and
    /// committed the partition to its end; returns the failure rows. Fails at once, with how it
    /// ended, if the listener stops by itself.
    async fn wait_for(
        &mut self,
        db: &TestDb,
        cluster: &Cluster,
        failures: i64,
        events: i64,
    ) -> Vec<Failure> {
        let expected = Settled {
            failures,
            events,
            committed: cluster.high_watermarks(TOPIC, 1).first().copied(),
        };
        let started = Instant::now();
        loop {
            let seen = Settled::now(db, cluster).await;
            if seen == expected {
                return failure_rows(db).await;
            }
            if self.task.is_finished() {
                let ended = (&mut self.task).await;
                panic!(
                    "the listener stopped by itself: {ended:?}; expected {expected:?}, saw {seen:?}"
                );
            }
            if started.elapsed() >= FAULT_TIMEOUT {
                // Its consumer leaves the group while the mock broker is still there.
                let _ = tokio::time::timeout(FAULT_TIMEOUT, self.shut_down()).await;
                panic!("timed out after {FAULT_TIMEOUT:?}: expected {expected:?}, saw {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn shut_down(&mut self) -> Result<Result<(), ListenerError>, tokio::task::JoinError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await
    }

    /// Stops the listener gracefully; it must have run without error or panic.
    async fn stop(mut self) {
        self.shut_down()
            .await
            .expect("the listener did not panic")
            .expect("the listener ran without error");
    }
}

async fn failure_rows(db: &TestDb) -> Vec<Failure> {
    db.store
        .list_failures(&ListQuery {
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .expect("list failures")
}

async fn failure_count(db: &TestDb) -> i64 {
    db.store
        .count_failures(&ListQuery::default())
        .await
        .expect("count failures")
}

// A panic in `consume` is a failure of that message, not of the partition's worker.

async fn a_panic_becomes_a_failure(db: TestDb, batch_size: usize) {
    let cluster = Cluster::new(TOPIC, 1);
    cluster.produce(TOPIC, &orders(30)).await;
    let handler = Orders::new(|id, _| {
        if id == "order-7" {
            panic!("boom on order-7");
        }
        ack(id)
    })
    .max_retries(Some(3));
    let mut listener = Running::start(&cluster, Arc::new(handler), batch_size, db.store.clone());

    let failures = listener.wait_for(&db, &cluster, 1, 29).await;
    listener.stop().await;

    let failure = the_only(&failures);
    assert_eq!(failure.offset, 7);
    assert_eq!(failure.error_class, "panic");
    assert!(
        failure.error_message.contains("boom on order-7"),
        "the failure keeps the panic message: {}",
        failure.error_message
    );
    db.cleanup().await;
}

async fn a_panicking_handler_becomes_a_failure_and_the_partition_moves_on(db: TestDb) {
    a_panic_becomes_a_failure(db, 1).await;
}

async fn a_panicking_handler_in_a_batch_becomes_a_failure_and_the_partition_moves_on(db: TestDb) {
    a_panic_becomes_a_failure(db, 10).await;
}

// A value too long for the checkpoint tables fails its message, not the whole batch or the
// partition.

async fn an_overlong_entity_id_in_an_ack_becomes_a_failure_in_batch_mode(db: TestDb) {
    let cluster = Cluster::new(TOPIC, 1);
    cluster.produce(TOPIC, &orders(20)).await;
    let handler = Orders::new(|id, _| {
        if id == "order-3" {
            return Ok(Outcome::ack(overlong_entity_id(), Utc::now()));
        }
        ack(id)
    });
    let mut listener = Running::start(&cluster, Arc::new(handler), 10, db.store.clone());

    let failures = listener.wait_for(&db, &cluster, 1, 19).await;
    listener.stop().await;

    let failure = the_only(&failures);
    assert_eq!(failure.offset, 3);
    assert!(
        failure.error_message.contains("entity_id"),
        "the error names the field: {}",
        failure.error_message
    );
    assert_eq!(failure.entity_id, None);
    db.cleanup().await;
}

async fn a_failing_message_with_an_overlong_extracted_entity_id_becomes_a_failure(db: TestDb) {
    let cluster = Cluster::new(TOPIC, 1);
    cluster.produce(TOPIC, &orders(10)).await;
    let handler = Orders::new(|id, _| {
        if id == "order-3" {
            return Err(HandlerError::msg("order-3 is refused"));
        }
        ack(id)
    })
    .max_retries(Some(1))
    .extracting_entity_id(overlong_entity_id());
    let mut listener = Running::start(&cluster, Arc::new(handler), 1, db.store.clone());

    let failures = listener.wait_for(&db, &cluster, 1, 9).await;
    listener.stop().await;

    let failure = the_only(&failures);
    assert_eq!(failure.offset, 3);
    assert!(
        failure.error_message.starts_with("order-3 is refused")
            && failure.error_message.contains("entity_id"),
        "the handler's error, naming the field left out: {}",
        failure.error_message
    );
    assert_eq!(failure.attempts, 2);
    assert_eq!(
        failure.entity_id, None,
        "an entity id that does not fit is left out"
    );
    db.cleanup().await;
}

// A skipped message stores nothing, so a repeat of it is consumed again, in a batch too.

async fn a_transactional_batch_consumes_a_repeat_after_a_skip(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let handler = Orders::new(|id, calls_before| {
        if calls_before == 0 {
            return Ok(Outcome::skip());
        }
        ack(id)
    })
    .transactional();
    let messages: Vec<Message> = [order(0), order(1), order(0)]
        .into_iter()
        .zip(10..)
        .map(|(payload, offset)| Message::new(TOPIC, 0, offset, payload))
        .collect();

    let outcome = engine
        .process_batch(&handler, &messages, &Origin::new(GROUP), 0)
        .await
        .expect("batch");

    assert!(outcome.retry.is_none());
    assert!(
        matches!(
            outcome.settled.as_slice(),
            [
                Disposition::Skipped,
                Disposition::Acknowledged { .. },
                Disposition::Acknowledged { .. }
            ]
        ),
        "skipped, then acked, then the repeat consumed and acked: {:?}",
        outcome.settled
    );
    assert_eq!(handler.consumed(), ["order-0", "order-1", "order-0"]);
    let repeats = db
        .store
        .list_events(&ListQuery {
            entity_id: Some("order-0".into()),
            ..ListQuery::default()
        })
        .await
        .expect("list events");
    assert_eq!(
        repeats.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [12],
        "the repeat's key is stored once"
    );
    assert_eq!(db.event_count().await, 2);
    db.cleanup().await;
}

// Kafka header names are bytes; one that is not UTF-8 is data, not a reason to stop.

async fn a_non_utf8_header_name_is_kept_and_does_not_kill_the_listener(db: TestDb) {
    let cluster = Cluster::new(TOPIC, 1);
    cluster.produce(TOPIC, &orders(1)).await;
    cluster.produce_with_raw_header(TOPIC, 0, &order(1), b"\xffname", b"kept-value");
    cluster
        .produce(TOPIC, &[(0, "key-2".to_owned(), order(2))])
        .await;
    assert_eq!(cluster.high_watermarks(TOPIC, 1), [3], "three messages");
    let handler = Orders::new(|id, _| {
        if id == "order-1" {
            return Err(HandlerError::msg("order-1 is refused").into_permanent());
        }
        ack(id)
    });
    let mut listener = Running::start(&cluster, Arc::new(handler), 1, db.store.clone());

    let failures = listener.wait_for(&db, &cluster, 1, 2).await;
    listener.stop().await;

    let failure = the_only(&failures);
    assert_eq!(failure.offset, 1);
    assert!(
        failure.metadata.contains("kept-value"),
        "the failure keeps the header: {}",
        failure.metadata
    );
    db.cleanup().await;
}

// A rebalance is not a crash: the next owner of a partition must not count its first message
// as a delivery that died (with max_retries = 0 that would fail a healthy message).

async fn a_rebalance_is_not_taken_for_a_dead_owner(db: TestDb) {
    let cluster = Cluster::new(TOPIC, 1);
    cluster.produce(TOPIC, &orders(10)).await;
    let handler = Arc::new(Orders::new(|id, _| ack(id)).max_retries(Some(0)));
    let mut first = Running::start(&cluster, handler.clone(), 1, db.store.clone());
    first.wait_for(&db, &cluster, 0, 10).await;
    // The first listener is idle; a second one joins and the partition is handed out again.
    let second = Running::start(&cluster, handler.clone(), 1, db.store.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let more: Vec<Produced> = (10..20)
        .map(|n| (0, format!("key-{n}"), order(n)))
        .collect();
    cluster.produce(TOPIC, &more).await;
    let failures = first.wait_for(&db, &cluster, 0, 20).await;
    assert!(failures.is_empty(), "{failures:?}");
    second.stop().await;
    first.stop().await;
    db.cleanup().await;
}

// Error text is free text: a NUL in it (which PostgreSQL text refuses) must not keep the
// failure row out of the database.

async fn an_error_message_with_a_nul_is_still_recorded(db: TestDb) {
    let engine = Engine::new(db.store.clone());
    let handler =
        Orders::new(|_, _| Err(HandlerError::msg("refused: \0 in the payload").into_permanent()));
    let message = Message::new(TOPIC, 0, 7, order(7));
    let disposition = engine
        .process(&handler, &message, &Origin::new(GROUP), 0)
        .await
        .expect("settled");
    assert!(
        matches!(disposition, Disposition::Failed { .. }),
        "{disposition:?}"
    );
    let [failure] = failure_rows(&db).await.try_into().expect("one failure row");
    assert_eq!(failure.error_message, "refused: \u{FFFD} in the payload");
    db.cleanup().await;
}

on_every_backend!(
    a_rebalance_is_not_taken_for_a_dead_owner,
    an_error_message_with_a_nul_is_still_recorded,
    a_panicking_handler_becomes_a_failure_and_the_partition_moves_on,
    a_panicking_handler_in_a_batch_becomes_a_failure_and_the_partition_moves_on,
    an_overlong_entity_id_in_an_ack_becomes_a_failure_in_batch_mode,
    a_failing_message_with_an_overlong_extracted_entity_id_becomes_a_failure,
    a_transactional_batch_consumes_a_repeat_after_a_skip,
    a_non_utf8_header_name_is_kept_and_does_not_kill_the_listener,
);

// Once `consume` has run, storing its outcome is all that is left: a store that fails then
// must not get the message consumed again.

/// Connections of the store under test: few, so that every one of them is known.
const POOL: usize = 2;

/// The server sessions behind every connection of a store's pool.
#[derive(Clone)]
struct PoolSessions {
    url: String,
    backend: Backend,
    ids: Vec<i64>,
}

#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn number(conn: &mut Conn<'_>, sql: &str) -> i64 {
    let rows: Vec<Number> = conn
        .load(diesel::sql_query(sql.to_owned()))
        .await
        .expect(sql);
    rows[0].n
}

/// The SQL of [`PoolSessions::end_during_the_next_write`] on one backend.
struct EndingScript {
    block_writes: Vec<String>,
    waiting_writes: String,
    end_sessions: Vec<String>,
    live_sessions: String,
    lift_block: String,
}

impl PoolSessions {
    /// Opens all `POOL` connections of `store` at once (so each is its own session) and notes
    /// their session ids.
    async fn of(store: &Store, url: &str) -> Self {
        let backend = store.backend();
        let own_id = match backend {
            Backend::Postgres => "SELECT CAST(pg_backend_pid() AS BIGINT) AS n",
            _ => "SELECT CAST(CONNECTION_ID() AS SIGNED) AS n",
        };
        let mut pooled = Vec::with_capacity(POOL);
        for _ in 0..POOL {
            pooled.push(store.conn().await.expect("a pooled connection"));
        }
        let mut ids = Vec::with_capacity(POOL);
        for connection in &mut pooled {
            ids.push(number(&mut connection.conn(), own_id).await);
        }
        Self {
            url: url.to_owned(),
            backend,
            ids,
        }
    }

    fn script(&self) -> EndingScript {
        let ids = self
            .ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        match self.backend {
            Backend::Postgres => EndingScript {
                block_writes: vec![
                    "BEGIN".into(),
                    "LOCK TABLE checkpoint_events IN ACCESS EXCLUSIVE MODE".into(),
                ],
                waiting_writes: format!(
                    "SELECT count(*) AS n FROM pg_stat_activity \
                     WHERE pid IN ({ids}) AND wait_event_type = 'Lock'"
                ),
                end_sessions: vec![format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({ids})"
                )],
                live_sessions: format!(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE pid IN ({ids})"
                ),
                lift_block: "COMMIT".into(),
            },
            _ => EndingScript {
                block_writes: vec!["LOCK TABLES checkpoint_events WRITE".into()],
                waiting_writes: format!(
                    "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
                     WHERE ID IN ({ids}) AND STATE LIKE 'Waiting for table%'"
                ),
                end_sessions: self
                    .ids
                    .iter()
                    .map(|id| format!("KILL CONNECTION {id}"))
                    .collect(),
                live_sessions: format!(
                    "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE ID IN ({ids})"
                ),
                lift_block: "UNLOCK TABLES".into(),
            },
        }
    }

    /// Blocks writes to the events table; once a session of the pool waits on that block,
    /// ends every session of the pool, as a database restart would, then lifts the block.
    /// Returns once writes are blocked; the rest runs in the background.
    async fn end_during_the_next_write(&self) {
        let (blocked, writes_blocked) = oneshot::channel();
        tokio::spawn(self.clone().block_then_end(blocked));
        writes_blocked.await.expect("writes blocked");
    }

    async fn block_then_end(self, blocked: oneshot::Sender<()>) {
        match self.backend {
            Backend::Postgres => {
                let mut locker = AsyncPgConnection::establish(&self.url)
                    .await
                    .expect("locker");
                let mut watcher = AsyncPgConnection::establish(&self.url)
                    .await
                    .expect("watcher");
                self.block_then_end_from(
                    Conn::from(&mut locker),
                    Conn::from(&mut watcher),
                    blocked,
                )
                .await;
            }
            _ => {
                let mut locker = AsyncMysqlConnection::establish(&self.url)
                    .await
                    .expect("locker");
                let mut watcher = AsyncMysqlConnection::establish(&self.url)
                    .await
                    .expect("watcher");
                self.block_then_end_from(
                    Conn::from(&mut locker),
                    Conn::from(&mut watcher),
                    blocked,
                )
                .await;
            }
        }
    }

    /// `locker` holds the block; `watcher` watches the sessions and ends them.
    async fn block_then_end_from(
        &self,
        mut locker: Conn<'_>,
        mut watcher: Conn<'_>,
        blocked: oneshot::Sender<()>,
    ) {
        let script = self.script();
        for statement in &script.block_writes {
            locker.batch_execute(statement).await.expect(statement);
        }
        let _ = blocked.send(());
        while number(&mut watcher, &script.waiting_writes).await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for statement in &script.end_sessions {
            watcher.batch_execute(statement).await.expect(statement);
        }
        // The server ends a session asynchronously.
        while number(&mut watcher, &script.live_sessions).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        locker
            .batch_execute(&script.lift_block)
            .await
            .expect(&script.lift_block);
    }
}

/// Acks every order; in its first call, before acking, arranges for every session of the
/// store the listener uses to end while that ack is being stored.
struct EndsTheStoreSessionsOnce {
    sessions: PoolSessions,
    orders: Orders,
}

impl Handler for EndsTheStoreSessionsOnce {
    fn name(&self) -> &str {
        "ends-the-store-sessions-once"
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            if self.orders.consumed().is_empty() {
                self.sessions.end_during_the_next_write().await;
            }
            self.orders.consume(message, ctx).await
        })
    }
}

async fn a_store_error_after_consume_does_not_run_consume_again(db: TestDb) {
    let store = Store::connect_with(
        &db.url,
        &StoreOptions {
            max_connections: POOL,
        },
    )
    .expect("store");
    let sessions = PoolSessions::of(&store, &db.url).await;
    let cluster = Cluster::new(TOPIC, 1);
    cluster.produce(TOPIC, &orders(3)).await;
    let handler = Arc::new(EndsTheStoreSessionsOnce {
        sessions,
        orders: Orders::new(|id, _| ack(id)),
    });
    let mut listener = Running::start(&cluster, handler.clone(), 1, store);

    listener.wait_for(&db, &cluster, 0, 3).await;
    listener.stop().await;

    assert_eq!(
        handler.orders.consumed(),
        ["order-0", "order-1", "order-2"],
        "order-0 is consumed once, though storing its event failed at first"
    );
    db.cleanup().await;
}

/// On the server backends only: the way to make the SQLite store fail is a lock held by another
/// connection, and the store waits for that up to its 30 s busy timeout without an error.
mod a_store_error_after_consume_does_not_run_consume_again {
    use crate::support::TestDb;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(db) = TestDb::postgres().await {
            super::a_store_error_after_consume_does_not_run_consume_again(db).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        if let Some(db) = TestDb::mysql().await {
            super::a_store_error_after_consume_does_not_run_consume_again(db).await;
        }
    }
}

/// A handler whose first call announces that it is inside `consume`, then sleeps before it
/// returns; it records whether its call ran to its end or was dropped at the await.
struct InsideConsume {
    entered: tokio::sync::Notify,
    finished: std::sync::atomic::AtomicBool,
    cancelled: Arc<std::sync::atomic::AtomicBool>,
}

/// Sets `cancelled` when dropped before `disarm`.
struct CancelGuard(Option<Arc<std::sync::atomic::AtomicBool>>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(cancelled) = self.0.take() {
            cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Handler for InsideConsume {
    fn name(&self) -> &str {
        "inside-consume"
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        _ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            let mut guard = CancelGuard(Some(Arc::clone(&self.cancelled)));
            self.entered.notify_one();
            tokio::time::sleep(Duration::from_millis(500)).await;
            guard.0 = None;
            self.finished
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let id = String::from_utf8_lossy(&message.payload).into_owned();
            ack(&id)
        })
    }
}

/// The caller of `Listener::run` may stop waiting for it (a `select!`, a timeout): dropping
/// its future must not cancel a handler inside `consume` at its await. The call in hand runs to
/// its end and its message settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_running_listener_does_not_cancel_consume() {
    let db = TestDb::sqlite().await;
    let cluster = Cluster::new(TOPIC, 1);
    cluster.produce(TOPIC, &orders(1)).await;
    let handler = Arc::new(InsideConsume {
        entered: tokio::sync::Notify::new(),
        finished: std::sync::atomic::AtomicBool::new(false),
        cancelled: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    });
    let mut spec = ListenerSpec::new(Arc::clone(&handler) as Arc<dyn Handler>, TOPIC, GROUP);
    spec.kafka = cluster.kafka();
    let listener = Listener::new(spec, Engine::new(db.store.clone()));
    let run = listener.run(std::future::pending::<()>());
    tokio::select! {
        ended = run => panic!("the listener ended by itself: {ended:?}"),
        () = handler.entered.notified() => {}
    }
    // `run` is dropped now, with `consume` at its await.
    let started = Instant::now();
    while db.event_count().await < 1 && started.elapsed() < FAULT_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !handler.cancelled.load(std::sync::atomic::Ordering::SeqCst),
        "consume was cancelled at its await when the listener's future was dropped"
    );
    assert!(handler.finished.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(db.event_count().await, 1, "the message in hand settled");
    db.cleanup().await;
}

/// A client that asks for a retry and hangs up while `consume` runs (a browser tab closed, a
/// proxy timeout) must not cancel `consume` at its await: the retry runs to its end, and the
/// failure it settled is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_does_not_cancel_a_retry() {
    use checkpoint::api::{self, ApiState, Handlers};
    use checkpoint::store::NewFailure;
    use tokio::io::AsyncWriteExt as _;

    let db = TestDb::sqlite().await;
    let id = db
        .store
        .record_failure(&NewFailure {
            created_at: None,
            topic: TOPIC,
            group_id: GROUP,
            partition: 0,
            offset: 0,
            key: None,
            checksum: "o-hangup",
            entity_id: None,
            event_time: None,
            event_type: None,
            event_version: None,
            payload: b"o-hangup",
            metadata: "{}",
            error_class: "app::Boom",
            error_message: "boom",
            error_backtrace: "[]",
            attempts: 1,
        })
        .await
        .expect("a failure row");
    let handler = Arc::new(InsideConsume {
        entered: tokio::sync::Notify::new(),
        finished: std::sync::atomic::AtomicBool::new(false),
        cancelled: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    });
    let handlers = Handlers::new().register(TOPIC, GROUP, Arc::clone(&handler) as Arc<dyn Handler>);
    let router = api::router(ApiState::new(Engine::new(db.store.clone())).handlers(handlers));
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(socket, router, async move {
        let _ = stopped.await;
    }));

    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST /v1/failures/{id}/retry HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\n\r\n"
    );
    client
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    tokio::time::timeout(FAULT_TIMEOUT, handler.entered.notified())
        .await
        .expect("consume was called");
    // The client hangs up with `consume` at its await.
    drop(client);
    let started = Instant::now();
    while db.store.get_failure(id).await.expect("read").is_some()
        && started.elapsed() < FAULT_TIMEOUT
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !handler.cancelled.load(std::sync::atomic::Ordering::SeqCst),
        "consume was cancelled at its await when the client hung up"
    );
    assert!(handler.finished.load(std::sync::atomic::Ordering::SeqCst));
    assert!(
        db.store.get_failure(id).await.expect("read").is_none(),
        "the retried failure settled and was deleted"
    );
    assert_eq!(db.event_count().await, 1, "the retry stored its event");
    let _ = stop.send(());
    let _ = server.await;
    db.cleanup().await;
}
