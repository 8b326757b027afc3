//! Test fixtures (feature `test-util`): Kafka for tests and tools ([`Brokers`], [`produce`],
//! [`serve_broker`]), and a chaos harness that crash-tests *your* handler by killing a real
//! consumer process at every crash point of the algorithm and counting what your side
//! effects did.
//!
//! Two halves, in two processes:
//! - **The consumer** is a binary of yours (or your test binary run in a mode of its own).
//!   It builds its handler and store as in production and hands them to
//!   [`ChaosConsumer::run`]. Started by the harness, [`ChaosConsumer::from_env`] finds the
//!   broker, topic, group and database there, and the one [`CrashPoint`] to die at: the n-th
//!   time the process reaches it, it kills itself with SIGKILL. No destructor runs, nothing is
//!   flushed, exactly as with `kill -9` or the OOM killer.
//! - **The harness**, [`Chaos`], starts the consumer again and again, each time armed at a
//!   random point drawn from a fixed seed, until it has been killed the number of times you
//!   asked. It produces your messages (to librdkafka's mock cluster, or to your brokers) in
//!   slices, one before each round, so every armed consumer has work in flight when its point
//!   comes. For the rebalance point it starts a second consumer in the group once the first
//!   has made progress, so the first one dies while its partitions are being revoked. A
//!   last, unarmed consumer then finishes the stream. The [`ChaosReport`] counts, per expected side effect, how often it happened:
//!   twice or more is a duplicate, never is a loss.
//!
//! ```no_run
//! use std::sync::Arc;
//! use checkpoint::testing::{Chaos, ChaosConsumer, ChaosMessage, SideEffects};
//! use checkpoint::{Engine, Store};
//! # struct MyHandler;
//! # impl checkpoint::Handler for MyHandler {
//! #     fn name(&self) -> &str { "mine" }
//! #     fn consume<'a>(&'a self, _: &'a checkpoint::Message, _: &'a mut checkpoint::Context<'_>)
//! #         -> checkpoint::handler::BoxFuture<'a, Result<checkpoint::Outcome, checkpoint::HandlerError>> {
//! #         Box::pin(async { Ok(checkpoint::Outcome::ack("id", chrono::Utc::now())) })
//! #     }
//! # }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // In the consumer binary: run as the harness says, when it says so.
//! if let Some(consumer) = ChaosConsumer::from_env()? {
//!     let store = Store::connect(consumer.database())?;
//!     let spec = consumer.spec(Arc::new(MyHandler));
//!     consumer.run(spec, Engine::new(store)).await?;
//!     return Ok(());
//! }
//!
//! // In a test: 20 kills against PostgreSQL, counted from the `shipments` table.
//! let messages = (0..2_000).map(|i| {
//!     ChaosMessage::new(format!("order-{i}"), format!(r#"{{"id":"order-{i}"}}"#), format!("order-{i}"))
//! });
//! let report = Chaos::new(
//!     "postgres://postgres@127.0.0.1:5432/test",
//!     || std::process::Command::new("target/debug/my-consumer"),
//!     SideEffects::table("shipments", "order_id")?,
//! )
//! .messages(messages)
//! .kills(20)
//! .seed(7)
//! .run()
//! .await?;
//! assert!(report.duplicates.is_empty() && report.lost.is_empty(), "{report}");
//! # Ok(())
//! # }
//! ```

mod consumer;
mod harness;
mod kafka;
mod outcome;

pub use crate::crash::CrashPoint;
pub use consumer::ChaosConsumer;
pub(crate) use consumer::reached;
pub use harness::Chaos;
pub use kafka::{BrokerError, Brokers, committed_offsets, produce, serve_broker, watermarks};
pub use outcome::{ChaosError, ChaosMessage, ChaosReport, SideEffects};

/// The environment through which the harness tells a consumer process what to do.
pub mod env {
    /// Bootstrap servers of the brokers.
    pub const BROKERS: &str = "CHECKPOINT_CHAOS_BROKERS";
    /// The topic to consume.
    pub const TOPIC: &str = "CHECKPOINT_CHAOS_TOPIC";
    /// The consumer group.
    pub const GROUP: &str = "CHECKPOINT_CHAOS_GROUP";
    /// The checkpoint database URL.
    pub const DATABASE: &str = "CHECKPOINT_CHAOS_DATABASE";
    /// `<point>:<n>`: die the n-th time the process reaches the point (absent: never).
    pub const CRASH: &str = "CHECKPOINT_CHAOS_CRASH";
    /// A file the process writes the point's name into just before it kills itself.
    pub const MARK: &str = "CHECKPOINT_CHAOS_MARK";
}
