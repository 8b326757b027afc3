//! The statements of a transactional batch beyond the claim itself: a savepoint around each
//! message, and completing the acked claims all at once when the batch ends. Each costs one
//! round trip, so a message whose handler writes one row costs two round trips in all (its
//! savepoint and its handler's statement) instead of four.

use std::collections::BTreeMap;

use diesel::prelude::{ExpressionMethods, QueryDsl};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

use super::models::NewEvent;
use super::queries::INSERT_CHUNK;
use super::schema::checkpoint_events as ev;
use super::validate::validate_event;
use super::{Conn, StoreError, StoreResult, dispatch};

/// The savepoint around the message in hand, set, released and rolled back to by name. It is
/// not one of diesel's (diesel names its own by depth): a handler's own `transaction` nests
/// inside it as usual, and rolling back to it undoes the handler's writes whatever the handler
/// left open.
const SET: &str = "SAVEPOINT checkpoint_message";
/// The previous message's savepoint released and the next one set, in one round trip (MySQL
/// would replace a savepoint of the same name by itself; the release is harmless there).
const RELEASE_AND_SET: &str = "RELEASE SAVEPOINT checkpoint_message; SAVEPOINT checkpoint_message";
/// Back to the message's savepoint, which stays set.
const UNDO: &str = "ROLLBACK TO SAVEPOINT checkpoint_message";

impl Conn<'_> {
    /// Sets the savepoint of the next message of a transactional batch. Unless it is the batch's
    /// first, the previous message's savepoint is released in the same round trip, keeping what
    /// that message wrote.
    pub(crate) async fn mark_message(&mut self, first: bool) -> StoreResult<()> {
        let sql = if first { SET } else { RELEASE_AND_SET };
        let result = dispatch!(self, c => c.batch_execute(sql).await);
        result.map_err(|e| self.query_error(e))
    }

    /// Undoes everything since [`Conn::mark_message`]: the handler's writes of the message in
    /// hand. The savepoint stays set; what is written next (a failure row, the claim's
    /// deletion) is kept.
    pub(crate) async fn undo_message(&mut self) -> StoreResult<()> {
        let result = dispatch!(self, c => c.batch_execute(UNDO).await);
        result.map_err(|e| self.query_error(e))
    }

    /// Completes the claims of a transactional batch: `rows` are the acked messages' events,
    /// each claimed earlier in this transaction without its acknowledgement fields. The
    /// claimed rows are deleted and `rows` inserted in their place, two statements per 1,000
    /// rows instead of an update per row. The transaction holds every key's lock throughout, so
    /// no one else can store a key in between; a claim that is not there to complete is an
    /// error ([`StoreError::ClaimsLost`]), and the caller rolls the batch back.
    pub(crate) async fn complete_events(&mut self, rows: &[NewEvent<'_>]) -> StoreResult<()> {
        for row in rows {
            validate_event(row)?;
        }
        let mut keys: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for row in rows {
            keys.entry((row.topic, row.group_id))
                .or_default()
                .push(row.checksum);
        }
        let mut found = 0;
        for ((topic, group_id), checksums) in keys {
            for chunk in checksums.chunks(INSERT_CHUNK) {
                found += self.delete_checksums(topic, group_id, chunk).await?;
            }
        }
        let completed = if found == rows.len() {
            let inserted = self.insert_events(rows).await?;
            inserted.into_iter().filter(|inserted| *inserted).count()
        } else {
            found
        };
        if completed == rows.len() {
            return Ok(());
        }
        Err(StoreError::ClaimsLost {
            backend: self.backend(),
            claimed: rows.len(),
            completed,
        })
    }

    /// Deletes the events of `topic` and `group_id` with these checksums; how many it deleted.
    async fn delete_checksums(
        &mut self,
        topic: &str,
        group_id: &str,
        checksums: &[&str],
    ) -> StoreResult<usize> {
        let deleted = if let Conn::Postgres(c) = self {
            // One index probe per key, as in the duplicate check: `checksum = ANY($1)` may be
            // planned as a filter over every row of the group while statistics are stale.
            diesel::sql_query(
                "DELETE FROM checkpoint_events WHERE id IN (SELECT e.id FROM \
                 unnest($1::text[]) AS k(c) CROSS JOIN LATERAL (SELECT id FROM \
                 checkpoint_events WHERE topic = $2 AND group_id = $3 AND checksum = k.c) AS e)",
            )
            .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(checksums)
            .bind::<diesel::sql_types::Text, _>(topic)
            .bind::<diesel::sql_types::Text, _>(group_id)
            .execute(&mut **c)
            .await
        } else {
            let query = diesel::delete(
                ev::table
                    .filter(ev::topic.eq(topic))
                    .filter(ev::group_id.eq(group_id))
                    .filter(ev::checksum.eq_any(checksums)),
            );
            dispatch!(self, c => query.execute(&mut **c).await)
        };
        deleted.map_err(|e| self.query_error(e))
    }
}
