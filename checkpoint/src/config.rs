//! The configuration file (`checkpoint.toml`).
//!
//! ```toml
//! [kafka]                      # any librdkafka property, passed through verbatim
//! "bootstrap.servers" = "${KAFKA_BROKERS:-127.0.0.1:9092}"
//!
//! [database]
//! url = "${DATABASE_URL:-sqlite://checkpoint.db}"   # required
//! pool_size = 10
//!
//! [db_checkpoint]
//! max_retries = 3              # default for handlers that set none; absent = retry forever
//!
//! [api]
//! bind = "127.0.0.1:9292"
//! token = "${CHECKPOINT_API_TOKEN:-}"               # empty = no token
//!
//! [[listeners]]
//! handler = "orders"           # a registered handler name
//! topic = "orders"
//! group_id = "billing"
//! max_concurrency = 3          # partitions handled at once
//! start_from_beginning = true
//! batch_size = 1
//! backoff = { min_ms = 1000, max_ms = 60000 }
//! ```
//!
//! `${VAR}` and `${VAR:-default}` are expanded in string values *after* parsing (so a
//! variable's value can never change the file's structure); `$$` is a literal `$`. Every
//! mistake is rejected at start with one line naming the file, the key (or line and column)
//! and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::engine::Backoff;

/// Where the configuration is read from by default.
pub const DEFAULT_PATH: &str = "checkpoint.toml";

/// A configuration error: one line, naming the file, the key and the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{file}: {key}: {reason}")]
    Invalid {
        /// File name (or `<string>`).
        file: String,
        /// The key, like `listeners[1].backoff`, or `line 4, column 1` for syntax errors.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// librdkafka properties.
    pub kafka: BTreeMap<String, String>,
    /// The checkpoint database.
    pub database: DatabaseConfig,
    /// Defaults of the checkpoint algorithm.
    pub db_checkpoint: DbCheckpointConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// The listeners to run.
    pub listeners: Vec<ListenerConfig>,
    /// Where this configuration came from.
    pub source: String,
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// Database URL.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
}

/// `[db_checkpoint]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbCheckpointConfig {
    /// Retries before a failure, for handlers that set no `max_retries`; `None` = forever.
    pub max_retries: Option<u32>,
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Bearer token required on mutating routes; `None` = no token.
    pub token: Option<String>,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Registered handler name.
    pub handler: String,
    /// Topic.
    pub topic: String,
    /// Consumer group.
    pub group_id: String,
    /// Partitions handled at once.
    pub max_concurrency: usize,
    /// Start from the earliest offset when the group has none committed.
    pub start_from_beginning: bool,
    /// Messages per batch (1 = per message).
    pub batch_size: usize,
    /// Backoff between retries.
    pub backoff: Backoff,
}

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
    #[serde(default)]
    listeners: Vec<RawListener>,
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

/// Validation context: the file name and the environment lookup.
struct Ctx<'a> {
    source: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Expands `${VAR}`, `${VAR:-default}` and `$$` in the value of `key`.
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
                let end = after
                    .find('}')
                    .ok_or_else(|| self.invalid(key, "unclosed `${` in value"))?;
                let reference = &after[..end];
                let (name, default) = match reference.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (reference, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(self.invalid(
                        key,
                        format!("`${{{reference}}}` is not a valid variable reference"),
                    ));
                }
                match ((self.env)(name), default) {
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => {
                        return Err(self.invalid(
                            key,
                            format!("environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"),
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

    fn positive(&self, key: &str, value: i64, max: i64) -> Result<usize, ConfigError> {
        if !(1..=max).contains(&value) {
            return Err(self.invalid(key, format!("must be between 1 and {max}, not {value}")));
        }
        usize::try_from(value).map_err(|_| self.invalid(key, "out of range"))
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Validates `text`, expanding variables from the process environment; `source` names it
    /// in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, source, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::parse`], with variables looked up by `env`.
    pub fn parse_with_env(
        text: &str,
        source: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let ctx = Ctx { source, env };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {column}")
                })
                .unwrap_or_else(|| "<file>".to_owned());
            ctx.invalid(key, e.message().trim().replace('\n', " "))
        })?;

        let mut kafka = BTreeMap::new();
        for (key, value) in raw.kafka {
            let path = format!("kafka.\"{key}\"");
            let text = match value {
                toml::Value::String(s) => ctx.expand(&path, &s)?,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ctx.invalid(
                        path,
                        format!(
                            "must be a string, number or boolean, not a {}",
                            other.type_str()
                        ),
                    ));
                }
            };
            kafka.insert(key, text);
        }

        let url = ctx.expand("database.url", &raw.database.url)?;
        if url.trim().is_empty() {
            return Err(ctx.invalid("database.url", "is empty"));
        }
        crate::store::DatabaseUrl::parse(&url)
            .map_err(|e| ctx.invalid("database.url", e.to_string()))?;
        let database = DatabaseConfig {
            url,
            pool_size: ctx.positive("database.pool_size", raw.database.pool_size, 1_000)?,
        };

        let max_retries = match raw.db_checkpoint.max_retries {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| {
                ctx.invalid(
                    "db_checkpoint.max_retries",
                    format!("must be between 0 and {}, not {n}", u32::MAX),
                )
            })?),
        };

        let bind_text = match raw.api.bind {
            Some(bind) => ctx.expand("api.bind", &bind)?,
            None => "127.0.0.1:9292".to_owned(),
        };
        let bind = bind_text.parse::<SocketAddr>().map_err(|e| {
            ctx.invalid(
                "api.bind",
                format!("`{bind_text}` is not an address like 127.0.0.1:9292 ({e})"),
            )
        })?;
        let token = match raw.api.token {
            Some(token) => Some(ctx.expand("api.token", &token)?).filter(|t| !t.is_empty()),
            None => None,
        };

        let mut listeners = Vec::with_capacity(raw.listeners.len());
        for (i, l) in raw.listeners.into_iter().enumerate() {
            let at = |field: &str| format!("listeners[{i}].{field}");
            let topic = ctx.expand(&at("topic"), &l.topic)?;
            if topic.is_empty()
                || topic.len() > 249
                || !topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(ctx.invalid(
                    at("topic"),
                    format!("`{topic}` is not a Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -)"),
                ));
            }
            let group_id = ctx.expand(&at("group_id"), &l.group_id)?;
            if group_id.is_empty() || group_id.chars().count() > 255 {
                return Err(ctx.invalid(at("group_id"), "must be 1 to 255 characters"));
            }
            let handler = ctx.expand(&at("handler"), &l.handler)?;
            if handler.is_empty() {
                return Err(ctx.invalid(at("handler"), "is empty"));
            }
            if l.backoff.min_ms < 1 {
                return Err(ctx.invalid(
                    at("backoff.min_ms"),
                    format!("must be at least 1, not {}", l.backoff.min_ms),
                ));
            }
            if l.backoff.min_ms > l.backoff.max_ms {
                return Err(ctx.invalid(
                    at("backoff"),
                    format!(
                        "min_ms ({}) is greater than max_ms ({})",
                        l.backoff.min_ms, l.backoff.max_ms
                    ),
                ));
            }
            let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX));
            if listeners
                .iter()
                .any(|other: &ListenerConfig| other.topic == topic && other.group_id == group_id)
            {
                return Err(ctx.invalid(
                    at("group_id"),
                    format!("another listener already consumes `{topic}` in group `{group_id}`"),
                ));
            }
            listeners.push(ListenerConfig {
                max_concurrency: ctx.positive(&at("max_concurrency"), l.max_concurrency, 1_000)?,
                batch_size: ctx.positive(&at("batch_size"), l.batch_size, 100_000)?,
                start_from_beginning: l.start_from_beginning,
                backoff: Backoff::new(millis(l.backoff.min_ms), millis(l.backoff.max_ms)),
                handler,
                topic,
                group_id,
            });
        }

        Ok(Self {
            kafka,
            database,
            db_checkpoint: DbCheckpointConfig { max_retries },
            api: ApiConfig { bind, token },
            listeners,
            source: source.to_owned(),
        })
    }

    /// Rejects a listener that names a handler not in `registered`.
    pub fn check_handlers<'a>(
        &self,
        registered: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ConfigError> {
        let mut names: Vec<&str> = registered.into_iter().collect();
        names.sort_unstable();
        for (i, listener) in self.listeners.iter().enumerate() {
            if !names.contains(&listener.handler.as_str()) {
                return Err(ConfigError::Invalid {
                    file: self.source.clone(),
                    key: format!("listeners[{i}].handler"),
                    reason: format!(
                        "no handler named `{}` is registered (registered: {})",
                        listener.handler,
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A commented example configuration (what `checkpoint init` writes).
pub fn example() -> &'static str {
    include_str!("config_example.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, "checkpoint.toml", &|name| match name {
            "DATABASE_URL" => Some("postgres://root@127.0.0.1:5432/test".to_owned()),
            "BROKERS" => Some("127.0.0.1:9092".to_owned()),
            _ => None,
        })
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("must be rejected").to_string()
    }

    const MINIMAL: &str = "[database]\nurl = \"sqlite://cp.db\"\n";

    #[test]
    fn the_example_parses() {
        let config =
            Config::parse_with_env(example(), "example", &|_| None).expect("example parses");
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.api.bind.to_string(), "127.0.0.1:9292");
    }

    #[test]
    fn defaults_and_expansion() {
        let config = parse(
            r#"
[kafka]
"bootstrap.servers" = "${BROKERS}"
"session.timeout.ms" = 6000
"enable.idempotence" = true
[database]
url = "${DATABASE_URL:-sqlite://fallback.db}"
[api]
token = "${MISSING_TOKEN:-}"
[[listeners]]
handler = "orders"
topic = "orders.v1"
group_id = "cost$$center-${MISSING:-eu}"
"#,
        )
        .expect("valid");
        assert_eq!(config.kafka["bootstrap.servers"], "127.0.0.1:9092");
        assert_eq!(config.kafka["session.timeout.ms"], "6000");
        assert_eq!(config.kafka["enable.idempotence"], "true");
        assert_eq!(config.database.url, "postgres://root@127.0.0.1:5432/test");
        assert_eq!(config.database.pool_size, 10);
        assert_eq!(config.api.token, None);
        let listener = &config.listeners[0];
        assert_eq!(listener.group_id, "cost$center-eu");
        assert_eq!(
            (
                listener.max_concurrency,
                listener.batch_size,
                listener.start_from_beginning
            ),
            (1, 1, true)
        );
        assert_eq!(
            listener.backoff,
            Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
        );
        assert_eq!(config.db_checkpoint.max_retries, None);
    }

    #[test]
    fn each_mistake_names_file_key_and_reason() {
        let listener = |extra: &str| {
            format!(
                "{MINIMAL}[[listeners]]\nhandler = \"h\"\ntopic = \"t\"\ngroup_id = \"g\"\n{extra}"
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{MINIMAL}[api]\nport = 1\n"),
                "checkpoint.toml: line 4, column 1: unknown field `port`, expected `bind` or `token`",
            ),
            (
                "[database]\npool_size = 3\n".to_owned(),
                "checkpoint.toml: line 1, column 1: missing field `url`",
            ),
            (
                listener("max_concurrency = \"three\"\n"),
                "checkpoint.toml: line 7, column 19: invalid type: string \"three\", expected i64",
            ),
            (
                listener("max_concurrency = 0\n"),
                "checkpoint.toml: listeners[0].max_concurrency: must be between 1 and 1000, not 0",
            ),
            (
                listener("batch_size = 0\n"),
                "checkpoint.toml: listeners[0].batch_size: must be between 1 and 100000, not 0",
            ),
            (
                format!("[database]\nurl = \"sqlite://x\"\npool_size = 0\n"),
                "checkpoint.toml: database.pool_size: must be between 1 and 1000, not 0",
            ),
            (
                listener("backoff = { min_ms = 5000, max_ms = 100 }\n"),
                "checkpoint.toml: listeners[0].backoff: min_ms (5000) is greater than max_ms (100)",
            ),
            (
                listener("backoff = { min_ms = 0 }\n"),
                "checkpoint.toml: listeners[0].backoff.min_ms: must be at least 1, not 0",
            ),
            (
                format!(
                    "{MINIMAL}[[listeners]]\nhandler = \"h\"\ntopic = \"bad topic\"\ngroup_id = \"g\"\n"
                ),
                "checkpoint.toml: listeners[0].topic: `bad topic` is not a Kafka topic name",
            ),
            (
                format!("{MINIMAL}[api]\nbind = \"localhost\"\n"),
                "checkpoint.toml: api.bind: `localhost` is not an address like 127.0.0.1:9292",
            ),
            (
                "[database]\nurl = \"${NOPE}\"\n".to_owned(),
                "checkpoint.toml: database.url: environment variable `NOPE` is not set",
            ),
            (
                "[database]\nurl = \"oracle://db\"\n".to_owned(),
                "checkpoint.toml: database.url: invalid database URL `oracle://db`",
            ),
            (
                "[database\nurl = 1\n".to_owned(),
                "checkpoint.toml: line 1, column",
            ),
            (
                format!("{MINIMAL}[db_checkpoint]\nmax_retries = -1\n"),
                "checkpoint.toml: db_checkpoint.max_retries: must be between 0 and 4294967295, not -1",
            ),
            (
                format!("{MINIMAL}[kafka]\n\"a\" = [1]\n"),
                "checkpoint.toml: kafka.\"a\": must be a string, number or boolean, not a array",
            ),
            (
                format!(
                    "{}[[listeners]]\nhandler = \"h2\"\ntopic = \"t\"\ngroup_id = \"g\"\n",
                    listener("")
                ),
                "checkpoint.toml: listeners[1].group_id: another listener already consumes `t` in group `g`",
            ),
            (
                listener("retries = 3\n"),
                "checkpoint.toml: line 7, column 1: unknown field `retries`, expected one of `handler`, `topic`, `group_id`, `max_concurrency`, `start_from_beginning`, `batch_size`, `backoff`",
            ),
        ];
        for (text, expected) in cases {
            let message = error(&text);
            assert!(
                message.starts_with(expected),
                "for\n{text}\ngot: {message}\nwant: {expected}"
            );
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn unregistered_handlers_and_missing_files_are_named() {
        let config = parse(&format!(
            "{MINIMAL}[[listeners]]\nhandler = \"orders\"\ntopic = \"t\"\ngroup_id = \"g\"\n"
        ))
        .expect("valid");
        let err = config
            .check_handlers(["payments", "audit"])
            .expect_err("unknown handler")
            .to_string();
        assert_eq!(
            err,
            "checkpoint.toml: listeners[0].handler: no handler named `orders` is registered (registered: audit, payments)"
        );
        assert!(config.check_handlers(["orders"]).is_ok());
        let err = Config::load("definitely/missing/checkpoint.toml")
            .expect_err("missing")
            .to_string();
        assert!(
            err.starts_with(
                "definitely/missing/checkpoint.toml: cannot read the configuration file:"
            ),
            "{err}"
        );
    }
}
