//! The span a mode is timed over, in wall time and in CPU: how busy the bench process and the
//! whole machine were while it ran. A ratio between modes says which is faster; the CPU says
//! whether the slower one waited (on a commit's fsync, a round trip) or computed, and whether
//! the machine had a core left to give.

use std::time::Instant;

/// Started at a mode's first message (or first row, for the ceilings).
#[derive(Debug, Clone, Copy)]
pub(super) struct Stopwatch {
    started: Instant,
    cpu: Option<CpuTicks>,
}

/// What a [`Stopwatch`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Span {
    /// Wall time, in seconds.
    pub(super) seconds: f64,
    /// CPUs the bench process kept busy on average (up to the machine's count); Linux only.
    pub(super) process_cpus: Option<f64>,
    /// Share of all the machine's CPU time that was busy, 0 to 1: the bench process, the
    /// database server and the broker together; Linux only. The kernel keeps the process's
    /// time exactly and samples the machine's busy time per tick, so with many short waits
    /// `process_cpus` has been seen above `machine_busy` × CPUs by up to 17 %.
    pub(super) machine_busy: Option<f64>,
}

/// CPU time counters, in the kernel's clock ticks (the same unit in both files).
#[derive(Debug, Clone, Copy)]
struct CpuTicks {
    /// The process's user and system time, all threads.
    process: u64,
    /// All CPUs' busy time (everything but idle and iowait).
    machine_busy: u64,
    /// All CPUs' time.
    machine_total: u64,
    /// The CPUs `/proc/stat` counts.
    cpus: u32,
}

impl Stopwatch {
    pub(super) fn start() -> Self {
        Self {
            started: Instant::now(),
            cpu: CpuTicks::read(),
        }
    }

    /// The span since [`Stopwatch::start`].
    pub(super) fn stop(&self) -> Span {
        let seconds = self.started.elapsed().as_secs_f64();
        let (process_cpus, machine_busy) = match (self.cpu, CpuTicks::read()) {
            (Some(before), Some(after)) => before.until(&after),
            _ => (None, None),
        };
        Span {
            seconds,
            process_cpus,
            machine_busy,
        }
    }
}

/// The span of a stopwatch that may not have started (no message arrived): zero.
pub(super) fn span_of(stopwatch: Option<Stopwatch>) -> Span {
    stopwatch.map(|s| s.stop()).unwrap_or_default()
}

impl CpuTicks {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name, in parentheses, may hold spaces: fields count from its end.
        // After it: state (0), …, utime (11), stime (12).
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        let process = fields
            .get(11)?
            .parse::<u64>()
            .ok()?
            .checked_add(fields.get(12)?.parse().ok()?)?;
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        // `cpu  user nice system idle iowait irq softirq steal guest guest_nice`; guest time is
        // already counted in user and nice.
        let times: Vec<u64> = machine
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let idle = times.get(3)?.checked_add(*times.get(4)?)?;
        let total = times.iter().try_fold(0u64, |sum, t| sum.checked_add(*t))?;
        // The CPUs the first line adds up: the machine's, which inside a container may be more
        // than the process may use.
        let cpus = machine
            .lines()
            .skip(1)
            .take_while(|line| line.starts_with("cpu"))
            .count();
        Some(Self {
            process,
            machine_busy: total.saturating_sub(idle),
            machine_total: total,
            cpus: u32::try_from(cpus).ok().filter(|&n| n > 0)?,
        })
    }

    /// Average CPUs the process used and the machine's busy share between `self` and `after`.
    fn until(&self, after: &Self) -> (Option<f64>, Option<f64>) {
        let total = after.machine_total.saturating_sub(self.machine_total);
        if total == 0 {
            return (None, None);
        }
        let share = |ticks: u64| (ticks as f64 / total as f64).min(1.0);
        (
            Some(share(after.process.saturating_sub(self.process)) * f64::from(after.cpus)),
            // iowait may go backwards (proc(5)), so busy may seem to: never below 0 or above 1.
            Some(share(after.machine_busy.saturating_sub(self.machine_busy))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_shows_as_busy_cpu() {
        let stopwatch = Stopwatch::start();
        let mut spin = 0u64;
        while stopwatch.started.elapsed().as_millis() < 300 {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let span = stopwatch.stop();
        assert!(span.seconds >= 0.3);
        if cfg!(target_os = "linux") {
            let cpus = span.process_cpus.expect("Linux has /proc/self/stat");
            let busy = span.machine_busy.expect("Linux has /proc/stat");
            // One spinning thread keeps at least a fifth of a CPU busy even beside four other
            // busy threads on two CPUs; at most every CPU the machine has (other tests share
            // the process). Ticks are 10 ms, 30 of them here.
            let machine = CpuTicks::read().map_or(1, |t| t.cpus);
            assert!(
                cpus > 0.2 && cpus <= f64::from(machine) + 0.1,
                "process CPUs {cpus}"
            );
            assert!(busy > 0.0 && busy <= 1.0, "machine busy {busy}");
        }
    }
}
