//! `lb-agent`: the load balancer's node agent.

use std::{
    io::IsTerminal,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{
    agent::{self, RunOptions, SourceConfig},
    conntrack,
    datapath::{
        socket_lb::SocketLbScope,
        uplink::{self, HookRequest},
        DatapathConfig, UplinkHook,
    },
    desired::{NodeAddrs6, NodeInfo},
    flows::{self, FlowSettings, PortRange},
    node_ports::NodePortAddresses,
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
    Run(Box<RunArgs>),
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
    /// Check this node before the agent replaces kube-proxy: kernel, bpffs,
    /// cgroup v2, other programs on the interfaces, kube-proxy's rules.
    /// Exits 1 when something blocks.
    Check(CheckArgs),
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
struct CheckArgs {
    /// Pin directory the agent would use.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Uplink interfaces the agent would attach to (repeat for several).
    #[arg(long = "xdp-iface")]
    xdp_ifaces: Vec<String>,
    /// Pod interface names or patterns with `*` (repeat for several).
    #[arg(long = "tc-iface")]
    tc_ifaces: Vec<String>,
    /// The cgroup v2 directory of socket-level balancing, if it is to be used.
    #[arg(long)]
    socket_lb_cgroup: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Parser)]
struct RunArgs {
    /// Where Services and EndpointSlices come from.
    #[arg(long, value_enum, default_value_t = SourceArg::Manifests)]
    source: SourceArg,
    /// Directory of Service, EndpointSlice and Endpoints manifests (YAML or JSON), for `--source manifests`.
    #[arg(long, required_if_eq("source", "manifests"))]
    manifests: Option<PathBuf>,
    /// Kubeconfig for `--source kube` [default: ~/.kube/config, then the in-cluster config].
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The API server's direct address (host:port or https:// URL; "" for
    /// none), used in place of the config's: required where the agent
    /// replaces kube-proxy, whose in-cluster address (the `kubernetes`
    /// Service) only the agent itself would serve.
    #[arg(long, default_value = "")]
    api_server: String,
    /// Uplink interface for the XDP program, or with `--uplink-hook tc` the
    /// uplink TC program (repeat for several).
    #[arg(long = "xdp-iface")]
    xdp_ifaces: Vec<String>,
    /// The hook on the uplinks: XDP, TC ingress, or auto: XDP (native)
    /// unless an uplink can hand XDP partial checksums (a veth), then TC.
    #[arg(long, value_enum, default_value_t = UplinkHookArg::Auto)]
    uplink_hook: UplinkHookArg,
    /// Allow `--uplink-hook xdp` on a veth uplink: only where every sender
    /// beyond it completes its checksums (TX checksum offload off), as on
    /// test beds; otherwise XDP would corrupt partially checksummed packets.
    #[arg(long)]
    xdp_on_veth: bool,
    /// Pod interface name or pattern with `*` for the TC program (repeat for several).
    #[arg(long = "tc-iface")]
    tc_ifaces: Vec<String>,
    /// Node address for SNAT, once per family [default: the first IPv4
    /// address of the first uplink; its first global IPv6 address, if any].
    #[arg(long)]
    node_ip: Vec<IpAddr>,
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
    /// Socket-level balancing: `host` points the sockets of the node's own
    /// network namespace (host processes, hostNetwork pods) aimed at a
    /// Service at a backend when they connect (cgroup programs), with no
    /// per-packet work; `all` does it for pods' sockets too; `off` leaves
    /// the node's own traffic untranslated.
    #[arg(long, value_enum, default_value_t = SocketLbArg::Off)]
    socket_lb: SocketLbArg,
    /// The cgroup v2 directory the socket programs attach to (required by
    /// `--socket-lb host|all`; on a node, the host's cgroup v2 root).
    #[arg(long)]
    socket_lb_cgroup: Option<PathBuf>,
    /// A directory of the pods' network namespace files (the container
    /// runtime's, `/run/netns`; repeatable), where the agent closes the
    /// sockets pointed at a removed backend; read only with `--socket-lb
    /// all` (entering a namespace needs `CAP_SYS_ADMIN`).
    #[arg(long)]
    socket_lb_netns_dir: Vec<PathBuf>,
    /// On exit, detach the programs and remove the pins. By default they stay
    /// pinned and keep serving, so a restarted agent adopts them.
    #[arg(long)]
    detach_on_exit: bool,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9960).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Serve kube-proxy's /healthz and /livez on this IP:port ("" turns it
    /// off). While kube-proxy still runs beside the agent it holds the
    /// port: the agent logs that and tries again every few seconds.
    #[arg(long, default_value = lb_userspace::health::DEFAULT_HEALTHZ_BIND_ADDRESS)]
    healthz_bind_address: String,
    /// Slots of the Maglev slab (4 bytes each), shared by all services' tables.
    #[arg(long, default_value_t = lb_common::MAGLEV_SLAB_SLOTS)]
    maglev_slab_slots: u32,
    /// Entries of the backends array (12 bytes each): one per endpoint of
    /// each frontend (a cluster IP, an external or load-balancer IP, a node
    /// port), all Services together.
    #[arg(long, default_value_t = lb_common::MAX_BACKENDS)]
    max_backends: u32,
    /// Frontends (a cluster IP, an external or load-balancer IP, a node
    /// port: each address, port and protocol), and Service ports, all
    /// Services together.
    #[arg(long, default_value_t = lb_common::MAX_SERVICES)]
    max_services: u32,
    /// Source ports for translated flows, per backend (outside the node's
    /// ephemeral range and the NodePort range; checked at start).
    #[arg(long, default_value = "1024-29999")]
    snat_port_range: PortRange,
    /// Where node ports are served: "" for every local address (kube-proxy's
    /// default), `primary` for the node's own addresses, or comma-separated
    /// CIDRs of local addresses.
    #[arg(long, default_value = "")]
    nodeport_addresses: String,
    /// The cluster's NodePort range (the API server's --service-node-port-range).
    #[arg(long, default_value = "30000-32767")]
    node_port_range: PortRange,
    /// A conntrack idle timeout, NAME=SECONDS (repeatable; names: udp,
    /// udp-stream, tcp-syn, tcp-established, tcp-half-closed, tcp-closed,
    /// tcp-time-wait, tcp-reset).
    #[arg(long = "ct-timeout")]
    ct_timeouts: Vec<String>,
    /// Seconds between garbage collections of expired flows.
    #[arg(long, default_value_t = 30)]
    ct_gc_interval: u64,
    /// The flow-hash key, 32 hex digits, the same on every node of the
    /// cluster (Maglev then picks the same backend for a flow everywhere).
    #[arg(long, conflicts_with = "hash_seed_file")]
    hash_seed: Option<String>,
    /// A file holding the flow-hash key (a mounted Secret).
    #[arg(long)]
    hash_seed_file: Option<PathBuf>,
    /// Reverse-translate a reply only if the route to its source leaves
    /// through the interface it arrived on.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    reply_path_check: Switch,
    /// Serve Services' IPv6 frontends (dual-stack and IPv6-only Services):
    /// `on` writes them into the IPv6 maps; `off` leaves them unserved,
    /// each Service reporting an `IPv6NotServed` problem.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    ipv6: Switch,
}

#[derive(Clone, Copy, ValueEnum)]
enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
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
    /// XDP where it is safe (no veth uplink), TC otherwise.
    Auto,
    /// XDP (`--xdp-mode` says how).
    Xdp,
    /// TC ingress.
    Tc,
}

#[derive(Clone, Copy, ValueEnum)]
enum SocketLbArg {
    /// No socket-level balancing.
    Off,
    /// The node's own network namespace (decided by its netns cookie).
    Host,
    /// Every network namespace: the node's and its pods'.
    All,
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
            let options = run_options(*args)?;
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
        Command::Check(args) => {
            let code = check(&args)?;
            std::process::exit(code);
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

/// The uplink hook: the request, decided against the uplinks' drivers.
fn uplink_hook(args: &RunArgs) -> Result<UplinkHook> {
    let request = match (args.uplink_hook, args.xdp_mode) {
        (UplinkHookArg::Auto, XdpModeArg::Native) => HookRequest::Auto,
        (UplinkHookArg::Auto, XdpModeArg::Skb) => {
            bail!("--xdp-mode skb needs --uplink-hook xdp (and generic XDP is refused: see its error)")
        }
        (UplinkHookArg::Tc, _) => HookRequest::Tc,
        (UplinkHookArg::Xdp, mode) => HookRequest::Xdp {
            mode: match mode {
                XdpModeArg::Native => XdpMode::Driver,
                XdpModeArg::Skb => XdpMode::Skb,
            },
            on_veth: args.xdp_on_veth,
        },
    };
    let drivers = args
        .xdp_ifaces
        .iter()
        .map(|iface| Ok((iface.clone(), uplink::driver(iface)?)))
        .collect::<Result<Vec<_>>>()?;
    let xdp_metadata = uplink::xdp_metadata_supported();
    let (hook, why) = uplink::choose(request, &drivers, xdp_metadata)?;
    if let Some(why) = why {
        tracing::info!("{why}");
    }
    if matches!(hook, UplinkHook::Xdp(_)) && !xdp_metadata {
        tracing::warn!("{}", uplink::xdp_without_metadata());
    }
    Ok(hook)
}

fn run_options(args: RunArgs) -> Result<RunOptions> {
    let uplink = uplink_hook(&args)?;
    let socket_lb_cgroup = socket_lb_cgroup(&args)?;
    let (node_ip, node_ip6) = node_ips(&args.node_ip)?;
    let node_addr6 = match (node_ip6, args.xdp_ifaces.first()) {
        (Some(ip), _) => Some(ip),
        (None, Some(uplink)) => interface_ipv6(uplink)?,
        (None, None) => None,
    };
    let node_addr = match (node_ip, args.xdp_ifaces.first()) {
        (Some(ip), _) => ip,
        (None, Some(uplink)) => node_ipv4_or_none(uplink, interface_ipv4(uplink), node_addr6)?,
        (None, None) => bail!("give --node-ip, or an --xdp-iface whose address is the node's"),
    };
    let node_name = match args.node_name {
        Some(name) => name,
        None => hostname()?,
    };
    let source = match args.source {
        SourceArg::Manifests => {
            if !args.api_server.trim().is_empty() {
                bail!("--api-server is for --source kube");
            }
            SourceConfig::Manifests(
                args.manifests
                    .context("--source manifests needs --manifests DIR")?,
            )
        }
        SourceArg::Kube => SourceConfig::Kube {
            kubeconfig: args.kubeconfig,
            api_server: lb_userspace::source::api_server::parse(&args.api_server)?,
        },
    };
    let mut timeouts = lb_common::conntrack::DEFAULT_TIMEOUTS;
    for spec in &args.ct_timeouts {
        flows::set_timeout(&mut timeouts, spec)
            .map_err(|e| anyhow::anyhow!("--ct-timeout: {e}"))?;
    }
    flows::check_snat_pool_on_node(&args.snat_port_range, &args.node_port_range.0)?;
    let hash_key = match (&args.hash_seed, &args.hash_seed_file) {
        (Some(seed), _) => {
            Some(flows::parse_hash_key(seed).map_err(|e| anyhow::anyhow!("--hash-seed: {e}"))?)
        }
        (None, Some(path)) => Some(flows::read_hash_key(path)?),
        (None, None) => None,
    };
    let healthz_addr = lb_userspace::health::parse_bind_address(&args.healthz_bind_address)
        .context("--healthz-bind-address")?;
    Ok(RunOptions {
        metrics_addr: args.metrics_addr,
        health: lb_userspace::health::HealthOptions {
            healthz_addr,
            ..lb_userspace::health::HealthOptions::default()
        },
        gc_interval: std::time::Duration::from_secs(args.ct_gc_interval.max(1)),
        ipv6: matches!(args.ipv6, Switch::On),
        source,
        node: NodeInfo {
            name: node_name,
            zone: args.node_zone,
            addresses: Some(node_addr)
                .filter(|ip| !ip.is_unspecified())
                .into_iter()
                .collect(),
            local_addresses: Vec::new(),
            node_port_addresses: None,
            v6: NodeAddrs6 {
                addresses: node_addr6.into_iter().collect(),
                ..NodeAddrs6::default()
            },
        },
        node_port_addresses: NodePortAddresses::parse(&args.nodeport_addresses)
            .map_err(|e| anyhow::anyhow!("--nodeport-addresses: {e}"))?,
        datapath: DatapathConfig {
            xdp_ifaces: args.xdp_ifaces,
            uplink,
            tc_patterns: args.tc_ifaces,
            node_addr,
            node_addr6,
            pin_dir: args.pin_dir,
            slab_slots: args.maglev_slab_slots,
            backend_slots: check_max_backends(args.max_backends)?,
            service_slots: check_max_services(args.max_services)?,
            stats_array_len: None,
            detach_on_exit: args.detach_on_exit,
            socket_lb_cgroup,
            socket_lb_scope: match args.socket_lb {
                SocketLbArg::All => SocketLbScope::All,
                SocketLbArg::Off | SocketLbArg::Host => SocketLbScope::Host,
            },
            socket_lb_netns_dirs: args.socket_lb_netns_dir.clone(),
            ipv6: matches!(args.ipv6, Switch::On),
            flows: FlowSettings {
                snat_ports: args.snat_port_range,
                timeouts,
                hash_key,
                reply_path_check: matches!(args.reply_path_check, Switch::On),
            },
        },
    })
}

/// The cgroup of `--socket-lb host|all`, which must name one; none when off.
fn socket_lb_cgroup(args: &RunArgs) -> Result<Option<PathBuf>> {
    match (args.socket_lb, &args.socket_lb_cgroup) {
        (SocketLbArg::Off, None) => Ok(None),
        (SocketLbArg::Off, Some(_)) => {
            anyhow::bail!("--socket-lb-cgroup needs --socket-lb host or all")
        }
        (SocketLbArg::Host | SocketLbArg::All, None) => anyhow::bail!(
            "--socket-lb host and all need --socket-lb-cgroup: the cgroup v2 directory \
             whose processes they serve (the host's cgroup v2 root on a node; never guessed)"
        ),
        (SocketLbArg::Host | SocketLbArg::All, Some(path)) => Ok(Some(path.clone())),
    }
}

/// `lb-agent check`: prints what the node's facts mean; the exit status.
fn check(args: &CheckArgs) -> Result<i32> {
    use lb_userspace::preflight::{self, probe};
    let facts = probe::gather(&probe::CheckOptions {
        pin_dir: args.pin_dir.clone(),
        uplinks: args.xdp_ifaces.clone(),
        pod_patterns: args.tc_ifaces.clone(),
        socket_lb_cgroup: args.socket_lb_cgroup.clone(),
    });
    let findings = preflight::assess(&facts);
    let code = preflight::exit_code(&findings);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        for finding in &findings {
            println!("{finding}");
        }
        println!(
            "{}",
            if code == 0 {
                "nothing blocks lb-agent on this node"
            } else {
                "something blocks lb-agent on this node (BLOCK above)"
            }
        );
    }
    Ok(code)
}

/// Checks `--max-backends`: at least 2 (id 0 is never used), at most
/// [`MAX_BACKEND_SLOTS`].
fn check_max_backends(n: u32) -> Result<u32> {
    if (2..=MAX_BACKEND_SLOTS).contains(&n) {
        Ok(n)
    } else {
        bail!("--max-backends {n}: give 2 to {MAX_BACKEND_SLOTS} (12 bytes of kernel memory each)")
    }
}

/// The largest `--max-backends` (192 MiB of kernel memory).
const MAX_BACKEND_SLOTS: u32 = 1 << 24;

/// Checks `--max-services`: at least 1, at most [`MAX_SERVICE_SLOTS`].
fn check_max_services(n: u32) -> Result<u32> {
    if (1..=MAX_SERVICE_SLOTS).contains(&n) {
        Ok(n)
    } else {
        bail!("--max-services {n}: give 1 to {MAX_SERVICE_SLOTS}")
    }
}

/// The largest `--max-services`: ids fit the service counters' hash and
/// array, and the id-indexed tables stay within 16 MiB.
const MAX_SERVICE_SLOTS: u32 = 1 << 20;

/// The first IPv4 address of `iface`.
fn interface_ipv4(iface: &str) -> Result<Ipv4Addr> {
    let found = lb_userspace::node_ports::interface_addresses()
        .context("listing interface addresses")?
        .into_iter()
        .find(|(name, _)| name == iface)
        .map(|(_, addr)| addr);
    match found {
        Some(ip) => Ok(ip),
        None => bail!("interface {iface} has no IPv4 address: pass --node-ip"),
    }
}

/// The node's IPv4 address: `uplink`'s (`found`), else none (0.0.0.0) on
/// an IPv6-only node (it has an IPv6 address, `node_addr6`): the IPv4 data
/// path then drops the flows it would translate to the node's address
/// (counted as errors), as it has no address to give them.
fn node_ipv4_or_none(
    uplink: &str,
    found: Result<Ipv4Addr>,
    node_addr6: Option<Ipv6Addr>,
) -> Result<Ipv4Addr> {
    match (found, node_addr6) {
        (Ok(ip), _) => Ok(ip),
        (Err(_), Some(ip6)) => {
            tracing::warn!(
                "{uplink} has no IPv4 address: an IPv6-only node ({ip6}); IPv4 flows \
                 that need the node's address (SNAT) are dropped"
            );
            Ok(Ipv4Addr::UNSPECIFIED)
        }
        (Err(e), None) => Err(e),
    }
}

/// `--node-ip`'s values: at most one per family; an IPv6 one must be a
/// global address (see [`global_ipv6`]).
fn node_ips(given: &[IpAddr]) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let (mut v4, mut v6) = (None, None);
    for ip in given {
        match *ip {
            IpAddr::V4(ip) => {
                if v4.replace(ip).is_some() {
                    bail!("--node-ip: give at most one IPv4 address");
                }
            }
            IpAddr::V6(ip) => {
                if !global_ipv6(ip) {
                    bail!("--node-ip {ip}: an IPv6 node address must be global (not link-local, loopback, multicast or unspecified)");
                }
                if v6.replace(ip).is_some() {
                    bail!("--node-ip: give at most one IPv6 address");
                }
            }
        }
    }
    Ok((v4, v6))
}

/// Whether `ip` may be the node's IPv6 SNAT address: one that routes beyond
/// its link (link-local addresses are every node's on a link of its own).
fn global_ipv6(ip: Ipv6Addr) -> bool {
    !ip.is_unspecified()
        && !ip.is_loopback()
        && !ip.is_multicast()
        && !ip.is_unicast_link_local()
        && ip.to_ipv4_mapped().is_none()
}

/// The first global IPv6 address of `iface` (`None` without one: then IPv6
/// flows are not translated to the node's address).
fn interface_ipv6(iface: &str) -> Result<Option<Ipv6Addr>> {
    let addresses =
        lb_userspace::node_ports::interface_addresses6().context("listing interface addresses")?;
    Ok(first_global_ipv6(&addresses, iface))
}

/// The first global address of `iface` among `addresses` (see [`global_ipv6`]).
fn first_global_ipv6(addresses: &[(String, Ipv6Addr)], iface: &str) -> Option<Ipv6Addr> {
    addresses
        .iter()
        .find(|(name, addr)| name == iface && global_ipv6(*addr))
        .map(|&(_, addr)| addr)
}

fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname: pass --node-name")?;
    Ok(name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_only_node_has_no_ipv4_address_and_one_without_either_is_refused() {
        let v4 = Ipv4Addr::new(192, 168, 50, 11);
        let v6: Ipv6Addr = "fd00:50::11".parse().unwrap();
        let none = || {
            Err(anyhow::anyhow!(
                "interface eth0 has no IPv4 address: pass --node-ip"
            ))
        };
        assert_eq!(node_ipv4_or_none("eth0", Ok(v4), Some(v6)).unwrap(), v4);
        assert_eq!(node_ipv4_or_none("eth0", Ok(v4), None).unwrap(), v4);
        assert_eq!(
            node_ipv4_or_none("eth0", none(), Some(v6)).unwrap(),
            Ipv4Addr::UNSPECIFIED
        );
        let err = node_ipv4_or_none("eth0", none(), None).unwrap_err();
        assert!(err.to_string().contains("pass --node-ip"), "{err}");
    }

    #[test]
    fn node_ip_is_given_once_per_family() {
        let v4: IpAddr = "192.168.50.11".parse().unwrap();
        let v6: IpAddr = "fd00:50::11".parse().unwrap();
        assert_eq!(
            node_ips(&[v6, v4]).unwrap(),
            (
                Some("192.168.50.11".parse().unwrap()),
                Some("fd00:50::11".parse().unwrap())
            )
        );
        assert_eq!(node_ips(&[]).unwrap(), (None, None));
        assert!(node_ips(&[v4, "10.0.0.1".parse().unwrap()]).is_err());
        assert!(node_ips(&[v6, "2001:db8::1".parse().unwrap()]).is_err());
    }

    #[test]
    fn a_link_local_address_is_never_the_node_s() {
        assert!(node_ips(&["fe80::1".parse().unwrap()]).is_err());
        assert!(node_ips(&["::1".parse().unwrap()]).is_err());
        assert!(node_ips(&["::".parse().unwrap()]).is_err());
        let addrs: Vec<(String, Ipv6Addr)> = [
            ("lo", "::1"),
            ("eth0", "fe80::1"),
            ("eth1", "2001:db8::2"),
            ("eth0", "fd00:50::11"),
            ("eth0", "2001:db8::11"),
        ]
        .iter()
        .map(|(n, a)| ((*n).to_string(), a.parse().unwrap()))
        .collect();
        assert_eq!(
            first_global_ipv6(&addrs, "eth0"),
            Some("fd00:50::11".parse().unwrap())
        );
        assert_eq!(first_global_ipv6(&addrs, "lo"), None);
        assert_eq!(first_global_ipv6(&addrs, "eth2"), None);
    }
}
