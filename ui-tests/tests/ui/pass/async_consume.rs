// The README's handler: `async fn consume` with a context, returning `Result<Outcome, E>`.
use checkpoint::prelude::*;

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: String,
    at: DateTime<Utc>,
    kind: String,
}

#[derive(Debug, thiserror::Error)]
#[error("order {0} is cancelled")]
struct Cancelled(String);

struct Orders;

#[checkpoint_handler(max_retries = 3)]
impl Orders {
    async fn consume(
        &self,
        order: OrderPlaced,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, Cancelled> {
        if order.kind == "cancelled" {
            return Err(Cancelled(order.id));
        }
        assert_eq!(ctx.retry_count(), 0);
        Ok(ctx.ack(order.id.clone(), order.at))
    }

    #[entity_id]
    fn entity_id(order: &OrderPlaced) -> Option<String> {
        Some(order.id.clone())
    }

    #[event_type]
    fn event_type(order: &OrderPlaced) -> Option<String> {
        Some(order.kind.clone())
    }
}

fn main() {
    assert_eq!(Orders.name(), "Orders");
    assert_eq!(Orders.max_retries(), Some(3));

    let placed = r#"{"id":"o-1","at":"2024-05-01T12:00:00Z","kind":"placed"}"#;
    let outcome = checkpoint_ui_tests::consume(&Orders, placed).unwrap();
    assert!(matches!(outcome, Outcome::Ack(ack) if ack.entity_id.as_deref() == Some("o-1")));

    let message = checkpoint_ui_tests::message(placed);
    assert_eq!(Orders.entity_id(&message).as_deref(), Some("o-1"));
    assert_eq!(Orders.event_type(&message).as_deref(), Some("placed"));

    let cancelled = r#"{"id":"o-2","at":"2024-05-01T12:00:00Z","kind":"cancelled"}"#;
    let error = checkpoint_ui_tests::consume(&Orders, cancelled).unwrap_err();
    assert_eq!(error.message(), "order o-2 is cancelled");
    assert!(!error.is_permanent());
}
