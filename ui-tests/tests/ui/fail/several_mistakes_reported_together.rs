// Not one mistake per file on purpose: every mistake is reported in one compile.
use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler(max_retries = -3, nmae = "orders")]
impl Orders {
    fn handle(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }

    #[entity_id]
    fn entity_id() -> Option<String> {
        None
    }
}

fn main() {}
