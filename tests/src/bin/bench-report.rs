//! Assembles one `cargo xtask bench` run into `BENCHMARKS.md` (the targets
//! judged, the notes on the gaps, every table and the charts) and
//! `target/bench/report.json` (every figure, and the verdicts), and prints
//! the headline and the verdicts. `--quick` marks a short run.

use std::path::Path;

use anyhow::{Context, Result};
use lb_tests::targets;

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/bench");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    let json = |name: &str| -> Result<serde_json::Value> {
        let text = read(name);
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("target/bench/{name} is not JSON"))
    };
    let mut report = serde_json::json!({
        "quick": quick,
        "e2e": json("e2e.json")?,
        "packet": json("packet.json")?,
        "control": json("control.json")?,
        "flows": json("flows.json")?,
        "east_west": json("east_west.json")?,
    });
    let verdicts = targets::judge(&report);
    let table = targets::markdown(&verdicts);
    report["targets"] = verdicts
        .iter()
        .map(|v| serde_json::json!({"target": v.target, "measured": v.measured, "met": v.met}))
        .collect();
    // The charts are committed next to the report, which shows them.
    let charts = root.join("docs/bench");
    std::fs::create_dir_all(&charts)?;
    for png in ["e2e-connections.png", "e2e-requests.png"] {
        if out.join(png).exists() {
            std::fs::copy(out.join(png), charts.join(png))?;
        }
    }
    let notes = std::fs::read_to_string(charts.join("notes.md")).unwrap_or_default();
    let md = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench`{} on this project's CI machine kind \
         (2 cores, shared: read ratios, not absolute times). Every figure: \
         `target/bench/report.json`.\n\n## Targets (issue 4)\n\n{table}\n{notes}\n## End to end\n\n\
         ![New connections per second](docs/bench/e2e-connections.png)\n\n\
         ![Requests per second](docs/bench/e2e-requests.png)\n\n{}\n\
         ## East-west: socket-level balancing (issue 14)\n\n{}\n## Per packet, in the kernel\n\n{}\n\
         ## Control path\n\n{}\n## Flows: SNAT capacity and floods\n\n{}",
        if quick { " --quick" } else { "" },
        read("e2e.md"),
        read("east_west.md"),
        read("packet.md"),
        read("control.md"),
        read("flows.md")
    );
    std::fs::write(root.join("BENCHMARKS.md"), md)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", read("summary.txt"));
    println!("{}", read("flows-summary.txt"));
    println!("Targets:\n{table}");
    eprintln!("wrote BENCHMARKS.md and target/bench/report.json");
    Ok(())
}
