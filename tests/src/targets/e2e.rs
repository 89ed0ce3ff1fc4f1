//! The end-to-end CPU target: host CPU per kept-alive request at a fixed
//! offered rate, our modes over direct in the same round, at 10,000
//! Services. A round that fell short of the offered rate, or where the host
//! was saturated (either mode), does not meet the target: its host CPU
//! figure is not that of the offered rate, or not that of this load.

use serde_json::Value;

use super::{numbers, verdict, Bound, Figure, Verdict};

/// The ratio of `mode` at 10,000 Services: the median of the rounds not
/// flagged (the bench's median when it gives no rounds), each flagged round
/// as infinity (never within a bound); `None` (not measured) when every
/// round is flagged.
fn cpu_over_direct(report: &Value, mode: &str) -> Option<Figure> {
    let r = &report["e2e"]["fixed_rate"]["cpu_over_direct"]["kept_alive"]["10000"][mode];
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

/// The end-to-end CPU verdicts, one per uplink hook.
pub(super) fn verdicts(report: &Value) -> Vec<Verdict> {
    vec![
        verdict(
            "end to end: node CPU per kept-alive request <= 1.1x direct (XDP uplink)",
            cpu_over_direct(report, "ours"),
            Bound::AtMost(1.1),
        ),
        verdict(
            "end to end: node CPU per kept-alive request <= 1.1x direct (TC uplink)",
            cpu_over_direct(report, "ours_tc"),
            Bound::AtMost(1.1),
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
        assert_eq!(v.len(), 2);
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
