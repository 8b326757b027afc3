use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }

    fn consume(&self, order: Vec<u8>) -> Outcome {
        Outcome::ack(order.len().to_string(), Utc::now())
    }
}

fn main() {}
