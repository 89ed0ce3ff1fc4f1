//! Flows (issue 11): the SNAT pool's capacity and floods, end to end in the
//! namespace topology, with the release agent. Run with `cargo xtask bench`.
//!
//! - **SNAT capacity**: a Service whose only endpoint is pod2a (on node2), so
//!   every flow from the client through node1 takes a port of the pool.
//!   28,000 TCP connections are opened and held at once, each completing one
//!   HTTP request, from two client processes bound to two client addresses,
//!   to a tokio server in three processes sharing pod2a's port with
//!   `SO_REUSEPORT` (a process may hold at most 20,000 descriptors here).
//!   Then the pool is topped up until it refuses, the node's own connection
//!   to pod2a is checked, everything is closed (client first) and new
//!   connections are probed every 100 ms to see when ports come back.
//! - **Flood**: spoofed TCP SYNs and UDP datagrams from random sources of
//!   100.64.0.0/10 (routed nowhere here: replies die on node1, which has no
//!   default route) to a Service with local and remote backends, sent on an
//!   `AF_PACKET` socket from a namespace of its own on the LAN, for 10 s at
//!   the highest rate a short calibration found the machine sustains (the
//!   sender keeps up, what it sends reaches node1, no CPU saturated), in the
//!   state a long flood reaches (flow maps full, SNAT pools full); meanwhile
//!   kept-alive and new legitimate connections, the agent's readiness and
//!   memory, and its programs' run time are watched.
//!
//! Writes `target/bench/flows.json` and `flows.md`. The bench binary also
//! runs its own helper processes (clients, servers, the sender): it re-executes
//! itself with `LB_FLOWS_ROLE` set, inside a namespace (`setns`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use lb_tests::{
    agent::{Agent, ManifestDir},
    flood::{is_spoofed_source, parse_mac, FrameMaker},
    load::{request, response_head, serve_answers, REQUEST},
    netns::{sh, Netns},
    procfs::{self, ProgRuns},
    stats::percentile,
    topology::ClusterTopology,
    traffic::{scrape, PodServers},
};
use serde_json::{json, Value};
use tokio::{
    net::{TcpSocket, TcpStream},
    runtime::Runtime,
    time::timeout,
};

/// A Service whose only endpoint is pod2a, on node2 (as in `tests/e2e_snat.rs`).
const REMOTE_ONLY: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: remote-only, namespace: default}\n\
spec:\n  clusterIP: 10.96.0.40\n  ports:\n  - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: remote-only-1, namespace: default, labels: {kubernetes.io/service-name: remote-only}}\n\
addressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\n\
endpoints:\n- {addresses: [\"10.244.2.2\"], nodeName: node2, conditions: {ready: true}}\n";

const REMOTE_WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 40), 80);
const POD2A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), 8080);
/// `examples/web-service.yaml`: pod1a/b/c on node1, pod2a on node2; TCP 80, UDP 53.
const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const WEB_DNS_PORT: u16 = 53;
/// The backend label of pod2a's HTTP port in `/metrics`.
const POD2A_LABEL: &str = "backend=\"10.244.2.2:8080/TCP\"";
/// The client's addresses: the topology's, a second one for half the
/// connections, a third for the probes after the close (its ports are not
/// held by the first two's `TIME_WAIT` sockets).
const CLIENT_ADDRS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 168, 50, 10),
    Ipv4Addr::new(192, 168, 50, 20),
];
const PROBE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 21);
/// The flood's namespace on the LAN.
const FLOOD_ADDR: &str = "192.168.50.30/24";
const METRICS_PORT: u16 = 9981;
/// Processes serving pod2a (`SO_REUSEPORT`), and opening the connections.
const SERVERS: usize = 3;
/// Concurrent connects per client process.
const OPEN_CONCURRENCY: usize = 256;
/// Connection attempts beyond the free ports when topping the pool up.
const FILL_MARGIN: usize = 200;
/// Legitimate load during the flood.
const KEPT_ALIVE: usize = 50;
const KEPT_ALIVE_EVERY: Duration = Duration::from_millis(100);
const NEW_PER_SECOND: u32 = 20;
const LEGIT_TIMEOUT: Duration = Duration::from_secs(2);
/// A kept-alive connection whose request gets no answer for this long, or
/// fails, is broken; one answered after `LEGIT_TIMEOUT` is late.
const STALL: Duration = Duration::from_secs(10);
/// A calibration step keeps up when the sender reaches this share of its
/// rate, this share of what it sends reaches node1 (not dropped on the way),
/// and no CPU is busier than this.
const KEEP_UP: f64 = 0.95;
const DELIVERED: f64 = 0.99;
const MAX_CPU_BUSY_PCT: f64 = 90.0;

const ROLE_ENV: &str = "LB_FLOWS_ROLE";
const NETNS_ENV: &str = "LB_FLOWS_NETNS";
const PARENT_ENV: &str = "LB_FLOWS_PARENT";
const LIFETIME_ENV: &str = "LB_FLOWS_LIFETIME_MS";

fn main() -> Result<()> {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        child::main(&role);
    }
    lb_tests::require_root();
    lb_tests::require_bpffs();
    let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
    let started = Instant::now();
    let deadline = started
        + if quick {
            Duration::from_mins(6)
        } else {
            Duration::from_mins(25)
        };
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;

    // Investigation aid: `LB_FLOWS_PARTS=flood` (or `capacity`) runs one part.
    let parts = std::env::var("LB_FLOWS_PARTS").unwrap_or_else(|_| "capacity,flood".into());
    let skipped = || Err(anyhow::anyhow!("skipped (LB_FLOWS_PARTS)"));
    let capacity = if parts.contains("capacity") {
        capacity(&CapacityPlan::new(quick), deadline)
    } else {
        skipped()
    };
    let flood = if parts.contains("flood") {
        flood(&FloodPlan::new(quick), deadline)
    } else {
        skipped()
    };
    let part = |r: &Result<(Value, String)>| match r {
        Ok((json, _)) => json.clone(),
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    let report = json!({"quick": quick, "capacity": part(&capacity), "flood": part(&flood)});
    let mut md = String::new();
    for (title, r) in [
        (
            "SNAT capacity: concurrent flows to one remote backend",
            &capacity,
        ),
        ("Flood: spoofed SYNs and datagrams", &flood),
    ] {
        let _ = writeln!(md, "### {title}\n");
        match r {
            Ok((_, text)) => md.push_str(text),
            Err(e) => {
                let _ = writeln!(md, "Not measured: the run failed: `{e:#}`\n");
            }
        }
    }
    std::fs::write(
        out.join("flows.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("flows.md"), &md)?;
    std::fs::write(out.join("flows-summary.txt"), summary(&report))?;
    print!("{md}");
    println!(
        "(took {:.1} s; wrote target/bench/flows.json and flows.md)",
        started.elapsed().as_secs_f64()
    );
    capacity?;
    flood?;
    Ok(())
}

/// Two lines for the end of `cargo xtask bench`.
fn summary(report: &Value) -> String {
    let c = &report["capacity"];
    let mut out = String::from("Flows:\n");
    if c["error"].is_null() {
        let _ = writeln!(
            out,
            "- {}: {} ({} held; {} with the pool full); node1's own connections {}/{}; \
             after the close, new connections succeed from {} s",
            c["target"]["line"].as_str().unwrap_or_default(),
            if c["target"]["met"].as_bool().unwrap_or(false) {
                "met"
            } else {
                "missed"
            },
            c["held_concurrently"],
            c["held_at_full"],
            c["node_connection"]["ok"],
            c["node_connection"]["attempts"],
            c["port_return"]["all_succeed_from_s"],
        );
    } else {
        let _ = writeln!(out, "- SNAT capacity: not measured: {}", c["error"]);
    }
    let fl = &report["flood"];
    let r = &fl["run"];
    if fl["error"].is_null() {
        let yes = |k: &str| {
            if fl["targets"][k].as_bool().unwrap_or(false) {
                "met"
            } else {
                "missed"
            }
        };
        let _ = writeln!(
            out,
            "- flood of {} frames/s (reached {}) for {} s: {} of {} established broken ({}); new connections \
             {}/{} = {}% (≥99%: {}); agent ready {}/{}",
            r["requested_pps"],
            r["reached_pps"],
            fl["duration_seconds"],
            r["established"]["broken"],
            r["established"]["connections"],
            yes("established_broken_zero"),
            r["new_connections"]["ok"],
            r["new_connections"]["attempted"],
            r["new_connections"]["success_pct"],
            yes("new_connections_99pct"),
            r["readyz"]["ready"],
            r["readyz"]["polls"],
        );
    } else {
        let _ = writeln!(out, "- flood: not measured: {}", fl["error"]);
    }
    out
}

// ---------------------------------------------------------------- helpers

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn f(x: u64) -> f64 {
    x as f64
}

fn count(x: usize) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // rates, positive and small
fn whole(x: f64) -> u64 {
    x.round() as u64
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Latency figures of sorted samples, in ms.
fn latency_json(sorted: &[Duration]) -> Value {
    if sorted.is_empty() {
        return json!({"p50_ms": null, "p99_ms": null, "max_ms": null});
    }
    json!({"p50_ms": ms(percentile(sorted, 50)), "p99_ms": ms(percentile(sorted, 99)),
        "max_ms": ms(sorted[sorted.len() - 1])})
}

/// The agent's flow and verdict series from `/metrics` text.
fn series(text: &str) -> BTreeMap<String, f64> {
    const KEEP: [&str; 12] = [
        "lb_packets_total",
        "lb_datapath_events_total",
        "lb_conntrack_entries",
        "lb_conntrack_created_total",
        "lb_conntrack_evictions_total",
        "lb_reverse_nat_entries",
        "lb_reverse_nat_created_total",
        "lb_reverse_nat_evictions_total",
        "lb_conntrack_flows",
        "lb_snat_flows",
        "lb_snat_ports_in_use",
        "lb_snat_exhausted_total",
    ];
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let keep = KEEP.iter().any(|k| {
                name.strip_prefix(k)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            });
            Some((name.to_string(), value.parse().ok()?)).filter(|_| keep)
        })
        .collect()
}

fn metrics(node1: &Netns) -> Result<BTreeMap<String, f64>> {
    let (status, body) = scrape(node1, METRICS_PORT, "/metrics")?;
    ensure!(status.contains(" 200"), "/metrics answered {status}");
    Ok(series(&body))
}

fn get(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

fn ports_in_use(m: &BTreeMap<String, f64>) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a gauge of ports
    let n = get(m, &format!("lb_snat_ports_in_use{{{POD2A_LABEL}}}")) as u64;
    n
}

fn to_json(m: &BTreeMap<String, f64>) -> Value {
    m.iter()
        .map(|(k, &v)| {
            #[allow(clippy::cast_possible_truncation)] // whole numbers of counters and gauges
            let v = if v.fract() == 0.0 && v.abs() < 1e15 {
                json!(v as i64)
            } else {
                json!(v)
            };
            (k.clone(), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// After minus before, for every series of `after` (gauges too).
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - get(before, k)))
        .collect()
}

/// A helper process: this bench binary in a role, inside a namespace;
/// commands on its stdin, one JSON line per answer on its stdout. Killed on drop.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(
        name: &str,
        role: &str,
        ns: &Netns,
        env: &[(&str, String)],
        deadline: Instant,
    ) -> Result<Self> {
        let lifetime = deadline.saturating_duration_since(Instant::now());
        ensure!(!lifetime.is_zero(), "the benchmark's deadline passed");
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(ROLE_ENV, role)
            .env(NETNS_ENV, format!("/run/netns/{}", ns.name()))
            .env(PARENT_ENV, std::process::id().to_string())
            .env(LIFETIME_ENV, lifetime.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("a piped stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    fn send(&mut self, command: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: {command}", self.name))
    }

    /// The next answer, within `wait`.
    fn recv(&mut self, wait: Duration) -> Result<Value> {
        let line = self
            .lines
            .recv_timeout(wait)
            .with_context(|| format!("{} did not answer within {wait:?}", self.name))?;
        let value: Value =
            serde_json::from_str(&line).with_context(|| format!("{}: {line}", self.name))?;
        if let Some(e) = value.get("error") {
            bail!("{}: {e}", self.name);
        }
        Ok(value)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `command` to every process, then collects their answers.
fn all(procs: &mut [Proc], command: &str, wait: Duration) -> Result<Vec<Value>> {
    for p in procs.iter_mut() {
        p.send(command)?;
    }
    procs.iter_mut().map(|p| p.recv(wait)).collect()
}

fn sum_field(answers: &[Value], key: &str) -> u64 {
    answers.iter().filter_map(|a| a[key].as_u64()).sum()
}

fn merge_reasons(answers: &[Value]) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for a in answers {
        for (k, v) in a["reasons"].as_object().into_iter().flatten() {
            *all.entry(k.clone()).or_insert(0) += v.as_u64().unwrap_or(0);
        }
    }
    all
}

fn reason(e: &std::io::Error) -> String {
    format!("{:?}", e.kind())
}

/// Opens a connection from `bind` (port chosen by the kernel) to `target`
/// and completes one request on it.
async fn connect_and_request(
    bind: Option<Ipv4Addr>,
    target: SocketAddrV4,
    connect_timeout: Duration,
) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| reason(&e))?;
    if let Some(addr) = bind {
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(addr, 0)))
            .map_err(|e| format!("bind: {}", reason(&e)))?;
    }
    let mut stream = timeout(connect_timeout, socket.connect(SocketAddr::V4(target)))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {}", reason(&e)))?;
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(128);
    timeout(
        LEGIT_TIMEOUT.max(Duration::from_secs(5)),
        request(&mut stream, &mut buf),
    )
    .await
    .map_err(|_| "request timed out".to_string())?
    .map_err(|e| format!("request: {e}"))?;
    Ok(stream)
}

/// `(new-connection outcome, latency)` of one attempt with a total timeout.
async fn attempt(
    bind: Option<Ipv4Addr>,
    target: SocketAddrV4,
    total: Duration,
) -> (Result<(), String>, Duration) {
    let started = Instant::now();
    let r = match timeout(total, connect_and_request(bind, target, total)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out".to_string()),
    };
    (r, started.elapsed())
}

// ---------------------------------------------------------------- capacity

struct CapacityPlan {
    quick: bool,
    /// Connections to open and hold.
    target: usize,
    /// `--snat-port-range`, when not the default.
    pool_flag: Option<&'static str>,
    /// Ports in the pool.
    pool_ports: usize,
    /// How long to probe after the close.
    probe_window: Duration,
}

impl CapacityPlan {
    fn new(quick: bool) -> Self {
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

#[allow(clippy::too_many_lines)] // one scenario, step by step
fn capacity(plan: &CapacityPlan, deadline: Instant) -> Result<(Value, String)> {
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

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**missed**"
    }
}

fn capacity_md(plan: &CapacityPlan, j: &Value, target_line: &str, met: bool) -> String {
    let r = &j["port_return"];
    let mut md = format!(
        "A Service whose only endpoint is pod2a (on node2): every flow from the client through \
         node1 is translated to a port of the pool ({} ports, `--snat-port-range {}`). {} client \
         processes, bound to {} client addresses, open the connections ({OPEN_CONCURRENCY} \
         connects in flight each, 5 s connect timeout); each completes one HTTP request and stays \
         open. A tokio server in {SERVERS} processes shares pod2a's port (`SO_REUSEPORT`). Once all \
         are open, each answers a second request (held concurrently). Then the pool is topped up \
         (its free ports plus {FILL_MARGIN}, 2 s connect timeout), node1's own connection to pod2a \
         is tried, every connection is closed by the client, and a new connection (from a third \
         client address, 1 s timeout) is started every 100 ms.\n\n\
         | figure | value |\n|---|---:|\n",
        thousands(count(plan.pool_ports)),
        j["pool"].as_str().unwrap_or_default(),
        j["client_processes"],
        j["client_processes"],
    );
    let rows: [(&str, String); 16] = [
        (
            "connections opened (each one request)",
            format!("{} of {}", j["opened"], j["target_connections"]),
        ),
        (
            "failed",
            format!(
                "{} {}",
                j["open_failed"],
                reasons_text(&j["open_failure_reasons"])
            ),
        ),
        ("time to open them (s)", format!("{}", j["open_seconds"])),
        ("opened per second", format!("{}", j["opened_per_second"])),
        (
            "held concurrently (second request answered)",
            format!("{}", j["held_concurrently"]),
        ),
        (
            "`lb_snat_ports_in_use` for pod2a, at the target",
            format!("{}", j["snat_ports_in_use_at_target"]),
        ),
        (
            "topping up: opened / refused",
            format!(
                "{} / {} {}",
                j["fill"]["opened"],
                j["fill"]["refused"],
                reasons_text(&j["fill"]["reasons"])
            ),
        ),
        ("held at once, pool full", format!("{}", j["held_at_full"])),
        (
            "`lb_snat_ports_in_use` for pod2a, pool full",
            format!("{}", j["snat_ports_in_use_at_full"]),
        ),
        (
            "`lb_snat_exhausted_total` for pod2a",
            format!("{}", j["snat_exhausted_total"]),
        ),
        (
            "node1's own connections to pod2a:8080 while full",
            format!(
                "{} of {} answered (local ports {})",
                j["node_connection"]["ok"],
                j["node_connection"]["attempts"],
                j["node_connection"]["local_ports"]
            ),
        ),
        (
            "new connections while full (before the close)",
            format!(
                "{} of {} succeeded",
                r["before_close"]["ok"], r["before_close"]["attempts"]
            ),
        ),
        ("closing them all (s)", format!("{}", r["close_seconds"])),
        (
            "port return: first new connection after the close (s)",
            secs_text(&r["first_success_s"]),
        ),
        (
            "port return: every new connection succeeds from (s)",
            secs_text(&r["all_succeed_from_s"]),
        ),
        (
            "ports counted in use fall below 1% of the peak after (s)",
            secs_text(&r["ports_counted_free_after_s"]),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(md, "| {name} | {value} |");
    }
    let _ = writeln!(
        md,
        "\nTarget: {target_line}: {} ({} held).\n",
        verdict(met),
        j["held_concurrently"]
    );
    md
}

fn reasons_text(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            format!(
                "({})",
                m.iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        _ => String::new(),
    }
}

fn secs_text(v: &Value) -> String {
    v.as_f64().map_or_else(
        || "never, within the window".to_string(),
        |s| format!("{s:.2}"),
    )
}

/// One HTTP request on a new blocking connection from `ns`: the body and the local port.
fn blocking_get(ns: &Netns, addr: SocketAddrV4) -> Result<(String, u16)> {
    ns.run(move || -> Result<(String, u16)> {
        let mut s =
            std::net::TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        let port = s.local_addr()?.port();
        s.write_all(REQUEST)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            if let Some((head, length)) = response_head(&buf)? {
                if buf.len() >= head + length {
                    return Ok((
                        String::from_utf8_lossy(&buf[head..head + length]).into_owned(),
                        port,
                    ));
                }
            }
            let n = s.read(&mut chunk)?;
            ensure!(n > 0, "the connection closed mid-response");
            buf.extend_from_slice(&chunk[..n]);
        }
    })?
    .with_context(|| format!("a request to {addr}"))
}

/// One probe: when it started, and when it ended and whether it succeeded.
type Probe = (Instant, Option<(Instant, bool)>);

/// Probes to stop after: this many in a row succeeded after the close.
const PROBES_IN_A_ROW: usize = 20;

/// Probes new connections every 100 ms from two seconds before the close
/// until `PROBES_IN_A_ROW` in a row succeed after it (at most `window`);
/// closes every held connection; samples the ports in use until they are
/// back below 1% of their peak (at most 40 s after the close).
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn port_return(topo: &ClusterTopology, clients: &mut [Proc], window: Duration) -> Result<Value> {
    let rt = topo.client.runtime(1)?;
    let client = Netns::existing(topo.client.name());
    let closed_at: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let probes: Arc<std::sync::Mutex<Vec<Probe>>> = Arc::default();
    let end = Instant::now() + Duration::from_secs(2) + window + Duration::from_secs(2);
    let probing = {
        let (closed_at, probes) = (closed_at.clone(), probes.clone());
        rt.spawn(async move {
            assert!(
                client.is_current(),
                "probes would leave the client's namespace"
            );
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut tasks = Vec::new();
            while Instant::now() < end {
                tick.tick().await;
                if let Some(&t0) = closed_at.get() {
                    // The probes started after the close and surely done by now.
                    let settled = Instant::now()
                        .checked_sub(Duration::from_millis(1100))
                        .unwrap_or(t0);
                    let p = probes.lock().expect("probes");
                    let done: Vec<bool> = p
                        .iter()
                        .filter(|p| p.0 >= t0 && p.0 <= settled)
                        .map(|p| p.1.is_some_and(|r| r.1))
                        .collect();
                    if done.len() >= PROBES_IN_A_ROW
                        && done[done.len() - PROBES_IN_A_ROW..].iter().all(|&ok| ok)
                    {
                        break;
                    }
                }
                let index = {
                    let mut p = probes.lock().expect("probes");
                    p.push((Instant::now(), None));
                    p.len() - 1
                };
                let probes = probes.clone();
                tasks.push(tokio::spawn(async move {
                    let (r, _) =
                        attempt(Some(PROBE_ADDR), REMOTE_WEB, Duration::from_secs(1)).await;
                    probes.lock().expect("probes")[index].1 = Some((Instant::now(), r.is_ok()));
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ports_sampler = {
        let (stop, closed_at, node1) = (
            stop.clone(),
            closed_at.clone(),
            topo.node1.name().to_string(),
        );
        std::thread::spawn(move || {
            let node1 = Netns::existing(&node1);
            let mut samples: Vec<(Instant, u64, f64)> = Vec::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_mins(2) {
                if let Ok(m) = metrics(&node1) {
                    let now = Instant::now();
                    let in_use = ports_in_use(&m);
                    samples.push((now, in_use, get(&m, "lb_conntrack_flows{state=\"closed\"}")));
                    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
                    if let Some(&t0) = closed_at.get() {
                        if (now > t0 && in_use * 100 <= peak)
                            || now.duration_since(t0) > Duration::from_secs(40)
                        {
                            break;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            samples
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let close_started = Instant::now();
    let closed = all(clients, "close", Duration::from_mins(1));
    let t0 = Instant::now();
    let _ = closed_at.set(t0);
    let probing_done = rt.block_on(probing);
    if closed.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let samples = ports_sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the metrics sampler panicked"))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    let closed = closed?;
    probing_done?;
    let probes = std::mem::take(&mut *probes.lock().expect("probes"));

    let rel = |t: Instant| -> f64 {
        if t >= t0 {
            t.duration_since(t0).as_secs_f64()
        } else {
            -t0.duration_since(t).as_secs_f64()
        }
    };
    let ok = |p: &Probe| p.1.is_some_and(|r| r.1);
    let before: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.1.is_some_and(|r| r.0 <= close_started))
        .collect();
    let after: Vec<&Probe> = probes.iter().filter(|p| p.0 >= t0).collect();
    let first_success = after
        .iter()
        .filter(|p| ok(p))
        .filter_map(|p| p.1.map(|r| rel(r.0)))
        .reduce(f64::min);
    // The first probe from which every later one succeeded.
    let all_from = after
        .iter()
        .rposition(|p| !ok(p))
        .map_or(Some(0), |i| (i + 1 < after.len()).then_some(i + 1))
        .map(|i| rel(after[i].0));
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let free_after = samples
        .iter()
        .filter(|s| s.0 >= t0 && s.1 * 100 <= peak)
        .map(|s| rel(s.0))
        .reduce(f64::min);
    Ok(json!({
        "close_seconds": round2(t0.duration_since(close_started).as_secs_f64()),
        "closed": sum_field(&closed, "closed"),
        "before_close": {"attempts": before.len(), "ok": before.iter().filter(|p| ok(p)).count()},
        "after_close": {"attempts": after.len(), "ok": after.iter().filter(|p| ok(p)).count(),
            "window_s": window.as_secs()},
        "first_success_s": first_success.map(round2),
        "all_succeed_from_s": all_from.map(round2),
        "ports_counted_free_after_s": free_after.map(round2),
        "probes": after.iter().map(|p| json!([round2(rel(p.0)), ok(p)])).collect::<Vec<_>>(),
        "ports_in_use_series": samples.iter().map(|s| json!([round1(rel(s.0)), s.1, s.2])).collect::<Vec<_>>(),
    }))
}

// ---------------------------------------------------------------- flood

/// Rate of the frames that fill the calibration bed's flow maps.
const PREFILL_PPS: u64 = 50_000;

struct FloodPlan {
    quick: bool,
    /// How long the calibration bed's maps are filled first.
    prefill: Duration,
    /// Rates tried in the calibration, frames per second (half SYNs, half datagrams).
    rates: Vec<u64>,
    step: Duration,
    duration: Duration,
}

impl FloodPlan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                prefill: Duration::from_secs(6),
                rates: vec![20_000, 40_000, 60_000],
                step: Duration::from_secs(2),
                duration: Duration::from_secs(3),
            }
        } else {
            Self {
                quick,
                prefill: Duration::from_secs(6),
                rates: vec![
                    20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000, 150_000, 200_000,
                    300_000,
                ],
                step: Duration::from_secs(5),
                duration: Duration::from_secs(10),
            }
        }
    }
}

/// The flood's test bed: the topology, servers in every pod, the agent on
/// the examples, and a namespace on the LAN for the sender. Fields drop in
/// order: the agent first, the topology last.
struct FloodBed {
    agent: Agent,
    _servers: PodServers,
    _manifests: ManifestDir,
    sender_ns: Netns,
    sender_mac: [u8; 6],
    node1_mac: [u8; 6],
    topo: ClusterTopology,
}

fn mac_in(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let out = sh(&["ip", "-j", "-n", ns, "link", "show", dev])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    parse_mac(v[0]["address"].as_str().context("no address")?)
}

impl FloodBed {
    fn new() -> Result<Self> {
        let topo = ClusterTopology::new()?;
        let servers = PodServers::start(&topo)?;
        let manifests = ManifestDir::with_examples()?;
        let dir = manifests.path().to_string_lossy().into_owned();
        let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
        let mut args = vec!["--manifests", &dir, "--metrics-addr", &metrics_addr];
        // Investigation aid: the flood with the uplink program at TC (`tc`).
        let hook = std::env::var("LB_FLOWS_UPLINK_HOOK").unwrap_or_default();
        if !hook.is_empty() {
            args.extend(["--uplink-hook", &hook]);
        }
        let mut agent = Agent::start_with(&topo.node1, &args)?;
        agent.wait_ready(Duration::from_mins(2))?;
        let sender_ns = Netns::new("flood")?;
        let lan = topo.lan.name();
        sh(&[
            "ip",
            "-n",
            lan,
            "link",
            "add",
            "lanf",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            sender_ns.name(),
        ])?;
        sh(&[
            "ip", "-n", lan, "link", "set", "lanf", "master", "br0", "up",
        ])?;
        sh(&[
            "ip",
            "-n",
            sender_ns.name(),
            "addr",
            "add",
            FLOOD_ADDR,
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", sender_ns.name(), "link", "set", "eth0", "up"])?;
        sh(&["ip", "-n", sender_ns.name(), "link", "set", "lo", "up"])?;
        let sender_mac = mac_in(sender_ns.name(), "eth0")?;
        let node1_mac = mac_in(topo.node1.name(), "eth0")?;
        Ok(Self {
            agent,
            _servers: servers,
            _manifests: manifests,
            sender_ns,
            sender_mac,
            node1_mac,
            topo,
        })
    }

    /// The paced sender of `rate` spoofed frames per second for `duration`,
    /// started; it answers once, when done.
    fn sender(&self, rate: u64, duration: Duration, deadline: Instant) -> Result<Proc> {
        let hex = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        Proc::spawn(
            "flood sender",
            "flood",
            &self.sender_ns,
            &[
                ("LB_FLOWS_DST_MAC", hex(self.node1_mac)),
                ("LB_FLOWS_SRC_MAC", hex(self.sender_mac)),
                ("LB_FLOWS_VIP", WEB.ip().to_string()),
                ("LB_FLOWS_PORTS", format!("{} {WEB_DNS_PORT}", WEB.port())),
                ("LB_FLOWS_RATE", rate.to_string()),
                ("LB_FLOWS_SECONDS", duration.as_secs_f64().to_string()),
            ],
            deadline,
        )
    }

    /// Spoofed sources must die on the nodes: no default route and no route
    /// to the shared address space in any namespace the flood or its replies reach.
    fn check_unroutable(&self) -> Result<()> {
        for ns in [
            &self.topo.node1,
            &self.topo.node2,
            &self.topo.client,
            &self.sender_ns,
        ] {
            let out = sh(&["ip", "-n", ns.name(), "route", "show", "default"])?;
            ensure!(
                out.stdout.iter().all(u8::is_ascii_whitespace),
                "{} has a default route: spoofed sources would be routed",
                ns.name()
            );
            for probe in ["100.64.0.1", "100.100.100.100", "100.127.255.254"] {
                ensure!(
                    is_spoofed_source(probe.parse()?),
                    "{probe} is not a spoofed source"
                );
                ensure!(
                    sh(&["ip", "-n", ns.name(), "route", "get", probe]).is_err(),
                    "{} routes {probe}",
                    ns.name()
                );
            }
        }
        Ok(())
    }
}

/// Every 500 ms until `stop`: frames into the bridge from the sender and
/// frames dropped in front of node1, in each interval.
/// frames dropped in front of node1, in each interval, and the mean run
/// time of the agent's XDP program (ns; when BPF statistics are on).
fn link_series(lan: &str, pid: u32, stop: &AtomicBool) -> Vec<Value> {
    let read = || -> Option<(u64, u64, ProgRuns)> {
        let out = sh(&["ip", "-j", "-s", "-n", lan, "link", "show"]).ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let dev = |name: &str| v.as_array()?.iter().find(|l| l["ifname"] == name).cloned();
        Some((
            dev("lanf")?["stats64"]["rx"]["packets"].as_u64()?,
            dev("lan1")?["stats64"]["tx"]["dropped"].as_u64()?,
            runs_of_type(&procfs::prog_runs_of(pid), PROG_XDP),
        ))
    };
    let started = Instant::now();
    let mut last = read();
    let mut rows = Vec::new();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_mins(2) {
        std::thread::sleep(Duration::from_millis(500));
        let now = read();
        if let (Some(a), Some(b)) = (last, now) {
            rows.push(json!([
                round1(started.elapsed().as_secs_f64()),
                b.0 - a.0,
                b.1 - a.1,
                mean_ns(&a.2, &b.2)
            ]));
        }
        last = now;
    }
    rows
}

/// The mean of the XDP means of the `link_series` rows whose time passes `keep`.
fn window_mean(rows: &[Value], keep: impl Fn(f64) -> bool) -> Value {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r[0].as_f64().is_some_and(&keep))
        .filter_map(|r| r[3].as_f64())
        .collect();
    if v.is_empty() {
        return Value::Null;
    }
    json!(whole(v.iter().sum::<f64>() / f(count(v.len()))))
}

const PROG_XDP: u32 = 6;
const PROG_SCHED_CLS: u32 = 3;

/// The summed run statistics of the programs of one type.
fn runs_of_type(progs: &BTreeMap<u32, ProgRuns>, prog_type: u32) -> ProgRuns {
    progs
        .values()
        .filter(|p| p.prog_type == prog_type)
        .fold(ProgRuns::default(), |acc, p| ProgRuns {
            prog_type,
            run_time_ns: acc.run_time_ns + p.run_time_ns,
            run_cnt: acc.run_cnt + p.run_cnt,
        })
}

/// Mean run time between two readings, ns (null without runs).
fn mean_ns(a: &ProgRuns, b: &ProgRuns) -> Value {
    let runs = b.run_cnt.saturating_sub(a.run_cnt);
    if runs == 0 {
        return Value::Null;
    }
    json!(whole(
        f(b.run_time_ns.saturating_sub(a.run_time_ns)) / f(runs)
    ))
}

/// Runs and mean run time of the agent's XDP and TC programs between two readings.
fn prog_json(a: &BTreeMap<u32, ProgRuns>, b: &BTreeMap<u32, ProgRuns>) -> Value {
    let one = |t| {
        let (a, b) = (runs_of_type(a, t), runs_of_type(b, t));
        json!({"runs": b.run_cnt.saturating_sub(a.run_cnt), "mean_ns": mean_ns(&a, &b)})
    };
    json!({"xdp": one(PROG_XDP), "tc": one(PROG_SCHED_CLS)})
}

/// Packets each CPU's input backlog dropped (`/proc/net/softnet_stat`,
/// second column): the whole machine, every namespace.
fn softnet_dropped() -> Result<Vec<u64>> {
    std::fs::read_to_string("/proc/net/softnet_stat")?
        .lines()
        .map(|l| {
            let word = l
                .split_whitespace()
                .nth(1)
                .context("a short softnet_stat line")?;
            Ok(u64::from_str_radix(word, 16)?)
        })
        .collect()
}

/// The pods' TCP counters that show a listener under a SYN flood.
const POD_TCP: [&str; 7] = [
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPBacklogDrop",
];

/// `TcpExt` counters of every pod (`/proc/net/netstat` in its namespace).
fn pod_tcp_counters(topo: &ClusterTopology) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
    topo.pods
        .iter()
        .map(|pod| {
            let out = pod.ns.exec(&["cat", "/proc/net/netstat"])?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
            ensure!(lines.len() == 2, "no TcpExt counters in {}", pod.name);
            let counters = lines[0]
                .split_whitespace()
                .zip(lines[1].split_whitespace())
                .skip(1)
                .filter(|(k, _)| POD_TCP.contains(k))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect();
            Ok((pod.name.clone(), counters))
        })
        .collect()
}

/// The counters that changed, per pod.
fn pods_delta(
    a: &BTreeMap<String, BTreeMap<String, u64>>,
    b: &BTreeMap<String, BTreeMap<String, u64>>,
) -> Value {
    b.iter()
        .map(|(pod, after)| {
            let before = a.get(pod);
            let changed: serde_json::Map<String, Value> = after
                .iter()
                .filter_map(|(k, v)| {
                    let d = v.saturating_sub(before.and_then(|m| m.get(k)).copied().unwrap_or(0));
                    (d > 0).then(|| (k.clone(), json!(d)))
                })
                .collect();
            (pod.clone(), Value::Object(changed))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Busy and softirq jiffies per CPU (and in total, first) from /proc/stat.
fn cpu_times() -> Result<Vec<(u64, u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    Ok(stat
        .lines()
        .filter(|l| l.starts_with("cpu"))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total, total - idle, v.get(6).copied().unwrap_or(0))
        })
        .collect())
}

/// Busy % per CPU (total first) and softirq % of the machine between two readings.
fn cpu_json(a: &[(u64, u64, u64)], b: &[(u64, u64, u64)]) -> Value {
    let pct = |x: u64, total: u64| round1(100.0 * f(x) / f(total.max(1)));
    let busy: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| pct(b.1 - a.1, b.0 - a.0))
        .collect();
    json!({"busy_pct": busy.first(), "busy_pct_per_cpu": &busy[1.min(busy.len())..],
        "softirq_pct": a.first().zip(b.first()).map(|(a, b)| pct(b.2 - a.2, b.0 - a.0))})
}

fn link_stats(ns: &str, dev: &str) -> Result<Value> {
    let out = sh(&["ip", "-j", "-s", "-n", ns, "link", "show", dev])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v[0]["stats64"].clone())
}

fn link_delta(a: &Value, b: &Value, dir: &str, field: &str) -> u64 {
    b[dir][field]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(a[dir][field].as_u64().unwrap_or(0))
}

/// A kept-alive connection's record.
#[derive(Default)]
struct Kept {
    ok: u64,
    late: u64,
    broken: Option<String>,
    latencies: Vec<Duration>,
}

async fn keep_alive(mut stream: TcpStream, stop: Arc<AtomicBool>) -> Kept {
    let mut k = Kept::default();
    let mut tick = tokio::time::interval(KEPT_ALIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::with_capacity(128);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_mins(2) {
        tick.tick().await;
        let t = Instant::now();
        match timeout(STALL, request(&mut stream, &mut buf)).await {
            Ok(Ok(())) => {
                k.ok += 1;
                k.late += u64::from(t.elapsed() > LEGIT_TIMEOUT);
                k.latencies.push(t.elapsed());
            }
            Ok(Err(e)) => {
                k.broken = Some(format!("{e:#}"));
                break;
            }
            Err(_) => {
                k.broken = Some(format!("no answer within {STALL:?}"));
                break;
            }
        }
    }
    k
}

/// New connections at `per_second` for `duration`, each one request within `LEGIT_TIMEOUT`.
async fn new_connections(
    per_second: u32,
    duration: Duration,
) -> Vec<(Result<(), String>, Duration)> {
    let n = (f64::from(per_second) * duration.as_secs_f64()).round();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a few hundred
    let n = n as usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        tasks.push(tokio::spawn(attempt(None, WEB, LEGIT_TIMEOUT)));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(
            t.await
                .unwrap_or_else(|_| (Err("task failed".into()), Duration::ZERO)),
        );
    }
    out
}

/// The agent's readiness and memory, polled every 200 ms.
#[derive(Default)]
struct AgentWatch {
    polls: u64,
    ready: u64,
    slowest: Duration,
    max_rss_kib: u64,
}

fn watch_agent(node1: &str, pid: u32, stop: &AtomicBool) -> AgentWatch {
    let node1 = Netns::existing(node1);
    let mut w = AgentWatch::default();
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_mins(2) {
        let t = Instant::now();
        let ok = scrape(&node1, METRICS_PORT, "/readyz")
            .is_ok_and(|(status, _)| status.contains(" 200"));
        w.polls += 1;
        w.ready += u64::from(ok);
        w.slowest = w.slowest.max(t.elapsed());
        if let Some(rss) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .as_deref()
            .and_then(procfs::rss_kib)
        {
            w.max_rss_kib = w.max_rss_kib.max(rss);
        }
        std::thread::sleep(Duration::from_millis(200).saturating_sub(t.elapsed()));
    }
    w
}

/// One flood of `rate` frames per second for `duration`, with the legitimate
/// load and the watches around it.
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn flood_window(bed: &FloodBed, rate: u64, duration: Duration, deadline: Instant) -> Result<Value> {
    bed.check_unroutable()?;
    let rt: Runtime = bed.topo.client.runtime(1)?;
    let client = Netns::existing(bed.topo.client.name());
    let opened = rt.block_on(rt.spawn(async move {
        assert!(
            client.is_current(),
            "the load would leave the client's namespace"
        );
        let tasks: Vec<_> = (0..KEPT_ALIVE)
            .map(|_| tokio::spawn(connect_and_request(None, WEB, LEGIT_TIMEOUT)))
            .collect();
        let mut streams = Vec::new();
        for t in tasks {
            streams.push(t.await.map_err(|e| e.to_string()).and_then(|r| r));
        }
        streams
    }))?;
    let streams = opened
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("a kept-alive connection: {e}"))?;
    let pid = bed.agent.pid().context("the agent's pid")?;
    let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let (rss_before, hwm_before) = (procfs::rss_kib(&status()), procfs::peak_rss_kib(&status()));
    let before = metrics(&bed.topo.node1)?;
    let stop_kept = Arc::new(AtomicBool::new(false));
    let kept: Vec<_> = streams
        .into_iter()
        .map(|s| rt.spawn(keep_alive(s, stop_kept.clone())))
        .collect();
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (node1, stop) = (bed.topo.node1.name().to_string(), stop_watch.clone());
        std::thread::spawn(move || watch_agent(&node1, pid, &stop))
    };
    std::thread::sleep(Duration::from_millis(500));

    let cpu0 = cpu_times()?;
    let softnet0 = softnet_dropped()?;
    let pods0 = pod_tcp_counters(&bed.topo)?;
    let progs0 = procfs::prog_runs_of(pid);
    let lan = bed.topo.lan.name();
    let (lanf0, lan1_0) = (link_stats(lan, "lanf")?, link_stats(lan, "lan1")?);
    let node1_0 = link_stats(bed.topo.node1.name(), "eth0")?;
    let stop_links = Arc::new(AtomicBool::new(false));
    let links = {
        let (lan, stop) = (lan.to_string(), stop_links.clone());
        std::thread::spawn(move || link_series(&lan, pid, &stop))
    };
    let mut sender = bed.sender(rate, duration, deadline)?;
    let fresh = rt.spawn(new_connections(NEW_PER_SECOND, duration));
    let sent = sender.recv(duration + Duration::from_secs(15));
    stop_links.store(true, Ordering::Relaxed);
    let links = links
        .join()
        .map_err(|_| anyhow::anyhow!("the link sampler panicked"))?;
    let cpu1 = cpu_times()?;
    let progs1 = procfs::prog_runs_of(pid);
    let softnet1 = softnet_dropped()?;
    let pods1 = pod_tcp_counters(&bed.topo)?;
    let (lanf1, lan1_1) = (link_stats(lan, "lanf")?, link_stats(lan, "lan1")?);
    let node1_1 = link_stats(bed.topo.node1.name(), "eth0")?;
    let fresh = rt.block_on(fresh);
    std::thread::sleep(Duration::from_secs(1));
    stop_kept.store(true, Ordering::Relaxed);
    let kept: Vec<Kept> = kept
        .into_iter()
        .filter_map(|k| rt.block_on(k).ok())
        .collect();
    stop_watch.store(true, Ordering::Relaxed);
    let watch = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the agent watch panicked"))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    let sent = sent?;
    let fresh = fresh?;
    // Before the scrape: rendering `/metrics` reads both flow maps whole.
    let status_end = status();
    let after = metrics(&bed.topo.node1)?;
    let status_after = status();
    bed.check_unroutable()?;

    let frames = sent["sent"].as_u64().unwrap_or(0);
    let seconds = sent["seconds"].as_f64().unwrap_or(0.0);
    let reached = f(frames) / seconds.max(1e-9);
    let mut kept_lat: Vec<Duration> = kept
        .iter()
        .flat_map(|k| k.latencies.iter().copied())
        .collect();
    kept_lat.sort_unstable();
    let mut fresh_lat: Vec<Duration> = fresh.iter().filter(|r| r.0.is_ok()).map(|r| r.1).collect();
    fresh_lat.sort_unstable();
    let mut fresh_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for (r, _) in &fresh {
        if let Err(e) = r {
            *fresh_reasons.entry(e.clone()).or_insert(0) += 1;
        }
    }
    let fresh_ok = fresh.iter().filter(|r| r.0.is_ok()).count();
    let cpu = cpu_json(&cpu0, &cpu1);
    let idle = 100.0 - cpu["busy_pct"].as_f64().unwrap_or(100.0);
    let busiest = cpu["busy_pct_per_cpu"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .fold(0.0, f64::max);
    let into_bridge = link_delta(&lanf0, &lanf1, "rx", "packets");
    let dropped = link_delta(&lan1_0, &lan1_1, "tx", "dropped");
    let delivered = 1.0 - f(dropped) / f(into_bridge.max(1));
    Ok(json!({
        "requested_pps": rate,
        "sent": frames,
        "refused_by_kernel": sent["refused"],
        "seconds": round1(seconds * 10.0) / 10.0,
        "reached_pps": whole(reached),
        "delivered_pct": round1(100.0 * delivered),
        "kept_up": reached >= KEEP_UP * f(rate) && delivered >= DELIVERED && busiest <= MAX_CPU_BUSY_PCT,
        "sender_cpu_seconds": sent["cpu_seconds"],
        "frames_into_the_bridge": into_bridge,
        "frames_to_node1": link_delta(&lan1_0, &lan1_1, "tx", "packets"),
        "frames_to_node1_dropped": dropped,
        "node1_rx_packets": link_delta(&node1_0, &node1_1, "rx", "packets"),
        "programs": prog_json(&progs0, &progs1),
        "backlog_dropped_per_cpu": softnet0.iter().zip(&softnet1).map(|(a, b)| b.saturating_sub(*a)).collect::<Vec<_>>(),
        "pods_tcp": pods_delta(&pods0, &pods1),
        "xdp_mean_ns_first_2s": window_mean(&links, |t| t <= 2.0),
        "xdp_mean_ns_last_2s": window_mean(&links, |t| t > duration.as_secs_f64() - 2.0),
        "per_half_second": {"columns": ["t_s", "frames_into_the_bridge", "dropped_before_node1", "xdp_mean_ns"],
            "rows": links},
        "node1_rx_dropped": link_delta(&node1_0, &node1_1, "rx", "dropped"),
        "cpu": cpu,
        "machine_idle_pct": round1(idle),
        "established": {
            "connections": kept.len(),
            "requests_ok": kept.iter().map(|k| k.ok).sum::<u64>(),
            "requests_late": kept.iter().map(|k| k.late).sum::<u64>(),
            "broken": kept.iter().filter(|k| k.broken.is_some()).count(),
            "broken_reasons": kept.iter().filter_map(|k| k.broken.clone()).collect::<Vec<_>>(),
            "latency": latency_json(&kept_lat),
        },
        "new_connections": {
            "attempted": fresh.len(),
            "ok": fresh_ok,
            "success_pct": round1(100.0 * f(count(fresh_ok)) / f(count(fresh.len()).max(1)) * 10.0) / 10.0,
            "failure_reasons": fresh_reasons,
            "latency": latency_json(&fresh_lat),
        },
        "readyz": {"polls": watch.polls, "ready": watch.ready, "slowest_ms": ms(watch.slowest)},
        "agent_rss_kib": {"before": rss_before, "peak_vmhwm_before": hwm_before, "max_sampled": watch.max_rss_kib,
            "after": procfs::rss_kib(&status_end), "peak_vmhwm": procfs::peak_rss_kib(&status_end),
            "peak_vmhwm_after_metrics_scrape": procfs::peak_rss_kib(&status_after)},
        "agent_maps_memlock_bytes": procfs::maps_memlock_of(pid),
        "metrics_before": to_json(&before),
        "metrics_after": to_json(&after),
        "metrics_delta": to_json(&delta(&before, &after)),
    }))
}

/// Fills the bed's flow maps: the state a long flood reaches (LRU maps
/// full and evicting, SNAT pools full of unanswered flows).
fn prefill(bed: &FloodBed, plan: &FloodPlan, deadline: Instant) -> Result<Value> {
    eprintln!("flood: filling the flow maps for {:?}", plan.prefill);
    let mut sender = bed.sender(PREFILL_PPS, plan.prefill, deadline)?;
    let sent = sender.recv(plan.prefill + Duration::from_secs(15))?;
    let m = metrics(&bed.topo.node1)?;
    let prefill = json!({"pps": PREFILL_PPS, "seconds": plan.prefill.as_secs(), "sent": sent["sent"],
        "conntrack_entries": whole(get(&m, "lb_conntrack_entries")),
        "reverse_nat_entries": whole(get(&m, "lb_reverse_nat_entries")),
        "snat_ports_in_use": to_json(&m.iter().filter(|(k, _)| k.starts_with("lb_snat_ports_in_use"))
            .map(|(k, v)| (k.clone(), *v)).collect())});
    eprintln!("  conntrack entries: {}", prefill["conntrack_entries"]);
    Ok(prefill)
}

/// The calibration: steps up the list of rates until one does not keep up.
fn calibrate(bed: &FloodBed, plan: &FloodPlan, deadline: Instant) -> Result<Vec<Value>> {
    let mut steps = Vec::new();
    for &rate in &plan.rates {
        eprintln!("flood calibration: {rate} frames/s for {:?}", plan.step);
        let step = flood_window(bed, rate, plan.step, deadline)?;
        eprintln!(
            "  reached {} frames/s, {}% of them to node1, CPU busy {}%, kept up: {}",
            step["reached_pps"],
            step["delivered_pct"],
            step["cpu"]["busy_pct_per_cpu"],
            step["kept_up"]
        );
        let kept_up = step["kept_up"].as_bool().unwrap_or(false);
        steps.push(step);
        if !kept_up {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(steps)
}

fn flood(plan: &FloodPlan, deadline: Instant) -> Result<(Value, String)> {
    // The programs' run time, counted while this descriptor is open (a
    // few tens of ns per run; the figures read "mean_ns").
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    if let Err(e) = &stats {
        eprintln!("flood: no BPF run-time statistics: {e}");
    }
    // One bed: its maps filled first, then the calibration and the measured
    // flood, all in the state a long flood reaches.
    let bed = FloodBed::new()?;
    bed.check_unroutable()?;
    let prefill = prefill(&bed, plan, deadline)?;
    // Investigation aid: `LB_FLOWS_RATE=N` floods at N frames/s, uncalibrated.
    let forced: Option<u64> = std::env::var("LB_FLOWS_RATE")
        .ok()
        .and_then(|r| r.parse().ok());
    let steps = match forced {
        Some(_) => Vec::new(),
        None => calibrate(&bed, plan, deadline)?,
    };
    let chosen = forced.unwrap_or_else(|| {
        steps
            .iter()
            .filter(|s| s["kept_up"].as_bool().unwrap_or(false))
            .filter_map(|s| s["requested_pps"].as_u64())
            .max()
            .unwrap_or(plan.rates[0])
    });
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("flood: {chosen} frames/s for {:?}", plan.duration);
    let run = flood_window(&bed, chosen, plan.duration, deadline)?;
    let calibration: Vec<Value> = steps
        .iter()
        .map(|s| {
            json!({"requested_pps": s["requested_pps"], "reached_pps": s["reached_pps"],
                "delivered_pct": s["delivered_pct"], "frames_to_node1_dropped": s["frames_to_node1_dropped"],
                "machine_idle_pct": s["machine_idle_pct"], "cpu": s["cpu"], "kept_up": s["kept_up"],
                "new_connections": s["new_connections"], "established": s["established"],
                "readyz": s["readyz"], "metrics_delta": s["metrics_delta"], "programs": s["programs"]})
        })
        .collect();
    let broken = run["established"]["broken"].as_u64().unwrap_or(u64::MAX);
    let success = run["new_connections"]["success_pct"]
        .as_f64()
        .unwrap_or(0.0);
    let ready = run["readyz"]["polls"] == run["readyz"]["ready"];
    let json = json!({
        "mix": "half TCP SYNs to 10.96.0.10:80, half UDP datagrams to 10.96.0.10:53, sources random in 100.64.0.0/10, ports random in 1024-65535",
        "step_seconds": plan.step.as_secs_f64(),
        "prefill": prefill,
        "calibration": calibration,
        "chosen_pps": chosen,
        "rate_forced": forced.is_some(),
        "bpf_run_time_stats": stats.is_ok(),
        "uplink_hook": std::env::var("LB_FLOWS_UPLINK_HOOK").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "xdp".into()),
        "duration_seconds": plan.duration.as_secs_f64(),
        "run": run,
        "spoofed_sources_unroutable": true,
        "targets": {
            "established_broken_zero": broken == 0,
            "new_connections_99pct": success >= 99.0,
            "agent_ready_throughout": ready,
        },
    });
    let md = flood_md(plan, &json);
    Ok((json, md))
}

#[allow(clippy::too_many_lines)] // one table
fn flood_md(plan: &FloodPlan, j: &Value) -> String {
    let r = &j["run"];
    let mut md = format!(
        "Spoofed frames ({}) sent on an `AF_PACKET` socket from a namespace of its own on the LAN, \
         straight to node1's MAC, by one paced sender process. node1 has no default route and \
         nothing routes 100.64.0.0/10 (checked before and after): replies die on node1. The agent \
         runs with its defaults on `examples/` (web-service: pod1a/b/c on node1, pod2a on node2). \
         The bed's flow maps are filled first ({} conntrack entries after {} s of {PREFILL_PPS} \
         frames/s: the state a long flood reaches, LRU maps full and evicting, SNAT pools full), \
         then the calibration and the measured flood run in it. Calibration: {} s at each rate, up \
         the list until the sender falls \
         below {:.0}% of its rate, or less than {:.0}% of what it sends reaches node1 (the rest \
         is dropped by the veth in front of node1's XDP program, as a NIC drops when its ring \
         overflows), or a CPU is busier than {MAX_CPU_BUSY_PCT:.0}%; the highest rate that passed \
         is used for the {} s flood{}{}. BPF run-time statistics are on during this part (`BPF_ENABLE_STATS`).\n\n\
         | calibration: requested (frames/s) | reached (frames/s) | reaching node1 (%) | CPU busy, per CPU (%) | \
         XDP program, mean ns per packet | new connections ok | established broken | kept up |\n\
         |---:|---:|---:|---|---:|---:|---:|---|\n",
        j["mix"].as_str().unwrap_or_default(),
        j["prefill"]["conntrack_entries"],
        plan.prefill.as_secs(),
        plan.step.as_secs(),
        KEEP_UP * 100.0,
        DELIVERED * 100.0,
        plan.duration.as_secs(),
        if plan.quick { " (quick run: the full run floods for 10 s)" } else { "" },
        match j["uplink_hook"].as_str() {
            Some("xdp") | None => String::new(),
            Some(hook) => format!(" (investigation: the uplink program at {hook}, not XDP)"),
        },
    );
    for s in j["calibration"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {}/{} | {} | {} |",
            s["requested_pps"],
            s["reached_pps"],
            s["delivered_pct"],
            s["cpu"]["busy_pct_per_cpu"],
            s["programs"]["xdp"]["mean_ns"],
            s["new_connections"]["ok"],
            s["new_connections"]["attempted"],
            s["established"]["broken"],
            if s["kept_up"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            }
        );
    }
    let ev = |name: &str| {
        let key = format!("lb_datapath_events_total{{event=\"{name}\"}}");
        format!(
            "{} -> {}",
            r["metrics_before"][&key], r["metrics_after"][&key]
        )
    };
    let m = |name: &str| {
        format!(
            "{} -> {}",
            r["metrics_before"][name], r["metrics_after"][name]
        )
    };
    let verdicts = [
        "translated",
        "reversed",
        "passed",
        "dropped",
        "error",
        "invalid",
    ]
    .iter()
    .map(|v| {
        format!(
            "{v} {}",
            r["metrics_delta"][&format!("lb_packets_total{{verdict=\"{v}\"}}")]
        )
    })
    .collect::<Vec<_>>()
    .join(", ");
    let rows: [(&str, String); 20] = [
        ("rate requested / reached (frames/s)", format!("{} / {}", r["requested_pps"], r["reached_pps"])),
        (
            "XDP program, mean ns per packet: first 2 s / last 2 s of the flood",
            format!("{} / {}", r["xdp_mean_ns_first_2s"], r["xdp_mean_ns_last_2s"]),
        ),
        (
            "agent's programs: XDP runs, mean ns ; TC runs, mean ns",
            format!(
                "{}, {} ; {}, {}",
                r["programs"]["xdp"]["runs"], r["programs"]["xdp"]["mean_ns"], r["programs"]["tc"]["runs"], r["programs"]["tc"]["mean_ns"]
            ),
        ),
        ("frames sent (refused by the kernel)", format!("{} ({}) in {} s", r["sent"], r["refused_by_kernel"], r["seconds"])),
        (
            "frames into the bridge / on to node1, all traffic (dropped on the way; at node1's eth0)",
            format!(
                "{} / {} ({} ; {})",
                r["frames_into_the_bridge"], r["frames_to_node1"], r["frames_to_node1_dropped"], r["node1_rx_dropped"]
            ),
        ),
        (
            "input backlog drops per CPU (whole machine, `softnet_stat`)",
            format!("{}", r["backlog_dropped_per_cpu"]),
        ),
        ("pods' TCP counters that moved", format!("`{}`", r["pods_tcp"])),
        (
            "CPU busy: machine / per CPU (%); softirq (%)",
            format!("{} / {} ; {}", r["cpu"]["busy_pct"], r["cpu"]["busy_pct_per_cpu"], r["cpu"]["softirq_pct"]),
        ),
        (
            "established connections broken (requests answered / of them later than 2 s)",
            format!(
                "{} of {} ({} / {})",
                r["established"]["broken"], r["established"]["connections"], r["established"]["requests_ok"], r["established"]["requests_late"]
            ),
        ),
        (
            "established: request p50 / p99 / max (ms)",
            format!("{} / {} / {}", r["established"]["latency"]["p50_ms"], r["established"]["latency"]["p99_ms"], r["established"]["latency"]["max_ms"]),
        ),
        (
            "new connections during the flood: ok / attempted (%)",
            format!(
                "{} / {} ({}%) {}",
                r["new_connections"]["ok"],
                r["new_connections"]["attempted"],
                r["new_connections"]["success_pct"],
                reasons_text(&r["new_connections"]["failure_reasons"])
            ),
        ),
        (
            "new connections: p50 / p99 / max (ms)",
            format!(
                "{} / {} / {}",
                r["new_connections"]["latency"]["p50_ms"], r["new_connections"]["latency"]["p99_ms"], r["new_connections"]["latency"]["max_ms"]
            ),
        ),
        (
            "agent `/readyz` 200 (polls; slowest ms)",
            format!("{} of {} ; {}", r["readyz"]["ready"], r["readyz"]["polls"], r["readyz"]["slowest_ms"]),
        ),
        (
            "agent RSS before / max sampled during (KiB); peak (VmHWM) before -> after the flood -> after a `/metrics` scrape",
            format!(
                "{} / {} ; {} -> {} -> {}",
                r["agent_rss_kib"]["before"],
                r["agent_rss_kib"]["max_sampled"],
                r["agent_rss_kib"]["peak_vmhwm_before"],
                r["agent_rss_kib"]["peak_vmhwm"],
                r["agent_rss_kib"]["peak_vmhwm_after_metrics_scrape"]
            ),
        ),
        ("conntrack entries before -> after", m("lb_conntrack_entries")),
        ("reverse-NAT entries before -> after", m("lb_reverse_nat_entries")),
        (
            "conntrack / reverse-NAT evictions before -> after",
            format!("{} ; {}", m("lb_conntrack_evictions_total"), m("lb_reverse_nat_evictions_total")),
        ),
        ("`snat_early_drop` events before -> after", ev("snat_early_drop")),
        ("`snat_exhausted` events before -> after", ev("snat_exhausted")),
        ("verdicts during the window (delta)", verdicts),
    ];
    let _ = writeln!(
        md,
        "\n| figure ({} s flood) | value |\n|---|---|",
        plan.duration.as_secs()
    );
    for (name, value) in rows {
        let _ = writeln!(md, "| {name} | {value} |");
    }
    let t = &j["targets"];
    let _ = writeln!(
        md,
        "\nTargets: 0 established broken: {}; ≥99% new connections succeed during the flood: {} ({}%); \
         the agent ready throughout: {}.\n",
        verdict(t["established_broken_zero"].as_bool().unwrap_or(false)),
        verdict(t["new_connections_99pct"].as_bool().unwrap_or(false)),
        r["new_connections"]["success_pct"],
        verdict(t["agent_ready_throughout"].as_bool().unwrap_or(false)),
    );
    md
}

// ---------------------------------------------------------------- helper processes

/// The roles this binary plays when re-executed with `LB_FLOWS_ROLE`.
mod child {
    use std::{
        collections::BTreeMap,
        io::{BufRead, Write},
    };

    use anyhow::{bail, ensure, Context};
    use futures::StreamExt as _;
    use lb_tests::flood::{parse_mac, send_paced};
    use serde_json::json;

    use super::{
        connect_and_request, request, serve_answers, AsRawFd, Duration, FrameMaker, Instant,
        Ipv4Addr, Result, SocketAddr, SocketAddrV4, TcpSocket, TcpStream, Value, LIFETIME_ENV,
        NETNS_ENV, PARENT_ENV,
    };

    /// Runs `role` and exits; never returns.
    pub fn main(role: &str) -> ! {
        let code = match setup().and_then(|()| run(role)) {
            Ok(()) => 0,
            Err(e) => {
                println!("{}", json!({"error": format!("{e:#}")}));
                1
            }
        };
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }

    fn env(name: &str) -> Result<String> {
        std::env::var(name).with_context(|| format!("{name} is not set"))
    }

    /// Dies with the parent and after the lifetime; enters the namespace.
    fn setup() -> Result<()> {
        // SAFETY: prctl with an integer argument.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        if env(PARENT_ENV)?.parse::<i32>()? != parent {
            bail!("the benchmark is gone");
        }
        let path = env(NETNS_ENV)?;
        ensure!(
            path.starts_with(&format!("/run/netns/{}", lb_tests::netns::PREFIX)),
            "{path} is not a namespace of the tests"
        );
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on a valid namespace fd, before any other thread exists.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        let lifetime = Duration::from_millis(env(LIFETIME_ENV)?.parse()?);
        std::thread::spawn(move || {
            std::thread::sleep(lifetime);
            eprintln!("flows helper: past the benchmark's deadline, exiting");
            std::process::exit(2);
        });
        Ok(())
    }

    fn run(role: &str) -> Result<()> {
        match role {
            "server" => server(),
            "client" => client(),
            "flood" => flood(),
            _ => bail!("unknown role {role}"),
        }
    }

    fn runtime() -> Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?)
    }

    /// pod2a's HTTP server, one of several sharing the port; until stdin closes.
    fn server() -> Result<()> {
        let name = env("LB_FLOWS_NAME")?;
        let port: u16 = env("LB_FLOWS_PORT")?.parse()?;
        std::thread::spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            std::process::exit(0);
        });
        let rt = runtime()?;
        rt.block_on(async move {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                port,
            )))?;
            let listener = socket.listen(8192)?;
            println!("{}", json!({"ready": true}));
            std::io::stdout().flush()?;
            serve_answers(listener, name).await;
            Ok(())
        })
    }

    /// Opens, checks and closes connections on command (see `Proc`).
    fn client() -> Result<()> {
        let target: SocketAddrV4 = env("LB_FLOWS_TARGET")?.parse()?;
        let bind: Ipv4Addr = env("LB_FLOWS_BIND")?.parse()?;
        let rt = runtime()?;
        let mut held: Vec<TcpStream> = Vec::new();
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer = match words.as_slice() {
                ["open", n, timeout_ms, concurrency] => {
                    let (n, t, c) = (
                        n.parse()?,
                        Duration::from_millis(timeout_ms.parse()?),
                        concurrency.parse()?,
                    );
                    rt.block_on(open(target, bind, n, t, c, &mut held))
                }
                ["check"] => rt.block_on(check(&mut held)),
                ["close"] => {
                    let n = held.len();
                    rt.block_on(async { held.clear() });
                    json!({"closed": n})
                }
                _ => json!({"error": format!("unknown command {line:?}")}),
            };
            println!("{answer}");
            std::io::stdout().flush()?;
        }
        Ok(())
    }

    async fn open(
        target: SocketAddrV4,
        bind: Ipv4Addr,
        n: usize,
        connect_timeout: Duration,
        concurrency: usize,
        held: &mut Vec<TcpStream>,
    ) -> Value {
        let started = Instant::now();
        let results: Vec<Result<TcpStream, String>> = futures::stream::iter(0..n)
            .map(|_| connect_and_request(Some(bind), target, connect_timeout))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let (mut ok, mut failed) = (0u64, 0u64);
        for r in results {
            match r {
                Ok(s) => {
                    held.push(s);
                    ok += 1;
                }
                Err(e) => {
                    failed += 1;
                    *reasons.entry(e).or_insert(0) += 1;
                }
            }
        }
        json!({"ok": ok, "failed": failed, "reasons": reasons, "held": held.len(),
            "seconds": started.elapsed().as_secs_f64()})
    }

    /// One more request on every held connection; the ones that fail are dropped.
    async fn check(held: &mut Vec<TcpStream>) -> Value {
        let results: Vec<bool> = futures::stream::iter(held.iter_mut())
            .map(|s| async move {
                let mut buf = Vec::with_capacity(128);
                matches!(
                    tokio::time::timeout(Duration::from_secs(5), request(s, &mut buf)).await,
                    Ok(Ok(()))
                )
            })
            .buffered(512)
            .collect()
            .await;
        let mut it = results.iter();
        held.retain(|_| *it.next().unwrap_or(&false));
        let ok = results.iter().filter(|&&r| r).count();
        json!({"ok": ok, "failed": results.len() - ok})
    }

    /// The paced spoofing sender: only on this namespace's eth0, only to a
    /// Service address, only from the shared address space.
    fn flood() -> Result<()> {
        ensure!(
            env(NETNS_ENV)?.ends_with("-flood"),
            "the sender runs only in the flood's own namespace"
        );
        let dst: Ipv4Addr = env("LB_FLOWS_VIP")?.parse()?;
        ensure!(
            u32::from(dst) >> 20 == u32::from(Ipv4Addr::new(10, 96, 0, 0)) >> 20,
            "{dst} is not a Service address of the topology"
        );
        let ports: Vec<u16> = env("LB_FLOWS_PORTS")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        ensure!(ports.len() == 2, "two ports: TCP and UDP");
        let rate: u64 = env("LB_FLOWS_RATE")?.parse()?;
        let seconds: f64 = env("LB_FLOWS_SECONDS")?.parse()?;
        ensure!(rate <= 2_000_000 && seconds <= 60.0, "a bounded flood");
        let seed = u64::from(std::process::id())
            ^ u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos()
                    & u128::from(u64::MAX),
            )?;
        let mut maker = FrameMaker::new(
            parse_mac(&env("LB_FLOWS_DST_MAC")?)?,
            parse_mac(&env("LB_FLOWS_SRC_MAC")?)?,
            dst,
            (ports[0], ports[1]),
            seed,
        );
        let report = send_paced("eth0", &mut maker, rate, Duration::from_secs_f64(seconds))?;
        // SAFETY: getrusage fills the struct we pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) };
        #[allow(clippy::cast_precision_loss)] // seconds and microseconds of CPU time
        let cpu = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) as f64
            + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) as f64 / 1e6;
        println!(
            "{}",
            json!({"sent": report.sent, "refused": report.refused, "seconds": report.seconds, "cpu_seconds": cpu})
        );
        Ok(())
    }
}
