use checkpoint::prelude::*;

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: String,
}

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(&self, order: &OrderPlaced) -> Outcome {
        Outcome::ack(order.id.clone(), Utc::now())
    }
}

fn main() {}
