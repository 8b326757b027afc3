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

/// Writes one side effect per order through the checkpoint transaction, then acks; in a
/// transactional batch, the new orders' side effects in one statement.
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

    /// A transactional batch's new orders: every side effect in one statement.
    async fn consume_batch(
        &self,
        orders: Vec<Order>,
        ctx: &mut BatchContext<'_>,
    ) -> Result<Vec<Outcome>, HandlerError> {
        use diesel::ExpressionMethods;
        let rows: Vec<_> = orders
            .iter()
            .map(|order| side_effects::token.eq(order.id.clone()))
            .collect();
        ctx.tx()
            .execute_owned(diesel::insert_into(side_effects::table).values(rows))
            .await?;
        let now = Utc::now();
        Ok(orders
            .into_iter()
            .map(|order| Outcome::ack(order.id, now))
            .collect())
    }
}

/// `H` without its `consume_batch`: a transactional batch of it goes one message at a time,
/// each in a savepoint, as a handler without that form does.
pub struct OneByOne<H>(pub H);

impl<H: Handler> Handler for OneByOne<H> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn max_retries(&self) -> Option<u32> {
        self.0.max_retries()
    }

    fn transactional(&self) -> bool {
        self.0.transactional()
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        ctx: &'a mut Context<'_>,
    ) -> checkpoint::handler::BoxFuture<'a, Result<Outcome, HandlerError>> {
        self.0.consume(message, ctx)
    }
}

/// A per-message (not transactional) handler whose side effect happens *outside* the
/// checkpoint transaction, as a call to another service would: it records the order in
/// `side_effects` on a connection of its own, announces `APPLIED <id>` on standard output,
/// then takes `delay`, then acks. An order whose id
/// is `hang_on` makes it announce `INSIDE <id>` on standard output and never return, so a
/// test can kill the process while it is inside `consume`.
pub struct Effects {
    /// Where side effects are written (its own pool, autocommitted).
    pub store: checkpoint::Store,
    /// Time each order takes after its side effect.
    pub delay: std::time::Duration,
    /// The order id that never returns.
    pub hang_on: Option<String>,
    /// `max_retries` of the handler.
    pub max_retries: Option<u32>,
}

impl Handler for Effects {
    fn name(&self) -> &str {
        "effects"
    }

    fn max_retries(&self) -> Option<u32> {
        self.max_retries
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        _ctx: &'a mut Context<'_>,
    ) -> checkpoint::handler::BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            let order: Order = checkpoint::handler::decode_json(&message.payload)
                .map_err(HandlerError::permanent)?;
            if self.hang_on.as_deref() == Some(order.id.as_str()) {
                announce(&format!("INSIDE {}", order.id)).map_err(HandlerError::new)?;
                std::future::pending::<()>().await;
            }
            {
                use diesel::ExpressionMethods;
                let mut pooled = self.store.conn().await.map_err(HandlerError::new)?;
                pooled
                    .conn()
                    .execute(
                        diesel::insert_into(side_effects::table)
                            .values(side_effects::token.eq(order.id.clone())),
                    )
                    .await?;
            }
            announce(&format!("APPLIED {}", order.id)).map_err(HandlerError::new)?;
            tokio::time::sleep(self.delay).await;
            Ok(Outcome::ack(order.id, Utc::now()))
        })
    }
}

/// Writes `line` to standard output at once (a test reads it from the process).
fn announce(line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}
