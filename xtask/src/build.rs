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
            .env("LB_AGENT_BIN", agent),
        &mut totals,
    )?;
    println!("{} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

/// The demo.
pub fn demo() -> Result<()> {
    require_root("cargo xtask demo")?;
    setup()?;
    let agent = build(false)?;
    run(cargo()
        .args(["run", "--quiet", "-p", "lb-tests", "--bin", "demo"])
        .env("LB_AGENT_BIN", agent))
}

/// The benchmarks; their tables are assembled into BENCHMARKS.md and their
/// figures into target/bench/report.json.
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
    for name in ["packet", "control", "e2e"] {
        let mut bench = cargo();
        bench
            .args(["bench", "-p", "lb-tests", "--bench", name])
            .env("LB_AGENT_BIN", &agent);
        if quick {
            bench.env("LB_BENCH_QUICK", "1");
        }
        run(&mut bench)?;
    }
    let out = root().join("target/bench");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    let report = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench`{} on this project's CI machine kind \
         (2 cores, shared: read ratios, not absolute times). Every figure: \
         `target/bench/report.json`.\n\n## End to end\n\n\
         ![New connections per second](docs/bench/e2e-connections.png)\n\n\
         ![Requests per second](docs/bench/e2e-requests.png)\n\n{}\n## Per packet, in the kernel\n\n{}\n\
         ## Control path\n\n{}",
        if quick { " --quick" } else { "" },
        read("e2e.md"),
        read("packet.md"),
        read("control.md")
    );
    // The charts are committed next to the report, which shows them.
    let charts = root().join("docs/bench");
    std::fs::create_dir_all(&charts)?;
    for png in ["e2e-connections.png", "e2e-requests.png"] {
        if out.join(png).exists() {
            std::fs::copy(out.join(png), charts.join(png))?;
        }
    }
    std::fs::write(root().join("BENCHMARKS.md"), report)?;
    let json = |name: &str| {
        let text = read(name);
        if text.trim().is_empty() {
            "null".to_string()
        } else {
            text
        }
    };
    std::fs::write(
        out.join("report.json"),
        format!(
            "{{\"quick\": {quick},\n\"e2e\": {},\n\"packet\": {},\n\"control\": {}}}\n",
            json("e2e.json"),
            json("packet.json"),
            json("control.json")
        ),
    )?;
    println!("{}", read("summary.txt"));
    eprintln!("wrote BENCHMARKS.md and target/bench/report.json");
    Ok(())
}
