//! The modes the client reaches the Service by, the Services programmed, and
//! one measurement of one mode in a fresh topology.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use lb_tests::{
    agent::{Agent, ManifestDir},
    kubeproxy::{iptables_restore, manifests_yaml, nft_ruleset, KpService},
    load::{bulk, kept_alive, new_connections, BenchServers, BENCH_HTTP_PORT, SINK_PORT},
    netns::Netns,
    paced::shared,
    topology::ClusterTopology,
};

use crate::{
    fixed::{measure_pair, FixedPair},
    BULK, CLUSTER_CIDR, CONCURRENCY, REMOTE, WEB,
};

/// How the client reaches the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Mode {
    Direct,
    /// lb-agent as configured by default: XDP on the uplink, TC on the pods.
    Ours,
    /// lb-agent with `--uplink-hook tc`: TC on the uplink too.
    OursTc,
    /// Direct once more, half a round after the first: the noise floor.
    DirectAgain,
    Iptables,
    Nftables,
}

impl Mode {
    pub(crate) const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::Ours,
        Mode::OursTc,
        Mode::DirectAgain,
        Mode::Iptables,
        Mode::Nftables,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct (no balancer)",
            Mode::DirectAgain => "direct again (noise floor)",
            Mode::Ours => "lb-agent (XDP uplink)",
            Mode::OursTc => "lb-agent (TC uplink)",
            Mode::Iptables => "kube-proxy iptables layout",
            Mode::Nftables => "kube-proxy nftables layout",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::DirectAgain => "direct_again",
            Mode::Ours => "ours",
            Mode::OursTc => "ours_tc",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
}

/// The Services: web (three pods on node1), bulk (one pod) and remote (pod2a,
/// on node2: node1 forwards its flows), placed in the middle of `total`
/// Services whose other endpoints are never reached.
pub(crate) fn workload(total: u32) -> Vec<KpService> {
    let pods = |port| {
        [2, 3, 4]
            .map(|last| SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), port))
            .to_vec()
    };
    let svc = |name: &str, addr: SocketAddrV4, endpoints| KpService {
        namespace: "bench".into(),
        name: name.into(),
        port_name: "p".into(),
        cluster_ip: *addr.ip(),
        port: addr.port(),
        endpoints,
        node_name: Some(
            if name.starts_with("filler") || name == "remote" {
                "node2"
            } else {
                "node1"
            }
            .into(),
        ),
    };
    let mut all: Vec<KpService> = (0..total.saturating_sub(3))
        .map(|i| {
            let base = u32::from(Ipv4Addr::new(10, 250, 0, 0)) + i * 10;
            svc(
                &format!("filler-{i:05}"),
                SocketAddrV4::new(
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i),
                    80,
                ),
                (0..10)
                    .map(|k| SocketAddrV4::new(Ipv4Addr::from(base + k), 8080))
                    .collect(),
            )
        })
        .collect();
    let middle = all.len() / 2;
    all.insert(middle, svc("web", WEB, pods(BENCH_HTTP_PORT)));
    all.insert(middle + 1, svc("bulk", BULK, pods(SINK_PORT)[..1].to_vec()));
    let pod2a = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), BENCH_HTTP_PORT);
    all.insert(middle + 2, svc("remote", REMOTE, vec![pod2a]));
    all
}

/// The rule files and manifests of one scale.
pub(crate) struct Programs {
    pub(crate) manifests: ManifestDir,
    pub(crate) iptables: PathBuf,
    pub(crate) nft: PathBuf,
}

pub(crate) fn programs(total: u32, dir: &Path) -> Result<Programs> {
    let services = workload(total);
    let manifests = ManifestDir::new()?;
    manifests.write("services.yaml", &manifests_yaml(&services))?;
    let iptables = dir.join(format!("kube-proxy-iptables-{total}.rules"));
    std::fs::write(&iptables, iptables_restore(&services, CLUSTER_CIDR))?;
    let nft = dir.join(format!("kube-proxy-nft-{total}.nft"));
    std::fs::write(&nft, nft_ruleset(&services, CLUSTER_CIDR))?;
    Ok(Programs {
        manifests,
        iptables,
        nft,
    })
}

/// One measurement of one mode.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) conn_per_s: u64,
    pub(crate) conn_p50_us: u64,
    pub(crate) conn_p99_us: u64,
    pub(crate) req_per_s: u64,
    pub(crate) req_p50_us: u64,
    pub(crate) req_p99_us: u64,
    pub(crate) bulk_mbit_s: u64,
    pub(crate) errors: u64,
    /// CPU and program time per request at fixed offered rates.
    pub(crate) fixed: FixedPair,
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // rates are positive and small
pub(crate) fn whole(x: f64) -> u64 {
    x.round() as u64
}

/// A fresh topology whose client routes the pod network via node1 and may
/// reuse ports quickly; node2 routes the client via node1 too, so that
/// direct routing to pod2a crosses node1 both ways, as the balancers' flows
/// to it do (their replies go to node1's address).
fn topology() -> Result<ClusterTopology> {
    let topo = ClusterTopology::new()?;
    topo.client.exec(&[
        "ip",
        "route",
        "add",
        "10.244.0.0/16",
        "via",
        "192.168.50.11",
    ])?;
    topo.node2.exec(&[
        "ip",
        "route",
        "add",
        "192.168.50.10/32",
        "via",
        "192.168.50.11",
    ])?;
    for key in [
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        topo.client.exec(&["sysctl", "-qw", key])?;
    }
    Ok(topo)
}

/// Measures `mode` in a fresh topology: the fixed-rate windows (each
/// `window` long, BPF statistics on; the last one to pod2a on node2), then
/// the saturating loads.
pub(crate) fn run_mode(
    mode: Mode,
    programs: &Programs,
    duration: Duration,
    window: Duration,
) -> Result<Sample> {
    let topo = topology()?;
    let pods: Vec<_> = ["pod1a", "pod1b", "pod1c"]
        .iter()
        .map(|p| topo.pod(p))
        .collect();
    let pod2a = topo.pod("pod2a");
    let _servers = BenchServers::start(&[pods.as_slice(), &[pod2a]].concat())?;
    let mut agent = None;
    // Direct spreads over the three pods like the balancers (kept-alive
    // clients and new connections shared out round robin), so the pods do
    // the same work in every mode; bulk has one endpoint in every mode.
    let (web, bulk_to): (Vec<SocketAddrV4>, _) = match mode {
        Mode::Direct | Mode::DirectAgain => (
            pods.iter()
                .map(|p| SocketAddrV4::new(p.ip, BENCH_HTTP_PORT))
                .collect(),
            SocketAddrV4::new(pods[0].ip, SINK_PORT),
        ),
        Mode::Ours | Mode::OursTc => {
            let dir = programs.manifests.path().to_string_lossy().into_owned();
            let mut args = vec!["--manifests", &dir];
            if mode == Mode::OursTc {
                args.extend(["--uplink-hook", "tc"]);
            }
            let mut a = Agent::start_with(&topo.node1, &args)?;
            a.wait_ready(Duration::from_mins(2))?;
            agent = Some(a);
            (vec![WEB], BULK)
        }
        Mode::Iptables => {
            load_rules(&topo.node1, "iptables-restore <", &programs.iptables)?;
            (vec![WEB], BULK)
        }
        Mode::Nftables => {
            load_rules(&topo.node1, "nft -f", &programs.nft)?;
            (vec![WEB], BULK)
        }
    };
    let rt = topo.client.runtime(1)?;
    let client = Netns::existing(topo.client.name());
    let agent_pid = agent.as_ref().and_then(Agent::pid);
    // The programs' run time is counted while this descriptor is open.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    if let Err(e) = &stats {
        eprintln!("no BPF run-time statistics: {e}");
    }
    let targets = web.clone();
    // Direct routing reaches pod2a through node1 as the balancers' flows do.
    let remote = match mode {
        Mode::Direct | Mode::DirectAgain => SocketAddrV4::new(pod2a.ip, BENCH_HTTP_PORT),
        _ => REMOTE,
    };
    // Spawned, so it runs on a worker thread, inside the client's namespace.
    let fixed = rt.spawn(async move {
        if !client.is_current() {
            bail!("the load would leave the client's namespace");
        }
        for &t in targets.iter().chain([&remote]) {
            let warm = new_connections(t, 2, Duration::from_millis(300)).await;
            if warm.completed == 0 || warm.errors > 0 {
                bail!("{}: the service does not answer: {warm:?}", mode.name());
            }
        }
        measure_pair(&targets, remote, window, agent_pid).await
    });
    let fixed = rt.block_on(fixed)??;
    drop(stats);
    let client = Netns::existing(topo.client.name());
    let measure = rt.spawn(async move {
        if !client.is_current() {
            bail!("the load would leave the client's namespace");
        }
        let conn = shared(&web, CONCURRENCY, |t, n| new_connections(t, n, duration)).await;
        let kept = shared(&web, CONCURRENCY, |t, n| kept_alive(t, n, duration)).await;
        if conn.errors + kept.errors > 0 {
            eprintln!(
                "{}: {} new-connection and {} kept-alive requests failed",
                mode.name(),
                conn.errors,
                kept.errors
            );
        }
        let rate = bulk(bulk_to, duration).await?;
        Ok(Sample {
            conn_per_s: whole(conn.per_second()),
            conn_p50_us: micros(conn.latency(50)),
            conn_p99_us: micros(conn.latency(99)),
            req_per_s: whole(kept.per_second()),
            req_p50_us: micros(kept.latency(50)),
            req_p99_us: micros(kept.latency(99)),
            bulk_mbit_s: whole(rate * 8.0 / 1e6),
            errors: conn.errors + kept.errors,
            fixed,
        })
    });
    let sample = rt.block_on(measure)??;
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(agent);
    Ok(sample)
}

pub(crate) fn load_rules(node: &Netns, tool: &str, file: &Path) -> Result<()> {
    let command = format!("{tool} {}", file.display());
    node.exec(&["sh", "-c", &command])
        .with_context(|| format!("loading {} with {tool}", file.display()))?;
    Ok(())
}
