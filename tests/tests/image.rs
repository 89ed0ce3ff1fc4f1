//! The container image `cargo xtask image` builds (`LB_IMAGE`, set by
//! `cargo xtask test`): from scratch, the one static binary, its
//! entrypoint and labels, the Dockerfile's final stage saying the same; and
//! the agent run from the image's own file system (a mount namespace and
//! `chroot`, as a runtime would) serving the test topology. Needs root and
//! buildah.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    cluster::assert_spread,
    topology::ClusterTopology,
    traffic::{http_distribution, PodServers},
};
use serde_json::Value;

/// Where the image holds the agent.
const BINARY: &str = "/usr/local/bin/lb-agent";
/// The label buildah adds by itself (not the project's).
const BUILDAH_LABEL: &str = "io.buildah.version";

/// The image under test.
fn image() -> String {
    std::env::var("LB_IMAGE").expect(
        "LB_IMAGE is not set: run through `cargo xtask test`, or `cargo xtask image` and \
         LB_IMAGE=localhost/lb-agent:VERSION",
    )
}

/// `buildah --storage-driver vfs ARGS`: stdout, failing loudly.
fn buildah(args: &[&str]) -> String {
    let out = Command::new("buildah")
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("buildah is missing: `cargo xtask image` installs it");
    assert!(
        out.status.success(),
        "buildah {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A working container of the image, mounted; removed on drop.
struct Mounted {
    container: String,
    root: PathBuf,
}

impl Mounted {
    fn new(image: &str) -> Self {
        let container = buildah(&["from", "--pull-never", image]);
        let root = PathBuf::from(buildah(&["mount", &container]));
        Self { container, root }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("buildah")
            .args(["--storage-driver", "vfs", "rm", &self.container])
            .output();
    }
}

/// Every regular file under `dir`, relative to `root`.
fn files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(root, &path, out);
        } else {
            out.insert(format!(
                "/{}",
                path.strip_prefix(root).unwrap().to_string_lossy()
            ));
        }
    }
}

/// The Dockerfile's instructions: (instruction, rest).
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile"),
    )
    .unwrap();
    // Join continuation lines, drop comments.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (op, rest) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
            (op.to_ascii_uppercase(), rest.trim().to_string())
        })
        .collect();
    instructions
}

/// The instructions of the Dockerfile's final stage.
fn final_stage() -> Vec<(String, String)> {
    let instructions = dockerfile();
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .unwrap();
    instructions[last_from..].to_vec()
}

#[test]
fn the_image_is_the_static_agent_from_scratch_as_the_dockerfile_says() {
    let image = image();
    let inspect: Value = serde_json::from_str(&buildah(&["inspect", "--type", "image", &image]))
        .expect("buildah inspect prints JSON");
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!([BINARY]));
    let labels = config["Labels"].as_object().unwrap();
    let mounted = Mounted::new(&image);
    let mut found = BTreeSet::new();
    files(&mounted.root, &mounted.root, &mut found);
    assert_eq!(
        found,
        BTreeSet::from([BINARY.to_string()]),
        "only the agent"
    );
    // No loader, no libc: it runs only if linked statically.
    let out = Command::new("chroot")
        .arg(&mounted.root)
        .args([BINARY, "--version"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        format!(
            "lb-agent {}",
            labels["org.opencontainers.image.version"].as_str().unwrap()
        ),
        version,
        "the version label is the binary's"
    );
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap();
    let commit = revision.trim_end_matches("-dirty");
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "a source revision: {revision}"
    );

    let stage = final_stage();
    assert_eq!(stage[0], ("FROM".to_string(), "scratch".to_string()));
    let copies: Vec<&String> = stage
        .iter()
        .filter(|(op, _)| op == "COPY")
        .map(|(_, rest)| rest)
        .collect();
    assert_eq!(copies.len(), 1, "{stage:?}");
    assert!(
        copies[0].ends_with(&format!(" {BINARY}")) && copies[0].contains("--chmod=0755"),
        "{}",
        copies[0]
    );
    let entrypoint = stage.iter().find(|(op, _)| op == "ENTRYPOINT").unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&entrypoint.1).unwrap(),
        config["Entrypoint"]
    );
    let label_keys: BTreeSet<String> = stage
        .iter()
        .filter(|(op, _)| op == "LABEL")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    let image_keys: BTreeSet<String> = labels
        .keys()
        .filter(|k| k.as_str() != BUILDAH_LABEL)
        .cloned()
        .collect();
    assert_eq!(label_keys, image_keys, "the same labels");
    let workdir = stage.iter().find(|(op, _)| op == "WORKDIR").unwrap();
    assert_eq!(config["WorkingDir"], Value::String(workdir.1.clone()));
    // `docker build` without --build-arg VERSION labels the same version.
    assert!(
        stage.contains(&(
            "ARG".to_string(),
            format!(
                "VERSION={}",
                labels["org.opencontainers.image.version"].as_str().unwrap()
            )
        )),
        "{stage:?}"
    );
}

#[test]
fn the_dockerfiles_build_stage_runs_what_cargo_xtask_image_runs() {
    // `cargo xtask image` (which built the image under test) runs `setup
    // --build-only` and `build-static`; the build stage may run nothing else
    // of the project's (no bpffs mount, no packages for the tests: an
    // unprivileged `docker build` must get through it) and copies the binary
    // from where `build-static` leaves it.
    let all = dockerfile();
    let last_from = all.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let (build, last) = all.split_at(last_from);
    let runs: Vec<&str> = build
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, rest)| rest.as_str())
        .collect();
    let xtask: Vec<&str> = runs
        .iter()
        .flat_map(|r| r.split("&&"))
        .map(str::trim)
        .filter(|c| c.starts_with("cargo xtask"))
        .collect();
    assert_eq!(
        xtask,
        ["cargo xtask setup --build-only", "cargo xtask build-static"],
        "{runs:?}"
    );
    let workdir = &build.iter().find(|(op, _)| op == "WORKDIR").unwrap().1;
    let copy = &last.iter().find(|(op, _)| op == "COPY").unwrap().1;
    assert!(
        copy.contains(&format!(
            " {workdir}/target/static/x86_64-unknown-linux-musl/release/lb-agent "
        )),
        "the build stage's binary: {copy}"
    );
    // The build context leaves out what was built here.
    let ignore =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.dockerignore"))
            .expect(".dockerignore");
    for dir in ["target/", "lb-ebpf/target/"] {
        assert!(ignore.lines().any(|l| l.trim() == dir), "{dir} not ignored");
    }
}

#[test]
fn the_agent_runs_from_the_images_file_system_and_serves() {
    let image = image();
    let mounted = Mounted::new(&image);
    let topo = ClusterTopology::new().unwrap();
    let _servers = PodServers::start(&topo).unwrap();
    let manifests = ManifestDir::with_examples().unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let mut agent = Agent::start_from_rootfs(
        &topo.node1,
        &mounted.root,
        BINARY,
        &[manifests.path()],
        &["--manifests", &dir],
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let exe = std::fs::read_link(format!("/proc/{}/exe", agent.pid().unwrap())).unwrap();
    assert!(
        exe.starts_with(&mounted.root),
        "the image's binary runs: {}",
        exe.display()
    );
    let all = ["pod1a", "pod1b", "pod1c", "pod2a"];
    let counts = http_distribution(
        &topo.client,
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 96, 0, 10), 80),
        200,
        Duration::from_mins(1),
    );
    assert_spread(&counts, &all, 200, 0.10);
    assert!(agent.stop(), "a clean exit:\n{}", agent.log());
}
