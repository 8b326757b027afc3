//! librdkafka's in-process mock cluster (a real Kafka-protocol broker), a pipelined producer,
//! and listener helpers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};

/// A message to produce: partition, key, payload.
pub type Produced = (i32, String, Vec<u8>);

pub struct Cluster {
    pub mock: MockCluster<'static, DefaultProducerContext>,
    pub servers: String,
}

impl Cluster {
    /// A one-broker cluster with `topic` created with `partitions` partitions.
    pub fn new(topic: &str, partitions: i32) -> Self {
        init_tracing();
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic(topic, partitions, 1)
            .expect("create topic");
        let servers = mock.bootstrap_servers();
        Self { mock, servers }
    }

    /// librdkafka properties for a test consumer: fast group joins and failure detection.
    pub fn kafka(&self) -> BTreeMap<String, String> {
        [
            ("bootstrap.servers", self.servers.as_str()),
            ("session.timeout.ms", "3000"),
            ("heartbeat.interval.ms", "500"),
            ("auto.commit.interval.ms", "200"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Produces `(partition, key, payload)` messages, all sends in flight at once.
    pub async fn produce(&self, topic: &str, messages: &[Produced]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create()
            .expect("producer");
        let mut deliveries = Vec::with_capacity(messages.len());
        for (partition, key, payload) in messages {
            let record = FutureRecord::to(topic)
                .partition(*partition)
                .key(key)
                .payload(payload);
            deliveries.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("enqueue"),
            );
        }
        for delivery in deliveries {
            delivery.await.expect("delivery").expect("delivered");
        }
    }

    /// Number of messages in each partition (the high watermarks).
    pub fn high_watermarks(&self, topic: &str, partitions: i32) -> Vec<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .create()
            .expect("consumer");
        let marks = (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect();
        drop(consumer);
        marks
    }
}

/// Polls `done` every 50 ms until it is true; panics after `timeout` with `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=checkpoint=debug`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
