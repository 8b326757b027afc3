use checkpoint::prelude::*;

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: String,
}

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(&self, order: OrderPlaced) -> Outcome {
        Outcome::ack(order.id, Utc::now())
    }

    #[entity_id]
    fn entity_id(order: &serde_json::Value) -> Option<String> {
        order["id"].as_str().map(str::to_owned)
    }
}

fn main() {}
