//! The end-to-end CPU targets: host CPU per kept-alive request at a fixed
//! offered rate, our modes over a baseline in the same round, at 10,000
//! Services: to node1's pods over direct; to a pod on node2 (node1
//! forwards the flow both ways) over direct routing and over the iptables
//! layout. A round that fell short of the offered rate, or where the host
//! was saturated (either mode), does not meet the target: its host CPU
//! figure is not that of the offered rate, or not that of this load.

use serde_json::Value;

use super::{numbers, verdict, Bound, Figure, Verdict};

/// The ratio `over` (`cpu_over_direct`, `cpu_over_iptables`) of the
/// windows `kind` (`kept_alive`, `kept_alive_remote`) of `mode` at 10,000
/// Services: the median of the rounds not flagged (the bench's median when
/// it gives no rounds), each flagged round as infinity (never within a
/// bound); `None` (not measured) when every round is flagged.
fn cpu_ratio(report: &Value, over: &str, kind: &str, mode: &str) -> Option<Figure> {
    let r = &report["e2e"]["fixed_rate"][over][kind]["10000"][mode];
    let mut median = r["median"].as_f64()?;
    let rounds = numbers(&r["rounds"]).unwrap_or_default();
    let flags = |key: &str| -> Vec<bool> {
        r[key]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_bool().unwrap_or(true)).collect())
            .unwrap_or_default()
    };
    let saturated = flags("saturated");
    let short: Vec<bool> = flags("short")
        .iter()
        .zip(saturated.iter().chain(std::iter::repeat(&false)))
        .map(|(a, b)| *a || *b)
        .collect();
    let n_short = short.iter().filter(|&&s| s).count();
    let judged: Vec<f64> = rounds
        .iter()
        .zip(short.iter().chain(std::iter::repeat(&false)))
        .map(|(&x, &s)| if s { f64::INFINITY } else { x })
        .collect();
    let mut kept: Vec<f64> = judged.iter().copied().filter(|x| x.is_finite()).collect();
    if !judged.is_empty() {
        kept.sort_by(f64::total_cmp);
        median = *kept.get(kept.len() / 2)?;
    }
    let text = if n_short > 0 {
        format!(
            "{median:.2}x over {} round(s) ({n_short} short of the offered rate or host saturated)",
            kept.len()
        )
    } else {
        format!("{median:.2}x")
    };
    Some(Figure {
        value: median,
        text,
        rounds: if judged.is_empty() {
            Err("e2e.json has no per-round ratios")
        } else {
            Ok(judged)
        },
    })
}

/// The end-to-end CPU verdicts, each per uplink hook.
pub(super) fn verdicts(report: &Value) -> Vec<Verdict> {
    let direct = "cpu_over_direct";
    let iptables = "cpu_over_iptables";
    let (local, remote) = ("kept_alive", "kept_alive_remote");
    vec![
        verdict(
            "end to end: node CPU per kept-alive request <= 1.1x direct (XDP uplink)",
            cpu_ratio(report, direct, local, "ours"),
            Bound::AtMost(1.1),
        ),
        verdict(
            "end to end: node CPU per kept-alive request <= 1.1x direct (TC uplink)",
            cpu_ratio(report, direct, local, "ours_tc"),
            Bound::AtMost(1.1),
        ),
        verdict(
            "end to end: node CPU per forwarded request <= 0.5x the iptables layout (XDP uplink)",
            cpu_ratio(report, iptables, remote, "ours"),
            Bound::AtMost(0.5),
        ),
        verdict(
            "end to end: node CPU per forwarded request <= 0.5x the iptables layout (TC uplink)",
            cpu_ratio(report, iptables, remote, "ours_tc"),
            Bound::AtMost(0.5),
        ),
        verdict(
            "end to end: node CPU per forwarded request <= 1.0x direct routing (XDP uplink)",
            cpu_ratio(report, direct, remote, "ours"),
            Bound::AtMost(1.0),
        ),
        verdict(
            "end to end: node CPU per forwarded request <= 1.0x direct routing (TC uplink)",
            cpu_ratio(report, direct, remote, "ours_tc"),
            Bound::AtMost(1.0),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::Rounds;
    use super::*;

    fn report(ours: &Value) -> Value {
        json!({"e2e": {"fixed_rate": {"cpu_over_direct": {"kept_alive": {"10000": {
            "ours": ours,
            "ours_tc": {"median": 1.2, "low": 1.15, "high": 1.3,
                        "rounds": [1.15, 1.2, 1.3], "short": [false, false, false],
                        "saturated": [false, true, false]},
        }}}}}})
    }

    #[test]
    fn each_round_is_judged_and_flagged_rounds_never_meet() {
        let v = verdicts(&report(&json!({"median": 1.05, "low": 1.0, "high": 1.5,
            "rounds": [1.0, 1.5, 1.05], "short": [false, true, false],
            "saturated": [false, false, false]})));
        assert_eq!(v.len(), 6);
        assert!(v[0].target.contains("XDP uplink"));
        assert_eq!(v[0].met, Some(true), "1.0x and 1.05x: median 1.05x");
        assert_eq!(
            v[0].measured,
            "1.05x over 2 round(s) (1 short of the offered rate or host saturated)"
        );
        assert_eq!(v[0].rounds, Rounds::Counted { met: 2, of: 3 });
        assert_eq!(v[1].met, Some(false), "1.15x and 1.3x miss 1.1x");
        assert_eq!(
            v[1].measured,
            "1.30x over 2 round(s) (1 short of the offered rate or host saturated)"
        );
        assert_eq!(v[1].rounds, Rounds::Counted { met: 0, of: 3 });
    }

    #[test]
    fn a_target_with_every_round_flagged_is_not_measured() {
        let v = verdicts(&report(&json!({"median": 0.99, "low": 0.99, "high": 0.99,
            "rounds": [0.99], "short": [false], "saturated": [true]})));
        assert_eq!(v[0].met, None, "a saturated host measures nothing");
    }

    /// A report with forwarded-request ratios: over iptables and over direct.
    fn forwarded(over_iptables: &Value, over_direct: &Value) -> Value {
        json!({"e2e": {"fixed_rate": {
            "cpu_over_iptables": {"kept_alive_remote": {"10000": {
                "ours": over_iptables, "ours_tc": over_iptables}}},
            "cpu_over_direct": {"kept_alive_remote": {"10000": {
                "ours": over_direct, "ours_tc": {"median": 1.2}}}},
        }}})
    }

    #[test]
    fn forwarded_requests_are_judged_against_iptables_and_direct_routing() {
        let v = verdicts(&forwarded(
            &json!({"median": 0.45, "low": 0.4, "high": 0.9,
                "rounds": [0.4, 0.9, 0.45, 0.3], "short": [false, false, false, true],
                "saturated": [false, false, false, false]}),
            &json!({"median": 0.98, "low": 0.95, "high": 1.01,
                "rounds": [0.95, 1.01, 0.98], "short": [false, false, false],
                "saturated": [false, false, false]}),
        ));
        let find = |start: &str, hook: &str| {
            v.iter()
                .find(|v| v.target.contains(start) && v.target.contains(hook))
                .unwrap()
        };
        let xdp = find("<= 0.5x the iptables layout", "XDP uplink");
        assert_eq!(xdp.met, Some(true), "0.4x, 0.45x and 0.9x: median 0.45x");
        assert_eq!(
            xdp.measured,
            "0.45x over 3 round(s) (1 short of the offered rate or host saturated)"
        );
        assert_eq!(
            xdp.rounds,
            Rounds::Counted { met: 2, of: 4 },
            "the short round never meets, however low"
        );
        assert_eq!(
            find("<= 0.5x the iptables layout", "TC uplink").met,
            Some(true)
        );
        let direct = find("<= 1.0x direct routing", "XDP uplink");
        assert_eq!(direct.met, Some(true), "median 0.98x");
        assert_eq!(direct.rounds, Rounds::Counted { met: 2, of: 3 });
        let tc = find("<= 1.0x direct routing", "TC uplink");
        assert_eq!(tc.met, Some(false), "1.2x, the bench's median: no rounds");
        assert_eq!(
            tc.rounds,
            Rounds::NotCounted("e2e.json has no per-round ratios")
        );
        let local = find("kept-alive request <= 1.1x direct", "XDP uplink");
        assert_eq!(local.met, None, "the local windows are not in this report");
    }

    #[test]
    fn missing_figures_are_not_measured() {
        let v = verdicts(&json!({"e2e": {}}));
        assert!(v.iter().all(|v| v.met.is_none()));
        let no_rounds = verdicts(&report(&json!({"median": 0.9})));
        assert_eq!(no_rounds[0].met, Some(true));
        assert_eq!(
            no_rounds[0].rounds,
            Rounds::NotCounted("e2e.json has no per-round ratios")
        );
    }
}
