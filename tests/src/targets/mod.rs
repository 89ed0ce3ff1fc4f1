//! The targets of issues 4 and 15, judged from one benchmark run's report (the JSON that
//! `cargo xtask bench` writes): each target with the figure measured, whether
//! it is met, and in how many of the run's rounds it was met.
//!
//! A target is met when its figure is: the median of the rounds (for a
//! per-packet target the worst configuration's median; for peak RSS the
//! highest round). The round count judges each round's own figure against
//! the same bound and is shown beside the verdict, so a median that hides
//! failed rounds is visible.

mod control;
mod e2e;
mod packet;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use serde_json::Value;

/// How many of a run's rounds met a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rounds {
    /// `met` of `of` rounds met it, each judged on its own figure.
    Counted {
        /// Rounds whose figure meets the target.
        met: usize,
        /// Rounds judged.
        of: usize,
    },
    /// The bench gives no per-round figure for this target: why.
    NotCounted(&'static str),
}

/// One target and where this run stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The target, as the issue states it.
    pub target: &'static str,
    /// The figure measured (with its unit), or why there is none.
    pub measured: String,
    /// Met, missed, or not measured in this run.
    pub met: Option<bool>,
    /// The rounds that met it.
    pub rounds: Rounds,
}

/// Which way a figure must lie from its bound.
#[derive(Clone, Copy)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

impl Bound {
    fn holds(self, x: f64) -> bool {
        match self {
            Bound::AtMost(b) => x <= b,
            Bound::AtLeast(b) => x >= b,
        }
    }
}

/// A figure judged: its value, as text, and its value in each round (or
/// why the bench has none).
struct Figure {
    value: f64,
    text: String,
    rounds: Result<Vec<f64>, &'static str>,
}

fn verdict(target: &'static str, figure: Option<Figure>, bound: Bound) -> Verdict {
    match figure {
        Some(f) => Verdict {
            target,
            measured: f.text,
            met: Some(bound.holds(f.value)),
            rounds: match f.rounds {
                Ok(r) if !r.is_empty() => Rounds::Counted {
                    met: r.iter().filter(|&&x| bound.holds(x)).count(),
                    of: r.len(),
                },
                Ok(_) => Rounds::NotCounted("no rounds"),
                Err(why) => Rounds::NotCounted(why),
            },
        },
        None => Verdict {
            target,
            measured: "not measured".into(),
            met: None,
            rounds: Rounds::NotCounted("not measured"),
        },
    }
}

/// The numbers of a JSON array, or `None` when it is absent or not all numbers.
fn numbers(v: &Value) -> Option<Vec<f64>> {
    v.as_array()?.iter().map(Value::as_f64).collect()
}

/// The per-round values at `key` of `row`, or `why` there are none.
fn rounds_at(row: &Value, key: &str, why: &'static str) -> Result<Vec<f64>, &'static str> {
    numbers(&row[key]).ok_or(why)
}

fn headline(report: &Value, key: &str) -> Option<Figure> {
    let x = report["e2e"]["headline"][key].as_f64()?;
    Some(Figure {
        value: x,
        text: format!("{x:.2}x"),
        rounds: rounds_at(
            &report["e2e"]["headline_rounds"],
            key,
            "e2e.json has no per-round ratios",
        ),
    })
}

/// Issue 16's IPv4 figure: the kernel object before the IPv6 data path
/// beside the current one, judged per case against the spread of two
/// measurements of one object in one round (see `crate::before_after`).
pub const IPV4_UNCHANGED: &str =
    "per packet: IPv4 unchanged by IPv6 (after/before within noise; issue 16)";

/// The targets whose miss fails the bench, not only the report: the
/// `DaemonSet`'s memory limit must hold what the agent and its maps measure,
/// or the agent would be killed in a loop at that size.
pub const GATES: [&str; 1] = [control::FITS_THE_DAEMONSET];

/// The verdicts of [`GATES`] that this run missed.
#[must_use]
pub fn failed_gates(verdicts: &[Verdict]) -> Vec<&Verdict> {
    verdicts
        .iter()
        .filter(|v| GATES.contains(&v.target) && v.met == Some(false))
        .collect()
}

/// Judges every target of issues 4, 15 and 16 against `report` (`{"packet", "e2e", "control"}`).
#[must_use]
pub fn judge(report: &Value) -> Vec<Verdict> {
    let mut verdicts = vec![
        verdict(
            "per packet: established flow <= 2.5x parse-only",
            packet::worst_ratio(report, "established TCP"),
            Bound::AtMost(2.5),
        ),
        verdict(
            "per packet: new flow <= 5x parse-only",
            packet::worst_ratio(report, "new TCP flow"),
            Bound::AtMost(5.0),
        ),
        verdict(
            "per packet: pass-through <= 1.2x parse-only",
            packet::worst_ratio(report, "non-service"),
            Bound::AtMost(1.2),
        ),
        verdict(
            "per packet: flat from 1 to 10,000 services (within 10%)",
            packet::flatness(report),
            Bound::AtMost(0.10),
        ),
        verdict(
            "end to end: kept-alive requests/s >= 0.9x direct (XDP uplink)",
            headline(report, "rps_ours_over_direct"),
            Bound::AtLeast(0.9),
        ),
        verdict(
            "end to end: kept-alive requests/s >= 0.9x direct (TC uplink)",
            headline(report, "rps_ours_over_direct_tc"),
            Bound::AtLeast(0.9),
        ),
        verdict(
            "end to end: new connections/s >= 1.3x the iptables layout at 10,000 services (XDP uplink)",
            headline(report, "cps_ours_over_iptables"),
            Bound::AtLeast(1.3),
        ),
        verdict(
            "end to end: new connections/s >= 1.3x the iptables layout at 10,000 services (TC uplink)",
            headline(report, "cps_ours_over_iptables_tc"),
            Bound::AtLeast(1.3),
        ),
    ];
    verdicts.push(verdict(
        "per packet: IPv6 established <= 1.3x IPv4 established (issue 16)",
        packet::ipv6_over_ipv4(report, "IPv6 established", "IPv4 established"),
        Bound::AtMost(1.3),
    ));
    verdicts.push(verdict(
        IPV4_UNCHANGED,
        packet::ipv4_before_after(report),
        Bound::AtMost(0.0),
    ));
    verdicts.extend(working_set_verdicts(report));
    verdicts.extend(control::verdicts(report));
    verdicts.extend(e2e::verdicts(report));
    verdicts
}

/// Issue 15's per-packet targets over the working set, against the floor.
fn working_set_verdicts(report: &Value) -> Vec<Verdict> {
    vec![
        verdict(
            "per packet, working set: new flow <= 4x the bare floor",
            packet::working_set_ratio(report, "new TCP flow"),
            Bound::AtMost(4.0),
        ),
        verdict(
            "per packet, working set: established flow <= 1.8x the bare floor",
            packet::working_set_ratio(report, "established TCP"),
            Bound::AtMost(1.8),
        ),
        verdict(
            "per packet, working set: pass-through <= 1.1x the bare floor",
            packet::working_set_ratio(report, "non-service"),
            Bound::AtMost(1.1),
        ),
    ]
}

/// The verdicts as a markdown table.
#[must_use]
pub fn markdown(verdicts: &[Verdict]) -> String {
    let mut md = String::from("| target | this run | rounds met | |\n|---|---|---|---|\n");
    for v in verdicts {
        let status = match v.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let rounds = match &v.rounds {
            Rounds::Counted { met, of } => format!("{met}/{of} rounds met"),
            Rounds::NotCounted("not measured") => String::new(),
            Rounds::NotCounted(why) => format!("not counted: {why}"),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {rounds} | {status} |",
            v.target, v.measured
        );
    }
    md
}

/// The noise floor as a sentence: the spread between two measurements of
/// one configuration (the end-to-end bench measures direct twice a round),
/// or an empty string when the report has none.
#[must_use]
pub fn noise_floor(report: &Value) -> String {
    let floor = &report["e2e"]["noise_floor"];
    let mut parts = Vec::new();
    for (key, what) in [
        ("new connections/s", "new connections/s"),
        ("kept-alive requests/s", "kept-alive requests/s"),
    ] {
        let f = &floor[key];
        let (Some(median), Some(max), Some(pairs)) = (
            f["median"].as_f64(),
            f["max"].as_f64(),
            f["rounds"].as_array().map(Vec::len),
        ) else {
            continue;
        };
        parts.push(format!(
            "{what} {:.1}% (largest {:.1}%, {pairs} pairs)",
            median * 100.0,
            max * 100.0
        ));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!(
        "**Noise floor.** The end-to-end bench measures the direct configuration twice in every \
         round (at different places in the rotated order); the two differ by a median of {}. \
         An end-to-end ratio nearer its bound than this is within the noise of the machine.\n",
        parts.join(" and ")
    )
}
