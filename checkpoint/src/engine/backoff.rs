//! Exponential backoff with jitter, for handler retries and for database outages.

use std::time::Duration;

/// Exponential backoff with jitter: attempt `n` waits `min · 2ⁿ`, capped at `max`, plus up to
/// 20% random jitter (still capped at `max`). Never less than the configured delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub min: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `min` to `max` (swapped if given the wrong way round).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min: min.min(max),
            max: max.max(min),
        }
    }

    /// How the engine waits out a database outage by default: 100 ms to 5 s.
    pub fn outage() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The delay before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let base = self.min.saturating_mul(factor).min(self.max);
        let jitter_ms = u64::try_from(base.as_millis() / 5).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(fastrand::u64(0..=jitter_ms));
        (base + jitter).min(self.max).max(base)
    }
}

impl Default for Backoff {
    /// 1 s to 60 s.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_min_and_caps_at_max() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for (attempt, base) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1000),
            (40, 1000),
        ] {
            let delay = backoff.delay(attempt);
            assert!(
                delay >= Duration::from_millis(base),
                "attempt {attempt}: {delay:?}"
            );
            assert!(
                delay <= Duration::from_millis((base * 6 / 5).min(1000)),
                "attempt {attempt}: {delay:?}"
            );
        }
    }
}
