//! The database's own limits, without Kafka: `db-ceiling` (500-row `INSERT … ON CONFLICT DO
//! NOTHING` statements, as the batch mode writes) and `copy-ceiling` (the fastest bulk load the
//! database offers: PostgreSQL's binary `COPY`, MySQL's `LOAD DATA LOCAL INFILE`, SQLite's
//! prepared inserts in one transaction). Both write the same rows into the same
//! `checkpoint_events` table with its indexes, and are verified as every mode is.

use chrono::{NaiveDateTime, Utc};
use indicatif::ProgressBar;

use super::stopwatch::{Span, Stopwatch};
use super::{BenchError, BenchOrder, Database, Mode, partition_count, payload};
use checkpoint::__private::{RawConnection, raw_connection};
use checkpoint::message::checksum;
use checkpoint::store::{Conn, NewEvent};

/// Rows per `INSERT` statement of `db-ceiling`, and per chunk generated for the others.
const CHUNK: usize = 500;

/// One generated event row, owning its text.
struct Row {
    partition: i32,
    offset: i64,
    key: String,
    checksum: String,
    body: String,
    order: BenchOrder,
}

impl Row {
    fn event<'a>(&'a self, topic: &'a str, group: &'a str, now: NaiveDateTime) -> NewEvent<'a> {
        NewEvent {
            topic,
            group_id: group,
            partition: self.partition,
            offset: self.offset,
            key: Some(self.key.as_bytes()),
            checksum: &self.checksum,
            entity_id: Some(&self.order.id),
            event_time: Some(self.order.placed_at.naive_utc()),
            event_type: Some(&self.order.kind),
            event_version: None,
            payload: self.body.as_bytes(),
            created_at: Some(now),
        }
    }
}

/// What a ceiling mode writes, and where.
pub(super) struct Load<'a> {
    pub(super) db: &'a Database,
    pub(super) mode: Mode,
    pub(super) group: &'a str,
    pub(super) run_id: &'a str,
    pub(super) messages: usize,
    pub(super) partitions: i32,
    pub(super) bar: &'a ProgressBar,
}

impl Load<'_> {
    fn topic(&self) -> String {
        format!("checkpoint-bench-{}", self.run_id)
    }

    /// Rows `start..end` of the run: the messages the Kafka modes consume, spread over the
    /// partitions as they were produced.
    fn rows(&self, start: usize, end: usize) -> Result<Vec<Row>, BenchError> {
        let partitions = partition_count(self.partitions);
        (start..end)
            .map(|i| {
                let body = payload(self.run_id, i);
                let order: BenchOrder =
                    serde_json::from_str(&body).map_err(|e| BenchError::Verification {
                        mode: self.mode,
                        database: self.db.label.clone(),
                        what: format!("payload is not an order: {e}"),
                    })?;
                Ok(Row {
                    partition: i32::try_from(i % partitions).unwrap_or(0),
                    offset: i64::try_from(i / partitions).unwrap_or(0),
                    key: format!("order-{i}"),
                    checksum: checksum(body.as_bytes()),
                    body,
                    order,
                })
            })
            .collect()
    }

    fn failed(&self, what: impl std::fmt::Display) -> BenchError {
        BenchError::Verification {
            mode: self.mode,
            database: self.db.label.clone(),
            what: what.to_string(),
        }
    }

    /// `db-ceiling`: 500-row `INSERT … ON CONFLICT DO NOTHING` statements, each autocommitted.
    pub(super) async fn db_ceiling(&self) -> Result<Span, BenchError> {
        let topic = self.topic();
        let mut pooled = self.db.store.conn().await.map_err(|e| self.db.error(e))?;
        let mut conn = pooled.conn();
        let stopwatch = Stopwatch::start();
        let now = Utc::now().naive_utc();
        for start in (0..self.messages).step_by(CHUNK) {
            let end = (start + CHUNK).min(self.messages);
            let rows = self.rows(start, end)?;
            let events: Vec<NewEvent<'_>> = rows
                .iter()
                .map(|row| row.event(&topic, self.group, now))
                .collect();
            conn.insert_events_unreported(&events)
                .await
                .map_err(|e| self.db.error(e))?;
            self.bar
                .set_position(u64::try_from(end).unwrap_or(u64::MAX));
        }
        Ok(stopwatch.stop())
    }

    /// `copy-ceiling`: the database's fastest bulk load of the same rows.
    pub(super) async fn copy_ceiling(&self) -> Result<Span, BenchError> {
        let raw = raw_connection(self.db.store.url())
            .await
            .map_err(|e| self.failed(format!("connect: {e}")))?;
        match raw {
            RawConnection::Postgres(client) => self.copy_postgres(&client).await,
            RawConnection::Mysql(conn) => self.load_data_mysql(conn).await,
            RawConnection::Sqlite => self.prepared_sqlite().await,
        }
    }

    /// PostgreSQL: one binary `COPY … FROM STDIN` of every row.
    async fn copy_postgres(&self, client: &tokio_postgres::Client) -> Result<Span, BenchError> {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        use tokio_postgres::types::{ToSql, Type};
        let topic = self.topic();
        let stopwatch = Stopwatch::start();
        let now = Utc::now().naive_utc();
        let sink = client
            .copy_in(
                "COPY checkpoint_events (topic, group_id, \"partition\", \"offset\", \"key\", \
                 checksum, entity_id, event_time, event_type, event_version, payload, \
                 created_at) FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(|e| self.failed(e))?;
        let types = [
            Type::VARCHAR,
            Type::VARCHAR,
            Type::INT4,
            Type::INT8,
            Type::BYTEA,
            Type::VARCHAR,
            Type::VARCHAR,
            Type::TIMESTAMP,
            Type::VARCHAR,
            Type::VARCHAR,
            Type::BYTEA,
            Type::TIMESTAMP,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        let none: Option<&str> = None;
        for start in (0..self.messages).step_by(CHUNK) {
            let end = (start + CHUNK).min(self.messages);
            for row in self.rows(start, end)? {
                let event_time = row.order.placed_at.naive_utc();
                let values: [&(dyn ToSql + Sync); 12] = [
                    &topic,
                    &self.group,
                    &row.partition,
                    &row.offset,
                    &row.key.as_bytes(),
                    &row.checksum,
                    &row.order.id,
                    &event_time,
                    &row.order.kind,
                    &none,
                    &row.body.as_bytes(),
                    &now,
                ];
                writer
                    .as_mut()
                    .write(&values)
                    .await
                    .map_err(|e| self.failed(e))?;
            }
            self.bar
                .set_position(u64::try_from(end).unwrap_or(u64::MAX));
        }
        writer.finish().await.map_err(|e| self.failed(e))?;
        Ok(stopwatch.stop())
    }

    /// MySQL/MariaDB: one `LOAD DATA LOCAL INFILE` of every row, streamed from memory.
    async fn load_data_mysql(&self, mut conn: mysql_async::Conn) -> Result<Span, BenchError> {
        use futures_util::StreamExt as _;
        use mysql_async::prelude::Queryable as _;
        let topic = self.topic();
        let stopwatch = Stopwatch::start();
        let now = Utc::now().naive_utc();
        let mut chunks = Vec::new();
        for start in (0..self.messages).step_by(CHUNK) {
            let end = (start + CHUNK).min(self.messages);
            let mut text = Vec::with_capacity(CHUNK * 512);
            for row in self.rows(start, end)? {
                let (partition, offset) = (row.partition.to_string(), row.offset.to_string());
                let (event_time, created_at) =
                    (datetime(row.order.placed_at.naive_utc()), datetime(now));
                let fields: [Option<&[u8]>; 12] = [
                    Some(topic.as_bytes()),
                    Some(self.group.as_bytes()),
                    Some(partition.as_bytes()),
                    Some(offset.as_bytes()),
                    Some(row.key.as_bytes()),
                    Some(row.checksum.as_bytes()),
                    Some(row.order.id.as_bytes()),
                    Some(event_time.as_bytes()),
                    Some(row.order.kind.as_bytes()),
                    None,
                    Some(row.body.as_bytes()),
                    Some(created_at.as_bytes()),
                ];
                infile_line(&mut text, &fields);
            }
            chunks.push(Ok(bytes::Bytes::from(text)));
        }
        conn.set_infile_handler(async move { Ok(futures_util::stream::iter(chunks).boxed()) });
        conn.query_drop(
            "LOAD DATA LOCAL INFILE 'checkpoint-bench' INTO TABLE checkpoint_events \
             CHARACTER SET binary FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' \
             LINES TERMINATED BY '\\n' (topic, group_id, `partition`, `offset`, `key`, \
             checksum, entity_id, event_time, event_type, event_version, payload, created_at)",
        )
        .await
        .map_err(|e| self.failed(e))?;
        let span = stopwatch.stop();
        self.bar
            .set_position(u64::try_from(self.messages).unwrap_or(u64::MAX));
        let _ = conn.disconnect().await;
        Ok(span)
    }

    /// SQLite: every row through one prepared `INSERT`, in one transaction.
    async fn prepared_sqlite(&self) -> Result<Span, BenchError> {
        use diesel::RunQueryDsl as _;
        use diesel::connection::Connection as _;
        let mut pooled = self.db.store.conn().await.map_err(|e| self.db.error(e))?;
        let Conn::Sqlite(conn) = pooled.conn() else {
            return Err(self.failed("not a SQLite store"));
        };
        let topic = self.topic();
        let stopwatch = Stopwatch::start();
        let now = Utc::now().naive_utc();
        let mut rows = Vec::with_capacity(self.messages);
        for start in (0..self.messages).step_by(CHUNK) {
            rows.extend(self.rows(start, (start + CHUNK).min(self.messages))?);
        }
        let group = self.group.to_owned();
        conn.spawn_blocking(move |c| {
            c.transaction(|c| {
                for row in &rows {
                    diesel::insert_into(checkpoint::store::schema::checkpoint_events::table)
                        .values(row.event(&topic, &group, now))
                        .execute(c)?;
                }
                diesel::QueryResult::Ok(())
            })
        })
        .await
        .map_err(|e| self.failed(e))?;
        self.bar
            .set_position(u64::try_from(self.messages).unwrap_or(u64::MAX));
        Ok(stopwatch.stop())
    }
}

/// A timestamp as MySQL reads it in `LOAD DATA`.
fn datetime(time: NaiveDateTime) -> String {
    time.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// One `LOAD DATA` line: fields separated by tabs, `\N` for NULL, and the escape character
/// `\` before a tab, newline, NUL or `\` in a value.
fn infile_line(out: &mut Vec<u8>, fields: &[Option<&[u8]>]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match field {
            None => out.extend_from_slice(b"\\N"),
            Some(bytes) => {
                for &byte in *bytes {
                    match byte {
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        0 => out.extend_from_slice(b"\\0"),
                        other => out.push(other),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infile_lines_escape_what_load_data_reads_specially() {
        let mut out = Vec::new();
        infile_line(&mut out, &[Some(b"a\tb\\c\nd\0"), None, Some(b"")]);
        assert_eq!(out, b"a\\tb\\\\c\\nd\\0\t\\N\t\n");
    }
}
