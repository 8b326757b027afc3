use checkpoint::handler::BoxFuture;
use checkpoint::prelude::*;

struct Orders;

#[checkpoint_handler]
impl Handler for Orders {
    fn name(&self) -> &str {
        "orders"
    }

    fn consume<'a>(
        &'a self,
        _message: &'a Message,
        _ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async { Ok(Outcome::skip()) })
    }
}

fn main() {}
