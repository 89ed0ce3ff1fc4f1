//! The targets judged from small made-up reports.

use serde_json::json;

use super::*;

fn report() -> Value {
    let classes = |est: f64, new: f64, non: f64, est_ns: u64| {
        json!({
            "established TCP": {"vs_parse_only": est, "median_ns": est_ns},
            "new TCP flow": {"vs_parse_only": new, "median_ns": 600},
            "non-service": {"vs_parse_only": non, "median_ns": 50},
        })
    };
    json!({
        "packet": {"configs": [
            {"services": 1, "backends_per_service": 10, "classes": classes(2.4, 9.0, 1.3, 100)},
            {"services": 10_000, "backends_per_service": 10, "classes": classes(2.6, 8.0, 1.1, 112)},
            {"services": 1, "backends_per_service": 1_000, "classes": classes(2.5, 9.5, 1.2, 100)},
        ]},
        "e2e": {
            "headline": {"rps_ours_over_direct": 0.87, "rps_ours_over_direct_tc": 1.01,
                         "cps_ours_over_iptables": 2.3},
            "programming": [{"services": 10_000, "ours_ms": 1500.0,
                             "iptables_restore_over_ours": 9.4, "agent_peak_rss_kib": 140_000}],
        },
        "control": {"sizes": [{"services": 10_000, "cold_start_ms": 1700.0, "p99_ms": 0.2,
                     "agent_peak_rss_kib": 200 * 1024}]},
    })
}

fn find<'a>(verdicts: &'a [Verdict], start: &str) -> &'a Verdict {
    verdicts
        .iter()
        .find(|v| v.target.starts_with(start))
        .unwrap()
}

#[test]
fn the_worst_configuration_decides_a_per_packet_target() {
    let v = judge(&report());
    let est = find(&v, "per packet: established");
    assert_eq!(est.met, Some(false), "2.6x at 10,000 services misses 2.5x");
    assert_eq!(est.measured, "2.40x-2.60x over 3 configurations");
    assert_eq!(find(&v, "per packet: pass-through").met, Some(false));
    assert_eq!(find(&v, "per packet: new").met, Some(false));
    let flat = find(&v, "per packet: flat");
    assert_eq!(flat.met, Some(false), "{flat:?}");
    assert!(
        flat.measured.starts_with("12% (established TCP"),
        "{flat:?}"
    );
}

#[test]
fn flatness_counts_every_size_and_pairs_the_rounds() {
    let config = |services: u64, rounds: [u64; 3]| {
        json!({"services": services, "backends_per_service": 10, "classes": {
            "reply": {"median_ns": rounds[1], "rounds_ns": rounds}}})
    };
    // 100 services are 38% off 1 service; 10,000 are alike.
    let report = json!({"packet": {"configs": [
        config(1, [100, 100, 100]),
        config(100, [138, 138, 138]),
        config(10_000, [100, 104, 100]),
    ]}});
    let flat = find(&judge(&report), "per packet: flat").clone();
    assert_eq!(flat.met, Some(false));
    assert!(
        flat.measured.starts_with("38% (reply at 100 services"),
        "{flat:?}"
    );
    // The medians (100 vs 200 ns) say 100%; round by round 10,000
    // services are as fast as 1 but once, when the machine was slow.
    let report = json!({"packet": {"configs": [
        config(1, [100, 100, 200]),
        config(10_000, [100, 200, 200]),
    ]}});
    let flat = find(&judge(&report), "per packet: flat").clone();
    assert_eq!(flat.met, Some(true), "{flat:?}");
}

#[test]
fn bounds_point_the_right_way_and_missing_figures_say_so() {
    let v = judge(&report());
    assert_eq!(
        find(&v, "end to end: kept-alive requests/s >= 0.9x direct (XDP").met,
        Some(false)
    );
    assert_eq!(
        find(&v, "end to end: kept-alive requests/s >= 0.9x direct (TC").met,
        Some(true)
    );
    assert_eq!(
        find(
            &v,
            "end to end: new connections/s >= 1.3x the iptables layout at 10,000 services (XDP"
        )
        .met,
        Some(true)
    );
    let missing = find(
        &v,
        "end to end: new connections/s >= 1.3x the iptables layout at 10,000 services (TC",
    );
    assert_eq!(
        (missing.met, missing.measured.as_str()),
        (None, "not measured")
    );
    assert_eq!(
        find(
            &v,
            "control: 10,000 services from cold in <= 2 s (manifests)"
        )
        .met,
        Some(true)
    );
    assert_eq!(find(&v, "control: >= 10x").met, Some(false));
    assert_eq!(find(&v, "control: p99").met, Some(true));
    let rss = find(
        &v,
        "control: agent peak RSS <= 150 MiB at 10,000 services (--source",
    );
    assert_eq!((rss.met, rss.measured.as_str()), (Some(false), "200 MiB"));
    assert_eq!(
        find(
            &v,
            "control: agent peak RSS <= 150 MiB at 10,000 services (manifests"
        )
        .met,
        Some(true)
    );
    let md = markdown(&v);
    assert!(
        md.contains(
            "| control: p99 change-to-map <= 10 ms (10,000 services) | 0.20 ms | not counted: no per-round figures in the bench's JSON | met |"
        ),
        "{md}"
    );
    assert!(md.contains("**missed**"));
}

#[test]
fn every_round_is_judged_beside_the_median() {
    // The median (1.35x) meets 1.3x; two of five rounds do not.
    let report = json!({"e2e": {
        "headline": {"cps_ours_over_iptables": 1.35},
        "headline_rounds": {"cps_ours_over_iptables": [1.2, 1.35, 1.4, 1.25, 1.5]},
        "programming": [{"services": 10_000, "ours_ms": 1500.0, "ours_rounds_ms": [1500.0, 2100.0, 1400.0],
                         "iptables_restore_over_ours": 9.4, "agent_peak_rss_kib": 140 * 1024,
                         "agent_peak_rss_rounds_kib": [140 * 1024, 100 * 1024, 151 * 1024]}],
    }, "control": {"sizes": [{"services": 10_000, "p99_ms": 0.5, "p99_rounds_ms": [0.4, 12.0, 0.5]}]}});
    let v = judge(&report);
    let cps = find(
        &v,
        "end to end: new connections/s >= 1.3x the iptables layout at 10,000 services (XDP",
    );
    assert_eq!(cps.met, Some(true));
    assert_eq!(cps.rounds, Rounds::Counted { met: 3, of: 5 });
    let cold = find(
        &v,
        "control: 10,000 services from cold in <= 2 s (manifests)",
    );
    assert_eq!(cold.rounds, Rounds::Counted { met: 2, of: 3 });
    let p99 = find(&v, "control: p99");
    assert_eq!(
        (p99.met, &p99.rounds),
        (Some(true), &Rounds::Counted { met: 2, of: 3 })
    );
    // The peak RSS rounds are KiB, the bound MiB.
    let rss = find(
        &v,
        "control: agent peak RSS <= 150 MiB at 10,000 services (manifests",
    );
    assert_eq!(rss.rounds, Rounds::Counted { met: 2, of: 3 });
    // A figure without rounds says why; the table shows the count.
    let ratio = find(&v, "control: >= 10x");
    assert_eq!(
        ratio.rounds,
        Rounds::NotCounted("e2e.json has no per-round ratios")
    );
    let md = markdown(&v);
    assert!(md.contains("| 1.35x | 3/5 rounds met | met |"), "{md}");
    assert!(md.contains("| not measured |  | not measured |"), "{md}");
}

#[test]
fn a_per_packet_round_is_judged_on_its_worst_configuration() {
    let class = |median: f64, rounds: Value| json!({"non-service": {"vs_parse_only": median, "vs_parse_only_rounds": rounds}});
    // Config a misses 1.2x in round 1, config b in round 3: one round meets it.
    let report = json!({"packet": {"configs": [
        {"services": 1, "backends_per_service": 10, "classes": class(1.1, json!([1.3, 1.1, 1.1]))},
        {"services": 100, "backends_per_service": 10, "classes": class(1.15, json!([1.1, 1.15, 1.25]))},
    ]}});
    let v = find(&judge(&report), "per packet: pass-through").clone();
    assert_eq!(v.met, Some(true));
    assert_eq!(v.rounds, Rounds::Counted { met: 1, of: 3 });
    // From the ns rounds and the configuration's parse-only rounds instead.
    let report = json!({"packet": {"configs": [{"services": 1, "backends_per_service": 10,
        "parse_only_rounds_ns": [100, 100, 50],
        "classes": {"non-service": {"vs_parse_only": 1.1, "rounds_ns": [110, 130, 55]}}}]}});
    let v = find(&judge(&report), "per packet: pass-through").clone();
    assert_eq!(v.rounds, Rounds::Counted { met: 2, of: 3 });
    // Neither: the median alone, said so.
    let v = find(&judge(&self::report()), "per packet: pass-through").clone();
    assert!(
        matches!(v.rounds, Rounds::NotCounted(why) if why.contains("median only")),
        "{v:?}"
    );
}

#[test]
fn flatness_is_judged_per_round_from_the_ns_rounds() {
    let config = |services: u64, rounds: [u64; 3]| {
        json!({"services": services, "backends_per_service": 10, "classes": {
            "reply": {"median_ns": rounds[1], "rounds_ns": rounds}}})
    };
    // Round 2 is 30% off, the others within 10%.
    let report = json!({"packet": {"configs": [
        config(1, [100, 100, 100]),
        config(10_000, [105, 130, 100]),
    ]}});
    let flat = find(&judge(&report), "per packet: flat").clone();
    assert_eq!(flat.met, Some(true), "{flat:?}");
    assert_eq!(flat.rounds, Rounds::Counted { met: 2, of: 3 });
}

#[test]
fn the_noise_floor_is_stated_when_measured() {
    assert_eq!(noise_floor(&json!({})), "");
    let report = json!({"e2e": {"noise_floor": {
        "new connections/s": {"median": 0.031, "max": 0.08, "rounds": [0.01, 0.031, 0.08]},
        "kept-alive requests/s": {"median": 0.012, "max": 0.02, "rounds": [0.012, 0.02, 0.0]},
    }}});
    let text = noise_floor(&report);
    assert!(
        text.contains(
            "new connections/s 3.1% (largest 8.0%, 3 pairs) and kept-alive requests/s 1.2%"
        ),
        "{text}"
    );
}

#[test]
fn working_set_targets_are_judged_per_round_against_the_floor() {
    let series = |medians: [u64; 3], vs_floor: f64| {
        json!({"vs_floor": vs_floor,
               "rounds": medians.iter().map(|m| json!({"median_ns": m})).collect::<Vec<_>>()})
    };
    let report = |live: u64| {
        json!({"packet": {"working_set": {
        "services": 10_000, "tracked_flows": 150_000,
        "conntrack_capacity": 1000, "conntrack_live_before": live, "conntrack_live_after": 1000,
        "series": {
            "bare XDP_PASS (floor)": series([50, 50, 100], 1.0),
            "new TCP flow": series([150, 250, 300], 3.0),
            "established TCP": series([80, 100, 150], 1.6),
            "non-service": series([60, 50, 100], 1.0),
        }}}})
    };
    let v = judge(&report(950));
    let new = find(&v, "per packet, working set: new flow");
    assert_eq!(new.met, Some(true), "{new:?}");
    assert_eq!(
        new.measured,
        "3.00x (150000 flows, 10000 services, conntrack 95% full)"
    );
    // 3x, 5x and 3x the floor of their own round.
    assert_eq!(new.rounds, Rounds::Counted { met: 2, of: 3 });
    let est = find(&v, "per packet, working set: established");
    assert_eq!(est.rounds, Rounds::Counted { met: 2, of: 3 });
    let pass = find(&v, "per packet, working set: pass-through");
    assert_eq!(pass.rounds, Rounds::Counted { met: 2, of: 3 });
    // Conntrack not full: not the steady state the targets name.
    let v = judge(&report(500));
    assert_eq!(find(&v, "per packet, working set: new flow").met, None);
}

#[test]
fn the_burst_and_the_agents_own_memory_are_judged_from_the_control_row() {
    let report = json!({"control": {"sizes": [{"services": 10_000, "p99_ms": 0.5,
        "agent_peak_rss_kib": 200 * 1024, "agent_own_peak_kib": 120 * 1024,
        "agent_own_peak_rounds_kib": [120 * 1024, 160 * 1024], "maps_memlock_bytes": 90u64 << 20,
        "burst": {"p99_ms": 12.5, "drain_ms": 40.0, "p99_rounds_ms": [8.0, 12.5]}}]}});
    let v = control::verdicts(&report);
    let judged = judge(&report);
    let control_lines: Vec<_> = judged
        .iter()
        .filter(|v| v.target.starts_with("control:"))
        .collect();
    assert_eq!(
        v.len(),
        control_lines.len(),
        "every control line comes from control.rs"
    );
    let burst = find(&v, "control: p99 change-to-map <= 10 ms during a burst");
    assert_eq!(
        (burst.met, burst.measured.as_str()),
        (
            Some(false),
            "12.50 ms (drained 40 ms after the last update)"
        )
    );
    assert_eq!(burst.rounds, Rounds::Counted { met: 1, of: 2 });
    let own = find(&v, "control: agent peak RSS without BPF maps and slab");
    assert_eq!(
        (own.met, own.measured.as_str()),
        (Some(true), "120 MiB (maps 90 MiB, sum 210 MiB)")
    );
    assert_eq!(own.rounds, Rounds::Counted { met: 1, of: 2 });
    // Own memory and maps share the container's memory limit (read from
    // deploy/daemonset.yaml): 210 and 250 MiB per round.
    let limit = control::daemonset_memory_limit_mib();
    assert!(limit >= 64.0, "{limit}");
    let fits = find(
        &v,
        "control: agent RSS plus BPF maps <= the DaemonSet's memory limit",
    );
    assert_eq!(
        fits.measured,
        format!("210 MiB (own 120 + maps 90) of {limit:.0} MiB")
    );
    assert_eq!(fits.met, Some(210.0 <= limit));
    let rounds_met = usize::from(210.0 <= limit) + usize::from(250.0 <= limit);
    assert_eq!(
        fits.rounds,
        Rounds::Counted {
            met: rounds_met,
            of: 2
        }
    );
    // Under the limit the bench passes; over it, the bench fails.
    assert_eq!(
        failed_gates(&judged).is_empty(),
        fits.met == Some(true),
        "the fit is a gate"
    );
    let over = json!({"control": {"sizes": [{"services": 10_000, "p99_ms": 0.5,
        "agent_own_peak_kib": 300 * 1024, "agent_own_peak_rounds_kib": [300 * 1024],
        "maps_memlock_bytes": 4u64 << 30}]}});
    let over = judge(&over);
    let failed = failed_gates(&over);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].target, control::FITS_THE_DAEMONSET);
    // The whole resident set (the mmapped slab in it) misses.
    let whole = find(
        &v,
        "control: agent peak RSS <= 150 MiB at 10,000 services (--source",
    );
    assert_eq!(whole.met, Some(false));
    // Without a burst in the JSON: not measured.
    let report = json!({"control": {"sizes": [{"services": 10_000, "p99_ms": 0.5}]}});
    let burst = find(
        &judge(&report),
        "control: p99 change-to-map <= 10 ms during",
    )
    .clone();
    assert_eq!(burst.met, None);
}

#[test]
fn issue_15s_scale_is_judged_from_the_100000_row() {
    let report = json!({"control": {"sizes": [{"services": 10_000, "cold_start_ms": 900.0},
        {"services": 100_000, "cold_start_ms": 14_500.0,
         "cold_start_rounds_ms": [9_800.0, 14_500.0, 16_000.0],
         "agent_own_peak_kib": 580 * 1024, "agent_own_peak_rounds_kib": [580 * 1024, 610 * 1024],
         "maps_memlock_bytes": 900u64 << 20,
         "burst": {"p99_ms": 9.0, "drain_ms": 30.0, "p99_rounds_ms": [9.0, 11.0, 8.0]}}]}});
    let v = control::verdicts(&report);
    let cold = find(
        &v,
        "control: 100,000 services (1,000,000 endpoints) from cold",
    );
    assert_eq!(
        (cold.met, cold.measured.as_str()),
        (Some(false), "14500 ms")
    );
    assert_eq!(cold.rounds, Rounds::Counted { met: 1, of: 3 });
    let burst = find(&v, "control: 100,000 services: p99 change-to-map");
    assert_eq!(burst.met, Some(true));
    assert_eq!(burst.rounds, Rounds::Counted { met: 2, of: 3 });
    let own = find(&v, "control: 100,000 services: agent peak RSS without");
    assert_eq!(
        (own.met, own.measured.as_str()),
        (Some(true), "580 MiB (maps 900 MiB, sum 1480 MiB)")
    );
    assert_eq!(own.rounds, Rounds::Counted { met: 1, of: 2 });
    // The 10,000 row is not taken for the 100,000 one.
    assert_eq!(
        find(
            &v,
            "control: 10,000 services from cold in <= 2 s (--source kube)"
        )
        .met,
        Some(true)
    );
}

#[test]
fn a_run_without_the_100000_size_leaves_its_targets_unmeasured() {
    // The quick run stops at 10,000 Services.
    let report = json!({"control": {"sizes": [{"services": 10_000, "cold_start_ms": 900.0,
        "burst": {"p99_ms": 9.0}}]}});
    for v in control::verdicts(&report)
        .iter()
        .filter(|v| v.target.starts_with("control: 100,000"))
    {
        assert_eq!(
            (v.met, v.measured.as_str()),
            (None, "not measured"),
            "{}",
            v.target
        );
    }
    assert_eq!(
        control::verdicts(&report)
            .iter()
            .filter(|v| v.target.starts_with("control: 100,000"))
            .count(),
        3
    );
}

#[test]
fn ipv4_before_after_is_judged_per_case_against_its_own_noise() {
    let case = |judged: bool, after: u64| {
        // Before pairs 100/102 ns: a noise of 2%.
        json!({"judged": judged,
               "before_a_ns": [100, 100, 100], "after_a_ns": [after, after, 101],
               "after_b_ns": [after, after, 101], "before_b_ns": [102, 102, 102]})
    };
    let report = |established: u64, parse: u64| {
        json!({"packet": {"ipv4_before_after": {"baseline_commit": "786b1d9e08df",
            "cases": {"established TCP": case(true, established),
                      "non-service": case(true, 101),
                      "parse-only (xdp_parse)": case(false, parse)}}}})
    };
    // Unchanged: met, every round.
    let v = find(&judge(&report(101, 101)), IPV4_UNCHANGED).clone();
    assert_eq!(v.met, Some(true), "{v:?}");
    assert_eq!(v.rounds, Rounds::Counted { met: 3, of: 3 });
    assert!(
        v.measured.contains("established TCP 1.000x (noise ±2.0%)"),
        "{}",
        v.measured
    );
    assert!(v.measured.contains("(before: 786b1d9)"), "{}", v.measured);
    // 6% slower in two rounds of three: missed, one round met.
    let v = find(&judge(&report(107, 101)), IPV4_UNCHANGED).clone();
    assert_eq!(v.met, Some(false), "{v:?}");
    assert_eq!(v.rounds, Rounds::Counted { met: 1, of: 3 });
    // A case not judged (the parse-only check) decides nothing.
    let v = find(&judge(&report(101, 150)), IPV4_UNCHANGED).clone();
    assert_eq!(v.met, Some(true), "{v:?}");
    assert!(!v.measured.contains("parse-only"), "{}", v.measured);
    // Without the comparison: not measured.
    let v = find(&judge(&json!({})), IPV4_UNCHANGED).clone();
    assert_eq!(v.met, None);
}
