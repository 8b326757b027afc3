// A plain `fn consume` returning `Outcome`, with the default name and no retry limit.
use checkpoint::prelude::*;

#[derive(serde::Deserialize)]
struct Greeting {
    name: String,
}

struct Greeter;

#[checkpoint_handler]
impl Greeter {
    fn consume(&self, greeting: Greeting) -> Outcome {
        if greeting.name.is_empty() {
            Outcome::skip()
        } else {
            Outcome::ack(greeting.name, Utc::now())
        }
    }
}

fn main() {
    assert_eq!(Greeter.name(), "Greeter");
    assert_eq!(Greeter.max_retries(), None);
    assert!(!Greeter.transactional());
    let outcome = checkpoint_ui_tests::consume(&Greeter, r#"{"name":"ada"}"#).unwrap();
    assert!(matches!(outcome, Outcome::Ack(ack) if ack.entity_id.as_deref() == Some("ada")));
    assert_eq!(
        checkpoint_ui_tests::consume(&Greeter, r#"{"name":""}"#).unwrap(),
        Outcome::Skip
    );
    let error = checkpoint_ui_tests::consume(&Greeter, "not json").unwrap_err();
    assert!(
        error.is_permanent(),
        "an undecodable payload is permanent: {error}"
    );
}
