//! The [`Handler`] trait that `#[checkpoint_handler]` implements (and that can be implemented
//! by hand), what `consume` returns, and the errors it may raise.

use std::any::{Any, type_name};
use std::backtrace::{Backtrace, BacktraceStatus};
use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};

use crate::message::{Message, Metadata};
use crate::store::Conn;

/// A boxed, `Send` future: what [`Handler::consume`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The fields an acknowledged event is stored with. Empty fields are filled from the handler's
/// extractors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    /// Entity the event is about.
    pub entity_id: Option<String>,
    /// When the event happened.
    pub event_time: Option<DateTime<Utc>>,
    /// Event type.
    pub event_type: Option<String>,
    /// Event version.
    pub event_version: Option<String>,
}

impl Ack {
    /// An ack with entity id and event time.
    pub fn new(entity_id: impl Into<String>, event_time: DateTime<Utc>) -> Self {
        Self {
            entity_id: Some(entity_id.into()),
            event_time: Some(event_time),
            ..Self::default()
        }
    }

    /// Sets the event type.
    pub fn with_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Sets the event version.
    pub fn with_event_version(mut self, event_version: impl Into<String>) -> Self {
        self.event_version = Some(event_version.into());
        self
    }
}

/// What `consume` decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Store the event: it is consumed and will be skipped if it comes again.
    Ack(Ack),
    /// Store nothing: a redelivery of this message is consumed again.
    Skip,
}

impl Outcome {
    /// Acknowledge with entity id and event time.
    pub fn ack(entity_id: impl Into<String>, event_time: DateTime<Utc>) -> Self {
        Self::Ack(Ack::new(entity_id, event_time))
    }

    /// Skip the message.
    pub fn skip() -> Self {
        Self::Skip
    }

    /// Sets the event type of an ack (no effect on a skip).
    pub fn with_event_type(self, event_type: impl Into<String>) -> Self {
        match self {
            Self::Ack(ack) => Self::Ack(ack.with_event_type(event_type)),
            Self::Skip => Self::Skip,
        }
    }

    /// Sets the event version of an ack (no effect on a skip).
    pub fn with_event_version(self, event_version: impl Into<String>) -> Self {
        match self {
            Self::Ack(ack) => Self::Ack(ack.with_event_version(event_version)),
            Self::Skip => Self::Skip,
        }
    }
}

impl From<Ack> for Outcome {
    fn from(ack: Ack) -> Self {
        Self::Ack(ack)
    }
}

/// `error_class` of a failure whose handler code panicked.
pub const PANIC_CLASS: &str = "panic";
/// `error_class` of an attempt that exceeded the listener's `handler_timeout`.
pub const TIMEOUT_CLASS: &str = "timeout";
/// `error_class` of a failure whose earlier deliveries never returned: the consumer crashed,
/// was killed or lost its partition inside `consume`, `max_retries + 1` times.
pub const NEVER_RETURNED_CLASS: &str = "never_returned";

/// An error raised by `consume`. Any `std::error::Error + Send + Sync + 'static` converts into
/// it with `?`, keeping its type name (stored as the failure's `error_class`), its message and
/// its source chain.
///
/// A *permanent* error (an undecodable payload, or one the handler marks with
/// [`HandlerError::permanent`]) is never retried: it becomes a failure at once.
pub struct HandlerError(Box<ErrorInner>);

struct ErrorInner {
    class: Cow<'static, str>,
    message: String,
    chain: Vec<String>,
    backtrace: Backtrace,
    permanent: bool,
    inner: Box<dyn StdError + Send + Sync + 'static>,
}

impl HandlerError {
    /// Wraps `error`; it may be retried.
    pub fn new<E: StdError + Send + Sync + 'static>(error: E) -> Self {
        let mut chain = Vec::new();
        let mut source = error.source();
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        Self(Box::new(ErrorInner {
            class: Cow::Borrowed(type_name::<E>()),
            message: error.to_string(),
            chain,
            backtrace: Backtrace::capture(),
            permanent: false,
            inner: Box::new(error),
        }))
    }

    /// Wraps `error` as permanent: no retries, a failure is recorded at once.
    pub fn permanent<E: StdError + Send + Sync + 'static>(error: E) -> Self {
        Self::new(error).into_permanent()
    }

    /// An error from a plain message (`error_class` is `checkpoint::handler::Message`).
    pub fn msg(message: impl fmt::Display) -> Self {
        let mut error = Self::new(MessageError(message.to_string()));
        error.0.class = Cow::Borrowed("checkpoint::handler::Message");
        error
    }

    /// A panic caught in handler code `site` (`consume`, an extractor, …): permanent, with
    /// error class `panic` and the panic's message.
    pub(crate) fn panicked(site: &str, payload: &(dyn Any + Send)) -> Self {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-text payload".to_owned());
        Self::with_class(PANIC_CLASS, format!("`{site}` panicked: {text}")).into_permanent()
    }

    /// An error with a fixed `error_class` and message.
    pub(crate) fn with_class(
        class: impl Into<Cow<'static, str>>,
        message: impl fmt::Display,
    ) -> Self {
        let mut error = Self::msg(message);
        error.0.class = class.into();
        error
    }

    /// Handler code `site` did not return within the listener's `handler_timeout` (`after`):
    /// retryable, with error class `timeout`.
    pub(crate) fn timed_out(site: &str, after: std::time::Duration) -> Self {
        Self::with_class(
            TIMEOUT_CLASS,
            format!(
                "`{site}` did not return within {} ms (handler_timeout); it was dropped at \
                 its pending await",
                after.as_millis()
            ),
        )
    }

    /// Marks this error permanent.
    pub fn into_permanent(mut self) -> Self {
        self.0.permanent = true;
        self
    }

    /// Type name of the original error.
    pub fn class(&self) -> &str {
        &self.0.class
    }

    /// Display text of the original error.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// True when the error must not be retried.
    pub fn is_permanent(&self) -> bool {
        self.0.permanent
    }

    /// Display texts of the error's sources, outermost first.
    pub fn chain(&self) -> &[String] {
        &self.0.chain
    }

    /// The source chain (`caused by: …`) followed by the backtrace frames when one was
    /// captured (`RUST_BACKTRACE=1`): what a failure stores as `error_backtrace`.
    pub fn backtrace_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .0
            .chain
            .iter()
            .map(|c| format!("caused by: {c}"))
            .collect();
        if self.0.backtrace.status() == BacktraceStatus::Captured {
            lines.extend(
                self.0
                    .backtrace
                    .to_string()
                    .lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
        }
        lines
    }

    /// The original error.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0.inner
    }

    /// Returns the original error if it is an `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.0.inner.downcast_ref::<E>()
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::new(error)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.class, self.0.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("class", &self.0.class)
            .field("message", &self.0.message)
            .field("chain", &self.0.chain)
            .field("permanent", &self.0.permanent)
            .finish()
    }
}

#[derive(Debug)]
struct MessageError(String);

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for MessageError {}

/// A payload that could not be decoded into the type `consume` asks for. Always permanent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is not UTF-8 but `consume` takes text.
    #[error("payload is not valid UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    /// The payload is not JSON of the expected shape.
    #[error("payload is not valid JSON for `{target}`: {source}")]
    Json {
        /// The type `consume` asked for.
        target: &'static str,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
}

/// `ctx.tx()` was called in a handler that does not run transactionally.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "this handler is not transactional: declare it with `#[checkpoint_handler(transactional)]` \
     (or return true from `Handler::transactional`) to write through the checkpoint transaction"
)]
pub struct NotTransactional;

/// What `consume` sees besides the payload: the delivery metadata and, in transactional mode,
/// the open checkpoint transaction.
pub struct Context<'a> {
    metadata: &'a Metadata,
    conn: Option<Conn<'a>>,
}

impl<'a> Context<'a> {
    /// A context for one delivery attempt; `conn` is the open transaction in transactional
    /// mode.
    pub fn new(metadata: &'a Metadata, conn: Option<Conn<'a>>) -> Self {
        Self { metadata, conn }
    }

    /// Metadata of this delivery attempt.
    pub fn metadata(&self) -> &'a Metadata {
        self.metadata
    }

    /// Attempts made before this one (0 on the first delivery).
    pub fn retry_count(&self) -> u32 {
        self.metadata.retry_count
    }

    /// The open checkpoint transaction. What you write through it commits together with the
    /// event row when `consume` acks, and is rolled back when it skips or fails.
    pub fn tx(&mut self) -> Result<&mut Conn<'a>, NotTransactional> {
        self.conn.as_mut().ok_or(NotTransactional)
    }

    /// Acknowledge with entity id and event time (shorthand for [`Outcome::ack`]).
    pub fn ack(&self, entity_id: impl Into<String>, event_time: DateTime<Utc>) -> Outcome {
        Outcome::ack(entity_id, event_time)
    }

    /// Skip the message (shorthand for [`Outcome::skip`]).
    pub fn skip(&self) -> Outcome {
        Outcome::Skip
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("metadata", self.metadata)
            .field("transactional", &self.conn.is_some())
            .finish()
    }
}

/// One message of a transactional batch handed to [`Handler::consume_batch`], with the
/// metadata of its delivery.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Delivery<'a> {
    /// The message.
    pub message: &'a Message,
    /// Metadata of this delivery attempt.
    pub metadata: &'a Metadata,
}

impl<'a> Delivery<'a> {
    /// A delivery of `message` with `metadata`.
    pub fn new(message: &'a Message, metadata: &'a Metadata) -> Self {
        Self { message, metadata }
    }
}

/// What [`Handler::consume_batch`] sees: the batch's new messages and its open checkpoint
/// transaction.
pub struct BatchContext<'a> {
    deliveries: &'a [Delivery<'a>],
    conn: Conn<'a>,
}

impl<'a> BatchContext<'a> {
    /// A context for one call of `consume_batch`: `deliveries` are the messages, in order;
    /// `conn` is the batch's open transaction.
    pub fn new(deliveries: &'a [Delivery<'a>], conn: Conn<'a>) -> Self {
        Self { deliveries, conn }
    }

    /// The messages of this call, in order: the batch's messages that are not stored yet,
    /// each at most once. The outcomes `consume_batch` returns belong to them in this order.
    pub fn deliveries(&self) -> &'a [Delivery<'a>] {
        self.deliveries
    }

    /// The open checkpoint transaction of the batch. What you write through it commits
    /// together with the batch's event rows when every message acks, and is rolled back
    /// otherwise.
    pub fn tx(&mut self) -> &mut Conn<'a> {
        &mut self.conn
    }
}

impl fmt::Debug for BatchContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchContext")
            .field("deliveries", &self.deliveries.len())
            .finish_non_exhaustive()
    }
}

/// The default retry decision: retry while `retry_count < max_retries`; forever when
/// `max_retries` is `None`.
pub fn default_retry_decision(max_retries: Option<u32>, retry_count: u32) -> bool {
    max_retries.is_none_or(|max| retry_count < max)
}

/// A checkpointed event handler.
///
/// Usually generated by `#[checkpoint_handler]`; implement it by hand when you need full
/// control. Extractors see the raw message; they fill failure rows, and event rows where the
/// ack leaves a field empty.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a checkpoint handler",
    label = "put `#[checkpoint_handler]` on an `impl {Self}` block with a `consume` fn, or implement `checkpoint::Handler`"
)]
pub trait Handler: Send + Sync + 'static {
    /// Name the handler is registered and configured under.
    fn name(&self) -> &str;

    /// Retries after the first failed attempt before a failure is recorded; `None` retries
    /// forever.
    fn max_retries(&self) -> Option<u32> {
        None
    }

    /// True when `consume` runs inside the checkpoint transaction (see [`Context::tx`]).
    fn transactional(&self) -> bool {
        false
    }

    /// Handles one message.
    fn consume<'a>(
        &'a self,
        message: &'a Message,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>>;

    /// Handles the new messages of one transactional batch in one call, so that the handler
    /// can write their rows in one statement instead of one per message. `None`, the default,
    /// means the handler has no such form: each message goes through [`Handler::consume`].
    ///
    /// Called only for transactional handlers in batch processing (a listener with
    /// `batch_size > 1`, or [`Engine::process_batch`](crate::Engine::process_batch)), with the
    /// batch's messages that were not stored at its duplicate check
    /// ([`BatchContext::deliveries`]), in order. Nothing is claimed before the call; the
    /// events are inserted, complete, after it. A batch goes one by one instead when it holds a
    /// key twice, a message whose dedup key could not be used, or a first message that is a
    /// retry. The returned outcomes belong to the deliveries in order.
    ///
    /// It must have the effect of calling `consume` on each message in turn: the engine keeps
    /// its work only when it returns one [`Outcome::Ack`] per message whose fields fit the
    /// store, and every event goes in (none was stored meanwhile by another consumer).
    /// Anything else (an error, a skip, a panic, a wrong number of outcomes, a transaction of
    /// its own left open, such a key) rolls back everything the call wrote, and the same
    /// messages go through `consume` one by one, each in a savepoint of its own, so that each
    /// ends as its own ack, skip or failure row. The listener's `handler_timeout` bounds the
    /// call at that limit times the number of messages; when it fires, the batch's transaction
    /// and connection are discarded (a warning is logged) and its messages are consumed one at
    /// a time, each in its own transaction. Writes through [`BatchContext::tx`] are thus
    /// exactly-once; effects outside the transaction are repeated when the call is not kept.
    fn consume_batch<'a>(
        &'a self,
        _ctx: &'a mut BatchContext<'_>,
    ) -> Option<BoxFuture<'a, Result<Vec<Outcome>, HandlerError>>> {
        None
    }

    /// Entity id for failure rows (and acks that leave it empty).
    fn entity_id(&self, _message: &Message) -> Option<String> {
        None
    }

    /// Event time for failure rows (and acks that leave it empty).
    fn entity_time(&self, _message: &Message) -> Option<DateTime<Utc>> {
        None
    }

    /// Event type for failure rows (and acks that leave it empty).
    fn event_type(&self, _message: &Message) -> Option<String> {
        None
    }

    /// Event version for failure rows (and acks that leave it empty).
    fn event_version(&self, _message: &Message) -> Option<String> {
        None
    }

    /// Duplicate key replacing the payload checksum (for example an event id in the payload);
    /// `None` keeps the checksum.
    fn dedup_key(&self, _message: &Message) -> Option<String> {
        None
    }

    /// Whether to retry after `error`; by default [`default_retry_decision`] with
    /// [`Handler::max_retries`]. Never asked for permanent errors.
    fn retry_consume(
        &self,
        _message: &Message,
        metadata: &Metadata,
        _error: &HandlerError,
    ) -> bool {
        default_retry_decision(self.max_retries(), metadata.retry_count)
    }
}

/// Decodes payload bytes into what `consume` takes. Implemented for raw bytes and UTF-8 text;
/// every other type goes through [`decode_json`].
pub trait FromPayload<'a>: Sized {
    /// Decodes `bytes`.
    fn from_payload(bytes: &'a [u8]) -> Result<Self, DecodeError>;
}

impl<'a> FromPayload<'a> for &'a [u8] {
    fn from_payload(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(bytes)
    }
}

impl FromPayload<'_> for Vec<u8> {
    fn from_payload(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(bytes.to_vec())
    }
}

impl<'a> FromPayload<'a> for &'a str {
    fn from_payload(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(std::str::from_utf8(bytes)?)
    }
}

impl FromPayload<'_> for String {
    fn from_payload(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(std::str::from_utf8(bytes)?.to_owned())
    }
}

/// Decodes a JSON payload into `T`.
pub fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
        target: type_name::<T>(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    #[derive(Debug, thiserror::Error)]
    #[error("charge failed")]
    struct ChargeFailed(#[source] Refused);

    #[test]
    fn handler_error_keeps_type_message_and_chain() {
        let error = HandlerError::from(ChargeFailed(Refused));
        assert!(error.class().ends_with("ChargeFailed"), "{}", error.class());
        assert_eq!(error.message(), "charge failed");
        assert_eq!(error.chain(), ["connection refused"]);
        assert!(!error.is_permanent());
        assert_eq!(error.backtrace_lines()[0], "caused by: connection refused");
        assert!(error.downcast_ref::<ChargeFailed>().is_some());
    }

    #[test]
    fn retry_decision_table() {
        assert!(default_retry_decision(Some(3), 0));
        assert!(default_retry_decision(Some(3), 2));
        assert!(!default_retry_decision(Some(3), 3));
        assert!(!default_retry_decision(Some(0), 0));
        assert!(default_retry_decision(None, u32::MAX));
    }

    #[test]
    fn payload_decoding() {
        assert_eq!(<&str>::from_payload(b"hi").expect("utf8"), "hi");
        assert!(matches!(
            String::from_payload(&[0xff]),
            Err(DecodeError::Utf8(_))
        ));
        let err = decode_json::<Vec<u32>>(b"{").expect_err("bad json");
        assert!(
            err.to_string()
                .starts_with("payload is not valid JSON for `alloc::vec::Vec<u32>`"),
            "{err}"
        );
    }
}
