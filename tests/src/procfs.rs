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

/// Total kernel memory of the distinct BPF maps process `pid` holds, in bytes.
#[must_use]
pub fn maps_memlock_of(pid: u32) -> u64 {
    let mut maps = BTreeMap::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    for fd in fds.flatten() {
        if let Some((id, bytes)) = std::fs::read_to_string(fd.path())
            .ok()
            .as_deref()
            .and_then(map_memlock)
        {
            maps.insert(id, bytes);
        }
    }
    maps.values().sum()
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
}
