//! Building, linting, testing and the demo.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{
    setup::setup,
    util::{require_root, root, run, run_tests, TestTotals},
};

/// Cargo's target directory for a build run in `dir`: `CARGO_TARGET_DIR`
/// (relative to `dir`) when set, else `dir/target`.
pub fn target_dir(dir: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), |d| dir.join(d))
}

/// Path of the built kernel object.
pub fn ebpf_object() -> PathBuf {
    target_dir(&root().join("lb-ebpf")).join("bpfel-unknown-none/release/lb-ebpf")
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

/// `cargo` at the workspace root, told where the kernel object is.
pub fn cargo() -> Command {
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
    Ok(target_dir(&root())
        .join(if release { "release" } else { "debug" })
        .join("lb-agent"))
}

/// Builds the agent, the benches and their report in release mode in one
/// cargo run; returns the agent binary's path. One run gives the agent's
/// library the features the benches unify (built alone, `lb-userspace`
/// gets another feature set, so the benches rebuilt it and aya: a minute).
pub fn build_for_bench() -> Result<PathBuf> {
    build_ebpf()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "lb-tests",
        "--bins",
        "--benches",
    ]))?;
    Ok(target_dir(&root()).join("release").join("lb-agent"))
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
    // The image (tests/image.rs checks what `cargo xtask image` makes) is
    // built beside lint and the other tests, in its own target directory;
    // its tests run last.
    let image_log = target_dir(&root()).join("image-build.log");
    let image_build = crate::image::spawn_image_build(&image_log)?;
    println!(
        "building the image beside the tests (log: {})",
        image_log.display()
    );
    lint()?;
    let mut totals = TestTotals::default();
    run_tests(
        cargo().args(["test", "--workspace", "--exclude", "lb-tests"]),
        &mut totals,
    )?;
    // Packet and namespace tests share the kernel: within a pass one at a
    // time; passes side by side in lanes (see passes.rs).
    let lanes = crate::passes::lanes()?;
    println!("lb-tests: {lanes} lane(s)");
    let passed = crate::passes::run_passes(&agent, lanes, &target_dir(&root()).join("test-logs"))?;
    totals.passed += passed.passed;
    totals.failed += passed.failed;
    let image = crate::image::finish_image_build(image_build, &image_log)?;
    println!("the image tests on {image}");
    run_tests(
        crate::passes::FULL_SUITE
            .apply(cargo().args([
                "test",
                "-p",
                "lb-tests",
                "--test",
                "image",
                "--",
                "--test-threads=1",
            ]))
            .env("LB_AGENT_BIN", &agent)
            .env("LB_IMAGE", &image),
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
