//! Building, linting, testing and the demo.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{
    setup::setup,
    util::{require_root, root, run, run_tests, TestTotals},
};

/// Cargo's target directory for a build run in `dir`: `CARGO_TARGET_DIR`
/// (relative to `dir`) when set, else `dir/target`.
pub fn target_dir(dir: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), |d| dir.join(d))
}

/// Path of the built kernel object.
pub fn ebpf_object() -> PathBuf {
    target_dir(&root().join("lb-ebpf")).join("bpfel-unknown-none/release/lb-ebpf")
}

/// Builds the kernel programs; returns the object's path.
pub fn build_ebpf() -> Result<PathBuf> {
    // lb-ebpf is its own workspace: its rust-toolchain.toml selects nightly and
    // its .cargo/config.toml the bpfel-unknown-none target with build-std.
    run(Command::new("cargo")
        .args(["+nightly", "build", "--release"])
        .current_dir(root().join("lb-ebpf")))?;
    Ok(ebpf_object())
}

/// `cargo` at the workspace root, told where the kernel object is.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).env("LB_EBPF_OBJECT", ebpf_object());
    cmd
}

/// Builds everything; returns the agent binary's path.
pub fn build(release: bool) -> Result<PathBuf> {
    build_ebpf()?;
    let mut cmd = cargo();
    cmd.args(["build", "-p", "lb-userspace"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(target_dir(&root())
        .join(if release { "release" } else { "debug" })
        .join("lb-agent"))
}

/// rustfmt and clippy for both workspaces.
pub fn lint() -> Result<()> {
    build_ebpf()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let ebpf = root().join("lb-ebpf");
    run(Command::new("cargo")
        .args(["+nightly", "fmt", "--check"])
        .current_dir(&ebpf))?;
    run(Command::new("cargo")
        .args(["+nightly", "clippy", "--release", "--", "-D", "warnings"])
        .current_dir(&ebpf))
}

/// Every test, after setup and lint.
pub fn test() -> Result<()> {
    require_root("cargo xtask test")?;
    setup()?;
    let agent = build(false)?;
    // The image (tests/image.rs checks what `cargo xtask image` makes) is
    // built beside lint and the other tests, in its own target directory;
    // its tests run last.
    let image_log = target_dir(&root()).join("image-build.log");
    let image_build = crate::image::spawn_image_build(&image_log)?;
    println!(
        "building the image beside the tests (log: {})",
        image_log.display()
    );
    lint()?;
    let mut totals = TestTotals::default();
    run_tests(
        cargo().args(["test", "--workspace", "--exclude", "lb-tests"]),
        &mut totals,
    )?;
    // Packet and namespace tests share the kernel: one at a time. The whole
    // suite runs once (FULL_SUITE), the end-to-end files again on each of
    // E2E_VARIANTS.
    println!("all of lb-tests on {FULL_SUITE}");
    run_tests(
        FULL_SUITE
            .apply(cargo().args(["test", "-p", "lb-tests", "--", "--test-threads=1"]))
            .args(IMAGE_TESTS.iter().flat_map(|t| ["--skip", t]))
            .env("LB_AGENT_BIN", &agent),
        &mut totals,
    )?;
    for variant in E2E_VARIANTS {
        println!("the end-to-end tests on {variant}");
        let mut e2e = cargo();
        e2e.args(["test", "-p", "lb-tests"]);
        for file in E2E_TESTS {
            e2e.args(["--test", file]);
        }
        e2e.args(["--", "--test-threads=1"]);
        if variant.hook == "tc" {
            // `--exact`: each skip names one whole test.
            e2e.arg("--exact");
            for test in SAME_AT_TC {
                e2e.args(["--skip", test]);
            }
        }
        run_tests(
            variant.apply(&mut e2e).env("LB_AGENT_BIN", &agent),
            &mut totals,
        )?;
    }
    let image = crate::image::finish_image_build(image_build, &image_log)?;
    println!("the image tests on {image}");
    run_tests(
        FULL_SUITE
            .apply(cargo().args([
                "test",
                "-p",
                "lb-tests",
                "--test",
                "image",
                "--",
                "--test-threads=1",
            ]))
            .env("LB_AGENT_BIN", &agent)
            .env("LB_IMAGE", &image),
        &mut totals,
    )?;
    println!("{} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

/// The tests of `tests/image.rs`, run once the image is built (skipped by
/// the whole suite's pass, which runs before).
const IMAGE_TESTS: [&str; 2] = [
    "the_image_is_the_static_agent_from_scratch_as_the_dockerfile_says",
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
const E2E_TESTS: [&str; 12] = [
    "e2e",
    "e2e_kube",
    "e2e_snat",
    "e2e_icmp",
    "e2e_jumbo",
    "e2e_pmtu",
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
const SAME_AT_TC: [&str; 8] = [
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
];

/// One pass of the end-to-end tests: the values of `LB_TEST_CNI`,
/// `LB_TEST_FIREWALL` and `LB_TEST_UPLINK_HOOK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct E2eVariant {
    /// How pods are attached: routed, bridge or vxlan.
    cni: &'static str,
    /// node1's FORWARD rules: none or invalid-drop (kube-proxy's).
    firewall: &'static str,
    /// The uplink hook of tests that choose none: xdp or tc.
    hook: &'static str,
}

impl E2eVariant {
    /// Sets the variant's environment on `cmd`.
    fn apply(self, cmd: &mut Command) -> &mut Command {
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
const FULL_SUITE: E2eVariant = E2eVariant {
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

/// The demo.
pub fn demo() -> Result<()> {
    require_root("cargo xtask demo")?;
    setup()?;
    let agent = build(false)?;
    run(cargo()
        .args(["run", "--quiet", "-p", "lb-tests", "--bin", "demo"])
        .env("LB_AGENT_BIN", agent))
}

#[cfg(test)]
mod tests {
    use super::{E2eVariant, E2E_TESTS, E2E_VARIANTS, FULL_SUITE, IMAGE_TESTS, SAME_AT_TC};

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
        let build = include_str!("build.rs");
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
