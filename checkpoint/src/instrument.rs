//! Notifications: the six points of the checkpoint algorithm, each a `metrics` counter (and a
//! duration histogram for the timed ones) labelled `topic` and `group_id`, a `tracing` event
//! carrying the delivery metadata, and a call to every registered [`Observer`].
//!
//! | notification | kind | counter | histogram (seconds) |
//! |---|---|---|---|
//! | `db_checkpoint.around_consume` | timed | `db_checkpoint_around_consume_total` | `db_checkpoint_around_consume_seconds` |
//! | `db_checkpoint.event_already_exists_check` | timed | `db_checkpoint_event_already_exists_check_total` | `db_checkpoint_event_already_exists_check_seconds` |
//! | `db_checkpoint.event_action` | timed | `db_checkpoint_event_action_total` | `db_checkpoint_event_action_seconds` |
//! | `db_checkpoint.event_acknowledged` | timed | `db_checkpoint_event_acknowledged_total` | `db_checkpoint_event_acknowledged_seconds` |
//! | `db_checkpoint.event_skipped` | instant | `db_checkpoint_event_skipped_total` | – |
//! | `db_checkpoint.event_already_consumed` | instant | `db_checkpoint_event_already_consumed_total` | – |
//!
//! Order per message: ack `exists_check → event_action → event_acknowledged → around_consume`;
//! skip or failure recorded `exists_check → event_action → event_skipped → around_consume`;
//! duplicate `exists_check → event_already_consumed → around_consume`; retryable error
//! `exists_check → event_action → around_consume`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::message::Metadata;

/// Notification names, as Phobos DB Checkpoint published them.
pub mod names {
    /// Wraps all checkpoint processing of one delivery attempt.
    pub const AROUND_CONSUME: &str = "db_checkpoint.around_consume";
    /// Wraps the duplicate check.
    pub const EVENT_ALREADY_EXISTS_CHECK: &str = "db_checkpoint.event_already_exists_check";
    /// Wraps the call to `consume`.
    pub const EVENT_ACTION: &str = "db_checkpoint.event_action";
    /// Wraps storing an acknowledged event.
    pub const EVENT_ACKNOWLEDGED: &str = "db_checkpoint.event_acknowledged";
    /// The message was skipped, or recorded as a failure.
    pub const EVENT_SKIPPED: &str = "db_checkpoint.event_skipped";
    /// The message was a duplicate of a stored event; consume was not called.
    pub const EVENT_ALREADY_CONSUMED: &str = "db_checkpoint.event_already_consumed";
}

/// Label names every checkpoint metric carries.
pub const LABELS: [&str; 2] = ["topic", "group_id"];

/// One of the six notification points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Notification {
    /// `db_checkpoint.around_consume`.
    AroundConsume,
    /// `db_checkpoint.event_already_exists_check`.
    EventAlreadyExistsCheck,
    /// `db_checkpoint.event_action`.
    EventAction,
    /// `db_checkpoint.event_acknowledged`.
    EventAcknowledged,
    /// `db_checkpoint.event_skipped`.
    EventSkipped,
    /// `db_checkpoint.event_already_consumed`.
    EventAlreadyConsumed,
}

impl Notification {
    /// Every notification.
    pub const ALL: [Self; 6] = [
        Self::AroundConsume,
        Self::EventAlreadyExistsCheck,
        Self::EventAction,
        Self::EventAcknowledged,
        Self::EventSkipped,
        Self::EventAlreadyConsumed,
    ];

    /// The notification name, e.g. `db_checkpoint.event_acknowledged`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AroundConsume => names::AROUND_CONSUME,
            Self::EventAlreadyExistsCheck => names::EVENT_ALREADY_EXISTS_CHECK,
            Self::EventAction => names::EVENT_ACTION,
            Self::EventAcknowledged => names::EVENT_ACKNOWLEDGED,
            Self::EventSkipped => names::EVENT_SKIPPED,
            Self::EventAlreadyConsumed => names::EVENT_ALREADY_CONSUMED,
        }
    }

    /// The counter incremented each time it fires.
    pub fn counter_name(self) -> &'static str {
        match self {
            Self::AroundConsume => "db_checkpoint_around_consume_total",
            Self::EventAlreadyExistsCheck => "db_checkpoint_event_already_exists_check_total",
            Self::EventAction => "db_checkpoint_event_action_total",
            Self::EventAcknowledged => "db_checkpoint_event_acknowledged_total",
            Self::EventSkipped => "db_checkpoint_event_skipped_total",
            Self::EventAlreadyConsumed => "db_checkpoint_event_already_consumed_total",
        }
    }

    /// The duration histogram of a timed notification, in seconds.
    pub fn histogram_name(self) -> Option<&'static str> {
        match self {
            Self::AroundConsume => Some("db_checkpoint_around_consume_seconds"),
            Self::EventAlreadyExistsCheck => {
                Some("db_checkpoint_event_already_exists_check_seconds")
            }
            Self::EventAction => Some("db_checkpoint_event_action_seconds"),
            Self::EventAcknowledged => Some("db_checkpoint_event_acknowledged_seconds"),
            Self::EventSkipped | Self::EventAlreadyConsumed => None,
        }
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fired notification, as an [`Observer`] receives it.
#[derive(Debug, Clone, Copy)]
pub struct Fired<'a> {
    /// Which point.
    pub notification: Notification,
    /// Delivery metadata (listener_id, group_id, topic, key, partition, offset, retry_count,
    /// checksum, handler).
    pub metadata: &'a Metadata,
    /// How long the wrapped step took, for timed notifications.
    pub duration: Option<Duration>,
}

/// Receives every notification synchronously, in order (like subscribing to Phobos'
/// instrumentation). Keep it cheap: it runs on the consuming task.
pub trait Observer: Send + Sync {
    /// Called once per fired notification.
    fn notify(&self, fired: &Fired<'_>);
}

impl<F: Fn(&Fired<'_>) + Send + Sync> Observer for F {
    fn notify(&self, fired: &Fired<'_>) {
        self(fired)
    }
}

/// Fans a notification out to metrics, tracing and observers.
#[derive(Clone, Default)]
pub(crate) struct Instrument {
    observers: Vec<Arc<dyn Observer>>,
}

impl Instrument {
    pub(crate) fn add(&mut self, observer: Arc<dyn Observer>) {
        self.observers.push(observer);
    }

    pub(crate) fn fire(
        &self,
        notification: Notification,
        metadata: &Metadata,
        duration: Option<Duration>,
    ) {
        let labels = [
            ("topic", metadata.topic.clone()),
            ("group_id", metadata.group_id.clone()),
        ];
        metrics::counter!(notification.counter_name(), &labels).increment(1);
        if let (Some(name), Some(duration)) = (notification.histogram_name(), duration) {
            metrics::histogram!(name, &labels).record(duration.as_secs_f64());
        }
        tracing::debug!(
            target: "checkpoint",
            notification = notification.name(),
            listener_id = %metadata.listener_id,
            group_id = %metadata.group_id,
            topic = %metadata.topic,
            key = metadata.key.as_deref(),
            partition = metadata.partition,
            offset = metadata.offset,
            retry_count = metadata.retry_count,
            checksum = %metadata.checksum,
            duration_us = duration.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        );
        let fired = Fired {
            notification,
            metadata,
            duration,
        };
        for observer in &self.observers {
            // An observer is user code: its panic is logged, never allowed to stop the
            // message it observes.
            let call = std::panic::AssertUnwindSafe(|| observer.notify(&fired));
            if std::panic::catch_unwind(call).is_err() {
                tracing::error!(
                    target: "checkpoint", notification = notification.name(),
                    topic = %metadata.topic, offset = metadata.offset,
                    "an observer panicked; the notification is skipped for it"
                );
            }
        }
    }
}
