//! Assembles one `cargo xtask bench` run into `BENCHMARKS.md` (the targets
//! judged, the notes on the gaps, every table and the charts) and
//! `target/bench/report.json` (every figure, and the verdicts), and prints
//! the headline and the verdicts. Refuses unless every bench's files are
//! there and stamped with one run (`lb_tests::bench_run`). `--quick` marks a
//! short run (and must agree with the stamps); `--partial` assembles a run
//! some benches did not write, and says so in the header.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{bail, Context, Result};
use lb_tests::{
    bench_run::{check_set, unstamp_text, Run, Stamp},
    charts::cold_start,
    targets,
};
use serde_json::Value;

/// The benches, each writing `<name>.json` and `<name>.md`.
const BENCHES: [&str; 5] = ["e2e", "packet", "control", "flows", "east_west"];
/// The text files beside them that the report prints.
const TEXTS: [&str; 2] = ["summary.txt", "flows-summary.txt"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick_arg = args.iter().any(|a| a == "--quick");
    let partial = args.iter().any(|a| a == "--partial");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/bench");
    let (jsons, texts, stamps) = read_run(&out)?;
    let named: Vec<(&str, Stamp)> = stamps
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    let (id, missing) = check_set(&named, partial).map_err(anyhow::Error::msg)?;
    let run = jsons
        .values()
        .find_map(Run::of)
        .context("no JSON of the run: only text files")?;
    if run.id != id {
        bail!(
            "the run's JSON and text files disagree ({} vs {id})",
            run.id
        );
    }
    if quick_arg && !run.quick {
        bail!("--quick given, but run {id} was not a quick run");
    }
    let read = |name: &str| texts.get(name).cloned().unwrap_or_default();
    let mut report = Value::Object(jsons);
    report["quick"] = run.quick.into();
    report["run"] = run.json();
    report["missing"] = missing.clone().into();
    let verdicts = targets::judge(&report);
    let table = targets::markdown(&verdicts);
    let noise = targets::noise_floor(&report);
    report["targets"] = verdicts
        .iter()
        .map(|v| {
            let rounds = match &v.rounds {
                targets::Rounds::Counted { met, of } => serde_json::json!({"met": met, "of": of}),
                targets::Rounds::NotCounted(why) => serde_json::json!({"not_counted": why}),
            };
            serde_json::json!({"target": v.target, "measured": v.measured, "met": v.met, "rounds": rounds})
        })
        .collect();
    // Cold start by Services takes two benches' figures: drawn here.
    if let Err(e) = cold_start::draw(&report, &out.join(cold_start::CHART)) {
        eprintln!("no chart {}: {e:#}", cold_start::CHART);
    }
    // The charts are committed next to the report, which shows them.
    let charts = root.join("docs/bench");
    std::fs::create_dir_all(&charts)?;
    for png in [
        "e2e-connections.png",
        "e2e-requests.png",
        "e2e-cpu.png",
        "packet-new-flow-fill.png",
        cold_start::CHART,
    ] {
        if out.join(png).exists() {
            std::fs::copy(out.join(png), charts.join(png))?;
        }
    }
    let notes = std::fs::read_to_string(charts.join("notes.md")).unwrap_or_default();
    let md = format!(
        "# Benchmarks\n\n{}\n## Targets (issues 4 and 15)\n\n{table}\n{}{noise}\n{notes}\n## End to end\n\n\
         ![New connections per second](docs/bench/e2e-connections.png)\n\n\
         ![Requests per second](docs/bench/e2e-requests.png)\n\n\
         ![Host CPU per request at a fixed rate](docs/bench/e2e-cpu.png)\n\n{}\n\
         ## East-west: socket-level balancing (issue 14)\n\n{}\n## Per packet, in the kernel\n\n\
         ![New flow by conntrack fill](docs/bench/packet-new-flow-fill.png)\n\n{}\n\
         ## Control path\n\n\
         ![Cold start by Services](docs/bench/control-cold-start.png)\n\n{}\n## Flows: SNAT capacity and floods\n\n{}",
        header(&run, &missing),
        JUDGING,
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
    eprintln!("wrote BENCHMARKS.md and target/bench/report.json (run {id})");
    let failed = targets::failed_gates(&verdicts);
    if !failed.is_empty() {
        let lines: Vec<String> = failed
            .iter()
            .map(|v| format!("- {}: {}", v.target, v.measured))
            .collect();
        bail!(
            "the agent no longer fits its deployment (raise resources.limits.memory in \
             deploy/daemonset.yaml and the chart's values.yaml, or shrink the agent):\n{}",
            lines.join("\n")
        );
    }
    Ok(())
}

/// Every bench file of `out`: the JSONs by bench, the texts (without their
/// stamp line) by file name, and every file's stamp.
type Files = (
    serde_json::Map<String, Value>,
    BTreeMap<String, String>,
    Vec<(String, Stamp)>,
);

/// Reads every bench file of `out` (see [`Files`]).
fn read_run(out: &Path) -> Result<Files> {
    let raw = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    // Every file's content (text without its stamp line) and stamp.
    let mut jsons = serde_json::Map::new();
    let mut texts = BTreeMap::new();
    let mut stamps: Vec<(String, Stamp)> = Vec::new();
    for bench in BENCHES {
        let name = format!("{bench}.json");
        let text = raw(&name);
        let json: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("target/bench/{name} is not JSON"))?
        };
        let stamp = match Run::of(&json) {
            _ if json.is_null() => Stamp::Missing,
            Some(run) => Stamp::Run(run.id),
            None => Stamp::Unstamped,
        };
        stamps.push((name, stamp));
        jsons.insert(bench.into(), json);
    }
    let md_names = BENCHES.iter().map(|b| format!("{b}.md"));
    for name in md_names.chain(TEXTS.iter().map(|t| (*t).to_string())) {
        let text = raw(&name);
        let (id, body) = unstamp_text(&text);
        let stamp = match id {
            _ if text.trim().is_empty() => Stamp::Missing,
            Some(id) => Stamp::Run(id.to_string()),
            None => Stamp::Unstamped,
        };
        stamps.push((name.clone(), stamp));
        texts.insert(name, body.to_string());
    }
    Ok((jsons, texts, stamps))
}

/// How the table's verdicts and round counts are decided.
const JUDGING: &str = "A target is met when its figure meets the bound: the median of the \
    rounds (a ratio: the median of the per-round ratios; per packet, the worst configuration's; \
    peak RSS, the highest round). \"k/N rounds met\" judges each round's own figure against the \
    same bound (per packet, a round's worst configuration; the p99 change-to-map, the p99 of each \
    round's own 1,000 changes, or its burst's), so a median that hides \
    failed rounds shows. A target met in fewer than all rounds is met by a margin smaller than \
    the machine's noise.\n\n";

/// The report's opening: which run, at which commit, how it was checked.
fn header(run: &Run, missing: &[String]) -> String {
    let commit = if run.dirty {
        format!("`{}` with uncommitted changes", run.commit)
    } else {
        format!("`{}`", run.commit)
    };
    let mut header = format!(
        "Written by `cargo xtask bench{}` on this project's CI machine kind (2 cores, shared: read \
         ratios, not absolute times), run `{}` of commit {commit}. Every file assembled here \
         carries that run's stamp (`bench-report` refuses a mixed or incomplete set). Every \
         figure: `target/bench/report.json`.\n",
        if run.quick { " --quick" } else { "" },
        run.id
    );
    if !missing.is_empty() {
        let _ = write!(
            header,
            "\n**Partial run** (`bench-report --partial`): not in this run: {}.\n",
            missing.join(", ")
        );
    }
    header
}
