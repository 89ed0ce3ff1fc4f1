//! `lb-agent check` on a namespace standing in for a node: kube-proxy's
//! chains and another tool's XDP program on the uplink block (exit 1, each
//! named); once they are gone, and with the agent's own programs attached,
//! nothing blocks (exit 0). Needs root.

use std::{path::PathBuf, process::Command, time::Duration};

use aya::{
    programs::{Xdp, XdpMode},
    EbpfLoader,
};
use lb_tests::{
    agent::{agent_bin, Agent, ManifestDir},
    netns::Netns,
};
use lb_userspace::datapath::{EBPF_OBJECT, XDP_PARSE_PROGRAM};

/// The uplink of the namespace (a veth; its peer stays in the namespace).
const UPLINK: &str = "up0";

/// `lb-agent check` in `ns`: exit code and stdout.
fn check(ns: &Netns, pin_dir: &str) -> (i32, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .arg("--")
        .arg(agent_bin().unwrap())
        .args([
            "check",
            "--xdp-iface",
            UPLINK,
            "--tc-iface",
            "pod*",
            "--pin-dir",
            pin_dir,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_names_what_blocks_and_passes_once_it_is_gone() {
    lb_tests::require_root();
    lb_tests::require_bpffs();
    let node = Netns::new("chk").unwrap();
    for cmd in [
        &[
            "ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "up1",
        ][..],
        &["ip", "link", "set", UPLINK, "up"],
        &["ip", "link", "set", "up1", "up"],
        &["ip", "addr", "add", "10.244.9.1/24", "dev", UPLINK],
        &["iptables", "-t", "nat", "-N", "KUBE-SERVICES"],
        &["iptables", "-t", "nat", "-N", "KUBE-NODEPORTS"],
    ] {
        node.exec(cmd).unwrap();
    }
    // Another tool's XDP program on the uplink: one the agent never
    // attaches anywhere (the benchmarks' parse-only baseline).
    let foreign = node
        .run(|| -> anyhow::Result<aya::Ebpf> {
            let mut ebpf = EbpfLoader::new()
                .map_max_entries(lb_common::MAP_MAGLEV, 2)
                .load(EBPF_OBJECT)?;
            let xdp: &mut Xdp = ebpf.program_mut(XDP_PARSE_PROGRAM).unwrap().try_into()?;
            xdp.load()?;
            xdp.attach(UPLINK, XdpMode::Driver)?;
            Ok(ebpf)
        })
        .unwrap()
        .unwrap();
    let pin_dir = format!("/sys/fs/bpf/lbt{}chk", std::process::id());
    let (code, text) = check(&node, &pin_dir);
    assert_eq!(code, 1, "{text}");
    let blocked: Vec<&str> = text.lines().filter(|l| l.starts_with("BLOCK")).collect();
    assert_eq!(blocked.len(), 2, "{text}");
    assert!(
        blocked[0].contains("interface up0") && blocked[0].contains(XDP_PARSE_PROGRAM),
        "{text}"
    );
    assert!(
        blocked[1].contains("kube-proxy")
            && blocked[1].contains("KUBE-SERVICES")
            && blocked[1].contains("KUBE-NODEPORTS"),
        "{text}"
    );

    drop(foreign);
    node.exec(&["iptables", "-t", "nat", "-X", "KUBE-SERVICES"])
        .unwrap();
    node.exec(&["iptables", "-t", "nat", "-X", "KUBE-NODEPORTS"])
        .unwrap();
    // The agent's own programs on the uplink are no conflict.
    let manifests = ManifestDir::new().unwrap();
    let dir = manifests.path().to_str().unwrap().to_string();
    let mut agent = Agent::start_bare(
        &node,
        &[
            "--manifests",
            &dir,
            "--xdp-iface",
            UPLINK,
            "--uplink-hook",
            "tc",
        ],
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let agent_pins = agent.pin_dir().to_string_lossy().into_owned();
    let (code, text) = check(&node, &agent_pins);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ok    interface up0: no other programs attached"),
        "{text}"
    );
    assert!(text.contains("holds an agent's pins"), "{text}");
    assert!(!PathBuf::from(&pin_dir).exists());
}
