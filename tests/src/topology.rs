//! A small cluster made of namespaces: a LAN bridge joining a client and two
//! nodes; node1 has three pods, node2 one; routes as a CNI would set them.
//!
//! ```text
//!  client 192.168.50.10 ─┐
//!  node1  192.168.50.11 ─┼─ br0 (ns lan)     node1: pod1a 10.244.1.2, pod1b .3, pod1c .4
//!  node2  192.168.50.12 ─┘                   node2: pod2a 10.244.2.2
//! ```
//!
//! Each node reaches the other's pods (10.244.N.0/24) through the other node
//! on the LAN, or with [`Cni::BridgeVxlan`] through a VXLAN overlay whose
//! packets (UDP 8472) cross the LAN between the nodes' addresses only.
//!
//! node1's port on the bridge ([`NODE1_LAN_PORT`], the peer of its uplink)
//! carries the object's `xdp_pass` for the topology's whole life, so that
//! the frames node1's uplink XDP program sends back out with `XDP_TX` are
//! delivered.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_userspace::datapath::{EBPF_OBJECT, XDP_PASS_PROGRAM};

use crate::netns::{remove_stale, sh, Netns};

/// A pod: its namespace and address.
#[derive(Debug)]
pub struct Pod {
    /// Short name ("pod1a"), also what its servers answer.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The node it runs on ("node1" or "node2").
    pub node: String,
    /// Its namespace.
    pub ns: Netns,
}

/// The cluster. Dropping it removes every namespace (and so every link).
pub struct ClusterTopology {
    /// The object whose `xdp_pass` is attached to [`NODE1_LAN_PORT`] while
    /// it lives (set by `build`); detached on drop before any namespace goes.
    lan_xdp_pass: Option<Ebpf>,
    /// Pods, node1's first.
    pub pods: Vec<Pod>,
    /// The client outside the cluster.
    pub client: Netns,
    /// The node the agent runs on.
    pub node1: Netns,
    /// The other node.
    pub node2: Netns,
    /// The LAN.
    pub lan: Netns,
    /// How the senders leave their checksums.
    checksums: SenderChecksums,
    /// How pods are attached to their node.
    cni: Cni,
}

/// How pods are attached to their node, as CNI plugins do it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cni {
    /// A veth per pod, routed by a /32 route on the host side (Calico's,
    /// Cilium's layout).
    Routed,
    /// A veth per pod, enslaved to the node's `cni0` bridge with hairpin
    /// mode on, the node's pod gateway address on the bridge (the bridge
    /// plugin's and flannel's layout).
    Bridge,
    /// [`Cni::Bridge`]'s pods, and the other node's pods reached through a
    /// VXLAN overlay, as flannel's `vxlan` backend sets it up: a `vxlan0`
    /// device per node (VNI 1, UDP 8472, static forwarding entries, no
    /// learning) holding the `.0` address of the node's pod CIDR, the other
    /// node's pod CIDR routed over it to that node's `.0` (a permanent
    /// neighbour entry), and pod links with the overlay's MTU (1450).
    /// Replies of remote backends to pods arrive decapsulated on `vxlan0`.
    BridgeVxlan,
}

impl Cni {
    /// The CNI layout of the default topology: `LB_TEST_CNI` (`routed`,
    /// `bridge` or `vxlan`), routed when unset, so the same end-to-end tests
    /// run on each.
    ///
    /// # Panics
    /// On any other value of `LB_TEST_CNI`.
    #[must_use]
    pub fn from_env() -> Self {
        match std::env::var("LB_TEST_CNI").as_deref() {
            Err(_) | Ok("" | "routed") => Cni::Routed,
            Ok("bridge") => Cni::Bridge,
            Ok("vxlan") => Cni::BridgeVxlan,
            Ok(other) => panic!("LB_TEST_CNI={other:?}: expected routed, bridge or vxlan"),
        }
    }

    /// Whether pods are ports of the node's `cni0` bridge.
    #[must_use]
    pub fn bridged(self) -> bool {
        matches!(self, Cni::Bridge | Cni::BridgeVxlan)
    }
}

/// The firewall rules node1 starts with, as other components of a cluster
/// install them in its FORWARD chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    /// No rule.
    None,
    /// kube-proxy's KUBE-FORWARD rule dropping what conntrack finds INVALID
    /// (firewalld and Calico have the like):
    /// [`ClusterTopology::install_invalid_drop`].
    InvalidDrop,
}

impl Firewall {
    /// node1's firewall in the default topology: `LB_TEST_FIREWALL` (`none`
    /// or `invalid-drop`), none when unset or empty, so the same end-to-end
    /// tests run with and without it.
    ///
    /// # Panics
    /// On any other value of `LB_TEST_FIREWALL`.
    #[must_use]
    pub fn from_env() -> Self {
        match std::env::var("LB_TEST_FIREWALL").as_deref() {
            Err(_) | Ok("" | "none") => Firewall::None,
            Ok("invalid-drop") => Firewall::InvalidDrop,
            Ok(other) => panic!("LB_TEST_FIREWALL={other:?}: expected none or invalid-drop"),
        }
    }
}

/// The VXLAN overlay's device on each node ([`Cni::BridgeVxlan`]).
pub const VXLAN_DEVICE: &str = "vxlan0";
/// The overlay's UDP port: flannel's (Linux's first VXLAN port; IANA's is 4789).
pub const VXLAN_PORT: u16 = 8472;
/// The overlay's MTU: the LAN's 1500 less VXLAN's 50 bytes of headers, as
/// flannel sets it on `vxlan0` and on pod links.
pub const VXLAN_MTU: u16 = 1450;

/// How the hosts beyond node1's uplink send their L4 checksums.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SenderChecksums {
    /// Complete: TX checksum offload off at every sender, as a real wire
    /// delivers them (XDP on node1's veth uplink may rewrite them).
    Complete,
    /// Partial, as Linux leaves them by default on a veth (TX offload on);
    /// node1 completes checksums in software on its uplink's way out
    /// (`ethtool -K eth0 tx off`), where a wrong update would show.
    Partial,
}

/// kube-proxy's rule in node1's FORWARD chain, after `iptables -A` or `-C`.
const INVALID_DROP: [&str; 7] = [
    "FORWARD",
    "-m",
    "conntrack",
    "--ctstate",
    "INVALID",
    "-j",
    "DROP",
];

/// node1's uplink (XDP).
pub const NODE1_UPLINK: &str = "eth0";
/// node1's port on the LAN bridge (the peer of its uplink, in the LAN's
/// namespace). It carries the object's `xdp_pass` (native mode) for the
/// topology's whole life: the uplink's XDP program sends frames back out
/// with `XDP_TX`, which a veth queues on its peer's ring, and the kernel
/// wakes the peer's NAPI for them only when the peer has an XDP program of
/// its own (`veth_xdp_flush`); without one the frame waits for the next
/// packet sent over the veth, or is dropped when the peer has no NAPI.
pub const NODE1_LAN_PORT: &str = "lan1";
/// node1's pod interfaces (TC).
pub const NODE1_POD_IFACES: &str = "vpod*";
/// node1's address.
pub const NODE1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// node2's address.
pub const NODE2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 12);

impl ClusterTopology {
    /// Builds the whole topology, senders completing their checksums.
    pub fn new() -> Result<Self> {
        Self::with_checksums(SenderChecksums::Complete)
    }

    /// Builds the whole topology with senders' checksums as `checksums` says
    /// (pods attached as [`Cni::from_env`] says).
    pub fn with_checksums(checksums: SenderChecksums) -> Result<Self> {
        Self::with(checksums, Cni::from_env())
    }

    /// Builds the whole topology: senders' checksums as `checksums` says,
    /// pods attached as `cni` says.
    pub fn with(checksums: SenderChecksums, cni: Cni) -> Result<Self> {
        crate::require_root();
        remove_stale();
        let lan = Netns::new("lan")?;
        let client = Netns::new("client")?;
        let node1 = Netns::new("node1")?;
        let node2 = Netns::new("node2")?;
        let mut topo = Self {
            lan_xdp_pass: None,
            pods: Vec::new(),
            client,
            node1,
            node2,
            lan,
            checksums,
            cni,
        };
        topo.build()?;
        Ok(topo)
    }

    fn build(&mut self) -> Result<()> {
        let lan = self.lan.name().to_string();
        ip(&lan, "link add br0 type bridge")?;
        ip(&lan, "link set br0 up")?;
        ip(&lan, "link set lo up")?;
        for (i, (ns, addr)) in [
            (&self.client, "192.168.50.10/24"),
            (&self.node1, "192.168.50.11/24"),
            (&self.node2, "192.168.50.12/24"),
        ]
        .into_iter()
        .enumerate()
        {
            attach_to_lan(&lan, &format!("lan{i}"), ns, addr, self.checksums)?;
        }
        self.lan_xdp_pass = Some(self.lan_takes_xdp_tx()?);
        if self.checksums == SenderChecksums::Partial {
            self.node1.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        if Firewall::from_env() == Firewall::InvalidDrop {
            self.install_invalid_drop()?;
        }
        ip(
            self.client.name(),
            "route add 10.96.0.0/12 via 192.168.50.11",
        )?;
        for node in [&self.node1, &self.node2] {
            for key in [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                "net.ipv4.conf.eth0.rp_filter=0",
            ] {
                node.exec(&["sysctl", "-qw", key])?;
            }
        }
        if self.cni == Cni::BridgeVxlan {
            self.overlay()?;
        } else {
            ip(
                self.node1.name(),
                "route add 10.244.2.0/24 via 192.168.50.12",
            )?;
            ip(
                self.node2.name(),
                "route add 10.244.1.0/24 via 192.168.50.11",
            )?;
        }
        if self.cni.bridged() {
            for (node, index) in [(&self.node1, 1), (&self.node2, 2)] {
                ip(node.name(), "link add cni0 type bridge")?;
                ip(
                    node.name(),
                    &format!("addr add 10.244.{index}.1/24 dev cni0"),
                )?;
                ip(node.name(), "link set cni0 up")?;
                node.exec(&["sysctl", "-qw", "net.ipv4.conf.cni0.rp_filter=0"])?;
            }
        }
        for (name, last, node) in [
            ("pod1a", 2, 1),
            ("pod1b", 3, 1),
            ("pod1c", 4, 1),
            ("pod2a", 2, 2),
        ] {
            self.add_pod(name, Ipv4Addr::new(10, 244, node, last), node)?;
        }
        Ok(())
    }

    /// Lets node1's uplink peer take `XDP_TX` frames (see
    /// [`NODE1_LAN_PORT`]): the object's `xdp_pass` on that port, in native
    /// mode. The program stays attached while the returned object lives.
    fn lan_takes_xdp_tx(&self) -> Result<Ebpf> {
        self.lan
            .run(|| -> Result<Ebpf> {
                // Only xdp_pass runs: the Maglev slab need not take its 64 MiB.
                let mut ebpf = EbpfLoader::new()
                    .map_max_entries(lb_common::MAP_MAGLEV, 2)
                    .load(EBPF_OBJECT)?;
                let pass: &mut Xdp = ebpf
                    .program_mut(XDP_PASS_PROGRAM)
                    .context("the object has no xdp_pass")?
                    .try_into()?;
                pass.load()?;
                pass.attach(NODE1_LAN_PORT, XdpMode::Driver)?;
                Ok(ebpf)
            })?
            .with_context(|| format!("xdp_pass on {NODE1_LAN_PORT}, node1's uplink peer"))
    }

    /// The VXLAN overlay between the nodes ([`Cni::BridgeVxlan`]), as
    /// flannel's `vxlan` backend programs it: per node a `vxlan0` (VNI 1, UDP
    /// 8472, over `eth0`, no learning) with a fixed MAC address and the `.0`
    /// of its pod CIDR; towards the other node a forwarding entry (its
    /// `vxlan0` MAC behind its LAN address), a permanent neighbour (its `.0`
    /// at that MAC) and its pod CIDR routed via its `.0` over `vxlan0`.
    fn overlay(&self) -> Result<()> {
        let nodes = [(&self.node1, 1u8, NODE1_IP), (&self.node2, 2, NODE2_IP)];
        for (node, index, addr) in nodes {
            let name = node.name();
            ip(
                name,
                &format!(
                    "link add {VXLAN_DEVICE} address {} type vxlan id 1 dstport {VXLAN_PORT} \
                     local {addr} dev eth0 nolearning",
                    vxlan_mac(index)
                ),
            )?;
            ip(name, &format!("link set {VXLAN_DEVICE} mtu {VXLAN_MTU}"))?;
            ip(
                name,
                &format!("addr add 10.244.{index}.0/32 dev {VXLAN_DEVICE}"),
            )?;
            ip(name, &format!("link set {VXLAN_DEVICE} up"))?;
            node.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{VXLAN_DEVICE}.rp_filter=0"),
            ])?;
        }
        for ((node, _, _), (_, other, other_addr)) in [(nodes[0], nodes[1]), (nodes[1], nodes[0])] {
            let (name, mac) = (node.name(), vxlan_mac(other));
            sh(&[
                "bridge",
                "-n",
                name,
                "fdb",
                "append",
                &mac,
                "dev",
                VXLAN_DEVICE,
                "dst",
                &other_addr.to_string(),
            ])?;
            ip(
                name,
                &format!(
                    "neigh add 10.244.{other}.0 lladdr {mac} dev {VXLAN_DEVICE} nud permanent"
                ),
            )?;
            ip(
                name,
                &format!(
                    "route add 10.244.{other}.0/24 via 10.244.{other}.0 dev {VXLAN_DEVICE} onlink"
                ),
            )?;
        }
        Ok(())
    }

    fn add_pod(&mut self, name: &str, pod_ip: Ipv4Addr, node_index: u8) -> Result<()> {
        let ns = Netns::new(name)?;
        let node = if node_index == 1 {
            &self.node1
        } else {
            &self.node2
        };
        let host_if = format!("v{name}");
        let gateway = format!("10.244.{node_index}.1");
        ip(
            node.name(),
            &format!(
                "link add {host_if} type veth peer name eth0 netns {}",
                ns.name()
            ),
        )?;
        if self.cni == Cni::BridgeVxlan {
            // Pod links carry the overlay's MTU, both ends (as flannel's CNI sets them).
            ip(node.name(), &format!("link set {host_if} mtu {VXLAN_MTU}"))?;
            ip(ns.name(), &format!("link set eth0 mtu {VXLAN_MTU}"))?;
        }
        if self.cni.bridged() {
            ip(node.name(), &format!("link set {host_if} master cni0"))?;
            ip(
                node.name(),
                &format!("link set {host_if} type bridge_slave hairpin on"),
            )?;
            ip(node.name(), &format!("link set {host_if} up"))?;
        } else {
            ip(node.name(), &format!("addr add {gateway}/32 dev {host_if}"))?;
            ip(node.name(), &format!("link set {host_if} up"))?;
            ip(node.name(), &format!("route add {pod_ip}/32 dev {host_if}"))?;
        }
        node.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{host_if}.rp_filter=0"),
        ])?;
        ip(ns.name(), &format!("addr add {pod_ip}/32 dev eth0"))?;
        ip(ns.name(), "link set eth0 up")?;
        ip(ns.name(), "link set lo up")?;
        ip(
            ns.name(),
            &format!("route add {gateway} dev eth0 scope link"),
        )?;
        ip(ns.name(), &format!("route add default via {gateway}"))?;
        if node_index == 2 && self.checksums == SenderChecksums::Complete {
            // node2's pods reach node1 over the wire, where XDP sees them.
            ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        self.pods.push(Pod {
            name: name.to_string(),
            ip: pod_ip,
            node: format!("node{node_index}"),
            ns,
        });
        Ok(())
    }

    /// Another host on the LAN: a namespace of its own (`role`), its `eth0`
    /// on the bridge through the LAN's port `port`, with `addr` (a CIDR of
    /// 192.168.50.0/24) and no routes beyond the LAN. Removed on drop, before
    /// the topology if it is dropped first.
    pub fn add_lan_host(&self, role: &str, port: &str, addr: &str) -> Result<Netns> {
        let ns = Netns::new(role)?;
        attach_to_lan(self.lan.name(), port, &ns, addr, SenderChecksums::Complete)?;
        Ok(ns)
    }

    /// How pods are attached to their node.
    #[must_use]
    pub fn cni(&self) -> Cni {
        self.cni
    }

    /// Appends kube-proxy's rule dropping what conntrack finds INVALID
    /// (`-m conntrack --ctstate INVALID -j DROP`) to node1's FORWARD chain,
    /// unless it is there already ([`Firewall::InvalidDrop`] put it there).
    pub fn install_invalid_drop(&self) -> Result<()> {
        let check = [&["iptables", "-C"][..], &INVALID_DROP].concat();
        if self.node1.exec(&check).is_err() {
            self.node1
                .exec(&[&["iptables", "-A"][..], &INVALID_DROP].concat())?;
        }
        Ok(())
    }

    /// The packets node1's INVALID drop rule ([`Self::install_invalid_drop`])
    /// has dropped; fails if the rule is not there.
    pub fn invalid_drops(&self) -> Result<u64> {
        let out = self
            .node1
            .exec(&["iptables", "-L", "FORWARD", "-n", "-v", "-x"])?;
        let rules = String::from_utf8_lossy(&out.stdout);
        rules
            .lines()
            .find(|rule| rule.contains("ctstate INVALID") && rule.contains(" DROP "))
            .and_then(|rule| rule.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no INVALID drop rule in node1's FORWARD chain:\n{rules}"))
    }

    /// The pod called `name`.
    #[must_use]
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .expect("no such pod")
    }
}

impl Drop for ClusterTopology {
    fn drop(&mut self) {
        // Pods first, then the LAN port's xdp_pass, then nodes, client and
        // LAN (fields drop in order after this).
        self.pods.clear();
        drop(self.lan_xdp_pass.take());
    }
}

/// Joins `ns` to the LAN's bridge: a veth from the LAN's `port` to `eth0` in
/// `ns`, with `addr`, both ends up, and (with complete `checksums`)
/// transmit checksum offload off on both.
fn attach_to_lan(
    lan: &str,
    port: &str,
    ns: &Netns,
    addr: &str,
    checksums: SenderChecksums,
) -> Result<()> {
    ip(
        lan,
        &format!(
            "link add {port} type veth peer name eth0 netns {}",
            ns.name()
        ),
    )?;
    ip(lan, &format!("link set {port} master br0 up"))?;
    ip(ns.name(), &format!("addr add {addr} dev eth0"))?;
    ip(ns.name(), "link set eth0 up")?;
    ip(ns.name(), "link set lo up")?;
    if checksums == SenderChecksums::Partial {
        return Ok(());
    }
    // A real wire delivers complete checksums; XDP cannot finish partial ones.
    ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
    sh(&[
        "ip", "netns", "exec", lan, "ethtool", "-K", port, "tx", "off",
    ])?;
    Ok(())
}

/// The fixed MAC address of node `index`'s `vxlan0` (locally administered).
fn vxlan_mac(index: u8) -> String {
    format!("0e:00:00:00:00:{index:02x}")
}

fn ip(ns: &str, args: &str) -> Result<()> {
    let mut full = vec!["ip", "-n", ns];
    full.extend(args.split_whitespace());
    sh(&full).map(|_| ())
}
