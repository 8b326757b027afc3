//! librdkafka's in-process mock cluster (a real Kafka-protocol broker), a pipelined producer,
//! and listener helpers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A message to produce: partition, key, payload.
pub type Produced = (i32, String, Vec<u8>);

pub struct Cluster {
    /// The in-process broker; `None` for a broker in another process.
    pub mock: Option<MockCluster<'static, DefaultProducerContext>>,
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
        Self {
            mock: Some(mock),
            servers,
        }
    }

    /// A broker that runs elsewhere (another process).
    pub fn external(servers: String) -> Self {
        init_tracing();
        Self {
            mock: None,
            servers,
        }
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

    /// Produces `(partition, key, payload)` messages and waits for every delivery.
    pub async fn produce(&self, topic: &str, messages: &[Produced]) {
        let records = messages.iter().map(|(p, key, payload)| (*p, key, payload));
        checkpoint::testing::produce(&self.servers, topic, records, || {})
            .await
            .expect("produced");
    }

    /// Produces one message whose only header has the name `name`, as raw bytes. Kafka header
    /// names are arbitrary bytes, but rdkafka's safe API takes them as `&str`: this goes
    /// through librdkafka's C API to produce a name that is not UTF-8.
    #[allow(unsafe_code)]
    pub fn produce_with_raw_header(
        &self,
        topic: &str,
        partition: i32,
        payload: &[u8],
        name: &[u8],
        value: &[u8],
    ) {
        use rdkafka::bindings::{
            RD_KAFKA_MSG_F_COPY, rd_kafka_error_destroy, rd_kafka_error_string, rd_kafka_produceva,
            rd_kafka_vtype_t as Field, rd_kafka_vu_s__bindgen_ty_1 as Value,
            rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 as Bytes,
            rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 as HeaderField, rd_kafka_vu_t,
        };
        use rdkafka::producer::{BaseProducer, Producer};
        use std::ffi::{CStr, CString};

        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .create()
            .expect("producer");
        let topic = CString::new(topic).expect("topic without NUL");
        // librdkafka reads the header name up to its NUL.
        let name = CString::new(name).expect("header name without NUL");
        let field = |vtype, u| rd_kafka_vu_t { vtype, u };
        let fields = [
            field(
                Field::RD_KAFKA_VTYPE_TOPIC,
                Value {
                    cstr: topic.as_ptr(),
                },
            ),
            field(Field::RD_KAFKA_VTYPE_PARTITION, Value { i32_: partition }),
            field(
                Field::RD_KAFKA_VTYPE_MSGFLAGS,
                Value {
                    i: RD_KAFKA_MSG_F_COPY,
                },
            ),
            field(
                Field::RD_KAFKA_VTYPE_VALUE,
                Value {
                    mem: Bytes {
                        ptr: payload.as_ptr().cast_mut().cast(),
                        size: payload.len(),
                    },
                },
            ),
            field(
                Field::RD_KAFKA_VTYPE_HEADER,
                Value {
                    header: HeaderField {
                        name: name.as_ptr(),
                        val: value.as_ptr().cast(),
                        size: isize::try_from(value.len()).expect("small header value"),
                    },
                },
            ),
        ];
        // SAFETY: the client pointer is the live producer's; every pointer in `fields` points
        // into `topic`, `name`, `payload` or `value`, which outlive the call, with the length
        // librdkafka is told; RD_KAFKA_MSG_F_COPY makes librdkafka copy the payload, and it
        // copies the topic name and the header before returning.
        let error = unsafe {
            rd_kafka_produceva(
                producer.client().native_ptr(),
                fields.as_ptr(),
                fields.len(),
            )
        };
        if !error.is_null() {
            // SAFETY: a non-null result is an error object that is ours to read, then destroy.
            let text = unsafe {
                let text = CStr::from_ptr(rd_kafka_error_string(error))
                    .to_string_lossy()
                    .into_owned();
                rd_kafka_error_destroy(error);
                text
            };
            panic!("producing a message with a raw header name failed: {text}");
        }
        producer
            .flush(Duration::from_secs(10))
            .expect("the message with a raw header name delivered");
    }

    /// Number of messages in each partition (the high watermarks).
    pub fn high_watermarks(&self, topic: &str, partitions: i32) -> Vec<i64> {
        checkpoint::testing::watermarks(&self.servers, topic, partitions)
            .expect("watermarks")
            .into_iter()
            .map(|(_, high)| high)
            .collect()
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

// Shared by the listener suites: the workload and the exactly-once checks.

use super::TestDb;
use super::handlers::side_effects;
use checkpoint::testing::committed_offsets;
use std::collections::HashSet;

pub const TIMEOUT: Duration = Duration::from_secs(120);

/// `count` messages over `partitions`: every 20th repeats an earlier payload (a duplicate),
/// every 100th is not JSON (poison). Returns the messages, the unique good ids and the poison
/// count.
pub fn workload(count: usize, partitions: i32) -> (Vec<Produced>, HashSet<String>, usize) {
    let mut messages = Vec::with_capacity(count);
    let mut unique = HashSet::new();
    let mut poison = 0;
    for i in 0..count {
        let partition = i32::try_from(i).expect("small") % partitions;
        let payload = if i % 100 == 99 {
            poison += 1;
            format!("poison #{i}: not json").into_bytes()
        } else if i % 20 == 19 {
            format!(r#"{{"id":"order-{}"}}"#, i - 10).into_bytes()
        } else {
            unique.insert(format!("order-{i}"));
            format!(r#"{{"id":"order-{i}"}}"#).into_bytes()
        };
        messages.push((partition, format!("key-{}", i % 37), payload));
    }
    (messages, unique, poison)
}

pub async fn failures(db: &TestDb) -> i64 {
    db.store
        .count_failures(&Default::default())
        .await
        .expect("count failures")
}

pub async fn distinct_side_effects(db: &TestDb) -> i64 {
    use diesel::prelude::*;
    let mut pooled = db.store.conn().await.expect("conn");
    let tokens: Vec<String> = pooled
        .conn()
        .load(side_effects::table.select(side_effects::token))
        .await
        .expect("tokens");
    i64::try_from(tokens.into_iter().collect::<HashSet<_>>().len()).expect("small")
}

/// Every unique good message has exactly one side effect and one event, every poison message
/// one failure, and the group's committed offsets reach the end of every partition.
pub async fn assert_exactly_once(
    db: &TestDb,
    cluster: &Cluster,
    topic: &str,
    group: &str,
    unique: usize,
    poison: usize,
    partitions: i32,
) {
    let unique = i64::try_from(unique).expect("small");
    assert_eq!(
        db.event_count().await,
        unique,
        "one event row per unique message"
    );
    assert_eq!(
        db.total_side_effects().await,
        unique,
        "one side effect per unique message"
    );
    assert_eq!(
        distinct_side_effects(db).await,
        unique,
        "no message applied twice"
    );
    assert_eq!(
        failures(db).await,
        i64::try_from(poison).expect("small"),
        "one failure per poison message"
    );
    let ends: Vec<Option<i64>> = cluster
        .high_watermarks(topic, partitions)
        .into_iter()
        .map(Some)
        .collect();
    let committed = committed_offsets(
        &cluster.kafka(),
        topic,
        group,
        partitions,
        Duration::from_secs(10),
    )
    .expect("committed");
    assert_eq!(committed, ends, "every offset committed");
}

/// Waits until the group's committed offsets reach the end of every partition (after an
/// outage the group rejoins, gets redelivered what it had not committed, dedups it, commits).
pub async fn wait_for_commits(cluster: &Cluster, topic: &str, group: &str, partitions: i32) {
    let ends: Vec<Option<i64>> = cluster
        .high_watermarks(topic, partitions)
        .into_iter()
        .map(Some)
        .collect();
    wait_until(TIMEOUT, "every offset to be committed", || async {
        committed_offsets(
            &cluster.kafka(),
            topic,
            group,
            partitions,
            Duration::from_secs(10),
        )
        .ok()
        .as_ref()
            == Some(&ends)
    })
    .await;
}

pub async fn wait_for_all(db: &TestDb, unique: usize, poison: usize) {
    let (unique, poison) = (
        i64::try_from(unique).expect("small"),
        i64::try_from(poison).expect("small"),
    );
    wait_until(TIMEOUT, "every message to be settled", || async {
        db.event_count().await == unique && failures(db).await == poison
    })
    .await;
}
