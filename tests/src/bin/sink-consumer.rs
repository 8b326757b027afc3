//! A consumer process running one listener with the transactional [`Sink`] handler until
//! SIGINT/SIGTERM (clean shutdown, exit 0) or SIGKILL. Usage:
//! `sink-consumer BOOTSTRAP_SERVERS TOPIC GROUP DATABASE_URL`.

use std::sync::Arc;
use std::time::Duration;

use checkpoint::listener::{Listener, ListenerSpec};
use checkpoint::{Backoff, Engine, Store};
use checkpoint_tests::Sink;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [servers, topic, group, database] = args.as_slice() else {
        return Err("usage: sink-consumer BOOTSTRAP_SERVERS TOPIC GROUP DATABASE_URL".into());
    };
    let store = Store::connect(database)?;
    let spec = ListenerSpec::new(Arc::new(Sink), topic.as_str(), group.as_str())
        .max_concurrency(3)
        .backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ))
        .kafka("bootstrap.servers", servers.as_str())
        .kafka("session.timeout.ms", "3000")
        .kafka("heartbeat.interval.ms", "500")
        .kafka("auto.commit.interval.ms", "200");
    Listener::new(spec, Engine::new(store))
        .run(checkpoint::app::shutdown_signal())
        .await?;
    Ok(())
}
