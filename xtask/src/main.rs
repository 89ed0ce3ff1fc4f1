//! `cargo xtask <command>`: setup, build, run, lint, test, demo and bench.

mod bench;
mod build;
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
    /// Install what a fresh machine lacks (rust-src, bpf-linker, ethtool, bpffs).
    Setup,
    /// Build the kernel programs (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Build the kernel programs and the agent.
    Build {
        /// Build the agent in release mode.
        #[arg(long)]
        release: bool,
    },
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
    /// Every test: unit, packet (`BPF_PROG_TEST_RUN`) and end-to-end. Needs root.
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
        Command::Setup => setup::setup(),
        Command::BuildEbpf => build::build_ebpf().map(|_| ()),
        Command::Build { release } => build::build(release).map(|_| ()),
        Command::Run { release, args } => {
            let agent = build::build(release)?;
            util::run(std::process::Command::new(agent).args(args))
        }
        Command::Lint => build::lint(),
        Command::Test => build::test(),
        Command::Demo => build::demo(),
        Command::Bench { quick, only } => bench::bench(quick, only.as_deref()),
    }
}
