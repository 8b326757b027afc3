//! From the file as written to a [`Config`]: ranges, cross-field checks and expansion.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::diagnostics::{Ctx, key_segment};
use super::raw::{RawConfig, RawRetention};
use super::{
    ApiConfig, Config, ConfigError, DEFAULT_MAX_QUEUED_BYTES, DEFAULT_REVOKE_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT, DatabaseConfig, DbCheckpointConfig, ListenerConfig, MAX_GROUP_ID_LEN,
    MAX_POOL_SIZE, MAX_PRUNE_BATCH, MAX_TOPIC_LEN,
};
use crate::engine::Backoff;
use crate::retention::{DEFAULT_BATCH_SIZE, DEFAULT_INTERVAL, Retention, parse_age};
use crate::store::DatabaseUrl;

impl Ctx<'_> {
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

    pub(super) fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
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
