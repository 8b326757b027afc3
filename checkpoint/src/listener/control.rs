//! Operator commands to a running listener: pause and resume a partition.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use rdkafka::consumer::Consumer as _;

use tokio::sync::Notify;

use super::flow::{Flow, set_paused};
use super::worker::PartitionWorker;
use super::{Consumer_, Shared};

/// Pauses and resumes partitions of a running [`Listener`](super::Listener), from the API, the
/// console or the application itself. Shared: take it with
/// [`Listener::control`](super::Listener::control) before running the listener.
///
/// A paused partition fetches nothing more; what was already received for it (at most its
/// queue) is still handled, settled and committed, then it waits. Its offsets and its place
/// in the group are kept, so resuming goes on exactly where it stopped. A pause lasts until
/// [`resume`](Self::resume), across rebalances of this listener: a partition taken away and
/// assigned to it again stays paused. It does not reach other instances of the group; a
/// partition that moves to another instance flows there.
#[derive(Debug, Default)]
pub struct ListenerControl {
    paused: Mutex<BTreeSet<i32>>,
    pub(super) changed: Notify,
}

impl ListenerControl {
    /// Pauses `partition`; false when it already was.
    pub fn pause(&self, partition: i32) -> bool {
        let changed = self.lock().insert(partition);
        if changed {
            self.changed.notify_one();
        }
        changed
    }

    /// Resumes `partition`; false when it was not paused by [`pause`](Self::pause). It
    /// fetches again once backpressure and backoff allow.
    pub fn resume(&self, partition: i32) -> bool {
        let changed = self.lock().remove(&partition);
        if changed {
            self.changed.notify_one();
        }
        changed
    }

    /// True while `partition` is paused by [`pause`](Self::pause).
    pub fn is_paused(&self, partition: i32) -> bool {
        self.lock().contains(&partition)
    }

    /// The partitions paused by [`pause`](Self::pause), in order.
    pub fn paused(&self) -> Vec<i32> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
        self.paused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Applies the operator's pauses to assigned partitions that have no worker yet (nothing
/// received since they were assigned).
pub(super) fn control_idle(
    shared: &Shared,
    consumer: &Consumer_,
    workers: &HashMap<i32, PartitionWorker>,
) {
    // The consumer's own context follows its assignment.
    for partition in consumer.context().labels.owned() {
        let idle = workers
            .get(&partition)
            .is_none_or(|w| w.revoked.load(Ordering::SeqCst));
        if idle {
            let paused = shared.control.is_paused(partition);
            set_paused(consumer, &shared.spec.topic, partition, paused);
        }
    }
}

/// Applies an operator's pause of `partition` to its flow: held and paused in librdkafka, or
/// released (resumed by `check_workers` once backpressure and backoff allow).
pub(super) fn hold_if_paused(shared: &Shared, consumer: &Consumer_, partition: i32, flow: &Flow) {
    let held = shared.control.is_paused(partition);
    flow.held.store(held, Ordering::SeqCst);
    if held {
        flow.set_paused(consumer, &shared.spec.topic, partition, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_report_changes() {
        let control = ListenerControl::default();
        assert!(control.pause(2));
        assert!(!control.pause(2));
        assert!(control.pause(0));
        assert_eq!(control.paused(), vec![0, 2]);
        assert!(control.is_paused(2));
        assert!(control.resume(2));
        assert!(!control.resume(2));
        assert!(!control.is_paused(2));
        assert_eq!(control.paused(), vec![0]);
    }
}
