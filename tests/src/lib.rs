//! End-to-end suites of checkpoint; the tests live in `tests/`. This library holds what the
//! suites share with the helper processes in `src/bin/` (a mock Kafka broker and a consumer
//! that a test can kill with SIGKILL).

use checkpoint::prelude::*;

diesel::table! {
    /// One row per side effect a test handler applied (no key in SQL: duplicates would show).
    side_effects (token) {
        /// What was applied, e.g. an order id.
        token -> Text,
    }
}

/// A JSON order `{"id": …}`.
#[derive(Debug, serde::Deserialize)]
pub struct Order {
    /// Order id.
    pub id: String,
}

/// Writes one side effect per order through the checkpoint transaction, then acks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sink;

#[checkpoint_handler(transactional, name = "sink")]
impl Sink {
    async fn consume(&self, order: Order, ctx: &mut Context<'_>) -> Result<Outcome, HandlerError> {
        use diesel::ExpressionMethods;
        ctx.tx()?
            .execute(
                diesel::insert_into(side_effects::table)
                    .values(side_effects::token.eq(order.id.clone())),
            )
            .await?;
        Ok(ctx.ack(order.id, Utc::now()))
    }
}
