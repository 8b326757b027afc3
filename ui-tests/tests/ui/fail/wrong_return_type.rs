use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    async fn consume(&self, order: String) -> Result<String, std::io::Error> {
        Ok(order)
    }
}

fn main() {}
