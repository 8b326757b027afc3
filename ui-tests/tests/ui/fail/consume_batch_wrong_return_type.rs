use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler(transactional)]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }

    fn consume_batch(&self, orders: Vec<String>) -> Outcome {
        Outcome::ack(orders.concat(), Utc::now())
    }
}

fn main() {}
