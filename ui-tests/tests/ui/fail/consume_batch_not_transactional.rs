use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }

    fn consume_batch(&self, orders: Vec<String>) -> Vec<Outcome> {
        orders.into_iter().map(|o| Outcome::ack(o, Utc::now())).collect()
    }
}

fn main() {}
