use checkpoint::prelude::*;

struct Orders<T>(T);

#[checkpoint_handler]
impl<T: Send + Sync + 'static> Orders<T> {
    fn consume(&self, order: String) -> Outcome {
        Outcome::ack(order, Utc::now())
    }
}

fn main() {}
