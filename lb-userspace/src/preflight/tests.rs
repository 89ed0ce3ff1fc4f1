//! What each fact means: [`assess`] over hand-made facts.

use std::path::PathBuf;

use super::*;

/// A node where everything is fine.
fn fine() -> Facts {
    Facts {
        kernel_release: "6.8.0-45-generic".into(),
        jit: Probe::Found(1),
        pin_dir: PathBuf::from("/sys/fs/bpf/lb-agent"),
        bpffs: Probe::Found(true),
        pinned: false,
        socket_lb_cgroup: Some((PathBuf::from("/sys/fs/cgroup"), Probe::Found(true))),
        interfaces: vec![
            Interface {
                name: "eth0".into(),
                uplink: true,
                exists: true,
                xdp: Probe::Found(Some("lb_xdp".into())),
                tcx: Probe::Found(vec!["lb_tc_uplink_ha".into()]),
            },
            Interface {
                name: "lxc12".into(),
                uplink: false,
                exists: true,
                xdp: Probe::Found(None),
                tcx: Probe::Found(vec![]),
            },
        ],
        kube_proxy: KubeProxyRules {
            iptables_chains: Probe::Found(vec![]),
            nft_table: Probe::Found(false),
        },
    }
}

fn blocks(findings: &[Finding]) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Block)
        .collect()
}

#[test]
fn a_fine_node_passes_with_our_own_programs_attached() {
    let findings = assess(&fine());
    assert!(
        findings.iter().all(|f| f.severity == Severity::Ok),
        "{findings:#?}"
    );
    assert_eq!(exit_code(&findings), 0);
}

#[test]
fn kube_proxys_rules_block_and_say_how_to_remove_them() {
    let mut facts = fine();
    facts.kube_proxy.iptables_chains = Probe::Found(vec!["KUBE-SERVICES".into()]);
    facts.kube_proxy.nft_table = Probe::Found(true);
    let findings = assess(&facts);
    let blocked = blocks(&findings);
    assert_eq!(blocked.len(), 2, "{findings:#?}");
    assert!(blocked[0].detail.contains("KUBE-SERVICES"));
    assert!(blocked[0].detail.contains("kube-proxy --cleanup"));
    assert!(blocked[1].detail.contains("ip kube-proxy"));
    assert_eq!(exit_code(&findings), 1);
}

#[test]
fn another_tools_xdp_program_blocks_on_an_uplink() {
    let mut facts = fine();
    facts.interfaces[0].xdp = Probe::Found(Some("cil_xdp_entry".into()));
    let findings = assess(&facts);
    let blocked = blocks(&findings);
    assert_eq!(blocked.len(), 1, "{findings:#?}");
    assert_eq!(blocked[0].check, "interface eth0");
    assert!(blocked[0].detail.contains("cil_xdp_entry"));
}

#[test]
fn another_tools_tc_program_warns() {
    let mut facts = fine();
    facts.interfaces[1].tcx = Probe::Found(vec!["cil_from_container".into(), "lb_tc".into()]);
    let findings = assess(&facts);
    assert_eq!(exit_code(&findings), 0);
    let warned: Vec<_> = findings
        .iter()
        .filter(|f| f.severity == Severity::Warn)
        .collect();
    assert_eq!(warned.len(), 1, "{findings:#?}");
    assert!(warned[0].detail.contains("cil_from_container"));
    assert!(!warned[0].detail.contains("lb_tc"));
}

#[test]
fn a_missing_uplink_or_bpffs_or_cgroup2_blocks() {
    let mut facts = fine();
    facts.interfaces[0].exists = false;
    facts.bpffs = Probe::Found(false);
    facts.socket_lb_cgroup = Some((PathBuf::from("/sys/fs/cgroup"), Probe::Found(false)));
    let findings = assess(&facts);
    let checks: Vec<&str> = blocks(&findings).iter().map(|f| f.check.as_str()).collect();
    assert_eq!(
        checks,
        ["bpffs", "cgroup v2", "interface eth0"],
        "{findings:#?}"
    );
}

#[test]
fn a_pod_pattern_without_interfaces_yet_is_fine() {
    let mut facts = fine();
    facts.interfaces[1].exists = false;
    assert_eq!(exit_code(&assess(&facts)), 0);
}

#[test]
fn kernels_are_judged_by_version() {
    for (release, severity) in [
        ("5.15.0-100-generic", Severity::Block),
        ("5.18.0", Severity::Warn),
        ("6.1.0-21-amd64", Severity::Warn),
        ("6.6.12", Severity::Ok),
        ("6.18.44-fc-v1272", Severity::Ok),
        ("weird", Severity::Warn),
    ] {
        let mut facts = fine();
        facts.kernel_release = release.into();
        let findings = assess(&facts);
        assert_eq!(findings[0].check, "kernel");
        assert_eq!(findings[0].severity, severity, "{release}");
    }
}

#[test]
fn what_could_not_be_checked_warns_but_does_not_block() {
    let mut facts = fine();
    facts.jit = Probe::Unknown("no /proc".into());
    facts.kube_proxy.iptables_chains = Probe::Unknown("no iptables-save here".into());
    facts.kube_proxy.nft_table = Probe::Unknown("no nft here".into());
    facts.interfaces[0].tcx = Probe::Unknown("EINVAL".into());
    let findings = assess(&facts);
    assert_eq!(exit_code(&findings), 0);
    let warns = findings
        .iter()
        .filter(|f| f.severity == Severity::Warn)
        .count();
    assert_eq!(warns, 4, "{findings:#?}");
}

#[test]
fn an_agents_pins_are_reported_as_adopted() {
    let mut facts = fine();
    facts.pinned = true;
    let findings = assess(&facts);
    assert!(findings
        .iter()
        .any(|f| f.check == "bpffs" && f.detail.contains("adopts")));
}
