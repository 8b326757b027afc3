//! The multi-row event inserts whose SQL differs per backend: PostgreSQL's `unnest` of bound
//! arrays and SQLite's bound `VALUES` list, both reporting the keys they stored.

use super::models::NewEvent;

/// A row of the PostgreSQL existence probe.
#[derive(diesel::QueryableByName)]
pub(super) struct StoredChecksum {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) checksum: String,
}

/// A dedup key returned by the PostgreSQL insert.
#[derive(diesel::QueryableByName)]
pub(super) struct StoredKey {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) topic: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) group_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(super) checksum: String,
}

/// PostgreSQL's multi-row insert reporting the keys it stored: one array per column, unnested
/// server-side. Twelve bound arrays instead of twelve parameters per row keep the statement
/// text the same for every batch (prepared once per connection) and its planning cheap.
pub(super) fn postgres_unnest_insert<'a>(
    rows: &'a [NewEvent<'a>],
) -> diesel::query_builder::BoxedSqlQuery<'a, diesel::pg::Pg, diesel::query_builder::SqlQuery> {
    use diesel::sql_types::{Array, BigInt, Binary, Integer, Nullable, Text, Timestamp};
    fn column<'a, T>(rows: &'a [NewEvent<'a>], f: impl Fn(&'a NewEvent<'a>) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    diesel::sql_query(
        "INSERT INTO checkpoint_events (topic, group_id, \"partition\", \"offset\", \"key\", \
         checksum, entity_id, event_time, event_type, event_version, payload, created_at) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int8[], $5::bytea[], \
         $6::text[], $7::text[], $8::timestamp[], $9::text[], $10::text[], $11::bytea[], \
         $12::timestamp[]) ON CONFLICT DO NOTHING",
    )
    .sql(RETURN_KEYS)
    .into_boxed::<diesel::pg::Pg>()
    .bind::<Array<Text>, _>(column(rows, |r| r.topic))
    .bind::<Array<Text>, _>(column(rows, |r| r.group_id))
    .bind::<Array<Integer>, _>(column(rows, |r| r.partition))
    .bind::<Array<BigInt>, _>(column(rows, |r| r.offset))
    .bind::<Array<Nullable<Binary>>, _>(column(rows, |r| r.key))
    .bind::<Array<Text>, _>(column(rows, |r| r.checksum))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.entity_id))
    .bind::<Array<Nullable<Timestamp>>, _>(column(rows, |r| r.event_time))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.event_type))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.event_version))
    .bind::<Array<Binary>, _>(column(rows, |r| r.payload))
    .bind::<Array<Nullable<Timestamp>>, _>(column(rows, |r| r.created_at))
}

/// The `RETURNING` clause that reports the dedup key of every row an insert stored.
pub(super) const RETURN_KEYS: &str = " RETURNING topic, group_id, checksum";

/// `INSERT INTO checkpoint_events (…) VALUES (…), (…) ON CONFLICT DO NOTHING` for SQLite, with
/// every value bound, followed by `returning` (empty, or [`RETURN_KEYS`]). One statement in
/// autocommit mode is atomic by itself; inside a transaction SQLite also journals every page it
/// touches, so that it can undo the one statement.
pub(super) fn sqlite_multi_insert<'a>(
    rows: &'a [NewEvent<'a>],
    returning: &str,
) -> diesel::query_builder::BoxedSqlQuery<'a, diesel::sqlite::Sqlite, diesel::query_builder::SqlQuery>
{
    use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text, Timestamp};
    let mut sql = String::from(
        "INSERT INTO checkpoint_events (topic, group_id, \"partition\", \"offset\", \"key\", \
         checksum, entity_id, event_time, event_type, event_version, payload, created_at) VALUES ",
    );
    for i in 0..rows.len() {
        sql.push_str(if i == 0 { "" } else { ", " });
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql.push_str(returning);
    let mut query = diesel::sql_query(sql).into_boxed::<diesel::sqlite::Sqlite>();
    for row in rows {
        query = query
            .bind::<Text, _>(row.topic)
            .bind::<Text, _>(row.group_id)
            .bind::<Integer, _>(row.partition)
            .bind::<BigInt, _>(row.offset)
            .bind::<Nullable<Binary>, _>(row.key)
            .bind::<Text, _>(row.checksum)
            .bind::<Nullable<Text>, _>(row.entity_id)
            .bind::<Nullable<Timestamp>, _>(row.event_time)
            .bind::<Nullable<Text>, _>(row.event_type)
            .bind::<Nullable<Text>, _>(row.event_version)
            .bind::<Binary, _>(row.payload)
            .bind::<Nullable<Timestamp>, _>(row.created_at);
    }
    query
}
