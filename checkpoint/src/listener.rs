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

mod headers;
pub mod telemetry;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures_util::FutureExt as _;
use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{DEFAULT_MAX_QUEUED_BYTES, DEFAULT_REVOKE_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::crash::{self, CrashPoint};
use crate::engine::{
    Backoff, Disposition, Engine, EngineError, Policy, Progress, Session, WaitCause,
};
use crate::handler::{BoxFuture, Handler};
use crate::message::{Message, Origin};

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
/// How often a worker backing off looks whether its partition was revoked.
const REVOKE_CHECK: Duration = Duration::from_millis(50);
/// How often the receive loop looks at its workers (ended ones, partitions to resume) when
/// no message arrives.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

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
    /// Retries for a handler that declares no `max_retries` (`[db_checkpoint] max_retries`);
    /// `None` retries it forever.
    pub default_max_retries: Option<u32>,
    /// Longest time one `consume` call may take; see [`Policy::handler_timeout`].
    pub handler_timeout: Option<Duration>,
    /// Bytes of received, unsettled messages held before partitions are paused.
    pub max_queued_bytes: usize,
    /// How long shutdown waits for in-flight work.
    pub shutdown_timeout: Duration,
    /// How long a revocation waits for the in-flight message or batch of each revoked
    /// partition to settle before it commits and lets the partition go. Keep it well below
    /// `max.poll.interval.ms` (300 s by default): the consumer does not poll meanwhile.
    pub revoke_timeout: Duration,
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
            .field("default_max_retries", &self.default_max_retries)
            .field("handler_timeout", &self.handler_timeout)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("revoke_timeout", &self.revoke_timeout)
            .field("kafka", &crate::secret::Masked(&self.kafka))
            .finish_non_exhaustive()
    }
}

impl ListenerSpec {
    /// A listener of `topic` in `group_id` for `handler`, with one partition at a time, from
    /// the beginning, a 1 s – 60 s backoff, no handler timeout, 64 MiB of queued messages and
    /// 30 s for shutdown.
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
            default_max_retries: None,
            handler_timeout: None,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            revoke_timeout: DEFAULT_REVOKE_TIMEOUT,
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

    /// Sets the longest time one `consume` call may take (see [`Policy::handler_timeout`]).
    pub fn handler_timeout(mut self, limit: Duration) -> Self {
        self.handler_timeout = Some(limit);
        self
    }

    /// Sets the bytes of received, unsettled messages held before partitions are paused (at
    /// least 1).
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes.max(1);
        self
    }

    /// Sets how long shutdown waits for in-flight work.
    pub fn shutdown_timeout(mut self, limit: Duration) -> Self {
        self.shutdown_timeout = limit;
        self
    }

    /// Sets how long a revocation waits for in-flight work.
    pub fn revoke_timeout(mut self, limit: Duration) -> Self {
        self.revoke_timeout = limit;
        self
    }

    /// The engine policy of this listener's messages.
    pub fn policy(&self) -> Policy {
        Policy {
            backoff: self.backoff,
            default_max_retries: self.default_max_retries,
            handler_timeout: self.handler_timeout,
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        // Defaults a user may override…
        config
            .set("auto.commit.interval.ms", "1000")
            .set("fetch.wait.max.ms", "100")
            .set("fetch.queue.backoff.ms", "10")
            .set("statistics.interval.ms", telemetry::STATISTICS_INTERVAL_MS)
            .set_log_level(RDKafkaLogLevel::Warning);
        for (key, value) in &self.kafka {
            config.set(key, value);
        }
        // OpenSSL is built into this binary, and its compiled-in CA directory is not the
        // system's: without a CA of the user's, look for the system's bundle where
        // distributions keep it.
        let tls = self
            .kafka
            .get("security.protocol")
            .is_some_and(|p| p.to_ascii_uppercase().contains("SSL"));
        let ca_given = ["ssl.ca.location", "ssl.ca.pem", "ssl.ca.certificate.stores"]
            .iter()
            .any(|key| self.kafka.contains_key(*key));
        if tls && !ca_given {
            config.set("ssl.ca.location", "probe");
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
    queued_bytes: AtomicUsize,
    assigned: AtomicUsize,
    joined: AtomicBool,
    /// The last error librdkafka reported for the client (secrets masked), until the next
    /// assignment.
    client_error: Mutex<Option<String>>,
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
    /// Bytes of received messages not yet settled (see `max_queued_bytes`).
    pub queued_bytes: usize,
    /// Partitions assigned to this listener now.
    pub assigned_partitions: usize,
    /// The listener is running and has joined its group: it received an assignment, possibly
    /// an empty one (a group with more consumers than partitions leaves some idle).
    pub joined: bool,
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
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed),
            assigned_partitions: self.assigned.load(Ordering::Relaxed),
            joined: self.joined.load(Ordering::Relaxed),
        }
    }

    /// The last error librdkafka reported about this listener's connection to Kafka (a broker
    /// unreachable, a TLS handshake or SASL authentication that failed, …), with secrets
    /// masked. It is cleared when the group assigns partitions: a listener that has joined is
    /// connected.
    pub fn last_client_error(&self) -> Option<String> {
        self.client_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn client_failed(&self, error: String) {
        *self
            .client_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
    }

    /// A rebalance assigned (`Some(true)`) or revoked (`Some(false)`) `count` partitions,
    /// incrementally or (eager) all of them; `None`: the listener left its group.
    fn rebalanced(&self, change: Option<(bool, usize)>, incremental: bool) {
        match change {
            Some((true, count)) => {
                if incremental {
                    self.assigned.fetch_add(count, Ordering::Relaxed);
                } else {
                    self.assigned.store(count, Ordering::Relaxed);
                }
                self.joined.store(true, Ordering::Relaxed);
                *self
                    .client_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            }
            Some((false, count)) => {
                if incremental {
                    let _ = self
                        .assigned
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            Some(n.saturating_sub(count))
                        });
                } else {
                    self.assigned.store(0, Ordering::Relaxed);
                }
            }
            None => {
                self.assigned.store(0, Ordering::Relaxed);
                self.joined.store(false, Ordering::Relaxed);
            }
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

/// Revocation flags and in-flight work, shared between the rebalance callback and the
/// partition workers.
#[derive(Default)]
struct Assignment {
    revoked: Mutex<HashMap<i32, Arc<AtomicBool>>>,
    /// Partitions whose worker holds them (from taking ownership until letting them go), with
    /// how many such workers.
    busy: Mutex<HashMap<i32, usize>>,
    /// Signalled when a worker lets its partition go.
    idle: Condvar,
    /// Wakes workers waiting for a message or a turn when partitions are revoked.
    revocation: Notify,
    /// The listener is going away (shutdown or crash): revocations no longer wait.
    closing: AtomicBool,
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

    /// Marks `partition` busy until the returned guard is dropped.
    fn busy(self: &Arc<Self>, partition: i32) -> Busy {
        *self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(partition)
            .or_default() += 1;
        Busy {
            assignment: Arc::clone(self),
            partition,
        }
    }

    /// Flags `partitions` revoked, then waits, at most `timeout`, until their workers have let
    /// them go: each settles the message or batch in hand (it starts nothing new), gives up
    /// its ownership row, and ends; so the offsets committed next cover its work and the next
    /// owner neither consumes it again nor takes it for a dead owner. The wait blocks the
    /// thread that polls the consumer; on a multi-threaded runtime other tasks move off it
    /// first.
    fn revoke(&self, partitions: &TopicPartitionList, timeout: Duration, listener_id: &str) {
        let revoked: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        {
            let flags = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            for partition in &revoked {
                if let Some(flag) = flags.get(partition) {
                    flag.store(true, Ordering::SeqCst);
                }
            }
        }
        self.revocation.notify_waiters();
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        let wait = || {
            let deadline = std::time::Instant::now() + timeout;
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let in_flight: Vec<i32> = revoked
                    .iter()
                    .copied()
                    .filter(|p| busy.get(p).is_some_and(|n| *n > 0))
                    .collect();
                if in_flight.is_empty() {
                    return;
                }
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    tracing::warn!(
                        target: "checkpoint", listener_id, partitions = ?in_flight,
                        timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                        "revoked partitions still busy after revoke_timeout; the next owner may \
                         consume their in-flight messages again"
                    );
                    return;
                }
                busy = self
                    .idle
                    .wait_timeout(busy, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_threaded {
            tokio::task::block_in_place(wait);
        } else {
            // One thread runs everything: the workers cannot move while it blocks.
            tracing::debug!(target: "checkpoint", listener_id, "current-thread runtime: revoke does not wait for in-flight work");
        }
    }
}

/// A partition's worker holds the partition while this lives.
struct Busy {
    assignment: Arc<Assignment>,
    partition: i32,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut busy = self
            .assignment
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = busy.get_mut(&self.partition) {
            *n = n.saturating_sub(1);
        }
        self.assignment.idle.notify_all();
    }
}

/// Shows the listener out of its group in its stats when it ends, however it ends.
struct Left(Arc<ListenerStats>);

impl Drop for Left {
    fn drop(&mut self) {
        self.0.rebalanced(None, false);
    }
}

/// Marks the assignment closing when the listener ends, however it ends, so the rebalance
/// callback run by closing the consumer does not wait for workers that are gone.
struct Closing(Arc<Assignment>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.closing.store(true, Ordering::SeqCst);
        self.0.idle.notify_all();
    }
}

struct ListenerContext {
    listener_id: String,
    /// How long a revocation waits for in-flight work.
    revoke_timeout: Duration,
    /// `partition.assignment.strategy` is cooperative: (un)assign incrementally.
    cooperative: bool,
    assignment: Arc<Assignment>,
    stats: Arc<ListenerStats>,
    labels: telemetry::Labels,
    /// Secret property values, masked in what librdkafka reports.
    secrets: crate::secret::Secrets,
}

impl ClientContext for ListenerContext {
    /// librdkafka's statistics, every `statistics.interval.ms`: consumer lag per partition.
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.labels.statistics(&statistics);
    }

    /// A client-level error (librdkafka keeps reconnecting by itself): logged, and kept for
    /// [`ListenerStats::last_client_error`]. "All brokers are down" only sums up the errors
    /// before it, so it does not replace them.
    fn error(&self, error: KafkaError, reason: &str) {
        let text = self.secrets.redact(&format!("{error}: {reason}"));
        tracing::warn!(target: "checkpoint", listener_id = %self.listener_id, error = %text, "kafka client error");
        let summary = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        if !summary || self.stats.last_client_error().is_none() {
            self.stats.client_failed(text);
        }
    }
}

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
            self.assignment
                .revoke(partitions, self.revoke_timeout, &self.listener_id);
            // A rebalance, not the revocation that closing the consumer makes.
            if partitions.count() > 0 && !self.assignment.closing.load(Ordering::SeqCst) {
                crash::reach(CrashPoint::Rebalance);
            }
            commit_stored(consumer, &self.listener_id, "revoke");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.stats
                    .rebalanced(Some((true, partitions.count())), self.cooperative);
                self.labels.rebalanced(true, &partition_ids(partitions));
                // librdkafka keeps a partition's pause flag across unassign and assign: one
                // paused (backing off) when it was revoked would never fetch again.
                if let Err(error) = consumer.resume(partitions) {
                    tracing::debug!(target: "checkpoint", listener_id = %self.listener_id, %error, "resuming assigned partitions failed");
                }
                tracing::info!(
                    target: "checkpoint", listener_id = %self.listener_id,
                    partitions = ?partitions.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(),
                    "partitions assigned"
                );
            }
            Rebalance::Revoke(partitions) => {
                self.stats
                    .rebalanced(Some((false, partitions.count())), self.cooperative);
                if consumer.assignment_lost() {
                    // Out of the group (session timed out, coordinator gone): not ready until
                    // the next assignment.
                    self.stats.rebalanced(None, self.cooperative);
                }
                self.labels.rebalanced(false, &partition_ids(partitions));
                tracing::info!(target: "checkpoint", listener_id = %self.listener_id, "partitions revoked");
            }
            Rebalance::Error(error) => {
                tracing::warn!(target: "checkpoint", listener_id = %self.listener_id, %error, "rebalance error");
            }
        }
    }
}

fn partition_ids(partitions: &TopicPartitionList) -> Vec<i32> {
    partitions
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
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

/// The listener's budget of queued bytes, shared fairly: each partition with a worker may
/// hold `max / partitions` bytes, so one partition stuck behind a failing message holds its
/// share and the others keep flowing.
struct Budget {
    max: usize,
    stats: Arc<ListenerStats>,
    /// Partitions with a worker.
    partitions: AtomicUsize,
    /// Signalled when a partition's bytes drop below half of its share.
    drained: Notify,
}

impl Budget {
    fn share(&self) -> usize {
        (self.max / self.partitions.load(Ordering::SeqCst).max(1)).max(1)
    }

    /// The partition holds its share or more: it should pause.
    fn over(&self, flow: &Flow) -> bool {
        flow.bytes.load(Ordering::SeqCst) >= self.share()
    }

    /// The partition holds less than half its share: it may resume.
    fn low(&self, flow: &Flow) -> bool {
        flow.bytes.load(Ordering::SeqCst) < self.share() / 2 + 1
    }

    fn take(budget: &Arc<Self>, flow: &Arc<Flow>, bytes: usize) -> Ticket {
        budget.stats.queued_bytes.fetch_add(bytes, Ordering::SeqCst);
        flow.bytes.fetch_add(bytes, Ordering::SeqCst);
        Ticket {
            budget: Arc::clone(budget),
            flow: Arc::clone(flow),
            bytes,
        }
    }
}

/// Bytes of received messages held against the [`Budget`] until the ticket is dropped
/// (the messages are settled, abandoned or dropped with their worker).
struct Ticket {
    budget: Arc<Budget>,
    flow: Arc<Flow>,
    bytes: usize,
}

impl Ticket {
    fn merge(&mut self, mut other: Self) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget
                .stats
                .queued_bytes
                .fetch_sub(self.bytes, Ordering::SeqCst);
            self.flow.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
            if self.budget.low(&self.flow) {
                self.budget.drained.notify_one();
            }
        }
    }
}

/// A received message on its way to its partition's worker.
struct Queued {
    message: Message,
    ticket: Ticket,
}

/// Backpressure state of one partition, shared by the receive loop and its worker.
#[derive(Default)]
struct Flow {
    /// Messages queued for the worker.
    depth: AtomicUsize,
    /// Bytes of this partition's received, unsettled messages.
    bytes: AtomicUsize,
    /// The partition is paused in librdkafka; held while pausing or resuming, so a pause and
    /// a resume cannot cross and leave librdkafka and this flag disagreeing.
    paused: Mutex<bool>,
    /// The worker is waiting out a backoff (a failing message or a database outage).
    backing_off: AtomicBool,
    /// Signalled when `depth` drops or `backing_off` is set.
    changed: Notify,
    /// Why the worker stopped with an error, for the receive loop.
    error: Mutex<Option<EngineError>>,
    /// When the worker last settled a message (Unix milliseconds; 0: not yet).
    last_settled_ms: std::sync::atomic::AtomicI64,
}

impl Flow {
    fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pauses or resumes the partition in librdkafka, unless it already is.
    fn set_paused(&self, consumer: &Consumer_, topic: &str, partition: i32, paused: bool) {
        let mut state = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if *state != paused {
            set_paused(consumer, topic, partition, paused);
            *state = paused;
        }
    }
}

/// One partition's worker.
struct PartitionWorker {
    queue: mpsc::UnboundedSender<Queued>,
    flow: Arc<Flow>,
    revoked: Arc<AtomicBool>,
    task: JoinHandle<()>,
    /// True once the task has ended, however it ended.
    ended: watch::Receiver<bool>,
    /// Left running when the listener returns (shutdown gave up on it) or when a new worker
    /// took over its partition (which first waits for it): never aborted.
    detached: bool,
}

/// Tells whoever waits that a worker's task has ended (dropped with the task's future).
struct Ended(watch::Sender<bool>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Drop for PartitionWorker {
    /// Only when the caller drops `Listener::run`'s future mid-stream (its own cancellation,
    /// a crash of this listener) are its workers cancelled with it. Every path inside the
    /// listener — a partition assigned again, shutdown past its timeout — detaches a worker
    /// instead, so user code is never cancelled by the listener itself.
    fn drop(&mut self) {
        if !self.detached {
            self.task.abort();
        }
    }
}

/// What every partition worker of a listener shares.
struct Shared {
    spec: ListenerSpec,
    assignment: Arc<Assignment>,
    engine: Engine,
    consumer: Arc<Consumer_>,
    origin: Origin,
    stats: Arc<ListenerStats>,
    budget: Arc<Budget>,
    permits: Semaphore,
    stopping: watch::Receiver<bool>,
    labels: telemetry::Labels,
}

impl Shared {
    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }
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

    /// Its id, `group_id/topic` unless set otherwise.
    pub fn listener_id(&self) -> &str {
        &self.spec.listener_id
    }

    /// Its counters, shared: read them while it runs.
    pub fn stats(&self) -> Arc<ListenerStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `shutdown` completes, then finishes in-flight messages (for at most
    /// `shutdown_timeout`), commits and leaves the group. Returns an error when the consumer
    /// cannot start, when a message cannot be settled (see [`ListenerError`]), or when
    /// shutdown had to give up on in-flight work.
    ///
    /// Dropping the returned future instead is a crash of this listener: its workers are
    /// cancelled where they stand, nothing settled is lost, and unsettled messages are
    /// redelivered (and deduplicated) later. The consumer is closed, which commits the offsets
    /// already stored, so it is a crash after the last commit, not a process kill. After such
    /// a drop, also drop the engine's [`Store`](crate::Store): the MySQL driver does not
    /// survive a query interrupted mid-flight, so its pooled connections must not be reused.
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
            consumer: Arc::clone(&consumer),
            stats: self.stats,
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
        let mut outage = 0;
        let mut failure = None;
        loop {
            let received = tokio::select! {
                () = &mut shutdown => break,
                _ = sweep.tick() => {
                    if published.elapsed() >= telemetry::REFRESH_EVERY {
                        published = tokio::time::Instant::now();
                        publish(&shared, &workers);
                    }
                    None
                }
                () = shared.budget.drained.notified() => None,
                received = consumer.recv() => Some(received),
            };
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
                        workers.insert(partition, spawn_worker(&shared, partition, previous));
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
                worker.detached = true;
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

/// Refreshes the listener's gauges.
fn publish(shared: &Shared, workers: &HashMap<i32, PartitionWorker>) {
    let stats = shared.stats.snapshot();
    let mut gauges = telemetry::Gauges {
        assigned: stats.assigned_partitions,
        queued_bytes: stats.queued_bytes,
        in_flight: shared
            .spec
            .max_concurrency
            .max(1)
            .saturating_sub(shared.permits.available_permits()),
        ..telemetry::Gauges::default()
    };
    for (&partition, worker) in workers {
        if worker.revoked.load(Ordering::SeqCst) {
            continue;
        }
        let flow = &worker.flow;
        gauges.paused += usize::from(flow.is_paused());
        gauges.backing_off += usize::from(flow.backing_off.load(Ordering::SeqCst));
        gauges.queued_messages += flow.depth.load(Ordering::SeqCst);
        let settled = flow.last_settled_ms.load(Ordering::Relaxed);
        if settled > 0 {
            gauges.last_settled.push((partition, settled));
        }
    }
    shared.labels.publish(&gauges);
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
        if flow.is_paused()
            && !flow.backing_off.load(Ordering::SeqCst)
            && flow.depth.load(Ordering::SeqCst) <= RESUME_AT
            && shared.budget.low(flow)
        {
            flow.set_paused(&shared.consumer, &shared.spec.topic, partition, false);
        }
    }
    Ok(())
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
            flow.set_paused(consumer, topic, partition, true);
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

/// A worker for `partition`. When the partition was ours before (revoked, then assigned
/// again), `previous` is the worker it had: the new one starts only once that one has ended,
/// so two workers never handle one partition at once and no user code is cancelled.
fn spawn_worker(
    shared: &Arc<Shared>,
    partition: i32,
    previous: Option<PartitionWorker>,
) -> PartitionWorker {
    let (queue, inbox) = mpsc::unbounded_channel::<Queued>();
    let flow = Arc::new(Flow::default());
    let revoked = shared.assignment.flag(partition);
    let (ended_tx, ended) = watch::channel(false);
    let previous = previous.map(|mut worker| {
        worker.detached = true;
        worker.ended.clone()
    });
    let task = {
        let (shared, flow, revoked) = (Arc::clone(shared), Arc::clone(&flow), Arc::clone(&revoked));
        tokio::spawn(async move {
            let _ended = Ended(ended_tx);
            if let Some(mut previous) = previous {
                let _ = previous.wait_for(|ended| *ended).await;
            }
            // Handler panics are caught by the engine; one here is checkpoint's own, and
            // still must not pass unnoticed.
            let worked =
                std::panic::AssertUnwindSafe(work(&shared, partition, inbox, &flow, &revoked))
                    .catch_unwind()
                    .await;
            let error = match worked {
                Ok(Ok(())) => return,
                Ok(Err(error)) => error,
                Err(_) => EngineError::Store(crate::store::StoreError::Unavailable {
                    backend: shared.engine.store().backend(),
                    message: format!("partition {partition}'s worker panicked"),
                }),
            };
            *flow.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        })
    };
    PartitionWorker {
        queue,
        flow,
        revoked,
        task,
        ended,
        detached: false,
    }
}

/// A partition's worker: takes runs (or batches) of queued messages through its session until
/// the partition is revoked, the listener stops, or a message cannot be settled.
async fn work(
    shared: &Shared,
    partition: i32,
    mut inbox: mpsc::UnboundedReceiver<Queued>,
    flow: &Flow,
    revoked: &AtomicBool,
) -> Result<(), EngineError> {
    let mut session = Session::new(
        shared.engine.clone(),
        Arc::clone(&shared.spec.handler),
        shared.origin.clone(),
        shared.spec.policy(),
    );
    let progress = WorkerProgress {
        shared,
        flow,
        revoked,
    };
    // Held from taking ownership until letting the partition go: a revocation waits for it.
    let held = shared.assignment.busy(partition);
    match session
        .begin(&shared.spec.topic, partition, &progress)
        .await
    {
        Ok(()) => {}
        Err(EngineError::Interrupted) => return Ok(()),
        Err(error) => return Err(error),
    }
    let mut stopping = shared.stopping.clone();
    let gone = || revoked.load(Ordering::SeqCst) || shared.stopping();
    loop {
        let revocation = shared.assignment.revocation.notified();
        tokio::pin!(revocation);
        // Registered before the check, so a revocation between the two is not missed.
        revocation.as_mut().enable();
        if gone() {
            break;
        }
        let first = tokio::select! {
            received = inbox.recv() => match received {
                Some(queued) => queued,
                None => break,
            },
            _ = stopping.wait_for(|stop| *stop) => break,
            () = &mut revocation => continue,
        };
        // Wait for a turn first, so the run below takes everything queued meanwhile.
        let permit = tokio::select! {
            permit = shared.permits.acquire() => permit,
            // Not processed: it goes to the next owner.
            () = &mut revocation => continue,
        };
        let Ok(_permit) = permit else {
            break;
        };
        // Take what is already queued: up to batch_size messages for a batch, or up to
        // CHECK_AHEAD messages whose duplicate check is done in one query.
        let window = if shared.spec.batch_size > 1 {
            shared.spec.batch_size
        } else {
            CHECK_AHEAD
        };
        let run = take_queued(shared, partition, &mut inbox, flow, Some(first), window);
        if gone() {
            // Not ours any more, or shutting down: leave it to the next owner.
            break;
        }
        let done = if shared.spec.batch_size > 1 {
            settle_batches(shared, partition, &mut inbox, run, &mut session, &progress).await?
        } else {
            settle_run(shared, run, &mut session, &progress).await?
        };
        if !done {
            break;
        }
    }
    // Nothing of this partition is inside `consume` any more: let it go cleanly. (A worker
    // that ends with an error keeps its ownership row, so the next owner counts the message
    // it stopped at.)
    let left = match session.end(&progress).await {
        Ok(()) | Err(EngineError::Interrupted) => Ok(()),
        Err(error) => Err(error),
    };
    drop(held);
    left
}

/// Messages taken from a partition's queue, with their bytes still held against the budget.
struct Run {
    messages: Vec<Message>,
    _ticket: Option<Ticket>,
}

/// Takes `first` (already received from `inbox`) and what else is queued for `partition`, up
/// to `window` messages, and resumes the partition once few enough are left queued.
fn take_queued(
    shared: &Shared,
    partition: i32,
    inbox: &mut mpsc::UnboundedReceiver<Queued>,
    flow: &Flow,
    first: Option<Queued>,
    window: usize,
) -> Run {
    let mut messages = Vec::new();
    let mut ticket: Option<Ticket> = None;
    let mut next = first.or_else(|| inbox.try_recv().ok());
    while let Some(queued) = next.take() {
        messages.push(queued.message);
        match &mut ticket {
            Some(held) => held.merge(queued.ticket),
            None => ticket = Some(queued.ticket),
        }
        if messages.len() < window {
            next = inbox.try_recv().ok();
        }
    }
    let taken = messages.len();
    let left = flow.depth.fetch_sub(taken, Ordering::SeqCst) - taken;
    flow.changed.notify_one();
    if left <= RESUME_AT && shared.budget.low(flow) {
        flow.set_paused(&shared.consumer, &shared.spec.topic, partition, false);
    }
    Run {
        messages,
        _ticket: ticket,
    }
}

/// What the engine's loop tells a partition's worker, and how it waits: backoffs mark the
/// partition as backing off (the receive loop pauses it) and end on shutdown; a handler retry
/// also ends on revoke (the next owner redelivers the message), a database wait does not (the
/// message may have been consumed already).
struct WorkerProgress<'a> {
    shared: &'a Shared,
    flow: &'a Flow,
    revoked: &'a AtomicBool,
}

impl Progress for WorkerProgress<'_> {
    fn wait(&self, delay: Duration, cause: WaitCause) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let retry = matches!(cause, WaitCause::Retry { .. });
            if retry {
                self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                self.shared.labels.retried();
            }
            let gone = || retry && self.revoked.load(Ordering::SeqCst);
            if gone() {
                return false;
            }
            let mut stopping = self.shared.stopping.clone();
            self.flow.backing_off.store(true, Ordering::SeqCst);
            self.flow.changed.notify_one();
            let until = tokio::time::Instant::now() + delay;
            let mut slept = true;
            // In slices, so a revocation (which waits for this worker) is noticed soon.
            while slept && !gone() && tokio::time::Instant::now() < until {
                let slice = until.min(tokio::time::Instant::now() + REVOKE_CHECK);
                slept = tokio::select! {
                    () = tokio::time::sleep_until(slice) => true,
                    _ = stopping.wait_for(|stop| *stop) => false,
                };
            }
            self.flow.backing_off.store(false, Ordering::SeqCst);
            slept && !gone()
        })
    }

    /// Marks `message` settled: its offset may be committed. Storing fails only when the
    /// partition was revoked meanwhile; the next owner then redelivers it and the checkpoint
    /// dedups it.
    fn settled(&self, message: &Message, disposition: &Disposition) {
        self.shared.stats.count(disposition);
        self.flow
            .last_settled_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        if matches!(disposition, Disposition::Failed { .. }) {
            self.shared.labels.failed();
        }
        // Only where this attempt committed a row: a redelivered duplicate commits nothing.
        if matches!(
            disposition,
            Disposition::Acknowledged { .. } | Disposition::Failed { .. }
        ) {
            crash::reach(CrashPoint::AfterCommit);
        }
        if let Err(error) =
            self.shared
                .consumer
                .store_offset(&message.topic, message.partition, message.offset)
        {
            tracing::debug!(target: "checkpoint", partition = message.partition, %error, "offset not stored");
        }
    }
}

/// Per-message mode over a run of queued messages: one duplicate check for the run, then each
/// message consumed, stored and settled on its own, in order. False when abandoned.
async fn settle_run(
    shared: &Shared,
    run: Run,
    session: &mut Session,
    progress: &WorkerProgress<'_>,
) -> Result<bool, EngineError> {
    session.check_ahead(&run.messages).await;
    for message in &run.messages {
        if progress.revoked.load(Ordering::SeqCst) || shared.stopping() {
            return Ok(false);
        }
        if session.settle(message, progress).await?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Batch mode: takes `first`, then up to `TURN_BATCHES - 1` further batches queued meanwhile,
/// each until it is settled. The duplicate check of each next batch runs while the one before
/// is processed. False when abandoned (shutdown or revoke).
async fn settle_batches(
    shared: &Shared,
    partition: i32,
    inbox: &mut mpsc::UnboundedReceiver<Queued>,
    first: Run,
    session: &mut Session,
    progress: &WorkerProgress<'_>,
) -> Result<bool, EngineError> {
    let mut batch = first;
    for turn in 1..=TURN_BATCHES {
        let next = if turn < TURN_BATCHES {
            take_queued(
                shared,
                partition,
                inbox,
                progress.flow,
                None,
                shared.spec.batch_size,
            )
        } else {
            Run {
                messages: Vec::new(),
                _ticket: None,
            }
        };
        let Run {
            messages,
            _ticket: held,
        } = batch;
        if !session
            .settle_batch(messages, &next.messages, progress)
            .await?
        {
            return Ok(false);
        }
        drop(held);
        if next.messages.is_empty() {
            return Ok(true);
        }
        if progress.revoked.load(Ordering::SeqCst) || shared.stopping() {
            // Taken but not processed: redelivered to the next owner.
            return Ok(false);
        }
        batch = next;
    }
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

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
