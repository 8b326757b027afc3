//! Kafka listeners: consume a topic in a consumer group and take every message through the
//! [`Engine`], committing an offset only after that message's event or failure row is durable.
//!
//! - Messages of one partition are handled in order, by one worker task per assigned
//!   partition; partitions run concurrently, at most `max_concurrency` at a time.
//! - A failing message is retried with exponential backoff and jitter while the consumer keeps
//!   polling: the partition's worker waits, its queue fills, and the partition is paused at a
//!   high-water mark and resumed at a low one, so the group never sees a stalled member. A
//!   partition that is merely busy is not paused (librdkafka would drop and refetch what it
//!   prefetched): the receive loop waits for its worker instead.
//! - Offsets are *stored* after a message settles (`enable.auto.offset.store=false`) and
//!   committed asynchronously in batches (`enable.auto.commit`, 1 s by default); synchronously
//!   on partition revoke and on shutdown.
//! - A database outage is waited out with backoff and logged; nothing is skipped because of it.
//! - Shutdown: stop fetching, let every worker finish the message in hand, commit, leave the
//!   group.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::engine::{Backoff, CheckedAhead, Disposition, Engine};
use crate::handler::Handler;
use crate::message::{Header, Message, Origin};

/// Queued messages of one partition above which the partition is paused.
const PAUSE_AT: usize = 2_000;
/// Queued messages below which a paused partition is resumed.
const RESUME_AT: usize = 500;
/// Longest time the receive loop waits for a busy partition's worker before pausing the
/// partition and polling again.
const HOLD_BACK_MAX: Duration = Duration::from_secs(1);
/// Queued messages of a partition whose duplicate check is done in one query (per-message
/// mode).
const CHECK_AHEAD: usize = 500;
/// Batches a partition's worker takes in one turn (batch mode) when enough are queued: the
/// duplicate check of each next batch overlaps the database work of the one before.
const TURN_BATCHES: usize = 4;

/// What a listener consumes and how.
#[derive(Clone)]
pub struct ListenerSpec {
    /// The handler every message goes to.
    pub handler: Arc<dyn Handler>,
    /// Topic to subscribe to.
    pub topic: String,
    /// Consumer group.
    pub group_id: String,
    /// Listener identifier, unique within the process (defaults to `group_id/topic`).
    pub listener_id: String,
    /// Partitions handled at the same time (at least 1).
    pub max_concurrency: usize,
    /// Start from the earliest offset when the group has no committed offset (else latest).
    pub start_from_beginning: bool,
    /// Backoff between retries of a failing message.
    pub backoff: Backoff,
    /// Messages taken through the engine together (1 = per message); see
    /// [`Engine::process_batch`].
    pub batch_size: usize,
    /// librdkafka properties (`bootstrap.servers`, …), passed through verbatim.
    pub kafka: BTreeMap<String, String>,
}

impl std::fmt::Debug for ListenerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSpec")
            .field("handler", &self.handler.name())
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("listener_id", &self.listener_id)
            .field("max_concurrency", &self.max_concurrency)
            .field("start_from_beginning", &self.start_from_beginning)
            .field("backoff", &self.backoff)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl ListenerSpec {
    /// A listener of `topic` in `group_id` for `handler`, with one partition at a time, from
    /// the beginning, and a 1 s – 60 s backoff.
    pub fn new(
        handler: Arc<dyn Handler>,
        topic: impl Into<String>,
        group_id: impl Into<String>,
    ) -> Self {
        let topic = topic.into();
        let group_id = group_id.into();
        Self {
            handler,
            listener_id: format!("{group_id}/{topic}"),
            topic,
            group_id,
            max_concurrency: 1,
            start_from_beginning: true,
            backoff: Backoff::default(),
            batch_size: 1,
            kafka: BTreeMap::new(),
        }
    }

    /// Sets a librdkafka property.
    pub fn kafka(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.kafka.insert(key.into(), value.into());
        self
    }

    /// Sets the backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets how many messages of a partition are processed as one batch (at least 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// Sets how many partitions are handled at once.
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = max.max(1);
        self
    }

    /// Sets the listener id.
    pub fn listener_id(mut self, id: impl Into<String>) -> Self {
        self.listener_id = id.into();
        self
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        // Defaults a user may override…
        config
            .set("auto.commit.interval.ms", "1000")
            .set("fetch.wait.max.ms", "100")
            .set("fetch.queue.backoff.ms", "10")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (key, value) in &self.kafka {
            config.set(key, value);
        }
        // …and what exactly-once depends on, which they may not.
        config
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if self.start_from_beginning {
                    "earliest"
                } else {
                    "latest"
                },
            );
        config
    }
}

/// Counters of one listener, readable while it runs.
#[derive(Debug, Default)]
pub struct ListenerStats {
    received: AtomicU64,
    acknowledged: AtomicU64,
    skipped: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
}

/// A snapshot of [`ListenerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Messages received from Kafka.
    pub received: u64,
    /// Messages acknowledged (event stored).
    pub acknowledged: u64,
    /// Messages the handler skipped.
    pub skipped: u64,
    /// Duplicates of stored events (consume not called).
    pub duplicates: u64,
    /// Messages recorded as failures.
    pub failed: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
}

impl StatsSnapshot {
    /// Messages settled: acknowledged, skipped, duplicates and failures.
    pub fn settled(&self) -> u64 {
        self.acknowledged + self.skipped + self.duplicates + self.failed
    }
}

impl ListenerStats {
    /// Current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    fn count(&self, disposition: &Disposition) {
        let counter = match disposition {
            Disposition::Acknowledged { inserted: true } => &self.acknowledged,
            // A concurrent delivery of the same payload stored it first.
            Disposition::Acknowledged { inserted: false } => &self.duplicates,
            Disposition::Skipped => &self.skipped,
            Disposition::AlreadyConsumed => &self.duplicates,
            Disposition::Failed { .. } => &self.failed,
            Disposition::Retry(_) => &self.retries,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// An error that stops a listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// The Kafka consumer could not be created or could not subscribe.
    #[error("listener `{listener_id}`: {source}")]
    Kafka {
        /// The listener.
        listener_id: String,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
}

/// Revocation flags shared between the rebalance callback and the partition workers.
#[derive(Default)]
struct Assignment {
    revoked: Mutex<HashMap<i32, Arc<AtomicBool>>>,
}

impl Assignment {
    /// The flag of a freshly assigned partition (a new one if the last was revoked).
    fn flag(&self, partition: i32) -> Arc<AtomicBool> {
        let mut flags = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        let flag = flags.entry(partition).or_default();
        if flag.load(Ordering::SeqCst) {
            *flag = Arc::default();
        }
        Arc::clone(flag)
    }

    fn revoke(&self, partitions: &TopicPartitionList) {
        let flags = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        for element in partitions.elements() {
            if let Some(flag) = flags.get(&element.partition()) {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }
}

struct ListenerContext {
    listener_id: String,
    /// `partition.assignment.strategy` is cooperative: (un)assign incrementally.
    cooperative: bool,
    assignment: Arc<Assignment>,
}

impl ClientContext for ListenerContext {}

impl ConsumerContext for ListenerContext {
    /// rdkafka's default asks librdkafka for the rebalance protocol from inside the callback,
    /// which deadlocks when the callback runs while a consumer is dropped with partitions still
    /// assigned (a crash in-process). The protocol is known from the configuration instead.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let event = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(partitions),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        self.pre_rebalance(consumer, &event);
        let result = match (&event, self.cooperative) {
            (Rebalance::Assign(list), true) => consumer.incremental_assign(list),
            (Rebalance::Assign(list), false) => consumer.assign(list),
            (_, true) => consumer.incremental_unassign(partitions),
            (_, false) => consumer.unassign(),
        };
        if let Err(error) = result {
            tracing::warn!(target: "checkpoint", listener_id = %self.listener_id, %error, "applying the rebalance failed");
        }
        self.post_rebalance(consumer, &event);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Workers stop before their next message; what they settled is committed now, so
            // the next owner starts right after it.
            self.assignment.revoke(partitions);
            commit_stored(consumer, &self.listener_id, "revoke");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => tracing::info!(
                target: "checkpoint", listener_id = %self.listener_id,
                partitions = ?partitions.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(),
                "partitions assigned"
            ),
            Rebalance::Revoke(_) => {
                tracing::info!(target: "checkpoint", listener_id = %self.listener_id, "partitions revoked");
            }
            Rebalance::Error(error) => {
                tracing::warn!(target: "checkpoint", listener_id = %self.listener_id, %error, "rebalance error");
            }
        }
    }
}

/// Commits the stored offsets synchronously; "nothing to commit" is not an error, and a commit
/// refused mid-rebalance only means a redelivery the unique checkpoint key absorbs.
fn commit_stored<K, C>(consumer: &K, listener_id: &str, when: &str)
where
    K: Consumer<C>,
    C: ConsumerContext,
{
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            tracing::warn!(target: "checkpoint", listener_id, when, %error, "offset commit failed; the messages will be redelivered and deduplicated");
        }
    }
}

type Consumer_ = StreamConsumer<ListenerContext>;

/// Backpressure state of one partition, shared by the receive loop and its worker.
#[derive(Default)]
struct Flow {
    /// Messages queued for the worker.
    depth: AtomicUsize,
    /// The partition is paused in librdkafka.
    paused: AtomicBool,
    /// The worker is waiting out a backoff (a failing message or a database outage).
    backing_off: AtomicBool,
    /// Signalled when `depth` drops or `backing_off` is set.
    changed: Notify,
}

/// One partition's worker.
struct PartitionWorker {
    queue: mpsc::UnboundedSender<Message>,
    flow: Arc<Flow>,
    revoked: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for PartitionWorker {
    /// A listener dropped mid-stream (a crash) takes its workers with it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every partition worker of a listener shares.
struct Shared {
    spec: ListenerSpec,
    engine: Engine,
    consumer: Arc<Consumer_>,
    origin: Origin,
    stats: Arc<ListenerStats>,
    permits: Semaphore,
    stopping: watch::Receiver<bool>,
}

/// A running Kafka consumer for one topic and group.
pub struct Listener {
    spec: ListenerSpec,
    engine: Engine,
    stats: Arc<ListenerStats>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// A listener for `spec` that processes messages with `engine`.
    pub fn new(spec: ListenerSpec, engine: Engine) -> Self {
        Self {
            spec,
            engine,
            stats: Arc::default(),
        }
    }

    /// Its counters, shared: read them while it runs.
    pub fn stats(&self) -> Arc<ListenerStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `shutdown` completes, then finishes in-flight messages, commits and
    /// leaves the group. Dropping the returned future instead is a crash: nothing settled is
    /// lost, and unsettled messages are redelivered (and deduplicated) later. After such a drop,
    /// also drop the engine's [`Store`](crate::Store): the MySQL driver does not survive a
    /// query interrupted mid-flight, so its pooled connections must not be reused.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ListenerError> {
        let listener_id = self.spec.listener_id.clone();
        let kafka_error = |source| ListenerError::Kafka {
            listener_id: listener_id.clone(),
            source,
        };
        let assignment = Arc::new(Assignment::default());
        let context = ListenerContext {
            listener_id: listener_id.clone(),
            cooperative: self
                .spec
                .kafka
                .get("partition.assignment.strategy")
                .is_some_and(|s| s.contains("cooperative")),
            assignment: Arc::clone(&assignment),
        };
        let consumer: Consumer_ = self
            .spec
            .client_config()
            .create_with_context(context)
            .map_err(kafka_error)?;
        consumer
            .subscribe(&[&self.spec.topic])
            .map_err(kafka_error)?;
        let consumer = Arc::new(consumer);
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            origin: Origin::new(self.spec.group_id.clone()).with_listener_id(listener_id.clone()),
            permits: Semaphore::new(self.spec.max_concurrency.max(1)),
            spec: self.spec,
            engine: self.engine,
            consumer: Arc::clone(&consumer),
            stats: self.stats,
            stopping: stop_rx,
        });
        tracing::info!(target: "checkpoint", %listener_id, topic = %shared.spec.topic, group_id = %shared.spec.group_id, "listener started");

        let mut workers: HashMap<i32, PartitionWorker> = HashMap::new();
        tokio::pin!(shutdown);
        let mut outage = 0;
        loop {
            let received = tokio::select! {
                () = &mut shutdown => break,
                received = consumer.recv() => received,
            };
            match received {
                Ok(message) => {
                    outage = 0;
                    shared.stats.received.fetch_add(1, Ordering::Relaxed);
                    let partition = message.partition();
                    let owned = to_message(&message);
                    drop(message);
                    let worker = workers
                        .entry(partition)
                        .or_insert_with(|| spawn_worker(&shared, &assignment, partition));
                    if worker.revoked.load(Ordering::SeqCst) || worker.task.is_finished() {
                        // Reassigned after a revoke: a fresh worker, in order from here.
                        *worker = spawn_worker(&shared, &assignment, partition);
                    }
                    let flow = Arc::clone(&worker.flow);
                    let depth = flow.depth.fetch_add(1, Ordering::SeqCst) + 1;
                    if worker.queue.send(owned).is_err() {
                        flow.depth.fetch_sub(1, Ordering::SeqCst);
                    }
                    if depth >= PAUSE_AT {
                        let stop = hold_back(
                            &consumer,
                            &shared.spec.topic,
                            partition,
                            worker,
                            &mut shutdown,
                        )
                        .await;
                        if stop {
                            break;
                        }
                    }
                }
                Err(error) => {
                    // Broker unreachable and similar: librdkafka reconnects by itself.
                    tracing::warn!(target: "checkpoint", %listener_id, %error, "kafka error; retrying");
                    tokio::time::sleep(
                        Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
                            .delay(outage),
                    )
                    .await;
                    outage += 1;
                }
            }
        }

        tracing::info!(target: "checkpoint", %listener_id, "stopping: finishing in-flight messages");
        let _ = stop_tx.send(true);
        for (_, mut worker) in workers.drain() {
            let _ = (&mut worker.task).await;
        }
        commit_stored(consumer.as_ref(), &listener_id, "shutdown");
        consumer.unsubscribe();
        drop(shared);
        tracing::info!(target: "checkpoint", %listener_id, "listener stopped");
        Ok(())
    }
}

/// A partition has `PAUSE_AT` messages queued. While its worker is merely busy, the receive
/// loop waits for it, up to [`HOLD_BACK_MAX`] (librdkafka keeps fetching up to
/// `queued.max.messages.kbytes` meanwhile): pausing would make librdkafka drop what it
/// prefetched and refetch it later. When the worker waits out a backoff, or takes longer than
/// that, the partition is paused instead, so the other partitions keep flowing and the consumer
/// keeps polling (rebalances are served from the poll). True when shutdown was requested
/// meanwhile.
async fn hold_back(
    consumer: &Consumer_,
    topic: &str,
    partition: i32,
    worker: &PartitionWorker,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let flow = &worker.flow;
    let deadline = tokio::time::Instant::now() + HOLD_BACK_MAX;
    loop {
        if worker.task.is_finished() {
            return false;
        }
        if flow.backing_off.load(Ordering::SeqCst) || tokio::time::Instant::now() >= deadline {
            if !flow.paused.swap(true, Ordering::SeqCst) {
                set_paused(consumer, topic, partition, true);
            }
            return false;
        }
        if flow.depth.load(Ordering::SeqCst) < PAUSE_AT {
            return false;
        }
        tokio::select! {
            () = shutdown.as_mut() => return true,
            () = flow.changed.notified() => {}
            // The worker may end without a signal (revoked): look again now and then.
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

fn set_paused(consumer: &Consumer_, topic: &str, partition: i32, paused: bool) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(error) = result {
        tracing::debug!(target: "checkpoint", partition, paused, %error, "pause/resume failed");
    }
}

fn to_message(message: &BorrowedMessage<'_>) -> Message {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| Header {
                    key: h.key.to_owned(),
                    value: h.value.map(<[u8]>::to_vec),
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
        timestamp: message
            .timestamp()
            .to_millis()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
    }
}

fn spawn_worker(shared: &Arc<Shared>, assignment: &Assignment, partition: i32) -> PartitionWorker {
    let (queue, mut inbox) = mpsc::unbounded_channel::<Message>();
    let flow = Arc::new(Flow::default());
    let revoked = assignment.flag(partition);
    let task = {
        let (shared, flow, revoked) = (Arc::clone(shared), Arc::clone(&flow), Arc::clone(&revoked));
        tokio::spawn(async move {
            let mut stopping = shared.stopping.clone();
            loop {
                let message = tokio::select! {
                    received = inbox.recv() => match received {
                        Some(message) => message,
                        None => break,
                    },
                    _ = stopping.wait_for(|stop| *stop) => break,
                };
                // Wait for a turn first, so the run below takes everything queued meanwhile.
                let Ok(_permit) = shared.permits.acquire().await else {
                    break;
                };
                // Take what is already queued: up to batch_size messages for a batch, or up to
                // CHECK_AHEAD messages whose duplicate check is done in one query.
                let window = if shared.spec.batch_size > 1 {
                    shared.spec.batch_size
                } else {
                    CHECK_AHEAD
                };
                let run = take_queued(&shared, partition, &mut inbox, &flow, Some(message), window);
                if revoked.load(Ordering::SeqCst) || *shared.stopping.borrow() {
                    // Not ours any more, or shutting down: leave it to the next owner.
                    break;
                }
                let done = if shared.spec.batch_size > 1 {
                    settle_batches(&shared, partition, &mut inbox, run, &revoked, &flow).await
                } else {
                    settle_run(&shared, &run, &revoked, &flow).await
                };
                if !done {
                    break;
                }
            }
        })
    };
    PartitionWorker {
        queue,
        flow,
        revoked,
        task,
    }
}

/// Takes `first` (already received from `inbox`) and what else is queued for `partition`, up
/// to `window` messages, and resumes the partition once few enough are left queued.
fn take_queued(
    shared: &Shared,
    partition: i32,
    inbox: &mut mpsc::UnboundedReceiver<Message>,
    flow: &Flow,
    first: Option<Message>,
    window: usize,
) -> Vec<Message> {
    let mut run: Vec<Message> = first.into_iter().collect();
    while run.len() < window {
        match inbox.try_recv() {
            Ok(message) => run.push(message),
            Err(_) => break,
        }
    }
    let taken = run.len();
    let left = flow.depth.fetch_sub(taken, Ordering::SeqCst) - taken;
    flow.changed.notify_one();
    if left <= RESUME_AT && flow.paused.swap(false, Ordering::SeqCst) {
        set_paused(&shared.consumer, &shared.spec.topic, partition, false);
    }
    run
}

/// Per-message mode over a run of queued messages: one duplicate check for the run, then each
/// message consumed, stored and settled on its own, in order. False when abandoned.
async fn settle_run(shared: &Shared, run: &[Message], revoked: &AtomicBool, flow: &Flow) -> bool {
    let handler = shared.spec.handler.as_ref();
    // If the check fails (database down), each message does its own, waiting the outage out.
    let mut ahead = if run.len() > 1 {
        shared
            .engine
            .check_ahead(handler, run, &shared.origin)
            .await
            .ok()
    } else {
        None
    };
    for message in run {
        if revoked.load(Ordering::SeqCst) || *shared.stopping.borrow() {
            return false;
        }
        if !settle(shared, message, revoked, flow, ahead.as_mut()).await {
            return false;
        }
    }
    true
}

/// Takes one message until it is settled, then stores its offset. False when it was abandoned
/// (shutdown or revoke during a backoff): it stays uncommitted and is redelivered.
async fn settle(
    shared: &Shared,
    message: &Message,
    revoked: &AtomicBool,
    flow: &Flow,
    mut ahead: Option<&mut CheckedAhead>,
) -> bool {
    let mut retry_count = 0;
    let mut outages = 0;
    let mut stopping = shared.stopping.clone();
    loop {
        let handler = shared.spec.handler.as_ref();
        let attempt = match ahead.as_deref_mut() {
            // The first attempt uses the run's duplicate check; later ones check again.
            Some(ahead) if retry_count == 0 && outages == 0 => {
                shared
                    .engine
                    .process_checked(handler, message, &shared.origin, 0, ahead)
                    .await
            }
            _ => {
                shared
                    .engine
                    .process(handler, message, &shared.origin, retry_count)
                    .await
            }
        };
        let delay = match attempt {
            Ok(Disposition::Retry(error)) => {
                shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                let delay = shared.spec.backoff.delay(retry_count);
                tracing::warn!(
                    target: "checkpoint", listener_id = %shared.origin.listener_id,
                    partition = message.partition, offset = message.offset, retry_count,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), %error,
                    "consume failed; backing off"
                );
                retry_count += 1;
                delay
            }
            Ok(settled) => {
                shared.stats.count(&settled);
                store_offset(shared, message);
                return true;
            }
            Err(error) => {
                let delay =
                    Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).delay(outages);
                tracing::warn!(
                    target: "checkpoint", listener_id = %shared.origin.listener_id,
                    partition = message.partition, offset = message.offset, %error,
                    "checkpoint store failed; waiting before trying the same message again"
                );
                outages += 1;
                delay
            }
        };
        if !back_off(flow, delay, &mut stopping).await {
            return false;
        }
        if revoked.load(Ordering::SeqCst) {
            return false;
        }
    }
}

/// Sleeps `delay` with the partition marked as backing off (the receive loop pauses it rather
/// than wait); false when shutdown came first.
async fn back_off(flow: &Flow, delay: Duration, stopping: &mut watch::Receiver<bool>) -> bool {
    flow.backing_off.store(true, Ordering::SeqCst);
    flow.changed.notify_one();
    let slept = tokio::select! {
        () = tokio::time::sleep(delay) => true,
        _ = stopping.wait_for(|stop| *stop) => false,
    };
    flow.backing_off.store(false, Ordering::SeqCst);
    slept
}

/// Marks `message` settled: its offset may be committed. Fails only when the partition was
/// revoked meanwhile; the next owner then redelivers it and the checkpoint dedups it.
fn store_offset(shared: &Shared, message: &Message) {
    if let Err(error) =
        shared
            .consumer
            .store_offset(&message.topic, message.partition, message.offset)
    {
        tracing::debug!(target: "checkpoint", partition = message.partition, %error, "offset not stored");
    }
}

/// Batch mode: takes `first`, then up to `TURN_BATCHES - 1` further batches queued meanwhile,
/// each until it is settled. The duplicate check of each next batch runs while the one before
/// is processed. False when abandoned (shutdown or revoke).
async fn settle_batches(
    shared: &Shared,
    partition: i32,
    inbox: &mut mpsc::UnboundedReceiver<Message>,
    first: Vec<Message>,
    revoked: &AtomicBool,
    flow: &Flow,
) -> bool {
    let mut batch = first;
    let mut ahead = None;
    for turn in 1..=TURN_BATCHES {
        let next = if turn < TURN_BATCHES {
            take_queued(shared, partition, inbox, flow, None, shared.spec.batch_size)
        } else {
            Vec::new()
        };
        let BatchEnd::Settled(checked) =
            settle_batch(shared, batch, ahead, &next, revoked, flow).await
        else {
            return false;
        };
        if next.is_empty() {
            return true;
        }
        if revoked.load(Ordering::SeqCst) || *shared.stopping.borrow() {
            // Taken but not processed: redelivered to the next owner.
            return false;
        }
        ahead = checked;
        batch = next;
    }
    true
}

/// How [`settle_batch`] ended.
enum BatchEnd {
    /// Every message is settled; the duplicate check of the next batch, when it was made.
    Settled(Option<CheckedAhead>),
    /// Shutdown or revoke during a backoff: the rest of the batch stays uncommitted.
    Abandoned,
}

/// Takes a batch until every message in it is settled, storing offsets as prefixes settle.
/// `ahead` is its duplicate check when made already; `next`'s is made meanwhile.
async fn settle_batch(
    shared: &Shared,
    mut batch: Vec<Message>,
    mut ahead: Option<CheckedAhead>,
    next: &[Message],
    revoked: &AtomicBool,
    flow: &Flow,
) -> BatchEnd {
    let mut retry_count = 0;
    let mut outages = 0;
    let mut stopping = shared.stopping.clone();
    while !batch.is_empty() {
        let delay = match shared
            .engine
            .process_batch_checked(
                shared.spec.handler.as_ref(),
                &batch,
                &shared.origin,
                retry_count,
                // Only the first attempt: a retry checks again what is left.
                ahead.take(),
                next,
            )
            .await
        {
            Ok(outcome) => {
                let done = outcome.settled.len();
                for disposition in &outcome.settled {
                    shared.stats.count(disposition);
                }
                if let Some(last) = done.checked_sub(1).and_then(|i| batch.get(i)) {
                    store_offset(shared, last);
                }
                batch.drain(..done);
                let Some(error) = outcome.retry else {
                    return BatchEnd::Settled(outcome.next_checked);
                };
                shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                // The failing message is now first; it has failed once more.
                retry_count = if done > 0 { 1 } else { retry_count + 1 };
                let delay = shared.spec.backoff.delay(retry_count - 1);
                tracing::warn!(
                    target: "checkpoint", listener_id = %shared.origin.listener_id,
                    partition = batch.first().map(|m| m.partition), offset = batch.first().map(|m| m.offset),
                    retry_count, %error, "consume failed in a batch; backing off"
                );
                delay
            }
            Err(error) => {
                tracing::warn!(target: "checkpoint", listener_id = %shared.origin.listener_id, %error, "checkpoint store failed; retrying the batch");
                outages += 1;
                Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).delay(outages - 1)
            }
        };
        if !back_off(flow, delay, &mut stopping).await || revoked.load(Ordering::SeqCst) {
            return BatchEnd::Abandoned;
        }
    }
    BatchEnd::Settled(None)
}

/// Seeks nothing, commits nothing: reads the committed offset of every partition of `topic`
/// for `group_id` (tests and tooling). The returned offsets are owned values, so no
/// librdkafka list outlives the temporary consumer.
pub fn committed_offsets(
    kafka: &BTreeMap<String, String>,
    topic: &str,
    group_id: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Option<i64>>, KafkaError> {
    let mut config = ClientConfig::new();
    for (key, value) in kafka {
        config.set(key, value);
    }
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let offsets = {
        let committed = consumer.committed_offsets(list, timeout)?;
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .collect()
    };
    drop(consumer);
    Ok(offsets)
}
