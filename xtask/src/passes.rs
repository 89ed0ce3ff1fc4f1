//! The passes of lb-tests that `cargo xtask test` runs: the whole suite
//! once, the end-to-end files again on each further layout, firewall and
//! uplink hook, and the image's tests last. Passes run in lanes side by
//! side (each test still alone in its pass: `--test-threads=1`); every
//! test's namespaces, pins and cgroups carry its process id, so passes do
//! not meet.

use std::{
    fs::File,
    io::Write as _,
    path::Path,
    process::{Command, ExitStatus},
    sync::Mutex,
};

use anyhow::{bail, Context, Result};

use crate::{
    build::cargo,
    util::{add_result_line, run, TestTotals},
};

/// Lanes when `LB_TEST_LANES` is unset: one per core of this 2-core
/// machine's budget; the tests wait on sockets and timers more than they
/// compute.
const DEFAULT_LANES: usize = 2;

/// How many passes run at once: `LB_TEST_LANES` (at least 1), else
/// [`DEFAULT_LANES`].
pub fn lanes() -> Result<usize> {
    parse_lanes(std::env::var("LB_TEST_LANES").ok().as_deref())
}

/// The lanes `LB_TEST_LANES` asks for (`None`: unset).
fn parse_lanes(value: Option<&str>) -> Result<usize> {
    match value {
        None => Ok(DEFAULT_LANES),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => bail!("LB_TEST_LANES={v}: expected a whole number of lanes, at least 1"),
        },
    }
}

/// One run of lb-tests' binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Every lb-tests file on [`FULL_SUITE`], except the image's tests.
    Whole,
    /// The [`E2E_TESTS`] files on one further variant.
    EndToEnd(E2eVariant),
}

impl Pass {
    /// The `cargo test` command of this pass, for the agent at `agent`.
    fn command(self, agent: &Path) -> Command {
        let mut cmd = cargo();
        match self {
            Pass::Whole => {
                FULL_SUITE
                    .apply(cmd.args(["test", "-p", "lb-tests", "--", "--test-threads=1"]))
                    .args(IMAGE_TESTS.iter().flat_map(|t| ["--skip", t]));
            }
            Pass::EndToEnd(variant) => {
                cmd.args(["test", "-p", "lb-tests"]);
                for file in E2E_TESTS {
                    cmd.args(["--test", file]);
                }
                cmd.args(["--", "--test-threads=1"]);
                if variant.hook == "tc" {
                    // `--exact`: each skip names one whole test.
                    cmd.arg("--exact");
                    for test in SAME_AT_TC {
                        cmd.args(["--skip", test]);
                    }
                }
                variant.apply(&mut cmd);
            }
        }
        cmd.env("LB_AGENT_BIN", agent);
        cmd
    }

    /// A name for the pass's log file.
    fn log_name(self) -> String {
        match self {
            Pass::Whole => "whole-suite".into(),
            Pass::EndToEnd(v) => format!("e2e-{}-{}-{}", v.cni, v.firewall, v.hook),
        }
    }
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pass::Whole => write!(f, "all of lb-tests on {FULL_SUITE}"),
            Pass::EndToEnd(v) => write!(f, "the end-to-end tests on {v}"),
        }
    }
}

/// The passes, longest first (lanes take them in this order).
pub fn passes() -> Vec<Pass> {
    std::iter::once(Pass::Whole)
        .chain(E2E_VARIANTS.into_iter().map(Pass::EndToEnd))
        .collect()
}

/// Runs every pass of [`passes`], `lanes` at a time, each into its own log
/// under `log_dir` (printed whole when the pass ends, so lanes do not
/// interleave). Every pass runs even when one fails; the totals add up all
/// of them; fails naming the passes that failed.
pub fn run_passes(agent: &Path, lanes: usize, log_dir: &Path) -> Result<TestTotals> {
    std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    // The binaries are built once, before the lanes share them.
    run(cargo()
        .args(["test", "-p", "lb-tests", "--no-run"])
        .env("LB_AGENT_BIN", agent))?;
    let queue = Mutex::new(passes().into_iter());
    let results: Mutex<(TestTotals, Vec<String>)> = Mutex::new((TestTotals::default(), Vec::new()));
    let print = Mutex::new(());
    std::thread::scope(|scope| {
        for _ in 0..lanes {
            scope.spawn(|| loop {
                let Some(pass) = queue.lock().expect("queue lock").next() else {
                    return;
                };
                let log = log_dir.join(format!("{}.log", pass.log_name()));
                eprintln!("started: {pass} (log: {})", log.display());
                let started = std::time::Instant::now();
                let outcome = run_pass(pass, agent, &log);
                let took = started.elapsed().as_secs();
                let _printing = print.lock().expect("print lock");
                println!("==== {pass} ====");
                if let Ok(text) = std::fs::read_to_string(&log) {
                    print!("{text}");
                }
                let mut results = results.lock().expect("results lock");
                let failure = match outcome {
                    Ok((totals, status)) => {
                        results.0.passed += totals.passed;
                        results.0.failed += totals.failed;
                        println!(
                            "==== {pass}: {} passed, {} failed, {took} s ====",
                            totals.passed, totals.failed
                        );
                        (!status.success()).then(|| format!("cargo test exited with {status}"))
                    }
                    Err(e) => Some(format!("{e:#}")),
                };
                if let Some(why) = failure {
                    println!("==== {pass}: FAILED: {why} ====");
                    results.1.push(format!("{pass}: {why}"));
                }
            });
        }
    });
    let (totals, failed) = results.into_inner().expect("results lock");
    if !failed.is_empty() {
        bail!("{} pass(es) failed:\n{}", failed.len(), failed.join("\n"));
    }
    Ok(totals)
}

/// Runs one pass with its output (stdout and stderr) in `log`: the totals
/// of its result lines and how `cargo test` exited.
fn run_pass(pass: Pass, agent: &Path, log: &Path) -> Result<(TestTotals, ExitStatus)> {
    let mut cmd = pass.command(agent);
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    // The clones share the file's offset: the output follows the header.
    let mut header = file.try_clone()?;
    writeln!(header, "+ {cmd:?}")?;
    let status = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .context("cannot start cargo test")?;
    let mut totals = TestTotals::default();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    for line in text.lines() {
        add_result_line(line, &mut totals);
    }
    Ok((totals, status))
}

/// The tests of `tests/image.rs`, run once the image is built (skipped by
/// the whole suite's pass, which runs before).
pub const IMAGE_TESTS: [&str; 3] = [
    "the_image_is_the_static_agent_from_scratch_as_the_dockerfile_says",
    "the_dockerfiles_build_stage_runs_what_cargo_xtask_image_runs",
    "the_agent_runs_from_the_images_file_system_and_serves",
];

/// The end-to-end test files, which build the namespace cluster and run in
/// every [`E2E_VARIANTS`] pass. `e2e_overlay` builds its overlay itself and
/// runs once; so do `e2e_health` (HTTP on the node, whatever the CNI
/// layout, firewall or uplink hook), `e2e_agent` (manifest edits and bad
/// manifests, SIGTERM's cleanup at XDP, a refused SNAT pool: the agent's
/// own doing, whatever the layout, firewall or hook) and `e2e_semantics`
/// (Service semantics the conformance table checks on every map). A pass
/// whose uplink hook is TC skips the tests of [`SAME_AT_TC`], which it
/// would run twice.
const E2E_TESTS: [&str; 14] = [
    "e2e",
    "e2e6",
    "e2e_kube",
    "e2e_snat",
    "e2e_icmp",
    "e2e_jumbo",
    "e2e_pmtu",
    "e2e_pmtu6",
    "e2e_fragments",
    "e2e_checksums",
    "e2e_node_source",
    "e2e_node_backend",
    "e2e_reject",
    "e2e_firewall",
];

/// The end-to-end tests that choose `--uplink-hook tc` and are otherwise
/// the same as a test of their file that takes the test bed's hook: same
/// topology, same agent arguments once that hook is TC, same checks. A
/// pass whose hook is TC (`LB_TEST_UPLINK_HOOK=tc`) runs each twice over,
/// so it skips these; they run in every pass whose hook is XDP (the
/// [`FULL_SUITE`] and two of [`E2E_VARIANTS`]), and their twins cover the
/// TC hook on the layouts and firewalls of the other three passes: each
/// (layout, firewall) pair still meets the TC uplink program in one pass.
const SAME_AT_TC: [&str; 11] = [
    // Twin: balances_tcp_and_udp_over_all_four_backends (which checks the test bed's hook's pins).
    "balances_over_all_four_backends_with_the_uplink_hook_at_tc",
    // Twin: a_client_is_refused_by_the_service_for_a_closed_port_of_a_local_backend.
    "a_client_is_refused_for_a_local_backend_with_the_uplink_hook_at_tc",
    // Twin: a_client_is_refused_by_the_service_for_a_closed_port_of_a_remote_backend.
    "a_client_is_refused_for_a_remote_backend_with_the_uplink_hook_at_tc",
    // Twin: a_client_is_refused_by_a_service_without_endpoints_at_xdp (the test bed's hook).
    "a_client_is_refused_by_a_service_without_endpoints_with_the_uplink_hook_at_tc",
    // Twin: jumbo_frames_are_translated_by_the_xdp_uplink_program (the test bed's hook).
    "jumbo_frames_are_translated_by_the_tc_uplink_program",
    // Twin: a_far_client_downloads_a_mebibyte_through_a_1280_byte_hop.
    "a_far_client_downloads_a_mebibyte_through_a_1280_byte_hop_with_the_uplink_hook_at_tc",
    // Twin: a_client_uploads_a_mebibyte_to_a_remote_backend_through_a_1280_byte_hop.
    "a_client_uploads_a_mebibyte_through_a_1280_byte_hop_with_the_uplink_hook_at_tc",
    // Twin: pods_download_and_upload_a_mebibyte_through_a_1280_byte_hop_to_a_remote_backend.
    "pods_download_and_upload_a_mebibyte_through_a_1280_byte_hop_with_the_uplink_hook_at_tc",
    // Twin: the_client_reaches_an_ipv6_cluster_ip_served_on_this_node (the test bed's hook).
    "the_client_reaches_an_ipv6_cluster_ip_with_the_uplink_hook_at_tc",
    // Twin: the_client_reaches_every_backend_of_an_ipv6_service_on_any_node (the test bed's hook).
    "the_client_reaches_every_ipv6_backend_with_the_uplink_hook_at_tc",
    // Twin: a_client_uploads_a_mebibyte_over_ipv6_to_a_remote_backend_through_a_1280_byte_route.
    "a_client_uploads_a_mebibyte_over_ipv6_through_a_1280_byte_route_with_the_uplink_hook_at_tc",
];

/// One pass of the end-to-end tests: the values of `LB_TEST_CNI`,
/// `LB_TEST_FIREWALL` and `LB_TEST_UPLINK_HOOK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E2eVariant {
    /// How pods are attached: routed, bridge or vxlan.
    cni: &'static str,
    /// node1's FORWARD rules: none or invalid-drop (kube-proxy's).
    firewall: &'static str,
    /// The uplink hook of tests that choose none: xdp or tc.
    hook: &'static str,
}

impl E2eVariant {
    /// Sets the variant's environment on `cmd`.
    pub fn apply(self, cmd: &mut Command) -> &mut Command {
        cmd.env("LB_TEST_CNI", self.cni)
            .env("LB_TEST_FIREWALL", self.firewall)
            .env("LB_TEST_UPLINK_HOOK", self.hook)
    }
}

impl std::fmt::Display for E2eVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LB_TEST_CNI={} LB_TEST_FIREWALL={} LB_TEST_UPLINK_HOOK={}",
            self.cni, self.firewall, self.hook
        )
    }
}

/// The layout, firewall and hook of the pass of the whole lb-tests suite.
pub const FULL_SUITE: E2eVariant = E2eVariant {
    cni: "routed",
    firewall: "none",
    hook: "xdp",
};

/// The passes of [`E2E_TESTS`] after [`FULL_SUITE`]: with it, a pairwise
/// covering array of layout (3) × firewall (2) × uplink hook (2). Every
/// pair of values of any two of them is in some pass (the 6 layout and
/// firewall pairs, the 6 layout and hook pairs, the 4 firewall and hook
/// pairs), in 6 passes instead of the 12 of every combination; a fault
/// that needs one value of each of two of them is met.
const E2E_VARIANTS: [E2eVariant; 5] = [
    E2eVariant {
        cni: "routed",
        firewall: "invalid-drop",
        hook: "tc",
    },
    E2eVariant {
        cni: "bridge",
        firewall: "none",
        hook: "tc",
    },
    E2eVariant {
        cni: "bridge",
        firewall: "invalid-drop",
        hook: "xdp",
    },
    E2eVariant {
        cni: "vxlan",
        firewall: "none",
        hook: "xdp",
    },
    E2eVariant {
        cni: "vxlan",
        firewall: "invalid-drop",
        hook: "tc",
    },
];

#[cfg(test)]
mod tests {
    use super::{
        parse_lanes, passes, E2eVariant, Pass, E2E_TESTS, E2E_VARIANTS, FULL_SUITE, IMAGE_TESTS,
        SAME_AT_TC,
    };

    /// The whole suite is taken first (it is the longest), then each
    /// further variant once.
    #[test]
    fn the_whole_suite_goes_first_and_every_variant_once() {
        let all = passes();
        assert_eq!(all[0], Pass::Whole);
        assert_eq!(all.len(), 1 + E2E_VARIANTS.len());
        for variant in E2E_VARIANTS {
            let n = all
                .iter()
                .filter(|p| **p == Pass::EndToEnd(variant))
                .count();
            assert_eq!(n, 1, "{variant}");
        }
    }

    /// `LB_TEST_LANES`: unset means the default; nonsense and 0 are refused.
    #[test]
    fn lanes_are_a_whole_number_of_at_least_one() {
        assert_eq!(parse_lanes(None).unwrap(), super::DEFAULT_LANES);
        assert_eq!(parse_lanes(Some("1")).unwrap(), 1);
        assert_eq!(parse_lanes(Some(" 3 ")).unwrap(), 3);
        for bad in ["0", "two", "-1", ""] {
            let e = parse_lanes(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("LB_TEST_LANES"), "{e}");
        }
    }

    /// The whole suite's pass skips exactly the tests of tests/image.rs.
    #[test]
    fn the_image_tests_skipped_by_the_whole_suite_are_all_of_image_rs() {
        let source = include_str!("../../tests/tests/image.rs");
        let tests: Vec<&str> = source
            .split("#[test]\nfn ")
            .skip(1)
            .filter_map(|rest| rest.split('(').next())
            .collect();
        assert_eq!(tests, IMAGE_TESTS);
    }

    /// Each test a TC pass skips is a test of an end-to-end file, and so is
    /// the twin its comment names.
    #[test]
    fn the_tests_skipped_at_tc_and_their_twins_exist() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tests");
        let sources: String = E2E_TESTS
            .iter()
            .map(|f| std::fs::read_to_string(dir.join(format!("{f}.rs"))).unwrap())
            .collect();
        let build = include_str!("passes.rs");
        for test in SAME_AT_TC {
            assert!(sources.contains(&format!("fn {test}()")), "{test}");
        }
        for twin in build
            .lines()
            .filter_map(|l| l.trim().strip_prefix("// Twin: "))
        {
            let name = twin.split([' ', '.']).next().unwrap();
            assert!(sources.contains(&format!("fn {name}()")), "{name}");
        }
    }

    /// Every pair of values of two dimensions is in some pass.
    #[test]
    fn the_end_to_end_passes_cover_every_pair() {
        let passes: Vec<E2eVariant> = std::iter::once(FULL_SUITE).chain(E2E_VARIANTS).collect();
        let (cnis, firewalls, hooks) = (
            ["routed", "bridge", "vxlan"],
            ["none", "invalid-drop"],
            ["xdp", "tc"],
        );
        for cni in cnis {
            for firewall in firewalls {
                assert!(
                    passes
                        .iter()
                        .any(|p| p.cni == cni && p.firewall == firewall),
                    "{cni} with {firewall}"
                );
            }
            for hook in hooks {
                assert!(
                    passes.iter().any(|p| p.cni == cni && p.hook == hook),
                    "{cni} with {hook}"
                );
            }
        }
        for firewall in firewalls {
            for hook in hooks {
                assert!(
                    passes
                        .iter()
                        .any(|p| p.firewall == firewall && p.hook == hook),
                    "{firewall} with {hook}"
                );
            }
        }
    }
}
