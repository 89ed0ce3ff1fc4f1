//! The control-path targets: cold start (`--source kube` and manifests),
//! against iptables-restore, change-to-map p99 (one by one and in a burst)
//! and the agent's memory at 10,000 Services; cold start, the burst and the
//! agent's own memory at 100,000 (issue 15's scale); with their per-round
//! figures.

use serde_json::Value;

use super::{rounds_at, verdict, Bound, Figure, Verdict};

/// Issue 15's scale: Services of the largest control-bench size.
const LARGE: u64 = 100_000;

/// A size of the control bench (`--source kube`): the row at `services`.
fn control_row(report: &Value, services: u64) -> Option<&Value> {
    report["control"]["sizes"]
        .as_array()?
        .iter()
        .find(|r| r["services"].as_u64() == Some(services))
}

/// A row of the cold-programming comparison (manifests) at `services`.
fn programming_row(report: &Value, services: u64) -> Option<&Value> {
    report["e2e"]["programming"]
        .as_array()?
        .iter()
        .find(|r| r["services"].as_u64() == Some(services))
}

#[allow(clippy::cast_precision_loss)] // KiB far below 2^52
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `key` of `row` in milliseconds, with its rounds at `rounds_key`.
fn ms(row: Option<&Value>, key: &str, rounds_key: &str, digits: usize) -> Option<Figure> {
    let row = row?;
    let x = row[key].as_f64()?;
    Some(Figure {
        value: x,
        text: format!("{x:.digits$} ms"),
        rounds: rounds_at(row, rounds_key, "no per-round figures in the bench's JSON"),
    })
}

/// The peak RSS of `row` in MiB, with its rounds.
fn rss(row: Option<&Value>) -> Option<Figure> {
    let row = row?;
    let x = mib(row["agent_peak_rss_kib"].as_u64()?);
    Some(Figure {
        value: x,
        text: format!("{x:.0} MiB"),
        rounds: rounds_at(
            row,
            "agent_peak_rss_rounds_kib",
            "no per-round figures in the bench's JSON",
        )
        .map(|r| r.iter().map(|kib| kib / 1024.0).collect()),
    })
}

/// The burst's p99 change-to-map of `row` (1,000 updates in a second), with its rounds.
fn burst_p99(row: Option<&Value>) -> Option<Figure> {
    let burst = &row?["burst"];
    let x = burst["p99_ms"].as_f64()?;
    Some(Figure {
        value: x,
        text: format!(
            "{x:.2} ms (drained {:.0} ms after the last update)",
            burst["drain_ms"].as_f64().unwrap_or(f64::NAN)
        ),
        rounds: rounds_at(
            burst,
            "p99_rounds_ms",
            "no per-round figures in the bench's JSON",
        ),
    })
}

/// The agent's own peak RSS of `row` over every phase (ready, changes,
/// burst, after a relist), without its mmapped BPF maps (slab, filter), in
/// MiB, with the maps' kernel memory and the sum beside it.
fn own_rss(row: Option<&Value>) -> Option<Figure> {
    let row = row?;
    let own = mib(row["agent_own_peak_kib"].as_u64()?);
    let maps = mib(row["maps_memlock_bytes"].as_u64().unwrap_or(0) / 1024);
    Some(Figure {
        value: own,
        text: format!(
            "{own:.0} MiB (maps {maps:.0} MiB, sum {:.0} MiB)",
            own + maps
        ),
        rounds: rounds_at(
            row,
            "agent_own_peak_rounds_kib",
            "no per-round figures in the bench's JSON",
        )
        .map(|r| r.iter().map(|kib| kib / 1024.0).collect()),
    })
}

/// The agent's own peak RSS plus its BPF maps' kernel memory of `row`
/// (both charged to its memory cgroup), in MiB, per round.
fn own_plus_maps(row: Option<&Value>) -> Option<Figure> {
    let row = row?;
    let maps = mib(row["maps_memlock_bytes"].as_u64()? / 1024);
    let own = mib(row["agent_own_peak_kib"].as_u64()?);
    Some(Figure {
        value: own + maps,
        text: format!("{:.0} MiB (own {own:.0} + maps {maps:.0})", own + maps),
        rounds: rounds_at(
            row,
            "agent_own_peak_rounds_kib",
            "no per-round figures in the bench's JSON",
        )
        .map(|r| r.iter().map(|kib| kib / 1024.0 + maps).collect()),
    })
}

/// The target the deployment depends on: the agent and its maps within the
/// `DaemonSet`'s memory limit (a miss fails the bench: see
/// [`super::failed_gates`]).
pub const FITS_THE_DAEMONSET: &str = "control: agent RSS plus BPF maps <= the DaemonSet's memory limit (deploy/daemonset.yaml) at 10,000 services (--source kube, default map sizes)";

/// The memory limit of the agent's container in deploy/daemonset.yaml, in
/// MiB.
///
/// # Panics
/// When the manifest cannot be read or names no memory limit.
#[must_use]
pub fn daemonset_memory_limit_mib() -> f64 {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/daemonset.yaml");
    let ds: Value = serde_yaml_ng::from_str(&text).expect("deploy/daemonset.yaml parses");
    let limit = ds["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        .as_str()
        .expect("the DaemonSet's container has a memory limit");
    quantity_mib(limit).unwrap_or_else(|| panic!("memory limit {limit:?}: not Ki, Mi or Gi"))
}

/// A Kubernetes memory quantity (`512Mi`, `1Gi`, `262144Ki`) in MiB.
fn quantity_mib(q: &str) -> Option<f64> {
    let (digits, per_mib) = if let Some(n) = q.strip_suffix("Gi") {
        (n, 1024.0)
    } else if let Some(n) = q.strip_suffix("Mi") {
        (n, 1.0)
    } else {
        (q.strip_suffix("Ki")?, 1.0 / 1024.0)
    };
    Some(digits.parse::<f64>().ok()? * per_mib)
}

/// Judges the control-path targets against `report`.
pub(super) fn verdicts(report: &Value) -> Vec<Verdict> {
    let limit = daemonset_memory_limit_mib();
    vec![
        verdict(
            "control: 10,000 services from cold in <= 2 s (--source kube)",
            ms(control_row(report, 10_000), "cold_start_ms", "cold_start_rounds_ms", 0),
            Bound::AtMost(2000.0),
        ),
        verdict(
            "control: 10,000 services from cold in <= 2 s (manifests)",
            ms(programming_row(report, 10_000), "ours_ms", "ours_rounds_ms", 0),
            Bound::AtMost(2000.0),
        ),
        verdict(
            "control: >= 10x faster than iptables-restore of the same rules (10,000 services)",
            programming_row(report, 10_000).and_then(|r| {
                let x = r["iptables_restore_over_ours"].as_f64()?;
                Some(Figure {
                    value: x,
                    text: format!("{x:.1}x"),
                    rounds: rounds_at(
                        r,
                        "iptables_restore_over_ours_rounds",
                        "e2e.json has no per-round ratios",
                    ),
                })
            }),
            Bound::AtLeast(10.0),
        ),
        verdict(
            "control: p99 change-to-map <= 10 ms (10,000 services)",
            ms(control_row(report, 10_000), "p99_ms", "p99_rounds_ms", 2),
            Bound::AtMost(10.0),
        ),
        verdict(
            "control: p99 change-to-map <= 10 ms during a burst of 1,000 updates in 1 s (10,000 services)",
            burst_p99(control_row(report, 10_000)),
            Bound::AtMost(10.0),
        ),
        verdict(
            "control: agent peak RSS <= 150 MiB at 10,000 services (--source kube)",
            rss(control_row(report, 10_000)),
            Bound::AtMost(150.0),
        ),
        verdict(
            "control: agent peak RSS without BPF maps and slab <= 150 MiB at 10,000 services, over ready, changes, burst and relist (--source kube)",
            own_rss(control_row(report, 10_000)),
            Bound::AtMost(150.0),
        ),
        verdict(
            "control: agent peak RSS <= 150 MiB at 10,000 services (manifests)",
            rss(programming_row(report, 10_000)),
            Bound::AtMost(150.0),
        ),
        verdict(
            FITS_THE_DAEMONSET,
            own_plus_maps(control_row(report, 10_000)).map(|mut f| {
                f.text = format!("{} of {limit:.0} MiB", f.text);
                f
            }),
            Bound::AtMost(limit),
        ),
        verdict(
            "control: 100,000 services (1,000,000 endpoints) from cold in <= 10 s (--source kube)",
            ms(control_row(report, LARGE), "cold_start_ms", "cold_start_rounds_ms", 0),
            Bound::AtMost(10_000.0),
        ),
        verdict(
            "control: 100,000 services: p99 change-to-map <= 10 ms during a burst of 1,000 updates in 1 s",
            burst_p99(control_row(report, LARGE)),
            Bound::AtMost(10.0),
        ),
        verdict(
            "control: 100,000 services: agent peak RSS without BPF maps and slab <= 600 MiB, over ready, changes, burst and relist (--source kube)",
            own_rss(control_row(report, LARGE)),
            Bound::AtMost(600.0),
        ),
    ]
}

#[cfg(test)]
mod quantity_tests {
    use super::quantity_mib;

    #[test]
    fn memory_quantities_in_mib() {
        assert_eq!(quantity_mib("512Mi"), Some(512.0));
        assert_eq!(quantity_mib("1Gi"), Some(1024.0));
        assert_eq!(quantity_mib("262144Ki"), Some(256.0));
        assert_eq!(quantity_mib("512M"), None, "decimal units are not read");
        assert_eq!(quantity_mib("lots"), None);
    }
}
