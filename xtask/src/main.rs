//! `cargo xtask <command>`: setup, build, image, run, lint, test, demo and bench.

mod bench;
mod build;
mod image;
mod passes;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build and dev tasks for the load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a fresh machine lacks (rust-src, bpf-linker, ethtool, iptables, the Helm renderer, bpffs).
    Setup {
        /// Only what building needs (rust-src, bpf-linker): the Dockerfile's build stage.
        #[arg(long)]
        build_only: bool,
    },
    /// Build the kernel programs (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Build the kernel programs and the agent.
    Build {
        /// Build the agent in release mode.
        #[arg(long)]
        release: bool,
    },
    /// The statically linked agent (musl, release), as the image holds it.
    BuildStatic,
    /// The container image (buildah, from scratch): `localhost/lb-agent:VERSION`. Needs root.
    Image,
    /// Build, then run `lb-agent` with the given arguments (the dev-VM workflow).
    Run {
        /// Build the agent in release mode.
        #[arg(long)]
        release: bool,
        /// Arguments for lb-agent, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt and clippy (-D warnings) for userspace and the eBPF crate.
    Lint,
    /// Every test: unit, packet (`BPF_PROG_TEST_RUN`), end-to-end, and the
    /// image (built first, as `cargo xtask image` does). Needs root.
    Test,
    /// The demo: a cluster of namespaces, real traffic, a manifest edit. Needs root.
    Demo,
    /// Benchmarks (release build), written to BENCHMARKS.md and target/bench/. Needs root.
    Bench {
        /// Fewer samples: a run of about a minute.
        #[arg(long)]
        quick: bool,
        /// Only these benches (comma-separated: packet, control, e2e,
        /// `east_west`, flows); the report says which are missing.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup { build_only: false } => setup::setup(),
        Command::Setup { build_only: true } => setup::build_tools().map(|_| ()),
        Command::BuildEbpf => build::build_ebpf().map(|_| ()),
        Command::Build { release } => build::build(release).map(|_| ()),
        Command::Run { release, args } => {
            let agent = build::build(release)?;
            util::run(std::process::Command::new(agent).args(args))
        }
        Command::BuildStatic => image::build_static().map(|path| println!("{}", path.display())),
        Command::Image => {
            util::require_root("cargo xtask image")?;
            image::image().map(|name| println!("{name}"))
        }
        Command::Lint => build::lint(),
        Command::Test => build::test(),
        Command::Demo => build::demo(),
        Command::Bench { quick, only } => bench::bench(quick, only.as_deref()),
    }
}
