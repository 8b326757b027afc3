use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }
}

fn main() {}
