use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }

    #[entity_id]
    fn entity_id(order: &str, metadata: &Metadata) -> Option<String> {
        Some(format!("{order}@{}", metadata.partition))
    }
}

fn main() {}
