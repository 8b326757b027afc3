//! Rebalances: revocation flags and in-flight work shared with the partition workers, the
//! librdkafka context that waits for that work before a partition is let go, and commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::Notify;

use super::stats::ListenerStats;
use super::telemetry;
use crate::crash::{self, CrashPoint};

/// Revocation flags and in-flight work, shared between the rebalance callback and the
/// partition workers.
#[derive(Default)]
pub(super) struct Assignment {
    pub(super) revoked: Mutex<HashMap<i32, Arc<AtomicBool>>>,
    /// Partitions whose worker holds them (from taking ownership until letting them go), with
    /// how many such workers.
    pub(super) busy: Mutex<HashMap<i32, usize>>,
    /// Signalled when a worker lets its partition go.
    pub(super) idle: Condvar,
    /// Wakes workers waiting for a message or a turn when partitions are revoked.
    pub(super) revocation: Notify,
    /// The listener is going away (shutdown or crash): revocations no longer wait.
    pub(super) closing: AtomicBool,
}

impl Assignment {
    /// The flag of a freshly assigned partition (a new one if the last was revoked).
    pub(super) fn flag(&self, partition: i32) -> Arc<AtomicBool> {
        let mut flags = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        let flag = flags.entry(partition).or_default();
        if flag.load(Ordering::SeqCst) {
            *flag = Arc::default();
        }
        Arc::clone(flag)
    }

    /// Marks `partition` busy until the returned guard is dropped.
    pub(super) fn busy(self: &Arc<Self>, partition: i32) -> Busy {
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
    pub(super) fn revoke(
        &self,
        partitions: &TopicPartitionList,
        timeout: Duration,
        listener_id: &str,
    ) {
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
pub(super) struct Busy {
    pub(super) assignment: Arc<Assignment>,
    pub(super) partition: i32,
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
pub(super) struct Left(pub(super) Arc<ListenerStats>);

impl Drop for Left {
    fn drop(&mut self) {
        self.0.rebalanced(None, false);
    }
}

/// Marks the assignment closing when the listener ends, however it ends, so the rebalance
/// callback run by closing the consumer does not wait for workers that are gone.
pub(super) struct Closing(pub(super) Arc<Assignment>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.closing.store(true, Ordering::SeqCst);
        self.0.idle.notify_all();
    }
}

pub(super) struct ListenerContext {
    pub(super) listener_id: String,
    /// How long a revocation waits for in-flight work.
    pub(super) revoke_timeout: Duration,
    /// `partition.assignment.strategy` is cooperative: (un)assign incrementally.
    pub(super) cooperative: bool,
    pub(super) assignment: Arc<Assignment>,
    pub(super) stats: Arc<ListenerStats>,
    /// Partitions an operator paused stay paused when assigned again.
    pub(super) control: Arc<super::ListenerControl>,
    pub(super) labels: telemetry::Labels,
    /// Secret property values, masked in what librdkafka reports.
    pub(super) secrets: crate::secret::Secrets,
}

impl ClientContext for ListenerContext {
    /// librdkafka's statistics, every `statistics.interval.ms`: consumer lag per partition.
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.stats.lagged(self.labels.statistics(&statistics));
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
                let mut held = TopicPartitionList::new();
                for element in partitions.elements() {
                    if self.control.is_paused(element.partition()) {
                        held.add_partition(element.topic(), element.partition());
                    }
                }
                if held.count() > 0
                    && let Err(error) = consumer.pause(&held)
                {
                    tracing::warn!(target: "checkpoint", listener_id = %self.listener_id, %error, "pausing operator-paused partitions failed");
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

pub(super) fn partition_ids(partitions: &TopicPartitionList) -> Vec<i32> {
    partitions
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// Commits the stored offsets synchronously; "nothing to commit" is not an error, and a commit
/// refused mid-rebalance only means a redelivery the unique checkpoint key absorbs.
pub(super) fn commit_stored<K, C>(consumer: &K, listener_id: &str, when: &str)
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
