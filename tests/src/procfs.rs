//! Reading a process's memory figures from procfs: its peak resident set,
//! and the kernel memory of the BPF maps it holds.

use std::collections::BTreeMap;

/// The `VmHWM` (peak resident set) of a `/proc/<pid>/status` text, in KiB.
#[must_use]
pub fn peak_rss_kib(status: &str) -> Option<u64> {
    field_kib(status, "VmHWM:")
}

/// The `VmRSS` (resident set now) of a `/proc/<pid>/status` text, in KiB.
#[must_use]
pub fn rss_kib(status: &str) -> Option<u64> {
    field_kib(status, "VmRSS:")
}

/// The `RssAnon` (resident heap and stacks, without mapped files and BPF
/// maps) of a `/proc/<pid>/status` text, in KiB.
#[must_use]
pub fn anon_rss_kib(status: &str) -> Option<u64> {
    field_kib(status, "RssAnon:")
}

fn field_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let mut words = line[name.len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

/// The `memlock` bytes of a BPF map's `/proc/<pid>/fdinfo/<fd>` text.
#[must_use]
pub fn fdinfo_memlock(fdinfo: &str) -> Option<u64> {
    fdinfo_field(fdinfo, "memlock:")
}

/// The map id and `memlock` bytes of a BPF map's `/proc/<pid>/fdinfo/<fd>`
/// text; `None` for other descriptors.
#[must_use]
pub fn map_memlock(fdinfo: &str) -> Option<(u32, u64)> {
    let id = fdinfo_field(fdinfo, "map_id:")?;
    Some((u32::try_from(id).ok()?, fdinfo_memlock(fdinfo)?))
}

fn fdinfo_field(fdinfo: &str, name: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// What `parse` finds in each of process `pid`'s `fdinfo` texts, by the
/// id it returns (descriptors of one object count once); empty when the
/// process is gone.
fn by_fdinfo<T>(pid: u32, parse: impl Fn(&str) -> Option<(u32, T)>) -> BTreeMap<u32, T> {
    let mut found = BTreeMap::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return found;
    };
    for fd in fds.flatten() {
        if let Some((id, value)) = std::fs::read_to_string(fd.path())
            .ok()
            .as_deref()
            .and_then(&parse)
        {
            found.insert(id, value);
        }
    }
    found
}

/// Total kernel memory of the distinct BPF maps process `pid` holds, in bytes.
#[must_use]
pub fn maps_memlock_of(pid: u32) -> u64 {
    by_fdinfo(pid, map_memlock).values().sum()
}

/// Run statistics of a BPF program, from its `fdinfo` (counted while BPF
/// statistics are enabled: `BPF_ENABLE_STATS` or `kernel.bpf_stats_enabled`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgRuns {
    /// `prog_type` (6: XDP, 3: `sched_cls`).
    pub prog_type: u32,
    /// Nanoseconds spent in the program.
    pub run_time_ns: u64,
    /// Times it ran.
    pub run_cnt: u64,
}

/// The program id and run statistics of a BPF program's
/// `/proc/<pid>/fdinfo/<fd>` text; `None` for other descriptors.
#[must_use]
pub fn prog_runs(fdinfo: &str) -> Option<(u32, ProgRuns)> {
    let id = u32::try_from(fdinfo_field(fdinfo, "prog_id:")?).ok()?;
    Some((
        id,
        ProgRuns {
            prog_type: u32::try_from(fdinfo_field(fdinfo, "prog_type:")?).ok()?,
            run_time_ns: fdinfo_field(fdinfo, "run_time_ns:").unwrap_or(0),
            run_cnt: fdinfo_field(fdinfo, "run_cnt:").unwrap_or(0),
        },
    ))
}

/// Run statistics of the distinct BPF programs process `pid` holds, by id.
#[must_use]
pub fn prog_runs_of(pid: u32) -> BTreeMap<u32, ProgRuns> {
    by_fdinfo(pid, prog_runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tlb-agent\nVmPeak:\t  812340 kB\nVmHWM:\t   48212 kB\nVmRSS:\t   40100 kB\nRssAnon:\t    3364 kB\nRssFile:\t   36736 kB\nThreads:\t5\n";

    #[test]
    fn rss_figures_come_from_status() {
        assert_eq!(peak_rss_kib(STATUS), Some(48_212));
        assert_eq!(rss_kib(STATUS), Some(40_100));
        assert_eq!(anon_rss_kib(STATUS), Some(3_364));
        assert_eq!(peak_rss_kib("Name:\tx\n"), None, "missing field");
        assert_eq!(peak_rss_kib("VmHWM:\t12 MB\n"), None, "unknown unit");
    }

    #[test]
    fn map_memory_comes_from_fdinfo() {
        let map =
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t9\nkey_size:\t16\n\
                   value_size:\t40\nmax_entries:\t262144\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
                   memlock:\t23068672\nmap_id:\t412\nfrozen:\t0\n";
        assert_eq!(map_memlock(map), Some((412, 23_068_672)));
        assert_eq!(fdinfo_memlock(map), Some(23_068_672));
        assert_eq!(
            fdinfo_memlock("pos:\t0\nflags:\t02\n"),
            None,
            "no memlock line"
        );
        assert_eq!(fdinfo_memlock("memlock:\tlots\n"), None, "not a number");
        assert_eq!(
            map_memlock("pos:\t0\nflags:\t02\nmnt_id:\t15\n"),
            None,
            "a file"
        );
        assert_eq!(map_memlock("map_id:\t3\n"), None, "no memlock line");
    }

    #[test]
    fn program_runs_come_from_fdinfo() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t6\n\
                    prog_jited:\t1\nprog_tag:\t0123456789abcdef\nmemlock:\t8192\nprog_id:\t77\n\
                    run_time_ns:\t123456\nrun_cnt:\t1000\nrecursion_misses:\t0\nverified_insns:\t900\n";
        assert_eq!(
            prog_runs(prog),
            Some((
                77,
                ProgRuns {
                    prog_type: 6,
                    run_time_ns: 123_456,
                    run_cnt: 1000
                }
            ))
        );
        assert_eq!(
            prog_runs("pos:\t0\nmap_id:\t3\nmemlock:\t1\n"),
            None,
            "a map"
        );
    }
}
