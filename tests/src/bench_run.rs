//! The run a benchmark's output belongs to. `cargo xtask bench` names one
//! run (an id, the commit, whether the tree was dirty, `--quick`) and hands it
//! to every bench through the environment; each bench stamps its JSON (a
//! `"run"` object) and its text files (a first line) with it, and
//! `bench-report` refuses to assemble files of different runs, or an
//! incomplete set. A bench run on its own (plain `cargo bench`) gets a run id
//! of its own, so its files are never assembled with another run's.

use std::{
    collections::BTreeMap,
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

/// The environment variable naming the run (set by `cargo xtask bench`).
pub const RUN_ENV: &str = "LB_BENCH_RUN";
/// The environment variable holding the commit measured.
pub const COMMIT_ENV: &str = "LB_BENCH_COMMIT";
/// The environment variable set to 1 when the tree had uncommitted changes.
pub const DIRTY_ENV: &str = "LB_BENCH_DIRTY";
/// What a text file's stamp line starts with (an HTML comment: invisible in Markdown).
const TEXT_STAMP: &str = "<!-- lb-bench run ";

/// One benchmark run, as stamped on its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Unique to one `cargo xtask bench` (or one standalone bench process).
    pub id: String,
    /// The commit measured (`git rev-parse HEAD`), or "unknown".
    pub commit: String,
    /// The work tree had uncommitted changes.
    pub dirty: bool,
    /// A `--quick` run.
    pub quick: bool,
}

impl Run {
    /// The run this process belongs to: xtask's, else one of its own.
    pub fn current() -> &'static Run {
        static RUN: OnceLock<Run> = OnceLock::new();
        RUN.get_or_init(|| {
            let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
            match std::env::var(RUN_ENV) {
                Ok(id) if !id.is_empty() => Run {
                    id,
                    commit: std::env::var(COMMIT_ENV).unwrap_or_else(|_| "unknown".into()),
                    dirty: std::env::var(DIRTY_ENV).is_ok_and(|d| d == "1"),
                    quick,
                },
                _ => standalone(quick),
            }
        })
    }

    /// The run as the `"run"` object of a JSON file.
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::json!({"id": self.id, "commit": self.commit, "dirty": self.dirty, "quick": self.quick})
    }

    /// The run a JSON file is stamped with (its `"run"` object), if any.
    #[must_use]
    pub fn of(json: &Value) -> Option<Run> {
        let run = &json["run"];
        Some(Run {
            id: run["id"].as_str()?.to_string(),
            commit: run["commit"].as_str().unwrap_or("unknown").to_string(),
            dirty: run["dirty"].as_bool().unwrap_or(false),
            quick: run["quick"].as_bool().unwrap_or(false),
        })
    }
}

/// A run of one bench process outside xtask: an id no other process shares.
fn standalone(quick: bool) -> Run {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    Run {
        id: format!(
            "standalone-{}-{}-{}",
            now.as_secs(),
            now.subsec_nanos(),
            std::process::id()
        ),
        commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        dirty: git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty()),
        quick,
    }
}

/// `json` (an object) with this process's run added as `"run"`.
#[must_use]
pub fn stamped(mut json: Value) -> Value {
    let object = json
        .as_object_mut()
        .expect("a bench's JSON is an object, to carry its run");
    object.insert("run".into(), Run::current().json());
    json
}

/// `text` preceded by a line naming this process's run.
#[must_use]
pub fn stamped_text(text: &str) -> String {
    format!("{TEXT_STAMP}{} -->\n{text}", Run::current().id)
}

/// The run id on a stamped text's first line (`None` when unstamped) and
/// the text without that line.
#[must_use]
pub fn unstamp_text(text: &str) -> (Option<&str>, &str) {
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    match first
        .strip_prefix(TEXT_STAMP)
        .and_then(|s| s.strip_suffix(" -->"))
    {
        Some(id) => (Some(id), rest),
        None => (None, text),
    }
}

/// What one of a run's files says about its run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// The file is not there (or empty).
    Missing,
    /// The file carries no run stamp (written before stamping, or by hand).
    Unstamped,
    /// The file belongs to this run id.
    Run(String),
}

/// Checks that a run's files are one run: every file present (unless
/// `partial`, which lets whole files be missing), stamped, with a single run
/// id. Returns that id and the missing files; or a message naming the odd
/// files.
///
/// # Errors
/// When files are missing (and not `partial`), unstamped, of several runs,
/// or none is there at all.
pub fn check_set(files: &[(&str, Stamp)], partial: bool) -> Result<(String, Vec<String>), String> {
    let mut runs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let (mut missing, mut unstamped) = (Vec::new(), Vec::new());
    for (name, stamp) in files {
        match stamp {
            Stamp::Missing => missing.push(name.to_string()),
            Stamp::Unstamped => unstamped.push(*name),
            Stamp::Run(id) => runs.entry(id.as_str()).or_default().push(name),
        }
    }
    let mut problems = Vec::new();
    if !missing.is_empty() && !partial {
        problems.push(format!("missing: {}", missing.join(", ")));
    }
    if !unstamped.is_empty() {
        problems.push(format!("without a run stamp: {}", unstamped.join(", ")));
    }
    if runs.len() > 1 {
        let mut groups: Vec<(&str, Vec<&str>)> = runs.clone().into_iter().collect();
        // The largest group first: the others are the odd files.
        groups.sort_by_key(|(_, files)| std::cmp::Reverse(files.len()));
        let listed: Vec<String> = groups
            .iter()
            .map(|(id, files)| format!("run {id}: {}", files.join(", ")))
            .collect();
        problems.push(format!(
            "files of {} different runs ({})",
            runs.len(),
            listed.join("; ")
        ));
    }
    if runs.is_empty() && unstamped.is_empty() {
        problems.push("no bench output at all".into());
    }
    if problems.is_empty() {
        let id = runs.into_keys().next().expect("one run").to_string();
        Ok((id, missing))
    } else {
        Err(format!(
            "target/bench is not one complete run: {}. Run `cargo xtask bench` (every bench, one run) again.",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> Stamp {
        Stamp::Run(id.into())
    }

    #[test]
    fn one_complete_run_is_assembled() {
        let files = [("packet.json", run("r1")), ("packet.md", run("r1"))];
        assert_eq!(check_set(&files, false), Ok(("r1".into(), vec![])));
    }

    #[test]
    fn a_mixed_set_is_refused_naming_the_odd_files() {
        let files = [
            ("packet.json", run("r1")),
            ("control.json", run("r2")),
            ("e2e.json", run("r1")),
            ("e2e.md", run("r1")),
        ];
        let err = check_set(&files, false).unwrap_err();
        assert!(
            err.contains(
                "2 different runs (run r1: packet.json, e2e.json, e2e.md; run r2: control.json)"
            ),
            "{err}"
        );
        assert!(check_set(&files, true).is_err(), "partial never mixes");
    }

    #[test]
    fn missing_and_unstamped_files_are_refused() {
        let files = [
            ("packet.json", run("r1")),
            ("flows.json", Stamp::Missing),
            ("flows.md", Stamp::Missing),
            ("control.md", Stamp::Unstamped),
        ];
        let err = check_set(&files, false).unwrap_err();
        assert!(err.contains("missing: flows.json, flows.md"), "{err}");
        assert!(err.contains("without a run stamp: control.md"), "{err}");
        // Partial lets files be missing, never unstamped.
        let err = check_set(&files, true).unwrap_err();
        assert!(!err.contains("missing"), "{err}");
        assert_eq!(
            check_set(&files[..3], true),
            Ok(("r1".into(), vec!["flows.json".into(), "flows.md".into()]))
        );
        let none = [("packet.json", Stamp::Missing)];
        assert!(check_set(&none, true)
            .unwrap_err()
            .contains("no bench output"));
    }

    #[test]
    fn stamps_round_trip_through_json_and_text() {
        let json = stamped(serde_json::json!({"figure": 1}));
        assert_eq!(Run::of(&json).as_ref(), Some(Run::current()));
        assert_eq!(json["figure"], 1);
        let text = stamped_text("| a |\n");
        assert_eq!(
            unstamp_text(&text),
            (Some(Run::current().id.as_str()), "| a |\n")
        );
        assert_eq!(unstamp_text("| a |\n"), (None, "| a |\n"));
        assert_eq!(Run::of(&serde_json::json!({"figure": 1})), None);
    }

    #[test]
    fn a_standalone_bench_is_a_run_of_its_own() {
        let (a, b) = (standalone(false), standalone(false));
        assert_ne!(a.id, b.id, "two processes (or two calls) never share an id");
        assert!(a.id.starts_with("standalone-"));
    }
}
