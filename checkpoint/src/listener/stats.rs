//! A listener's live counters and their snapshot.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::engine::Disposition;

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
