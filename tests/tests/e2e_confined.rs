//! The agent confined as the `DaemonSet` confines it: exactly the
//! capabilities it grants (`REQUIRED_CAPABILITIES`, which `deploy.rs`
//! checks against the manifest) and a read-only root file system. It
//! attaches, syncs and serves traffic to local and remote backends.
//! Needs root.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    cluster::assert_spread,
    topology::ClusterTopology,
    traffic::{http_distribution, PodServers},
};
use lb_userspace::datapath::REQUIRED_CAPABILITIES;

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);

/// The bit of capability `name` (linux/capability.h).
fn cap_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("no bit known for capability {other}"),
    }
}

/// The hexadecimal mask of `field` (e.g. `CapEff`) in /proc/PID/status.
fn cap_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:\t")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn the_agent_serves_with_only_the_daemonsets_capabilities_and_a_read_only_root() {
    let topo = ClusterTopology::new().unwrap();
    let _servers = PodServers::start(&topo).unwrap();
    let manifests = ManifestDir::with_examples().unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let mut agent =
        Agent::start_confined(&topo.node1, &REQUIRED_CAPABILITIES, &["--manifests", &dir]).unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let pid = agent.pid().unwrap();
    let granted = REQUIRED_CAPABILITIES
        .iter()
        .fold(0u64, |mask, cap| mask | 1 << cap_bit(cap));
    assert_eq!(cap_mask(pid, "CapEff"), granted, "effective capabilities");
    assert_eq!(cap_mask(pid, "CapBnd"), granted, "bounding set");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    assert!(
        root.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "the agent's root is read-only: {root}"
    );
    let all = ["pod1a", "pod1b", "pod1c", "pod2a"];
    let counts = http_distribution(&topo.client, WEB, 200, Duration::from_mins(1));
    assert_spread(&counts, &all, 200, 0.10);
    // It also stops and cleans up confined (pins removed on drop).
    assert!(agent.stop(), "a clean exit:\n{}", agent.log());
}
