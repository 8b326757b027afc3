//! The configuration file, `checkpoint.toml` ([`DEFAULT_PATH`]).
//!
//! ```toml
//! [kafka]                       # any librdkafka property, passed through verbatim
//! "bootstrap.servers" = "${KAFKA_BROKERS:-127.0.0.1:9092}"
//! "session.timeout.ms" = 6000   # strings, integers, floats and booleans become strings
//!
//! [database]
//! url = "${DATABASE_URL:-sqlite://checkpoint.db}"   # required
//! pool_size = 10                # 1..=1000, default 10
//!
//! [db_checkpoint]
//! max_retries = 3               # for handlers that set none; absent = retry forever
//!
//! [api]                         # served by an App next to its listeners
//! enabled = true                # default true: API, /metrics, /health/live, /health/ready
//! bind = "127.0.0.1:9292"       # default 127.0.0.1:9292
//! token = "${CHECKPOINT_API_TOKEN:-}"   # empty = no token
//!
//! [retention]                   # optional: absent = nothing is ever deleted
//! events_older_than = "30d"     # s, m, h, d or w; at least one of the two ages
//! failures_older_than = "90d"
//! interval = "1h"               # default 1h
//! batch_size = 1000             # rows per delete statement, 1..=10000, default 1000
//!
//! [[listeners]]                 # zero or more
//! handler = "orders"            # required: a registered handler name
//! topic = "orders"              # required
//! group_id = "billing"          # required
//! max_concurrency = 3           # partitions handled at once, default 1
//! start_from_beginning = true   # default true: earliest offset when the group has none
//! batch_size = 1                # default 1
//! backoff = { min_ms = 1000, max_ms = 60000 }   # the defaults
//! handler_timeout_ms = 30000    # absent (default) = consume is never interrupted
//! max_queued_bytes = 67108864   # default 64 MiB of received, unsettled payloads
//! shutdown_timeout_ms = 30000   # default 30 s for in-flight work on SIGTERM
//! revoke_timeout_ms = 10000     # default 10 s for in-flight work on a rebalance
//! ```
//!
//! Every table is optional except `[database]` (with its `url`). [`example`] returns a fully
//! commented version of this file.
//!
//! # Environment variables
//!
//! `${VAR}` is replaced by the variable's value, `${VAR:-default}` by the value or, when `VAR`
//! is unset or empty (as in the shell), by `default` (which may be empty); `$$` is a literal
//! `$`, and a `$` followed by anything else is kept as it is.
//!
//! Expansion happens **after** the TOML is parsed, on string values only: kafka property
//! values, `database.url`, `api.bind`, `api.token`, and the listeners' `handler`, `topic` and
//! `group_id`. A variable's value is therefore never parsed as TOML (it cannot change the
//! file's structure) and is not expanded again; numbers and booleans cannot come from the
//! environment. A variable that is unset and has no default is an error naming the key where
//! it appears.
//!
//! # Errors
//!
//! Every mistake is reported at start as one line, `{file}: {key}: {reason}`, for example
//! `checkpoint.toml: listeners[0].backoff: min_ms (5000) is greater than max_ms (100)`: unknown
//! keys (with the valid ones listed), missing required keys, wrong types, values out of range,
//! invalid topic names, bad addresses, unset variables, two listeners on the same topic and
//! group, and TOML syntax errors (key `<syntax>`, with the line and column in the reason).
//! Errors found while reading the TOML into its tables also carry the line. Listeners naming
//! a handler that the application did not register are caught by [`Config::check_handlers`].

mod diagnostics;
mod env;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;

use self::diagnostics::{Ctx, backticked, escape_controls};
use self::raw::RawConfig;
pub use crate::secret::is_secret_property;

use crate::engine::Backoff;
use crate::retention::Retention;
use crate::store::DatabaseUrl;

/// Where the configuration is read from when no path is given.
pub const DEFAULT_PATH: &str = "checkpoint.toml";

/// Largest `database.pool_size`.
const MAX_POOL_SIZE: i64 = 1_000;

/// Longest Kafka topic name.
const MAX_TOPIC_LEN: usize = 249;

/// Longest consumer group id (the checkpoint tables' limit for indexed text).
const MAX_GROUP_ID_LEN: usize = 255;

/// The most rows one retention statement may delete.
const MAX_PRUNE_BATCH: i64 = crate::retention::MAX_BATCH_SIZE;

/// A configuration that could not be read or is not valid.
///
/// Its `Display` is always one line: `{path}: cannot read the configuration file: {error}` or
/// `{file}: {key}: {reason}`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
    /// The text is not a valid configuration.
    // `file`, not `source`: thiserror would take a field named `source` for the error's cause.
    #[error("{file}: {key}: {reason}")]
    Invalid {
        /// The file name, or what was passed to [`Config::parse`] as its source (`<string>`).
        file: String,
        /// Where: a key path like `database.url`, `listeners[1].backoff.min_ms` or
        /// `kafka."bootstrap.servers"`; `<syntax>` for TOML syntax errors.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A validated configuration file. Its `Debug` output masks secrets: the database password,
/// the API token and every `[kafka]` property [`is_secret_property`] names.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// `[kafka]`: librdkafka properties, every value as a string (`6000`, `true`).
    pub kafka: BTreeMap<String, String>,
    /// `[database]`: where checkpoints are stored.
    pub database: DatabaseConfig,
    /// `[db_checkpoint]`: defaults of the checkpoint algorithm.
    pub db_checkpoint: DbCheckpointConfig,
    /// `[api]`: the HTTP API.
    pub api: ApiConfig,
    /// `[retention]`: old rows an [`App`](crate::App) deletes (`None`: the table is absent and
    /// nothing is deleted).
    pub retention: Option<Retention>,
    /// `[[listeners]]`, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Where this configuration came from: the file name, or `<string>`; errors start with it.
    pub source: String,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("kafka", &crate::secret::Masked(&self.kafka))
            .field("database", &self.database)
            .field("db_checkpoint", &self.db_checkpoint)
            .field("api", &self.api)
            .field("retention", &self.retention)
            .field("listeners", &self.listeners)
            .field("source", &self.source)
            .finish()
    }
}

/// `[database]`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// The database URL (`sqlite://…`, `postgres://…`, `mysql://…`), already checked by
    /// [`DatabaseUrl::parse`].
    pub url: String,
    /// Connections in the pool, 1 to 1000 (default 10).
    pub pool_size: usize,
}

/// Shows the URL with any password masked.
impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = DatabaseUrl::parse(&self.url)
            .map_or_else(|_| "<invalid>".to_owned(), |u| u.to_string());
        f.debug_struct("DatabaseConfig")
            .field("url", &url)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// `[db_checkpoint]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbCheckpointConfig {
    /// How often a failing message is retried before it becomes a failure row, for handlers
    /// that declare no `max_retries` of their own; `None` = retry forever.
    pub max_retries: Option<u32>,
}

/// `[api]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// An [`App`](crate::App) serves the API, `/metrics` and the health checks next to its
    /// listeners (default `true`).
    pub enabled: bool,
    /// Address the HTTP API listens on (default `127.0.0.1:9292`).
    pub bind: SocketAddr,
    /// Bearer token the API requires; `None` (also for an empty string) = no token.
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 9292)),
            token: None,
        }
    }
}

/// Shows whether there is a token, never the token.
impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("enabled", &self.enabled)
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// One `[[listeners]]` entry: a handler consuming a topic in a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Name of the registered handler (see [`Config::check_handlers`]).
    pub handler: String,
    /// The topic: 1 to 249 characters of `A-Z a-z 0-9 . _ -`.
    pub topic: String,
    /// The consumer group: 1 to 255 characters.
    pub group_id: String,
    /// Partitions handled at the same time, at least 1 (default 1).
    pub max_concurrency: usize,
    /// Where a group with no committed offset starts: `true` (default) = the earliest offset
    /// (`auto.offset.reset=earliest`), `false` = the latest.
    pub start_from_beginning: bool,
    /// Messages per batch, at least 1 (default 1).
    pub batch_size: usize,
    /// Backoff between retries of a failing message (default 1 s to 60 s).
    pub backoff: Backoff,
    /// Longest time one `consume` call may take before it is dropped and retried (`None`,
    /// the default: never). See [`Policy::handler_timeout`](crate::engine::Policy).
    pub handler_timeout: Option<Duration>,
    /// Bytes of received messages (payload, key and headers) the listener holds before it
    /// pauses fetching (default [`DEFAULT_MAX_QUEUED_BYTES`]).
    pub max_queued_bytes: usize,
    /// How long shutdown waits for in-flight work before it gives up on it (default 30 s).
    pub shutdown_timeout: Duration,
    /// How long a revocation waits for in-flight work (default 10 s); below
    /// `max.poll.interval.ms`.
    pub revoke_timeout: Duration,
}

/// Default of `max_queued_bytes`: 64 MiB.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 << 20;
/// Default of `shutdown_timeout_ms`: 30 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `revoke_timeout_ms`: 10 s.
pub const DEFAULT_REVOKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Config {
    /// Reads and validates the file at `path`, expanding variables from the process
    /// environment. Errors name the path as given.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text, &name)
    }

    /// Validates `text`, expanding variables from the process environment; `source` (a file
    /// name, or `<string>`) starts every error message and becomes [`Config::source`].
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, source, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::parse`], with variables looked up by `env` (`None` = unset).
    pub fn parse_with_env(
        text: &str,
        source: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let ctx = Ctx { source, env };
        let document = DeTable::parse(text).map_err(|e| ctx.syntax(text, &e))?;
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(document.clone()))
            .map_err(|e| ctx.deserialize(text, &document, &e))?;
        ctx.validate(raw)
    }

    /// Checks that every listener names a handler in `registered`; the error names the
    /// listener (`listeners[i].handler`), the unknown name and the registered ones.
    pub fn check_handlers<'a>(
        &self,
        registered: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ConfigError> {
        let mut names: Vec<&str> = registered.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        for (i, listener) in self.listeners.iter().enumerate() {
            if names.binary_search(&listener.handler.as_str()).is_err() {
                let registered = if names.is_empty() {
                    "no handlers are registered".to_owned()
                } else {
                    format!("registered: {}", backticked(&names))
                };
                return Err(ConfigError::Invalid {
                    file: self.source.clone(),
                    key: format!("listeners[{i}].handler"),
                    reason: escape_controls(&format!(
                        "no handler named `{}` is registered ({registered})",
                        listener.handler
                    )),
                });
            }
        }
        Ok(())
    }
}

/// A fully commented example `checkpoint.toml`, with every key and its default.
pub fn example() -> &'static str {
    include_str!("example.toml")
}
