//! A consumer process running one listener until SIGINT/SIGTERM (clean shutdown: it prints
//! `SETTLED <n>` and exits 0) or SIGKILL. Usage:
//! `sink-consumer BOOTSTRAP_SERVERS TOPIC GROUP DATABASE_URL [effects DELAY_MS [HANG_ON_ID]]`:
//! by default the transactional [`Sink`]; with `effects`, the per-message [`Effects`] handler
//! (side effect outside the transaction, `DELAY_MS` per order, `max_retries = 2`).
//!
//! `CHECKPOINT_TEST_CONSUMER_LOG=<filter>` (e.g. `checkpoint=debug`) turns its logs on: to
//! `<pid>.log` in the folder `CHECKPOINT_TEST_CONSUMER_LOG_DIR` names, else to standard error.

use std::sync::Arc;
use std::time::Duration;

use checkpoint::Handler;
use checkpoint::listener::{Listener, ListenerSpec};
use checkpoint::{Backoff, Engine, Store};
use checkpoint_tests::{Effects, Sink};

const USAGE: &str = "usage: sink-consumer BOOTSTRAP_SERVERS TOPIC GROUP DATABASE_URL [effects DELAY_MS [HANG_ON_ID]]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The suites remove RUST_LOG from their children; this variable turns their logs on.
    // Each process writes its own file, `<pid>.log`, in CHECKPOINT_TEST_CONSUMER_LOG_DIR
    // (default: standard error).
    if let Ok(filter) = std::env::var("CHECKPOINT_TEST_CONSUMER_LOG") {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter));
        match std::env::var_os("CHECKPOINT_TEST_CONSUMER_LOG_DIR") {
            Some(dir) => {
                let path = std::path::Path::new(&dir).join(format!("{}.log", std::process::id()));
                let file = std::fs::File::create(path)?;
                subscriber.with_writer(std::sync::Mutex::new(file)).init();
            }
            None => subscriber.with_writer(std::io::stderr).init(),
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (servers, topic, group, database) = match args.as_slice() {
        [servers, topic, group, database, ..] => (servers, topic, group, database),
        _ => return Err(USAGE.into()),
    };
    let store = Store::connect(database)?;
    let handler: Arc<dyn Handler> = match args.get(4).map(String::as_str) {
        None => Arc::new(Sink),
        Some("effects") => Arc::new(Effects {
            store: store.clone(),
            delay: Duration::from_millis(args.get(5).ok_or(USAGE)?.parse()?),
            hang_on: args.get(6).cloned(),
            max_retries: Some(2),
        }),
        Some(_) => return Err(USAGE.into()),
    };
    let spec = ListenerSpec::new(handler, topic.as_str(), group.as_str())
        .max_concurrency(6)
        .backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ))
        .kafka("bootstrap.servers", servers.as_str())
        .kafka("session.timeout.ms", "3000")
        .kafka("heartbeat.interval.ms", "500")
        .kafka("auto.commit.interval.ms", "200");
    let listener = Listener::new(spec, Engine::new(store));
    let stats = listener.stats();
    listener.run(checkpoint::app::shutdown_signal()).await?;
    println!("SETTLED {}", stats.snapshot().settled());
    Ok(())
}
