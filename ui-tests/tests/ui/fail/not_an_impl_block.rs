use checkpoint::prelude::*;

#[checkpoint_handler]
fn consume(order: String) -> Outcome {
    Outcome::ack(order, Utc::now())
}

fn main() {}
