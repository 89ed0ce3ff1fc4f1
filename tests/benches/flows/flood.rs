//! Floods: the bed (the topology, the agent on the examples, a sender's
//! namespace on the LAN), its flow maps filled first, the calibration of the
//! rate, and the measured flood (each a `window`).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use lb_tests::{
    agent::{Agent, ManifestDir},
    flood::{is_spoofed_source, parse_mac},
    netns::{sh, Netns},
    topology::ClusterTopology,
    traffic::PodServers,
};
use serde_json::{json, Value};

use crate::{
    markdown::flood_md,
    observe::{count, metrics, require_count, to_json},
    procs::Proc,
    window::{flood_window, KEPT_ALIVE},
    GC_INTERVAL_S, METRICS_PORT,
};

/// `examples/web-service.yaml`: pod1a/b/c on node1, pod2a on node2; TCP 80, UDP 53.
pub(crate) const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
/// `examples/web-service.yaml`'s DNS port (UDP).
const WEB_DNS_PORT: u16 = 53;
/// The flood's namespace on the LAN: its address, and its port on the LAN's
/// bridge (whose counters are the frames the sender put on the wire).
const FLOOD_ADDR: &str = "192.168.50.30/24";
/// See `FLOOD_ADDR`.
pub(crate) const FLOOD_PORT: &str = "lanf";
/// A calibration step keeps up when the sender reaches this share of its
/// rate, this share of what it sends reaches node1 (not dropped on the way),
/// and no CPU is busier than this.
pub(crate) const KEEP_UP: f64 = 0.95;
/// See `KEEP_UP`.
pub(crate) const DELIVERED: f64 = 0.99;
/// See `KEEP_UP`.
pub(crate) const MAX_CPU_BUSY_PCT: f64 = 90.0;

/// Rate of the frames that fill the calibration bed's flow maps.
pub(crate) const PREFILL_PPS: u64 = 50_000;

/// The flood part's durations and rates, quick or full.
pub(crate) struct FloodPlan {
    /// A quick run (`LB_BENCH_QUICK`).
    pub(crate) quick: bool,
    /// How long the calibration bed's maps are filled first.
    pub(crate) prefill: Duration,
    /// Rates tried in the calibration, frames per second (half SYNs, half datagrams).
    pub(crate) rates: Vec<u64>,
    /// How long each calibration step floods.
    pub(crate) step: Duration,
    /// How long the measured flood lasts.
    pub(crate) duration: Duration,
}

impl FloodPlan {
    /// The plan of a quick or a full run.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                prefill: Duration::from_secs(6),
                rates: vec![20_000, 40_000, 60_000],
                step: Duration::from_secs(2),
                duration: Duration::from_secs(3),
            }
        } else {
            Self {
                quick,
                prefill: Duration::from_secs(6),
                rates: vec![
                    20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000, 150_000, 200_000,
                    300_000,
                ],
                step: Duration::from_secs(5),
                duration: Duration::from_secs(10),
            }
        }
    }
}

/// The flood's test bed: the topology, servers in every pod, the agent on
/// the examples, and a namespace on the LAN for the sender. Fields drop in
/// order: the agent first, the topology last.
pub(crate) struct FloodBed {
    /// The agent on node1.
    pub(crate) agent: Agent,
    _servers: PodServers,
    _manifests: ManifestDir,
    sender_ns: Netns,
    sender_mac: [u8; 6],
    node1_mac: [u8; 6],
    /// The uplink program's hook: `xdp`, or `LB_FLOWS_UPLINK_HOOK`.
    pub(crate) uplink_hook: String,
    /// The topology, dropped last.
    pub(crate) topo: ClusterTopology,
}

fn mac_in(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let out = sh(&["ip", "-j", "-n", ns, "link", "show", dev])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    parse_mac(v[0]["address"].as_str().context("no address")?)
}

impl FloodBed {
    fn new() -> Result<Self> {
        let topo = ClusterTopology::new()?;
        let servers = PodServers::start(&topo)?;
        let manifests = ManifestDir::with_examples()?;
        let dir = manifests.path().to_string_lossy().into_owned();
        let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
        let mut args = vec![
            "--manifests",
            &dir,
            "--metrics-addr",
            &metrics_addr,
            "--ct-gc-interval",
            GC_INTERVAL_S,
        ];
        // Investigation aid: the flood with the uplink program at TC (`tc`).
        let hook = std::env::var("LB_FLOWS_UPLINK_HOOK")
            .ok()
            .filter(|h| !h.is_empty());
        if let Some(hook) = &hook {
            args.extend(["--uplink-hook", hook]);
        }
        let mut agent = Agent::start_with(&topo.node1, &args)?;
        agent.wait_ready(Duration::from_mins(2))?;
        let sender_ns = topo.add_lan_host("flood", FLOOD_PORT, FLOOD_ADDR)?;
        let sender_mac = mac_in(sender_ns.name(), "eth0")?;
        let node1_mac = mac_in(topo.node1.name(), "eth0")?;
        Ok(Self {
            agent,
            _servers: servers,
            _manifests: manifests,
            sender_ns,
            sender_mac,
            node1_mac,
            uplink_hook: hook.unwrap_or_else(|| "xdp".into()),
            topo,
        })
    }

    /// The paced sender of `rate` spoofed frames per second for `duration`,
    /// started; it answers once, when done.
    pub(crate) fn sender(&self, rate: u64, duration: Duration, deadline: Instant) -> Result<Proc> {
        let hex = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        Proc::spawn(
            "flood sender",
            "flood",
            &self.sender_ns,
            &[
                ("LB_FLOWS_DST_MAC", hex(self.node1_mac)),
                ("LB_FLOWS_SRC_MAC", hex(self.sender_mac)),
                ("LB_FLOWS_VIP", WEB.ip().to_string()),
                ("LB_FLOWS_PORTS", format!("{} {WEB_DNS_PORT}", WEB.port())),
                ("LB_FLOWS_RATE", rate.to_string()),
                ("LB_FLOWS_SECONDS", duration.as_secs_f64().to_string()),
            ],
            deadline,
        )
    }

    /// Spoofed sources must die on the nodes: no default route and no route
    /// to the shared address space in any namespace the flood or its replies reach.
    pub(crate) fn check_unroutable(&self) -> Result<()> {
        for ns in [
            &self.topo.node1,
            &self.topo.node2,
            &self.topo.client,
            &self.sender_ns,
        ] {
            let out = sh(&["ip", "-n", ns.name(), "route", "show", "default"])?;
            ensure!(
                out.stdout.iter().all(u8::is_ascii_whitespace),
                "{} has a default route: spoofed sources would be routed",
                ns.name()
            );
            for probe in ["100.64.0.1", "100.100.100.100", "100.127.255.254"] {
                ensure!(
                    is_spoofed_source(probe.parse()?),
                    "{probe} is not a spoofed source"
                );
                ensure!(
                    sh(&["ip", "-n", ns.name(), "route", "get", probe]).is_err(),
                    "{} routes {probe}",
                    ns.name()
                );
            }
        }
        Ok(())
    }
}

/// Fills the bed's flow maps: the state a long flood reaches (LRU maps
/// full and evicting, SNAT pools full of unanswered flows).
fn prefill(bed: &FloodBed, plan: &FloodPlan, deadline: Instant) -> Result<Value> {
    eprintln!("flood: filling the flow maps for {:?}", plan.prefill);
    let mut sender = bed.sender(PREFILL_PPS, plan.prefill, deadline)?;
    let sent = sender.recv(plan.prefill + Duration::from_secs(15))?;
    let m = metrics(&bed.topo.node1)?;
    let prefill = json!({"pps": PREFILL_PPS, "seconds": plan.prefill.as_secs(), "sent": sent["sent"],
        "conntrack_entries": require_count(&m, "lb_conntrack_entries")?,
        "reverse_nat_entries": require_count(&m, "lb_reverse_nat_entries")?,
        "snat_ports_in_use": to_json(&m.iter().filter(|(k, _)| k.starts_with("lb_snat_ports_in_use"))
            .map(|(k, v)| (k.clone(), *v)).collect())});
    eprintln!("  conntrack entries: {}", prefill["conntrack_entries"]);
    Ok(prefill)
}

/// The calibration: steps up the list of rates until one does not keep up.
fn calibrate(bed: &FloodBed, plan: &FloodPlan, deadline: Instant) -> Result<Vec<Value>> {
    let mut steps = Vec::new();
    for &rate in &plan.rates {
        eprintln!("flood calibration: {rate} frames/s for {:?}", plan.step);
        let step = flood_window(bed, rate, plan.step, deadline)?;
        eprintln!(
            "  reached {} frames/s, {}% of them to node1, CPU busy {}%, kept up: {}",
            step["reached_pps"],
            step["delivered_pct"],
            step["cpu"]["busy_pct_per_cpu"],
            step["kept_up"]
        );
        let kept_up = step["kept_up"].as_bool().unwrap_or(false);
        steps.push(step);
        if !kept_up {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(steps)
}

/// Runs the flood part: its figures and its markdown.
pub(crate) fn flood(plan: &FloodPlan, deadline: Instant) -> Result<(Value, String)> {
    // The programs' run time, counted while this descriptor is open (a
    // few tens of ns per run; the figures read "mean_ns").
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    if let Err(e) = &stats {
        eprintln!("flood: no BPF run-time statistics: {e}");
    }
    // One bed: its maps filled first, then the calibration and the measured
    // flood, all in the state a long flood reaches.
    let bed = FloodBed::new()?;
    bed.check_unroutable()?;
    let prefill = prefill(&bed, plan, deadline)?;
    // Investigation aid: `LB_FLOWS_RATE=N` floods at N frames/s, uncalibrated.
    let forced: Option<u64> = std::env::var("LB_FLOWS_RATE")
        .ok()
        .and_then(|r| r.parse().ok());
    let steps = match forced {
        Some(_) => Vec::new(),
        None => calibrate(&bed, plan, deadline)?,
    };
    let passed = steps
        .iter()
        .filter(|s| s["kept_up"].as_bool().unwrap_or(false))
        .filter_map(|s| s["requested_pps"].as_u64())
        .max();
    let (chosen, basis) = match (forced, passed) {
        (Some(rate), _) => (rate, "forced"),
        (None, None) => (plan.rates[0], "none_kept_up"),
        (None, Some(rate))
            if steps.len() == plan.rates.len() && passed == plan.rates.last().copied() =>
        {
            (rate, "all_kept_up")
        }
        (None, Some(rate)) => (rate, "highest_kept_up"),
    };
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("flood: {chosen} frames/s for {:?}", plan.duration);
    let run = flood_window(&bed, chosen, plan.duration, deadline)?;
    let calibration: Vec<Value> = steps
        .iter()
        .map(|s| {
            json!({"requested_pps": s["requested_pps"], "reached_pps": s["reached_pps"],
                "delivered_pct": s["delivered_pct"], "frames_to_node1_dropped": s["frames_to_node1_dropped"],
                "machine_idle_pct": s["machine_idle_pct"], "cpu": s["cpu"], "kept_up": s["kept_up"],
                "new_connections": s["new_connections"], "established": s["established"],
                "readyz": s["readyz"], "metrics_delta": s["metrics_delta"], "programs": s["programs"]})
        })
        .collect();
    let est = &run["established"];
    // Every kept-alive connection there, none broken, no request answered late.
    let established_unharmed = est["connections"].as_u64() == Some(count(KEPT_ALIVE))
        && est["broken"].as_u64() == Some(0)
        && est["requests_late"].as_u64() == Some(0);
    let success = run["new_connections"]["success_pct"]
        .as_f64()
        .unwrap_or(0.0);
    let polls = run["readyz"]["polls"].as_u64().unwrap_or(0);
    let ready = polls > 0 && run["readyz"]["ready"].as_u64() == Some(polls);
    let json = json!({
        "mix": "half TCP SYNs to 10.96.0.10:80, half UDP datagrams to 10.96.0.10:53, sources random in 100.64.0.0/10, ports random in 1024-65535",
        "step_seconds": plan.step.as_secs_f64(),
        "prefill": prefill,
        "calibration": calibration,
        "chosen_pps": chosen,
        "rate_forced": forced.is_some(),
        "rate_basis": basis,
        "bpf_run_time_stats": stats.is_ok(),
        "uplink_hook": bed.uplink_hook,
        "duration_seconds": plan.duration.as_secs_f64(),
        "run": run,
        "spoofed_sources_unroutable": true,
        // What node1 faced in the measured flood itself (the verdicts hold for that).
        "faced": {
            "requested_pps": run["requested_pps"],
            "reached_pps": run["reached_pps"],
            "delivered_pct": run["delivered_pct"],
            "kept_up": run["kept_up"],
        },
        "targets": {
            "established_none_broken_or_late": established_unharmed,
            "new_connections_99pct": success >= 99.0,
            "agent_ready_throughout": ready,
        },
    });
    let md = flood_md(plan, &json);
    Ok((json, md))
}
