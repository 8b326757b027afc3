//! What the receive loop publishes about itself about once a second: the gauges, each
//! partition's state for [`ListenerStats::partitions`](super::ListenerStats::partitions), and
//! the lag of paused partitions, asked of the broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use rdkafka::consumer::Consumer;

use super::worker::PartitionWorker;
use super::{Consumer_, PartitionSnapshot, Shared, telemetry};

/// librdkafka learns a partition's high watermark by fetching it, so its lag stops moving
/// while the partition is paused. The broker is asked for the paused partitions' high
/// watermarks instead, on a blocking thread, off the receive loop: one round of questions at a
/// time (a slow broker delays the next round rather than piling them up), none once the
/// listener stops, and the consumer held only for the duration of each question.
pub(super) fn ask_paused_watermarks(shared: &Arc<Shared>, paused: Vec<i32>) {
    if paused.is_empty() {
        shared.stats.paused_highs(std::collections::BTreeMap::new());
        return;
    }
    if shared.asking_watermarks.swap(true, Ordering::SeqCst) {
        return;
    }
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || {
        let _done = AskingDone(&shared.asking_watermarks);
        let mut highs = std::collections::BTreeMap::new();
        for partition in paused {
            if shared.stopping() {
                return;
            }
            let Some(consumer) = shared.consumer.upgrade() else {
                return;
            };
            match consumer.fetch_watermarks(&shared.spec.topic, partition, PAUSED_WATERMARK_TIMEOUT)
            {
                Ok((_, high)) => {
                    highs.insert(partition, high);
                }
                Err(error) => {
                    tracing::debug!(target: "checkpoint", partition, %error, "asking a paused partition's high watermark failed");
                }
            }
        }
        // A partition revoked meanwhile is another member's to report.
        let owned: Vec<i32> = shared
            .stats
            .partitions()
            .iter()
            .map(|p| p.partition)
            .collect();
        highs.retain(|partition, _| owned.contains(partition));
        let asked: Vec<i32> = highs.keys().copied().collect();
        shared.stats.paused_highs(highs);
        for partition in asked {
            if let Some(lag) = shared.stats.paused_lag(partition) {
                shared.labels.paused_lag(partition, lag);
            }
        }
    });
}

/// Clears the "asking" flag when a round of questions ends, however it ends.
struct AskingDone<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for AskingDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// How long the broker may take to tell a paused partition's high watermark.
const PAUSED_WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// Refreshes the listener's gauges and partition states; returns the paused partitions.
pub(super) fn publish(
    shared: &Shared,
    consumer: &Consumer_,
    workers: &HashMap<i32, PartitionWorker>,
) -> Vec<i32> {
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
    let mut partitions = Vec::new();
    // The consumer's own context follows its assignment.
    for partition in consumer.context().labels.owned() {
        let Some(worker) = workers
            .get(&partition)
            .filter(|w| !w.revoked.load(Ordering::SeqCst))
        else {
            // Assigned, nothing received yet.
            partitions.push(PartitionSnapshot {
                partition,
                queued_messages: 0,
                paused: shared.control.is_paused(partition),
                paused_by_operator: shared.control.is_paused(partition),
                backing_off: false,
                last_settled: None,
                lag: None,
            });
            continue;
        };
        let flow = &worker.flow;
        let paused = flow.is_paused();
        let backing_off = flow.backing_off.load(Ordering::SeqCst);
        let queued_messages = flow.depth.load(Ordering::SeqCst);
        gauges.paused += usize::from(paused);
        gauges.backing_off += usize::from(backing_off);
        gauges.queued_messages += queued_messages;
        let settled = flow.last_settled_ms.load(Ordering::Relaxed);
        if settled > 0 {
            gauges.last_settled.push((partition, settled));
        }
        partitions.push(PartitionSnapshot {
            partition,
            queued_messages,
            paused,
            paused_by_operator: flow.held.load(Ordering::SeqCst),
            backing_off,
            last_settled: (settled > 0)
                .then(|| Utc.timestamp_millis_opt(settled).single())
                .flatten(),
            lag: None,
        });
    }
    shared.labels.publish(&gauges);
    let paused = partitions
        .iter()
        .filter(|p| p.paused)
        .map(|p| p.partition)
        .collect();
    shared.stats.published(partitions, Utc::now());
    paused
}
