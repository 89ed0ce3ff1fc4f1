//! Gathers the node's [`Facts`] for [`super::assess`]: the kernel, bpffs,
//! cgroup v2, the programs on the interfaces, kube-proxy's rules.

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

use aya::programs::{loaded_programs, SchedClassifier, TcAttachType};

use super::{xdp_query, Facts, Interface, KubeProxyRules, Probe};
use crate::datapath::{glob_match, ifindex, interfaces as local_interfaces};

/// `BPF_FS_MAGIC`: the file system type of bpffs.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
/// `CGROUP2_SUPER_MAGIC`: the file system type of a cgroup v2 hierarchy.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
/// kube-proxy's own top-level chains in the nat table (kubelet makes other
/// `KUBE-` chains, which stay after kube-proxy is gone).
const KUBE_PROXY_CHAINS: [&str; 2] = ["KUBE-SERVICES", "KUBE-NODEPORTS"];

/// What `lb-agent check` looks at: the agent's would-be options.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The pin directory.
    pub pin_dir: PathBuf,
    /// The uplinks (`--xdp-iface`).
    pub uplinks: Vec<String>,
    /// The pod interface patterns (`--tc-iface`).
    pub pod_patterns: Vec<String>,
    /// The cgroup of socket-level balancing, if asked for.
    pub socket_lb_cgroup: Option<PathBuf>,
}

/// Looks at the node.
#[must_use]
pub fn gather(options: &CheckOptions) -> Facts {
    let parent = options.pin_dir.parent().unwrap_or(&options.pin_dir);
    Facts {
        kernel_release: kernel_release(),
        jit: match std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable") {
            Ok(text) => text
                .trim()
                .parse()
                .map_or_else(|_| Probe::Unknown(format!("read {text:?}")), Probe::Found),
            Err(e) => Probe::Unknown(format!("/proc/sys/net/core/bpf_jit_enable: {e}")),
        },
        pin_dir: options.pin_dir.clone(),
        bpffs: fs_is(parent, BPF_FS_MAGIC),
        pinned: options.pin_dir.is_dir(),
        socket_lb_cgroup: options
            .socket_lb_cgroup
            .as_ref()
            .map(|path| (path.clone(), fs_is(path, CGROUP2_SUPER_MAGIC))),
        interfaces: interfaces(options),
        kube_proxy: KubeProxyRules {
            iptables_chains: iptables_chains(),
            nft_table: nft_table(),
        },
    }
}

fn kernel_release() -> String {
    // SAFETY: a zeroed utsname filled in by the call.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::uname(&raw mut uts) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c.to_ne_bytes()[0])
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether `path` is on a file system of type `magic`.
fn fs_is(path: &Path, magic: u64) -> Probe<bool> {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return Probe::Unknown("a path with a NUL byte".into());
    };
    // SAFETY: a zeroed statfs filled in by the call; a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        return Probe::Unknown(io::Error::last_os_error().to_string());
    }
    // `f_type` is signed with glibc, unsigned with musl.
    Probe::Found(u64::try_from(stat.f_type).ok() == Some(magic))
}

/// The uplinks, and the existing interfaces matching the pod patterns.
fn interfaces(options: &CheckOptions) -> Vec<Interface> {
    let present = local_interfaces().unwrap_or_default();
    let mut out: Vec<Interface> = options
        .uplinks
        .iter()
        .map(|name| interface(name, true))
        .collect();
    for pattern in &options.pod_patterns {
        let matching: Vec<&String> = present
            .iter()
            .filter(|name| glob_match(pattern, name) && !options.uplinks.contains(name))
            .collect();
        if matching.is_empty() {
            out.push(Interface {
                name: pattern.clone(),
                uplink: false,
                exists: false,
                xdp: Probe::Found(None),
                tcx: Probe::Found(Vec::new()),
            });
        }
        out.extend(matching.into_iter().map(|name| interface(name, false)));
    }
    out
}

fn interface(name: &str, uplink: bool) -> Interface {
    let Some(index) = ifindex(name) else {
        return Interface {
            name: name.to_string(),
            uplink,
            exists: false,
            xdp: Probe::Found(None),
            tcx: Probe::Found(Vec::new()),
        };
    };
    let xdp = match xdp_query::attached_program(index) {
        Ok(None) => Probe::Found(None),
        Ok(Some(id)) => Probe::Found(Some(program_name(id))),
        Err(e) => Probe::Unknown(format!("rtnetlink: {e}")),
    };
    let mut tcx = Vec::new();
    let mut tcx_error = None;
    for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
        match SchedClassifier::query_tcx(name, direction) {
            Ok((_, programs)) => tcx.extend(
                programs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_string()),
            ),
            Err(e) => tcx_error = Some(e.to_string()),
        }
    }
    Interface {
        name: name.to_string(),
        uplink,
        exists: true,
        xdp,
        tcx: tcx_error.map_or(Probe::Found(tcx), Probe::Unknown),
    }
}

/// The kernel name of program `id`, or `id N` when it cannot be read.
fn program_name(id: u32) -> String {
    loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_else(|| format!("id {id}"))
}

/// Runs `program` with `args`: its exit success and stdout, or why not.
fn output(program: &str, args: &[&str]) -> Result<(bool, String), String> {
    match Command::new(program).args(args).output() {
        Ok(out) => Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!("no {program} here")),
        Err(e) => Err(format!("{program}: {e}")),
    }
}

fn iptables_chains() -> Probe<Vec<String>> {
    match output("iptables-save", &["-t", "nat"]) {
        Ok((true, text)) => Probe::Found(kube_proxy_chains(&text)),
        Ok((false, _)) => Probe::Unknown("iptables-save -t nat failed".into()),
        Err(why) => Probe::Unknown(why),
    }
}

/// kube-proxy's chains declared in `iptables-save` output: its top-level
/// ones, and how many per-Service chains.
fn kube_proxy_chains(save: &str) -> Vec<String> {
    let declared = save
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next());
    let mut out = Vec::new();
    let mut per_service = 0;
    for chain in declared {
        if KUBE_PROXY_CHAINS.contains(&chain) {
            out.push(chain.to_string());
        } else if chain.starts_with("KUBE-SVC-") {
            per_service += 1;
        }
    }
    if per_service > 0 {
        out.push(format!("{per_service} KUBE-SVC-* chains"));
    }
    out
}

fn nft_table() -> Probe<bool> {
    match output("nft", &["list", "tables", "ip"]) {
        Ok((true, text)) => Probe::Found(text.lines().any(|l| l.trim() == "table ip kube-proxy")),
        Ok((false, _)) => Probe::Unknown("nft list tables failed".into()),
        Err(why) => Probe::Unknown(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxys_chains_are_found_and_kubelets_are_not() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
                    :KUBE-POSTROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
                    :KUBE-SVC-ABC - [0:0]\n:KUBE-SVC-DEF - [0:0]\n-A KUBE-SERVICES -j KUBE-NODEPORTS\nCOMMIT\n";
        assert_eq!(
            kube_proxy_chains(save),
            ["KUBE-SERVICES", "KUBE-NODEPORTS", "2 KUBE-SVC-* chains"]
        );
        let kubelet_only = "*nat\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\nCOMMIT\n";
        assert!(kube_proxy_chains(kubelet_only).is_empty());
    }

    #[test]
    fn a_missing_tool_is_unknown_not_absent() {
        let err = output("lb-no-such-tool-here", &[]).unwrap_err();
        assert!(err.contains("no lb-no-such-tool-here"), "{err}");
    }
}
