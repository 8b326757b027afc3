use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler(max_retries = -1)]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }
}

fn main() {}
