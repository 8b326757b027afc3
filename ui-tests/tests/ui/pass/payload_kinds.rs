// Each payload type and how it is decoded; extractors of borrowed payloads take `&[u8]`/`&str`.
use checkpoint::prelude::*;
use checkpoint_ui_tests::{consume, message};

fn ack(id: impl Into<String>) -> Outcome {
    Outcome::ack(id, DateTime::UNIX_EPOCH)
}

fn acked_id(outcome: Outcome) -> String {
    match outcome {
        Outcome::Ack(ack) => ack.entity_id.unwrap(),
        other => panic!("expected an ack, got {other:?}"),
    }
}

struct Bytes;
#[checkpoint_handler]
impl Bytes {
    fn consume(&self, payload: &[u8]) -> Outcome {
        ack(payload.len().to_string())
    }
    #[entity_id]
    fn first_byte(payload: &[u8]) -> Option<String> {
        payload.first().map(u8::to_string)
    }
}

struct OwnedBytes;
#[checkpoint_handler]
impl OwnedBytes {
    async fn consume(&self, payload: Vec<u8>) -> Outcome {
        ack(payload.len().to_string())
    }
    #[entity_id]
    fn len(payload: &[u8]) -> Option<String> {
        Some(payload.len().to_string())
    }
}

struct Text;
#[checkpoint_handler]
impl Text {
    async fn consume(&self, text: &str, _ctx: &mut Context<'_>) -> Outcome {
        ack(text)
    }
    #[entity_id]
    fn entity_id(text: &str) -> Option<String> {
        Some(text.to_uppercase())
    }
}

struct OwnedText;
#[checkpoint_handler]
impl OwnedText {
    fn consume(&self, text: String) -> Outcome {
        ack(text)
    }
    #[entity_id]
    fn entity_id(text: &String) -> Option<String> {
        Some(text.clone())
    }
    #[event_type]
    fn event_type(text: &str) -> Option<String> {
        text.split(':').next().map(str::to_owned)
    }
}

struct Json;
#[checkpoint_handler]
impl Json {
    fn consume(&self, value: serde_json::Value) -> Outcome {
        ack(value["id"].as_str().unwrap_or("none"))
    }
    #[entity_id]
    fn entity_id(value: &serde_json::Value) -> Option<String> {
        value["id"].as_str().map(str::to_owned)
    }
}

#[derive(serde::Deserialize)]
struct Typed {
    id: u64,
}

struct Struct;
#[checkpoint_handler]
impl Struct {
    fn consume(&self, typed: Typed) -> Outcome {
        ack(typed.id.to_string())
    }
}

fn main() {
    assert_eq!(acked_id(consume(&Bytes, [0xff, 0x00]).unwrap()), "2");
    assert_eq!(Bytes.entity_id(&message([7u8])).as_deref(), Some("7"));

    assert_eq!(acked_id(consume(&OwnedBytes, "abc").unwrap()), "3");
    assert_eq!(OwnedBytes.entity_id(&message("abcd")).as_deref(), Some("4"));

    assert_eq!(acked_id(consume(&Text, "hello").unwrap()), "hello");
    assert_eq!(Text.entity_id(&message("hello")).as_deref(), Some("HELLO"));
    assert!(
        consume(&Text, [0xff]).unwrap_err().is_permanent(),
        "not UTF-8"
    );
    assert_eq!(Text.entity_id(&message([0xff])), None);

    assert_eq!(acked_id(consume(&OwnedText, "order:7").unwrap()), "order:7");
    assert_eq!(
        OwnedText.event_type(&message("order:7")).as_deref(),
        Some("order")
    );

    assert_eq!(acked_id(consume(&Json, r#"{"id":"j-1"}"#).unwrap()), "j-1");
    assert_eq!(
        Json.entity_id(&message(r#"{"id":"j-1"}"#)).as_deref(),
        Some("j-1")
    );
    assert!(consume(&Json, "{").unwrap_err().is_permanent());

    assert_eq!(acked_id(consume(&Struct, r#"{"id":42}"#).unwrap()), "42");
    assert!(
        consume(&Struct, r#"{"id":"x"}"#)
            .unwrap_err()
            .is_permanent()
    );
}
