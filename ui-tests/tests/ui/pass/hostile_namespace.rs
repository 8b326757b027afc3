// The expansion names nothing the user's crate can shadow, and triggers no lint.
#![deny(warnings, rust_2018_idioms, unused_qualifications)]

use ::checkpoint::prelude::*;

// Every std name the generated code could have used unqualified means something else here.
#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
struct Box;
#[allow(dead_code)]
struct String;
#[allow(dead_code)]
struct Vec;
#[allow(dead_code, non_snake_case)]
fn Ok() {}
#[allow(dead_code, non_snake_case)]
fn Err() {}
#[allow(dead_code, non_snake_case)]
fn Some() {}
#[allow(dead_code, non_upper_case_globals)]
const None: () = ();
#[allow(dead_code)]
mod checkpoint {}
#[allow(dead_code)]
mod core {}
#[allow(dead_code)]
mod std {}

#[derive(::serde::Deserialize)]
struct Event {
    id: ::std::string::String,
}

#[derive(Debug, ::thiserror::Error)]
#[error("rejected")]
struct Rejected;

struct Hostile {
    retries: u32,
}

#[checkpoint_handler(max_retries = 4, name = "hostile", transactional)]
impl Hostile {
    async fn consume(
        &self,
        event: Event,
        ctx: &mut Context<'_>,
    ) -> ::std::result::Result<Outcome, Rejected> {
        if event.id.is_empty() {
            return ::std::result::Result::Err(Rejected);
        }
        ::std::result::Result::Ok(ctx.ack(event.id, Utc::now()))
    }

    #[entity_id]
    fn entity_id(&self, event: &Event) -> ::std::option::Option<::std::string::String> {
        ::std::option::Option::Some(event.id.clone())
    }

    #[entity_time]
    fn entity_time(_: &Event) -> ::std::option::Option<DateTime<Utc>> {
        ::std::option::Option::None
    }

    #[event_type]
    fn event_type(_: &Event) -> ::std::option::Option<::std::string::String> {
        ::std::option::Option::None
    }

    #[event_version]
    fn event_version(_: &Event) -> ::std::option::Option<::std::string::String> {
        ::std::option::Option::None
    }

    #[dedup_key]
    fn dedup_key(_: &Event) -> ::std::option::Option<::std::string::String> {
        ::std::option::Option::None
    }

    #[retry_consume]
    fn retry_consume(&self, _: &Event, metadata: &Metadata, _: &HandlerError) -> bool {
        metadata.retry_count < self.retries
    }
}

struct Raw;

#[checkpoint_handler]
impl Raw {
    fn consume(&self, _: &[u8]) -> Outcome {
        Outcome::skip()
    }

    #[entity_id]
    fn entity_id(payload: &[u8]) -> ::std::option::Option<::std::string::String> {
        ::std::option::Option::Some(payload.len().to_string())
    }
}

fn main() {
    let handler = Hostile { retries: 1 };
    assert_eq!(handler.name(), "hostile");
    let message = ::checkpoint_ui_tests::message(r#"{"id":"e-1"}"#);
    // `handler.entity_id(..)` would call the inherent extractor, which shares its name.
    assert_eq!(
        Handler::entity_id(&handler, &message).as_deref(),
        ::std::option::Option::Some("e-1")
    );
    assert_eq!(Raw.name(), "Raw");
}
