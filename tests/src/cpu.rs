//! Host-wide CPU time from `/proc/stat`: the busy time of all CPUs over a
//! window, for CPU-per-request figures. All network namespaces share one
//! kernel, so this counts every process and softirq on the machine.

use std::time::Duration;

use anyhow::{Context, Result};

/// The all-CPU counters of `/proc/stat`'s `cpu` line, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every state summed (user, nice, system, idle, iowait, irq, softirq, steal).
    pub total: u64,
    /// Idle plus iowait.
    pub idle: u64,
}

impl CpuTimes {
    /// Busy ticks: total minus idle and iowait.
    #[must_use]
    pub fn busy(&self) -> u64 {
        self.total.saturating_sub(self.idle)
    }
}

/// The `cpu` line of `/proc/stat` text; `None` if missing or malformed.
/// Guest time is already inside user time, so it is not added again.
#[must_use]
pub fn parse_stat(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 5 {
        return None;
    }
    Some(CpuTimes {
        total: fields.iter().sum(),
        idle: fields[3] + fields[4],
    })
}

/// Reads `/proc/stat` now.
pub fn read() -> Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_stat(&stat).context("no cpu line in /proc/stat")
}

/// The length of one clock tick (`sysconf(_SC_CLK_TCK)`, usually 10 ms).
#[must_use]
pub fn tick() -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    Duration::from_nanos(1_000_000_000 / hz)
}

/// Busy CPU time (all CPUs) between two readings.
#[must_use]
pub fn busy_between(before: &CpuTimes, after: &CpuTimes) -> Duration {
    let ticks = after.busy().saturating_sub(before.busy());
    tick() * u32::try_from(ticks).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_gives_total_and_idle() {
        let stat = "cpu  100 5 50 1000 20 3 7 0 40 0\ncpu0 50 2 25 500 10 1 3 0 20 0\nintr 1\n";
        let t = parse_stat(stat).unwrap();
        assert_eq!(t.total, 100 + 5 + 50 + 1000 + 20 + 3 + 7, "guest not added");
        assert_eq!(t.idle, 1020);
        assert_eq!(t.busy(), 165);
        assert_eq!(parse_stat("cpu0 1 2 3 4 5\n"), None, "no all-CPU line");
        assert_eq!(parse_stat("cpu  1 2 x 4 5\n"), None, "not a number");
    }

    #[test]
    fn busy_time_is_the_difference_in_ticks() {
        let a = CpuTimes {
            total: 1000,
            idle: 800,
        };
        let b = CpuTimes {
            total: 1200,
            idle: 900,
        };
        assert_eq!(busy_between(&a, &b), tick() * 100);
        assert_eq!(busy_between(&b, &a), Duration::ZERO, "never negative");
        assert!(read().unwrap().total > 0);
    }
}
