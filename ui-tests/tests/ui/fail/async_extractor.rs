use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }

    #[event_type]
    async fn event_type(order: &str) -> Option<String> {
        Some(order.to_owned())
    }
}

fn main() {}
