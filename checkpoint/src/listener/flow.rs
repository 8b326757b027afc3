//! Backpressure: the byte budget shared by the partitions, each partition's queue state, and
//! pausing a partition instead of stalling the group.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::Notify;

use super::stats::ListenerStats;
use super::worker::PartitionWorker;
use super::{Consumer_, HOLD_BACK_MAX, PAUSE_AT};
use crate::engine::EngineError;
use crate::message::Message;

/// The listener's budget of queued bytes, shared fairly: each partition with a worker may
/// hold `max / partitions` bytes, so one partition stuck behind a failing message holds its
/// share and the others keep flowing.
pub(super) struct Budget {
    pub(super) max: usize,
    pub(super) stats: Arc<ListenerStats>,
    /// Partitions with a worker.
    pub(super) partitions: AtomicUsize,
    /// Signalled when a partition's bytes drop below half of its share.
    pub(super) drained: Notify,
}

impl Budget {
    pub(super) fn share(&self) -> usize {
        (self.max / self.partitions.load(Ordering::SeqCst).max(1)).max(1)
    }

    /// The partition holds its share or more: it should pause.
    pub(super) fn over(&self, flow: &Flow) -> bool {
        flow.bytes.load(Ordering::SeqCst) >= self.share()
    }

    /// The partition holds less than half its share: it may resume.
    pub(super) fn low(&self, flow: &Flow) -> bool {
        flow.bytes.load(Ordering::SeqCst) < self.share() / 2 + 1
    }

    pub(super) fn take(budget: &Arc<Self>, flow: &Arc<Flow>, bytes: usize) -> Ticket {
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
pub(super) struct Ticket {
    pub(super) budget: Arc<Budget>,
    pub(super) flow: Arc<Flow>,
    pub(super) bytes: usize,
}

impl Ticket {
    pub(super) fn merge(&mut self, mut other: Self) {
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
pub(super) struct Queued {
    pub(super) message: Message,
    pub(super) ticket: Ticket,
}

/// Backpressure state of one partition, shared by the receive loop and its worker.
#[derive(Default)]
pub(super) struct Flow {
    /// Messages queued for the worker.
    pub(super) depth: AtomicUsize,
    /// Bytes of this partition's received, unsettled messages.
    pub(super) bytes: AtomicUsize,
    /// The partition is paused in librdkafka; held while pausing or resuming, so a pause and
    /// a resume cannot cross and leave librdkafka and this flag disagreeing.
    pub(super) paused: Mutex<bool>,
    /// An operator paused the partition (see `ListenerControl`): nothing resumes it until
    /// they resume it.
    pub(super) held: AtomicBool,
    /// The worker is waiting out a backoff (a failing message or a database outage).
    pub(super) backing_off: AtomicBool,
    /// Signalled when `depth` drops or `backing_off` is set.
    pub(super) changed: Notify,
    /// Why the worker stopped with an error, for the receive loop.
    pub(super) error: Mutex<Option<EngineError>>,
    /// When the worker last settled a message (Unix milliseconds; 0: not yet).
    pub(super) last_settled_ms: std::sync::atomic::AtomicI64,
}

impl Flow {
    pub(super) fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pauses or resumes the partition in librdkafka, unless it already is; a partition an
    /// operator holds is not resumed.
    pub(super) fn set_paused(
        &self,
        consumer: &Consumer_,
        topic: &str,
        partition: i32,
        paused: bool,
    ) {
        let mut state = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if !paused && self.held.load(Ordering::SeqCst) {
            return;
        }
        if *state != paused {
            set_paused(consumer, topic, partition, paused);
            *state = paused;
        }
    }
}

/// A partition has `PAUSE_AT` messages queued. While its worker is merely busy, the receive
/// loop waits for it, up to [`HOLD_BACK_MAX`] (librdkafka keeps fetching up to
/// `queued.max.messages.kbytes` meanwhile): pausing would make librdkafka drop what it
/// prefetched and refetch it later. When the worker waits out a backoff, or takes longer than
/// that, the partition is paused instead, so the other partitions keep flowing and the consumer
/// keeps polling (rebalances are served from the poll). True when shutdown was requested
/// meanwhile.
pub(super) async fn hold_back(
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

pub(super) fn set_paused(consumer: &Consumer_, topic: &str, partition: i32, paused: bool) {
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
