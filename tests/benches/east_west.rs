//! East-west: a pod on node1 reaching a Service whose backends are two other
//! pods on node1, three ways in the same run: directly to the backends (no
//! balancer, half the clients to each: the limit), through the per-packet path (the TC programs on
//! the pods' interfaces, `--socket-lb off`), and through socket-level
//! balancing (`--socket-lb all`: the pod's socket is pointed at a backend
//! at `connect`, no packet is translated). The client is the same process
//! in every mode (`ew-load`, in pod1a's namespace and in a test cgroup of
//! its own, where the agent attaches its socket programs in the socket
//! mode; never the machine's root cgroup). Each measurement gets a fresh
//! topology; rounds rotate the order of the modes. Run with `cargo xtask
//! bench`.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_tests::{
    agent::{Agent, ManifestDir},
    bench_run,
    cgroup::TestCgroup,
    load::{BenchServers, BENCH_HTTP_PORT},
    stats::{figure, paired_ratio, ratio},
    topology::ClusterTopology,
};

const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 50), 80);
const CONCURRENCY: usize = 4;

/// The Service: pod1b and pod1c, on node1 with the client pod1a.
const MANIFEST: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: east-west, namespace: bench}\n\
spec:\n  clusterIP: 10.96.0.50\n  ports:\n  - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: east-west-1, namespace: bench, labels: {kubernetes.io/service-name: east-west}}\n\
addressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\nendpoints:\n\
- {addresses: [10.244.1.3], nodeName: node1, conditions: {ready: true}}\n\
- {addresses: [10.244.1.4], nodeName: node1, conditions: {ready: true}}\n";

/// How the client pod reaches the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Direct,
    PerPacket,
    Socket,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Direct, Mode::PerPacket, Mode::Socket];

    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct to the pods (no balancer)",
            Mode::PerPacket => "per-packet path (TC on the pods' interfaces)",
            Mode::Socket => "socket-level balancing (--socket-lb all)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::PerPacket => "per_packet",
            Mode::Socket => "socket",
        }
    }
}

/// The figures of one measurement, in column order.
type Sample = [u64; COLUMNS.len()];

/// Column names and where `ew-load` reports them (section, field).
const COLUMNS: [(&str, &str, &str); 6] = [
    ("connect p50 (us)", "connect", "p50_us"),
    ("connect p99 (us)", "connect", "p99_us"),
    ("new connections/s", "new_connection", "per_s"),
    ("new conn p99 (us)", "new_connection", "p99_us"),
    ("kept-alive requests/s", "kept_alive", "per_s"),
    ("request p99 (us)", "kept_alive", "p99_us"),
];

fn run_mode(mode: Mode, manifests: &ManifestDir, duration: Duration) -> Result<(Sample, u64)> {
    let topo = ClusterTopology::new()?;
    let client = &topo.pod("pod1a").ns;
    for key in [
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        client.exec(&["sysctl", "-qw", key])?;
    }
    let backends = [topo.pod("pod1b"), topo.pod("pod1c")];
    let _servers = BenchServers::start(&backends)?;
    let cgroup = TestCgroup::new("eastwest");
    let cgroup_dir = cgroup.path().to_string_lossy().into_owned();
    let dir = manifests.path().to_string_lossy().into_owned();
    let (target, agent) = match mode {
        Mode::Direct => {
            let pods = backends.map(|p| SocketAddrV4::new(p.ip, BENCH_HTTP_PORT).to_string());
            (pods.join(","), None)
        }
        Mode::PerPacket | Mode::Socket => {
            let mut args = vec!["--manifests", dir.as_str()];
            if mode == Mode::Socket {
                args.extend(["--socket-lb", "all", "--socket-lb-cgroup", &cgroup_dir]);
            }
            let mut agent = Agent::start_with(&topo.node1, &args)?;
            agent.wait_ready(Duration::from_mins(1))?;
            (SERVICE.to_string(), Some(agent))
        }
    };
    let netns = format!("--net=/run/netns/{}", client.name());
    let millis = duration.as_millis().to_string();
    let out = Command::new("nsenter")
        .args([
            netns.as_str(),
            "--",
            env!("CARGO_BIN_EXE_ew-load"),
            &cgroup_dir,
            &target,
            &CONCURRENCY.to_string(),
            &millis,
        ])
        .output()
        .context("running ew-load")?;
    drop(agent);
    if !out.status.success() {
        bail!("{}: ew-load failed: {out:?}", mode.name());
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut sample = [0; COLUMNS.len()];
    for (value, (name, section, field)) in sample.iter_mut().zip(COLUMNS) {
        // Rates and microseconds: positive, far below 2^52.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = report[section][field]
            .as_f64()
            .with_context(|| format!("{name} missing from {report}"))?
            .round() as u64;
        *value = whole;
    }
    let errors = ["connect", "new_connection", "kept_alive"]
        .iter()
        .map(|s| report[s]["errors"].as_u64().unwrap_or(0))
        .sum();
    Ok((sample, errors))
}

fn main() -> Result<()> {
    lb_tests::require_root();
    let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
    let (rounds, duration) = if quick {
        (1, Duration::from_secs(1))
    } else {
        (5, Duration::from_secs(3))
    };
    let started = Instant::now();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;
    let manifests = ManifestDir::new()?;
    manifests.write("east-west.yaml", MANIFEST)?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Mode::ALL.len()];
    let mut errors = vec![0u64; Mode::ALL.len()];
    for round in 0..rounds {
        for k in 0..Mode::ALL.len() {
            let index = (k + round) % Mode::ALL.len();
            let mode = Mode::ALL[index];
            let (sample, failed) = run_mode(mode, &manifests, duration)
                .with_context(|| format!("east-west, {}", mode.name()))?;
            eprintln!("east-west, {}: {sample:?}, {failed} errors", mode.name());
            samples[index].push(sample);
            errors[index] += failed;
        }
    }
    let mut md = format!(
        "A pod on node1 (pod1a) reaching a ClusterIP Service whose two backends are pods on \
         node1, in the namespace topology: {CONCURRENCY} concurrent clients in one process \
         (`ew-load`), {} s per figure and kind of load, {rounds} round(s), modes in rotating \
         order, a fresh topology for every measurement. `connect` is the `connect()` call \
         alone (the handshake); a new connection is connect, request, response and close; \
         kept-alive requests reuse one connection per client. Median of rounds (spread: \
         lowest-highest round); the ratios pair the modes of each round.\n\n| mode |",
        duration.as_secs()
    );
    for (name, _, _) in COLUMNS {
        let _ = write!(md, " {name} |");
    }
    let _ = writeln!(md, " errors |\n|---|{}---:|", "---:|".repeat(COLUMNS.len()));
    let mut json = serde_json::Map::new();
    for ((mode, rows), failed) in Mode::ALL.iter().zip(&samples).zip(&errors) {
        let _ = write!(md, "| {} |", mode.name());
        let mut fields = serde_json::Map::new();
        let mut per_round = serde_json::Map::new();
        for (c, (name, _, _)) in COLUMNS.iter().enumerate() {
            let values: Vec<u64> = rows.iter().map(|s| s[c]).collect();
            let f = figure(&values);
            let _ = write!(md, " {} ({}-{}) |", f.median, f.low, f.high);
            fields.insert((*name).to_string(), serde_json::json!(f.median));
            per_round.insert((*name).to_string(), serde_json::json!(values));
        }
        let _ = writeln!(md, " {failed} |");
        fields.insert("errors".into(), serde_json::json!(failed));
        fields.insert("rounds".into(), serde_json::Value::Object(per_round));
        json.insert(mode.key().into(), serde_json::Value::Object(fields));
    }
    ratios(&samples, &mut md, &mut json);
    json.insert("rounds".into(), serde_json::json!(rounds));
    json.insert("seconds".into(), serde_json::json!(duration.as_secs()));
    std::fs::write(out.join("east_west.md"), bench_run::stamped_text(&md))?;
    std::fs::write(
        out.join("east_west.json"),
        serde_json::to_string_pretty(&bench_run::stamped(serde_json::Value::Object(json)))?,
    )?;
    eprintln!(
        "east-west benchmark done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The ratios of the modes, each the median of its per-round ratios, into
/// `md` and `json` (with every round's ratio).
fn ratios(
    samples: &[Vec<Sample>],
    md: &mut String,
    json: &mut serde_json::Map<String, serde_json::Value>,
) {
    let column = |mode: Mode, c: usize| -> Vec<u64> {
        let index = Mode::ALL.iter().position(|m| *m == mode).unwrap();
        samples[index].iter().map(|s| s[c]).collect()
    };
    let _ = writeln!(
        *md,
        "\nRatios (median of the rounds' ratios, lowest-highest):"
    );
    let mut ratios = serde_json::Map::new();
    let mut ratio_rounds = serde_json::Map::new();
    for (c, what) in [
        (0, "connect p50"),
        (2, "new connections/s"),
        (4, "kept-alive requests/s"),
    ] {
        for (a, b) in [
            (Mode::Socket, Mode::PerPacket),
            (Mode::Socket, Mode::Direct),
        ] {
            let (ours, base) = (column(a, c), column(b, c));
            if let Some((median, low, high)) = paired_ratio(&ours, &base) {
                ratio_rounds.insert(
                    format!("{what}, {} / {}", a.key(), b.key()),
                    ours.iter().zip(&base).map(|(&x, &y)| ratio(x, y)).collect(),
                );
                let _ = writeln!(
                    *md,
                    "- {what}, {} / {}: {median:.2}x ({low:.2}-{high:.2}x)",
                    a.key(),
                    b.key()
                );
                ratios.insert(
                    format!("{what}, {} / {}", a.key(), b.key()),
                    serde_json::json!(median),
                );
            }
        }
    }
    json.insert("ratios".into(), serde_json::Value::Object(ratios));
    json.insert(
        "ratios_rounds".into(),
        serde_json::Value::Object(ratio_rounds),
    );
}
