use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Orders {
    fn consume(&self, order: String, ctx: &Context<'_>) -> Outcome {
        ctx.ack(order, Utc::now())
    }
}

fn main() {}
