// A `transactional` handler may add `consume_batch`: the new messages of a batch in one call,
// decoded like `consume`'s payload, with the batch's transaction. Sync fns and raw payloads
// work too, and `ctx` is optional.
use checkpoint::prelude::*;

#[derive(serde::Deserialize)]
struct Order {
    id: String,
}

struct Orders;

#[checkpoint_handler(transactional)]
impl Orders {
    async fn consume(&self, order: Order) -> Outcome {
        Outcome::ack(order.id, Utc::now())
    }

    async fn consume_batch(
        &self,
        orders: Vec<Order>,
        ctx: &mut BatchContext<'_>,
    ) -> Result<Vec<Outcome>, HandlerError> {
        ctx.tx().execute(diesel::sql_query("SELECT 1")).await?;
        Ok(orders
            .into_iter()
            .map(|order| Outcome::ack(order.id, Utc::now()))
            .collect())
    }
}

struct Tokens;

#[checkpoint_handler(transactional)]
impl Tokens {
    fn consume(&self, token: &str) -> Outcome {
        Outcome::ack(token, Utc::now())
    }

    fn consume_batch(&self, tokens: Vec<&str>) -> Vec<Outcome> {
        tokens
            .into_iter()
            .map(|token| Outcome::ack(token, Utc::now()))
            .collect()
    }
}

fn main() {
    assert!(Orders.transactional());
    assert!(Tokens.transactional());
    let outcome = checkpoint_ui_tests::consume(&Orders, r#"{"id":"o-1"}"#).expect("acked");
    assert!(matches!(outcome, Outcome::Ack(_)));
}
