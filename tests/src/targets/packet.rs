//! The per-packet targets: the ratios to the parse-only baseline and the
//! flatness over the number of Services, with their per-round figures.

use serde_json::Value;

use super::{numbers, Figure};

/// Why a per-packet ratio target is judged on the medians alone.
const NO_RATIO_ROUNDS: &str = "packet.json has no per-round ratios (median only)";

/// The per-round ratios of `class` to parse-only in one configuration:
/// `vs_parse_only_rounds` of the class, else its `rounds_ns` over the
/// configuration's `parse_only_rounds_ns`.
fn round_ratios(config: &Value, class: &str) -> Option<Vec<f64>> {
    let figures = &config["classes"][class];
    if let Some(r) = numbers(&figures["vs_parse_only_rounds"]) {
        return Some(r);
    }
    let ns = numbers(&figures["rounds_ns"])?;
    let parse = numbers(&config["parse_only_rounds_ns"])?;
    Some(ns.iter().zip(&parse).map(|(a, b)| a / b.max(1.0)).collect())
}

/// The largest value of each round over `series` (rounds paired by index,
/// as many as the shortest has).
fn worst_per_round(series: &[Vec<f64>]) -> Vec<f64> {
    let n = series.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .map(|r| {
            series
                .iter()
                .map(|s| s[r])
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect()
}

/// The worst (largest) per-packet ratio of `class` over the
/// configurations, as "a-b x"; a round's figure is its worst configuration.
pub(super) fn worst_ratio(report: &Value, class: &str) -> Option<Figure> {
    let configs: Vec<&Value> = report["packet"]["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["classes"][class]["vs_parse_only"].is_f64())
        .collect();
    let ratios: Vec<f64> = configs
        .iter()
        .filter_map(|c| c["classes"][class]["vs_parse_only"].as_f64())
        .collect();
    let worst = ratios.iter().copied().reduce(f64::max)?;
    let best = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let rounds: Option<Vec<Vec<f64>>> = configs.iter().map(|c| round_ratios(c, class)).collect();
    Some(Figure {
        value: worst,
        text: format!(
            "{best:.2}x-{worst:.2}x over {} configurations",
            ratios.len()
        ),
        rounds: rounds.map(|r| worst_per_round(&r)).ok_or(NO_RATIO_ROUNDS),
    })
}

/// The largest change of any class's ns/packet from 1 service to 100 or
/// 10,000 (10 backends each): the median of the per-round ratios where the
/// report has the rounds (each round measures every configuration), else the
/// ratio of the medians. A round's figure is its largest change.
pub(super) fn flatness(report: &Value) -> Option<Figure> {
    let configs = report["packet"]["configs"].as_array()?;
    let with_ten = |c: &&Value| c["backends_per_service"].as_u64() == Some(10);
    let one = configs
        .iter()
        .filter(with_ten)
        .find(|c| c["services"].as_u64() == Some(1))?;
    let rounds = |figures: &Value| -> Option<Vec<u64>> {
        figures["rounds_ns"]
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect()
    };
    let mut worst: Option<(f64, String)> = None;
    // Each (size, class)'s change in every round, or None once one lacks rounds.
    let mut per_round: Option<Vec<Vec<f64>>> = Some(Vec::new());
    for many in configs.iter().filter(with_ten) {
        let services = many["services"].as_u64().unwrap_or(1);
        if services == 1 {
            continue;
        }
        for (class, figures) in one["classes"].as_object()? {
            let other = &many["classes"][class];
            let (Some(a), Some(b)) = (figures["median_ns"].as_f64(), other["median_ns"].as_f64())
            else {
                continue;
            };
            let paired = rounds(figures).zip(rounds(other));
            let ratio = paired
                .as_ref()
                .and_then(|(ra, rb)| crate::stats::paired_ratio(rb, ra).map(|(r, _, _)| r))
                .unwrap_or(b / a.max(1.0));
            per_round = match (per_round, paired) {
                (Some(mut all), Some((ra, rb))) => {
                    all.push(
                        ra.iter()
                            .zip(&rb)
                            .map(|(&x, &y)| (crate::stats::ratio(y, x) - 1.0).abs())
                            .collect(),
                    );
                    Some(all)
                }
                _ => None,
            };
            let change = (ratio - 1.0).abs();
            if worst.as_ref().is_none_or(|(w, _)| change > *w) {
                worst = Some((
                    change,
                    format!(
                        "{:.0}% ({class} at {services} services: {a:.0} -> {b:.0} ns)",
                        change * 100.0
                    ),
                ));
            }
        }
    }
    let (value, text) = worst?;
    Some(Figure {
        value,
        text,
        rounds: per_round
            .map(|r| worst_per_round(&r))
            .ok_or("packet.json has no per-round figures (median only)"),
    })
}

/// Conntrack fill below which a working-set figure is not the steady state
/// the targets name (at least 90% full).
const MIN_CONNTRACK_FILL: f64 = 0.9;

/// The working set's ratio of `series` to the bare floor (medians of the
/// per-round ratios of round medians), with each round's own ratio; the
/// text names the flows and the conntrack fill it was measured at. `None`
/// when the report has no working set, or conntrack was not full enough
/// for the figure to be the steady state.
pub(super) fn working_set_ratio(report: &Value, series: &str) -> Option<Figure> {
    let ws = &report["packet"]["working_set"];
    let row = &ws["series"][series];
    let floor = &ws["series"]["bare XDP_PASS (floor)"];
    let value = row["vs_floor"].as_f64()?;
    let medians = |s: &Value| -> Option<Vec<f64>> {
        s["rounds"]
            .as_array()?
            .iter()
            .map(|r| r["median_ns"].as_f64())
            .collect()
    };
    let rounds = medians(row)
        .zip(medians(floor))
        .map(|(a, f)| a.iter().zip(&f).map(|(x, y)| x / y.max(1.0)).collect())
        .ok_or("packet.json's working set has no per-round medians");
    let capacity = ws["conntrack_capacity"].as_f64()?;
    let live = ws["conntrack_live_before"]
        .as_f64()?
        .min(ws["conntrack_live_after"].as_f64()?);
    let fill = live / capacity.max(1.0);
    if fill < MIN_CONNTRACK_FILL {
        return None;
    }
    let tracked = ws["tracked_flows"].as_u64()?;
    let services = ws["services"].as_u64()?;
    Some(Figure {
        value,
        text: format!(
            "{value:.2}x ({tracked} flows, {services} services, conntrack {:.0}% full)",
            fill * 100.0
        ),
        rounds,
    })
}

/// IPv6's cost over IPv4's for one hot flow (measures `six` and `four`
/// of the report's `ipv6` part, measured in the same rounds): the median
/// of the per-round ratios, with each round's.
pub(super) fn ipv6_over_ipv4(report: &Value, six: &str, four: &str) -> Option<Figure> {
    let measures = &report["packet"]["ipv6"]["measures"];
    let a = numbers(&measures[six]["rounds_ns"])?;
    let b = numbers(&measures[four]["rounds_ns"])?;
    let mut rounds: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y.max(1.0)).collect();
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    let value = *sorted.get(sorted.len() / 2)?;
    rounds.truncate(a.len().min(b.len()));
    Some(Figure {
        value,
        text: format!("{value:.2}x ({:.2}-{:.2})", sorted.first()?, sorted.last()?),
        rounds: Ok(rounds),
    })
}

/// IPv4 before and after the IPv6 data path (the report's
/// `ipv4_before_after`): for each judged case, how far its after/before
/// lies from 1 beyond its noise (zero or less: within); the figure is the
/// worst case's, and a round's figure the worst case's in that round
/// (against the same noise).
pub(super) fn ipv4_before_after(report: &Value) -> Option<Figure> {
    let part = &report["packet"]["ipv4_before_after"];
    let cases = part["cases"].as_object()?;
    let ns = |case: &Value, key: &str| -> Option<Vec<u64>> {
        case[key].as_array()?.iter().map(Value::as_u64).collect()
    };
    let mut worst: Option<f64> = None;
    let mut texts = Vec::new();
    let mut per_round: Vec<Vec<f64>> = Vec::new();
    for (name, case) in cases {
        if case["judged"].as_bool() != Some(true) {
            continue;
        }
        let rounds = crate::before_after::CaseRounds {
            before_a: ns(case, "before_a_ns")?,
            after_a: ns(case, "after_a_ns")?,
            after_b: ns(case, "after_b_ns")?,
            before_b: ns(case, "before_b_ns")?,
        };
        let c = crate::before_after::compare(&rounds)?;
        let excess = c.excess(c.ratio);
        worst = Some(worst.map_or(excess, |w: f64| w.max(excess)));
        texts.push(format!(
            "{name} {:.3}x (noise ±{:.1}%)",
            c.ratio,
            c.noise * 100.0
        ));
        per_round.push(c.round_ratios.iter().map(|&r| c.excess(r)).collect());
    }
    let baseline = part["baseline_commit"].as_str().unwrap_or("unknown");
    Some(Figure {
        value: worst?,
        text: format!(
            "{} (before: {})",
            texts.join(", "),
            baseline.get(..7).unwrap_or(baseline)
        ),
        rounds: Ok(worst_per_round(&per_round)),
    })
}
