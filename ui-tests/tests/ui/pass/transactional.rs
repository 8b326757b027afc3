// `transactional` handlers write through the checkpoint transaction with `ctx.tx()?`.
use checkpoint::prelude::*;

struct Shipments;

#[checkpoint_handler(name = "shipments", transactional, max_retries = 0)]
impl Shipments {
    async fn consume(
        &self,
        order_id: String,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        ctx.tx()?.execute(diesel::sql_query("SELECT 1")).await?;
        Ok(ctx.ack(order_id, Utc::now()))
    }
}

fn main() {
    assert_eq!(Shipments.name(), "shipments");
    assert!(Shipments.transactional());
    assert_eq!(Shipments.max_retries(), Some(0));
    // Outside a transaction (the engine always opens one for a transactional handler), `tx()`
    // says so.
    let error = checkpoint_ui_tests::consume(&Shipments, "o-1").unwrap_err();
    assert!(error.message().contains("not transactional"), "{error}");
}
