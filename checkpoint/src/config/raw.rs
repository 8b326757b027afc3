//! The file as written. Integers are read as `i64` so that range errors can say what was
//! wrong.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) kafka: BTreeMap<String, toml::Value>,
    pub(super) database: RawDatabase,
    #[serde(default)]
    pub(super) db_checkpoint: RawDbCheckpoint,
    #[serde(default)]
    pub(super) api: RawApi,
    pub(super) retention: Option<RawRetention>,
    #[serde(default)]
    pub(super) listeners: Vec<RawListener>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) events_older_than: Option<String>,
    pub(super) failures_older_than: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) batch_size: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) url: String,
    #[serde(default = "default_pool_size")]
    pub(super) pool_size: i64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDbCheckpoint {
    pub(super) max_retries: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) enabled: Option<bool>,
    pub(super) bind: Option<String>,
    pub(super) token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) handler: String,
    pub(super) topic: String,
    pub(super) group_id: String,
    #[serde(default = "one")]
    pub(super) max_concurrency: i64,
    #[serde(default = "yes")]
    pub(super) start_from_beginning: bool,
    #[serde(default = "one")]
    pub(super) batch_size: i64,
    #[serde(default)]
    pub(super) backoff: RawBackoff,
    pub(super) handler_timeout_ms: Option<i64>,
    pub(super) max_queued_bytes: Option<i64>,
    pub(super) shutdown_timeout_ms: Option<i64>,
    pub(super) revoke_timeout_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    #[serde(default = "default_min_ms")]
    pub(super) min_ms: i64,
    #[serde(default = "default_max_ms")]
    pub(super) max_ms: i64,
}

impl Default for RawBackoff {
    fn default() -> Self {
        Self {
            min_ms: default_min_ms(),
            max_ms: default_max_ms(),
        }
    }
}

pub(super) fn default_pool_size() -> i64 {
    10
}

fn one() -> i64 {
    1
}

fn yes() -> bool {
    true
}

pub(super) fn default_min_ms() -> i64 {
    1_000
}

pub(super) fn default_max_ms() -> i64 {
    60_000
}
