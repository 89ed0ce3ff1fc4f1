//! Programming from cold: our agent to ready against `iptables-restore` and
//! `nft -f` loading kube-proxy's rules for the same Services.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_tests::{
    agent::Agent,
    netns::Netns,
    procfs,
    stats::{figure, paired_ratio, ratio},
    topology::ClusterTopology,
};

use crate::modes::{load_rules, programs, Programs};

/// its maps' kernel memory in bytes, `iptables-restore`, `nft -f`, its heap
/// at ready in KiB).
fn program_from_cold(
    programs: &Programs,
    with_nft: bool,
) -> Result<(Duration, u64, u64, Duration, Option<Duration>, u64)> {
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
    let nft = if with_nft {
        Some(timed("nft -f", &programs.nft)?)
    } else {
        None
    };
    Ok((ours, peak_kib, maps_bytes, iptables, nft, heap_kib))
}

/// Services above which a quick run skips `nft -f`, here and as an end-to-end
/// mode (10,000 Services' rules take it two to three minutes here, and no
/// target reads the nftables layout).
pub(crate) const QUICK_NFT_MAX: u32 = 1_000;

/// The cold-programming comparison at 1,000 and 10,000 services: markdown and JSON.
pub(crate) fn programming(
    rounds: usize,
    dir: &Path,
    quick: bool,
) -> Result<(String, serde_json::Value)> {
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
        let with_nft = !quick || total <= QUICK_NFT_MAX;
        for _ in 0..rounds {
            runs.push(program_from_cold(&programs, with_nft)?);
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let ours = figure(&runs.iter().map(|r| ms(r.0)).collect::<Vec<_>>());
        let peak = figure(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
        let maps = figure(&runs.iter().map(|r| r.2).collect::<Vec<_>>());
        let ipt = figure(&runs.iter().map(|r| ms(r.3)).collect::<Vec<_>>());
        let nft: Option<Vec<u64>> = runs.iter().map(|r| r.4.map(ms)).collect();
        let nft = nft.map(|rounds| figure(&rounds));
        let nft_text = nft.as_ref().map_or_else(
            || "- (skipped in --quick)".to_string(),
            |f| format!("{} ({}-{})", f.median, f.low, f.high),
        );
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
            "| {total} | {} ({}-{}) | {} ({}-{}) | {nft_text} | {speedup:.1}x | {:.0} | {:.0} | {:.1} |",
            ours.median,
            ours.low,
            ours.high,
            ipt.median,
            ipt.low,
            ipt.high,
            mib(peak.high * 1024),
            mib(heap.median * 1024),
            mib(maps.median),
        );
        json.push(
            serde_json::json!({"services": total, "ours_ms": ours.median,
            "iptables_restore_ms": ipt.median, "nft_ms": nft.map(|f| f.median),
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
