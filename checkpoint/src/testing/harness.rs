//! The harness half: produces the messages, starts consumer processes armed at random crash
//! points until they have died the asked number of times, lets an unarmed consumer finish,
//! then counts the side effects.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::env;
use super::kafka::Brokers;
use super::kafka::committed_offsets;
use super::outcome::{ChaosError, ChaosMessage, ChaosReport, SideEffects};
use crate::crash::CrashPoint;
use crate::store::{ListQuery, Store};

/// How long one armed consumer may run before the harness stops it without a kill.
const ROUND_LIMIT: Duration = Duration::from_secs(90);
/// How long the last, unarmed consumer may take to finish the stream.
const FINISH_LIMIT: Duration = Duration::from_secs(240);
/// How long a consumer may take to exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(60);
/// How often the harness looks at the processes.
const TICK: Duration = Duration::from_millis(100);
/// How often it asks Kafka for the committed offsets.
const COMMITS_EVERY: Duration = Duration::from_millis(500);

/// A chaos run: see the [module documentation](super).
pub struct Chaos {
    database: String,
    consumer: Box<dyn Fn() -> Command + Send + Sync>,
    effects: SideEffects,
    messages: Vec<ChaosMessage>,
    kills: usize,
    seed: u64,
    points: Vec<CrashPoint>,
    brokers: Option<String>,
    topic: String,
    group: String,
    partitions: i32,
}

impl std::fmt::Debug for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaos")
            .field("effects", &self.effects)
            .field("messages", &self.messages.len())
            .field("kills", &self.kills)
            .field("seed", &self.seed)
            .field("points", &self.points)
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Chaos {
    /// A run against `database`, starting consumers with `consumer` (a fresh [`Command`] each
    /// time; the harness adds the environment of [`super::env`]) and counting `effects`.
    /// Defaults: 20 kills at every crash point, seed 1, 3 partitions, librdkafka's mock
    /// cluster in this process, a topic and a group unique to the run.
    pub fn new(
        database: impl Into<String>,
        consumer: impl Fn() -> Command + Send + Sync + 'static,
        effects: SideEffects,
    ) -> Self {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self {
            database: database.into(),
            consumer: Box::new(consumer),
            effects,
            messages: Vec::new(),
            kills: 20,
            seed: 1,
            points: CrashPoint::ALL.to_vec(),
            brokers: None,
            topic: format!("chaos-{stamp}-{}", std::process::id()),
            group: format!("chaos-{stamp}-{}", std::process::id()),
            partitions: 3,
        }
    }

    /// The workload, produced round-robin over the partitions.
    pub fn messages(mut self, messages: impl IntoIterator<Item = ChaosMessage>) -> Self {
        self.messages.extend(messages);
        self
    }

    /// How many times to kill the consumer.
    pub fn kills(mut self, kills: usize) -> Self {
        self.kills = kills;
        self
    }

    /// The seed the crash points and their arrivals are drawn from.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Only these crash points.
    pub fn points(mut self, points: impl IntoIterator<Item = CrashPoint>) -> Self {
        self.points = points.into_iter().collect();
        self
    }

    /// External brokers instead of the mock cluster (the topic is created there).
    pub fn brokers(mut self, servers: impl Into<String>) -> Self {
        self.brokers = Some(servers.into());
        self
    }

    /// The topic: a new one (on external brokers the harness creates it).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// The consumer group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Partitions of the topic.
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Runs it: produce, kill `kills` times, finish, count. Fails when fewer kills landed
    /// than asked (the report is in the error), so a consumer that never arms its crash point
    /// cannot pass as a clean run.
    pub async fn run(self) -> Result<ChaosReport, ChaosError> {
        let started = Instant::now();
        if self.messages.is_empty() || self.points.is_empty() || self.partitions < 1 {
            return Err(ChaosError::Invalid(
                "it needs messages, crash points and at least one partition".to_owned(),
            ));
        }
        let mut expected: HashMap<&str, usize> = HashMap::with_capacity(self.messages.len());
        for message in &self.messages {
            if expected.insert(message.effect.as_str(), 0).is_some() {
                return Err(ChaosError::Invalid(format!(
                    "effect {:?} belongs to two messages; each must be unique",
                    message.effect
                )));
            }
        }
        let store = Store::connect(&self.database)?;
        // Also proves the listing works before anything starts.
        if let Some(stale) = self
            .effects
            .read(&store)
            .await?
            .iter()
            .find(|e| expected.contains_key(e.as_str()))
        {
            return Err(ChaosError::Invalid(format!(
                "effect {stale:?} is already there before the run; start from a clean table"
            )));
        }
        let brokers =
            Brokers::start(self.brokers.as_deref(), None, &self.topic, self.partitions).await?;
        let scratch = Scratch::new()?;
        let mut run = Run {
            chaos: &self,
            servers: &brokers.servers,
            ends: vec![0; usize::try_from(self.partitions).unwrap_or(1)],
            scratch: &scratch,
            started: std::cell::Cell::new(0),
        };

        // The workload is fed in slices, one per round and the last to the unarmed consumer,
        // so that every armed consumer has fresh messages in flight when its point comes
        // (the mock cluster's group joins take seconds, long enough to drain a whole stream).
        // Arrivals are drawn from the first half of a slice.
        let size = self
            .messages
            .len()
            .div_ceil(self.kills.saturating_add(1))
            .max(1);
        let mut slices = self.messages.chunks(size).zip((0..).step_by(size));
        let most = u64::try_from(size / 2).unwrap_or(1).max(1);
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let mut kills: BTreeMap<CrashPoint, usize> = BTreeMap::new();
        let mut rounds_without_kill = 0;
        let mut round = 0;
        while kills.values().sum::<usize>() < self.kills && round < self.kills.saturating_mul(2) {
            round += 1;
            if let Some((slice, first)) = slices.next() {
                run.feed(slice, first).await?;
            } else if run.finished().await? {
                break;
            }
            let point = self.points[rng.usize(..self.points.len())];
            let at = if point == CrashPoint::Rebalance {
                1
            } else {
                rng.u64(1..=most)
            };
            if run.round(round, point, at, &store).await? {
                *kills.entry(point).or_default() += 1;
            } else {
                rounds_without_kill += 1;
            }
        }
        for (slice, first) in slices {
            run.feed(slice, first).await?;
        }
        run.finish().await?;

        for effect in self.effects.read(&store).await? {
            if let Some(n) = expected.get_mut(effect.as_str()) {
                *n += 1;
            }
        }
        let duplicates = expected
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(effect, n)| ((*effect).to_owned(), *n))
            .collect();
        let mut lost: Vec<String> = expected
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(effect, _)| (*effect).to_owned())
            .collect();
        lost.sort();
        let failure_rows = store
            .count_failures(&ListQuery {
                topic: Some(self.topic.clone()),
                group_id: Some(self.group.clone()),
                ..ListQuery::default()
            })
            .await?;
        let report = ChaosReport {
            messages: self.messages.len(),
            kills,
            rounds_without_kill,
            duplicates,
            lost,
            failure_rows,
            seed: self.seed,
            elapsed: started.elapsed(),
        };
        if report.total_kills() < self.kills {
            return Err(ChaosError::TooFewKills {
                asked: self.kills,
                report: Box::new(report),
            });
        }
        Ok(report)
    }
}

/// A scratch directory for the crash marks, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, ChaosError> {
        let dir = std::env::temp_dir().join(format!(
            "checkpoint-chaos-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).map_err(ChaosError::Scratch)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One run's fixed parts.
struct Run<'a> {
    chaos: &'a Chaos,
    servers: &'a str,
    ends: Vec<i64>,
    scratch: &'a Scratch,
    /// Consumer processes started so far (each gets its own mark file).
    started: std::cell::Cell<usize>,
}

/// A consumer process the harness started. It holds the process's standard input: when the
/// harness goes away, however it goes, the consumer sees it closed and stops. Killed if still
/// running when dropped.
struct Process {
    child: Child,
    _stdin: Option<std::process::ChildStdin>,
    /// Where it writes its crash point when it dies at it.
    mark: PathBuf,
}

impl Process {
    /// Whether it died at `point` (its mark says so).
    fn died_at(&self, point: CrashPoint) -> bool {
        std::fs::read_to_string(&self.mark).is_ok_and(|m| m == point.name())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Run<'_> {
    /// Produces `slice` (which starts at message `first` of the workload) and learns where
    /// each partition now ends.
    async fn feed(&mut self, slice: &[ChaosMessage], first: usize) -> Result<(), ChaosError> {
        produce(
            self.servers,
            &self.chaos.topic,
            self.chaos.partitions,
            slice,
            first,
        )
        .await?;
        self.ends = high_watermarks(self.servers, &self.chaos.topic, self.chaos.partitions).await?;
        Ok(())
    }

    fn start(&self, crash: Option<(CrashPoint, u64)>) -> Result<Process, ChaosError> {
        let n = self.started.get() + 1;
        self.started.set(n);
        let mark = self.scratch.0.join(format!("consumer-{n}"));
        let mut command = (self.chaos.consumer)();
        command
            .env(env::BROKERS, self.servers)
            .env(env::TOPIC, &self.chaos.topic)
            .env(env::GROUP, &self.chaos.group)
            .env(env::DATABASE, &self.chaos.database)
            .env(env::MARK, &mark)
            .env_remove(env::CRASH)
            .stdin(std::process::Stdio::piped());
        if let Some((point, at)) = crash {
            command.env(env::CRASH, format!("{point}:{at}"));
        }
        let mut child = command.spawn()?;
        Ok(Process {
            _stdin: child.stdin.take(),
            child,
            mark,
        })
    }

    /// Every partition's committed offset is at its end.
    async fn finished(&self) -> Result<bool, ChaosError> {
        Ok(self.committed().await? == self.ends.iter().map(|e| Some(*e)).collect::<Vec<_>>())
    }

    async fn committed(&self) -> Result<Vec<Option<i64>>, ChaosError> {
        let kafka = BTreeMap::from([("bootstrap.servers".to_owned(), self.servers.to_owned())]);
        let (topic, group, partitions) = (
            self.chaos.topic.clone(),
            self.chaos.group.clone(),
            self.chaos.partitions,
        );
        tokio::task::spawn_blocking(move || {
            committed_offsets(&kafka, &topic, &group, partitions, Duration::from_secs(10))
        })
        .await
        .map_err(|e| ChaosError::Kafka(e.to_string()))?
        .map_err(|e| ChaosError::Kafka(e.to_string()))
    }

    /// One armed consumer: true when it died at its point. For the rebalance point a second,
    /// unarmed consumer joins the group once the first has made progress, and is stopped
    /// after.
    async fn round(
        &self,
        round: usize,
        point: CrashPoint,
        at: u64,
        store: &Store,
    ) -> Result<bool, ChaosError> {
        let before = self.chaos.effects.read(store).await?.len();
        let mut victim = self.start(Some((point, at)))?;
        let mut joiner = None;
        let deadline = Instant::now() + ROUND_LIMIT;
        let mut next_look = Instant::now();
        let died = loop {
            if let Some(status) = victim.child.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            if Instant::now() >= next_look {
                next_look = Instant::now() + COMMITS_EVERY;
                if point == CrashPoint::Rebalance && joiner.is_none() {
                    let progressed = self.chaos.effects.read(store).await?.len() > before;
                    if progressed || self.finished().await? {
                        joiner = Some(self.start(None)?);
                    }
                } else if point != CrashPoint::Rebalance && self.finished().await? {
                    break None;
                }
            }
            tokio::time::sleep(TICK).await;
        };
        if let Some(mut joiner) = joiner {
            let status = stop(&mut joiner).await?;
            if !status.success() {
                return Err(ChaosError::ConsumerFailed { round, status });
            }
        }
        let status = match died {
            Some(status) => status,
            // Stopped without a kill; it may still reach its point while it drains.
            None => stop(&mut victim).await?,
        };
        if victim.died_at(point) {
            Ok(true)
        } else if died.is_none() && status.success() {
            Ok(false)
        } else {
            Err(ChaosError::ConsumerFailed { round, status })
        }
    }

    /// An unarmed consumer until every offset is committed, then a clean stop.
    async fn finish(&self) -> Result<(), ChaosError> {
        let mut last = self.start(None)?;
        let deadline = Instant::now() + FINISH_LIMIT;
        loop {
            if let Some(status) = last.child.try_wait()? {
                return Err(ChaosError::ConsumerFailed { round: 0, status });
            }
            if self.finished().await? {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ChaosError::Unfinished {
                    waited: FINISH_LIMIT,
                    committed: self.committed().await?,
                    ends: self.ends.clone(),
                });
            }
            tokio::time::sleep(COMMITS_EVERY).await;
        }
        let status = stop(&mut last).await?;
        if status.success() {
            Ok(())
        } else {
            Err(ChaosError::ConsumerFailed { round: 0, status })
        }
    }
}

/// SIGTERM, then its exit status; SIGKILL after [`STOP_LIMIT`] (which then shows in the
/// status).
async fn stop(consumer: &mut Process) -> Result<ExitStatus, ChaosError> {
    if consumer.child.try_wait()?.is_none() {
        let pid = consumer.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status()?;
        if !sent.success() && consumer.child.try_wait()?.is_none() {
            consumer.child.kill()?;
        }
    }
    let deadline = Instant::now() + STOP_LIMIT;
    loop {
        if let Some(status) = consumer.child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = consumer.child.kill();
            return Ok(consumer.child.wait()?);
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Produces `messages` round-robin over the partitions (the first being message `first` of
/// the workload) and waits for every delivery.
async fn produce(
    servers: &str,
    topic: &str,
    partitions: i32,
    messages: &[ChaosMessage],
    first: usize,
) -> Result<(), ChaosError> {
    let count = usize::try_from(partitions).unwrap_or(1).max(1);
    let records = (first..).zip(messages).map(|(i, message)| {
        let partition = i32::try_from(i % count).unwrap_or(0);
        (partition, &message.key, &message.payload)
    });
    Ok(super::kafka::produce(servers, topic, records, || {}).await?)
}

/// Where each partition ends.
async fn high_watermarks(
    servers: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<i64>, ChaosError> {
    let (servers, topic) = (servers.to_owned(), topic.to_owned());
    let marks =
        tokio::task::spawn_blocking(move || super::kafka::watermarks(&servers, &topic, partitions))
            .await
            .map_err(|e| ChaosError::Kafka(e.to_string()))??;
    Ok(marks.into_iter().map(|(_, high)| high).collect())
}
