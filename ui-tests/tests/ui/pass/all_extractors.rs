// Every extractor, with and without `&self`; they see the decoded payload.
use checkpoint::prelude::*;
use checkpoint_ui_tests::{message, metadata};

#[derive(serde::Deserialize)]
struct Payment {
    id: String,
    account: String,
    at: DateTime<Utc>,
    version: u32,
}

struct Payments {
    event_type: &'static str,
}

#[checkpoint_handler(max_retries = 2)]
impl Payments {
    async fn consume(&self, payment: Payment) -> Result<Outcome, HandlerError> {
        Ok(Outcome::ack(payment.account, payment.at))
    }

    #[entity_id]
    fn account(payment: &Payment) -> Option<String> {
        Some(payment.account.clone())
    }

    #[entity_time]
    fn at(payment: &Payment) -> Option<DateTime<Utc>> {
        Some(payment.at)
    }

    #[event_type]
    fn kind(&self, _payment: &Payment) -> Option<String> {
        Some(self.event_type.to_owned())
    }

    #[event_version]
    fn version(payment: &Payment) -> Option<String> {
        Some(payment.version.to_string())
    }

    #[dedup_key]
    fn payment_id(payment: &Payment) -> Option<String> {
        Some(payment.id.clone())
    }

    #[retry_consume]
    fn retry(&self, payment: &Payment, metadata: &Metadata, error: &HandlerError) -> bool {
        payment.account != "closed"
            && !error.message().contains("fatal")
            && metadata.retry_count < 10
    }
}

fn main() {
    let handler = Payments {
        event_type: "payment",
    };
    let good = message(r#"{"id":"p-9","account":"acc-1","at":"2024-05-01T12:00:00Z","version":2}"#);
    assert_eq!(handler.entity_id(&good).as_deref(), Some("acc-1"));
    assert_eq!(
        handler.entity_time(&good),
        Some("2024-05-01T12:00:00Z".parse().unwrap())
    );
    assert_eq!(handler.event_type(&good).as_deref(), Some("payment"));
    assert_eq!(handler.event_version(&good).as_deref(), Some("2"));
    assert_eq!(handler.dedup_key(&good).as_deref(), Some("p-9"));

    let mut meta = metadata(&handler, &good);
    meta.retry_count = 5;
    assert!(handler.retry_consume(&good, &meta, &HandlerError::msg("timeout")));
    assert!(!handler.retry_consume(&good, &meta, &HandlerError::msg("fatal")));

    // An undecodable payload: no extracted fields, and the default retry decision.
    let bad = message("not json");
    assert_eq!(handler.entity_id(&bad), None);
    assert_eq!(handler.entity_time(&bad), None);
    assert_eq!(handler.dedup_key(&bad), None);
    assert!(
        !handler.retry_consume(&bad, &meta, &HandlerError::msg("timeout")),
        "5 >= max_retries 2"
    );
}
