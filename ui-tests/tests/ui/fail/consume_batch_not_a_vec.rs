use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler(transactional)]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }

    fn consume_batch(&self, orders: &[String], _ctx: &mut BatchContext<'_>) -> Vec<Outcome> {
        orders.iter().map(|o| Outcome::ack(o.clone(), Utc::now())).collect()
    }
}

fn main() {}
