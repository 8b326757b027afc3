use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler(retries = 3)]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }
}

fn main() {}
