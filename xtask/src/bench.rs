//! `cargo xtask bench`: every benchmark in one run, then the report. The run
//! gets an id, and the commit measured; every bench stamps its files with
//! them (`LB_BENCH_RUN`, `LB_BENCH_COMMIT`, `LB_BENCH_DIRTY`) and
//! `bench-report` refuses files of another run.
//!
//! The packet bench also measures IPv4 before the IPv6 data path: the
//! kernel object of [`BASELINE`], built here once into
//! `target/bench/baseline/<commit>/` and handed over in
//! `LB_BENCH_BASELINE_OBJECT` (see `tests/benches/packet/before_after.rs`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use crate::{
    build::{build_for_bench, cargo},
    setup::setup,
    util::{output, require_root, root, run},
};

/// The commit whose kernel object is IPv4's "before": the last one before
/// the IPv6 data path (004a4a9, "IPv6 data path, step 1").
pub const BASELINE: &str = "004a4a9~1";

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
    // Before any bench runs, so that a missing baseline fails the run early.
    let baseline = if benches.contains(&"packet") {
        Some(baseline_object()?)
    } else {
        None
    };
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
        if let Some((object, baseline_commit)) = &baseline {
            bench
                .env("LB_BENCH_BASELINE_OBJECT", object)
                .env("LB_BENCH_BASELINE_COMMIT", baseline_commit);
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

/// The kernel object of [`BASELINE`] and that commit's hash: built with
/// nightly from its `lb-ebpf` and `lb-common` (a `git archive` of them under
/// `target/bench/baseline/<commit>/src`) the first time, then reused while
/// `target/bench/baseline/<commit>/lb-ebpf.o` exists. Fails with what to do
/// when the commit is not in this clone or the build fails.
fn baseline_object() -> Result<(PathBuf, String)> {
    let repo = root();
    let commit = output(
        Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("{BASELINE}^{{commit}}")),
    )
    .map(|out| out.trim().to_string())
    .with_context(|| {
        format!(
            "the packet bench compares IPv4 with the kernel object of {BASELINE} (before the IPv6 \
             data path), but this clone has no such commit: fetch the full history \
             (`git fetch --unshallow`) or bench with --only other than packet"
        )
    })?;
    // "-nometa-pad": built with `BASELINE_EDITS` (the hand-off's metadata
    // call left out, padding written as the current object writes it).
    let dir = repo
        .join("target/bench/baseline")
        .join(format!("{commit}-nometa-pad"));
    let object = dir.join("lb-ebpf.o");
    if object.exists() {
        eprintln!(
            "baseline kernel object of {BASELINE} ({commit}): cached at {}",
            object.display()
        );
        return Ok((object, commit));
    }
    eprintln!(
        "building the baseline kernel object of {BASELINE} ({commit}) once, into {}",
        dir.display()
    );
    build_baseline(&repo, &commit, &dir).with_context(|| {
        format!(
            "cannot build the kernel object of {BASELINE} ({commit}), the IPv4 \"before\" of the \
             packet bench, in {}; see the output above (delete that directory to start over)",
            dir.display()
        )
    })?;
    Ok((object, commit))
}

/// Extracts `commit`'s `lb-ebpf` and `lb-common` under `dir/src`, builds
/// the object and copies it to `dir/lb-ebpf.o` (last, so that only a
/// finished build is taken as the cache).
fn build_baseline(repo: &Path, commit: &str, dir: &Path) -> Result<()> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    let tar = dir.join("src.tar");
    run(Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["archive", "--format=tar", "-o"])
        .arg(&tar)
        .args([commit, "Cargo.toml", "lb-common", "lb-ebpf"]))?;
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&src))?;
    std::fs::remove_file(&tar)?;
    // lb-ebpf is a workspace of its own because the repository's root
    // excludes it; inside target/ the search for its workspace would reach
    // this repository's root, which does not. Its copy says so itself.
    let manifest = src.join("lb-ebpf/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)?;
    if !text.lines().any(|l| l.trim() == "[workspace]") {
        std::fs::write(
            &manifest,
            format!("{text}\n# Added by cargo xtask bench: built apart from its repository.\n[workspace]\n"),
        )?;
    }
    edit_baseline(&src)?;
    // Its own rust-toolchain.toml and .cargo/config.toml pick nightly, the
    // BPF target and build-std, as for `cargo xtask build-ebpf`.
    run(Command::new("cargo")
        .args(["+nightly", "build", "--release"])
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(src.join("lb-ebpf")))?;
    let built = src.join("lb-ebpf/target/bpfel-unknown-none/release/lb-ebpf");
    std::fs::copy(&built, dir.join("lb-ebpf.o"))
        .with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

/// Where the baseline's edits look: its kernel crate's and shared crate's
/// sources.
const BASELINE_SOURCES: [&str; 2] = ["lb-ebpf/src", "lb-common/src"];

/// Edits to the baseline's sources (text, replacement); each must apply
/// somewhere, or the build fails naming it.
/// - Its XDP hand-off does without metadata: the current object is on a
///   kernel that refuses `bpf_xdp_adjust_meta` to XDP, which would refuse
///   the baseline's `lb_xdp` whole. The call becomes "the driver keeps no
///   metadata"; no measured packet reaches the hand-off.
/// - Its keys' padding is written as the current object writes it: `[0; 3]`
///   compiles to a call of a byte-at-a-time `memset` here, which every
///   IPv4 flow key paid until a fix that came after IPv6 (64ae2fd). With
///   it in the baseline too, after/before measures what IPv6 cost IPv4.
const BASELINE_EDITS: [(&str, &str); 3] = [
    (
        "unsafe { bpf_xdp_adjust_meta(ctx.ctx, grow) } != 0",
        "{ let _ = grow; true }",
    ),
    ("helpers::bpf_xdp_adjust_meta,", ""),
    ("pad: [0; 3]", "pad: [0, 0, 0]"),
];

/// Applies [`BASELINE_EDITS`] to the baseline's sources under `src`.
fn edit_baseline(src: &Path) -> Result<()> {
    let mut applied = [false; BASELINE_EDITS.len()];
    for dir in BASELINE_SOURCES {
        let dir = src.join(dir);
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let mut new = text.clone();
            for ((from, to), applied) in BASELINE_EDITS.iter().zip(&mut applied) {
                if new.contains(from) {
                    new = new.replace(from, to);
                    *applied = true;
                }
            }
            if new != text {
                std::fs::write(&path, new)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    if let Some(((from, _), _)) = BASELINE_EDITS.iter().zip(applied).find(|(_, a)| !a) {
        bail!("{}: no `{from}` to edit", src.display());
    }
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
