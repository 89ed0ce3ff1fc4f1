//! Reading a process's memory figures from procfs: its peak resident set,
//! its resident set split into its own memory and the BPF maps it has
//! mmapped (`smaps`), and the kernel memory of the BPF maps it holds.

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

/// A process's resident memory from its `/proc/<pid>/smaps`, split into
/// the BPF maps it has mmapped (the Maglev slab's windows and the filter
/// array: mappings of `anon_inode:bpf-map`, whose pages are the maps' kernel
/// memory) and the rest (its heap, stacks, binary and libraries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssSplit {
    /// The `Rss` of every mapping, in KiB.
    pub total_kib: u64,
    /// The `Rss` of the BPF map mappings, in KiB.
    pub bpf_maps_kib: u64,
}

impl RssSplit {
    /// The resident memory that is not BPF maps, in KiB.
    #[must_use]
    pub fn own_kib(self) -> u64 {
        self.total_kib.saturating_sub(self.bpf_maps_kib)
    }

    /// The larger of each figure of two samples (a peak over samples).
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        Self {
            total_kib: self.total_kib.max(other.total_kib),
            bpf_maps_kib: self.bpf_maps_kib.max(other.bpf_maps_kib),
        }
    }
}

/// Whether a line of `smaps` opens a mapping (`start-end perms offset dev
/// inode [path]`), and if so, whether it maps a BPF map.
fn mapping_header(line: &str) -> Option<bool> {
    let mut words = line.split_whitespace();
    let (start, end) = words.next()?.split_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(start) || !hex(end) {
        return None;
    }
    let path = words.nth(4).unwrap_or("");
    Some(path == "anon_inode:bpf-map" || path == "anon_inode:[bpf-map]")
}

/// The resident memory of a `/proc/<pid>/smaps` text, split (see [`RssSplit`]).
#[must_use]
pub fn rss_split(smaps: &str) -> RssSplit {
    let mut split = RssSplit::default();
    let mut bpf_map = false;
    for line in smaps.lines() {
        if let Some(is_map) = mapping_header(line) {
            bpf_map = is_map;
        } else if let Some(kib) = field_kib(line, "Rss:") {
            split.total_kib += kib;
            if bpf_map {
                split.bpf_maps_kib += kib;
            }
        }
    }
    split
}

/// The split resident memory of process `pid` now; `None` when it is gone.
#[must_use]
pub fn rss_split_of(pid: u32) -> Option<RssSplit> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    (!smaps.is_empty()).then(|| rss_split(&smaps))
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

    /// Three mappings of a made-up agent: its binary, its heap, and a window
    /// of the slab (a BPF map); the slab's pages are not the agent's own.
    const SMAPS: &str = "\
55ae853d7000-55ae853d9000 r--p 00000000 fe:00 247030                     /usr/local/bin/lb-agent
Size:                  8 kB
Rss:                   8 kB
Pss:                   8 kB
VmFlags: rd mr mw me
55ae86000000-55ae8a000000 rw-p 00000000 00:00 0                          [heap]
Size:              65536 kB
Rss:               61000 kB
Anonymous:         61000 kB
VmFlags: rd wr mr mw me ac
7f0000000000-7f0000100000 rw-s 00000000 00:0f 1057                       anon_inode:bpf-map
Size:               1024 kB
Rss:                1024 kB
Shared_Dirty:       1024 kB
VmFlags: rd wr sh mr mw me ms
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                  12 kB
";

    #[test]
    fn smaps_splits_the_bpf_maps_from_the_agents_own_memory() {
        let split = rss_split(SMAPS);
        assert_eq!(
            split,
            RssSplit {
                total_kib: 8 + 61_000 + 1_024 + 12,
                bpf_maps_kib: 1_024
            }
        );
        assert_eq!(split.own_kib(), 61_020);
        assert_eq!(rss_split(""), RssSplit::default());
        let later = RssSplit {
            total_kib: 10,
            bpf_maps_kib: 5_000,
        };
        assert_eq!(
            split.max(later),
            RssSplit {
                total_kib: 62_044,
                bpf_maps_kib: 5_000
            }
        );
    }

    #[test]
    fn a_field_line_is_not_a_mapping() {
        assert_eq!(mapping_header("Rss:                   8 kB"), None);
        assert_eq!(mapping_header("VmFlags: rd wr mr mw me ac"), None);
        assert_eq!(
            mapping_header("7f00-7f01 rw-s 00000000 00:0f 1057 anon_inode:bpf-map"),
            Some(true)
        );
        assert_eq!(
            mapping_header("7ffd-7ffe rw-p 00000000 00:00 0"),
            Some(false)
        );
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
