//! Building, linting, testing and the demo.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{
    setup::setup,
    util::{require_root, root, run, run_tests, TestTotals},
};

/// Path of the built kernel object.
pub fn ebpf_object() -> PathBuf {
    root().join("lb-ebpf/target/bpfel-unknown-none/release/lb-ebpf")
}

/// Builds the kernel programs; returns the object's path.
pub fn build_ebpf() -> Result<PathBuf> {
    // lb-ebpf is its own workspace: its rust-toolchain.toml selects nightly and
    // its .cargo/config.toml the bpfel-unknown-none target with build-std.
    run(Command::new("cargo")
        .args(["+nightly", "build", "--release"])
        .current_dir(root().join("lb-ebpf")))?;
    Ok(ebpf_object())
}

fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).env("LB_EBPF_OBJECT", ebpf_object());
    cmd
}

/// Builds everything; returns the agent binary's path.
pub fn build(release: bool) -> Result<PathBuf> {
    build_ebpf()?;
    let mut cmd = cargo();
    cmd.args(["build", "-p", "lb-userspace"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("lb-agent"))
}

/// rustfmt and clippy for both workspaces.
pub fn lint() -> Result<()> {
    build_ebpf()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let ebpf = root().join("lb-ebpf");
    run(Command::new("cargo")
        .args(["+nightly", "fmt", "--check"])
        .current_dir(&ebpf))?;
    run(Command::new("cargo")
        .args(["+nightly", "clippy", "--release", "--", "-D", "warnings"])
        .current_dir(&ebpf))
}

/// Every test, after setup and lint.
pub fn test() -> Result<()> {
    require_root("cargo xtask test")?;
    setup()?;
    let agent = build(false)?;
    lint()?;
    let mut totals = TestTotals::default();
    run_tests(
        cargo().args(["test", "--workspace", "--exclude", "lb-tests"]),
        &mut totals,
    )?;
    // Packet and namespace tests share the kernel: one at a time.
    run_tests(
        cargo()
            .args(["test", "-p", "lb-tests", "--", "--test-threads=1"])
            .env("LB_AGENT_BIN", &agent),
        &mut totals,
    )?;
    // The end-to-end tests again with pods on a bridge CNI (cni0, hairpin),
    // then on a bridge with the other node's pods behind a VXLAN overlay.
    for cni in ["bridge", "vxlan"] {
        let mut e2e = cargo();
        e2e.args(["test", "-p", "lb-tests"]);
        for file in E2E_TESTS {
            e2e.args(["--test", file]);
        }
        run_tests(
            e2e.args(["--", "--test-threads=1"])
                .env("LB_AGENT_BIN", &agent)
                .env("LB_TEST_CNI", cni),
            &mut totals,
        )?;
    }
    println!("{} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

/// The end-to-end test files, which build the namespace cluster and run on
/// each CNI layout (`LB_TEST_CNI`: routed, bridge, vxlan). `e2e_overlay`
/// builds its overlay itself and runs once.
const E2E_TESTS: [&str; 10] = [
    "e2e",
    "e2e_kube",
    "e2e_snat",
    "e2e_icmp",
    "e2e_jumbo",
    "e2e_pmtu",
    "e2e_fragments",
    "e2e_checksums",
    "e2e_node_source",
    "e2e_reject",
];

/// The demo.
pub fn demo() -> Result<()> {
    require_root("cargo xtask demo")?;
    setup()?;
    let agent = build(false)?;
    run(cargo()
        .args(["run", "--quiet", "-p", "lb-tests", "--bin", "demo"])
        .env("LB_AGENT_BIN", agent))
}

/// The benchmarks; `bench-report` assembles their tables into BENCHMARKS.md
/// (with the targets judged) and their figures into target/bench/report.json.
pub fn bench(quick: bool) -> Result<()> {
    require_root("cargo xtask bench")?;
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
    let agent = build(true)?;
    for name in ["packet", "control", "e2e", "flows"] {
        let mut bench = cargo();
        bench
            .args(["bench", "-p", "lb-tests", "--bench", name])
            .env("LB_AGENT_BIN", &agent);
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
    ]);
    if quick {
        report.args(["--", "--quick"]);
    }
    run(&mut report)?;
    Ok(())
}
