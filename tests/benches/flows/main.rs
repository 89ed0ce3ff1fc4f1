//! Flows (issue 11): the SNAT pool's capacity and floods, end to end in the
//! namespace topology, with the release agent. Run with `cargo xtask bench`.
//!
//! - **SNAT capacity**: a Service whose only endpoint is pod2a (on node2), so
//!   every flow from the client through node1 takes a port of the pool.
//!   28,000 TCP connections are opened and held at once, each completing one
//!   HTTP request, from two client processes bound to two client addresses,
//!   to a tokio server in three processes sharing pod2a's port with
//!   `SO_REUSEPORT` (a process may hold at most 20,000 descriptors here).
//!   Then the pool is topped up until it refuses, the node's own connection
//!   to pod2a is checked, everything is closed (client first) and new
//!   connections are probed every 100 ms to see when ports come back.
//! - **Flood**: spoofed TCP SYNs and UDP datagrams from random sources of
//!   100.64.0.0/10 (routed nowhere here: replies die on node1, which has no
//!   default route) to a Service with local and remote backends, sent on an
//!   `AF_PACKET` socket from a namespace of its own on the LAN, for 10 s at
//!   the highest rate a short calibration found the machine sustains (the
//!   sender keeps up, what it sends reaches node1, no CPU saturated), in the
//!   state a long flood reaches (flow maps full, SNAT pools full); meanwhile
//!   kept-alive and new legitimate connections, the agent's readiness and
//!   memory, and its programs' run time are watched.
//!
//! Writes `target/bench/flows.json` and `flows.md`. The bench binary also
//! runs its own helper processes (clients, servers, the sender): it re-executes
//! itself with `LB_FLOWS_ROLE` set, inside a namespace (`setns`).

mod capacity;
mod conns;
mod flood;
mod markdown;
mod observe;
mod port_return;
mod procs;
mod roles;
mod window;

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::{json, Value};

use crate::{
    capacity::{capacity, CapacityPlan},
    flood::{flood, FloodPlan},
    procs::ROLE_ENV,
};

/// The agent's `/metrics` (and `/readyz`) port on node1, in both parts.
const METRICS_PORT: u16 = 9981;
/// The agent's `--ct-gc-interval` here: `/metrics` gives the flow series as
/// of the collector's last sweep, and the bench samples them every 100 ms.
const GC_INTERVAL_S: &str = "1";

fn main() -> Result<()> {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        roles::main(&role);
    }
    lb_tests::require_root();
    lb_tests::require_bpffs();
    let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
    let started = Instant::now();
    let deadline = started
        + if quick {
            Duration::from_mins(6)
        } else {
            Duration::from_mins(25)
        };
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;

    // Investigation aid: `LB_FLOWS_PARTS=flood` (or `capacity`) runs one part.
    let parts = std::env::var("LB_FLOWS_PARTS").unwrap_or_else(|_| "capacity,flood".into());
    let skipped = || Err(anyhow::anyhow!("skipped (LB_FLOWS_PARTS)"));
    let capacity = if parts.contains("capacity") {
        capacity(&CapacityPlan::new(quick), deadline)
    } else {
        skipped()
    };
    let flood = if parts.contains("flood") {
        flood(&FloodPlan::new(quick), deadline)
    } else {
        skipped()
    };
    let part = |r: &Result<(Value, String)>| match r {
        Ok((json, _)) => json.clone(),
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    let report = json!({"quick": quick, "capacity": part(&capacity), "flood": part(&flood)});
    let mut md = String::new();
    for (title, r) in [
        (
            "SNAT capacity: concurrent flows to one remote backend",
            &capacity,
        ),
        ("Flood: spoofed SYNs and datagrams", &flood),
    ] {
        let _ = writeln!(md, "### {title}\n");
        match r {
            Ok((_, text)) => md.push_str(text),
            Err(e) => {
                let _ = writeln!(md, "Not measured: the run failed: `{e:#}`\n");
            }
        }
    }
    std::fs::write(
        out.join("flows.json"),
        serde_json::to_string_pretty(&lb_tests::bench_run::stamped(report.clone()))?,
    )?;
    std::fs::write(out.join("flows.md"), lb_tests::bench_run::stamped_text(&md))?;
    std::fs::write(
        out.join("flows-summary.txt"),
        lb_tests::bench_run::stamped_text(&summary(&report)),
    )?;
    print!("{md}");
    println!(
        "(took {:.1} s; wrote target/bench/flows.json and flows.md)",
        started.elapsed().as_secs_f64()
    );
    capacity?;
    flood?;
    Ok(())
}

/// Two lines for the end of `cargo xtask bench`.
fn summary(report: &Value) -> String {
    let c = &report["capacity"];
    let mut out = String::from("Flows:\n");
    if c["error"].is_null() {
        let _ = writeln!(
            out,
            "- {}: {} ({} held; {} with the pool full); node1's own connections {}/{}; \
             after the close, new connections succeed from {} s",
            c["target"]["line"].as_str().unwrap_or_default(),
            if c["target"]["met"].as_bool().unwrap_or(false) {
                "met"
            } else {
                "missed"
            },
            c["held_concurrently"],
            c["held_at_full"],
            c["node_connection"]["ok"],
            c["node_connection"]["attempts"],
            c["port_return"]["all_succeed_from_s"],
        );
    } else {
        let _ = writeln!(out, "- SNAT capacity: not measured: {}", c["error"]);
    }
    let fl = &report["flood"];
    let r = &fl["run"];
    if fl["error"].is_null() {
        let yes = |k: &str| {
            if fl["targets"][k].as_bool().unwrap_or(false) {
                "met"
            } else {
                "missed"
            }
        };
        let _ = writeln!(
            out,
            "- flood of {} frames/s (reached {}) for {} s: {} of {} established broken ({}); new connections \
             {}/{} = {}% (≥99%: {}); agent ready {}/{}",
            r["requested_pps"],
            r["reached_pps"],
            fl["duration_seconds"],
            r["established"]["broken"],
            r["established"]["connections"],
            yes("established_none_broken_or_late"),
            r["new_connections"]["ok"],
            r["new_connections"]["attempted"],
            r["new_connections"]["success_pct"],
            yes("new_connections_99pct"),
            r["readyz"]["ready"],
            r["readyz"]["polls"],
        );
    } else {
        let _ = writeln!(out, "- flood: not measured: {}", fl["error"]);
    }
    out
}
