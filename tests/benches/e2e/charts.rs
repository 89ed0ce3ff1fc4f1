//! The end-to-end charts.

use std::{collections::BTreeMap, path::Path};

use anyhow::Result;
use lb_tests::{
    charts::{grouped_bars, Bar, Group},
    stats::{figure, Figure},
};

use crate::{
    fixed::{Fixed, FixedPair},
    modes::{Mode, Sample},
    report::COLUMNS,
};

/// Draws the connection-rate and request-rate charts into `out`.
pub(crate) fn draw_charts(
    medians: &BTreeMap<(u32, Mode), Vec<Figure>>,
    out: &Path,
    scales: &[u32],
) -> Result<()> {
    #[allow(clippy::cast_precision_loss)] // rates far below 2^52
    let as_f64 = |x: u64| x as f64;
    for (file, column, title) in [
        (
            "e2e-connections.png",
            0,
            "New TCP connections per second (higher is better)",
        ),
        (
            "e2e-requests.png",
            3,
            "Requests per second on kept-alive connections",
        ),
    ] {
        let groups: Vec<Group> = scales
            .iter()
            .map(|&total| Group {
                label: format!("{total} services"),
                bars: Mode::ALL
                    .iter()
                    .filter(|&&mode| mode != Mode::DirectAgain)
                    .filter_map(|&mode| {
                        let f = medians.get(&(total, mode))?[column];
                        Some(Bar {
                            series: mode.name().to_string(),
                            value: as_f64(f.median),
                            low: as_f64(f.low),
                            high: as_f64(f.high),
                        })
                    })
                    .collect(),
            })
            .collect();
        grouped_bars(&out.join(file), title, COLUMNS[column].0, &groups)?;
    }
    Ok(())
}

/// One fixed-rate window of a mode's windows.
type Window = fn(&FixedPair) -> Fixed;

/// The fixed-rate windows the CPU chart shows, at 10,000 Services.
const CPU_GROUPS: [(&str, Window); 3] = [
    ("kept-alive, pods on node1", |p| p.kept),
    ("kept-alive, forwarded to node2", |p| p.remote),
    ("new connections, pods on node1", |p| p.conn),
];

/// Draws host CPU per request at the fixed offered rates by mode
/// (`e2e-cpu.png`, 10,000 Services) into `out`.
pub(crate) fn draw_cpu_chart(
    per_round: &BTreeMap<(u32, Mode), Vec<Sample>>,
    out: &Path,
) -> Result<()> {
    #[allow(clippy::cast_precision_loss)] // ns far below 2^52
    let us = |ns: u64| ns as f64 / 1000.0;
    let groups: Vec<Group> = CPU_GROUPS
        .iter()
        .map(|(label, get)| Group {
            label: (*label).to_string(),
            bars: Mode::ALL
                .iter()
                .filter(|&&mode| mode != Mode::DirectAgain)
                .filter_map(|&mode| {
                    let samples = per_round.get(&(10_000, mode))?;
                    let ns: Vec<u64> = samples
                        .iter()
                        .map(|s| get(&s.fixed).cpu_ns_per_request)
                        .collect();
                    let f = figure(&ns);
                    Some(Bar {
                        series: mode.name().to_string(),
                        value: us(f.median),
                        low: us(f.low),
                        high: us(f.high),
                    })
                })
                .collect(),
        })
        .collect();
    grouped_bars(
        &out.join("e2e-cpu.png"),
        "Host CPU per request at a fixed rate, 10,000 services (lower is better)",
        "host CPU µs per request",
        &groups,
    )
}
