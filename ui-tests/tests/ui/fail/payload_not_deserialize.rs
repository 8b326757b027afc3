use checkpoint::prelude::*;

struct OrderPlaced {
    id: String,
}

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(&self, order: OrderPlaced) -> Outcome {
        Outcome::ack(order.id, Utc::now())
    }
}

fn main() {}
