//! The agent confined as the `DaemonSet` confines it: exactly the
//! capabilities it grants (`REQUIRED_CAPABILITIES`, which `deploy.rs`
//! checks against the manifest) and a read-only root file system. It
//! attaches, syncs and serves traffic to local and remote backends: on the
//! manifests with default flags, and with the `DaemonSet`'s own settings
//! (`--source kube`, metrics and kube-proxy's health port on their
//! addresses, the hash seed from a file, `--socket-lb all` on a test
//! cgroup of its own with the pods' namespaces), where a pod's sockets
//! reach the Service through the socket hook and the agent enters the
//! pod's namespace to close the sockets of a backend that left.
//! Needs root (and cgroup v2 for the second test).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    apiserver::TestApiServer,
    cgroup::TestCgroup,
    cluster::assert_spread,
    netns::Netns,
    sock_client,
    topology::ClusterTopology,
    traffic::{http_distribution, metric, scrape, PodServers},
};
use lb_userspace::{
    datapath::{maps::Maps, REQUIRED_CAPABILITIES},
    flows::parse_hash_key,
};

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const WEB_DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
const ALL: [&str; 4] = ["pod1a", "pod1b", "pod1c", "pod2a"];
/// The `DaemonSet`'s `--metrics-addr` and `--healthz-bind-address`.
const METRICS_ADDR: &str = "0.0.0.0:9960";
const HEALTHZ_ADDR: &str = "0.0.0.0:10256";
/// The flow-hash key, as the `lb-agent-hash-seed` Secret would hold it.
const SEED: &str = "0123456789abcdef00112233445566ff";
/// node1's Node, untainted (kube-proxy's /healthz reads it).
const NODE1: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\nspec: {taints: []}\n";
/// Exchanges per socket client run.
const COUNT: usize = 40;
/// UDP sockets a pod holds through the Service (some land on pod1b).
const HELD: usize = 24;

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

/// The running agent has exactly the `DaemonSet`'s capabilities and a
/// read-only root.
fn assert_confined(agent: &Agent) {
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
    assert_confined(&agent);
    let counts = http_distribution(&topo.client, WEB, 200, Duration::from_mins(1));
    assert_spread(&counts, &ALL, 200, 0.10);
    // It also stops and cleans up confined (pins removed on drop).
    assert!(agent.stop(), "a clean exit:\n{}", agent.log());
}

/// The port of a `0.0.0.0:PORT` address.
fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// A counter from the agent's metrics on node1 (absent: zero).
fn counter(node: &Netns, series: &str) -> u64 {
    let (_, text) = scrape(node, port(METRICS_ADDR), "/metrics").unwrap();
    // Counters of whole packets and events.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let value = metric(&text, series).unwrap_or(0.0) as u64;
    value
}

/// Runs `sock-client` in `ns`, joining `cgroup` first, with [`COUNT`]
/// exchanges of `mode` to `to`: its lines.
fn sock_client(ns: &Netns, cgroup: &TestCgroup, mode: &str, to: SocketAddrV4) -> Vec<String> {
    sock_client::run(
        env!("CARGO_BIN_EXE_sock-client"),
        Some(ns),
        cgroup,
        mode,
        &to,
        COUNT,
        &[],
    )
}

/// Keyed with the Secret's seed, synced (the example's two frontends), and
/// answering on the `DaemonSet`'s metrics and health ports in `node`.
fn assert_keyed_and_answering(agent: &Agent, node: &Netns) {
    let key = Maps::from_pins(agent.pin_dir()).unwrap().config.get(&0, 0);
    assert_eq!(key.unwrap().hash_key, parse_hash_key(SEED).unwrap());
    let (status, metrics) = scrape(node, port(METRICS_ADDR), "/metrics").unwrap();
    assert!(status.contains(" 200"), "{status}");
    assert_eq!(metric(&metrics, "lb_frontends"), Some(2.0), "{metrics}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let answer = scrape(node, port(HEALTHZ_ADDR), "/healthz").unwrap();
        if answer.0.contains(" 200") || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.contains(" 200"), "{status}: {body}");
    assert!(body.contains(r#""nodeEligible":true"#), "{body}");
}

/// `pod`'s sockets in `cgroup` are balanced at connect by the socket hook
/// (each reports the Service's address), over every backend.
fn assert_the_hook_balances(node: &Netns, pod: &Netns, cgroup: &TestCgroup) {
    let translated = "lb_datapath_events_total{event=\"socket_translated\",family=\"ipv4\"}";
    let before = counter(node, translated);
    let tcp = sock_client::answers(&sock_client(pod, cgroup, "http", WEB), &WEB);
    assert_spread(&tcp, &ALL, COUNT, 0.05);
    assert!(counter(node, translated) >= before + COUNT as u64);
}

/// `pod` (pod1a) holds UDP sockets through the Service; `edit` takes pod1b's
/// endpoint out of the slice, and the agent (metrics in `node`) enters
/// pod1a's namespace to close those the hook pointed at pod1b, no others.
fn assert_closed_in_the_pod(node: &Netns, pod: &Netns, cgroup: &TestCgroup, edit: impl FnOnce()) {
    let (held, opened) = sock_client::Holding::start(
        env!("CARGO_BIN_EXE_sock-client"),
        cgroup,
        &[
            WEB.to_string(),
            WEB_DNS.to_string(),
            format!("0+{HELD}"),
            "-".to_string(),
            "-".to_string(),
            format!("/run/netns/{}", pod.name()),
        ],
    );
    let opened: BTreeMap<String, String> = opened
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            (f[2].to_string(), f[3].to_string())
        })
        .collect();
    assert_eq!(opened.len(), HELD, "{opened:?}");
    let on_pod1b = opened.values().filter(|b| *b == "pod1b").count();
    assert!(on_pod1b > 0, "some sockets on pod1b: {opened:?}");
    edit();
    let closed = "lb_sockets_closed_total";
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(node, closed) < on_pod1b as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        counter(node, closed),
        on_pod1b as u64,
        "the sockets on pod1b"
    );
    assert_eq!(counter(node, "lb_socket_close_errors_total"), 0);
    let rest = held.finish();
    for line in &rest {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let (what, n, reply) = (f[0], f[2], f[3]);
        if what == "reconnect" {
            assert!(ALL.contains(&reply) && reply != "pod1b", "{line}");
        } else if opened[n] == "pod1b" {
            assert!(reply.starts_with("error="), "closed: {line}");
        } else {
            assert_eq!(reply, opened[n], "kept: {line}");
        }
    }
    let reconnects = rest.iter().filter(|l| l.starts_with("reconnect")).count();
    assert_eq!(reconnects, on_pod1b, "{rest:?}");
}

#[test]
fn with_the_daemonsets_settings_the_confined_agent_syncs_serves_and_balances_sockets() {
    let cgroup = TestCgroup::new("confined");
    let topo = ClusterTopology::new().unwrap();
    let _servers = PodServers::start(&topo).unwrap();
    let api = TestApiServer::start_in(Some(&topo.node1)).unwrap();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/web-service.yaml"),
    )
    .unwrap();
    let (service, slice) = example.split_once("\n---\n").unwrap();
    api.apply(service).unwrap();
    api.apply(slice).unwrap();
    api.apply(NODE1).unwrap();
    // What the pod would have mounted: the API server's address (here a
    // kubeconfig, for the in-cluster config) and the hash seed Secret.
    let mounted = ManifestDir::new().unwrap();
    mounted
        .write("kubeconfig", &TestApiServer::kubeconfig_text(&api.url()))
        .unwrap();
    mounted.write("seed", &format!("{SEED}\n")).unwrap();
    let kubeconfig = mounted.path().join("kubeconfig");
    let seed = mounted.path().join("seed");
    let mut agent = Agent::start_confined(
        &topo.node1,
        &REQUIRED_CAPABILITIES,
        &[
            "--source",
            "kube",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--metrics-addr",
            METRICS_ADDR,
            "--healthz-bind-address",
            HEALTHZ_ADDR,
            "--hash-seed-file",
            seed.to_str().unwrap(),
            "--socket-lb",
            "all",
            "--socket-lb-cgroup",
            cgroup.path().to_str().unwrap(),
            "--socket-lb-netns-dir",
            "/run/netns",
        ],
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    assert_confined(&agent);
    assert_keyed_and_answering(&agent, &topo.node1);
    // The per-packet path, from outside.
    let counts = http_distribution(&topo.client, WEB, 200, Duration::from_mins(1));
    assert_spread(&counts, &ALL, 200, 0.10);
    let pod1a = &topo.pod("pod1a").ns;
    assert_the_hook_balances(&topo.node1, pod1a, &cgroup);
    assert_closed_in_the_pod(&topo.node1, pod1a, &cgroup, || {
        let edited = slice.replace(
            "  - addresses: [\"10.244.1.3\"]\n    conditions: {ready: true}\n    nodeName: node1\n",
            "",
        );
        assert_ne!(edited, slice, "the example lists pod1b");
        api.apply(&edited).unwrap();
    });
    assert!(agent.stop(), "a clean exit:\n{}", agent.log());
}
