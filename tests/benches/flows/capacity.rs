//! SNAT capacity: concurrent flows through node1 to one remote backend, the
//! pool topped up until it refuses, node1's own connection while it is full,
//! then the port return after every connection is closed (`port_return`).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use lb_tests::{
    agent::{Agent, ManifestDir},
    topology::ClusterTopology,
};
use serde_json::{json, Value};

use crate::{
    conns::blocking_get,
    markdown::{capacity_md, thousands},
    observe::{count, f, get, metrics, ports_in_use, round1, to_json},
    port_return::port_return,
    procs::{all, merge_reasons, sum_field, Proc},
    METRICS_PORT,
};

/// A Service whose only endpoint is pod2a, on node2 (as in `tests/e2e_snat.rs`).
const REMOTE_ONLY: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: remote-only, namespace: default}\n\
spec:\n  clusterIP: 10.96.0.40\n  ports:\n  - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: remote-only-1, namespace: default, labels: {kubernetes.io/service-name: remote-only}}\n\
addressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\n\
endpoints:\n- {addresses: [\"10.244.2.2\"], nodeName: node2, conditions: {ready: true}}\n";

/// `REMOTE_ONLY`'s address.
pub(crate) const REMOTE_WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 40), 80);
/// pod2a's HTTP server.
const POD2A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), 8080);
/// The backend label of pod2a's HTTP port in `/metrics`.
pub(crate) const POD2A_LABEL: &str = "backend=\"10.244.2.2:8080/TCP\"";
/// The client's addresses: the topology's, a second one for half the
/// connections, a third for the probes after the close (its ports are not
/// held by the first two's `TIME_WAIT` sockets).
const CLIENT_ADDRS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 168, 50, 10),
    Ipv4Addr::new(192, 168, 50, 20),
];
/// The probes' address (see `CLIENT_ADDRS`).
pub(crate) const PROBE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 21);
/// Processes serving pod2a (`SO_REUSEPORT`), and opening the connections.
pub(crate) const SERVERS: usize = 3;
/// Concurrent connects per client process.
pub(crate) const OPEN_CONCURRENCY: usize = 256;
/// Connection attempts beyond the free ports when topping the pool up.
pub(crate) const FILL_MARGIN: usize = 200;

/// The capacity part's sizes, quick or full.
pub(crate) struct CapacityPlan {
    /// A quick run (`LB_BENCH_QUICK`).
    pub(crate) quick: bool,
    /// Connections to open and hold.
    pub(crate) target: usize,
    /// `--snat-port-range`, when not the default.
    pub(crate) pool_flag: Option<&'static str>,
    /// Ports in the pool.
    pub(crate) pool_ports: usize,
    /// How long to probe after the close.
    pub(crate) probe_window: Duration,
}

impl CapacityPlan {
    /// The plan of a quick or a full run.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            // Quick: a pool of 4,096 ports, so that filling it stays quick.
            Self {
                quick,
                target: 4_000,
                pool_flag: Some("1024-5119"),
                pool_ports: 4_096,
                probe_window: Duration::from_secs(12),
            }
        } else {
            Self {
                quick,
                target: 28_000,
                pool_flag: None,
                pool_ports: 30_000 - 1_024,
                probe_window: Duration::from_secs(15),
            }
        }
    }
}

/// Runs the capacity part: its figures and its markdown.
#[allow(clippy::too_many_lines)] // one scenario, step by step
pub(crate) fn capacity(plan: &CapacityPlan, deadline: Instant) -> Result<(Value, String)> {
    let topo = ClusterTopology::new()?;
    for addr in CLIENT_ADDRS[1..].iter().chain([&PROBE_ADDR]) {
        topo.client
            .exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    }
    let pod2a = topo.pod("pod2a");
    for key in [
        "net.core.somaxconn=8192",
        "net.ipv4.tcp_max_syn_backlog=8192",
    ] {
        pod2a.ns.exec(&["sysctl", "-qw", key])?;
    }
    let mut servers = (0..SERVERS)
        .map(|i| {
            Proc::spawn(
                &format!("pod2a server {i}"),
                "server",
                &pod2a.ns,
                &[
                    ("LB_FLOWS_NAME", "pod2a".into()),
                    ("LB_FLOWS_PORT", POD2A.port().to_string()),
                ],
                deadline,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    for s in &mut servers {
        s.recv(Duration::from_secs(10))?;
    }
    let manifests = ManifestDir::new()?;
    manifests.write("remote-only.yaml", REMOTE_ONLY)?;
    let dir = manifests.path().to_string_lossy().into_owned();
    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    let mut args = vec!["--manifests", &dir, "--metrics-addr", &metrics_addr];
    if let Some(range) = plan.pool_flag {
        args.extend(["--snat-port-range", range]);
    }
    let mut agent = Agent::start_with(&topo.node1, &args)?;
    agent.wait_ready(Duration::from_mins(2))?;
    let (body, _) = blocking_get(&topo.client, REMOTE_WEB)?;
    ensure!(body == "pod2a", "the Service answered {body:?}");

    let mut clients = CLIENT_ADDRS
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            Proc::spawn(
                &format!("client {i}"),
                "client",
                &topo.client,
                &[
                    ("LB_FLOWS_TARGET", REMOTE_WEB.to_string()),
                    ("LB_FLOWS_BIND", addr.to_string()),
                ],
                deadline,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let per_client = plan.target.div_ceil(clients.len());
    eprintln!(
        "capacity: opening {} connections",
        per_client * clients.len()
    );
    let started = Instant::now();
    let wave = all(
        &mut clients,
        &format!("open {per_client} 5000 {OPEN_CONCURRENCY}"),
        Duration::from_mins(5),
    )?;
    let open_s = started.elapsed().as_secs_f64();
    let opened = sum_field(&wave, "ok");
    let failed = sum_field(&wave, "failed");
    let check = all(&mut clients, "check", Duration::from_mins(3))?;
    let held = sum_field(&check, "ok");
    let at_target = metrics(&topo.node1)?;
    eprintln!("capacity: {opened} opened in {open_s:.1} s, {held} held; topping the pool up");

    // Top the pool up: as many more connections as it has free ports, and a
    // margin that must be refused.
    let free = plan
        .pool_ports
        .saturating_sub(usize::try_from(ports_in_use(&at_target))?);
    let extra = (free + FILL_MARGIN).div_ceil(clients.len());
    let fill_started = Instant::now();
    let fill = all(
        &mut clients,
        &format!("open {extra} 2000 {OPEN_CONCURRENCY}"),
        Duration::from_mins(3),
    )?;
    let fill_s = fill_started.elapsed().as_secs_f64();
    let at_full = metrics(&topo.node1)?;
    let total_held = held + sum_field(&fill, "ok");

    // The node's own connections to the backend, while the pool is full.
    let node = (0..3)
        .map(|_| blocking_get(&topo.node1, POD2A))
        .collect::<Vec<_>>();
    let node_ok = node
        .iter()
        .filter(|r| matches!(r, Ok((b, _)) if b == "pod2a"))
        .count();
    let node_ports: Vec<u16> = node
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|x| x.1))
        .collect();
    let node_errors: Vec<String> = node
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();

    let ret = port_return(&topo, &mut clients, plan.probe_window)?;
    ensure!(agent.is_running(), "the agent exited:\n{}", agent.log());
    drop(clients);
    drop(servers);

    let met = held >= count(plan.target);
    let target_line = format!(
        "{} concurrent flows to one remote backend{}",
        thousands(count(plan.target)),
        if plan.quick {
            " (quick run: the full run's target is 28,000)"
        } else {
            ""
        }
    );
    let json = json!({
        "target_connections": plan.target,
        "pool": plan.pool_flag.unwrap_or("1024-29999 (default)"),
        "pool_ports": plan.pool_ports,
        "client_processes": CLIENT_ADDRS.len(),
        "client_addresses": CLIENT_ADDRS.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "server_processes": SERVERS,
        "opened": opened,
        "open_failed": failed,
        "open_failure_reasons": merge_reasons(&wave),
        "open_seconds": round1(open_s),
        "opened_per_second": round1(f(opened) / open_s.max(1e-9)),
        "held_concurrently": held,
        "held_check_failed": sum_field(&check, "failed"),
        "snat_ports_in_use_at_target": ports_in_use(&at_target),
        "fill": {"attempted": extra * CLIENT_ADDRS.len(), "opened": sum_field(&fill, "ok"),
            "refused": sum_field(&fill, "failed"), "reasons": merge_reasons(&fill), "seconds": round1(fill_s)},
        "held_at_full": total_held,
        "snat_ports_in_use_at_full": ports_in_use(&at_full),
        "snat_exhausted_total": get(&at_full, &format!("lb_snat_exhausted_total{{{POD2A_LABEL}}}")),
        "metrics_at_full": to_json(&at_full),
        "node_connection": {"attempts": node.len(), "ok": node_ok, "local_ports": node_ports, "errors": node_errors},
        "port_return": ret,
        "target": {"line": target_line, "met": met},
    });
    let md = capacity_md(plan, &json, &target_line, met);
    Ok((json, md))
}
