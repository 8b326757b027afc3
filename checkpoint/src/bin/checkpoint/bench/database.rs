//! A database of the run: opened and migrated, counted to verify a mode, cleaned between modes.

#[allow(clippy::wildcard_imports)]
use super::*;

/// A database of the run.
pub(super) struct Database {
    pub(super) label: String,
    pub(super) store: Store,
    /// A temp file to remove at the end.
    pub(super) temp: Option<std::path::PathBuf>,
}

impl Database {
    pub(super) fn error(&self, source: StoreError) -> BenchError {
        BenchError::Store {
            database: self.label.clone(),
            source,
        }
    }

    pub(super) async fn open(
        url: &str,
        temp: Option<std::path::PathBuf>,
        concurrency: usize,
    ) -> Result<Self, BenchError> {
        let store_error = |source| BenchError::Store {
            database: checkpoint::__private::mask_password(url),
            source,
        };
        // A connection per partition in flight, and room for the duplicate checks ahead.
        let options = StoreOptions {
            max_connections: (concurrency + 2).max(4),
        };
        let store = Store::connect_with(url, &options).map_err(store_error)?;
        let label = store.url().to_string();
        let db = Self { label, store, temp };
        match tokio::time::timeout(Duration::from_secs(5), db.store.ping()).await {
            Ok(result) => result.map_err(|e| db.error(e))?,
            Err(_) => {
                return Err(db.error(StoreError::Unavailable {
                    backend: db.store.backend(),
                    message: "no answer within 5 s".into(),
                }));
            }
        }
        db.store.migrate().await.map_err(|e| db.error(e))?;
        let mut pooled = db.store.conn().await.map_err(|e| db.error(e))?;
        let mut conn = pooled.conn();
        let ddl = effects_ddl(db.store.backend());
        if let Err(e) = conn.batch_execute(ddl).await {
            let error = conn.query_error(e);
            return Err(db.error(error));
        }
        drop(pooled);
        Ok(db)
    }

    pub(super) async fn count(&self, group: &str, effects: bool) -> Result<(i64, i64), BenchError> {
        let mut pooled = self.store.conn().await.map_err(|e| self.error(e))?;
        let mut conn = pooled.conn();
        let rows = if effects {
            use checkpoint_bench_effects as fx;
            conn.load(fx::table.filter(fx::group_id.eq(group.to_owned())).select((
                diesel::dsl::count_star(),
                diesel::dsl::count(fx::order_id).aggregate_distinct(),
            )))
            .await
        } else {
            use checkpoint_events as ev;
            conn.load(ev::table.filter(ev::group_id.eq(group.to_owned())).select((
                diesel::dsl::count_star(),
                diesel::dsl::count(ev::checksum).aggregate_distinct(),
            )))
            .await
        };
        let rows: Vec<(i64, i64)> = rows.map_err(|e| self.error(conn.query_error(e)))?;
        Ok(rows.first().copied().unwrap_or((0, 0)))
    }

    pub(super) async fn clean(&self, group: &str) -> Result<(), BenchError> {
        let mut pooled = self.store.conn().await.map_err(|e| self.error(e))?;
        let mut conn = pooled.conn();
        let events = diesel::delete(
            checkpoint_events::table.filter(checkpoint_events::group_id.eq(group.to_owned())),
        );
        if let Err(e) = conn.execute(events).await {
            return Err(self.error(conn.query_error(e)));
        }
        let effects = diesel::delete(
            checkpoint_bench_effects::table
                .filter(checkpoint_bench_effects::group_id.eq(group.to_owned())),
        );
        if let Err(e) = conn.execute(effects).await {
            return Err(self.error(conn.query_error(e)));
        }
        // Every mode starts from a table without dead rows, autovacuum or not.
        if self.store.backend() == Backend::Postgres {
            let vacuum = "VACUUM checkpoint_events, checkpoint_bench_effects";
            if let Err(e) = conn.batch_execute(vacuum).await {
                return Err(self.error(conn.query_error(e)));
            }
        }
        Ok(())
    }

    pub(super) fn remove_temp(&self) {
        if let Some(path) = &self.temp {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

impl Database {
    /// Removes whatever a failed run of `run_id` left behind.
    pub(super) async fn clean_all(&self, run_id: &str, index: usize) -> Result<(), BenchError> {
        for mode in Mode::ALL {
            self.clean(&group_of(run_id, mode, index)).await?;
        }
        Ok(())
    }
}

/// Fails unless `group` holds exactly one event (and, transactional, one effect) per message.
pub(super) async fn verify(
    db: &Database,
    mode: Mode,
    group: &str,
    expected: u64,
) -> Result<(), BenchError> {
    let expected = i64::try_from(expected).unwrap_or(i64::MAX);
    let fail = |what: String| BenchError::Verification {
        mode,
        database: db.label.clone(),
        what,
    };
    let (rows, distinct) = db.count(group, false).await?;
    if rows != expected || distinct != expected {
        return Err(fail(format!(
            "{rows} event rows ({distinct} distinct) for {expected} messages"
        )));
    }
    if mode.transactional() {
        let (effects, distinct) = db.count(group, true).await?;
        if effects != expected || distinct != expected {
            return Err(fail(format!(
                "{effects} handler rows ({distinct} distinct orders) for {expected} messages"
            )));
        }
    }
    Ok(())
}
