//! Durable attempt counts and partition ownership: how many deliveries of a message did not
//! settle (so a message that crashes the process is bounded by `max_retries` across restarts),
//! and which process owns a partition's stream (so a restart knows the previous owner died
//! mid-message).

use diesel::prelude::{ExpressionMethods, OptionalExtension, QueryDsl};
use diesel_async::RunQueryDsl;

use super::models::DedupKey;
use super::queries::insert_ignoring;
use super::schema::{checkpoint_attempts as at, checkpoint_owners as ow};
use super::{Conn, Store, StoreResult, dispatch};

impl Conn<'_> {
    /// Counts one more delivery of `key` that has not settled yet, durably (autocommitted), and
    /// returns how many are counted now: one more than before (plus `uncounted`, deliveries
    /// known to have happened without being counted, when `key` has no count yet), and at
    /// least `at_least` (the attempts this process made itself). `delivery` names this
    /// delivery: counting the same one again changes nothing, so a retried statement or a
    /// lost reply cannot count it twice. A partition has one owner at a time, so the
    /// read-modify-write needs no lock.
    pub async fn count_attempt(
        &mut self,
        key: DedupKey<'_>,
        delivery: &str,
        uncounted: u32,
        at_least: u32,
    ) -> StoreResult<u32> {
        let this = at::table
            .filter(at::topic.eq(key.topic))
            .filter(at::group_id.eq(key.group_id))
            .filter(at::checksum.eq(key.checksum));
        let read = dispatch!(self, c => this
            .select((at::attempts, at::last_delivery))
            .first::<(i32, String)>(&mut **c)
            .await
            .optional());
        let before = read.map_err(|e| self.query_error(e))?;
        let counted = match &before {
            Some((n, last)) if last == delivery => return Ok(u32::try_from(*n).unwrap_or(0)),
            Some((n, _)) => u32::try_from(*n).unwrap_or(0),
            None => uncounted,
        }
        .saturating_add(1)
        .max(at_least);
        let stored = i32::try_from(counted).unwrap_or(i32::MAX);
        let now = chrono::Utc::now().naive_utc();
        let written = if before.is_some() {
            let bump = diesel::update(this).set((
                at::attempts.eq(stored),
                at::last_delivery.eq(delivery),
                at::updated_at.eq(now),
            ));
            dispatch!(self, c => bump.execute(&mut **c).await)
        } else {
            let first = (
                at::topic.eq(key.topic),
                at::group_id.eq(key.group_id),
                at::checksum.eq(key.checksum),
                at::attempts.eq(stored),
                at::last_delivery.eq(delivery),
                at::updated_at.eq(now),
            );
            insert_ignoring!(self, at::table, first)
        };
        written.map_err(|e| self.query_error(e))?;
        Ok(counted)
    }

    /// Records `owner` as the owner of a partition's stream; true when a previous owner's row
    /// was still there (it did not let the partition go cleanly). Two claimants racing both
    /// succeed; the later one's row stays.
    pub async fn claim_partition(
        &mut self,
        topic: &str,
        group_id: &str,
        partition: i32,
        owner: &str,
    ) -> StoreResult<bool> {
        let now = chrono::Utc::now().naive_utc();
        let row = (
            ow::topic.eq(topic),
            ow::group_id.eq(group_id),
            ow::partition.eq(partition),
            ow::owner.eq(owner),
            ow::since.eq(now),
        );
        let inserted = insert_ignoring!(self, ow::table, row);
        if inserted.map_err(|e| self.query_error(e))? > 0 {
            return Ok(false);
        }
        let this = ow::table
            .filter(ow::topic.eq(topic))
            .filter(ow::group_id.eq(group_id))
            .filter(ow::partition.eq(partition));
        let taken = diesel::update(this).set((ow::owner.eq(owner), ow::since.eq(now)));
        let updated = dispatch!(self, c => taken.execute(&mut **c).await);
        updated.map(|_| true).map_err(|e| self.query_error(e))
    }

    /// Deletes `owner`'s row of a partition (it lets the partition go cleanly); a row another
    /// owner wrote since is left alone.
    pub async fn release_partition(
        &mut self,
        topic: &str,
        group_id: &str,
        partition: i32,
        owner: &str,
    ) -> StoreResult<()> {
        let query = diesel::delete(
            ow::table
                .filter(ow::topic.eq(topic))
                .filter(ow::group_id.eq(group_id))
                .filter(ow::partition.eq(partition))
                .filter(ow::owner.eq(owner)),
        );
        let result = dispatch!(self, c => query.execute(&mut **c).await);
        result.map(drop).map_err(|e| self.query_error(e))
    }

    /// Forgets the counted deliveries of `key` (it settled).
    pub async fn clear_attempts(&mut self, key: DedupKey<'_>) -> StoreResult<()> {
        let query = diesel::delete(
            at::table
                .filter(at::topic.eq(key.topic))
                .filter(at::group_id.eq(key.group_id))
                .filter(at::checksum.eq(key.checksum)),
        );
        let result = dispatch!(self, c => query.execute(&mut **c).await);
        result.map(drop).map_err(|e| self.query_error(e))
    }
}

/// One pooled connection per call.
impl Store {
    /// See [`Conn::count_attempt`].
    pub async fn count_attempt(
        &self,
        key: DedupKey<'_>,
        delivery: &str,
        uncounted: u32,
        at_least: u32,
    ) -> StoreResult<u32> {
        self.conn()
            .await?
            .conn()
            .count_attempt(key, delivery, uncounted, at_least)
            .await
    }

    /// See [`Conn::claim_partition`].
    pub async fn claim_partition(
        &self,
        topic: &str,
        group_id: &str,
        partition: i32,
        owner: &str,
    ) -> StoreResult<bool> {
        self.conn()
            .await?
            .conn()
            .claim_partition(topic, group_id, partition, owner)
            .await
    }

    /// See [`Conn::release_partition`].
    pub async fn release_partition(
        &self,
        topic: &str,
        group_id: &str,
        partition: i32,
        owner: &str,
    ) -> StoreResult<()> {
        self.conn()
            .await?
            .conn()
            .release_partition(topic, group_id, partition, owner)
            .await
    }

    /// See [`Conn::clear_attempts`].
    pub async fn clear_attempts(&self, key: DedupKey<'_>) -> StoreResult<()> {
        self.conn().await?.conn().clear_attempts(key).await
    }
}
