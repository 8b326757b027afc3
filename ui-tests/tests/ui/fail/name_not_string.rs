use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler(name = orders)]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }
}

fn main() {}
