//! Crash points: the places in the algorithm where a process death leaves a distinct state
//! behind. The engine and the listener mark each one with [`reach`]; without the `test-util`
//! feature that is an empty inline function. With it, a consumer process started by the chaos
//! harness (`testing`) arms one point and kills itself with SIGKILL the n-th time it gets there.

// Without the harness nothing outside this module names a point.
#![cfg_attr(not(feature = "test-util"), allow(unreachable_pub, dead_code))]

/// Where a consumer process can die, in the order a message meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CrashPoint {
    /// The duplicate check is done (and, in a transactional mode, the message is claimed,
    /// unless its batch goes through `consume_batch`); `consume` has not been called.
    BeforeConsume,
    /// `consume` is running: it has reached its first await, or, if it never waits, it has
    /// returned and nothing has seen its result yet.
    InsideConsume,
    /// `consume` acknowledged the message; the checkpoint row is not committed yet.
    AfterConsume,
    /// This attempt's row (an event, or a failure row) is committed; the message's offset is
    /// not stored for Kafka yet. Not reached for a redelivery that was already stored.
    AfterCommit,
    /// A rebalance (not the consumer closing) is revoking the process's partitions: their
    /// in-flight work has settled; the offsets stored since the last automatic commit are not
    /// committed yet.
    Rebalance,
}

impl CrashPoint {
    /// Every point.
    pub const ALL: [CrashPoint; 5] = [
        CrashPoint::BeforeConsume,
        CrashPoint::InsideConsume,
        CrashPoint::AfterConsume,
        CrashPoint::AfterCommit,
        CrashPoint::Rebalance,
    ];

    /// The name used on the command line and in the harness's environment.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::BeforeConsume => "before-consume",
            CrashPoint::InsideConsume => "inside-consume",
            CrashPoint::AfterConsume => "after-consume",
            CrashPoint::AfterCommit => "after-commit",
            CrashPoint::Rebalance => "rebalance",
        }
    }
}

impl std::fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CrashPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CrashPoint::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = CrashPoint::ALL.iter().map(|p| p.name()).collect();
                format!("unknown crash point {s:?}; one of {}", names.join(", "))
            })
    }
}

impl serde::Serialize for CrashPoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Runs `consume`, a call for `messages` messages (`consume_batch` takes many), reaching
/// [`CrashPoint::InsideConsume`] once per message right after its first poll: at its first
/// await, or, for a handler that never waits, before anything sees its result.
pub(crate) async fn inside<F: Future>(consume: F, messages: usize) -> F::Output {
    let mut consume = std::pin::pin!(consume);
    let mut first = true;
    std::future::poll_fn(|cx| {
        let poll = consume.as_mut().poll(cx);
        if std::mem::take(&mut first) {
            reach_for(CrashPoint::InsideConsume, messages);
        }
        poll
    })
    .await
}

/// Marks `point` once for each of `messages` messages that are there together (a batch's
/// messages before and inside one `consume_batch` call), so that an armed point counts
/// messages whichever way they are consumed.
pub(crate) fn reach_for(point: CrashPoint, messages: usize) {
    for _ in 0..messages {
        reach(point);
    }
}

/// Marks `point`: a no-op unless a chaos consumer armed it.
#[inline]
pub(crate) fn reach(point: CrashPoint) {
    #[cfg(feature = "test-util")]
    crate::testing::reached(point);
    #[cfg(not(feature = "test-util"))]
    let _ = point;
}
