//! `lb-agent`: the load balancer's node agent.

use std::{io::IsTerminal, net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{
    agent::{self, RunOptions, SourceConfig},
    conntrack,
    datapath::{DatapathConfig, UplinkHook},
    desired::NodeInfo,
    status,
};

/// Default pin directory in bpffs.
const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb-agent";

#[derive(Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "Kubernetes service load balancer in XDP/TC"
)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `lb_userspace=debug`).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Balance the Services of a manifest directory or the API server until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Print each service with its backends, and the verdict counters.
    Status {
        /// Pin directory of the running agent.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Detach the programs and remove every pin: uninstall from this node.
    Cleanup {
        /// Pin directory of the agent.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// List the tracked flows: client -> service -> backend, protocol, age.
    Conntrack {
        /// Pin directory of the running agent.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Parser)]
struct RunArgs {
    /// Where Services and EndpointSlices come from.
    #[arg(long, value_enum, default_value_t = SourceArg::Manifests)]
    source: SourceArg,
    /// Directory of Service, EndpointSlice and Endpoints manifests (YAML or JSON), for `--source manifests`.
    #[arg(long, required_if_eq("source", "manifests"))]
    manifests: Option<PathBuf>,
    /// Kubeconfig for `--source kube` [default: in-cluster config, then ~/.kube/config].
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Uplink interface for the XDP program, or with `--uplink-hook tc` the
    /// uplink TC program (repeat for several).
    #[arg(long = "xdp-iface")]
    xdp_ifaces: Vec<String>,
    /// The hook on the uplinks: XDP, or TC ingress (after GRO; on a veth
    /// uplink it spares the copy XDP makes of every cloned frame).
    #[arg(long, value_enum, default_value_t = UplinkHookArg::Xdp)]
    uplink_hook: UplinkHookArg,
    /// Pod interface name or pattern with `*` for the TC program (repeat for several).
    #[arg(long = "tc-iface")]
    tc_ifaces: Vec<String>,
    /// Node address for SNAT [default: the first IPv4 address of the first uplink].
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// This node's name, compared with endpoints' nodeName [default: the hostname].
    #[arg(long)]
    node_name: Option<String>,
    /// This node's zone, for topology-aware routing (EndpointSlice zone hints).
    #[arg(long)]
    node_zone: Option<String>,
    /// Where to pin the maps (in bpffs).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
    xdp_mode: XdpModeArg,
    /// On exit, detach the programs and remove the pins. By default they stay
    /// pinned and keep serving, so a restarted agent adopts them.
    #[arg(long)]
    detach_on_exit: bool,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9960).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Slots of the Maglev slab (4 bytes each), shared by all services' tables.
    #[arg(long, default_value_t = lb_common::MAGLEV_SLAB_SLOTS)]
    maglev_slab_slots: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum SourceArg {
    /// A directory of manifests, watched for changes.
    Manifests,
    /// The Kubernetes API server (list/watch).
    Kube,
}

#[derive(Clone, Copy, ValueEnum)]
enum UplinkHookArg {
    /// XDP (`--xdp-mode` says how).
    Xdp,
    /// TC ingress.
    Tc,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpModeArg {
    /// Driver (native) mode.
    Native,
    /// Generic (skb) mode, for drivers without XDP support.
    Skb,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log_level)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Run(args) => {
            let options = run_options(args)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(agent::run(options))
        }
        Command::Status { pin_dir, json } => {
            let (frontends, verdicts) = status::read(&pin_dir)?;
            if json {
                println!("{}", status::to_json(&frontends, &verdicts)?);
            } else {
                print!("{}", status::format(&frontends, &verdicts));
            }
            Ok(())
        }
        Command::Cleanup { pin_dir } => {
            lb_userspace::datapath::cleanup(&pin_dir);
            println!(
                "removed the pins under {} (programs detached)",
                pin_dir.display()
            );
            Ok(())
        }
        Command::Conntrack { pin_dir, json } => {
            let flows = conntrack::read(&pin_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
            } else {
                print!("{}", conntrack::format(&flows));
            }
            Ok(())
        }
    }
}

fn run_options(args: RunArgs) -> Result<RunOptions> {
    let node_addr = match (args.node_ip, args.xdp_ifaces.first()) {
        (Some(ip), _) => ip,
        (None, Some(uplink)) => interface_ipv4(uplink)?,
        (None, None) => bail!("give --node-ip, or an --xdp-iface whose address is the node's"),
    };
    let node_name = match args.node_name {
        Some(name) => name,
        None => hostname()?,
    };
    let source = match args.source {
        SourceArg::Manifests => SourceConfig::Manifests(
            args.manifests
                .context("--source manifests needs --manifests DIR")?,
        ),
        SourceArg::Kube => SourceConfig::Kube {
            kubeconfig: args.kubeconfig,
        },
    };
    Ok(RunOptions {
        metrics_addr: args.metrics_addr,
        source,
        node: NodeInfo {
            name: node_name,
            zone: args.node_zone,
            addresses: vec![node_addr],
        },
        datapath: DatapathConfig {
            xdp_ifaces: args.xdp_ifaces,
            uplink: match (args.uplink_hook, args.xdp_mode) {
                (UplinkHookArg::Tc, _) => UplinkHook::Tc,
                (UplinkHookArg::Xdp, XdpModeArg::Native) => UplinkHook::Xdp(XdpMode::Driver),
                (UplinkHookArg::Xdp, XdpModeArg::Skb) => UplinkHook::Xdp(XdpMode::Skb),
            },
            tc_patterns: args.tc_ifaces,
            node_addr,
            pin_dir: args.pin_dir,
            slab_slots: args.maglev_slab_slots,
            stats_array_len: None,
            detach_on_exit: args.detach_on_exit,
        },
    })
}

/// The first IPv4 address of `iface`.
fn interface_ipv4(iface: &str) -> Result<Ipv4Addr> {
    let mut found = None;
    // SAFETY: getifaddrs fills a linked list that is freed below; each entry's
    // ifa_addr is checked for null and family before the cast.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&raw mut list) != 0 {
            return Err(std::io::Error::last_os_error()).context("listing interface addresses");
        }
        let mut entry = list;
        while !entry.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).ifa_name).to_string_lossy();
            let addr = (*entry).ifa_addr;
            if found.is_none()
                && name == iface
                && !addr.is_null()
                && i32::from((*addr).sa_family) == libc::AF_INET
            {
                // An AF_INET entry is a sockaddr_in; read it unaligned to be safe.
                #[allow(clippy::cast_ptr_alignment)]
                let sin = addr.cast::<libc::sockaddr_in>().read_unaligned();
                found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    match found {
        Some(ip) => Ok(ip),
        None => bail!("interface {iface} has no IPv4 address: pass --node-ip"),
    }
}

fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname: pass --node-name")?;
    Ok(name.trim().to_string())
}
