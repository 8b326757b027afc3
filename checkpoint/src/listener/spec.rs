//! What a listener consumes and how: topic, group, librdkafka properties and limits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;

use super::telemetry;
use crate::config::{DEFAULT_MAX_QUEUED_BYTES, DEFAULT_REVOKE_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::engine::{Backoff, Policy};
use crate::handler::Handler;

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

/// A listener's settings as an operator may see them: what [`ListenerSpec`] holds, with secret
/// librdkafka values masked (see [`is_secret_property`](crate::config::is_secret_property)).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ListenerSettings {
    /// The handler's name.
    pub handler: String,
    /// Topic subscribed to.
    pub topic: String,
    /// Consumer group.
    pub group_id: String,
    /// Partitions handled at the same time.
    pub max_concurrency: usize,
    /// Messages taken through the engine together.
    pub batch_size: usize,
    /// Starts from the earliest offset when the group has none committed.
    pub start_from_beginning: bool,
    /// Retries of a handler that declares no `max_retries`; `None`: forever.
    pub default_max_retries: Option<u32>,
    /// Longest time one `consume` call may take, in milliseconds.
    pub handler_timeout_ms: Option<u128>,
    /// Bytes of received, unsettled messages held before partitions are paused.
    pub max_queued_bytes: usize,
    /// How long shutdown waits for in-flight work, in milliseconds.
    pub shutdown_timeout_ms: u128,
    /// How long a revocation waits for in-flight work, in milliseconds.
    pub revoke_timeout_ms: u128,
    /// librdkafka properties as configured, secrets masked.
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

    /// Its settings with secrets masked, for display.
    pub fn settings(&self) -> ListenerSettings {
        ListenerSettings {
            handler: self.handler.name().to_owned(),
            topic: self.topic.clone(),
            group_id: self.group_id.clone(),
            max_concurrency: self.max_concurrency,
            batch_size: self.batch_size,
            start_from_beginning: self.start_from_beginning,
            default_max_retries: self.default_max_retries,
            handler_timeout_ms: self.handler_timeout.map(|t| t.as_millis()),
            max_queued_bytes: self.max_queued_bytes,
            shutdown_timeout_ms: self.shutdown_timeout.as_millis(),
            revoke_timeout_ms: self.revoke_timeout.as_millis(),
            kafka: crate::secret::masked(&self.kafka),
        }
    }

    /// The engine policy of this listener's messages.
    pub fn policy(&self) -> Policy {
        Policy {
            backoff: self.backoff,
            default_max_retries: self.default_max_retries,
            handler_timeout: self.handler_timeout,
        }
    }

    pub(super) fn client_config(&self) -> ClientConfig {
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
