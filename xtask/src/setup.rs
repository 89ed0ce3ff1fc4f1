//! `cargo xtask setup`: everything a fresh machine lacks, idempotently.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::util::{is_root, output, run};

/// Installs rust-src, a matching bpf-linker, ethtool, iptables, the Helm
/// renderer, and mounts bpffs.
pub fn setup() -> Result<()> {
    let (major, version) = build_tools()?;
    ensure_packages()?;
    ensure_helm_renderer()?;
    ensure_bpffs()?;
    eprintln!("setup: ready (nightly LLVM {major}, bpf-linker linked against libLLVM-{major}-rust-{version})");
    Ok(())
}

/// What building needs and nothing else (`cargo xtask setup --build-only`,
/// the Dockerfile's build stage: no packages, no Helm renderer, no bpffs
/// mount, which an unprivileged `docker build` refuses): rust-src and a
/// bpf-linker matching the nightly's LLVM; returns (LLVM major, release).
pub fn build_tools() -> Result<(String, String)> {
    let (major, version) = nightly_llvm()?;
    ensure_rust_src()?;
    ensure_bpf_linker(&major, &version)?;
    Ok((major, version))
}

/// (LLVM major, rustc release) of the nightly toolchain.
fn nightly_llvm() -> Result<(String, String)> {
    let info = output(Command::new("rustc").args(["+nightly", "-vV"])).context(
        "the `nightly` toolchain is missing; the eBPF crate needs it: `rustup toolchain install nightly --component rust-src`",
    )?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let llvm = field("LLVM version:").context("rustc +nightly -vV prints no LLVM version")?;
    let release = field("release:").context("rustc +nightly -vV prints no release")?;
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    Ok((major, release))
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn ensure_bpf_linker(major: &str, version: &str) -> Result<()> {
    let lib_name = format!("libLLVM-{major}-rust-{version}");
    let current = output(Command::new("sh").args(["-c", "command -v bpf-linker"]))
        .ok()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty());
    if let Some(path) = &current {
        // The soname is libLLVM.so.<MAJOR>.<MINOR>-rust-<VERSION>: check the
        // resolved library is this nightly's LLVM.
        let ldd = output(Command::new("ldd").arg(path)).unwrap_or_default();
        let linked = ldd.lines().any(|l| {
            l.contains(&format!("libLLVM.so.{major}."))
                && l.contains(&format!("-rust-{version} =>"))
                && !l.contains("not found")
        });
        if linked {
            return Ok(());
        }
        eprintln!("setup: {path} is not linked against {lib_name}; rebuilding it");
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    if !lib.join(format!("{lib_name}.so")).exists() {
        bail!(
            "{} has no {lib_name}.so: this nightly does not ship its LLVM as a shared library",
            lib.display()
        );
    }
    let rustflags = format!(
        "-L {lib} -l dylib=LLVM-{major}-rust-{version} -C link-arg=-Wl,-rpath,{lib}",
        lib = lib.display()
    );
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--no-default-features",
        ])
        .arg("--features")
        .arg(format!("llvm-{major},no-llvm-linking"))
        .env("RUSTFLAGS", rustflags))
}

fn ensure_packages() -> Result<()> {
    // iptables: the end-to-end passes with LB_TEST_FIREWALL=invalid-drop and
    // tests/e2e_firewall.rs install kube-proxy's rule with it.
    ensure_tools(&[
        ("ethtool", "ethtool"),
        ("ip", "iproute2"),
        ("iptables", "iptables"),
    ])
}

/// Installs the Debian packages of the `(command or absolute file, package)` pairs that are missing.
pub fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|(bin, _)| {
            if bin.starts_with('/') {
                // A file the package provides (a font, say), not a command.
                return !std::path::Path::new(bin).exists();
            }
            output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_err()
        })
        .map(|(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("installing {missing:?} needs root (apt-get)");
    }
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The Helm renderer of `lb-userspace/tests/helm.rs`: Helm's Go SDK (its
/// template engine, values schema and `--set` parsing) in a Python wheel.
const HELM_PYTHON_SDK: (&str, &str) = ("helm-python-sdk", "0.2.2");

fn ensure_helm_renderer() -> Result<()> {
    let (name, version) = HELM_PYTHON_SDK;
    let installed = output(Command::new("python3").args([
        "-c",
        &format!("import helm_python, importlib.metadata as m; print(m.version('{name}'))"),
    ]));
    if installed.is_ok_and(|v| v.trim() == version) {
        return Ok(());
    }
    if output(Command::new("python3").args(["-m", "pip", "--version"])).is_err() {
        // Debian's python3 comes without pip.
        ensure_tools(&[("/usr/lib/python3/dist-packages/pip", "python3-pip")])?;
    }
    let pip_install = || {
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("{name}=={version}"),
        ]);
        cmd
    };
    if run(&mut pip_install()).is_ok() {
        return Ok(());
    }
    // A distribution's own Python refuses pip installs (PEP 668,
    // "externally-managed-environment"); the wheel only serves the tests.
    eprintln!("setup: retrying {name} with --break-system-packages");
    run(pip_install().arg("--break-system-packages"))
}

fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    });
    if mounted {
        return Ok(());
    }
    if !is_root() {
        bail!("mounting bpffs at /sys/fs/bpf needs root");
    }
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
