//! The Kafka modes: raw consumption, the naive check-then-insert pattern, and the real
//! listener, each with the progress watchdog that fails a stalled mode.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn kafka_err(error: impl std::fmt::Display) -> BenchError {
    BenchError::Kafka(error.to_string())
}

/// A consumer of `topic` in `group` on `kafka`, from the start.
pub(super) fn subscribe(
    kafka: &Kafka,
    topic: &str,
    group: &str,
) -> Result<StreamConsumer, BenchError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.servers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest");
    for (key, value) in CONSUMER_SETTINGS {
        config.set(key, value);
    }
    let consumer: StreamConsumer = config.create().map_err(kafka_err)?;
    consumer.subscribe(&[topic]).map_err(kafka_err)?;
    Ok(consumer)
}

/// Produces `count` messages round-robin over the partitions.
pub(super) async fn produce(
    kafka: &Kafka,
    topic: &str,
    run: &str,
    count: usize,
    bar: &ProgressBar,
) -> Result<(), BenchError> {
    let partitions = partition_count(kafka.partitions);
    let records = (0..count).map(|i| {
        let partition = i32::try_from(i % partitions).unwrap_or(0);
        (partition, format!("order-{i}"), payload(run, i))
    });
    checkpoint::testing::produce(&kafka.servers, topic, records, || bar.inc(1))
        .await
        .map_err(kafka_err)
}

/// Checks that the broker still holds every produced message.
pub(super) fn check_held(kafka: &Kafka, topic: &str, produced: u64) -> Result<(), BenchError> {
    let marks = checkpoint::testing::watermarks(&kafka.servers, topic, kafka.partitions)
        .map_err(kafka_err)?;
    let held = marks
        .iter()
        .map(|(low, high)| u64::try_from(high - low).unwrap_or(0))
        .sum();
    let first: Vec<i64> = marks.iter().map(|(low, _)| *low).collect();
    if held != produced || first.iter().any(|low| *low != 0) {
        return Err(BenchError::BrokerDropped {
            produced,
            held,
            first,
        });
    }
    Ok(())
}

/// How long a mode may go without progress before it counts as stalled.
pub(super) const STALL: Duration = Duration::from_secs(60);

/// Tracks progress; errors when nothing moved for [`STALL`].
pub(super) struct Progress {
    pub(super) last: u64,
    pub(super) moved: Instant,
}

impl Progress {
    /// The next message of `consumer`; fails when none came for [`STALL`].
    pub(super) async fn next_message<'c>(
        &mut self,
        consumer: &'c StreamConsumer,
        done: u64,
        expected: u64,
        mode: Mode,
        database: &str,
    ) -> Result<rdkafka::message::BorrowedMessage<'c>, BenchError> {
        loop {
            match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
                Ok(message) => return message.map_err(kafka_err),
                Err(_) => self.check(done, expected, mode, database)?,
            }
        }
    }

    pub(super) fn new() -> Self {
        Self {
            last: 0,
            moved: Instant::now(),
        }
    }

    pub(super) fn check(
        &mut self,
        done: u64,
        expected: u64,
        mode: Mode,
        database: &str,
    ) -> Result<(), BenchError> {
        if done != self.last {
            self.last = done;
            self.moved = Instant::now();
        } else if self.moved.elapsed() > STALL {
            return Err(BenchError::Stalled {
                mode,
                database: database.to_owned(),
                done,
                expected,
                waited: self.moved.elapsed(),
            });
        }
        Ok(())
    }
}

/// `raw`: receive every message, check each partition's offsets are contiguous, nothing else.
pub(super) async fn raw(
    kafka: &Kafka,
    topic: &str,
    group: &str,
    expected: u64,
    bar: &ProgressBar,
) -> Result<Span, BenchError> {
    let consumer = subscribe(kafka, topic, group)?;
    let mut next = vec![0i64; partition_count(kafka.partitions)];
    let mut received = 0u64;
    let mut started = None;
    let mut progress = Progress::new();
    while received < expected {
        let message = progress
            .next_message(&consumer, received, expected, Mode::Raw, "-")
            .await?;
        started.get_or_insert_with(Stopwatch::start);
        let slot = usize::try_from(message.partition())
            .ok()
            .and_then(|p| next.get_mut(p));
        match slot {
            Some(next) if *next == message.offset() => *next += 1,
            _ => {
                return Err(BenchError::Verification {
                    mode: Mode::Raw,
                    database: "-".into(),
                    what: format!(
                        "partition {} offset {} out of order (expected {:?})",
                        message.partition(),
                        message.offset(),
                        next
                    ),
                });
            }
        }
        received += 1;
        if received.is_multiple_of(1024) {
            bar.set_position(received);
        }
    }
    Ok(span_of(started))
}

/// A message as `naive`'s workers take it.
pub(super) struct Received {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Vec<u8>,
}

/// `naive`: the original's pattern, two autocommitted round trips per message (a `SELECT`
/// whether it exists, then an `INSERT`), on as many connections as the listener modes have
/// partitions in flight, each serving its share of the partitions in order.
pub(super) struct Naive<'a> {
    pub(super) kafka: &'a Kafka,
    pub(super) db: &'a Database,
    pub(super) topic: &'a str,
    pub(super) group: &'a str,
    pub(super) expected: u64,
    pub(super) bar: &'a ProgressBar,
}

impl Naive<'_> {
    pub(super) async fn run(&self, connections: usize) -> Result<Span, BenchError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let consumer = subscribe(self.kafka, self.topic, self.group)?;
        let done = AtomicU64::new(0);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..connections)
            .map(|_| tokio::sync::mpsc::channel::<Received>(1024))
            .unzip();
        let mut started = None;
        let receive = async {
            let mut received = 0u64;
            let mut progress = Progress::new();
            while received < self.expected {
                let message = progress
                    .next_message(
                        &consumer,
                        done.load(Ordering::Relaxed),
                        self.expected,
                        Mode::Naive,
                        &self.db.label,
                    )
                    .await?;
                started.get_or_insert_with(Stopwatch::start);
                let share = usize::try_from(message.partition()).unwrap_or(0) % connections;
                let item = Received {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                };
                let sent = match senders.get(share) {
                    Some(sender) => tokio::time::timeout(STALL, sender.send(item)).await,
                    None => Ok(Ok(())),
                };
                if !matches!(sent, Ok(Ok(()))) {
                    return Err(BenchError::Stalled {
                        mode: Mode::Naive,
                        database: self.db.label.clone(),
                        done: done.load(Ordering::Relaxed),
                        expected: self.expected,
                        waited: STALL,
                    });
                }
                received += 1;
            }
            drop(senders);
            Ok(())
        };
        let work = futures_util::future::try_join_all(
            receivers.into_iter().map(|inbox| self.serve(inbox, &done)),
        );
        let (received, served) = tokio::join!(receive, work);
        received?;
        served?;
        Ok(span_of(started))
    }

    /// One connection's share: check, then insert, message by message.
    pub(super) async fn serve(
        &self,
        mut inbox: tokio::sync::mpsc::Receiver<Received>,
        done: &std::sync::atomic::AtomicU64,
    ) -> Result<(), BenchError> {
        use std::sync::atomic::Ordering;
        let db = self.db;
        let mut pooled = db.store.conn().await.map_err(|e| db.error(e))?;
        let mut conn = pooled.conn();
        while let Some(message) = inbox.recv().await {
            let sum = checksum(&message.payload);
            let key = DedupKey {
                topic: self.topic,
                group_id: self.group,
                checksum: &sum,
            };
            if !conn.event_exists(key).await.map_err(|e| db.error(e))? {
                let order: BenchOrder = serde_json::from_slice(&message.payload).map_err(|e| {
                    BenchError::Verification {
                        mode: Mode::Naive,
                        database: db.label.clone(),
                        what: format!("payload is not an order: {e}"),
                    }
                })?;
                let row = NewEvent {
                    topic: self.topic,
                    group_id: self.group,
                    partition: message.partition,
                    offset: message.offset,
                    key: message.key.as_deref(),
                    checksum: &sum,
                    entity_id: Some(&order.id),
                    event_time: Some(order.placed_at.naive_utc()),
                    event_type: Some(&order.kind),
                    event_version: None,
                    payload: &message.payload,
                    created_at: Some(Utc::now().naive_utc()),
                };
                conn.insert_event(&row).await.map_err(|e| db.error(e))?;
            }
            let total = done.fetch_add(1, Ordering::Relaxed) + 1;
            if total.is_multiple_of(256) {
                self.bar.set_position(total);
            }
        }
        Ok(())
    }
}

pub(super) fn listener_spec(
    kafka: &Kafka,
    mode: Mode,
    topic: &str,
    group: &str,
    options: &BenchOptions,
) -> ListenerSpec {
    let handler: Arc<dyn Handler> = if mode.transactional() {
        Arc::new(BenchEffects)
    } else {
        Arc::new(BenchOrders)
    };
    let mut spec = ListenerSpec::new(handler, topic, group)
        .batch_size(if mode.batched() {
            options.batch_size.max(1)
        } else {
            1
        })
        .max_concurrency(options.concurrency.max(1))
        .kafka("bootstrap.servers", kafka.servers.clone());
    for (key, value) in CONSUMER_SETTINGS {
        spec = spec.kafka(key, value);
    }
    spec
}

/// `per-message`, `transactional` and `batch`: the real listener and engine.
pub(super) async fn listen(
    spec: ListenerSpec,
    db: &Database,
    mode: Mode,
    expected: u64,
    bar: &ProgressBar,
) -> Result<Span, BenchError> {
    let listener = Listener::new(spec, Engine::new(db.store.clone()));
    let stats: Arc<ListenerStats> = listener.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listener.run(async {
        let _ = stopped.await;
    }));
    let mut started = None;
    let mut progress = Progress::new();
    let outcome = loop {
        let snapshot = stats.snapshot();
        if snapshot.received > 0 {
            started.get_or_insert_with(Stopwatch::start);
        }
        bar.set_position(snapshot.settled());
        if snapshot.settled() >= expected {
            break Ok(snapshot);
        }
        if task.is_finished() {
            break Err(kafka_err("the listener stopped early"));
        }
        if let Err(error) = progress.check(snapshot.settled(), expected, mode, &db.label) {
            break Err(error);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let span = span_of(started);
    let _ = stop.send(());
    match task.await {
        Ok(result) => result.map_err(kafka_err)?,
        Err(join) => return Err(kafka_err(join)),
    }
    let snapshot = outcome?;
    if snapshot.acknowledged != expected || snapshot.settled() != expected {
        return Err(BenchError::Verification {
            mode,
            database: db.label.clone(),
            what: format!("listener counters {snapshot:?} for {expected} messages"),
        });
    }
    Ok(span)
}
