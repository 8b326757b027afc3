//! # checkpoint
//!
//! Exactly-once Kafka event handlers, checkpointed in your own relational database.
//!
//! Every consumed message is recorded in `checkpoint_events` under a unique
//! `(topic, group_id, checksum)` key before its offset is committed, so a redelivered or
//! concurrently delivered duplicate is skipped instead of applied twice; a message whose handler
//! keeps failing becomes a row in `checkpoint_failures` that you can inspect and retry.
//!
//! ## Tour
//! - [`Handler`]: what a handler is (`#[checkpoint_handler]` writes it for you).
//! - [`Engine`]: takes one message through the checkpoint algorithm (duplicate check, consume,
//!   ack / skip / retry / failure, notifications).
//! - [`store::Store`]: the events and failures on SQLite, PostgreSQL or MySQL/MariaDB, with a
//!   public diesel [`store::schema`].
//! - [`instrument`]: the notification names, their metrics, and observers.
//!
//! ## A hand-written handler
//! ```
//! use checkpoint::prelude::*;
//! use checkpoint::handler::BoxFuture;
//!
//! struct Greeter;
//!
//! impl Handler for Greeter {
//!     fn name(&self) -> &str { "greeter" }
//!     fn max_retries(&self) -> Option<u32> { Some(3) }
//!     fn consume<'a>(
//!         &'a self,
//!         message: &'a Message,
//!         _ctx: &'a mut Context<'_>,
//!     ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
//!         Box::pin(async move {
//!             let name = std::str::from_utf8(&message.payload).map_err(HandlerError::permanent)?;
//!             println!("hello, {name}");
//!             Ok(Outcome::ack(name, Utc::now()))
//!         })
//!     }
//! }
//! ```
//!
//! ## Backends
//! | URL | backend |
//! |---|---|
//! | `sqlite://path.db`, `sqlite:///abs/path.db`, `sqlite::memory:` | SQLite (bundled) |
//! | `postgres://user@host:5432/db` | PostgreSQL (pure-Rust client) |
//! | `mysql://user:pass@host:3306/db` | MySQL / MariaDB (pure-Rust client) |

pub mod engine;
pub mod error;
pub mod handler;
pub mod instrument;
pub mod message;
pub mod store;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::engine::{Backoff, Disposition, Engine, EngineError, RetryOutcome};
pub use crate::error::{Backend, StoreError};
pub use crate::handler::{Ack, Context, DecodeError, Handler, HandlerError, Outcome};
pub use crate::message::{Header, Message, Metadata, Origin, checksum};
pub use crate::store::Store;

/// The names a handler module needs: `use checkpoint::prelude::*;`.
pub mod prelude {
    pub use crate::handler::{Ack, Context, Handler, HandlerError, Outcome};
    pub use crate::message::{Message, Metadata};
    pub use chrono::{DateTime, Utc};
}
