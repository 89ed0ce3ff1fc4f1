//! The end-to-end charts.

use std::{collections::BTreeMap, path::Path};

use anyhow::Result;
use lb_tests::{
    charts::{grouped_bars, Bar, Group},
    stats::Figure,
};

use crate::{modes::Mode, report::COLUMNS};

/// Draws the connection-rate and request-rate charts into `out`.
pub(crate) fn draw_charts(medians: &BTreeMap<(u32, Mode), Vec<Figure>>, out: &Path) -> Result<()> {
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
        let groups: Vec<Group> = [10u32, 10_000]
            .into_iter()
            .map(|total| Group {
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
