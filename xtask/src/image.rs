//! `cargo xtask image`: the agent's container image, built from what the
//! repository holds with no base image to pull: a statically linked
//! `lb-agent` (musl) in an image from scratch, made with buildah (vfs
//! storage, as root), labelled with its version and source revision, with
//! the timestamps fixed so that the same binary gives the same image.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{
    build::{build_ebpf, cargo, target_dir},
    setup::ensure_tools,
    util::{output, root, run},
};

/// The Rust target of the static binary.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";
/// Where the binary lives in the image (the Dockerfile's final stage too).
pub const IMAGE_BINARY: &str = "/usr/local/bin/lb-agent";
/// The image's repository name in buildah's local storage.
pub const IMAGE_NAME: &str = "localhost/lb-agent";
/// buildah's storage driver: vfs works without overlay support.
const STORAGE_DRIVER: &str = "vfs";

/// Installs what the static binary needs: the musl target and musl-gcc
/// (ring's C code).
pub fn ensure_static_tools() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == STATIC_TARGET) {
        run(Command::new("rustup").args(["target", "add", STATIC_TARGET]))?;
    }
    ensure_tools(&[("musl-gcc", "musl-tools")])
}

/// The target directory of the static build: its own, so that it never
/// waits for (or holds) the lock of the workspace's, and `cargo xtask test`
/// can build the image while other tests run.
fn static_target_dir() -> PathBuf {
    target_dir(&root()).join("static")
}

/// Builds the kernel programs and the statically linked agent (release);
/// returns the binary's path.
pub fn build_static() -> Result<PathBuf> {
    ensure_static_tools()?;
    build_ebpf()?;
    let dir = static_target_dir();
    run(cargo()
        .args([
            "build",
            "--release",
            "--target",
            STATIC_TARGET,
            "-p",
            "lb-userspace",
            "--bin",
            "lb-agent",
            "--target-dir",
        ])
        .arg(&dir))?;
    Ok(dir.join(STATIC_TARGET).join("release/lb-agent"))
}

/// `cargo xtask image` as a child process with its output in `log`, for
/// [`crate::build::test`] to build the image beside other work.
pub fn spawn_image_build(log: &std::path::Path) -> Result<std::process::Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(std::env::current_exe()?)
        .arg("image")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting cargo xtask image")
}

/// Waits for [`spawn_image_build`]'s child: the image's name, or its log.
pub fn finish_image_build(mut child: std::process::Child, log: &std::path::Path) -> Result<String> {
    let status = child.wait()?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if !status.success() {
        anyhow::bail!("cargo xtask image failed ({status}):\n{text}");
    }
    text.lines()
        .rev()
        .find(|l| l.starts_with(IMAGE_NAME))
        .map(str::to_string)
        .with_context(|| format!("cargo xtask image printed no image name:\n{text}"))
}

/// `buildah` with the storage driver set.
fn buildah() -> Command {
    let mut cmd = Command::new("buildah");
    cmd.args(["--storage-driver", STORAGE_DRIVER]);
    cmd
}

/// The agent's version (lb-userspace's package version).
fn version() -> Result<String> {
    let manifest = std::fs::read_to_string(root().join("lb-userspace/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_string())
        .context("lb-userspace/Cargo.toml has no version")
}

/// The source revision: the commit, marked `-dirty` when the tree differs.
fn revision() -> Result<String> {
    let commit = output(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(root()),
    )?;
    let dirty = !output(
        Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(root()),
    )?
    .trim()
    .is_empty();
    Ok(format!(
        "{}{}",
        commit.trim(),
        if dirty { "-dirty" } else { "" }
    ))
}

/// Builds the image; returns its name (`localhost/lb-agent:VERSION`).
pub fn image() -> Result<String> {
    ensure_tools(&[("buildah", "buildah")])?;
    // What the Dockerfile's build stage runs: `setup --build-only`, then
    // `build-static`.
    crate::setup::build_tools()?;
    let binary = build_static()?;
    let version = version()?;
    let revision = revision()?;
    let name = format!("{IMAGE_NAME}:{version}");
    let container = output(buildah().args(["from", "scratch"]))?
        .trim()
        .to_string();
    let built = (|| -> Result<()> {
        run(buildah()
            .args(["copy", "--chmod", "0755", &container])
            .arg(&binary)
            .arg(IMAGE_BINARY))?;
        let entrypoint = format!("[\"{IMAGE_BINARY}\"]");
        run(buildah().args([
            "config",
            "--entrypoint",
            &entrypoint,
            "--cmd",
            "",
            "--workingdir",
            "/",
            "--label",
            "org.opencontainers.image.title=lb-agent",
            "--label",
            &format!("org.opencontainers.image.version={version}"),
            "--label",
            &format!("org.opencontainers.image.revision={revision}"),
            "--label",
            "org.opencontainers.image.description=Kubernetes service load balancer in XDP/TC",
            &container,
        ]))?;
        run(buildah().args(["commit", "--timestamp", "0", "--rm", &container, &name]))
    })();
    if built.is_err() {
        let _ = buildah().args(["rm", &container]).output();
    }
    built?;
    // Earlier builds of the same name are left untagged: remove them.
    run(buildah().args(["rmi", "--prune"]))?;
    eprintln!("image: {name} (revision {revision})");
    Ok(name)
}
