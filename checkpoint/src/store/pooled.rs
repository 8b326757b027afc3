//! The queries for callers that hold no connection: each takes one pooled connection for its
//! call. The queries themselves are written once, on [`Conn`](super::Conn).

use std::collections::HashSet;

use super::models::{DedupKey, Event, Failure, ListQuery, NewEvent, NewFailure, PrunedTable};
use super::queries::INSERT_CHUNK;
use super::{Store, StoreResult};

/// One pooled connection per call: the same queries, for callers that hold no connection.
impl Store {
    /// See [`Conn::event_exists`].
    pub async fn event_exists(&self, key: DedupKey<'_>) -> StoreResult<bool> {
        self.conn().await?.conn().event_exists(key).await
    }

    /// See [`Conn::existing_checksums`].
    pub async fn existing_checksums(
        &self,
        topic: &str,
        group_id: &str,
        checksums: &[&str],
    ) -> StoreResult<HashSet<String>> {
        self.conn()
            .await?
            .conn()
            .existing_checksums(topic, group_id, checksums)
            .await
    }

    /// See [`Conn::insert_event`].
    pub async fn insert_event(&self, row: &NewEvent<'_>) -> StoreResult<bool> {
        self.conn().await?.conn().insert_event(row).await
    }

    /// See [`Conn::insert_events`]; runs in one transaction. Up to 1,000 rows are one chunk,
    /// which is atomic by itself: one autocommitted statement on PostgreSQL and SQLite (inside a
    /// transaction SQLite would copy every page the insert touches into its statement journal),
    /// its own transaction on MySQL.
    pub async fn insert_events(&self, rows: &[NewEvent<'_>]) -> StoreResult<Vec<bool>> {
        let mut pooled = self.conn().await?;
        let mut conn = pooled.conn();
        if rows.len() <= INSERT_CHUNK {
            return conn.insert_events(rows).await;
        }
        conn.begin().await?;
        match conn.insert_events(rows).await {
            Ok(flags) => {
                conn.commit().await?;
                Ok(flags)
            }
            Err(e) => {
                // The original error matters more than a failed rollback.
                let _ = conn.rollback().await;
                Err(e)
            }
        }
    }

    /// See [`Conn::get_event`].
    pub async fn get_event(&self, id: i64) -> StoreResult<Option<Event>> {
        self.conn().await?.conn().get_event(id).await
    }

    /// See [`Conn::list_events`].
    pub async fn list_events(&self, query: &ListQuery) -> StoreResult<Vec<Event>> {
        self.conn().await?.conn().list_events(query).await
    }

    /// See [`Conn::record_failure`].
    pub async fn record_failure(&self, row: &NewFailure<'_>) -> StoreResult<i64> {
        self.conn().await?.conn().record_failure(row).await
    }

    /// See [`Conn::record_failed_retry`].
    pub async fn record_failed_retry(
        &self,
        id: i64,
        error_class: &str,
        error_message: &str,
        error_backtrace: &str,
    ) -> StoreResult<bool> {
        self.conn()
            .await?
            .conn()
            .record_failed_retry(id, error_class, error_message, error_backtrace)
            .await
    }

    /// See [`Conn::get_failure`].
    pub async fn get_failure(&self, id: i64) -> StoreResult<Option<Failure>> {
        self.conn().await?.conn().get_failure(id).await
    }

    /// See [`Conn::list_failures`].
    pub async fn list_failures(&self, query: &ListQuery) -> StoreResult<Vec<Failure>> {
        self.conn().await?.conn().list_failures(query).await
    }

    /// See [`Conn::count_failures`].
    pub async fn count_failures(&self, query: &ListQuery) -> StoreResult<i64> {
        self.conn().await?.conn().count_failures(query).await
    }

    /// See [`Conn::delete_failure`].
    pub async fn delete_failure(&self, id: i64) -> StoreResult<bool> {
        self.conn().await?.conn().delete_failure(id).await
    }

    /// See [`Conn::prune_batch`].
    pub async fn prune_batch(
        &self,
        table: PrunedTable,
        cutoff: chrono::NaiveDateTime,
        limit: i64,
    ) -> StoreResult<usize> {
        self.conn()
            .await?
            .conn()
            .prune_batch(table, cutoff, limit)
            .await
    }

    /// See [`Conn::count_older`].
    pub async fn count_older(
        &self,
        table: PrunedTable,
        cutoff: chrono::NaiveDateTime,
    ) -> StoreResult<i64> {
        self.conn().await?.conn().count_older(table, cutoff).await
    }
}
