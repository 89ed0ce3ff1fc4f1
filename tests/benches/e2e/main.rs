//! End to end: one Service reached four ways in the same run, in the test
//! topology (client -> node1's uplink -> pods on node1): directly to its
//! three backends (no balancer: the limit; the client spreads over them
//! itself), through our data path, through the rules kube-proxy's iptables
//! mode installs, and through its nftables-mode rules (nat and filter
//! tables); with 10 and with 10,000 Services programmed (a quick run: 10,000
//! only, where the targets are judged, without the nftables layout, whose
//! rules take minutes to load and which no target reads). Saturating loads
//! give rates; open-loop loads at a fixed rate give host CPU per request,
//! to node1's pods and to a Service whose endpoint is on node2 (node1
//! forwards its flows both ways; direct routing reaches that pod through
//! node1 too). Each measurement gets a fresh
//! topology, so no mode inherits another's netfilter state. Rounds rotate the
//! order of the modes. Run with `cargo xtask bench`.

mod charts;
mod fixed;
mod fixed_report;
mod modes;
mod programming;
mod report;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_tests::{bench_run, stats::Figure};

use crate::{
    charts::{draw_charts, draw_cpu_chart},
    fixed_report::fixed_section,
    modes::{programs, run_mode, Mode, Sample},
    programming::{programming, QUICK_NFT_MAX},
    report::{headline, intro, noise_floor, summarize, COLUMNS},
};

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const BULK: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 9000);
/// The Service whose one endpoint is on node2 (pod2a): node1 forwards it.
const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 12), 80);
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const CONCURRENCY: usize = 8;
/// The Services programmed in each scale a full run measures.
const SCALES: [u32; 2] = [10, 10_000];
/// The one scale a quick run measures (the targets are judged at it).
const QUICK_SCALES: [u32; 1] = [10_000];

fn main() -> Result<()> {
    lb_tests::require_root();
    let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
    let (rounds, duration, scales): (usize, Duration, &[u32]) = if quick {
        (1, Duration::from_secs(1), &QUICK_SCALES)
    } else {
        (5, Duration::from_secs(3), &SCALES)
    };
    // The fixed-rate windows: long enough for /proc/stat's 10 ms ticks.
    let window = duration.max(Duration::from_secs(2));
    check_tools()?;
    let started = Instant::now();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;
    let mut md = intro(rounds, duration);
    let mut json = Vec::new();
    let mut medians: BTreeMap<(u32, Mode), Vec<Figure>> = BTreeMap::new();
    let mut per_round: BTreeMap<(u32, Mode), Vec<Sample>> = BTreeMap::new();
    for &total in scales {
        let programs = programs(total, &out)?;
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Mode::ALL.len()];
        for round in 0..rounds {
            for k in 0..Mode::ALL.len() {
                let index = (k + round) % Mode::ALL.len();
                let mode = Mode::ALL[index];
                if skipped(mode, total, quick) {
                    continue;
                }
                let sample = run_mode(mode, &programs, duration, window)
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
        let modes = mode_rows(&mut md, total, &samples, &mut medians, &mut per_round);
        if quick && total > QUICK_NFT_MAX {
            let _ = writeln!(
                md,
                "(kube-proxy nftables layout: skipped in --quick above {QUICK_NFT_MAX} Services)"
            );
        }
        let _ = writeln!(md);
        json.push(serde_json::json!({"services": total, "modes": modes}));
    }
    let (headline, headline_rounds, mut summary) = headline(&per_round);
    let noise_floor = noise_floor(&per_round, &mut summary);
    let (fixed_md, fixed_json, fixed_summary) = fixed_section(&per_round, window, scales);
    summary.push_str(&fixed_summary);
    md.push_str(&fixed_md);
    draw_charts(&medians, &out, scales)?;
    draw_cpu_chart(&per_round, &out)?;
    // Loading 100,000 nft chains takes minutes: at most three rounds of it.
    let (programming_md, programming_json) = programming(rounds.min(3), &out, quick)?;
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
        "noise_floor": noise_floor, "scales": json, "fixed_rate": fixed_json, "programming": programming_json});
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

/// One row per mode measured at `total` Services into `md` (median and
/// spread of each column, errors); records each mode's medians and rounds;
/// returns the rows as JSON.
fn mode_rows(
    md: &mut String,
    total: u32,
    samples: &[Vec<Sample>],
    medians: &mut BTreeMap<(u32, Mode), Vec<Figure>>,
    per_round: &mut BTreeMap<(u32, Mode), Vec<Sample>>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut modes = serde_json::Map::new();
    for (mode, s) in Mode::ALL.iter().zip(samples) {
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
    modes
}

/// Whether this run leaves `mode` out at `total` Services: a quick run's
/// nftables layout above [`QUICK_NFT_MAX`] (loading its rules takes minutes
/// and no target reads it), or a mode `LB_E2E_MODES` (a debugging aid:
/// comma-separated keys) does not name.
fn skipped(mode: Mode, total: u32, quick: bool) -> bool {
    if quick && mode == Mode::Nftables && total > QUICK_NFT_MAX {
        return true;
    }
    std::env::var("LB_E2E_MODES").is_ok_and(|only| !only.split(',').any(|m| m == mode.key()))
}

/// Fails unless kube-proxy's rule loaders are installed.
fn check_tools() -> Result<()> {
    for tool in ["iptables-restore", "nft"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: `cargo xtask bench` installs iptables and nftables");
        }
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
