//! Retention: old checkpoint rows deleted in bounded batches, by `checkpoint prune` or
//! periodically inside an [`App`](crate::App) with a `[retention]` table.
//!
//! Duplicate detection reaches only as far back as the events kept: a message redelivered
//! after its event was pruned is consumed again. Keep events longer than the topic keeps
//! messages (`retention.ms`), and longer than any replay you might run.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::{PrunedTable, Store, StoreError};

/// Rows deleted per statement unless configured otherwise.
pub const DEFAULT_BATCH_SIZE: i64 = 1_000;
/// The most rows one statement may delete: each id is a bound parameter, and SQLite takes at
/// most 32,766 of them in a statement.
pub const MAX_BATCH_SIZE: i64 = 10_000;
/// How often an [`App`](crate::App) prunes unless configured otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3_600);
/// The pause between two batches, so other writers get the table in between.
const BETWEEN_BATCHES: Duration = Duration::from_millis(10);

/// The metric counting deleted rows, labelled `table` (`events`, `failures`).
pub const PRUNED_METRIC: &str = "checkpoint_pruned_rows_total";

/// What to prune, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Events created longer ago than this are deleted (`None`: kept forever).
    pub events_older_than: Option<Duration>,
    /// Failures created longer ago than this are deleted (`None`: kept forever).
    pub failures_older_than: Option<Duration>,
    /// How often an application prunes.
    pub interval: Duration,
    /// Rows per delete statement (at least 1).
    pub batch_size: i64,
}

impl Retention {
    /// The tables this retention prunes, with their ages.
    pub fn ages(&self) -> impl Iterator<Item = (PrunedTable, Duration)> {
        [
            (PrunedTable::Events, self.events_older_than),
            (PrunedTable::Failures, self.failures_older_than),
        ]
        .into_iter()
        .filter_map(|(table, age)| Some((table, age?)))
    }
}

/// An age such as `30d`: a whole number followed by `s`, `m`, `h`, `d` or `w`.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit; write it like 30d, 12h, 90m, 45s or 2w"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use s, m, h, d or w)"
            ));
        }
    };
    let total = number
        .checked_mul(seconds)
        .ok_or_else(|| format!("`{text}` is too long"))?;
    if total == 0 {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(Duration::from_secs(total))
}

/// What one prune of one table did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// The table.
    pub table: PrunedTable,
    /// Rows created before this went.
    pub cutoff: DateTime<Utc>,
    /// How many rows went (or would go).
    pub rows: u64,
    /// Nothing was deleted; `rows` is what would have been.
    pub dry_run: bool,
}

impl std::fmt::Display for Pruned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        write!(
            f,
            "{:<8} {verb} {} rows created before {}",
            self.table.name(),
            self.rows,
            self.cutoff.format("%Y-%m-%dT%H:%M:%SZ")
        )
    }
}

/// Deletes the rows of `table` older than `age`, `batch_size` rows per statement, until none
/// is left; with `dry_run`, only counts them. `stop` is asked between batches: a prune told to
/// stop returns what it deleted so far.
pub async fn prune(
    store: &Store,
    table: PrunedTable,
    age: Duration,
    batch_size: i64,
    dry_run: bool,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Pruned, StoreError> {
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    let cutoff = Utc::now()
        .checked_sub_signed(age)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut pruned = Pruned {
        table,
        cutoff,
        rows: 0,
        dry_run,
    };
    if dry_run {
        let rows = store.count_older(table, cutoff.naive_utc()).await?;
        pruned.rows = u64::try_from(rows).unwrap_or(0);
        return Ok(pruned);
    }
    let batch_size = batch_size.clamp(1, MAX_BATCH_SIZE);
    loop {
        let deleted = store
            .prune_batch(table, cutoff.naive_utc(), batch_size)
            .await?;
        let deleted = u64::try_from(deleted).unwrap_or(0);
        pruned.rows += deleted;
        metrics::counter!(PRUNED_METRIC, "table" => table.name()).increment(deleted);
        if deleted < u64::try_from(batch_size).unwrap_or(u64::MAX) || stop() {
            return Ok(pruned);
        }
        tokio::time::sleep(BETWEEN_BATCHES).await;
    }
}

/// Prunes by `retention` now and then every `interval`, until `stopped` says so. Errors are
/// logged and the next round tries again: retention never stops the application.
pub async fn run_periodically(
    store: Store,
    retention: Retention,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        for (table, age) in retention.ages() {
            let stop = || *stopped.borrow();
            if stop() {
                return;
            }
            match prune(&store, table, age, retention.batch_size, false, &stop).await {
                Ok(pruned) if pruned.rows > 0 => {
                    tracing::info!(target: "checkpoint", table = table.name(), rows = pruned.rows, cutoff = %pruned.cutoff, "pruned");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(target: "checkpoint", table = table.name(), %error, "pruning failed; trying again next interval");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(retention.interval) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_units_and_reject_the_rest() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_age(" 45s "), Ok(Duration::from_secs(45)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(2 * 604_800)));
        for bad in [
            "30",
            "d",
            "",
            "0d",
            "-3d",
            "3 d",
            "3dd",
            "1.5d",
            "99999999999999999999w",
        ] {
            assert!(parse_age(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
