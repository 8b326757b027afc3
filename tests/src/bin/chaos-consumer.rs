//! The consumer the chaos suite's harness starts and kills, written as a user would write
//! theirs: `chaos-consumer per-message|transactional|batch|batch-one-by-one` runs the suites'
//! own handlers through [`ChaosConsumer`] ([`Effects`] per message, [`Sink`] in the
//! transactional modes, batches of 50 in the batch modes: through its `consume_batch` in
//! `batch`, one message at a time in `batch-one-by-one`).

use std::sync::Arc;
use std::time::Duration;

use checkpoint::Handler;
use checkpoint::testing::ChaosConsumer;
use checkpoint::{Engine, Store};
use checkpoint_tests::{Effects, OneByOne, Sink};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let Some(consumer) = ChaosConsumer::from_env()? else {
        return Err("chaos-consumer is started by the chaos harness".into());
    };
    let store = Store::connect(consumer.database())?;
    let handler: Arc<dyn Handler> = match mode.as_str() {
        "per-message" => Arc::new(Effects {
            store: store.clone(),
            delay: Duration::ZERO,
            hang_on: None,
            max_retries: Some(10),
        }),
        "transactional" | "batch" => Arc::new(Sink),
        "batch-one-by-one" => Arc::new(OneByOne(Sink)),
        other => return Err(format!("unknown mode {other:?}").into()),
    };
    let mut spec = consumer.spec(handler).max_concurrency(3);
    if mode.starts_with("batch") {
        spec = spec.batch_size(50);
    }
    consumer.run(spec, Engine::new(store)).await?;
    Ok(())
}
