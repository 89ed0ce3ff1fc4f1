//! `lb-agent check`: what on this node would stop the agent, or conflict
//! with it, before kube-proxy is replaced. [`probe`] gathers the node's
//! facts (the only I/O); [`assess`] decides, purely, what each one means.

pub mod probe;
mod xdp_query;

use std::{fmt, path::PathBuf};

use serde::Serialize;

/// The oldest kernel the programs load on: XDP programs that take
/// multi-buffer frames (`BPF_F_XDP_HAS_FRAGS`) came with Linux 5.18.
pub const MIN_KERNEL: (u32, u32) = (5, 18);
/// The first kernel with TCX links; older ones get netlink TC filters.
pub const TCX_KERNEL: (u32, u32) = (6, 6);
/// The kernel names (15 characters at most) of this agent's own programs.
pub const OWN_PROGRAMS: [&str; 6] = [
    "lb_xdp",
    "lb_tc",
    "lb_tc_uplink",
    "lb_tc_uplink_ha",
    "lb_tc_egress",
    "xdp_pass",
];

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fine.
    Ok,
    /// Works, but worth knowing (or could not be checked).
    Warn,
    /// The agent would fail, or would fight another component.
    Block,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked.
    pub check: String,
    /// How much it matters.
    pub severity: Severity,
    /// What was found, and what to do about it.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Ok => "ok   ",
            Severity::Warn => "WARN ",
            Severity::Block => "BLOCK",
        };
        write!(f, "{tag} {}: {}", self.check, self.detail)
    }
}

/// A probe's result: what it found, or why it could not look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe<T> {
    /// The probe ran.
    Found(T),
    /// The probe could not run (a missing tool, no permission).
    Unknown(String),
}

/// An interface the agent would attach to, as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Whether it is an uplink (XDP or TC ingress) or a pod interface.
    pub uplink: bool,
    /// Whether it exists.
    pub exists: bool,
    /// The name of the XDP program attached, if any.
    pub xdp: Probe<Option<String>>,
    /// The names of the TCX programs attached (ingress and egress).
    pub tcx: Probe<Vec<String>>,
}

/// kube-proxy's rules on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeProxyRules {
    /// kube-proxy's chains in the iptables nat table (`KUBE-SERVICES`, ...).
    pub iptables_chains: Probe<Vec<String>>,
    /// Whether nftables holds kube-proxy's table (`ip kube-proxy`).
    pub nft_table: Probe<bool>,
}

/// What [`probe`] found on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// `uname -r`.
    pub kernel_release: String,
    /// `net.core.bpf_jit_enable`.
    pub jit: Probe<u8>,
    /// The pin directory and whether its parent is a bpffs mount.
    pub pin_dir: PathBuf,
    /// Whether the pin directory's parent is bpffs.
    pub bpffs: Probe<bool>,
    /// Whether an agent's pins are already there.
    pub pinned: bool,
    /// The cgroup v2 directory for socket-level balancing, if asked for,
    /// and whether it is one.
    pub socket_lb_cgroup: Option<(PathBuf, Probe<bool>)>,
    /// The uplinks and pod interfaces.
    pub interfaces: Vec<Interface>,
    /// kube-proxy's rules.
    pub kube_proxy: KubeProxyRules,
}

/// What each fact means for the agent.
#[must_use]
pub fn assess(facts: &Facts) -> Vec<Finding> {
    let mut out = vec![kernel(&facts.kernel_release), jit(&facts.jit), bpffs(facts)];
    if let Some((path, cgroup2)) = &facts.socket_lb_cgroup {
        out.push(socket_lb_cgroup(path, cgroup2));
    }
    if facts.interfaces.iter().all(|i| !i.uplink) {
        out.push(finding(
            "uplink",
            Severity::Warn,
            "none given (--xdp-iface): interfaces not checked for other programs",
        ));
    }
    for iface in &facts.interfaces {
        out.extend(interface(iface));
    }
    out.extend(kube_proxy(&facts.kube_proxy));
    out
}

/// The exit status for `findings`: 1 when something blocks, else 0.
#[must_use]
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.severity == Severity::Block))
}

fn finding(check: &str, severity: Severity, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.to_string(),
        severity,
        detail: detail.into(),
    }
}

/// The kernel's major and minor version, from a release like `6.6.12-foo`.
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn kernel(release: &str) -> Finding {
    let check = "kernel";
    match version(release) {
        None => finding(
            check,
            Severity::Warn,
            format!("cannot read the version of {release:?}"),
        ),
        Some(v) if v < MIN_KERNEL => finding(
            check,
            Severity::Block,
            format!(
                "Linux {release}: the programs need {}.{} or later (multi-buffer XDP)",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        Some(v) if v < TCX_KERNEL => finding(
            check,
            Severity::Warn,
            format!(
                "Linux {release}: no TCX before {}.{}; TC programs are attached as netlink \
                 filters (on a clsact qdisc), which other tools may replace",
                TCX_KERNEL.0, TCX_KERNEL.1
            ),
        ),
        Some(_) => finding(check, Severity::Ok, format!("Linux {release}")),
    }
}

fn jit(jit: &Probe<u8>) -> Finding {
    let check = "BPF JIT";
    match jit {
        Probe::Found(0) => finding(
            check,
            Severity::Warn,
            "off (net.core.bpf_jit_enable = 0): programs run interpreted, several times slower",
        ),
        Probe::Found(_) => finding(check, Severity::Ok, "on"),
        Probe::Unknown(why) => finding(check, Severity::Warn, format!("not checked: {why}")),
    }
}

fn bpffs(facts: &Facts) -> Finding {
    let check = "bpffs";
    let parent = facts.pin_dir.parent().map_or_else(
        || facts.pin_dir.display().to_string(),
        |p| p.display().to_string(),
    );
    match &facts.bpffs {
        Probe::Found(true) if facts.pinned => finding(
            check,
            Severity::Ok,
            format!(
                "{} holds an agent's pins: the next agent adopts them (flows carry on)",
                facts.pin_dir.display()
            ),
        ),
        Probe::Found(true) => finding(check, Severity::Ok, format!("{parent} is bpffs")),
        Probe::Found(false) => finding(
            check,
            Severity::Block,
            format!(
                "{parent} is not bpffs: mount it (mount -t bpf bpf {parent}); without it \
                 nothing is pinned and a restart would drop every flow"
            ),
        ),
        Probe::Unknown(why) => finding(check, Severity::Block, format!("{parent}: {why}")),
    }
}

fn socket_lb_cgroup(path: &std::path::Path, cgroup2: &Probe<bool>) -> Finding {
    let check = "cgroup v2";
    match cgroup2 {
        Probe::Found(true) => finding(check, Severity::Ok, format!("{}", path.display())),
        Probe::Found(false) => finding(
            check,
            Severity::Block,
            format!(
                "{} is not a cgroup v2 directory: socket-level balancing cannot attach \
                 (on a hybrid host try its unified directory, or --socket-lb off)",
                path.display()
            ),
        ),
        Probe::Unknown(why) => {
            finding(check, Severity::Block, format!("{}: {why}", path.display()))
        }
    }
}

fn is_own(program: &str) -> bool {
    OWN_PROGRAMS.contains(&program)
}

fn interface(iface: &Interface) -> Vec<Finding> {
    let check = format!("interface {}", iface.name);
    if !iface.exists {
        let severity = if iface.uplink {
            Severity::Block
        } else {
            Severity::Ok
        };
        let detail = if iface.uplink {
            "does not exist"
        } else {
            "none matches yet (pod interfaces are attached as they appear)"
        };
        return vec![finding(&check, severity, detail)];
    }
    let mut out = Vec::new();
    match &iface.xdp {
        Probe::Found(Some(name)) if !is_own(name) => out.push(finding(
            &check,
            if iface.uplink {
                Severity::Block
            } else {
                Severity::Warn
            },
            format!(
                "XDP program {name:?} of another tool is attached: an interface has one \
                 XDP program, and the agent would replace it"
            ),
        )),
        Probe::Found(_) => {}
        Probe::Unknown(why) => out.push(finding(
            &check,
            Severity::Warn,
            format!("XDP not checked: {why}"),
        )),
    }
    match &iface.tcx {
        Probe::Found(names) => {
            let others: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|n| !is_own(n))
                .collect();
            if !others.is_empty() {
                out.push(finding(
                    &check,
                    Severity::Warn,
                    format!(
                        "TC programs of other tools attached ({}): they run beside the \
                         agent's and may translate the same packets",
                        others.join(", ")
                    ),
                ));
            }
        }
        Probe::Unknown(why) => out.push(finding(
            &check,
            Severity::Warn,
            format!("TCX not checked: {why}"),
        )),
    }
    if out.is_empty() {
        out.push(finding(&check, Severity::Ok, "no other programs attached"));
    }
    out
}

fn kube_proxy(rules: &KubeProxyRules) -> Vec<Finding> {
    let check = "kube-proxy";
    let advice = "lb-agent and kube-proxy may run side by side while migrating; to replace \
                  it remove kube-proxy's DaemonSet, then run `kube-proxy --cleanup` here \
                  (or reboot)";
    let mut out = Vec::new();
    match &rules.iptables_chains {
        Probe::Found(chains) if !chains.is_empty() => out.push(finding(
            check,
            Severity::Block,
            format!(
                "its iptables chains are present ({}): {advice}",
                chains.join(", ")
            ),
        )),
        Probe::Found(_) => {}
        Probe::Unknown(why) => out.push(finding(
            check,
            Severity::Warn,
            format!("iptables not checked: {why}"),
        )),
    }
    match &rules.nft_table {
        Probe::Found(true) => out.push(finding(
            check,
            Severity::Block,
            format!("its nftables table `ip kube-proxy` is present: {advice}"),
        )),
        Probe::Found(false) => {}
        Probe::Unknown(why) => out.push(finding(
            check,
            Severity::Warn,
            format!("nftables not checked: {why}"),
        )),
    }
    if out.is_empty() {
        out.push(finding(check, Severity::Ok, "no rules of kube-proxy found"));
    }
    out
}

#[cfg(test)]
mod tests;
