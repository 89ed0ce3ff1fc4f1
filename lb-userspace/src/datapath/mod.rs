//! The I/O layer on the kernel side: loads and attaches the programs, pins the
//! maps, and writes plans into them.

mod attach;
pub mod maps;
mod writer;

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{programs::XdpMode, Ebpf, EbpfLoader, VerifierLogLevel};
use lb_common::{NodeConfig, MAP_MAGLEV};
use tracing::{info, warn};

use self::maps::{Maps, PINNED_MAPS};
pub use self::writer::{decode_label, encode_label};

/// The kernel programs' object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "lb_xdp";
/// Name of the TC program in the object.
pub const TC_PROGRAM: &str = "lb_tc";
/// Name of the pass-everything XDP program (benchmark floor; veth peers).
pub const XDP_PASS_PROGRAM: &str = "xdp_pass";

/// Linux capabilities the agent needs: load programs and maps, attach them
/// to interfaces and set sysctls, read kernel time in programs, raise rlimits.
pub const REQUIRED_CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"];

/// How to set up the data path.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// Interfaces that get the XDP program (the node's uplinks).
    pub xdp_ifaces: Vec<String>,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
    /// Interface name patterns (`*` wildcards) that get the TC program.
    pub tc_patterns: Vec<String>,
    /// The node address used for SNAT.
    pub node_addr: Ipv4Addr,
    /// Where the maps are pinned (a directory in bpffs, created and removed by us).
    pub pin_dir: PathBuf,
    /// Slots of the Maglev slab.
    pub slab_slots: u32,
}

/// The loaded and attached data path.
pub struct Datapath {
    ebpf: Ebpf,
    /// Typed map handles.
    pub maps: Maps,
    config: DatapathConfig,
    tc_attached: BTreeSet<String>,
    /// Interfaces whose `accept_local` we changed, with the value to restore.
    sysctls: Vec<(String, String)>,
}

impl Datapath {
    /// Loads the programs, pins the maps and attaches to the configured interfaces.
    pub fn load(config: DatapathConfig) -> Result<Self> {
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(
            MAP_MAGLEV,
            config.slab_slots.div_ceil(lb_common::SLOTS_PER_SLAB_ENTRY),
        );
        if std::env::var_os("LB_VERIFIER_LOG").is_some() {
            // Debugging aid: the whole verifier log in load errors.
            loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
        }
        let ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        pin_maps(&ebpf, &config.pin_dir)?;
        let pin_dir = config.pin_dir.clone();
        // Whatever fails after pinning must not leave pins behind.
        Self::attach_all(ebpf, config).inspect_err(|_| remove_pins(&pin_dir))
    }

    fn attach_all(mut ebpf: Ebpf, config: DatapathConfig) -> Result<Self> {
        let mut maps = Maps::take(&mut ebpf)?;
        maps.config.set(
            0,
            NodeConfig {
                node_addr: u32::from_ne_bytes(config.node_addr.octets()),
                flags: 0,
            },
            0,
        )?;
        let mut datapath = Self {
            ebpf,
            maps,
            config,
            tc_attached: BTreeSet::new(),
            sysctls: Vec::new(),
        };
        attach::load_programs(&mut datapath.ebpf)?;
        for iface in &datapath.config.xdp_ifaces.clone() {
            attach::attach_xdp(&mut datapath.ebpf, iface, datapath.config.xdp_mode)?;
            let previous = attach::accept_local_source(iface)?;
            datapath.sysctls.push((iface.clone(), previous));
            info!(iface, "XDP program attached");
        }
        datapath.attach_new_pod_interfaces()?;
        Ok(datapath)
    }

    /// Attaches the TC program to interfaces matching the patterns that appeared since the last call.
    pub fn attach_new_pod_interfaces(&mut self) -> Result<()> {
        for iface in attach::interfaces()? {
            if self.tc_attached.contains(&iface)
                || !self
                    .config
                    .tc_patterns
                    .iter()
                    .any(|p| glob_match(p, &iface))
            {
                continue;
            }
            match attach::attach_tc(&mut self.ebpf, &iface)
                .and_then(|()| attach::accept_local_source(&iface))
            {
                Ok(previous) => {
                    self.sysctls.push((iface.clone(), previous));
                    info!(iface, "TC program attached");
                    self.tc_attached.insert(iface);
                }
                Err(e) => warn!(iface, "cannot attach the TC program: {e:#}"),
            }
        }
        Ok(())
    }

    /// A loaded program by name (for `BPF_PROG_TEST_RUN` in tests and benchmarks).
    #[must_use]
    pub fn program(&self, name: &str) -> &aya::programs::Program {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("the eBPF object has no program {name}"))
    }

    /// Names of the pod interfaces the TC program is attached to.
    #[must_use]
    pub fn pod_interfaces(&self) -> &BTreeSet<String> {
        &self.tc_attached
    }

    /// Detaches the programs, restores the sysctls it changed and removes the pins.
    pub fn shutdown(self) {
        let pin_dir = self.config.pin_dir.clone();
        let sysctls = self.sysctls.clone();
        drop(self);
        for (iface, value) in sysctls {
            attach::restore_accept_local(&iface, &value);
        }
        remove_pins(&pin_dir);
    }
}

fn pin_maps(ebpf: &Ebpf, dir: &Path) -> Result<()> {
    if dir.exists() {
        // Leftovers of an agent that died with this pin dir: this agent starts clean.
        warn!(dir = %dir.display(), "removing stale pins");
        remove_pins(dir);
    }
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the pin directory {} (is bpffs mounted at /sys/fs/bpf?)",
            dir.display()
        )
    })?;
    for name in PINNED_MAPS {
        let map = ebpf
            .map(name)
            .with_context(|| format!("the eBPF object has no map {name}"))?;
        map.pin(dir.join(name))
            .with_context(|| format!("pinning {name} under {}", dir.display()))?;
    }
    Ok(())
}

/// Removes the pinned maps and their directory (errors are ignored: best effort).
pub fn remove_pins(dir: &Path) {
    for name in PINNED_MAPS {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}

fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const limit) };
    if ret != 0 {
        // Kernels since 5.11 charge BPF memory to the cgroup instead.
        tracing::debug!("cannot raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

/// Matches `name` against a pattern where `*` stands for any run of characters.
#[must_use]
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(tail) = name.strip_prefix(prefix) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob_match(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_patterns() {
        assert!(glob_match("veth*", "veth12ab"));
        assert!(glob_match("vpod*", "vpod"));
        assert!(glob_match("*pod*", "vpod1a"));
        assert!(glob_match("eth0", "eth0"));
        assert!(!glob_match("eth0", "eth01"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(glob_match("v*a", "vpod1a"));
        assert!(!glob_match("v*b", "vpod1a"));
    }
}
