use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    async fn consume(&self, order: String) {
        println!("{order}");
    }
}

fn main() {}
