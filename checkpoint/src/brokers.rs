//! Kafka for a tool run (`checkpoint bench`, the chaos harness): librdkafka's mock cluster,
//! kept alive in this process or in a child process, or external brokers, with the run's
//! topic created.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;

/// Starting or reaching the brokers failed.
#[derive(Debug, thiserror::Error)]
#[error("kafka: {0}")]
pub struct BrokerError(String);

fn broker_err(error: impl std::fmt::Display) -> BrokerError {
    BrokerError(error.to_string())
}

/// Brokers for one run; a mock cluster lives as long as this value.
pub(crate) struct Brokers {
    _cluster: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    _process: Option<BrokerProcess>,
    /// Bootstrap servers.
    pub(crate) servers: String,
    /// What the brokers are, for reports.
    pub(crate) label: String,
    /// Partitions of the run's topic.
    pub(crate) partitions: i32,
}

/// The child process of [`Brokers::start`]'s `broker_exe`; killed when dropped.
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
    /// started as `broker_exe bench-broker`, or in this process without one.
    pub(crate) async fn start(
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
