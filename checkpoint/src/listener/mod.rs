//! Kafka listeners: consume a topic in a consumer group and take every message through the
//! [`Engine`], committing an offset only after that message's event or failure row is durable.
//!
//! - Messages of one partition are handled in order, by one worker task per assigned
//!   partition, each feeding an engine [`Session`]; partitions run concurrently, at most
//!   `max_concurrency` at a time.
//! - A failing message is retried with exponential backoff and jitter while the consumer keeps
//!   polling: the partition's worker waits, its queue fills, and the partition is paused at a
//!   high-water mark and resumed at a low one, so the group never sees a stalled member. A
//!   partition that is merely busy is not paused (librdkafka would drop and refetch what it
//!   prefetched): the receive loop waits for its worker instead.
//! - Memory is bounded by bytes as well as by count: each partition with a worker may hold
//!   its share of `max_queued_bytes` in received, unsettled messages; one that delivers past
//!   its share is paused until it drains below half of it, so a partition stuck behind a
//!   failing message does not hold up the others.
//! - Offsets are *stored* after a message settles (`enable.auto.offset.store=false`) and
//!   committed asynchronously in batches (`enable.auto.commit`, 1 s by default); synchronously
//!   on partition revoke and on shutdown.
//! - A database outage is waited out with backoff and logged; nothing is skipped because of it.
//!   A store error that waiting cannot fix, or a worker that ends for any other reason, stops
//!   the listener with an error: it never continues past an unsettled message.
//! - Shutdown: stop fetching, let every worker finish the message in hand (at most
//!   `shutdown_timeout`), commit what is settled, leave the group.

mod control;
mod flow;
mod headers;
mod publish;
mod rebalance;
mod spec;
mod stats;
pub mod telemetry;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use tokio::sync::{Notify, Semaphore, watch};

use crate::engine::{Backoff, Engine, EngineError};
use crate::message::{Message, Origin};

pub use self::control::ListenerControl;
use self::control::{control_idle, hold_if_paused};
use self::flow::*;
use self::publish::{ask_paused_watermarks, publish};
use self::rebalance::*;
pub use self::spec::{ListenerSettings, ListenerSpec};
pub use self::stats::{ListenerStats, PartitionSnapshot, StatsSnapshot, ThroughputSample};
use self::worker::*;

/// Queued messages of one partition above which the partition is paused.
pub(super) const PAUSE_AT: usize = 2_000;
/// Queued messages below which a paused partition is resumed.
pub(super) const RESUME_AT: usize = 500;
/// Longest time the receive loop waits for a busy partition's worker before pausing the
/// partition and polling again.
pub(super) const HOLD_BACK_MAX: Duration = Duration::from_secs(1);
/// Queued messages of a partition whose duplicate check is done in one query (per-message
/// mode).
pub(super) const CHECK_AHEAD: usize = 500;
/// Batches a partition's worker takes in one turn (batch mode) when enough are queued: the
/// duplicate check of each next batch overlaps the database work of the one before.
pub(super) const TURN_BATCHES: usize = 4;
/// How often a worker backing off looks whether its partition was revoked.
pub(super) const REVOKE_CHECK: Duration = Duration::from_millis(50);
/// How often the receive loop looks at its workers (ended ones, partitions to resume) when
/// no message arrives.
pub(super) const SWEEP_EVERY: Duration = Duration::from_millis(100);

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
    /// A partition's message could not be settled: the checkpoint store failed in a way
    /// waiting does not fix. Its offset is not committed; it is delivered again on restart.
    #[error("listener `{listener_id}`, partition {partition}: {source}")]
    Partition {
        /// The listener.
        listener_id: String,
        /// The partition.
        partition: i32,
        /// What the engine said.
        #[source]
        source: EngineError,
    },
    /// A partition's worker ended without settling its messages (a bug in checkpoint, never
    /// handler code, whose panics are failures).
    #[error("listener `{listener_id}`, partition {partition}: worker ended unexpectedly: {reason}")]
    WorkerEnded {
        /// The listener.
        listener_id: String,
        /// The partition.
        partition: i32,
        /// How it ended.
        reason: String,
    },
    /// Shutdown gave up on in-flight work after `shutdown_timeout`; what was settled is
    /// committed, the rest is delivered again.
    #[error(
        "listener `{listener_id}`: partitions {partitions:?} were still busy {timeout:?} after \
         shutdown began; their in-flight messages are not committed and will be delivered again"
    )]
    ShutdownTimedOut {
        /// The listener.
        listener_id: String,
        /// Partitions whose work did not finish.
        partitions: Vec<i32>,
        /// The configured `shutdown_timeout`.
        timeout: Duration,
    },
}

type Consumer_ = StreamConsumer<ListenerContext>;

/// What every partition worker of a listener shares.
struct Shared {
    spec: ListenerSpec,
    assignment: Arc<Assignment>,
    engine: Engine,
    /// The receive loop holds the only strong reference: when `Listener::run` ends or its
    /// future is dropped, the consumer closes at once, even while a worker still finishes the
    /// message in hand (whose offset is then not stored, so it is redelivered and
    /// deduplicated).
    consumer: std::sync::Weak<Consumer_>,
    origin: Origin,
    stats: Arc<ListenerStats>,
    control: Arc<ListenerControl>,
    budget: Arc<Budget>,
    permits: Semaphore,
    /// A round of questions for paused partitions' high watermarks is under way.
    asking_watermarks: std::sync::atomic::AtomicBool,
    stopping: watch::Receiver<bool>,
    labels: telemetry::Labels,
}

impl Shared {
    /// Shutdown was asked for, or whoever ran the listener stopped waiting for it (dropped
    /// `Listener::run`'s future, and with it the sender): either way its workers finish the
    /// message in hand and end. A worker's task is never aborted, so no `consume` call is
    /// cancelled at an await by the listener or by its caller.
    fn stopping(&self) -> bool {
        *self.stopping.borrow() || self.stopping.has_changed().is_err()
    }
}

/// A running Kafka consumer for one topic and group.
pub struct Listener {
    spec: ListenerSpec,
    engine: Engine,
    stats: Arc<ListenerStats>,
    control: Arc<ListenerControl>,
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
            control: Arc::default(),
        }
    }

    /// Its id, `group_id/topic` unless set otherwise.
    pub fn listener_id(&self) -> &str {
        &self.spec.listener_id
    }

    /// Its counters, shared: read them while it runs.
    pub fn stats(&self) -> Arc<ListenerStats> {
        Arc::clone(&self.stats)
    }

    /// Its pause and resume switches, shared: use them while it runs.
    pub fn control(&self) -> Arc<ListenerControl> {
        Arc::clone(&self.control)
    }

    /// Its settings as an operator may see them (secrets masked).
    pub fn settings(&self) -> ListenerSettings {
        self.spec.settings()
    }

    /// Consumes until `shutdown` completes, then finishes in-flight messages (for at most
    /// `shutdown_timeout`), commits and leaves the group. Returns an error when the consumer
    /// cannot start, when a message cannot be settled (see [`ListenerError`]), or when
    /// shutdown had to give up on in-flight work.
    ///
    /// Dropping the returned future instead stops the listener without waiting: the consumer
    /// is closed at once (which commits the offsets already stored and leaves the group), and
    /// each partition's worker finishes the message in hand in the background, never cancelled
    /// at an await, then ends; its offset is not stored, so that message is redelivered and
    /// deduplicated by whoever consumes the partition next.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ListenerError> {
        let listener_id = self.spec.listener_id.clone();
        let _left = Left(Arc::clone(&self.stats));
        let secrets = crate::secret::Secrets::of(&self.spec.kafka);
        let kafka_error = |source| ListenerError::Kafka {
            listener_id: listener_id.clone(),
            source: secrets.redact_error(source),
        };
        let assignment = Arc::new(Assignment::default());
        let context = ListenerContext {
            listener_id: listener_id.clone(),
            revoke_timeout: self.spec.revoke_timeout,
            cooperative: self
                .spec
                .kafka
                .get("partition.assignment.strategy")
                .is_some_and(|s| s.contains("cooperative")),
            assignment: Arc::clone(&assignment),
            stats: Arc::clone(&self.stats),
            control: Arc::clone(&self.control),
            labels: telemetry::Labels::new(
                &self.spec.topic,
                &self.spec.group_id,
                self.spec.start_from_beginning,
            ),
            secrets: secrets.clone(),
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
            assignment: Arc::clone(&assignment),
            origin: Origin::new(self.spec.group_id.clone()).with_listener_id(listener_id.clone()),
            permits: Semaphore::new(self.spec.max_concurrency.max(1)),
            budget: Arc::new(Budget {
                max: self.spec.max_queued_bytes.max(1),
                stats: Arc::clone(&self.stats),
                partitions: AtomicUsize::new(0),
                drained: Notify::new(),
            }),
            labels: telemetry::Labels::new(
                &self.spec.topic,
                &self.spec.group_id,
                self.spec.start_from_beginning,
            ),
            spec: self.spec,
            engine: self.engine,
            consumer: Arc::downgrade(&consumer),
            stats: self.stats,
            control: self.control,
            asking_watermarks: std::sync::atomic::AtomicBool::new(false),
            stopping: stop_rx,
        });
        tracing::info!(target: "checkpoint", %listener_id, topic = %shared.spec.topic, group_id = %shared.spec.group_id, "listener started");

        let mut workers: HashMap<i32, PartitionWorker> = HashMap::new();
        // Declared after `workers`, so dropped before them: no revocation waits on a worker
        // that is being torn down.
        let closing = Closing(Arc::clone(&assignment));
        tokio::pin!(shutdown);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut published = tokio::time::Instant::now();
        let mut asked = tokio::time::Instant::now();
        let mut outage = 0;
        let mut failure = None;
        loop {
            let received = tokio::select! {
            () = &mut shutdown => break,
            _ = sweep.tick() => {
                if published.elapsed() >= telemetry::REFRESH_EVERY {
                    published = tokio::time::Instant::now();
                    let paused = publish(&shared, &consumer, &workers);
                    if asked.elapsed() >= telemetry::PAUSED_WATERMARKS_EVERY {
                        asked = tokio::time::Instant::now();
                        ask_paused_watermarks(&shared, paused);
                    }
                }
                None
            }
            () = shared.budget.drained.notified() => None,
            // An operator paused or resumed a partition: applied to the partitions with a
            // worker by `check_workers` now, to the others here.
            () = shared.control.changed.notified() => {
                control_idle(&shared, &consumer, &workers);
                None
            }
            received = consumer.recv() => Some(received)};
            let Some(received) = received else {
                if let Err(error) = check_workers(&shared, &workers) {
                    failure = Some(error);
                    break;
                }
                continue;
            };
            match received {
                Ok(message) => {
                    outage = 0;
                    let partition = message.partition();
                    let (owned, bytes) = to_owned(&shared, &message);
                    drop(message);
                    // A worker that ended with its partition still ours stops the listener
                    // before anything of that partition goes on.
                    let ended = workers
                        .get(&partition)
                        .is_some_and(|w| w.task.is_finished() && !w.revoked.load(Ordering::SeqCst));
                    if ended && let Err(error) = check_workers(&shared, &workers) {
                        failure = Some(error);
                        break;
                    }
                    let reassigned = workers
                        .get(&partition)
                        .is_some_and(|w| w.revoked.load(Ordering::SeqCst) || w.task.is_finished());
                    if reassigned || !workers.contains_key(&partition) {
                        // Assigned (again): a fresh worker, in order from here, after the
                        // previous one has finished what it held.
                        let previous = workers.remove(&partition);
                        let worker = spawn_worker(&shared, partition, previous);
                        hold_if_paused(&shared, &consumer, partition, &worker.flow);
                        workers.insert(partition, worker);
                        shared
                            .budget
                            .partitions
                            .store(workers.len(), Ordering::SeqCst);
                    }
                    let Some(worker) = workers.get(&partition) else {
                        continue;
                    };
                    let flow = Arc::clone(&worker.flow);
                    let queued = Queued {
                        ticket: Budget::take(&shared.budget, &flow, bytes),
                        message: owned,
                    };
                    let depth = flow.depth.fetch_add(1, Ordering::SeqCst) + 1;
                    if worker.queue.send(queued).is_err() {
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
                    } else if shared.budget.over(&flow) {
                        // Over its share of the byte budget: this partition waits until its
                        // backlog drains.
                        flow.set_paused(&consumer, &shared.spec.topic, partition, true);
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

        if let Some(error) = &failure {
            tracing::error!(target: "checkpoint", %listener_id, %error, "stopping: a partition cannot go on");
        } else {
            tracing::info!(target: "checkpoint", %listener_id, "stopping: finishing in-flight messages");
        }
        let _ = stop_tx.send(true);
        drop(closing);
        let timeout = shared.spec.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut busy = Vec::new();
        for (partition, mut worker) in workers.drain() {
            if tokio::time::timeout_at(deadline, &mut worker.task)
                .await
                .is_err()
            {
                // Never cancelled: the task ends by itself, or with the process. Its message
                // is not settled, so nothing of it is committed.
                busy.push(partition);
            }
        }
        commit_stored(consumer.as_ref(), &listener_id, "shutdown");
        consumer.unsubscribe();
        drop(shared);
        if let Some(error) = failure {
            return Err(error);
        }
        if !busy.is_empty() {
            busy.sort_unstable();
            return Err(ListenerError::ShutdownTimedOut {
                listener_id,
                partitions: busy,
                timeout,
            });
        }
        tracing::info!(target: "checkpoint", %listener_id, "listener stopped");
        Ok(())
    }
}

/// Looks at every worker: one that ended while its partition was still ours (not revoked, no
/// shutdown) stops the listener with its error; paused partitions resume when their worker is
/// ready for more and the byte budget has room.
fn check_workers(
    shared: &Shared,
    workers: &HashMap<i32, PartitionWorker>,
) -> Result<(), ListenerError> {
    for (&partition, worker) in workers.iter() {
        let flow = &worker.flow;
        if worker.task.is_finished() && !worker.revoked.load(Ordering::SeqCst) && !shared.stopping()
        {
            let error = flow.error.lock().unwrap_or_else(|p| p.into_inner()).take();
            let listener_id = shared.spec.listener_id.clone();
            return Err(match error {
                Some(source) => ListenerError::Partition {
                    listener_id,
                    partition,
                    source,
                },
                None => ListenerError::WorkerEnded {
                    listener_id,
                    partition,
                    reason: "the worker task ended".to_owned(),
                },
            });
        }
        if worker.revoked.load(Ordering::SeqCst) {
            continue;
        }
        let Some(consumer) = shared.consumer.upgrade() else {
            continue;
        };
        hold_if_paused(shared, &consumer, partition, flow);
        if flow.is_paused()
            && !flow.backing_off.load(Ordering::SeqCst)
            && flow.depth.load(Ordering::SeqCst) <= RESUME_AT
            && shared.budget.low(flow)
        {
            flow.set_paused(&consumer, &shared.spec.topic, partition, false);
        }
    }
    Ok(())
}

/// An owned copy of `message`, its headers byte for byte, and its size for the byte budget.
fn to_owned(shared: &Shared, message: &BorrowedMessage<'_>) -> (Message, usize) {
    shared.stats.received.fetch_add(1, Ordering::Relaxed);
    let message = Message {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers: headers::read(message),
        timestamp: message
            .timestamp()
            .to_millis()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
    };
    let bytes = message.payload.len()
        + message.key.as_ref().map_or(0, Vec::len)
        + message
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
    (message, bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::error::RDKafkaErrorCode;

    use super::*;
    use crate::handler::{BoxFuture, Handler};
    use rdkafka::ClientContext as _;

    struct Skipper;

    impl Handler for Skipper {
        fn name(&self) -> &str {
            "skipper"
        }

        fn consume<'a>(
            &'a self,
            _message: &'a Message,
            _ctx: &'a mut crate::handler::Context<'_>,
        ) -> BoxFuture<'a, Result<crate::handler::Outcome, crate::handler::HandlerError>> {
            Box::pin(async { Ok(crate::handler::Outcome::skip()) })
        }
    }

    fn spec(properties: &[(&str, &str)]) -> ListenerSpec {
        let handler: Arc<dyn Handler> = Arc::new(Skipper);
        properties
            .iter()
            .fold(ListenerSpec::new(handler, "t", "g"), |spec, (k, v)| {
                spec.kafka(*k, *v)
            })
    }

    #[test]
    fn tls_without_a_ca_probes_the_systems_bundle() {
        let config = spec(&[("security.protocol", "SASL_SSL")]).client_config();
        assert_eq!(config.get("ssl.ca.location"), Some("probe"));
        let config =
            spec(&[("security.protocol", "ssl"), ("ssl.ca.location", "/ca.pem")]).client_config();
        assert_eq!(config.get("ssl.ca.location"), Some("/ca.pem"));
        let config = spec(&[("bootstrap.servers", "b:9092")]).client_config();
        assert_eq!(config.get("ssl.ca.location"), None);
    }

    #[test]
    fn exactly_once_settings_win_over_the_users() {
        let config =
            spec(&[("enable.auto.offset.store", "true"), ("group.id", "other")]).client_config();
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("group.id"), Some("g"));
    }

    #[test]
    fn client_errors_are_kept_without_secrets() {
        let properties: BTreeMap<String, String> = [("sasl.password", "hunter22")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let stats = Arc::new(ListenerStats::default());
        let context = ListenerContext {
            listener_id: "g/t".to_owned(),
            revoke_timeout: Duration::from_secs(1),
            cooperative: false,
            assignment: Arc::default(),
            stats: Arc::clone(&stats),
            control: Arc::default(),
            labels: telemetry::Labels::new("t", "g", true),
            secrets: crate::secret::Secrets::of(&properties),
        };
        let transport = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        context.error(transport.clone(), "auth as alice with hunter22 refused");
        let kept = stats.last_client_error().expect("kept");
        assert!(kept.contains("alice with *** refused"), "{kept}");
        // "All brokers down" sums up; it does not hide the cause.
        context.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 down",
        );
        assert_eq!(stats.last_client_error(), Some(kept));
        // A new assignment means connected: the error is over.
        stats.rebalanced(Some((true, 1)), false);
        assert_eq!(stats.last_client_error(), None);
    }

    #[test]
    fn debug_masks_secret_properties() {
        let shown = format!(
            "{:?}",
            spec(&[("sasl.username", "alice"), ("sasl.password", "hunter22")])
        );
        assert!(!shown.contains("hunter22"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
    }
}
