//! The chart of cold start against the number of Services: the agent from
//! start to ready, from the test API server (`--source kube`, the control
//! bench) and from manifests (the end-to-end bench's programming rows).

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use super::{grouped_bars, Bar, Group};

/// The chart's file name (in target/bench; the report copies it to docs/bench).
pub const CHART: &str = "control-cold-start.png";

/// Sizes below this are left out (a bar of milliseconds beside seconds).
const SMALLEST: u64 = 1_000;

/// `n` with thousands separators (100000 -> "100,000").
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A bar in seconds from `row`'s median at `key` and its rounds at `rounds_key`.
fn bar(series: &str, row: &Value, key: &str, rounds_key: &str) -> Option<Bar> {
    let value = row[key].as_f64()? / 1e3;
    let rounds: Vec<f64> = row[rounds_key]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(Value::as_f64)
                .map(|ms| ms / 1e3)
                .collect()
        })
        .unwrap_or_default();
    let low = rounds.iter().copied().fold(value, f64::min);
    let high = rounds.iter().copied().fold(value, f64::max);
    Some(Bar {
        series: series.into(),
        value,
        low,
        high,
    })
}

/// One group per size of the control bench (1,000 Services and up): its
/// cold start from the API server, then from manifests where the
/// end-to-end bench measured that size.
#[must_use]
pub fn groups(report: &Value) -> Vec<Group> {
    let programming = report["e2e"]["programming"].as_array();
    report["control"]["sizes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| {
            let services = row["services"].as_u64().filter(|&s| s >= SMALLEST)?;
            let kube = bar(
                "from the API server (--source kube)",
                row,
                "cold_start_ms",
                "cold_start_rounds_ms",
            )?;
            let manifests = programming
                .into_iter()
                .flatten()
                .find(|r| r["services"].as_u64() == Some(services))
                .and_then(|r| bar("from manifests", r, "ours_ms", "ours_rounds_ms"));
            Some(Group {
                label: format!("{} services", grouped(services)),
                bars: std::iter::once(kube).chain(manifests).collect(),
            })
        })
        .collect()
}

/// Draws the cold-start chart of `report` (a run's report JSON) to `path`.
pub fn draw(report: &Value, path: &Path) -> Result<()> {
    let groups = groups(report);
    if groups.is_empty() {
        bail!("no control sizes of 1,000 Services or more in the report");
    }
    grouped_bars(
        path,
        "Cold start to ready by Services, 10 endpoints each (lower is better)",
        "seconds",
        &groups,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_group_per_size_from_1000_up_manifests_beside_where_measured() {
        let report = json!({
            "control": {"sizes": [
                {"services": 1, "cold_start_ms": 40.0},
                {"services": 1_000, "cold_start_ms": 200.0, "cold_start_rounds_ms": [150.0, 200.0, 260.0]},
                {"services": 100_000, "cold_start_ms": 15_000.0},
            ]},
            "e2e": {"programming": [{"services": 1_000, "ours_ms": 120, "ours_rounds_ms": [110, 130]},
                                    {"services": 10_000, "ours_ms": 900}]},
        });
        let g = groups(&report);
        let labels: Vec<&str> = g.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels, ["1,000 services", "100,000 services"]);
        let kube = &g[0].bars[0];
        assert_eq!((kube.value, kube.low, kube.high), (0.2, 0.15, 0.26));
        assert_eq!(g[0].bars[1].series, "from manifests");
        assert_eq!((g[0].bars[1].low, g[0].bars[1].high), (0.11, 0.13));
        assert_eq!(g[1].bars.len(), 1, "no manifests at 100,000");
        assert_eq!((g[1].bars[0].low, g[1].bars[0].high), (15.0, 15.0));
    }

    #[test]
    fn the_chart_is_a_png_and_an_empty_report_none() {
        let report = json!({"control": {"sizes": [
            {"services": 1_000, "cold_start_ms": 200.0},
            {"services": 10_000, "cold_start_ms": 1_900.0, "cold_start_rounds_ms": [1_800.0, 2_300.0]},
            {"services": 100_000, "cold_start_ms": 14_000.0, "cold_start_rounds_ms": [11_600.0, 27_100.0]},
        ]}, "e2e": {"programming": [{"services": 10_000, "ours_ms": 1_500}]}});
        let path = std::env::temp_dir().join(format!("lb-cold-{}.png", std::process::id()));
        draw(&report, &path).unwrap();
        let png = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(draw(&json!({}), &path).is_err());
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(grouped(1), "1");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(100_000), "100,000");
        assert_eq!(grouped(1_000_000), "1,000,000");
    }
}
