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

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use crate::secret::is_secret_property;
use toml::de::{DeTable, DeValue};

use crate::engine::Backoff;
use crate::retention::{DEFAULT_BATCH_SIZE, DEFAULT_INTERVAL, Retention, parse_age};
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
    include_str!("config_example.toml")
}

// ---------------------------------------------------------------------------------------------
// The file as written. Integers are read as i64 so that range errors can say what was wrong.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    kafka: BTreeMap<String, toml::Value>,
    database: RawDatabase,
    #[serde(default)]
    db_checkpoint: RawDbCheckpoint,
    #[serde(default)]
    api: RawApi,
    retention: Option<RawRetention>,
    #[serde(default)]
    listeners: Vec<RawListener>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    events_older_than: Option<String>,
    failures_older_than: Option<String>,
    interval: Option<String>,
    batch_size: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
    #[serde(default = "default_pool_size")]
    pool_size: i64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDbCheckpoint {
    max_retries: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    enabled: Option<bool>,
    bind: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    handler: String,
    topic: String,
    group_id: String,
    #[serde(default = "one")]
    max_concurrency: i64,
    #[serde(default = "yes")]
    start_from_beginning: bool,
    #[serde(default = "one")]
    batch_size: i64,
    #[serde(default)]
    backoff: RawBackoff,
    handler_timeout_ms: Option<i64>,
    max_queued_bytes: Option<i64>,
    shutdown_timeout_ms: Option<i64>,
    revoke_timeout_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    #[serde(default = "default_min_ms")]
    min_ms: i64,
    #[serde(default = "default_max_ms")]
    max_ms: i64,
}

impl Default for RawBackoff {
    fn default() -> Self {
        Self {
            min_ms: default_min_ms(),
            max_ms: default_max_ms(),
        }
    }
}

fn default_pool_size() -> i64 {
    10
}

fn one() -> i64 {
    1
}

fn yes() -> bool {
    true
}

fn default_min_ms() -> i64 {
    1_000
}

fn default_max_ms() -> i64 {
    60_000
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// The file name and the environment, for building errors and expanding variables.
struct Ctx<'a> {
    source: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.to_owned(),
            key: key.into(),
            reason: escape_controls(&reason.into()),
        }
    }

    /// A TOML syntax error: key `<syntax>`, the position in the reason.
    fn syntax(&self, text: &str, error: &toml::de::Error) -> ConfigError {
        let message = one_line(error.message());
        let reason = match error.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                format!("line {line}, column {column}: {message}")
            }
            None => message,
        };
        self.invalid("<syntax>", reason)
    }

    /// An error from reading the parsed TOML into the configuration's tables: the key is
    /// found from the error's span, the line is added to the reason.
    fn deserialize(
        &self,
        text: &str,
        document: &Spanned<DeTable<'_>>,
        error: &toml::de::Error,
    ) -> ConfigError {
        let message = one_line(error.message());
        let Some(span) = error.span() else {
            return self.invalid("<file>", message);
        };
        let line = line_column(text, span.start).0;
        if let Some(field) = backticked_after(&message, "missing field ") {
            // The span is the table that lacks the key.
            let mut path = Vec::new();
            let root = span == document.span();
            let reason = if root {
                format!("required table `[{field}]` is missing")
            } else if find_table(document.get_ref(), &span, &mut path) {
                format!("required key is missing (from the table at line {line})")
            } else {
                format!("required key is missing (line {line})")
            };
            path.push(Segment::Key(field.to_owned()));
            return self.invalid(render(&path), reason);
        }
        let mut path = Vec::new();
        find_key(document.get_ref(), span.start, &mut path);
        let key = if path.is_empty() {
            "<file>".to_owned()
        } else {
            render(&path)
        };
        // serde sees a TOML date-time as a table; say what the file says.
        let datetime = resolve(document, &path)
            .is_some_and(|value| matches!(value.get_ref(), DeValue::Datetime(_)));
        let reason = humanize(&message, datetime.then_some("a date-time"));
        self.invalid(key, format!("{reason} (line {line})"))
    }

    /// Expands `${VAR}`, `${VAR:-default}` and `$$` in `value`, found at `key`.
    fn expand(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("$$") {
                out.push('$');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("${") {
                let end = after.find('}').ok_or_else(|| {
                    self.invalid(
                        key,
                        "`${` without a closing `}` (write `$$` for a literal `$`)",
                    )
                })?;
                let reference = &after[..end];
                let (name, default) = match reference.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (reference, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(self.invalid(
                        key,
                        format!(
                            "`${{{reference}}}` is not a variable reference: use `${{NAME}}` or \
                             `${{NAME:-default}}`, NAME of A-Z a-z 0-9 _"
                        ),
                    ));
                }
                match ((self.env)(name), default) {
                    (Some(value), None) => out.push_str(&value),
                    (Some(value), Some(_)) if !value.is_empty() => out.push_str(&value),
                    (_, Some(default)) => out.push_str(default),
                    (None, None) => {
                        return Err(self.invalid(
                            key,
                            format!(
                                "environment variable `{name}` is not set and has no default \
                                 (write `${{{name}:-default}}` to give one)"
                            ),
                        ));
                    }
                }
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn at_least_one(&self, key: &str, value: i64) -> Result<usize, ConfigError> {
        match usize::try_from(value) {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(self.invalid(key, format!("must be at least 1, not {value}"))),
        }
    }

    fn retention(&self, raw: RawRetention) -> Result<Retention, ConfigError> {
        let age = |key: &str, text: Option<String>| match text {
            None => Ok(None),
            Some(text) => parse_age(&text)
                .map(Some)
                .map_err(|reason| self.invalid(format!("retention.{key}"), reason)),
        };
        let events_older_than = age("events_older_than", raw.events_older_than)?;
        let failures_older_than = age("failures_older_than", raw.failures_older_than)?;
        if events_older_than.is_none() && failures_older_than.is_none() {
            return Err(self.invalid(
                "retention",
                "set events_older_than, failures_older_than or both (or leave the table out)",
            ));
        }
        let interval = age("interval", raw.interval)?.unwrap_or(DEFAULT_INTERVAL);
        let batch_size = match raw.batch_size {
            None => DEFAULT_BATCH_SIZE,
            Some(n) if (1..=MAX_PRUNE_BATCH).contains(&n) => n,
            Some(n) => {
                return Err(self.invalid(
                    "retention.batch_size",
                    format!("must be between 1 and {MAX_PRUNE_BATCH}, not {n}"),
                ));
            }
        };
        Ok(Retention {
            events_older_than,
            failures_older_than,
            interval,
            batch_size,
        })
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut kafka = BTreeMap::new();
        for (name, value) in raw.kafka {
            let key = format!("kafka.{}", key_segment(&name));
            let value = match value {
                toml::Value::String(s) => self.expand(&key, &s)?,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    let kind = match other {
                        toml::Value::Array(_) => "an array",
                        toml::Value::Table(_) => "a table",
                        _ => "a date-time",
                    };
                    return Err(self.invalid(
                        key,
                        format!("must be a string, integer, float or boolean, not {kind}"),
                    ));
                }
            };
            kafka.insert(name, value);
        }

        let url = self.expand("database.url", &raw.database.url)?;
        if url.trim().is_empty() {
            return Err(self.invalid("database.url", "must not be empty"));
        }
        DatabaseUrl::parse(&url).map_err(|e| self.invalid("database.url", e.to_string()))?;
        let pool_size = raw.database.pool_size;
        if !(1..=MAX_POOL_SIZE).contains(&pool_size) {
            return Err(self.invalid(
                "database.pool_size",
                format!("must be between 1 and {MAX_POOL_SIZE}, not {pool_size}"),
            ));
        }
        let database = DatabaseConfig {
            url,
            pool_size: usize::try_from(pool_size).unwrap_or(1),
        };

        let max_retries = match raw.db_checkpoint.max_retries {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| {
                self.invalid(
                    "db_checkpoint.max_retries",
                    format!("must be between 0 and {}, not {n}", u32::MAX),
                )
            })?),
        };

        let bind = match raw.api.bind {
            Some(bind) => self.expand("api.bind", &bind)?,
            None => ApiConfig::default().bind.to_string(),
        };
        let bind = bind.parse::<SocketAddr>().map_err(|_| {
            self.invalid(
                "api.bind",
                format!("`{bind}` is not a socket address like 127.0.0.1:9292 or [::1]:9292"),
            )
        })?;
        let token = match raw.api.token {
            Some(token) => Some(self.expand("api.token", &token)?).filter(|t| !t.is_empty()),
            None => None,
        };

        let retention = match raw.retention {
            None => None,
            Some(r) => Some(self.retention(r)?),
        };

        let mut listeners: Vec<ListenerConfig> = Vec::with_capacity(raw.listeners.len());
        for (i, l) in raw.listeners.into_iter().enumerate() {
            let at = |field: &str| format!("listeners[{i}].{field}");
            let handler = self.expand(&at("handler"), &l.handler)?;
            if handler.is_empty() {
                return Err(self.invalid(at("handler"), "must not be empty"));
            }
            let topic = self.expand(&at("topic"), &l.topic)?;
            if let Err(problem) = check_topic(&topic) {
                return Err(self.invalid(
                    at("topic"),
                    format!("`{topic}` is not a valid Kafka topic name: {problem}"),
                ));
            }
            let group_id = self.expand(&at("group_id"), &l.group_id)?;
            let group_len = group_id.chars().count();
            if group_len == 0 {
                return Err(self.invalid(at("group_id"), "must not be empty"));
            }
            if group_len > MAX_GROUP_ID_LEN {
                return Err(self.invalid(
                    at("group_id"),
                    format!(
                        "is {group_len} characters long; at most {MAX_GROUP_ID_LEN} are allowed"
                    ),
                ));
            }
            let max_concurrency = self.at_least_one(&at("max_concurrency"), l.max_concurrency)?;
            let batch_size = self.at_least_one(&at("batch_size"), l.batch_size)?;
            let (min_ms, max_ms) = (l.backoff.min_ms, l.backoff.max_ms);
            if min_ms < 1 {
                return Err(self.invalid(
                    at("backoff.min_ms"),
                    format!("must be at least 1, not {min_ms}"),
                ));
            }
            if min_ms > max_ms {
                return Err(self.invalid(
                    at("backoff"),
                    format!("min_ms ({min_ms}) is greater than max_ms ({max_ms})"),
                ));
            }
            if let Some(other) = listeners
                .iter()
                .position(|o| o.topic == topic && o.group_id == group_id)
            {
                return Err(self.invalid(
                    format!("listeners[{i}]"),
                    format!(
                        "topic `{topic}` in group `{group_id}` is already consumed by \
                         listeners[{other}]"
                    ),
                ));
            }
            let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX));
            let handler_timeout = match l.handler_timeout_ms {
                Some(ms) => Some(millis(
                    i64::try_from(self.at_least_one(&at("handler_timeout_ms"), ms)?)
                        .unwrap_or(i64::MAX),
                )),
                None => None,
            };
            let max_queued_bytes = match l.max_queued_bytes {
                Some(bytes) => self.at_least_one(&at("max_queued_bytes"), bytes)?,
                None => DEFAULT_MAX_QUEUED_BYTES,
            };
            let shutdown_timeout = match l.shutdown_timeout_ms {
                Some(ms) => millis(
                    i64::try_from(self.at_least_one(&at("shutdown_timeout_ms"), ms)?)
                        .unwrap_or(i64::MAX),
                ),
                None => DEFAULT_SHUTDOWN_TIMEOUT,
            };
            let revoke_timeout = match l.revoke_timeout_ms {
                Some(ms) => millis(
                    i64::try_from(self.at_least_one(&at("revoke_timeout_ms"), ms)?)
                        .unwrap_or(i64::MAX),
                ),
                None => DEFAULT_REVOKE_TIMEOUT,
            };
            let poll_interval = kafka
                .get("max.poll.interval.ms")
                .and_then(|v: &String| v.parse::<u64>().ok())
                .map_or(Duration::from_secs(300), Duration::from_millis);
            if revoke_timeout >= poll_interval {
                return Err(self.invalid(
                    at("revoke_timeout_ms"),
                    format!(
                        "({} ms) must be below kafka.\"max.poll.interval.ms\" ({} ms): the \
                         consumer does not poll while a revocation waits",
                        revoke_timeout.as_millis(),
                        poll_interval.as_millis()
                    ),
                ));
            }
            listeners.push(ListenerConfig {
                handler,
                topic,
                group_id,
                max_concurrency,
                start_from_beginning: l.start_from_beginning,
                batch_size,
                backoff: Backoff::new(millis(min_ms), millis(max_ms)),
                handler_timeout,
                max_queued_bytes,
                shutdown_timeout,
                revoke_timeout,
            });
        }

        Ok(Config {
            kafka,
            database,
            db_checkpoint: DbCheckpointConfig { max_retries },
            api: ApiConfig {
                enabled: raw.api.enabled.unwrap_or(true),
                bind,
                token,
            },
            retention,
            listeners,
            source: self.source.to_owned(),
        })
    }
}

/// Kafka's rules for a topic name; `Err` says which one is broken.
fn check_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("it is empty");
    }
    if !topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("only A-Z a-z 0-9 . _ - are allowed");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err("it is longer than 249 characters");
    }
    if topic == "." || topic == ".." {
        return Err("`.` and `..` are reserved");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// From toml's errors (a message and a byte span) to `key: reason`.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `listeners[0].backoff.min_ms`, `kafka."bootstrap.servers"`.
fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_segment(key));
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A key as TOML would write it: bare when it can be, quoted otherwise.
fn key_segment(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn contains(span: &Range<usize>, at: usize) -> bool {
    span.contains(&at) || (span.is_empty() && span.start == at)
}

/// The path of the innermost key whose key or value covers byte `at`; false if none does.
fn find_key(table: &DeTable<'_>, at: usize, path: &mut Vec<Segment>) -> bool {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        if find_key_in_value(value, at, path) || contains(&key.span(), at) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_key_in_value(value: &Spanned<DeValue<'_>>, at: usize, path: &mut Vec<Segment>) -> bool {
    let inside = match value.get_ref() {
        DeValue::Table(table) => find_key(table, at, path),
        DeValue::Array(items) => items.iter().enumerate().any(|(i, item)| {
            path.push(Segment::Index(i));
            let found = find_key_in_value(item, at, path);
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    };
    inside || contains(&value.span(), at)
}

/// The path of the table whose span is exactly `span`; false if none is.
fn find_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<Segment>) -> bool {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        if find_table_in_value(value, span, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_table_in_value(
    value: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &mut Vec<Segment>,
) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => value.span() == *span || find_table(table, span, path),
        DeValue::Array(items) => items.iter().enumerate().any(|(i, item)| {
            path.push(Segment::Index(i));
            let found = find_table_in_value(item, span, path);
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    }
}

/// The value at `path`.
fn resolve<'d, 'i>(
    document: &'d Spanned<DeTable<'i>>,
    path: &[Segment],
) -> Option<&'d Spanned<DeValue<'i>>> {
    let (first, rest) = path.split_first()?;
    let Segment::Key(first) = first else {
        return None;
    };
    let mut value = document.get_ref().get(first.as_str())?;
    for segment in rest {
        value = match (segment, value.get_ref()) {
            (Segment::Key(key), DeValue::Table(table)) => table.get(key.as_str())?,
            (Segment::Index(i), DeValue::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(value)
}

/// 1-based line and column (in characters) of byte `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Keeps a reason on one line when it quotes a value with a newline (from a variable, say).
fn escape_controls(reason: &str) -> String {
    reason
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The name between backticks right after `prefix`, when `message` starts with it.
fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

/// serde's wording in the file's terms; `found_instead` replaces what serde says it found.
fn humanize(message: &str, found_instead: Option<&str>) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return format!("unknown key {rest}");
    }
    if let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.rsplit_once(", expected "))
    {
        if let Some(integer) = found
            .strip_suffix(" as i128")
            .or_else(|| found.strip_suffix(" as u128"))
        {
            return format!("{integer} is out of range");
        }
        let expected = match expected {
            "i64" | "u32" | "u64" | "usize" => "an integer",
            "a sequence" => "an array",
            "a map" => "a table",
            "a boolean" => "a boolean (true or false)",
            other if other.starts_with("struct ") => "a table",
            other => other,
        };
        let found = match (found, found_instead) {
            (_, Some(instead)) => instead,
            ("map", None) => "a table",
            ("sequence", None) => "an array",
            (other, None) => other,
        };
        return format!("expected {expected}, found {found}");
    }
    message.to_owned()
}

fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses with a fixed environment: `DATABASE_URL`, `KAFKA_BROKERS`, `EMPTY`, `INJECT`.
    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, "checkpoint.toml", &|name| match name {
            "DATABASE_URL" => Some("postgres://app:secret@127.0.0.1:5432/app".to_owned()),
            "KAFKA_BROKERS" => Some("10.0.0.1:9092,10.0.0.2:9092".to_owned()),
            "EMPTY" => Some(String::new()),
            "INJECT" => Some("x\"\n[api]\nbind = \"0.0.0.0:1".to_owned()),
            "MULTILINE" => Some("line one\nline two".to_owned()),
            _ => None,
        })
    }

    /// The one-line message `text` is rejected with.
    fn error(text: &str) -> String {
        let message = parse(text).expect_err("must be rejected").to_string();
        assert!(!message.contains('\n'), "not one line: {message}");
        message
    }

    const DATABASE: &str = "[database]\nurl = \"sqlite://cp.db\"\n";

    /// `DATABASE` and one listener (lines 3 to 6) with `extra` lines appended to it.
    fn with_listener(extra: &str) -> String {
        format!(
            "{DATABASE}[[listeners]]\nhandler = \"h\"\ntopic = \"t\"\ngroup_id = \"g\"\n{extra}"
        )
    }

    #[test]
    fn fault_limits_are_read_and_checked() {
        let text = with_listener(
            "handler_timeout_ms = 2500\nmax_queued_bytes = 1048576\nshutdown_timeout_ms = 5000\n",
        );
        let listener = &parse(&text).expect("valid").listeners[0];
        assert_eq!(listener.handler_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(listener.max_queued_bytes, 1 << 20);
        assert_eq!(listener.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(
            error(&with_listener("handler_timeout_ms = 0\n")),
            "checkpoint.toml: listeners[0].handler_timeout_ms: must be at least 1, not 0"
        );
        assert_eq!(
            error(&with_listener("max_queued_bytes = -1\n")),
            "checkpoint.toml: listeners[0].max_queued_bytes: must be at least 1, not -1"
        );
        assert_eq!(
            error(&format!(
                "[kafka]\n\"max.poll.interval.ms\" = 5000\n{}",
                with_listener("revoke_timeout_ms = 5000\n")
            )),
            "checkpoint.toml: listeners[0].revoke_timeout_ms: (5000 ms) must be below \
             kafka.\"max.poll.interval.ms\" (5000 ms): the consumer does not poll while a \
             revocation waits"
        );
    }

    #[test]
    fn the_example_parses_with_and_without_the_environment() {
        let config =
            Config::parse_with_env(example(), "example", &|_| None).expect("example parses");
        assert_eq!(config.kafka["bootstrap.servers"], "127.0.0.1:9092");
        assert_eq!(config.kafka["session.timeout.ms"], "6000");
        assert_eq!(config.database.url, "sqlite://checkpoint.db");
        assert_eq!(config.database.pool_size, 10);
        assert_eq!(config.db_checkpoint.max_retries, Some(3));
        assert_eq!(config.api, ApiConfig::default());
        assert_eq!(
            config.listeners,
            vec![ListenerConfig {
                handler: "orders".to_owned(),
                topic: "orders".to_owned(),
                group_id: "billing".to_owned(),
                max_concurrency: 3,
                start_from_beginning: true,
                batch_size: 1,
                backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
                handler_timeout: None,
                max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                revoke_timeout: DEFAULT_REVOKE_TIMEOUT,
            }]
        );
        assert_eq!(config.source, "example");

        let config = parse(example()).expect("example parses");
        assert_eq!(
            config.database.url,
            "postgres://app:secret@127.0.0.1:5432/app"
        );
        assert_eq!(
            config.kafka["bootstrap.servers"],
            "10.0.0.1:9092,10.0.0.2:9092"
        );
    }

    #[test]
    fn retention_ages_are_parsed_and_mistakes_name_their_key() {
        let config = parse(&format!(
            "{DATABASE}\n[retention]\nevents_older_than = \"30d\"\nbatch_size = 500\n"
        ))
        .expect("valid");
        assert_eq!(
            config.retention,
            Some(Retention {
                events_older_than: Some(Duration::from_secs(30 * 86_400)),
                failures_older_than: None,
                interval: DEFAULT_INTERVAL,
                batch_size: 500,
            })
        );
        for (table, key) in [
            ("events_older_than = \"30\"", "retention.events_older_than"),
            (
                "failures_older_than = \"3y\"",
                "retention.failures_older_than",
            ),
            (
                "events_older_than = \"1d\"\ninterval = \"0s\"",
                "retention.interval",
            ),
            (
                "events_older_than = \"1d\"\nbatch_size = 0",
                "retention.batch_size",
            ),
            ("interval = \"1h\"", "retention"),
        ] {
            let error = parse(&format!("{DATABASE}\n[retention]\n{table}\n"))
                .expect_err("invalid retention");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("checkpoint.toml: {key}: ")),
                "{table}: {error}"
            );
        }
    }

    #[test]
    fn only_the_database_url_is_required_and_everything_else_has_defaults() {
        let config = parse(DATABASE).expect("valid");
        assert_eq!(
            config,
            Config {
                kafka: BTreeMap::new(),
                database: DatabaseConfig {
                    url: "sqlite://cp.db".to_owned(),
                    pool_size: 10
                },
                db_checkpoint: DbCheckpointConfig { max_retries: None },
                api: ApiConfig {
                    enabled: true,
                    bind: "127.0.0.1:9292".parse().expect("address"),
                    token: None
                },
                retention: None,
                listeners: Vec::new(),
                source: "checkpoint.toml".to_owned(),
            }
        );
        let listener = &parse(&with_listener("")).expect("valid").listeners[0];
        assert_eq!(
            (
                listener.max_concurrency,
                listener.start_from_beginning,
                listener.batch_size
            ),
            (1, true, 1)
        );
        assert_eq!(listener.backoff, Backoff::default());
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            r#"
[kafka]
"bootstrap.servers" = "${KAFKA_BROKERS}"
"session.timeout.ms" = 6000
"enable.auto.commit" = false
"retry.backoff.ms" = 100.5
[database]
url = "${DATABASE_URL:-sqlite://fallback.db}"
pool_size = 1000
[db_checkpoint]
max_retries = 0
[api]
bind = "[::1]:8080"
token = "s3cret"
[[listeners]]
handler = "orders"
topic = "orders.v1_eu-west"
group_id = "billing"
max_concurrency = 12
start_from_beginning = false
batch_size = 50
backoff = { min_ms = 1, max_ms = 1 }
[[listeners]]
handler = "orders"
topic = "orders.v1_eu-west"
group_id = "audit"
[listeners.backoff]
max_ms = 2000
"#,
        )
        .expect("valid");
        assert_eq!(
            config.kafka,
            BTreeMap::from(
                [
                    ("bootstrap.servers", "10.0.0.1:9092,10.0.0.2:9092"),
                    ("session.timeout.ms", "6000"),
                    ("enable.auto.commit", "false"),
                    ("retry.backoff.ms", "100.5"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
            )
        );
        assert_eq!(
            config.database.url,
            "postgres://app:secret@127.0.0.1:5432/app"
        );
        assert_eq!(config.database.pool_size, 1000);
        assert_eq!(config.db_checkpoint.max_retries, Some(0));
        assert_eq!(config.api.bind.to_string(), "[::1]:8080");
        assert_eq!(config.api.token.as_deref(), Some("s3cret"));
        let [first, second] = &config.listeners[..] else {
            panic!("two listeners: {:?}", config.listeners)
        };
        assert_eq!(
            (
                first.max_concurrency,
                first.start_from_beginning,
                first.batch_size
            ),
            (12, false, 50)
        );
        assert_eq!(
            first.backoff,
            Backoff::new(Duration::from_millis(1), Duration::from_millis(1))
        );
        assert_eq!(second.group_id, "audit");
        assert_eq!(
            second.backoff,
            Backoff::new(Duration::from_secs(1), Duration::from_secs(2))
        );
    }

    #[test]
    fn variables_are_expanded_in_string_values_only_once_and_never_parsed_as_toml() {
        let config = parse(
            r#"
[kafka]
"client.id" = "a$$b-${EMPTY}-${UNSET:-}-${UNSET:-x:-y}-$HOME-$"
"sasl.password" = "${INJECT}"
[database]
url = "${UNSET:-sqlite://${EMPTY}x.db}"
[api]
token = "${EMPTY:-from-default}"
"#,
        )
        .expect("valid");
        assert_eq!(config.kafka["client.id"], "a$b---x:-y-$HOME-$");
        // The value is kept verbatim: it did not add an `[api]` table.
        assert_eq!(
            config.kafka["sasl.password"],
            "x\"\n[api]\nbind = \"0.0.0.0:1"
        );
        assert_eq!(config.api.bind, ApiConfig::default().bind);
        assert_eq!(
            config.api.token.as_deref(),
            Some("from-default"),
            "empty = unset for `:-`"
        );
        // `}` ends the reference: the default is `sqlite://${EMPTY`, and the rest is literal.
        assert_eq!(config.database.url, "sqlite://${EMPTYx.db}");
        let token = parse(&format!("{DATABASE}[api]\ntoken = \"${{UNSET:-}}\"\n")).expect("valid");
        assert_eq!(token.api.token, None);
    }

    #[test]
    fn an_unset_variable_without_default_is_named_with_its_key() {
        assert_eq!(
            error("[database]\nurl = \"${NOPE}\"\n"),
            "checkpoint.toml: database.url: environment variable `NOPE` is not set and has no \
             default (write `${NOPE:-default}` to give one)"
        );
        assert_eq!(
            error(&format!(
                "[kafka]\n\"bootstrap.servers\" = \"${{KAFKA}}\"\n{DATABASE}"
            )),
            "checkpoint.toml: kafka.\"bootstrap.servers\": environment variable `KAFKA` is not \
             set and has no default (write `${KAFKA:-default}` to give one)"
        );
        let second = "[[listeners]]\nhandler = \"h\"\ntopic = \"${TOPIC}\"\ngroup_id = \"g\"\n";
        assert!(
            error(&format!("{}{second}", with_listener(""))).starts_with(
                "checkpoint.toml: listeners[1].topic: environment variable `TOPIC` is not set"
            )
        );
    }

    #[test]
    fn a_value_with_a_newline_stays_on_one_line_in_an_error() {
        assert_eq!(
            error("[database]\nurl = \"sqlite://x\"\n[api]\nbind = \"${MULTILINE}\"\n"),
            "checkpoint.toml: api.bind: `line one\\nline two` is not a socket address like \
             127.0.0.1:9292 or [::1]:9292"
        );
    }

    #[test]
    fn malformed_references_are_rejected() {
        assert_eq!(
            error("[database]\nurl = \"sqlite://${DIR\"\n"),
            "checkpoint.toml: database.url: `${` without a closing `}` (write `$$` for a literal \
             `$`)"
        );
        assert_eq!(
            error("[database]\nurl = \"sqlite://${DIR NAME}\"\n"),
            "checkpoint.toml: database.url: `${DIR NAME}` is not a variable reference: use \
             `${NAME}` or `${NAME:-default}`, NAME of A-Z a-z 0-9 _"
        );
        assert!(
            error("[database]\nurl = \"${:-x}\"\n")
                .contains("`${:-x}` is not a variable reference")
        );
    }

    #[test]
    fn unknown_keys_are_named_with_the_valid_ones() {
        assert_eq!(
            error(&format!("{DATABASE}[api]\nport = 1\n")),
            "checkpoint.toml: api.port: unknown key `port`, expected one of `enabled`, `bind`, \
             `token` (line 4)"
        );
        assert_eq!(
            error(&format!("{DATABASE}[listener]\nhandler = \"h\"\n")),
            "checkpoint.toml: listener: unknown key `listener`, expected one of `kafka`, \
             `database`, `db_checkpoint`, `api`, `retention`, `listeners` (line 3)"
        );
        assert_eq!(
            error("[database]\nurl = \"sqlite://cp.db\"\n\"pool.size\" = 3\n"),
            "checkpoint.toml: database.\"pool.size\": unknown key `pool.size`, expected `url` or \
             `pool_size` (line 3)"
        );
        assert_eq!(
            error(&format!("{DATABASE}[db_checkpoint]\nmax_retry = 3\n")),
            "checkpoint.toml: db_checkpoint.max_retry: unknown key `max_retry`, expected \
             `max_retries` (line 4)"
        );
        assert_eq!(
            error(&with_listener("retries = 3\n")),
            "checkpoint.toml: listeners[0].retries: unknown key `retries`, expected one of \
             `handler`, `topic`, `group_id`, `max_concurrency`, `start_from_beginning`, \
             `batch_size`, `backoff`, `handler_timeout_ms`, `max_queued_bytes`, \
             `shutdown_timeout_ms`, `revoke_timeout_ms` (line 7)"
        );
        assert_eq!(
            error(&format!(
                "{}[[listeners]]\nhandler = \"h\"\ntopic = \"u\"\ngroup_id = \"g\"\n\
                 backoff = {{ min_ms = 1, max = 5 }}\n",
                with_listener("")
            )),
            "checkpoint.toml: listeners[1].backoff.max: unknown key `max`, expected `min_ms` or \
             `max_ms` (line 11)"
        );
    }

    #[test]
    fn missing_required_keys_are_named() {
        assert_eq!(
            error("[database]\npool_size = 3\n"),
            "checkpoint.toml: database.url: required key is missing (from the table at line 1)"
        );
        assert_eq!(
            error("[api]\nbind = \"127.0.0.1:1\"\n"),
            "checkpoint.toml: database: required table `[database]` is missing"
        );
        assert_eq!(
            error(""),
            "checkpoint.toml: database: required table `[database]` is missing"
        );
        for (i, field) in ["handler", "topic", "group_id"].into_iter().enumerate() {
            let mut listener: Vec<String> =
                ["handler = \"h\"", "topic = \"t2\"", "group_id = \"g\""]
                    .map(str::to_owned)
                    .to_vec();
            listener.remove(i);
            let text = format!(
                "{}[[listeners]]\n{}\n",
                with_listener(""),
                listener.join("\n")
            );
            assert_eq!(
                error(&text),
                format!(
                    "checkpoint.toml: listeners[1].{field}: required key is missing (from the \
                     table at line 7)"
                )
            );
        }
    }

    #[test]
    fn wrong_types_are_named_with_what_was_expected() {
        assert_eq!(
            error(&with_listener("max_concurrency = \"three\"\n")),
            "checkpoint.toml: listeners[0].max_concurrency: expected an integer, found string \
             \"three\" (line 7)"
        );
        assert_eq!(
            error(&with_listener("start_from_beginning = \"yes\"\n")),
            "checkpoint.toml: listeners[0].start_from_beginning: expected a boolean (true or \
             false), found string \"yes\" (line 7)"
        );
        assert_eq!(
            error("[database]\nurl = 5\n"),
            "checkpoint.toml: database.url: expected a string, found integer `5` (line 2)"
        );
        assert_eq!(
            error(&format!("{DATABASE}[db_checkpoint]\nmax_retries = 2.5\n")),
            "checkpoint.toml: db_checkpoint.max_retries: expected an integer, found floating \
             point `2.5` (line 4)"
        );
        assert_eq!(
            error(&format!("{DATABASE}[listeners]\nhandler = \"h\"\n")),
            "checkpoint.toml: listeners: expected an array, found a table (line 3)"
        );
        assert_eq!(
            error("[database]\nurl = 1979-05-27\n"),
            "checkpoint.toml: database.url: expected a string, found a date-time (line 2)"
        );
        assert_eq!(
            error(&format!("api = \"127.0.0.1:1\"\n{DATABASE}")),
            "checkpoint.toml: api: expected a table, found string \"127.0.0.1:1\" (line 1)"
        );
        assert_eq!(
            error(&with_listener("backoff = 5\n")),
            "checkpoint.toml: listeners[0].backoff: expected a table, found integer `5` (line 7)"
        );
        assert_eq!(
            error(&format!("{DATABASE}pool_size = 99999999999999999999\n")),
            "checkpoint.toml: database.pool_size: integer `99999999999999999999` is out of range \
             (line 3)"
        );
        assert_eq!(
            error(&format!("{DATABASE}[kafka]\n\"a\" = [1]\n")),
            "checkpoint.toml: kafka.a: must be a string, integer, float or boolean, not an array"
        );
        assert_eq!(
            error(&format!("{DATABASE}[kafka]\n\"x.y\" = {{ z = 1 }}\n")),
            "checkpoint.toml: kafka.\"x.y\": must be a string, integer, float or boolean, not a \
             table"
        );
    }

    #[test]
    fn numbers_out_of_range_are_rejected() {
        assert_eq!(
            error("[database]\nurl = \"sqlite://x\"\npool_size = 0\n"),
            "checkpoint.toml: database.pool_size: must be between 1 and 1000, not 0"
        );
        assert_eq!(
            error("[database]\nurl = \"sqlite://x\"\npool_size = 1001\n"),
            "checkpoint.toml: database.pool_size: must be between 1 and 1000, not 1001"
        );
        assert_eq!(
            error(&with_listener("max_concurrency = 0\n")),
            "checkpoint.toml: listeners[0].max_concurrency: must be at least 1, not 0"
        );
        assert_eq!(
            error(&with_listener("batch_size = 0\n")),
            "checkpoint.toml: listeners[0].batch_size: must be at least 1, not 0"
        );
        assert_eq!(
            error(&with_listener("batch_size = -4\n")),
            "checkpoint.toml: listeners[0].batch_size: must be at least 1, not -4"
        );
        assert_eq!(
            error(&format!("{DATABASE}[db_checkpoint]\nmax_retries = -1\n")),
            "checkpoint.toml: db_checkpoint.max_retries: must be between 0 and 4294967295, not -1"
        );
        assert_eq!(
            error(&format!(
                "{DATABASE}[db_checkpoint]\nmax_retries = 4294967296\n"
            )),
            "checkpoint.toml: db_checkpoint.max_retries: must be between 0 and 4294967295, not \
             4294967296"
        );
    }

    #[test]
    fn backoff_bounds_are_checked() {
        let err = parse(&with_listener(
            "backoff = { min_ms = 5000, max_ms = 100 }\n",
        ));
        let Err(ConfigError::Invalid { file, key, reason }) = err else {
            panic!("expected Invalid, got {err:?}")
        };
        assert_eq!(
            (file.as_str(), key.as_str(), reason.as_str()),
            (
                "checkpoint.toml",
                "listeners[0].backoff",
                "min_ms (5000) is greater than max_ms (100)"
            )
        );
        assert_eq!(
            error(&with_listener(
                "backoff = { min_ms = 5000, max_ms = 100 }\n"
            )),
            "checkpoint.toml: listeners[0].backoff: min_ms (5000) is greater than max_ms (100)"
        );
        assert_eq!(
            error(&with_listener("backoff = { max_ms = 100 }\n")),
            "checkpoint.toml: listeners[0].backoff: min_ms (1000) is greater than max_ms (100)"
        );
        assert_eq!(
            error(&with_listener("backoff = { min_ms = 0 }\n")),
            "checkpoint.toml: listeners[0].backoff.min_ms: must be at least 1, not 0"
        );
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        let topic = |name: &str| {
            error(&with_listener("").replace("topic = \"t\"", &format!("topic = \"{name}\"")))
        };
        assert_eq!(
            topic("bad topic"),
            "checkpoint.toml: listeners[0].topic: `bad topic` is not a valid Kafka topic name: \
             only A-Z a-z 0-9 . _ - are allowed"
        );
        assert_eq!(
            topic(""),
            "checkpoint.toml: listeners[0].topic: `` is not a valid Kafka topic name: it is empty"
        );
        assert_eq!(
            topic(".."),
            "checkpoint.toml: listeners[0].topic: `..` is not a valid Kafka topic name: `.` and \
             `..` are reserved"
        );
        assert!(topic("ordrés").ends_with("only A-Z a-z 0-9 . _ - are allowed"));
        assert!(topic(&"a".repeat(250)).ends_with("it is longer than 249 characters"));
        let longest = "a".repeat(249);
        let config =
            parse(&with_listener("").replace("topic = \"t\"", &format!("topic = \"{longest}\"")));
        assert_eq!(
            config.expect("249 characters are fine").listeners[0].topic,
            longest
        );
    }

    #[test]
    fn group_ids_and_handler_names_are_checked() {
        let group = |id: &str| {
            parse(&with_listener("").replace("group_id = \"g\"", &format!("group_id = \"{id}\"")))
        };
        assert_eq!(
            group("").expect_err("empty").to_string(),
            "checkpoint.toml: listeners[0].group_id: must not be empty"
        );
        assert_eq!(
            group(&"é".repeat(256)).expect_err("too long").to_string(),
            "checkpoint.toml: listeners[0].group_id: is 256 characters long; at most 255 are \
             allowed"
        );
        assert_eq!(
            group(&"é".repeat(255)).expect("fits").listeners[0]
                .group_id
                .chars()
                .count(),
            255
        );
        assert_eq!(
            error(&with_listener("").replace("handler = \"h\"", "handler = \"\"")),
            "checkpoint.toml: listeners[0].handler: must not be empty"
        );
    }

    #[test]
    fn the_same_topic_and_group_twice_is_rejected() {
        let text = format!(
            "{}[[listeners]]\nhandler = \"other\"\ntopic = \"t\"\ngroup_id = \"g\"\n",
            with_listener("")
        );
        assert_eq!(
            error(&text),
            "checkpoint.toml: listeners[1]: topic `t` in group `g` is already consumed by \
             listeners[0]"
        );
        let other_group = text.replace("group_id = \"g\"\n[[", "group_id = \"g2\"\n[[");
        assert_eq!(
            parse(&other_group)
                .expect("different groups")
                .listeners
                .len(),
            2
        );
    }

    #[test]
    fn bad_addresses_and_database_urls_are_rejected() {
        assert_eq!(
            error(&format!("{DATABASE}[api]\nbind = \"localhost\"\n")),
            "checkpoint.toml: api.bind: `localhost` is not a socket address like 127.0.0.1:9292 \
             or [::1]:9292"
        );
        assert!(
            error(&format!("{DATABASE}[api]\nbind = \"127.0.0.1:99999\"\n"))
                .starts_with("checkpoint.toml: api.bind: `127.0.0.1:99999` is not")
        );
        assert_eq!(
            error("[database]\nurl = \"oracle://db\"\n"),
            "checkpoint.toml: database.url: invalid database URL `oracle://db`: expected \
             sqlite://PATH, sqlite::memory:, postgres://… or mysql://…"
        );
        assert_eq!(
            error("[database]\nurl = \"${EMPTY}\"\n"),
            "checkpoint.toml: database.url: must not be empty"
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        assert_eq!(
            error("[database\nurl = 1\n"),
            "checkpoint.toml: <syntax>: line 1, column 10: unclosed table, expected `]`"
        );
        let duplicate = error("[database]\nurl = \"sqlite://a\"\nurl = \"sqlite://b\"\n");
        assert!(
            duplicate.starts_with("checkpoint.toml: <syntax>: line 3, column 1: "),
            "{duplicate}"
        );
        assert!(duplicate.contains("duplicate key"), "{duplicate}");
    }

    #[test]
    fn unregistered_handlers_are_named_with_the_registered_ones() {
        let text = format!(
            "{}[[listeners]]\nhandler = \"orders\"\ntopic = \"t\"\ngroup_id = \"g2\"\n",
            with_listener("").replace("handler = \"h\"", "handler = \"payments\"")
        );
        let config = parse(&text).expect("valid");
        assert_eq!(
            config
                .check_handlers(["payments", "audit", "payments"])
                .expect_err("unknown")
                .to_string(),
            "checkpoint.toml: listeners[1].handler: no handler named `orders` is registered \
             (registered: `audit`, `payments`)"
        );
        assert_eq!(
            config.check_handlers([]).expect_err("none").to_string(),
            "checkpoint.toml: listeners[0].handler: no handler named `payments` is registered \
             (no handlers are registered)"
        );
        assert!(config.check_handlers(["orders", "payments"]).is_ok());
        assert!(parse(DATABASE).expect("valid").check_handlers([]).is_ok());
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let err = Config::load("definitely/missing/checkpoint.toml").expect_err("missing");
        let ConfigError::Read { path, source } = &err else {
            panic!("expected Read, got {err:?}")
        };
        assert_eq!(path, "definitely/missing/checkpoint.toml");
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().starts_with(
                "definitely/missing/checkpoint.toml: cannot read the configuration file: "
            ),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());

        let path = std::env::temp_dir().join(format!(
            "checkpoint-config-test-{}.toml",
            std::process::id()
        ));
        std::fs::write(
            &path,
            "[database]\nurl = \"sqlite://loaded.db\"\npool_size = 2\n",
        )
        .expect("write");
        let loaded = Config::load(&path);
        std::fs::remove_file(&path).expect("remove");
        let config = loaded.expect("valid");
        assert_eq!(
            (config.database.url.as_str(), config.database.pool_size),
            ("sqlite://loaded.db", 2)
        );
        assert_eq!(config.source, path.display().to_string());
    }

    #[test]
    fn parse_names_the_source_and_reads_the_process_environment() {
        let err = Config::parse("[database]\nurl = 1\n", "<string>").expect_err("invalid");
        assert!(
            err.to_string().starts_with("<string>: database.url: "),
            "{err}"
        );
        // PATH is set in any process environment that runs tests.
        let config = Config::parse(
            "[database]\nurl = \"sqlite://x.db\"\n[kafka]\npath = \"${PATH}\"\n",
            "<string>",
        )
        .expect("valid");
        assert_eq!(
            config.kafka["path"],
            std::env::var("PATH").expect("PATH is set")
        );
        assert_eq!(config.source, "<string>");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = parse(
            "[database]\nurl = \"${DATABASE_URL}\"\n[api]\ntoken = \"s3cret\"\n[kafka]\n\
             \"sasl.username\" = \"alice\"\n\"sasl.password\" = \"kafka-s3cret\"\n\
             \"ssl.key.password\" = \"key-s3cret\"\n",
        )
        .expect("valid");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("s3cret"),
            "{debug}"
        );
        assert!(
            debug.contains("postgres://app:***@127.0.0.1:5432/app"),
            "{debug}"
        );
        assert!(debug.contains("token: Some(\"***\")"), "{debug}");
        assert!(debug.contains("\"sasl.password\": \"***\""), "{debug}");
        assert!(debug.contains("\"sasl.username\": \"alice\""), "{debug}");
    }
}
