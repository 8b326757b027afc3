use checkpoint::prelude::*;

#[entity_id]
fn entity_id(order: &str) -> Option<String> {
    Some(order.to_owned())
}

fn main() {
    let _ = entity_id("o-1");
}
