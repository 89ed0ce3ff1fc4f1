//! The tables' columns, the intro, the headline ratios and the noise floor.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use lb_tests::stats::{figure, paired_ratio, ratio, spread, Figure};

use crate::{
    modes::{Mode, Sample},
    CONCURRENCY,
};

pub(crate) type Column = (&'static str, fn(&Sample) -> u64);

pub(crate) const COLUMNS: [Column; 7] = [
    ("new connections/s", |s| s.conn_per_s),
    ("new conn p50 (us)", |s| s.conn_p50_us),
    ("new conn p99 (us)", |s| s.conn_p99_us),
    ("kept-alive requests/s", |s| s.req_per_s),
    ("request p50 (us)", |s| s.req_p50_us),
    ("request p99 (us)", |s| s.req_p99_us),
    ("bulk TCP (Mbit/s)", |s| s.bulk_mbit_s),
];

pub(crate) fn summarize(samples: &[Sample]) -> Vec<Figure> {
    COLUMNS
        .iter()
        .map(|(_, get)| figure(&samples.iter().map(get).collect::<Vec<_>>()))
        .collect()
}

/// What the end-to-end tables show, for the report.
pub(crate) fn intro(rounds: usize, duration: Duration) -> String {
    format!(
        "End to end in the namespace topology: a client outside the cluster, node1 forwarding to \
         three pods; {CONCURRENCY} concurrent clients for {} s per figure, {rounds} round(s), \
         modes in rotating order, a fresh topology for every measurement. Direct spreads over the \
         same three pods as the balancers (its kept-alive clients and new connections shared out \
         among the pod addresses in turn), so the pods do the same work in every mode; bulk TCP \
         goes to one pod in every mode. The kube-proxy layouts carry its filter-table chains \
         too (KUBE-FORWARD, KUBE-PROXY-FIREWALL, KUBE-SERVICES and the others in iptables mode; \
         filter-* base chains and their checks in nftables mode). \
         The measured Service \
         sits in the middle of the programmed ones (kube-proxy's KUBE-SERVICES chain is walked \
         half way for each new connection). Median of rounds (spread: lowest-highest round); \
         the headline ratios pair the two modes of each round. Direct is measured twice a round, half \
         a round apart (\"direct again\"): their difference is the noise floor.\n\n",
        duration.as_secs()
    )
}

/// The headline ratios, each the median of its per-round ratios (the two
/// modes measured in the same round, close in time): JSON, the per-round
/// ratios (JSON) and a summary.
pub(crate) fn headline(
    per_round: &BTreeMap<(u32, Mode), Vec<Sample>>,
) -> (
    serde_json::Map<String, serde_json::Value>,
    serde_json::Map<String, serde_json::Value>,
    String,
) {
    let get = |total, mode, column: usize| {
        per_round
            .get(&(total, mode))
            .map(|s| s.iter().map(COLUMNS[column].1).collect::<Vec<u64>>())
    };
    let mut headline = serde_json::Map::new();
    let mut rounds = serde_json::Map::new();
    let mut summary = String::from(
        "Headline (each ratio the median of the per-round ratios, lowest-highest round):\n",
    );
    let mut ratios = Vec::new();
    for (label, key, total, column, baseline) in [
        (
            "kept-alive requests/s, ours / direct",
            "rps_ours_over_direct",
            10_000,
            3,
            Mode::Direct,
        ),
        (
            "new connections/s, ours / iptables",
            "cps_ours_over_iptables",
            10_000,
            0,
            Mode::Iptables,
        ),
        (
            "new connections/s, ours / nftables",
            "cps_ours_over_nftables",
            10_000,
            0,
            Mode::Nftables,
        ),
        (
            "new connections/s, ours / direct",
            "cps_ours_over_direct",
            10_000,
            0,
            Mode::Direct,
        ),
        (
            "new connections/s, ours / iptables",
            "cps_ours_over_iptables_10",
            10,
            0,
            Mode::Iptables,
        ),
    ] {
        for (ours_mode, hook, suffix) in [(Mode::Ours, "XDP", ""), (Mode::OursTc, "TC", "_tc")] {
            ratios.push((
                label,
                format!("{key}{suffix}"),
                total,
                column,
                baseline,
                ours_mode,
                hook,
            ));
        }
    }
    for (label, key, total, column, baseline, ours_mode, hook) in ratios {
        let (Some(ours), Some(base)) =
            (get(total, ours_mode, column), get(total, baseline, column))
        else {
            continue;
        };
        if let Some((r, low, high)) = paired_ratio(&ours, &base) {
            let each: Vec<f64> = ours.iter().zip(&base).map(|(&a, &b)| ratio(a, b)).collect();
            rounds.insert(key.clone(), each.into());
            headline.insert(key, r.into());
            let _ = writeln!(
                summary,
                "- {label} at {total} services ({hook} uplink): {r:.2}x ({low:.2}-{high:.2}x over {} rounds)",
                ours.len().min(base.len())
            );
        }
    }
    (headline, rounds, summary)
}

/// The noise floor: direct measured twice in each round, half a round
/// apart; for new connections/s and kept-alive requests/s, the relative
/// difference of the two in every round (both scales), its median and
/// largest (JSON), also added to the summary.
pub(crate) fn noise_floor(
    per_round: &BTreeMap<(u32, Mode), Vec<Sample>>,
    summary: &mut String,
) -> serde_json::Value {
    let mut floor = serde_json::Map::new();
    for (name, get) in [COLUMNS[0], COLUMNS[3]] {
        let (mut first, mut again) = (Vec::new(), Vec::new());
        for total in [10u32, 10_000] {
            if let (Some(a), Some(b)) = (
                per_round.get(&(total, Mode::Direct)),
                per_round.get(&(total, Mode::DirectAgain)),
            ) {
                // Paired by round: as many as both have.
                let n = a.len().min(b.len());
                first.extend(a[..n].iter().map(get));
                again.extend(b[..n].iter().map(get));
            }
        }
        let Some((diffs, median, max)) = spread(&first, &again) else {
            continue;
        };
        let _ = writeln!(
            summary,
            "- noise floor, {name}: direct measured twice a round differs by {:.1}% (median; largest {:.1}%, {} pairs)",
            median * 100.0,
            max * 100.0,
            diffs.len()
        );
        floor.insert(
            name.into(),
            serde_json::json!({"median": median, "max": max, "rounds": diffs}),
        );
    }
    serde_json::Value::Object(floor)
}
