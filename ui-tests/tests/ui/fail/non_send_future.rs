use std::rc::Rc;

use checkpoint::prelude::*;

struct Orders;

async fn audit() {}

#[checkpoint_handler]
impl Orders {
    async fn consume(&self, order: String) -> Outcome {
        let seen = Rc::new(order);
        audit().await;
        Outcome::ack(seen.as_str(), Utc::now())
    }
}

fn main() {}
