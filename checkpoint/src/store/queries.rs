//! The checkpoint queries, written once against diesel's DSL and run on whichever backend a
//! [`Conn`] holds. Only the spots where SQL dialects differ (conflict handling, `NULLS LAST`)
//! are spelled per backend.

use std::collections::HashSet;

use diesel::prelude::{
    BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper,
};
use diesel_async::RunQueryDsl;

use super::bulk::{
    RETURN_KEYS, StoredChecksum, StoredKey, postgres_unnest_insert, sqlite_multi_insert,
};
use super::models::{DedupKey, Event, Failure, ListQuery, NewEvent, NewFailure, PrunedTable};
use super::schema::{checkpoint_events as ev, checkpoint_failures as fl};
use super::validate::{storable_text, validate_event, validate_failure};
use super::{Conn, StoreResult, dispatch};

/// `INSERT … ON CONFLICT DO NOTHING` of `$values` into `$table` (`INSERT IGNORE` on MySQL;
/// what IGNORE would otherwise hide, truncation, is ruled out by validation and strict mode);
/// the number of rows inserted.
macro_rules! insert_ignoring {
    ($conn:expr, $table:expr, $values:expr) => {
        match $conn {
            Conn::Postgres(c) => {
                diesel::insert_into($table)
                    .values($values)
                    .on_conflict_do_nothing()
                    .execute(&mut **c)
                    .await
            }
            Conn::Sqlite(c) => {
                diesel::insert_into($table)
                    .values($values)
                    .on_conflict_do_nothing()
                    .execute(&mut **c)
                    .await
            }
            Conn::Mysql(c) => {
                diesel::insert_or_ignore_into($table)
                    .values($values)
                    .execute(&mut **c)
                    .await
            }
        }
    };
}
pub(super) use insert_ignoring;

/// Rows per multi-row INSERT; keeps every backend well under its bind-parameter limit.
pub(super) const INSERT_CHUNK: usize = 1000;

/// Builds the filtered, boxed listing query of `$table` for backend `$db`.
macro_rules! filtered {
    ($table:ident, $db:ty, $q:expr) => {{
        let q: &ListQuery = $q;
        let mut query = $table::table.into_boxed::<$db>();
        if let Some(v) = &q.entity_id {
            query = query.filter($table::entity_id.eq(v.clone()));
        }
        if let Some(v) = &q.topic {
            query = query.filter($table::topic.eq(v.clone()));
        }
        if let Some(v) = &q.group_id {
            query = query.filter($table::group_id.eq(v.clone()));
        }
        if let Some(v) = &q.event_type {
            query = query.filter($table::event_type.eq(v.clone()));
        }
        if let Some(v) = &q.checksum {
            query = query.filter($table::checksum.eq(v.clone()));
        }
        if let Some(v) = q.created_from {
            query = query.filter($table::created_at.ge(v));
        }
        if let Some(v) = q.created_until {
            query = query.filter($table::created_at.lt(v));
        }
        query
    }};
}

/// Lists `$table` rows as `$model`: PostgreSQL sorts NULL above every value, so it needs an
/// explicit `NULLS LAST`; SQLite and MySQL sort NULL below every value, so `DESC` already puts
/// NULLs last (and matches their indexes).
/// Deletes at most `$limit` rows of `$t` created before `$cutoff`, oldest first: their
/// ids are read first, then deleted by id (MySQL cannot take a `LIMIT` in a subquery on the
/// table it deletes from, and diesel builds no `DELETE … LIMIT`).
macro_rules! prune_batch {
    ($conn:expr, $t:ident, $cutoff:expr, $limit:expr) => {{
        let (cutoff, limit): (chrono::NaiveDateTime, i64) = ($cutoff, $limit);
        let oldest = $t::table
            .select($t::id)
            .filter($t::created_at.lt(cutoff))
            .order(($t::created_at, $t::id))
            .limit(limit);
        let ids: Result<Vec<i64>, diesel::result::Error> =
            dispatch!($conn, c => oldest.load::<i64>(&mut **c).await);
        match ids {
            Ok(ids) if ids.is_empty() => Ok(0),
            Ok(ids) => {
                // The cutoff again: an id freed meanwhile may be reused by a new row.
                let delete = diesel::delete(
                    $t::table
                        .filter($t::id.eq_any(ids))
                        .filter($t::created_at.lt(cutoff)),
                );
                dispatch!($conn, c => delete.execute(&mut **c).await)
            }
            Err(error) => Err(error),
        }
    }};
}

macro_rules! list_rows {
    ($conn:expr, $table:ident, $model:ty, $q:expr) => {{
        let q: &ListQuery = $q;
        match $conn {
            Conn::Postgres(c) => {
                use diesel::expression_methods::PgSortExpressionMethods;
                filtered!($table, diesel::pg::Pg, q)
                    .order_by((
                        $table::event_time.desc().nulls_last(),
                        $table::created_at.desc().nulls_last(),
                        $table::id.desc(),
                    ))
                    .limit(q.limit)
                    .offset(q.offset)
                    .select(<$model>::as_select())
                    .load::<$model>(&mut **c)
                    .await
            }
            Conn::Sqlite(c) => {
                filtered!($table, diesel::sqlite::Sqlite, q)
                    .order_by((
                        $table::event_time.desc(),
                        $table::created_at.desc(),
                        $table::id.desc(),
                    ))
                    .limit(q.limit)
                    .offset(q.offset)
                    .select(<$model>::as_select())
                    .load::<$model>(&mut **c)
                    .await
            }
            Conn::Mysql(c) => {
                filtered!($table, diesel::mysql::Mysql, q)
                    .order_by((
                        $table::event_time.desc(),
                        $table::created_at.desc(),
                        $table::id.desc(),
                    ))
                    .limit(q.limit)
                    .offset(q.offset)
                    .select(<$model>::as_select())
                    .load::<$model>(&mut **c)
                    .await
            }
        }
    }};
}

impl Conn<'_> {
    /// True when an event with this dedup key is stored.
    pub async fn event_exists(&mut self, key: DedupKey<'_>) -> StoreResult<bool> {
        let query = ev::table
            .select(ev::id)
            .filter(ev::topic.eq(key.topic))
            .filter(ev::group_id.eq(key.group_id))
            .filter(ev::checksum.eq(key.checksum));
        let found = dispatch!(self, c => query.first::<i64>(&mut **c).await.optional());
        found
            .map(|id| id.is_some())
            .map_err(|e| self.query_error(e))
    }

    /// The subset of `checksums` already stored as events of `topic` and `group_id`, in one
    /// query.
    pub async fn existing_checksums(
        &mut self,
        topic: &str,
        group_id: &str,
        checksums: &[&str],
    ) -> StoreResult<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in checksums.chunks(INSERT_CHUNK) {
            if let Conn::Postgres(c) = self {
                // One index probe per key, whatever the planner's statistics say: with stale
                // statistics (a fast-growing table before autovacuum analyzes it) PostgreSQL
                // plans `checksum = ANY($1)` as a filter over every row of the group.
                let rows = diesel::sql_query(
                    "SELECT e.checksum FROM unnest($1::text[]) AS k(c) CROSS JOIN LATERAL \
                     (SELECT checksum FROM checkpoint_events WHERE topic = $2 AND group_id = $3 \
                     AND checksum = k.c LIMIT 1) AS e",
                )
                .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(chunk)
                .bind::<diesel::sql_types::Text, _>(topic)
                .bind::<diesel::sql_types::Text, _>(group_id)
                .load::<StoredChecksum>(&mut **c)
                .await;
                found.extend(
                    rows.map_err(|e| self.query_error(e))?
                        .into_iter()
                        .map(|r| r.checksum),
                );
                continue;
            }
            let query = ev::table
                .select(ev::checksum)
                .filter(ev::topic.eq(topic))
                .filter(ev::group_id.eq(group_id))
                .filter(ev::checksum.eq_any(chunk));
            let rows = dispatch!(self, c => query.load::<String>(&mut **c).await);
            found.extend(rows.map_err(|e| self.query_error(e))?);
        }
        Ok(found)
    }

    /// Inserts an event unless its dedup key is already stored; true when this call inserted
    /// it. A concurrent insert of the same key waits for the other transaction and then does
    /// nothing, so two rows can never exist.
    pub async fn insert_event(&mut self, row: &NewEvent<'_>) -> StoreResult<bool> {
        validate_event(row)?;
        // MySQL: `ON DUPLICATE KEY UPDATE id = id` would report 1 for a duplicate under
        // CLIENT_FOUND_ROWS; INSERT IGNORE reports 0.
        let inserted = insert_ignoring!(self, ev::table, row);
        inserted.map(|n| n > 0).map_err(|e| self.query_error(e))
    }

    /// Inserts many events, skipping stored dedup keys; returns, per row, whether this call
    /// inserted it (a key repeated inside `rows` is inserted once, for its first row). One
    /// statement per 1,000 rows, reporting the keys it stored (`RETURNING`), on PostgreSQL and
    /// SQLite; on MySQL see `insert_events_counted`.
    pub async fn insert_events(&mut self, rows: &[NewEvent<'_>]) -> StoreResult<Vec<bool>> {
        for row in rows {
            validate_event(row)?;
        }
        let mut returned: Vec<StoredKey> = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(INSERT_CHUNK) {
            let keys = match self {
                Conn::Postgres(c) => {
                    postgres_unnest_insert(chunk)
                        .get_results::<StoredKey>(&mut **c)
                        .await
                }
                Conn::Sqlite(c) => {
                    sqlite_multi_insert(chunk, RETURN_KEYS)
                        .load::<StoredKey>(&mut **c)
                        .await
                }
                Conn::Mysql(_) => return self.insert_events_counted(rows).await,
            };
            returned.extend(keys.map_err(|e| self.query_error(e))?);
        }
        let mut inserted: HashSet<(&str, &str, &str)> = returned
            .iter()
            .map(|k| (k.topic.as_str(), k.group_id.as_str(), k.checksum.as_str()))
            .collect();
        Ok(rows
            .iter()
            .map(|row| inserted.remove(&(row.topic, row.group_id, row.checksum)))
            .collect())
    }

    /// MySQL cannot report per row which rows a multi-row insert took (it has no RETURNING). So
    /// each chunk is inserted in one statement inside a transaction (a savepoint when one is
    /// open already); when the affected-row count says every row went in, that is the answer.
    /// Otherwise (a stored or repeated key) it is rolled back and the chunk goes row by row, in
    /// a transaction of its own, which tells exactly.
    async fn insert_events_counted(&mut self, rows: &[NewEvent<'_>]) -> StoreResult<Vec<bool>> {
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(INSERT_CHUNK) {
            let distinct: HashSet<(&str, &str, &str)> = chunk
                .iter()
                .map(|r| (r.topic, r.group_id, r.checksum))
                .collect();
            if distinct.len() == chunk.len() {
                self.begin().await?;
                match self.insert_events_unreported(chunk).await {
                    Ok(n) if n == chunk.len() => {
                        self.commit().await?;
                        out.extend(std::iter::repeat_n(true, chunk.len()));
                        continue;
                    }
                    Ok(_) => self.rollback().await?,
                    Err(error) => {
                        // The insert's error matters more than a failed rollback.
                        let _ = self.rollback().await;
                        return Err(error);
                    }
                }
            }
            self.begin().await?;
            for row in chunk {
                match self.insert_event(row).await {
                    Ok(inserted) => out.push(inserted),
                    Err(error) => {
                        let _ = self.rollback().await;
                        return Err(error);
                    }
                }
            }
            self.commit().await?;
        }
        Ok(out)
    }

    /// Inserts many events, skipping stored dedup keys, one statement per 1,000 rows; returns
    /// how many rows went in (not which). For the bench's `db-ceiling`; not public API.
    #[doc(hidden)]
    pub async fn insert_events_unreported(&mut self, rows: &[NewEvent<'_>]) -> StoreResult<usize> {
        for row in rows {
            validate_event(row)?;
        }
        let mut total = 0;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let inserted = match self {
                Conn::Postgres(c) => {
                    diesel::insert_into(ev::table)
                        .values(chunk)
                        .on_conflict_do_nothing()
                        .execute(&mut **c)
                        .await
                }
                // diesel's multi-row INSERT for SQLite lives on the synchronous connection only;
                // the same statement, spelled out, runs on the async wrapper.
                Conn::Sqlite(c) => sqlite_multi_insert(chunk, "").execute(&mut **c).await,
                Conn::Mysql(c) => {
                    diesel::insert_or_ignore_into(ev::table)
                        .values(chunk)
                        .execute(&mut **c)
                        .await
                }
            };
            total += inserted.map_err(|e| self.query_error(e))?;
        }
        Ok(total)
    }

    /// Sets the acknowledgement fields of a stored event (used after a transactional claim).
    pub(crate) async fn complete_event(
        &mut self,
        key: DedupKey<'_>,
        row: &NewEvent<'_>,
    ) -> StoreResult<()> {
        validate_event(row)?;
        let query = diesel::update(
            ev::table
                .filter(ev::topic.eq(key.topic))
                .filter(ev::group_id.eq(key.group_id))
                .filter(ev::checksum.eq(key.checksum)),
        )
        .set((
            ev::entity_id.eq(row.entity_id),
            ev::event_time.eq(row.event_time),
            ev::event_type.eq(row.event_type),
            ev::event_version.eq(row.event_version),
        ));
        let result = dispatch!(self, c => query.execute(&mut **c).await);
        result.map(drop).map_err(|e| self.query_error(e))
    }

    /// Deletes the event with this dedup key (an abandoned claim in a transactional batch).
    pub(crate) async fn delete_event(&mut self, key: DedupKey<'_>) -> StoreResult<()> {
        let query = diesel::delete(
            ev::table
                .filter(ev::topic.eq(key.topic))
                .filter(ev::group_id.eq(key.group_id))
                .filter(ev::checksum.eq(key.checksum)),
        );
        let result = dispatch!(self, c => query.execute(&mut **c).await);
        result.map(drop).map_err(|e| self.query_error(e))
    }

    /// The event with this id.
    pub async fn get_event(&mut self, id: i64) -> StoreResult<Option<Event>> {
        let row = dispatch!(self, c => ev::table
            .find(id)
            .select(Event::as_select())
            .first::<Event>(&mut **c)
            .await
            .optional());
        row.map_err(|e| self.query_error(e))
    }

    /// Events matching `query`, newest `event_time` first (NULLs last), then newest
    /// `created_at` (NULLs last), then highest id.
    pub async fn list_events(&mut self, query: &ListQuery) -> StoreResult<Vec<Event>> {
        let rows = list_rows!(self, ev, Event, query);
        rows.map_err(|e| self.query_error(e))
    }

    /// Records a failure. A failure with the same dedup key is updated instead: its attempts
    /// grow by `row.attempts` and it takes the new error and metadata. Returns the row id.
    pub async fn record_failure(&mut self, row: &NewFailure<'_>) -> StoreResult<i64> {
        validate_failure(row)?;
        let (class, message) = (
            storable_text(row.error_class),
            storable_text(row.error_message),
        );
        let row = &NewFailure {
            error_class: &class,
            error_message: &message,
            ..*row
        };
        let inserted = insert_ignoring!(self, fl::table, row).map_err(|e| self.query_error(e))?;
        let same_key = fl::topic
            .eq(row.topic)
            .and(fl::group_id.eq(row.group_id))
            .and(fl::checksum.eq(row.checksum));
        if inserted == 0 {
            let update = diesel::update(fl::table.filter(same_key)).set((
                fl::attempts.eq(fl::attempts + row.attempts),
                fl::metadata.eq(row.metadata),
                fl::error_class.eq(row.error_class),
                fl::error_message.eq(row.error_message),
                fl::error_backtrace.eq(row.error_backtrace),
            ));
            let result = dispatch!(self, c => update.execute(&mut **c).await);
            result.map_err(|e| self.query_error(e))?;
        }
        let query = fl::table.select(fl::id).filter(same_key);
        let id = dispatch!(self, c => query.first::<i64>(&mut **c).await);
        id.map_err(|e| self.query_error(e))
    }

    /// Adds one failed attempt and the new error to a stored failure; false if it is gone.
    /// (Error text is free text: a NUL in it becomes U+FFFD.)
    pub async fn record_failed_retry(
        &mut self,
        id: i64,
        error_class: &str,
        error_message: &str,
        error_backtrace: &str,
    ) -> StoreResult<bool> {
        let update = diesel::update(fl::table.find(id)).set((
            fl::attempts.eq(fl::attempts + 1),
            fl::error_class.eq(storable_text(error_class)),
            fl::error_message.eq(storable_text(error_message)),
            fl::error_backtrace.eq(error_backtrace),
        ));
        let result = dispatch!(self, c => update.execute(&mut **c).await);
        result.map(|n| n > 0).map_err(|e| self.query_error(e))
    }

    /// The failure with this id.
    pub async fn get_failure(&mut self, id: i64) -> StoreResult<Option<Failure>> {
        let row = dispatch!(self, c => fl::table
            .find(id)
            .select(Failure::as_select())
            .first::<Failure>(&mut **c)
            .await
            .optional());
        row.map_err(|e| self.query_error(e))
    }

    /// Failures matching `query`, in the same order as events.
    pub async fn list_failures(&mut self, query: &ListQuery) -> StoreResult<Vec<Failure>> {
        let rows = list_rows!(self, fl, Failure, query);
        rows.map_err(|e| self.query_error(e))
    }

    /// Number of failures matching the filters of `query` (paging ignored).
    pub async fn count_failures(&mut self, query: &ListQuery) -> StoreResult<i64> {
        let count = match self {
            Conn::Postgres(c) => {
                filtered!(fl, diesel::pg::Pg, query)
                    .count()
                    .get_result::<i64>(&mut **c)
                    .await
            }
            Conn::Sqlite(c) => {
                filtered!(fl, diesel::sqlite::Sqlite, query)
                    .count()
                    .get_result::<i64>(&mut **c)
                    .await
            }
            Conn::Mysql(c) => {
                filtered!(fl, diesel::mysql::Mysql, query)
                    .count()
                    .get_result::<i64>(&mut **c)
                    .await
            }
        };
        count.map_err(|e| self.query_error(e))
    }

    /// Deletes at most `limit` rows of `table` created before `cutoff` (UTC), oldest first,
    /// autocommitted, and returns how many went. Retention calls it until it
    /// returns less than `limit`, so no statement holds its locks for long.
    pub async fn prune_batch(
        &mut self,
        table: PrunedTable,
        cutoff: chrono::NaiveDateTime,
        limit: i64,
    ) -> StoreResult<usize> {
        let deleted = match table {
            PrunedTable::Events => prune_batch!(self, ev, cutoff, limit),
            PrunedTable::Failures => prune_batch!(self, fl, cutoff, limit),
        };
        deleted.map_err(|e| self.query_error(e))
    }

    /// Rows of `table` created before `cutoff` (UTC): what a prune would delete.
    pub async fn count_older(
        &mut self,
        table: PrunedTable,
        cutoff: chrono::NaiveDateTime,
    ) -> StoreResult<i64> {
        let counted = match table {
            PrunedTable::Events => {
                let query = ev::table.filter(ev::created_at.lt(cutoff)).count();
                dispatch!(self, c => query.get_result::<i64>(&mut **c).await)
            }
            PrunedTable::Failures => {
                let query = fl::table.filter(fl::created_at.lt(cutoff)).count();
                dispatch!(self, c => query.get_result::<i64>(&mut **c).await)
            }
        };
        counted.map_err(|e| self.query_error(e))
    }

    /// Deletes the failure with this id; false if there was none.
    pub async fn delete_failure(&mut self, id: i64) -> StoreResult<bool> {
        let query = diesel::delete(fl::table.find(id));
        let deleted = dispatch!(self, c => query.execute(&mut **c).await);
        deleted.map(|n| n > 0).map_err(|e| self.query_error(e))
    }
}
