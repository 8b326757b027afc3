//! The consumer half of the harness: reads its orders from the environment, arms its crash
//! point, runs one listener until SIGTERM, and dies with SIGKILL at the armed point.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::ChaosError;
use super::env;
use crate::crash::CrashPoint;
use crate::engine::Engine;
use crate::handler::Handler;
use crate::listener::{Listener, ListenerSpec};

/// A consumer process started by [`Chaos`](super::Chaos): where to consume from and write
/// to, and where to die.
#[derive(Debug, Clone)]
pub struct ChaosConsumer {
    brokers: String,
    topic: String,
    group: String,
    database: String,
    crash: Option<(CrashPoint, u64)>,
    mark: Option<PathBuf>,
}

impl ChaosConsumer {
    /// The orders of the harness, or `None` when this process was not started by it
    /// (`CHECKPOINT_CHAOS_BROKERS` is unset). An order that is present but unreadable is an
    /// error.
    pub fn from_env() -> Result<Option<Self>, ChaosError> {
        let Some(brokers) = var(env::BROKERS)? else {
            return Ok(None);
        };
        let required = |name: &'static str| {
            var(name)?.ok_or(ChaosError::Env {
                var: name,
                reason: "not set".to_owned(),
            })
        };
        let crash = match var(env::CRASH)? {
            None => None,
            Some(text) => Some(parse_crash(&text).map_err(|reason| ChaosError::Env {
                var: env::CRASH,
                reason,
            })?),
        };
        Ok(Some(Self {
            brokers,
            topic: required(env::TOPIC)?,
            group: required(env::GROUP)?,
            database: required(env::DATABASE)?,
            crash,
            mark: var(env::MARK)?.map(PathBuf::from),
        }))
    }

    /// The checkpoint database to connect the [`Store`](crate::Store) to.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The topic to consume.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Where this process dies, if anywhere: the point and on which arrival (1 = the first).
    pub fn crash(&self) -> Option<(CrashPoint, u64)> {
        self.crash
    }

    /// A listener for `handler` on the harness's topic, group and brokers, with the group
    /// timings the harness relies on (a 3 s session timeout, so a killed consumer's partitions
    /// move on soon). Adjust it as in production (batch size, concurrency, retries) before
    /// passing it to [`ChaosConsumer::run`].
    pub fn spec(&self, handler: Arc<dyn Handler>) -> ListenerSpec {
        ListenerSpec::new(handler, self.topic.as_str(), self.group.as_str())
            .kafka("bootstrap.servers", self.brokers.as_str())
            .kafka("session.timeout.ms", "3000")
            .kafka("heartbeat.interval.ms", "500")
            .kafka("auto.commit.interval.ms", "200")
    }

    /// Arms the crash point, then runs `spec` with `engine` until SIGTERM or SIGINT, or until
    /// standard input closes (the harness holds it, so a harness that dies takes its
    /// consumers with it): a clean stop. Or until the process dies at its point.
    pub async fn run(self, spec: ListenerSpec, engine: Engine) -> Result<(), ChaosError> {
        if let Some((point, at)) = self.crash {
            let armed = Armed {
                point,
                at,
                reached: AtomicU64::new(0),
                mark: self.mark.clone(),
            };
            if ARMED.set(armed).is_err() {
                return Err(ChaosError::Env {
                    var: env::CRASH,
                    reason: "a crash point is already armed in this process".to_owned(),
                });
            }
        }
        let (closed, harness_gone) = tokio::sync::oneshot::channel::<()>();
        // A plain thread: a blocking read left behind must not hold up the runtime's end.
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut sink = [0u8; 256];
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = closed.send(());
        });
        let shutdown = async {
            tokio::select! {
                () = crate::app::shutdown_signal() => {}
                _ = harness_gone => {}
            }
        };
        Listener::new(spec, engine)
            .run(shutdown)
            .await
            .map_err(ChaosError::Listener)
    }
}

fn var(name: &'static str) -> Result<Option<String>, ChaosError> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ChaosError::Env {
            var: name,
            reason: "not UTF-8".to_owned(),
        }),
    }
}

/// `<point>:<n>`, n ≥ 1.
pub(super) fn parse_crash(text: &str) -> Result<(CrashPoint, u64), String> {
    let (point, at) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not <point>:<n>"))?;
    let at: u64 = at
        .parse()
        .map_err(|_| format!("{at:?} is not a positive whole number"))?;
    if at == 0 {
        return Err("n counts from 1".to_owned());
    }
    Ok((point.parse()?, at))
}

/// The crash point armed in this process.
struct Armed {
    point: CrashPoint,
    at: u64,
    reached: AtomicU64,
    mark: Option<PathBuf>,
}

static ARMED: OnceLock<Armed> = OnceLock::new();

/// Called at every crash point (see [`crate::crash::reach`]).
pub(crate) fn reached(point: CrashPoint) {
    let Some(armed) = ARMED.get() else {
        return;
    };
    if armed.point == point && armed.reached.fetch_add(1, Ordering::SeqCst) + 1 == armed.at {
        die(point, armed.mark.as_deref());
    }
}

/// Writes the mark, then sends this process SIGKILL (through `kill`, so no unsafe code): no
/// destructor, no flush, no orderly anything. Should `kill` not be there, `abort` is the
/// next-hardest stop.
fn die(point: CrashPoint, mark: Option<&std::path::Path>) -> ! {
    if let Some(mark) = mark {
        let _ = std::fs::write(mark, point.name());
    }
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_orders_parse_and_reject_nonsense() {
        assert_eq!(
            parse_crash("after-commit:17"),
            Ok((CrashPoint::AfterCommit, 17))
        );
        assert_eq!(parse_crash("rebalance:1"), Ok((CrashPoint::Rebalance, 1)));
        assert!(parse_crash("after-commit").is_err());
        assert!(parse_crash("after-commit:0").is_err());
        assert!(parse_crash("after-commit:-3").is_err());
        assert!(
            parse_crash("sideways:3")
                .expect_err("an unknown point")
                .contains("before-consume")
        );
    }
}
