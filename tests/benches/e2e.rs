//! End to end: one Service reached four ways in the same run, in the test
//! topology (client -> node1's uplink -> pods on node1): directly to one
//! backend (no balancer: the limit), through our data path, through the rules
//! kube-proxy's iptables mode installs, and through its nftables-mode rules;
//! with 10 and with 10,000 Services programmed. Each measurement gets a fresh
//! topology, so no mode inherits another's netfilter state. Rounds rotate the
//! order of the modes. Run with `cargo xtask bench`.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_tests::{
    agent::{Agent, ManifestDir},
    bench_run,
    charts::{grouped_bars, Bar, Group},
    kubeproxy::{iptables_restore, manifests_yaml, nft_ruleset, KpService},
    load::{bulk, kept_alive, new_connections, BenchServers, BENCH_HTTP_PORT, SINK_PORT},
    netns::Netns,
    procfs,
    stats::{figure, paired_ratio, ratio, spread, Figure},
    topology::ClusterTopology,
};

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const BULK: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 9000);
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const CONCURRENCY: usize = 8;

/// How the client reaches the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
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
    const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::Ours,
        Mode::OursTc,
        Mode::DirectAgain,
        Mode::Iptables,
        Mode::Nftables,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct (no balancer)",
            Mode::DirectAgain => "direct again (noise floor)",
            Mode::Ours => "lb-agent (XDP uplink)",
            Mode::OursTc => "lb-agent (TC uplink)",
            Mode::Iptables => "kube-proxy iptables layout",
            Mode::Nftables => "kube-proxy nftables layout",
        }
    }

    fn key(self) -> &'static str {
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

/// The Services: web (three pods on node1) and bulk (one pod), placed in the
/// middle of `total` Services whose other endpoints are never reached.
fn workload(total: u32) -> Vec<KpService> {
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
            if name.starts_with("filler") {
                "node2"
            } else {
                "node1"
            }
            .into(),
        ),
    };
    let mut all: Vec<KpService> = (0..total.saturating_sub(2))
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
    all
}

/// The rule files and manifests of one scale.
struct Programs {
    manifests: ManifestDir,
    iptables: PathBuf,
    nft: PathBuf,
}

fn programs(total: u32, dir: &Path) -> Result<Programs> {
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
struct Sample {
    conn_per_s: u64,
    conn_p50_us: u64,
    conn_p99_us: u64,
    req_per_s: u64,
    req_p50_us: u64,
    req_p99_us: u64,
    bulk_mbit_s: u64,
    errors: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // rates are positive and small
fn whole(x: f64) -> u64 {
    x.round() as u64
}

fn run_mode(mode: Mode, programs: &Programs, duration: Duration) -> Result<Sample> {
    let topo = ClusterTopology::new()?;
    topo.client.exec(&[
        "ip",
        "route",
        "add",
        "10.244.0.0/16",
        "via",
        "192.168.50.11",
    ])?;
    for key in [
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        topo.client.exec(&["sysctl", "-qw", key])?;
    }
    let pods: Vec<_> = ["pod1a", "pod1b", "pod1c"]
        .iter()
        .map(|p| topo.pod(p))
        .collect();
    let _servers = BenchServers::start(&pods)?;
    let mut agent = None;
    let (web, bulk_to) = match mode {
        Mode::Direct | Mode::DirectAgain => (
            SocketAddrV4::new(pods[0].ip, BENCH_HTTP_PORT),
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
            (WEB, BULK)
        }
        Mode::Iptables => {
            load_rules(&topo.node1, "iptables-restore <", &programs.iptables)?;
            (WEB, BULK)
        }
        Mode::Nftables => {
            load_rules(&topo.node1, "nft -f", &programs.nft)?;
            (WEB, BULK)
        }
    };
    let rt = topo.client.runtime(1)?;
    let client = Netns::existing(topo.client.name());
    // Spawned, so it runs on a worker thread, inside the client's namespace.
    let measure = rt.spawn(async move {
        if !client.is_current() {
            bail!("the load would leave the client's namespace");
        }
        let warm = new_connections(web, 2, Duration::from_millis(300)).await;
        if warm.completed == 0 || warm.errors > 0 {
            bail!("{}: the service does not answer: {warm:?}", mode.name());
        }
        let conn = new_connections(web, CONCURRENCY, duration).await;
        let kept = kept_alive(web, CONCURRENCY, duration).await;
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
        })
    });
    let sample = rt.block_on(measure)??;
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(agent);
    Ok(sample)
}

fn load_rules(node: &Netns, tool: &str, file: &Path) -> Result<()> {
    let command = format!("{tool} {}", file.display());
    node.exec(&["sh", "-c", &command])
        .with_context(|| format!("loading {} with {tool}", file.display()))?;
    Ok(())
}

/// Programming from cold, once: (our agent to ready, its peak RSS in KiB,
/// its maps' kernel memory in bytes, `iptables-restore`, `nft -f`, its heap
/// at ready in KiB).
fn program_from_cold(programs: &Programs) -> Result<(Duration, u64, u64, Duration, Duration, u64)> {
    let topo = ClusterTopology::new()?;
    let dir = programs.manifests.path().to_string_lossy().into_owned();
    let started = Instant::now();
    let mut agent = Agent::start_with(&topo.node1, &["--manifests", &dir])?;
    agent.wait_ready(Duration::from_mins(2))?;
    let ours = started.elapsed();
    let pid = agent.pid().context("the agent's pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kib = procfs::peak_rss_kib(&status).context("no VmHWM")?;
    let heap_kib = procfs::anon_rss_kib(&status).context("no RssAnon")?;
    let maps_bytes = procfs::maps_memlock_of(pid);
    drop(agent);
    let timed = |tool: &str, file: &Path| -> Result<Duration> {
        let ns = Netns::new("rules")?;
        let started = Instant::now();
        load_rules(&ns, tool, file)?;
        Ok(started.elapsed())
    };
    let iptables = timed("iptables-restore <", &programs.iptables)?;
    let nft = timed("nft -f", &programs.nft)?;
    Ok((ours, peak_kib, maps_bytes, iptables, nft, heap_kib))
}

/// The cold-programming comparison at 1,000 and 10,000 services: markdown and JSON.
fn programming(rounds: usize, dir: &Path) -> Result<(String, serde_json::Value)> {
    let mut md = String::from(
        "Programming from cold: our agent from start to `ready` (programs loaded and verified, \
         manifests parsed, every map written), against `iptables-restore` and `nft -f` loading the \
         rules kube-proxy would write for the same Services (10 endpoints each), each into a fresh \
         namespace, in turn. Median of rounds (spread); the ratio is the median of the rounds' \
         ratios; the peak RSS is the highest of the rounds.\n\n\
         | services | lb-agent (ms) | iptables-restore (ms) | nft -f (ms) | iptables-restore / lb-agent | \
         agent peak RSS (MiB) | agent heap at ready (MiB) | map memory (MiB) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut json = Vec::new();
    for total in [1_000u32, 10_000] {
        let programs = programs(total, dir)?;
        let mut runs = Vec::new();
        for _ in 0..rounds {
            runs.push(program_from_cold(&programs)?);
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let ours = figure(&runs.iter().map(|r| ms(r.0)).collect::<Vec<_>>());
        let peak = figure(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
        let maps = figure(&runs.iter().map(|r| r.2).collect::<Vec<_>>());
        let ipt = figure(&runs.iter().map(|r| ms(r.3)).collect::<Vec<_>>());
        let nft = figure(&runs.iter().map(|r| ms(r.4)).collect::<Vec<_>>());
        let heap = figure(&runs.iter().map(|r| r.5).collect::<Vec<_>>());
        let ours_rounds: Vec<u64> = runs.iter().map(|r| ms(r.0)).collect();
        let ipt_rounds: Vec<u64> = runs.iter().map(|r| ms(r.3)).collect();
        let (speedup, _, _) =
            paired_ratio(&ipt_rounds, &ours_rounds).context("no programming round")?;
        let speedup_rounds: Vec<f64> = ipt_rounds
            .iter()
            .zip(&ours_rounds)
            .map(|(&a, &b)| ratio(a, b))
            .collect();
        let _ = writeln!(
            md,
            "| {total} | {} ({}-{}) | {} ({}-{}) | {} ({}-{}) | {speedup:.1}x | {:.0} | {:.0} | {:.1} |",
            ours.median,
            ours.low,
            ours.high,
            ipt.median,
            ipt.low,
            ipt.high,
            nft.median,
            nft.low,
            nft.high,
            mib(peak.high * 1024),
            mib(heap.median * 1024),
            mib(maps.median),
        );
        json.push(
            serde_json::json!({"services": total, "ours_ms": ours.median,
            "iptables_restore_ms": ipt.median, "nft_ms": nft.median,
            "iptables_restore_over_ours": speedup, "agent_peak_rss_kib": peak.high,
            "agent_heap_at_ready_kib": heap.median,
            "maps_memlock_bytes": maps.median, "ours_rounds_ms": ours_rounds,
            "iptables_restore_over_ours_rounds": speedup_rounds,
            "agent_peak_rss_rounds_kib": runs.iter().map(|r| r.1).collect::<Vec<_>>()}),
        );
    }
    Ok((md, serde_json::Value::Array(json)))
}

#[allow(clippy::cast_precision_loss)] // memory sizes far below 2^52
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

type Column = (&'static str, fn(&Sample) -> u64);

const COLUMNS: [Column; 7] = [
    ("new connections/s", |s| s.conn_per_s),
    ("new conn p50 (us)", |s| s.conn_p50_us),
    ("new conn p99 (us)", |s| s.conn_p99_us),
    ("kept-alive requests/s", |s| s.req_per_s),
    ("request p50 (us)", |s| s.req_p50_us),
    ("request p99 (us)", |s| s.req_p99_us),
    ("bulk TCP (Mbit/s)", |s| s.bulk_mbit_s),
];

fn summarize(samples: &[Sample]) -> Vec<Figure> {
    COLUMNS
        .iter()
        .map(|(_, get)| figure(&samples.iter().map(get).collect::<Vec<_>>()))
        .collect()
}

/// What the end-to-end tables show, for the report.
fn intro(rounds: usize, duration: Duration) -> String {
    format!(
        "End to end in the namespace topology: a client outside the cluster, node1 forwarding to \
         three pods; {CONCURRENCY} concurrent clients for {} s per figure, {rounds} round(s), \
         modes in rotating order, a fresh topology for every measurement. The measured Service \
         sits in the middle of the programmed ones (kube-proxy's KUBE-SERVICES chain is walked \
         half way for each new connection). Median of rounds (spread: lowest-highest round); \
         the headline ratios pair the two modes of each round. Direct is measured twice a round, half \
         a round apart (\"direct again\"): their difference is the noise floor.\n\n",
        duration.as_secs()
    )
}

fn main() -> Result<()> {
    lb_tests::require_root();
    let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
    let (rounds, duration) = if quick {
        (1, Duration::from_secs(1))
    } else {
        (5, Duration::from_secs(3))
    };
    for tool in ["iptables-restore", "nft"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: `cargo xtask bench` installs iptables and nftables");
        }
    }
    let started = Instant::now();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;
    let mut md = intro(rounds, duration);
    let mut json = Vec::new();
    let mut medians: std::collections::BTreeMap<(u32, Mode), Vec<Figure>> =
        std::collections::BTreeMap::new();
    let mut per_round: std::collections::BTreeMap<(u32, Mode), Vec<Sample>> =
        std::collections::BTreeMap::new();
    for total in [10u32, 10_000] {
        let programs = programs(total, &out)?;
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Mode::ALL.len()];
        for round in 0..rounds {
            for k in 0..Mode::ALL.len() {
                let index = (k + round) % Mode::ALL.len();
                let mode = Mode::ALL[index];
                if let Ok(only) = std::env::var("LB_E2E_MODES") {
                    // Debugging aid: measure only these modes (comma-separated keys).
                    if !only.split(',').any(|m| m == mode.key()) {
                        continue;
                    }
                }
                let sample = run_mode(mode, &programs, duration)
                    .with_context(|| format!("{} with {total} services", mode.name()))?;
                eprintln!("{total} services, {}: {sample:?}", mode.name());
                samples[index].push(sample);
            }
        }
        let _ = writeln!(md, "### {total} services\n");
        let _ = write!(md, "| mode |");
        for (name, _) in COLUMNS {
            let _ = write!(md, " {name} |");
        }
        let _ = writeln!(md, " errors |\n|---|{}---:|", "---:|".repeat(COLUMNS.len()));
        let mut modes = serde_json::Map::new();
        for (mode, s) in Mode::ALL.iter().zip(&samples) {
            if s.is_empty() {
                continue;
            }
            let figures = summarize(s);
            medians.insert((total, *mode), figures.clone());
            per_round.insert((total, *mode), s.clone());
            let _ = write!(md, "| {} |", mode.name());
            let mut fields = serde_json::Map::new();
            for ((name, get), f) in COLUMNS.iter().zip(&figures) {
                let _ = write!(md, " {} ({}-{}) |", f.median, f.low, f.high);
                let rounds: Vec<u64> = s.iter().map(get).collect();
                fields.insert(
                    (*name).to_string(),
                    serde_json::json!({"median": f.median, "low": f.low, "high": f.high,
                        "rounds": rounds}),
                );
            }
            let errors: u64 = s.iter().map(|x| x.errors).sum();
            let _ = writeln!(md, " {errors} |");
            fields.insert("errors".into(), errors.into());
            modes.insert(mode.key().into(), fields.into());
        }
        let _ = writeln!(md);
        json.push(serde_json::json!({"services": total, "modes": modes}));
    }
    let (headline, headline_rounds, mut summary) = headline(&per_round);
    let noise_floor = noise_floor(&per_round, &mut summary);
    draw_charts(&medians, &out)?;
    // Loading 100,000 nft chains takes minutes: at most three rounds of it.
    let (programming_md, programming_json) = programming(rounds.min(3), &out)?;
    let _ = write!(md, "### Programming from cold\n\n{programming_md}\n");
    for row in programming_json.as_array().into_iter().flatten() {
        let _ = writeln!(
            summary,
            "- cold programming of {} services: lb-agent {} ms, iptables-restore {} ms, nft -f {} ms; agent peak RSS {} KiB",
            row["services"], row["ours_ms"], row["iptables_restore_ms"], row["nft_ms"], row["agent_peak_rss_kib"]
        );
    }
    md = format!("{summary}\n{md}");
    std::fs::write(out.join("summary.txt"), bench_run::stamped_text(&summary))?;
    let report = serde_json::json!({"rounds": rounds, "seconds_per_figure": duration.as_secs(),
        "concurrency": CONCURRENCY, "headline": headline, "headline_rounds": headline_rounds,
        "noise_floor": noise_floor, "scales": json, "programming": programming_json});
    std::fs::write(
        out.join("e2e.json"),
        serde_json::to_string_pretty(&bench_run::stamped(report))?,
    )?;
    std::fs::write(out.join("e2e.md"), bench_run::stamped_text(&md))?;
    print!("{md}");
    println!(
        "(took {:.1} s; wrote target/bench/e2e.json and e2e.md)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The headline ratios, each the median of its per-round ratios (the two
/// modes measured in the same round, close in time): JSON, the per-round
/// ratios (JSON) and a summary.
fn headline(
    per_round: &std::collections::BTreeMap<(u32, Mode), Vec<Sample>>,
) -> (
    serde_json::Map<String, serde_json::Value>,
    serde_json::Map<String, serde_json::Value>,
    String,
) {
    let get = |total, mode, column: usize| {
        per_round
            .get(&(total, mode))
            .map(|s| s.iter().map(COLUMNS[column].1).collect::<Vec<u64>>())
    };
    let mut headline = serde_json::Map::new();
    let mut rounds = serde_json::Map::new();
    let mut summary = String::from(
        "Headline (each ratio the median of the per-round ratios, lowest-highest round):\n",
    );
    let mut ratios = Vec::new();
    for (label, key, total, column, baseline) in [
        (
            "kept-alive requests/s, ours / direct",
            "rps_ours_over_direct",
            10_000,
            3,
            Mode::Direct,
        ),
        (
            "new connections/s, ours / iptables",
            "cps_ours_over_iptables",
            10_000,
            0,
            Mode::Iptables,
        ),
        (
            "new connections/s, ours / nftables",
            "cps_ours_over_nftables",
            10_000,
            0,
            Mode::Nftables,
        ),
        (
            "new connections/s, ours / direct",
            "cps_ours_over_direct",
            10_000,
            0,
            Mode::Direct,
        ),
        (
            "new connections/s, ours / iptables",
            "cps_ours_over_iptables_10",
            10,
            0,
            Mode::Iptables,
        ),
    ] {
        for (ours_mode, hook, suffix) in [(Mode::Ours, "XDP", ""), (Mode::OursTc, "TC", "_tc")] {
            ratios.push((
                label,
                format!("{key}{suffix}"),
                total,
                column,
                baseline,
                ours_mode,
                hook,
            ));
        }
    }
    for (label, key, total, column, baseline, ours_mode, hook) in ratios {
        let (Some(ours), Some(base)) =
            (get(total, ours_mode, column), get(total, baseline, column))
        else {
            continue;
        };
        if let Some((r, low, high)) = paired_ratio(&ours, &base) {
            let each: Vec<f64> = ours.iter().zip(&base).map(|(&a, &b)| ratio(a, b)).collect();
            rounds.insert(key.clone(), each.into());
            headline.insert(key, r.into());
            let _ = writeln!(
                summary,
                "- {label} at {total} services ({hook} uplink): {r:.2}x ({low:.2}-{high:.2}x over {} rounds)",
                ours.len().min(base.len())
            );
        }
    }
    (headline, rounds, summary)
}

/// The noise floor: direct measured twice in each round, half a round
/// apart; for new connections/s and kept-alive requests/s, the relative
/// difference of the two in every round (both scales), its median and
/// largest (JSON), also added to the summary.
fn noise_floor(
    per_round: &std::collections::BTreeMap<(u32, Mode), Vec<Sample>>,
    summary: &mut String,
) -> serde_json::Value {
    let mut floor = serde_json::Map::new();
    for (name, get) in [COLUMNS[0], COLUMNS[3]] {
        let (mut first, mut again) = (Vec::new(), Vec::new());
        for total in [10u32, 10_000] {
            if let (Some(a), Some(b)) = (
                per_round.get(&(total, Mode::Direct)),
                per_round.get(&(total, Mode::DirectAgain)),
            ) {
                // Paired by round: as many as both have.
                let n = a.len().min(b.len());
                first.extend(a[..n].iter().map(get));
                again.extend(b[..n].iter().map(get));
            }
        }
        let Some((diffs, median, max)) = spread(&first, &again) else {
            continue;
        };
        let _ = writeln!(
            summary,
            "- noise floor, {name}: direct measured twice a round differs by {:.1}% (median; largest {:.1}%, {} pairs)",
            median * 100.0,
            max * 100.0,
            diffs.len()
        );
        floor.insert(
            name.into(),
            serde_json::json!({"median": median, "max": max, "rounds": diffs}),
        );
    }
    serde_json::Value::Object(floor)
}

/// Draws the connection-rate and request-rate charts into `out`.
fn draw_charts(
    medians: &std::collections::BTreeMap<(u32, Mode), Vec<Figure>>,
    out: &Path,
) -> Result<()> {
    #[allow(clippy::cast_precision_loss)] // rates far below 2^52
    let as_f64 = |x: u64| x as f64;
    for (file, column, title) in [
        (
            "e2e-connections.png",
            0,
            "New TCP connections per second (higher is better)",
        ),
        (
            "e2e-requests.png",
            3,
            "Requests per second on kept-alive connections",
        ),
    ] {
        let groups: Vec<Group> = [10u32, 10_000]
            .into_iter()
            .map(|total| Group {
                label: format!("{total} services"),
                bars: Mode::ALL
                    .iter()
                    .filter(|&&mode| mode != Mode::DirectAgain)
                    .filter_map(|&mode| {
                        let f = medians.get(&(total, mode))?[column];
                        Some(Bar {
                            series: mode.name().to_string(),
                            value: as_f64(f.median),
                            low: as_f64(f.low),
                            high: as_f64(f.high),
                        })
                    })
                    .collect(),
            })
            .collect();
        grouped_bars(&out.join(file), title, COLUMNS[column].0, &groups)?;
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}
