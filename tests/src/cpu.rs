//! CPU time for CPU-per-request figures: host-wide from `/proc/stat` (the
//! busy time of all CPUs over a window; all network namespaces share one
//! kernel, so this counts every process and softirq on the machine), and
//! the CPU time of given processes from `/proc/<pid>/stat` (what a shared
//! machine's other work does not blur).

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

/// The CPU time of a process (all its threads: user plus system, ticks)
/// from its `/proc/<pid>/stat` text; `None` if malformed.
#[must_use]
pub fn parse_pid_stat(stat: &str) -> Option<u64> {
    // The name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; field 3 (state) is the first here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU ticks of the processes `pids` together (a process gone counts 0).
#[must_use]
pub fn processes_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|s| parse_pid_stat(&s))
        .sum()
}

/// The kernel's softirq threads (`ksoftirqd/N`): network receive work
/// deferred to them is charged to them, not to the sender.
#[must_use]
pub fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// `ticks` clock ticks as a duration.
#[must_use]
pub fn ticks(ticks: u64) -> Duration {
    tick() * u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// Busy CPU time (all CPUs) between two readings.
#[must_use]
pub fn busy_between(before: &CpuTimes, after: &CpuTimes) -> Duration {
    ticks(after.busy().saturating_sub(before.busy()))
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
    fn a_process_cpu_time_is_user_plus_system() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 170 30 0 0 20 0 9 0 100 1 1\n";
        assert_eq!(parse_pid_stat(stat), Some(200));
        assert_eq!(parse_pid_stat("4242 (x) S 1"), None, "too short");
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_pid_stat(&me).is_some());
        assert_eq!(processes_ticks(&[u32::MAX]), 0, "no such process");
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
