use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }

    #[entity_id]
    #[dedup_key]
    fn order_id(order: &str) -> Option<String> {
        Some(order.to_owned())
    }
}

fn main() {}
