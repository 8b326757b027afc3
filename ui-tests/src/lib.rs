//! Compile-pass and compile-fail tests of `#[checkpoint_handler]`; the suite is
//! `tests/ui.rs`. This library holds what the pass cases share.

use std::pin::pin;
use std::task::{Poll, Waker};

use checkpoint::{Context, Handler, HandlerError, Message, Metadata, Outcome};

/// A message on topic `ui` carrying `payload`.
pub fn message(payload: impl Into<Vec<u8>>) -> Message {
    Message::new("ui", 0, 0, payload)
}

/// The metadata of a first delivery of [`message`] to `handler`.
pub fn metadata(handler: &impl Handler, message: &Message) -> Metadata {
    Metadata {
        listener_id: "ui".to_owned(),
        group_id: "ui".to_owned(),
        handler: handler.name().to_owned(),
        topic: message.topic.clone(),
        partition: message.partition,
        offset: message.offset,
        key: None,
        retry_count: 0,
        checksum: message.checksum(),
    }
}

/// Runs `handler.consume` once on a message carrying `payload`, outside a transaction. The
/// handlers of the suite never wait, so one poll finishes them.
pub fn consume(
    handler: &impl Handler,
    payload: impl Into<Vec<u8>>,
) -> Result<Outcome, HandlerError> {
    let message = message(payload);
    let metadata = metadata(handler, &message);
    let mut ctx = Context::new(&metadata, None);
    let future = pin!(handler.consume(&message, &mut ctx));
    match future.poll(&mut std::task::Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("a ui-test handler waited"),
    }
}
