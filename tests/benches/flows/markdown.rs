//! The markdown of the two parts: their descriptions and tables of figures,
//! read from the parts' JSON.

use std::fmt::Write as _;

use serde_json::Value;

use crate::{
    capacity::{
        CapacityPlan, EXHAUSTED_UNCLAIMED, FILL_CONCURRENCY, FILL_CONNECT_TIMEOUT, FILL_ROUNDS,
        OPEN_CONCURRENCY, SERVERS,
    },
    flood::{FloodPlan, DELIVERED, KEEP_UP, MAX_CPU_BUSY_PCT, PREFILL_PPS},
    observe::count,
};

/// `n` with thousands separated by commas.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A target's verdict, in bold.
fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**missed**"
    }
}

/// The capacity part's description and table.
#[allow(clippy::too_many_lines)] // one table
pub(crate) fn capacity_md(plan: &CapacityPlan, j: &Value, target_line: &str, met: bool) -> String {
    let r = &j["port_return"];
    let fill = &j["fill"];
    let pool = if j["pool_is_default"].as_bool().unwrap_or(false) {
        format!(
            "the default range, {}",
            j["pool"].as_str().unwrap_or_default()
        )
    } else {
        format!(
            "`--snat-port-range {}`",
            j["pool"].as_str().unwrap_or_default()
        )
    };
    let mut md = format!(
        "A Service whose only endpoint is pod2a (on node2): every flow from the client through \
         node1 is translated to a port of the pool ({} ports, {pool}). {} client processes, \
         bound to {} client addresses, open the connections ({OPEN_CONCURRENCY} connects in \
         flight each, 5 s connect timeout); each completes one HTTP request and stays open. A \
         tokio server in {SERVERS} processes shares pod2a's port (`SO_REUSEPORT`). Once all are \
         open, each answers a second request (held concurrently). Then the pool is topped up in \
         rounds of {} connection attempts ({FILL_CONCURRENCY} in flight per client, {} ms \
         connect timeout: one SYN each), each success held, until at most \
         {EXHAUSTED_UNCLAIMED} of its ports were never claimed, {FILL_ROUNDS} rounds or {} s: a \
         new flow probes random ports of the pool, so the last free ones take many attempts. \
         node1's own connection to pod2a is tried, every connection is closed by the client, and \
         a new connection (from a third client address, 1 s timeout) is started every 100 ms \
         from 2 s before the close: the port return is measured only if every one of them \
         failed before the close.\n\n\
         | figure | value |\n|---|---:|\n",
        thousands(count(plan.pool_ports)),
        j["client_processes"],
        j["client_processes"],
        thousands(count(plan.fill_attempts())),
        FILL_CONNECT_TIMEOUT.as_millis(),
        plan.fill_budget.as_secs(),
    );
    let exhausted = r["measured"].as_bool().unwrap_or(false);
    let not_measured = || {
        format!(
            "not measured: {}",
            r["not_measured_because"]
                .as_str()
                .unwrap_or("the pool was not exhausted")
        )
    };
    let rows: [(&str, String); 18] = [
        (
            "connections opened (each one request)",
            format!("{} of {}", j["opened"], j["target_connections"]),
        ),
        (
            "failed",
            format!(
                "{} {}",
                j["open_failed"],
                reasons_text(&j["open_failure_reasons"])
            ),
        ),
        ("time to open them (s)", format!("{}", j["open_seconds"])),
        ("opened per second", format!("{}", j["opened_per_second"])),
        (
            "held concurrently (second request answered)",
            format!("{}", j["held_concurrently"]),
        ),
        (
            "`lb_snat_ports_in_use` for pod2a, at the target (a census after the check)",
            format!("{}", j["snat_ports_in_use_at_target"]),
        ),
        (
            "the same series read as the check ended (the census then, up to a sweep old)",
            format!("{}", j["snat_ports_in_use_at_check_end"]),
        ),
        (
            "topping up: rounds; attempts opened / failed (s)",
            format!(
                "{} ; {} / {} {} ({})",
                fill["rounds"].as_array().map_or(0, Vec::len),
                fill["opened"],
                fill["failed"],
                reasons_text(&fill["reasons"]),
                fill["seconds"]
            ),
        ),
        (
            "held at once, at the fill's end",
            format!("{}", j["held_at_fill_end"]),
        ),
        (
            "`lb_snat_ports_in_use` for pod2a, at the fill's end",
            format!("{}", j["snat_ports_in_use_at_fill_end"]),
        ),
        (
            "ports of the pool never claimed (pool size minus ports in use)",
            format!(
                "{}{}",
                j["ports_never_claimed"],
                if j["pool_exhausted"].as_bool().unwrap_or(false) {
                    ""
                } else {
                    " (the pool was not exhausted)"
                }
            ),
        ),
        (
            "`lb_snat_exhausted_total` for pod2a",
            format!("{}", j["snat_exhausted_total"]),
        ),
        (
            "node1's own connections to pod2a:8080, after the fill",
            format!(
                "{} of {} answered (local ports {})",
                j["node_connection"]["ok"],
                j["node_connection"]["attempts"],
                j["node_connection"]["local_ports"]
            ),
        ),
        (
            "new connections in the 2 s before the close",
            format!(
                "{} of {} succeeded",
                r["before_close"]["ok"], r["before_close"]["attempts"]
            ),
        ),
        ("closing them all (s)", format!("{}", r["close_seconds"])),
        (
            "port return: first new connection after the close (s)",
            if exhausted {
                secs_text(&r["first_success_s"])
            } else {
                not_measured()
            },
        ),
        (
            "port return: every new connection succeeds from (s)",
            if exhausted {
                secs_text(&r["all_succeed_from_s"])
            } else {
                not_measured()
            },
        ),
        (
            "ports counted in use fall below 1% of the peak after (s)",
            secs_text(&r["ports_counted_free_after_s"]),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(md, "| {name} | {value} |");
    }
    let _ = writeln!(
        md,
        "\nTarget: {target_line}: {} ({} held, {} SNAT ports in use at the target).\n",
        verdict(met),
        j["held_concurrently"],
        j["snat_ports_in_use_at_target"],
    );
    md
}

/// Failure reasons and their counts, in parentheses (nothing without any).
fn reasons_text(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            format!(
                "({})",
                m.iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        _ => String::new(),
    }
}

/// Seconds to 0.01 s, or "never, within the window".
fn secs_text(v: &Value) -> String {
    v.as_f64().map_or_else(
        || "never, within the window".to_string(),
        |s| format!("{s:.2}"),
    )
}

/// The flood part's description and tables.
#[allow(clippy::too_many_lines)] // one table
pub(crate) fn flood_md(plan: &FloodPlan, j: &Value) -> String {
    let r = &j["run"];
    let mut md = format!(
        "Spoofed frames ({}) sent on an `AF_PACKET` socket from a namespace of its own on the LAN, \
         straight to node1's MAC, by one paced sender process. node1 has no default route and \
         nothing routes 100.64.0.0/10 (checked before and after): replies die on node1. The agent \
         runs with its defaults on `examples/` (web-service: pod1a/b/c on node1, pod2a on node2). \
         The bed's flow maps are filled first ({} conntrack entries after {} s of {PREFILL_PPS} \
         frames/s: the state a long flood reaches, LRU maps full and evicting, SNAT pools full), \
         then the calibration and the measured flood run in it. Calibration: {} s at each rate, up \
         the list until the sender falls \
         below {:.0}% of its rate, or less than {:.0}% of what it sends reaches node1 (the rest \
         is dropped by the veth in front of node1's XDP program, as a NIC drops when its ring \
         overflows), or a CPU is busier than {MAX_CPU_BUSY_PCT:.0}%; the highest rate that passed \
         is used for the {} s flood{}{}. BPF run-time statistics are on during this part (`BPF_ENABLE_STATS`).\n\n\
         | calibration: requested (frames/s) | reached (frames/s) | reaching node1 (%) | CPU busy, per CPU (%) | \
         XDP program, mean ns per packet | new connections ok | established broken | kept up |\n\
         |---:|---:|---:|---|---:|---:|---:|---|\n",
        j["mix"].as_str().unwrap_or_default(),
        j["prefill"]["conntrack_entries"],
        plan.prefill.as_secs(),
        plan.step.as_secs(),
        KEEP_UP * 100.0,
        DELIVERED * 100.0,
        plan.duration.as_secs(),
        if plan.quick { " (quick run: the full run floods for 10 s)" } else { "" },
        match j["uplink_hook"].as_str() {
            Some("xdp") | None => String::new(),
            Some(hook) => format!(" (investigation: the uplink program at {hook}, not XDP)"),
        },
    );
    for s in j["calibration"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {}/{} | {} | {} |",
            s["requested_pps"],
            s["reached_pps"],
            s["delivered_pct"],
            s["cpu"]["busy_pct_per_cpu"],
            s["programs"]["xdp"]["mean_ns"],
            s["new_connections"]["ok"],
            s["new_connections"]["attempted"],
            s["established"]["broken"],
            if s["kept_up"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            }
        );
    }
    let ev = |name: &str| {
        let key = format!("lb_datapath_events_total{{event=\"{name}\",family=\"ipv4\"}}");
        format!(
            "{} -> {}",
            r["metrics_before"][&key], r["metrics_after"][&key]
        )
    };
    let m = |name: &str| {
        format!(
            "{} -> {}",
            r["metrics_before"][name], r["metrics_after"][name]
        )
    };
    let verdicts = [
        "translated",
        "reversed",
        "passed",
        "dropped",
        "error",
        "invalid",
    ]
    .iter()
    .map(|v| {
        format!(
            "{v} {}",
            r["metrics_delta"][&format!("lb_packets_total{{verdict=\"{v}\",family=\"ipv4\"}}")]
        )
    })
    .collect::<Vec<_>>()
    .join(", ");
    let rows: [(&str, String); 20] = [
        ("rate requested / reached (frames/s)", format!("{} / {}", r["requested_pps"], r["reached_pps"])),
        (
            "XDP program, mean ns per packet: first 2 s / last 2 s of the flood",
            format!("{} / {}", r["xdp_mean_ns_first_2s"], r["xdp_mean_ns_last_2s"]),
        ),
        (
            "agent's programs: XDP runs, mean ns ; TC runs, mean ns",
            format!(
                "{}, {} ; {}, {}",
                r["programs"]["xdp"]["runs"], r["programs"]["xdp"]["mean_ns"], r["programs"]["tc"]["runs"], r["programs"]["tc"]["mean_ns"]
            ),
        ),
        ("frames sent (refused by the kernel)", format!("{} ({}) in {} s", r["sent"], r["refused_by_kernel"], r["seconds"])),
        (
            "frames into the bridge / on to node1, all traffic (dropped on the way; at node1's eth0)",
            format!(
                "{} / {} ({} ; {})",
                r["frames_into_the_bridge"], r["frames_to_node1"], r["frames_to_node1_dropped"], r["node1_rx_dropped"]
            ),
        ),
        (
            "input backlog drops per CPU (whole machine, `softnet_stat`)",
            format!("{}", r["backlog_dropped_per_cpu"]),
        ),
        ("pods' TCP counters that moved", format!("`{}`", r["pods_tcp"])),
        (
            "CPU busy: machine / per CPU (%); softirq (%)",
            format!("{} / {} ; {}", r["cpu"]["busy_pct"], r["cpu"]["busy_pct_per_cpu"], r["cpu"]["softirq_pct"]),
        ),
        (
            "established connections broken (requests answered / of them later than 2 s)",
            format!(
                "{} of {} ({} / {})",
                r["established"]["broken"], r["established"]["connections"], r["established"]["requests_ok"], r["established"]["requests_late"]
            ),
        ),
        (
            "established: request p50 / p99 / max (ms)",
            format!("{} / {} / {}", r["established"]["latency"]["p50_ms"], r["established"]["latency"]["p99_ms"], r["established"]["latency"]["max_ms"]),
        ),
        (
            "new connections during the flood: ok / attempted (%)",
            format!(
                "{} / {} ({}%) {}",
                r["new_connections"]["ok"],
                r["new_connections"]["attempted"],
                r["new_connections"]["success_pct"],
                reasons_text(&r["new_connections"]["failure_reasons"])
            ),
        ),
        (
            "new connections: p50 / p99 / max (ms)",
            format!(
                "{} / {} / {}",
                r["new_connections"]["latency"]["p50_ms"], r["new_connections"]["latency"]["p99_ms"], r["new_connections"]["latency"]["max_ms"]
            ),
        ),
        (
            "agent `/readyz` 200 (polls; slowest ms)",
            format!("{} of {} ; {}", r["readyz"]["ready"], r["readyz"]["polls"], r["readyz"]["slowest_ms"]),
        ),
        (
            "agent RSS before / max sampled during (KiB); peak (VmHWM) before -> after the flood -> after a `/metrics` scrape",
            format!(
                "{} / {} ; {} -> {} -> {}",
                r["agent_rss_kib"]["before"],
                r["agent_rss_kib"]["max_sampled"],
                r["agent_rss_kib"]["peak_vmhwm_before"],
                r["agent_rss_kib"]["peak_vmhwm"],
                r["agent_rss_kib"]["peak_vmhwm_after_metrics_scrape"]
            ),
        ),
        ("conntrack entries before -> after", m("lb_conntrack_entries")),
        ("reverse-NAT entries before -> after", m("lb_reverse_nat_entries")),
        (
            "conntrack / reverse-NAT evictions before -> after",
            format!("{} ; {}", m("lb_conntrack_evictions_total"), m("lb_reverse_nat_evictions_total")),
        ),
        ("`snat_early_drop` events before -> after", ev("snat_early_drop")),
        ("`snat_exhausted` events before -> after", ev("snat_exhausted")),
        ("verdicts during the window (delta)", verdicts),
    ];
    let _ = writeln!(
        md,
        "\n| figure ({} s flood) | value |\n|---|---|",
        plan.duration.as_secs()
    );
    for (name, value) in rows {
        let _ = writeln!(md, "| {name} | {value} |");
    }
    let t = &j["targets"];
    let _ = writeln!(
        md,
        "\nTargets: no established connection broken or answered later than 2 s: {}; ≥99% new connections succeed during the flood: {} ({}%); \
         the agent ready throughout: {}.\n",
        verdict(t["established_none_broken_or_late"].as_bool().unwrap_or(false)),
        verdict(t["new_connections_99pct"].as_bool().unwrap_or(false)),
        r["new_connections"]["success_pct"],
        verdict(t["agent_ready_throughout"].as_bool().unwrap_or(false)),
    );
    md
}
