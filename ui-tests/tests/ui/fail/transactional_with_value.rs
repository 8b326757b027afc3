use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler(transactional = true)]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }
}

fn main() {}
