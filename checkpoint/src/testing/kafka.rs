//! Kafka for a test or a tool run (the chaos harness, `checkpoint bench`, `demo` and
//! `dev-kafka`): librdkafka's mock cluster, kept alive in this process or in a child process,
//! or external brokers, with the run's topic created; and the one producer loop they all use.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;

/// Starting or reaching the brokers failed.
#[derive(Debug, thiserror::Error)]
#[error("kafka: {0}")]
pub struct BrokerError(String);

pub(crate) fn broker_err(error: impl std::fmt::Display) -> BrokerError {
    BrokerError(error.to_string())
}

/// Brokers for one run; a mock cluster lives as long as this value.
pub struct Brokers {
    _cluster: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    _process: Option<BrokerProcess>,
    /// Bootstrap servers.
    pub servers: String,
    /// What the brokers are, for reports.
    pub label: String,
    /// Partitions of the run's topic.
    pub partitions: i32,
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Brokers")
            .field("servers", &self.servers)
            .field("label", &self.label)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

/// The child process of [`Brokers::start`]'s `broker_exe`; killed when dropped.
#[derive(Debug)]
struct BrokerProcess(std::process::Child);

impl BrokerProcess {
    /// Starts `exe bench-broker` and reads the bootstrap servers it prints.
    fn start(
        exe: &std::path::Path,
        topic: &str,
        partitions: i32,
    ) -> Result<(Self, String), BrokerError> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let child = Command::new(exe)
            .args(["bench-broker", "--topic", topic, "--partitions"])
            .arg(partitions.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| {
                broker_err(format!(
                    "cannot start the broker process {}: {e}",
                    exe.display()
                ))
            })?;
        let mut process = Self(child);
        let mut line = String::new();
        if let Some(stdout) = process.0.stdout.take() {
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(broker_err)?;
        }
        let servers = line.trim().to_owned();
        if servers.is_empty() {
            return Err(broker_err(
                "the broker process exited without a bootstrap address",
            ));
        }
        Ok((process, servers))
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child side of a `broker_exe`: runs a mock cluster holding `topic` with `partitions`
/// partitions, prints its bootstrap servers on one line of stdout, and serves until stdin
/// closes (the parent exited or stopped it).
pub fn serve_broker(topic: &str, partitions: i32) -> Result<(), BrokerError> {
    use std::io::{Read, Write};
    let cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext> =
        MockCluster::new(1).map_err(broker_err)?;
    cluster
        .create_topic(topic, partitions, 1)
        .map_err(broker_err)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", cluster.bootstrap_servers()).map_err(broker_err)?;
    stdout.flush().map_err(broker_err)?;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    Ok(())
}

impl Brokers {
    /// `brokers` when given (creating `topic` there); else a mock cluster in a child process
    /// started as `broker_exe bench-broker --topic T --partitions N` (a process that calls
    /// [`serve_broker`]), or in this process without one.
    pub async fn start(
        brokers: Option<&str>,
        broker_exe: Option<&std::path::Path>,
        topic: &str,
        partitions: i32,
    ) -> Result<Self, BrokerError> {
        match (brokers, broker_exe) {
            (None, Some(exe)) => {
                let (process, servers) = BrokerProcess::start(exe, topic, partitions)?;
                Ok(Self {
                    _cluster: None,
                    _process: Some(process),
                    servers,
                    label: "mock cluster (librdkafka) in a child process".into(),
                    partitions,
                })
            }
            (None, None) => {
                let cluster = MockCluster::new(1).map_err(broker_err)?;
                cluster
                    .create_topic(topic, partitions, 1)
                    .map_err(broker_err)?;
                Ok(Self {
                    servers: cluster.bootstrap_servers(),
                    _cluster: Some(cluster),
                    _process: None,
                    label: "embedded mock cluster (librdkafka)".into(),
                    partitions,
                })
            }
            (Some(servers), _) => {
                use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
                let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", servers)
                    .create()
                    .map_err(broker_err)?;
                let created = admin
                    .create_topics(
                        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
                    )
                    .await
                    .map_err(broker_err)?;
                for result in created {
                    result.map_err(|(name, code)| broker_err(format!("create {name}: {code}")))?;
                }
                Ok(Self {
                    _cluster: None,
                    _process: None,
                    servers: servers.to_owned(),
                    label: servers.to_owned(),
                    partitions,
                })
            }
        }
    }
}

/// Deliveries [`produce`] keeps in flight at most, so memory stays flat however many
/// messages it sends.
const IN_FLIGHT: usize = 10_000;

/// Produces `records` (`(partition, key, payload)`) to `topic` at `servers` and waits for
/// every delivery, keeping at most 10,000 in flight; calls `delivered` once per acknowledged
/// delivery (a progress bar, say).
pub async fn produce<K, P>(
    servers: &str,
    topic: &str,
    records: impl IntoIterator<Item = (i32, K, P)>,
    mut delivered: impl FnMut(),
) -> Result<(), BrokerError>
where
    K: AsRef<[u8]>,
    P: AsRef<[u8]>,
{
    use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("batch.num.messages", "10000")
        .create()
        .map_err(broker_err)?;
    let settle = |delivery: DeliveryFuture| async move {
        delivery
            .await
            .map_err(|_| broker_err("a delivery was cancelled"))?
            .map(drop)
            .map_err(|(e, _)| broker_err(e))
    };
    let mut in_flight = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for (partition, key, payload) in records {
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(key.as_ref())
            .payload(payload.as_ref());
        in_flight.push_back(
            producer
                .send_result(record)
                .map_err(|(e, _)| broker_err(e))?,
        );
        if in_flight.len() >= IN_FLIGHT
            && let Some(delivery) = in_flight.pop_front()
        {
            settle(delivery).await?;
            delivered();
        }
    }
    while let Some(delivery) = in_flight.pop_front() {
        settle(delivery).await?;
        delivered();
    }
    Ok(())
}

/// The `(low, high)` watermarks of each partition of `topic`, partition 0 first. Blocks for
/// up to 10 s per partition: call it from a blocking thread in async code.
pub fn watermarks(
    servers: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<(i64, i64)>, BrokerError> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .map_err(broker_err)?;
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(broker_err)
        })
        .collect()
}

/// Seeks nothing, commits nothing: reads the committed offset of every partition of `topic`
/// for `group_id` (tests and tooling). The returned offsets are owned values, so no
/// librdkafka list outlives the temporary consumer.
pub fn committed_offsets(
    kafka: &std::collections::BTreeMap<String, String>,
    topic: &str,
    group_id: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Option<i64>>, rdkafka::error::KafkaError> {
    let mut config = ClientConfig::new();
    for (key, value) in kafka {
        config.set(key, value);
    }
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false");
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = config.create()?;
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let offsets = {
        let committed = consumer.committed_offsets(list, timeout)?;
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some(o),
                _ => None,
            })
            .collect()
    };
    drop(consumer);
    Ok(offsets)
}
