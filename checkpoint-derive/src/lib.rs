//! The `#[checkpoint_handler]` attribute of the [`checkpoint`](https://docs.rs/checkpoint)
//! crate. Depend on `checkpoint`, which re-exports it; this crate is released in lockstep with it.
//!
//! Stages: `args` parses the attribute's arguments, `ast` reads the impl block, `valid` checks
//! the signatures, `expand` writes the `Handler` impl. Every mistake is collected (`ctxt`) and
//! reported together.

use proc_macro::TokenStream;

mod args;
mod ast;
mod ctxt;
mod expand;
mod valid;

use crate::ast::Extractor;

/// Turns an `impl` block with a `consume` fn into a checkpointed Kafka event handler: it writes
/// `impl checkpoint::Handler` for the type.
///
/// ```
/// use checkpoint::prelude::*;
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced {
///     id: String,
///     at: DateTime<Utc>,
///     kind: String,
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the warehouse is unreachable")]
/// struct WarehouseDown;
///
/// struct Orders;
///
/// #[checkpoint_handler(max_retries = 3)]
/// impl Orders {
///     async fn consume(&self, order: OrderPlaced, ctx: &mut Context<'_>) -> Result<Outcome, WarehouseDown> {
///         Ok(ctx.ack(order.id, order.at))
///     }
///
///     #[entity_id]
///     fn entity_id(order: &OrderPlaced) -> Option<String> {
///         Some(order.id.clone())
///     }
///
///     #[event_type]
///     fn event_type(order: &OrderPlaced) -> Option<String> {
///         Some(order.kind.clone())
///     }
/// }
///
/// assert_eq!(Orders.name(), "Orders");
/// assert_eq!(Orders.max_retries(), Some(3));
/// let message = Message::new("orders", 0, 7, r#"{"id":"o-1","at":"2024-05-01T12:00:00Z","kind":"placed"}"#);
/// assert_eq!(Orders.entity_id(&message).as_deref(), Some("o-1"));
/// assert_eq!(Orders.event_type(&message).as_deref(), Some("placed"));
/// ```
///
/// # `consume`
/// Exactly one fn named `consume`, `async fn` or plain `fn`, taking `&self`, the payload, and
/// optionally the [`Context`] (`ctx: &mut Context<'_>`: delivery metadata, the retry count, and
/// in transactional mode the open transaction). It returns `Outcome` or `Result<Outcome, E>`
/// for any `E: std::error::Error + Send + Sync + 'static` (or `HandlerError`); an async
/// `consume` must return a `Send` future.
///
/// The payload parameter's type decides how the message is decoded:
///
/// | payload type | decoded as |
/// |---|---|
/// | `&[u8]`, `Vec<u8>` | the exact bytes |
/// | `&str`, `String` | UTF-8 text |
/// | `serde_json::Value`, any `T: serde::de::DeserializeOwned` | JSON |
///
/// A payload that does not decode is a *permanent* error: it becomes a failure at once, without
/// retries. (The macro looks at how the type is spelled, so an alias of `String` is JSON.)
///
/// # `consume_batch`
/// A transactional handler may add at most one fn named `consume_batch`, `async fn` or plain
/// `fn`, taking `&self`, the payloads as a `Vec<T>` (each decoded as `consume`'s payload is)
/// and optionally `ctx: &mut BatchContext<'_>` (the batch's open transaction and its
/// deliveries), returning `Vec<Outcome>` or `Result<Vec<Outcome>, E>`, one outcome per payload
/// in order. With `batch_size > 1` the engine hands it a batch's new messages in one call; its
/// work is kept only when every outcome is an ack that fits the store, else it is rolled back
/// and the messages go through `consume` one by one (a payload that does not decode does the
/// same). See `Handler::consume_batch`. Declared on a handler without `transactional`, it is a
/// compile error.
///
/// # Arguments
/// - `max_retries = <u32>`: retries after the first failed attempt before a failure is
///   recorded. Leave it out to retry forever.
/// - `name = "…"`: the name the handler is registered and configured under (default: the
///   type's name, `"Orders"` above).
/// - `transactional`: `consume` runs inside the checkpoint transaction; what it writes through
///   `ctx.tx()?` commits together with the event row, or not at all.
///
/// ```
/// use checkpoint::prelude::*;
///
/// struct Shipments;
///
/// #[checkpoint_handler(name = "shipments", transactional)]
/// impl Shipments {
///     async fn consume(&self, order_id: String, ctx: &mut Context<'_>) -> Result<Outcome, HandlerError> {
///         ctx.tx()?
///             .execute(diesel::sql_query("SELECT 1"))
///             .await?;
///         Ok(ctx.ack(order_id, Utc::now()))
///     }
/// }
///
/// assert_eq!(Shipments.name(), "shipments");
/// assert!(Shipments.transactional());
/// assert_eq!(Shipments.max_retries(), None);
/// ```
///
/// # Extractors
/// Fns of the same impl block marked with one of these attributes fill the failure row of a
/// message that could not be consumed, and the event row where the ack leaves a field empty.
/// `T` is the payload type of `consume`: an extractor takes `&T` (for a `&[u8]` or `&str`
/// payload, `&[u8]` or `&str`; for `String` or `Vec<u8>`, also `&str` or `&[u8]`), with or
/// without a leading `&self`. When the payload does not decode, extractors are not called.
/// (An extractor taking `&self` and named like its `Handler` method, `fn entity_id(&self, …)`,
/// wins method-call syntax: call the trait method as `Handler::entity_id(&handler, &message)`.)
///
/// | attribute | signature | used for |
/// |---|---|---|
/// | `#[entity_id]` | `fn(&T) -> Option<String>` | `entity_id` |
/// | `#[entity_time]` | `fn(&T) -> Option<DateTime<Utc>>` | `event_time` |
/// | `#[event_type]` | `fn(&T) -> Option<String>` | `event_type` |
/// | `#[event_version]` | `fn(&T) -> Option<String>` | `event_version` |
/// | `#[dedup_key]` | `fn(&T) -> Option<String>` | the duplicate key instead of the payload checksum (`None` keeps the checksum) |
/// | `#[retry_consume]` | `fn(&T, &Metadata, &HandlerError) -> bool` | whether to retry after an error (default: while `retry_count < max_retries`) |
///
/// ```
/// use checkpoint::prelude::*;
///
/// #[derive(serde::Deserialize)]
/// struct Payment {
///     id: String,
///     account: String,
///     at: DateTime<Utc>,
///     version: u32,
/// }
///
/// struct Payments {
///     retries_for_timeouts: u32,
/// }
///
/// #[checkpoint_handler(max_retries = 1)]
/// impl Payments {
///     fn consume(&self, payment: Payment) -> Outcome {
///         Outcome::ack(payment.account, payment.at)
///     }
///
///     #[entity_id]
///     fn account(payment: &Payment) -> Option<String> {
///         Some(payment.account.clone())
///     }
///
///     #[entity_time]
///     fn at(payment: &Payment) -> Option<DateTime<Utc>> {
///         Some(payment.at)
///     }
///
///     #[event_type]
///     fn kind(_: &Payment) -> Option<String> {
///         Some("payment".to_owned())
///     }
///
///     #[event_version]
///     fn version(payment: &Payment) -> Option<String> {
///         Some(payment.version.to_string())
///     }
///
///     #[dedup_key]
///     fn payment_id(payment: &Payment) -> Option<String> {
///         Some(payment.id.clone())
///     }
///
///     #[retry_consume]
///     fn retry(&self, _: &Payment, metadata: &Metadata, error: &HandlerError) -> bool {
///         error.message().contains("timed out") && metadata.retry_count < self.retries_for_timeouts
///     }
/// }
///
/// let handler = Payments { retries_for_timeouts: 5 };
/// let message = Message::new(
///     "payments", 0, 1,
///     r#"{"id":"p-9","account":"acc-1","at":"2024-05-01T12:00:00Z","version":2}"#,
/// );
/// assert_eq!(handler.dedup_key(&message).as_deref(), Some("p-9"));
/// assert_eq!(handler.event_version(&message).as_deref(), Some("2"));
/// assert_eq!(handler.entity_id(&Message::new("payments", 0, 2, "not json")), None);
/// ```
///
/// # Compile-time checks
/// Unknown arguments, wrong literal types, a missing or repeated `consume`, a repeated or
/// non-transactional `consume_batch`, repeated or
/// misplaced extractors and bad signatures are compile errors spanned on the offending tokens,
/// all reported in one compile. A payload type that cannot be decoded, a `consume` whose return
/// type does not convert into an outcome and a non-`Send` future are reported at the user's
/// type or fn.
///
/// [`Context`]: https://docs.rs/checkpoint/latest/checkpoint/struct.Context.html
#[proc_macro_attribute]
pub fn checkpoint_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(args.into(), item.into()).into()
}

/// One entry fn per extractor attribute: outside a `#[checkpoint_handler]` impl block (which
/// strips them) each is an error.
macro_rules! helper_attributes {
    ($($(#[$doc:meta])* $name:ident => $kind:ident;)*) => {$(
        $(#[$doc])*
        ///
        /// Only meaningful on a fn inside a [`macro@checkpoint_handler`] impl block; anywhere
        /// else it is a compile error.
        #[proc_macro_attribute]
        pub fn $name(_args: TokenStream, item: TokenStream) -> TokenStream {
            expand::helper_outside_handler(Extractor::$kind, item.into()).into()
        }
    )*};
}

helper_attributes! {
    /// Marks the extractor of a message's entity id: `fn(&T) -> Option<String>`.
    entity_id => EntityId;
    /// Marks the extractor of a message's event time: `fn(&T) -> Option<DateTime<Utc>>`.
    entity_time => EntityTime;
    /// Marks the extractor of a message's event type: `fn(&T) -> Option<String>`.
    event_type => EventType;
    /// Marks the extractor of a message's event version: `fn(&T) -> Option<String>`.
    event_version => EventVersion;
    /// Marks the extractor of a message's duplicate key, used instead of the payload checksum:
    /// `fn(&T) -> Option<String>` (`None` keeps the checksum).
    dedup_key => DedupKey;
    /// Marks the retry decision after a failed attempt:
    /// `fn(&T, &Metadata, &HandlerError) -> bool`.
    retry_consume => RetryConsume;
}
