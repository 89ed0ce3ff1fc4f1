//! `cargo xtask bench`: every benchmark in one run, then the report. The run
//! gets an id, and the commit measured; every bench stamps its files with
//! them (`LB_BENCH_RUN`, `LB_BENCH_COMMIT`, `LB_BENCH_DIRTY`) and
//! `bench-report` refuses files of another run.

use std::{
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Result};

use crate::{
    build::{build_for_bench, cargo},
    setup::setup,
    util::{require_root, root, run},
};

/// The benches, in the order they run.
pub const BENCHES: [&str; 5] = ["packet", "control", "e2e", "east_west", "flows"];

/// The benchmarks (`only`: a subset, assembled as a partial run); then
/// `bench-report` assembles their tables into BENCHMARKS.md (with the
/// targets judged) and their figures into target/bench/report.json.
pub fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    require_root("cargo xtask bench")?;
    let benches: Vec<&str> = match only {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => BENCHES.to_vec(),
    };
    if let Some(odd) = benches.iter().find(|b| !BENCHES.contains(b)) {
        bail!("no bench {odd}: the benches are {}", BENCHES.join(", "));
    }
    setup()?;
    // The comparison needs kube-proxy's rule loaders; the charts a font.
    crate::setup::ensure_tools(&[
        ("iptables-restore", "iptables"),
        ("nft", "nftables"),
        (
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "fonts-dejavu-core",
        ),
    ])?;
    let agent = build_for_bench()?;
    let (commit, dirty) = commit();
    let id = run_id();
    eprintln!(
        "bench run {id} of {commit}{}",
        if dirty { " (dirty)" } else { "" }
    );
    // No file of an earlier run may be taken for one of this run.
    let out = root().join("target/bench");
    for bench in BENCHES {
        for ext in ["json", "md"] {
            let _ = std::fs::remove_file(out.join(format!("{bench}.{ext}")));
        }
    }
    for file in [
        "summary.txt",
        "flows-summary.txt",
        "report.json",
        "e2e-connections.png",
        "e2e-requests.png",
        "e2e-cpu.png",
        "packet-new-flow-fill.png",
        "control-cold-start.png",
    ] {
        let _ = std::fs::remove_file(out.join(file));
    }
    for name in &benches {
        let mut bench = cargo();
        bench
            .args(["bench", "-p", "lb-tests", "--bench", name])
            .env("LB_AGENT_BIN", &agent)
            .env("LB_BENCH_RUN", &id)
            .env("LB_BENCH_COMMIT", &commit)
            .env("LB_BENCH_DIRTY", if dirty { "1" } else { "0" });
        if quick {
            bench.env("LB_BENCH_QUICK", "1");
        }
        run(&mut bench)?;
    }
    // The report: targets judged, notes, tables, charts, report.json.
    let mut report = cargo();
    report.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "lb-tests",
        "--bin",
        "bench-report",
        "--",
    ]);
    if quick {
        report.arg("--quick");
    }
    if only.is_some() {
        report.arg("--partial");
    }
    run(&mut report)?;
    Ok(())
}

/// The commit checked out (`git rev-parse HEAD`, "unknown" outside git) and
/// whether the work tree has uncommitted changes.
fn commit() -> (String, bool) {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    (
        git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty()),
    )
}

/// A run id: the start time (UNIX seconds) and eight random hex digits.
fn run_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut random = [0u8; 4];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut urandom, &mut random);
    }
    format!("{secs}-{:08x}", u32::from_ne_bytes(random))
}

#[cfg(test)]
mod tests {
    use super::run_id;

    #[test]
    fn run_ids_differ() {
        assert_ne!(run_id(), run_id());
    }
}
