//! SNAT capacity: concurrent flows through node1 to one remote backend, the
//! pool topped up in rounds until (nearly) every port is claimed, node1's
//! own connection then, and the port return after every connection is
//! closed (`port_return`).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use lb_tests::{
    agent::{Agent, ManifestDir, REMOTE_ONLY},
    topology::ClusterTopology,
    traffic::{http_get, HttpClient},
};
use serde_json::{json, Value};

use crate::{
    markdown::{capacity_md, thousands},
    observe::{count, f, fresh_metrics, metrics, or_zero, ports_in_use, round1, to_json},
    port_return::port_return,
    procs::{all, merge_reasons, sum_field, Proc},
    GC_INTERVAL_S, METRICS_PORT,
};

/// `REMOTE_ONLY`'s HTTP address.
pub(crate) const REMOTE_WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 40), 80);
/// pod2a's HTTP server.
const POD2A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), 8080);
/// The backend label of pod2a's HTTP port in `/metrics`.
pub(crate) const POD2A_LABEL: &str = "backend=\"10.244.2.2:8080/TCP\"";
/// The client's addresses: the topology's and a second one, one client
/// process and half the connections each.
const CLIENT_ADDRS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 168, 50, 10),
    Ipv4Addr::new(192, 168, 50, 20),
];
/// The probes' address, a third one: its ports are not held by the
/// clients' connections nor by their `TIME_WAIT` sockets after the close.
pub(crate) const PROBE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 21);
/// Processes serving pod2a, sharing its port (`SO_REUSEPORT`).
pub(crate) const SERVERS: usize = 3;
/// Concurrent connects per client process while opening the target's connections.
pub(crate) const OPEN_CONCURRENCY: usize = 256;
/// Concurrent connects per client process while topping the pool up.
pub(crate) const FILL_CONCURRENCY: usize = 1024;
/// Connect timeout while topping the pool up: below the first SYN
/// retransmission (1 s), so each failed attempt is one SYN, one claim.
pub(crate) const FILL_CONNECT_TIMEOUT: Duration = Duration::from_millis(700);
/// Rounds of topping up, at most.
pub(crate) const FILL_ROUNDS: usize = 4;
/// The pool counts as exhausted when at most this many of its ports were
/// never claimed: a new flow probes random ports (8 while the pool is
/// exhausted in the same second, 128 otherwise), so it rarely finds one.
pub(crate) const EXHAUSTED_UNCLAIMED: u64 = 2;

/// How long a fresh census (two more collector sweeps) may take.
const CENSUS_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent's default `--snat-port-range`.
const DEFAULT_POOL: &str = "1024-29999";

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
    /// How long the pool may be topped up (rounds start only before this).
    pub(crate) fill_budget: Duration,
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
                fill_budget: Duration::from_secs(10),
                probe_window: Duration::from_secs(12),
            }
        } else {
            Self {
                quick,
                target: 28_000,
                pool_flag: None,
                pool_ports: 30_000 - 1_024,
                fill_budget: Duration::from_secs(30),
                probe_window: Duration::from_secs(15),
            }
        }
    }

    /// The pool's range, as `--snat-port-range` takes it.
    pub(crate) fn pool_range(&self) -> &'static str {
        self.pool_flag.unwrap_or(DEFAULT_POOL)
    }

    /// Connection attempts of one topping-up round: half the pool's size.
    /// While the pool is exhausted a new flow probes 8 random ports, so a
    /// round leaves about e^-4 (2%) of the ports that were unclaimed before it.
    pub(crate) fn fill_attempts(&self) -> usize {
        self.pool_ports / 2
    }
}

/// Tops the pool up: rounds of `plan.fill_attempts()` connection attempts
/// (each success held) until at most `EXHAUSTED_UNCLAIMED` ports are
/// unclaimed, `FILL_ROUNDS` rounds ran or `plan.fill_budget` passed. `in_use`:
/// the ports in use before; returns the rounds' figures and the ports in use after.
fn top_up(
    plan: &CapacityPlan,
    topo: &ClusterTopology,
    clients: &mut [Proc],
    mut in_use: u64,
) -> Result<(Vec<Value>, u64)> {
    let started = Instant::now();
    let mut rounds = Vec::new();
    let per_client = plan.fill_attempts().div_ceil(clients.len());
    while count(plan.pool_ports).saturating_sub(in_use) > EXHAUSTED_UNCLAIMED
        && rounds.len() < FILL_ROUNDS
        && started.elapsed() < plan.fill_budget
    {
        let round_started = Instant::now();
        let answers = all(
            clients,
            &format!(
                "open {per_client} {} {FILL_CONCURRENCY}",
                FILL_CONNECT_TIMEOUT.as_millis()
            ),
            Duration::from_mins(3),
        )?;
        in_use = ports_in_use(&fresh_metrics(&topo.node1, CENSUS_TIMEOUT)?)?;
        eprintln!(
            "capacity: topping up: {} opened, {in_use} ports in use",
            sum_field(&answers, "ok")
        );
        rounds.push(json!({
            "attempted": per_client * clients.len(),
            "opened": sum_field(&answers, "ok"),
            "failed": sum_field(&answers, "failed"),
            "reasons": merge_reasons(&answers),
            "seconds": round1(round_started.elapsed().as_secs_f64()),
            "ports_in_use_after": in_use,
        }));
    }
    Ok((rounds, in_use))
}

/// The sum of `key` over the topping-up rounds.
fn rounds_sum(rounds: &[Value], key: &str) -> u64 {
    rounds.iter().filter_map(|r| r[key].as_u64()).sum()
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
    let mut args = vec![
        "--manifests",
        &dir,
        "--metrics-addr",
        &metrics_addr,
        "--ct-gc-interval",
        GC_INTERVAL_S,
    ];
    if let Some(range) = plan.pool_flag {
        args.extend(["--snat-port-range", range]);
    }
    let mut agent = Agent::start_with(&topo.node1, &args)?;
    agent.wait_ready(Duration::from_mins(2))?;
    let body = http_get(&topo.client, REMOTE_WEB, Duration::from_secs(2))?;
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
    // The flow series are the collector's last census, up to a sweep old:
    // read at once, they may predate the last connections of the wave.
    let in_use_at_check = ports_in_use(&metrics(&topo.node1)?)?;
    let in_use_at_target = ports_in_use(&fresh_metrics(&topo.node1, CENSUS_TIMEOUT)?)?;
    eprintln!("capacity: {opened} opened in {open_s:.1} s, {held} held; topping the pool up");

    let fill_started = Instant::now();
    let (rounds, in_use_at_fill_end) = top_up(plan, &topo, &mut clients, in_use_at_target)?;
    let fill_s = fill_started.elapsed().as_secs_f64();
    let at_fill_end = metrics(&topo.node1)?;
    let never_claimed = count(plan.pool_ports).saturating_sub(in_use_at_fill_end);
    let held_at_fill_end = held + rounds_sum(&rounds, "opened");

    // The node's own connections to the backend, after the fill.
    let node = (0..3)
        .map(|_| -> Result<(String, u16)> {
            let mut c = HttpClient::connect(&topo.node1, POD2A, Duration::from_secs(2))?;
            let port = c.local_port()?;
            Ok((c.get()?, port))
        })
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

    // Held by the client, and through the pool: a flow that bypassed SNAT
    // would be held without a port.
    let target = count(plan.target);
    let met = held >= target && in_use_at_target >= target;
    let target_line = format!(
        "{} concurrent flows to one remote backend{}",
        thousands(target),
        if plan.quick {
            " (quick run: the full run's target is 28,000)"
        } else {
            ""
        }
    );
    let json = json!({
        "target_connections": plan.target,
        "pool": plan.pool_range(),
        "pool_is_default": plan.pool_flag.is_none(),
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
        "snat_ports_in_use_at_target": in_use_at_target,
        "snat_ports_in_use_at_check_end": in_use_at_check,
        "fill": {
            "rounds": rounds,
            "attempted": rounds_sum(&rounds, "attempted"),
            "opened": rounds_sum(&rounds, "opened"),
            "failed": rounds_sum(&rounds, "failed"),
            "reasons": merge_reasons(&rounds),
            "seconds": round1(fill_s),
            "connect_timeout_ms": FILL_CONNECT_TIMEOUT.as_millis(),
            "concurrency_per_client": FILL_CONCURRENCY,
        },
        "held_at_fill_end": held_at_fill_end,
        "snat_ports_in_use_at_fill_end": in_use_at_fill_end,
        "ports_never_claimed": never_claimed,
        "pool_exhausted": never_claimed <= EXHAUSTED_UNCLAIMED,
        "snat_exhausted_total": or_zero(&at_fill_end, &format!("lb_snat_exhausted_total{{{POD2A_LABEL}}}")),
        "metrics_at_fill_end": to_json(&at_fill_end),
        "node_connection": {"attempts": node.len(), "ok": node_ok, "local_ports": node_ports, "errors": node_errors},
        "port_return": ret,
        "target": {"line": target_line, "met": met},
    });
    let md = capacity_md(plan, &json, &target_line, met);
    Ok((json, md))
}
