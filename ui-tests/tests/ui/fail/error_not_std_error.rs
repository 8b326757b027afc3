use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    async fn consume(&self, order: String) -> Result<Outcome, String> {
        Ok(Outcome::ack(order, Utc::now()))
    }
}

fn main() {}
