//! Conformance table (issue 13): what kube-proxy does with a Service, as
//! rows. Each row is manifests (Services, EndpointSlices, Endpoints) and
//! this node's facts, run the way the agent runs them: the manifest source
//! reads a directory, the reconciler plans, the plan is written into a real
//! loaded data path, and what the pinned maps hold is read back and
//! compared, as sorted lines, with what kube-proxy would serve. Needs root.
//!
//! One line per frontend in the maps:
//! `default/web 10.96.0.10:80/TCP -> A, B | pods -> A, B, C | kept D | affinity 60s | from 10.0.0.0/8`
//! - `->`: the backends new connections from outside the cluster go to
//!   (flagged for the policy the entry follows: `BACKEND_F_SELECTED`, or
//!   `BACKEND_F_SELECTED_LOCAL` under `SERVICE_F_LOCAL`); `drop` when none and the Service has endpoints elsewhere,
//!   `reject` when it has none (the entry's `SERVICE_F_REJECT`).
//! - `| pods ->`: only on a frontend with a table of its own for pods
//!   (`SERVICE_F_INTERNAL_TABLE`): the backends pods go to (the `Cluster`
//!   policy's, `BACKEND_F_SELECTED`); an external frontend of an
//!   `externalTrafficPolicy: Local` Service (item 2).
//! - `| kept`: backends listed for established flows only (selected for
//!   neither: not ready, terminating, filtered out); kube-proxy has no such
//!   list, its conntrack entries keep such flows.
//! - `| affinity`: the entry's `sessionAffinity: ClientIP` timeout.
//! - `| at`: a node port's (`*:port`) node-port addresses (item 10), as
//!   read back from the maps.
//! - `| from`: the source ranges a frontend flagged `SERVICE_F_SOURCE_RANGES`
//!   checks (its Service port's).
//! - Inconsistencies between flags, tables and backends get a line of their
//!   own, so they fail every row.
//!
//! Besides the frontends: `! service Reason` for each problem the reconcile
//! reports (a conflict, a skipped port), and `? object: message` for each
//! manifest problem (what mirroring left out).
//!
//! Node facts enter as the agent's `NodeInfo` (`--node-name`,
//! `--node-zone`, `--node-ip`): the manifest source reads no Node object.
//! A row may have later stages: new manifests, resynced by the same
//! source and reconciler into the same maps (a claimant leaving, say).

#[path = "conformance/endpoints.rs"]
mod endpoints;
#[path = "conformance/frontends.rs"]
mod frontends;
#[path = "conformance/policies.rs"]
mod policies;
#[path = "conformance/yaml.rs"]
mod yaml;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

use lb_common::{
    IPPROTO_TCP, IPPROTO_UDP, SERVICE_F_INTERNAL_TABLE, SERVICE_F_REJECT, SERVICE_F_SOURCE_RANGES,
};
use lb_tests::packet::TestDatapath;
use lb_userspace::{
    datapath::maps::Maps,
    desired::{AddrFamily, NodeInfo},
    manifest::{self, ManifestCache},
    plan::{AppliedBackend, AppliedFrontend, Planner},
    reconcile::{Reconciler, REUSE_GRACE},
    source::{manifests::ManifestSource, Source},
};

/// One row: a name, this node, and stages of manifests with what the maps
/// then hold.
struct Row {
    name: String,
    node: NodeInfo,
    stages: Vec<(Vec<String>, Vec<String>)>,
}

impl Row {
    /// A row on [`yaml::node1`]: `manifests` give `expected`.
    fn new(name: &str, manifests: Vec<String>, expected: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            node: yaml::node1(),
            stages: vec![(manifests, owned(expected))],
        }
    }

    /// The same row on another node.
    fn on(mut self, node: NodeInfo) -> Self {
        self.node = node;
        self
    }

    /// A next stage: the directory then holds `manifests` only.
    fn then(mut self, manifests: Vec<String>, expected: &[&str]) -> Self {
        self.stages.push((manifests, owned(expected)));
        self
    }

    /// The first stage's expectation replaced (generated lines).
    fn expecting(mut self, expected: Vec<String>) -> Self {
        self.stages[0].1 = expected;
        self
    }
}

fn owned(lines: &[&str]) -> Vec<String> {
    lines.iter().map(ToString::to_string).collect()
}

/// Runs every row in one data path, each fully resynced over what the
/// last left; a row on another node gets a reconciler that adopts the maps,
/// as a restarted agent does. Fails naming each row that differs.
fn check(rows: &[Row]) {
    let started = Instant::now();
    // A 1,000-endpoint table takes 131,071 slots.
    let mut dp = TestDatapath::load_with("conformance", NODE_ADDR, 1 << 18);
    let mut reconciler: Option<(NodeInfo, Reconciler)> = None;
    let mut failures = Vec::new();
    for row in rows {
        if reconciler
            .as_ref()
            .is_none_or(|(node, _)| *node != row.node)
        {
            let maps = &dp.datapath_mut().maps;
            let planner = Planner::adopt(
                maps.applied_frontends().expect("reading the frontends"),
                maps.filter.words(),
                maps.slab.slots(),
                REUSE_GRACE,
            )
            .adopt6(
                maps.applied_frontends6()
                    .expect("reading the IPv6 frontends"),
            );
            // As the agent runs by default (`--ipv6 on`).
            let mut fresh = Reconciler::with_planner(row.node.clone(), planner);
            fresh.plan_ipv6(true);
            reconciler = Some((row.node.clone(), fresh));
        }
        let (_, reconciler) = reconciler.as_mut().expect("a reconciler");
        if let Err(failure) = run(row, &mut dp, reconciler) {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n")
    );
    eprintln!("{} rows in {:?}", rows.len(), started.elapsed());
}

/// The data path's own address (for SNAT; not a fact of the rows).
const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// Each stage of `row` through a manifest source of its own and `reconciler`
/// into `dp`, read back and compared.
fn run(row: &Row, dp: &mut TestDatapath, reconciler: &mut Reconciler) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!(
        "lb-conformance-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("creating the manifest directory");
    let (notify, _events) = tokio::sync::mpsc::unbounded_channel();
    let mut source = ManifestSource::new(dir.clone(), notify).expect("the manifest source");
    let mut outcome = Ok(());
    for (stage, (manifests, expected)) in row.stages.iter().enumerate() {
        write_manifests(&dir, manifests);
        let mut got = manifest_problems(&dir);
        let (cluster, changes) = source.snapshot();
        let done = reconciler.reconcile(cluster, &changes, Instant::now());
        if !done.errors.is_empty() || !done.errors6.is_empty() {
            outcome = Err(format!(
                "row {:?}: plan errors {:?} {:?}",
                row.name, done.errors, done.errors6
            ));
            break;
        }
        dp.datapath_mut()
            .maps
            .apply(&done.plan.ops)
            .expect("applying the plan");
        let mut problems: Vec<String> = done
            .problems
            .iter()
            .map(|p| format!("! {} {}", p.service, p.reason.as_str()))
            .collect();
        problems.sort();
        problems.dedup();
        got.extend(problems);
        got.extend(read_back(dp.pin_dir()));
        got.sort();
        let mut want = expected.clone();
        want.sort();
        if got != want {
            outcome = Err(format!(
                "row {:?}{}:\n  expected:\n    {}\n  read back:\n    {}",
                row.name,
                if row.stages.len() > 1 {
                    format!(", stage {}", stage + 1)
                } else {
                    String::new()
                },
                want.join("\n    "),
                got.join("\n    ")
            ));
            break;
        }
    }
    drop(source);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// Replaces the directory's manifests with `manifests`, one file each.
fn write_manifests(dir: &Path, manifests: &[String]) {
    for entry in std::fs::read_dir(dir).expect("reading the manifest directory") {
        std::fs::remove_file(entry.expect("a directory entry").path()).expect("removing a file");
    }
    for (k, text) in manifests.iter().enumerate() {
        let path: PathBuf = dir.join(format!("{k:02}.yaml"));
        std::fs::write(path, text).expect("writing a manifest");
    }
}

/// `? object: message` for each problem reading the directory finds.
fn manifest_problems(dir: &Path) -> Vec<String> {
    manifest::load_dir(dir, &ManifestCache::default())
        .errors
        .iter()
        .map(|e| {
            format!(
                "? {}: {}",
                e.object.as_deref().unwrap_or("<file>"),
                e.message
            )
        })
        .collect()
}

/// One line per frontend the pinned maps hold (see the module comment).
fn read_back(pin_dir: &Path) -> Vec<String> {
    let maps = Maps::from_pins(pin_dir).expect("opening the pinned maps");
    let mut lines: Vec<String> = maps
        .services
        .keys()
        .map(|key| key.expect("a service key"))
        .filter(|key| key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP)
        .map(|key| {
            format!(
                "a frontend of protocol {} at {}:{}",
                key.proto,
                Ipv4Addr::from(key.addr.to_ne_bytes()),
                u16::from_be(key.port)
            )
        })
        .collect();
    let frontends = maps.applied_frontends().expect("reading the frontends");
    lines.extend(frontends.iter().map(line));
    let frontends6 = maps
        .applied_frontends6()
        .expect("reading the IPv6 frontends");
    lines.extend(frontends6.iter().map(line));
    lines
}

fn line<S: AddrFamily>(f: &AppliedFrontend<S>) -> String {
    let pick = |want: &dyn Fn(&AppliedBackend) -> bool| -> Vec<String> {
        f.backends
            .iter()
            .filter(|(_, b)| want(b))
            .map(|(addr, _)| addr.to_string())
            .collect()
    };
    let outside = pick(&|b| f.selects(b, false));
    let pods = pick(&|b| f.selects(b, true));
    let kept = pick(&|b| !f.selects(b, false) && !f.selects(b, true));
    let flags = f.entry.flags;
    let reject = flags & SERVICE_F_REJECT != 0;
    let list = |backends: &[String]| match (backends.is_empty(), reject) {
        (true, true) => "reject".to_string(),
        (true, false) => "drop".to_string(),
        (false, true) => format!("{} (flagged reject)", backends.join(", ")),
        (false, false) => backends.join(", "),
    };
    let mut parts = vec![format!(
        "{} {} -> {}",
        f.service,
        f.frontend,
        list(&outside)
    )];
    if flags & SERVICE_F_INTERNAL_TABLE != 0 {
        parts.push(format!("pods -> {}", list(&pods)));
        let in_table = f.internal.map_or(0, |t| t.backend_count as usize);
        if in_table != pods.len() {
            parts.push(format!("the pods' table holds {in_table}"));
        }
    } else if pods != outside {
        parts.push(format!(
            "pods -> {} without a table of their own",
            list(&pods)
        ));
    }
    if f.entry.backend_count as usize != outside.len() {
        parts.push(format!("the table holds {}", f.entry.backend_count));
    }
    if !kept.is_empty() {
        parts.push(format!("kept {}", kept.join(", ")));
    }
    if f.entry.affinity_timeout != 0 {
        parts.push(format!("affinity {}s", f.entry.affinity_timeout));
    }
    if S::is_node_port(&f.frontend) {
        let at: Vec<String> = f.node_port_addrs.iter().map(ToString::to_string).collect();
        parts.push(format!("at {}", at.join(", ")));
    }
    // The ranges are the Service port's, shared by its frontends: only the
    // flagged ones (load-balancer IPs) check them.
    if flags & SERVICE_F_SOURCE_RANGES != 0 {
        let ranges: Vec<String> = f.source_ranges.iter().map(ToString::to_string).collect();
        let none = if ranges.is_empty() { "(none)" } else { "" };
        parts.push(format!("from {}{none}", ranges.join(", ")));
    }
    parts.join(" | ")
}

#[test]
fn traffic_policies_and_topology() {
    check(&policies::rows());
}

#[test]
fn endpoints_slices_and_mirroring() {
    check(&endpoints::rows());
}

#[test]
fn frontends_claims_ranges_and_ports() {
    check(&frontends::rows());
}
