//! PNG charts of the benchmark figures: grouped bars with the spread of the
//! rounds as whiskers.

pub mod cold_start;

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

/// The font the charts use (Debian's fonts-dejavu-core, which `cargo xtask bench` installs).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One bar: a series label, its value and its spread (low, high).
#[derive(Clone, Debug)]
pub struct Bar {
    /// The series (one color per series).
    pub series: String,
    /// The bar's height.
    pub value: f64,
    /// Lowest round.
    pub low: f64,
    /// Highest round.
    pub high: f64,
}

/// A group of bars sharing an x position (e.g. "10 services").
#[derive(Clone, Debug)]
pub struct Group {
    /// Label under the group.
    pub label: String,
    /// Its bars, in series order.
    pub bars: Vec<Bar>,
}

const COLORS: [RGBColor; 5] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("the charts need {FONT} (Debian package fonts-dejavu-core)"))?;
    // The font lives for the rest of the process, as plotters requires.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a usable font"))
}

/// Draws a grouped bar chart to `path` (PNG, 900x500).
pub fn grouped_bars(path: &Path, title: &str, y_label: &str, groups: &[Group]) -> Result<()> {
    register_font()?;
    let series: Vec<String> = groups
        .first()
        .map(|g| g.bars.iter().map(|b| b.series.clone()).collect())
        .unwrap_or_default();
    let top = groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.high.max(b.value)))
        .fold(0.0_f64, f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    #[allow(clippy::cast_precision_loss)] // a handful of groups
    let width = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..width, 0.0..top.max(1.0))
        .map_err(|e| anyhow!("{e}"))?;
    let labels: Vec<String> = groups.iter().map(|g| g.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let centre = x - x.floor();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small, positive
            let index = x.floor() as usize;
            if (centre - 0.5).abs() < 0.01 {
                labels.get(index).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    #[allow(clippy::cast_precision_loss)] // a handful of series
    let slot = 0.8 / series.len().max(1) as f64;
    for (s, name) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        #[allow(clippy::cast_precision_loss)]
        let offset = 0.1 + slot * s as f64;
        let bars = groups.iter().enumerate().filter_map(|(g, group)| {
            #[allow(clippy::cast_precision_loss)]
            let x = g as f64 + offset;
            group
                .bars
                .get(s)
                .map(|b| Rectangle::new([(x, 0.0), (x + slot * 0.9, b.value)], color.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(|e| anyhow!("{e}"))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
        let whiskers = groups.iter().enumerate().filter_map(|(g, group)| {
            #[allow(clippy::cast_precision_loss)]
            let x = g as f64 + offset + slot * 0.45;
            group
                .bars
                .get(s)
                .map(|b| PathElement::new(vec![(x, b.low), (x, b.high)], BLACK.stroke_width(2)))
        });
        chart.draw_series(whiskers).map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_a_png() {
        let bar = |series: &str, value: f64| Bar {
            series: series.into(),
            value,
            low: value * 0.9,
            high: value * 1.1,
        };
        let groups = vec![
            Group {
                label: "10 services".into(),
                bars: vec![bar("direct", 100.0), bar("ours", 90.0)],
            },
            Group {
                label: "10,000 services".into(),
                bars: vec![bar("direct", 100.0), bar("ours", 88.0)],
            },
        ];
        let path = std::env::temp_dir().join(format!("lb-chart-{}.png", std::process::id()));
        grouped_bars(&path, "requests/s", "requests/s", &groups).unwrap();
        let png = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 5_000, "{} bytes", png.len());
    }
}
