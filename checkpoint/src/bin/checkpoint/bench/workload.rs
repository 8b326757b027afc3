//! What every mode consumes: the benchmark order, its payload, and the two handlers (one that
//! acknowledges, one that also writes a row of its own in the checkpoint transaction).

#[allow(clippy::wildcard_imports)]
use super::*;

/// The order every benchmark message carries (about 200 bytes of JSON).
#[derive(Debug, serde::Deserialize)]
pub(super) struct BenchOrder {
    pub(super) id: String,
    pub(super) placed_at: DateTime<Utc>,
    pub(super) kind: String,
}

/// The payload of message `i` of run `run`.
pub(super) fn payload(run: &str, i: usize) -> String {
    let placed = DateTime::<Utc>::from_timestamp(1_790_000_000 + (i as i64 % 86_400), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"id":"{run}-{i:08}","customer":"customer-{:05}","placed_at":"{placed}","kind":"order.placed","amount_cents":{},"currency":"EUR","items":[{{"sku":"sku-{:04}","qty":{}}}],"channel":"web"}}"#,
        i % 50_021,
        1_000 + i % 9_000,
        i % 7_919,
        1 + i % 5,
    )
}

/// The per-message and batch handler: decodes the order and acknowledges it.
pub(super) struct BenchOrders;

#[checkpoint::checkpoint_handler(name = "bench-orders")]
impl BenchOrders {
    pub(super) async fn consume(
        &self,
        order: BenchOrder,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        Ok(ctx
            .ack(order.id, order.placed_at)
            .with_event_type(order.kind))
    }
}

diesel::table! {
    /// The transactional handler's own table: one row per applied order.
    checkpoint_bench_effects (id) {
        /// Row id.
        id -> BigInt,
        /// Consumer group of the mode that wrote it.
        group_id -> Text,
        /// The order applied.
        order_id -> Text,
    }
}

/// The transactional handler: writes one row through the checkpoint transaction, then acks.
pub(super) struct BenchEffects;

#[checkpoint::checkpoint_handler(transactional, name = "bench-effects")]
impl BenchEffects {
    pub(super) async fn consume(
        &self,
        order: BenchOrder,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let group = ctx.metadata().group_id.clone();
        ctx.tx()?
            .execute(
                diesel::insert_into(checkpoint_bench_effects::table).values((
                    checkpoint_bench_effects::group_id.eq(group),
                    checkpoint_bench_effects::order_id.eq(order.id.clone()),
                )),
            )
            .await?;
        Ok(ctx
            .ack(order.id, order.placed_at)
            .with_event_type(order.kind))
    }

    /// A batch's new orders in one multi-row insert (`transactional-batch`).
    pub(super) async fn consume_batch(
        &self,
        orders: Vec<BenchOrder>,
        ctx: &mut BatchContext<'_>,
    ) -> Result<Vec<Outcome>, HandlerError> {
        let Some(first) = ctx.deliveries().first() else {
            return Ok(Vec::new());
        };
        let group = first.metadata.group_id.clone();
        let rows: Vec<_> = orders
            .iter()
            .map(|order| {
                (
                    checkpoint_bench_effects::group_id.eq(group.clone()),
                    checkpoint_bench_effects::order_id.eq(order.id.clone()),
                )
            })
            .collect();
        ctx.tx()
            .execute_owned(diesel::insert_into(checkpoint_bench_effects::table).values(rows))
            .await?;
        Ok(orders
            .into_iter()
            .map(|order| Outcome::ack(order.id, order.placed_at).with_event_type(order.kind))
            .collect())
    }
}

pub(super) fn effects_ddl(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "CREATE TABLE IF NOT EXISTS checkpoint_bench_effects (id INTEGER PRIMARY KEY, \
             group_id TEXT NOT NULL, order_id TEXT NOT NULL)"
        }
        Backend::Postgres => {
            "CREATE TABLE IF NOT EXISTS checkpoint_bench_effects (id BIGSERIAL PRIMARY KEY, \
             group_id TEXT NOT NULL, order_id TEXT NOT NULL)"
        }
        // `Backend` is non-exhaustive: MySQL/MariaDB.
        _ => {
            "CREATE TABLE IF NOT EXISTS checkpoint_bench_effects (id BIGINT AUTO_INCREMENT \
             PRIMARY KEY, group_id VARCHAR(255) NOT NULL, order_id VARCHAR(255) NOT NULL)"
        }
    }
}
