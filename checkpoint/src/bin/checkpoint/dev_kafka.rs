//! `checkpoint dev-kafka`: librdkafka's mock cluster served as a local Kafka-protocol broker
//! on a fixed port, for developing an application on a machine with no Kafka installed.
//!
//! The mock cluster listens on a port of its own choosing; a plain TCP forwarder listens on
//! the requested port, and the cluster advertises that port in its metadata, so every
//! connection a client makes after bootstrap goes through the forwarder too.

use std::net::SocketAddr;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer as _};
use tokio::net::{TcpListener, TcpStream};

/// A topic to create: `NAME:PARTITIONS` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicArg {
    name: String,
    partitions: i32,
}

impl std::str::FromStr for TopicArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, partitions) = text.rsplit_once(':').unwrap_or((text, "1"));
        let partitions: i32 = partitions
            .parse()
            .ok()
            .filter(|p| (1..=1000).contains(p))
            .ok_or_else(|| format!("`{text}`: partitions must be a whole number from 1 to 1000"))?;
        if name.is_empty() {
            return Err(format!("`{text}`: the topic name is empty"));
        }
        Ok(Self {
            name: name.to_owned(),
            partitions,
        })
    }
}

/// Why `dev-kafka` could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DevKafkaError {
    /// The mock cluster could not start or create a topic.
    #[error("mock cluster: {0}")]
    Cluster(#[from] rdkafka::error::KafkaError),
    /// The signal handlers could not be installed.
    #[error("cannot handle SIGINT/SIGTERM: {0}")]
    Signals(#[source] std::io::Error),
    /// The port is taken or not ours to bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Serves until SIGINT (Ctrl-C) or SIGTERM: prints the bootstrap address first, once the
/// signal handlers are in place, so a signal right after the banner still ends it cleanly.
pub(crate) async fn run(addr: SocketAddr, topics: &[TopicArg]) -> Result<(), DevKafkaError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DevKafkaError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(DevKafkaError::Signals)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DevKafkaError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| DevKafkaError::Bind { addr, source })?;
    // The client owns the mock cluster for as long as it lives.
    let owner: BaseProducer = ClientConfig::new()
        .set("test.mock.num.brokers", "1")
        .create()?;
    let cluster = owner
        .client()
        .mock_cluster()
        .ok_or_else(|| rdkafka::error::KafkaError::ClientCreation("no mock cluster".into()))?;
    for topic in topics {
        cluster.create_topic(&topic.name, topic.partitions, 1)?;
    }
    let upstream = cluster.bootstrap_servers();
    advertise(&owner, &local);
    println!("Kafka (librdkafka mock cluster) on {local}");
    for topic in topics {
        println!(
            "  topic {} with {} partition(s)",
            topic.name, topic.partitions
        );
    }
    println!("bootstrap.servers = \"{local}\"; messages are kept in memory until Ctrl-C");
    tokio::select! {
        () = forward(listener, upstream) => {}
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// Forwards every connection on `listener` to `upstream`, each in a task of its own.
async fn forward(listener: TcpListener, upstream: String) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            match TcpStream::connect(&upstream).await {
                Ok(mut broker) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                }
                Err(error) => {
                    eprintln!("dev-kafka: cannot reach the mock cluster at {upstream}: {error}");
                }
            }
        });
    }
}

/// Makes broker 1 of `owner`'s mock cluster advertise `addr` in metadata and coordinator
/// answers. rdkafka has no safe wrapper for this librdkafka call.
#[allow(unsafe_code)]
fn advertise(owner: &BaseProducer, addr: &SocketAddr) {
    let Ok(host) = std::ffi::CString::new(addr.ip().to_string()) else {
        return;
    };
    // SAFETY: `owner` is a live client created with `test.mock.num.brokers`, so it owns a mock
    // cluster for as long as it lives, and `owner` outlives this call; the call takes the
    // cluster's lock and copies `host`, a NUL-terminated string alive across the call.
    unsafe {
        let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
        if !cluster.is_null() {
            rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
                cluster,
                1,
                host.as_ptr(),
                i32::from(addr.port()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_with_partitions() {
        assert_eq!(
            "orders:3".parse(),
            Ok(TopicArg {
                name: "orders".into(),
                partitions: 3
            })
        );
        assert_eq!("orders".parse::<TopicArg>().map(|t| t.partitions), Ok(1));
        assert!("orders:0".parse::<TopicArg>().is_err());
        assert!(":3".parse::<TopicArg>().is_err());
        assert!("orders:x".parse::<TopicArg>().is_err());
    }
}
