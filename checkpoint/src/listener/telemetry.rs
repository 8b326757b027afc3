//! The listener's metrics, by Prometheus conventions, each labelled `topic` and `group_id`
//! (and `partition` where it applies). Gauges are refreshed by the receive loop about once a
//! second and consumer lag by librdkafka's statistics callback, so the hot path only bumps
//! counters.

use std::time::Duration;

use rdkafka::statistics::Statistics;

/// Messages between the high watermark and the group's committed offset, per partition
/// (librdkafka's `consumer_lag`, refreshed every `statistics.interval.ms`). Before the group
/// has committed anything on a partition it is, for a listener that starts from the
/// beginning, the whole partition (high minus low watermark); otherwise it is not reported
/// until the first commit. librdkafka stops learning a paused partition's high watermark, so
/// for paused partitions the listener asks the broker for it every 5 s.
pub const CONSUMER_LAG: &str = "checkpoint_consumer_lag";
/// Partitions assigned to the listener.
pub const ASSIGNED: &str = "checkpoint_assigned_partitions";
/// Partitions paused (backpressure or a backoff).
pub const PAUSED: &str = "checkpoint_paused_partitions";
/// Partitions whose worker is waiting out a backoff (a failing message or a database outage).
pub const BACKING_OFF: &str = "checkpoint_backing_off_partitions";
/// Messages received and queued for their partition's worker.
pub const QUEUED_MESSAGES: &str = "checkpoint_queued_messages";
/// Bytes of received messages not yet settled.
pub const QUEUED_BYTES: &str = "checkpoint_queued_bytes";
/// Partitions whose worker holds a turn now (a message or batch in progress).
pub const IN_FLIGHT: &str = "checkpoint_in_flight_partitions";
/// When the partition last settled a message, as a Unix time in seconds.
pub const LAST_SETTLED: &str = "checkpoint_last_settled_timestamp_seconds";
/// Failed attempts that will be retried.
pub const RETRIES: &str = "checkpoint_retries_total";
/// Failure rows recorded.
pub const FAILURES: &str = "checkpoint_failures_recorded_total";
/// Rebalance events, labelled `kind` (`assign`, `revoke`).
pub const REBALANCES: &str = "checkpoint_rebalances_total";

/// Every metric name this module writes.
pub const ALL: [&str; 11] = [
    CONSUMER_LAG,
    ASSIGNED,
    PAUSED,
    BACKING_OFF,
    QUEUED_MESSAGES,
    QUEUED_BYTES,
    IN_FLIGHT,
    LAST_SETTLED,
    RETRIES,
    FAILURES,
    REBALANCES,
];

/// How often the receive loop refreshes the gauges.
pub(super) const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// How often the broker is asked for the high watermarks of paused partitions.
pub(super) const PAUSED_WATERMARKS_EVERY: Duration = Duration::from_secs(5);

/// The `statistics.interval.ms` a listener sets when the configuration sets none, so lag is
/// reported out of the box.
pub(super) const STATISTICS_INTERVAL_MS: &str = "5000";

/// Per partition, from one statistics report: the consumer lag and the group's committed
/// offset.
#[derive(Debug, Default)]
pub(super) struct PartitionOffsets {
    pub(super) lag: std::collections::BTreeMap<i32, i64>,
    pub(super) committed: std::collections::BTreeMap<i32, i64>,
}

/// One listener's labels, and the partitions it owns (statistics about others are stale).
#[derive(Debug)]
pub(super) struct Labels {
    topic: String,
    group_id: String,
    /// The consumer starts a partition without a committed offset at its beginning.
    from_beginning: bool,
    owned: std::sync::Mutex<std::collections::BTreeSet<i32>>,
}

/// The gauges of one moment.
#[derive(Debug, Default)]
pub(super) struct Gauges {
    pub(super) assigned: usize,
    pub(super) paused: usize,
    pub(super) backing_off: usize,
    pub(super) queued_messages: usize,
    pub(super) queued_bytes: usize,
    pub(super) in_flight: usize,
    /// `(partition, Unix milliseconds)` of each partition's last settled message.
    pub(super) last_settled: Vec<(i32, i64)>,
}

#[allow(clippy::cast_precision_loss)] // gauges are f64; these counts stay far below 2^52
fn float(n: usize) -> f64 {
    n as f64
}

impl Labels {
    pub(super) fn new(topic: &str, group_id: &str, from_beginning: bool) -> Self {
        Self {
            topic: topic.to_owned(),
            group_id: group_id.to_owned(),
            from_beginning,
            owned: std::sync::Mutex::default(),
        }
    }

    fn pair(&self) -> [(&'static str, String); 2] {
        [
            ("topic", self.topic.clone()),
            ("group_id", self.group_id.clone()),
        ]
    }

    fn with_partition(&self, partition: i32) -> [(&'static str, String); 3] {
        let [topic, group] = self.pair();
        [topic, group, ("partition", partition.to_string())]
    }

    pub(super) fn publish(&self, gauges: &Gauges) {
        let labels = self.pair();
        metrics::gauge!(ASSIGNED, &labels).set(float(gauges.assigned));
        metrics::gauge!(PAUSED, &labels).set(float(gauges.paused));
        metrics::gauge!(BACKING_OFF, &labels).set(float(gauges.backing_off));
        metrics::gauge!(QUEUED_MESSAGES, &labels).set(float(gauges.queued_messages));
        metrics::gauge!(QUEUED_BYTES, &labels).set(float(gauges.queued_bytes));
        metrics::gauge!(IN_FLIGHT, &labels).set(float(gauges.in_flight));
        for (partition, millis) in &gauges.last_settled {
            #[allow(clippy::cast_precision_loss)] // milliseconds since 1970 fit in f64
            let seconds = *millis as f64 / 1_000.0;
            metrics::gauge!(LAST_SETTLED, &self.with_partition(*partition)).set(seconds);
        }
    }

    pub(super) fn retried(&self) {
        metrics::counter!(RETRIES, &self.pair()).increment(1);
    }

    pub(super) fn failed(&self) {
        metrics::counter!(FAILURES, &self.pair()).increment(1);
    }

    /// A rebalance assigned or revoked `partitions`. A revoked partition's lag here is zeroed
    /// (its new owner reports it now: take the maximum over the group's instances) and its
    /// last settled time cleared (NaN), and later statistics about it are ignored.
    pub(super) fn rebalanced(&self, assigned: bool, partitions: &[i32]) {
        let [topic, group] = self.pair();
        let kind = if assigned { "assign" } else { "revoke" };
        metrics::counter!(REBALANCES, &[topic, group, ("kind", kind.to_owned())]).increment(1);
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        for partition in partitions {
            if assigned {
                owned.insert(*partition);
            } else {
                owned.remove(partition);
                metrics::gauge!(CONSUMER_LAG, &self.with_partition(*partition)).set(0.0);
                metrics::gauge!(LAST_SETTLED, &self.with_partition(*partition)).set(f64::NAN);
            }
        }
    }

    /// The partitions this listener owns now.
    pub(super) fn owned(&self) -> Vec<i32> {
        let owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.iter().copied().collect()
    }

    /// librdkafka's statistics: the lag of each partition assigned to this consumer, published
    /// as a gauge and returned, with the group's committed offset of each.
    pub(super) fn statistics(&self, statistics: &Statistics) -> PartitionOffsets {
        let mut offsets = PartitionOffsets::default();
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return offsets;
        };
        let owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        for partition in topic.partitions.values() {
            if !owned.contains(&partition.partition) {
                continue;
            }
            if partition.committed_offset >= 0 {
                offsets
                    .committed
                    .insert(partition.partition, partition.committed_offset);
            }
            let lag = if partition.consumer_lag >= 0 {
                partition.consumer_lag
            } else if self.from_beginning
                && partition.committed_offset < 0
                && partition.hi_offset >= 0
                && partition.lo_offset >= 0
            {
                partition.hi_offset.saturating_sub(partition.lo_offset)
            } else {
                continue;
            };
            offsets.lag.insert(partition.partition, lag);
            #[allow(clippy::cast_precision_loss)] // a lag beyond 2^52 messages is not a thing
            let lag = lag as f64;
            metrics::gauge!(CONSUMER_LAG, &self.with_partition(partition.partition)).set(lag);
        }
        offsets
    }

    /// Publishes the lag of a paused partition, which librdkafka's statistics no longer
    /// follow (see `ListenerStats::paused_highs`).
    pub(super) fn paused_lag(&self, partition: i32, lag: i64) {
        #[allow(clippy::cast_precision_loss)] // a lag beyond 2^52 messages is not a thing
        let lag = lag as f64;
        metrics::gauge!(CONSUMER_LAG, &self.with_partition(partition)).set(lag);
    }
}
