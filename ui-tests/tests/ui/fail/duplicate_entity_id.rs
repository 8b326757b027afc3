use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }

    #[entity_id]
    fn order_id(order: &str) -> Option<String> {
        Some(order.to_owned())
    }

    #[entity_id]
    fn customer_id(order: &str) -> Option<String> {
        order.split(':').next().map(str::to_owned)
    }
}

fn main() {}
