//! A listener's live counters and their snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use chrono::{DateTime, Utc};

use crate::engine::Disposition;

/// How often a throughput sample is kept, and how many: ten minutes at 5 s.
pub(super) const SAMPLE_EVERY_MS: i64 = 5_000;
const SAMPLES_KEPT: usize = 120;

/// Counters of one listener, readable while it runs.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub(super) received: AtomicU64,
    pub(super) acknowledged: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) queued_bytes: AtomicUsize,
    pub(super) assigned: AtomicUsize,
    pub(super) joined: AtomicBool,
    /// The last error librdkafka reported for the client (secrets masked), until the next
    /// assignment.
    pub(super) client_error: Mutex<Option<String>>,
    /// Each assigned partition's state, as the receive loop last published it (about once a
    /// second).
    pub(super) partitions: Mutex<Vec<PartitionSnapshot>>,
    /// Consumer lag and committed offset per assigned partition, from librdkafka's latest
    /// statistics.
    pub(super) offsets: Mutex<super::telemetry::PartitionOffsets>,
    /// High watermarks of paused partitions, asked of the broker: librdkafka learns a
    /// partition's high watermark by fetching it, so its statistics stop following a paused
    /// one.
    pub(super) paused_highs: Mutex<BTreeMap<i32, i64>>,
    /// Messages settled so far, sampled every [`SAMPLE_EVERY_MS`], oldest first.
    pub(super) samples: Mutex<VecDeque<ThroughputSample>>,
}

/// One assigned partition as the receive loop saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PartitionSnapshot {
    /// The partition.
    pub partition: i32,
    /// Messages received and waiting for the partition's worker.
    pub queued_messages: usize,
    /// Fetching is paused: by backpressure, a backoff, or an operator.
    pub paused: bool,
    /// An operator paused it (see [`ListenerControl`](super::ListenerControl)); it stays
    /// paused until resumed.
    pub paused_by_operator: bool,
    /// The worker is waiting out a backoff (a failing message or a database outage).
    pub backing_off: bool,
    /// When the partition last settled a message; `None` before the first.
    pub last_settled: Option<DateTime<Utc>>,
    /// Messages between the high watermark and the group's committed offset, from librdkafka's
    /// statistics (every `statistics.interval.ms`); `None` until known.
    pub lag: Option<i64>,
}

/// Messages settled by a listener up to a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ThroughputSample {
    /// When the sample was taken.
    pub at: DateTime<Utc>,
    /// Messages settled since the listener started.
    pub settled: u64,
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

    /// Each assigned partition's state (published about once a second), by partition.
    pub fn partitions(&self) -> Vec<PartitionSnapshot> {
        lock(&self.partitions).clone()
    }

    /// Messages settled over the last ten minutes, one sample every five seconds, oldest
    /// first: the difference of two samples is the throughput between them.
    pub fn throughput(&self) -> Vec<ThroughputSample> {
        lock(&self.samples).iter().copied().collect()
    }

    /// Replaces the partition states, adding the lag last reported (for a paused partition,
    /// its asked-for high watermark less the committed offset), and keeps a throughput sample
    /// when one is due.
    pub(super) fn published(&self, mut partitions: Vec<PartitionSnapshot>, now: DateTime<Utc>) {
        {
            let offsets = lock(&self.offsets);
            let highs = lock(&self.paused_highs);
            for partition in &mut partitions {
                let p = partition.partition;
                let asked = match (highs.get(&p), offsets.committed.get(&p)) {
                    (Some(high), Some(committed)) if partition.paused => {
                        Some(high.saturating_sub(*committed).max(0))
                    }
                    _ => None,
                };
                partition.lag = asked.or_else(|| offsets.lag.get(&p).copied());
            }
        }
        partitions.sort_by_key(|p| p.partition);
        *lock(&self.partitions) = partitions;
        let settled = self.snapshot().settled();
        let mut samples = lock(&self.samples);
        let due = samples
            .back()
            .is_none_or(|last| (now - last.at).num_milliseconds() >= SAMPLE_EVERY_MS);
        if due {
            if samples.len() == SAMPLES_KEPT {
                samples.pop_front();
            }
            samples.push_back(ThroughputSample { at: now, settled });
        }
    }

    /// Publishes `partitions` as assigned and idle, for tests of what reads them.
    #[cfg(test)]
    pub(crate) fn assigned_for_tests(&self, partitions: &[i32]) {
        let idle = |partition| PartitionSnapshot {
            partition,
            queued_messages: 0,
            paused: false,
            paused_by_operator: false,
            backing_off: false,
            last_settled: None,
            lag: None,
        };
        self.published(partitions.iter().copied().map(idle).collect(), Utc::now());
    }

    /// librdkafka's latest lag and committed offset of each partition this listener owns.
    pub(super) fn lagged(&self, offsets: super::telemetry::PartitionOffsets) {
        *lock(&self.offsets) = offsets;
    }

    /// The high watermarks just asked for the paused partitions (the others are forgotten).
    pub(super) fn paused_highs(&self, highs: BTreeMap<i32, i64>) {
        *lock(&self.paused_highs) = highs;
    }

    /// The lag of a paused partition from its asked-for high watermark, when both it and the
    /// committed offset are known.
    pub(super) fn paused_lag(&self, partition: i32) -> Option<i64> {
        let high = *lock(&self.paused_highs).get(&partition)?;
        let committed = *lock(&self.offsets).committed.get(&partition)?;
        Some(high.saturating_sub(committed).max(0))
    }

    pub(super) fn client_failed(&self, error: String) {
        *self
            .client_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
    }

    /// A rebalance assigned (`Some(true)`) or revoked (`Some(false)`) `count` partitions,
    /// incrementally or (eager) all of them; `None`: the listener left its group.
    pub(super) fn rebalanced(&self, change: Option<(bool, usize)>, incremental: bool) {
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
                lock(&self.partitions).clear();
                *lock(&self.offsets) = super::telemetry::PartitionOffsets::default();
                lock(&self.paused_highs).clear();
            }
        }
    }

    pub(super) fn count(&self, disposition: &Disposition) {
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
