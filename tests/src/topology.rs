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
//! [`ClusterTopology::with_family`] builds the same cluster IPv6-only or
//! dual-stack ([`Family`]): client [`CLIENT_IP6`], nodes [`NODE1_IP6`] and
//! [`NODE2_IP6`] on `fd00:50::/64`, pods at [`pod_ip6`] in their node's
//! [`pod_prefix6`], the client's route to [`SERVICE_CIDR6`] via node1.
//!
//! node1's port on the bridge ([`NODE1_LAN_PORT`], the peer of its uplink)
//! carries the object's `xdp_pass` for the topology's whole life, so that
//! the frames node1's uplink XDP program sends back out with `XDP_TX` are
//! delivered.

mod family;
mod layout;
mod overlay;
mod pod;

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_userspace::datapath::{EBPF_OBJECT, XDP_PASS_PROGRAM};

pub use self::family::{
    pod_ip6, pod_prefix6, Family, CLIENT_IP6, LAN_PREFIX_LEN6, NODE1_IP6, NODE2_IP6,
    POD_PREFIX_LEN6, SERVICE_CIDR6, VXLAN6_MTU,
};
use self::{family::enable_ipv6, overlay::overlay_mtu};
pub use self::{
    layout::{Cni, Firewall, SenderChecksums},
    pod::Pod,
};
use crate::netns::{remove_stale, sh, Netns};

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
    /// The IP families of every host and pod.
    family: Family,
}

/// The VXLAN overlay's device on each node ([`Cni::BridgeVxlan`]).
pub const VXLAN_DEVICE: &str = "vxlan0";
/// The overlay's UDP port: flannel's (Linux's first VXLAN port; IANA's is 4789).
pub const VXLAN_PORT: u16 = 8472;
/// The overlay's MTU: the LAN's 1500 less VXLAN's 50 bytes of headers, as
/// flannel sets it on `vxlan0` and on pod links.
pub const VXLAN_MTU: u16 = 1450;

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

    /// Builds the whole topology (IPv4): senders' checksums as `checksums`
    /// says, pods attached as `cni` says.
    pub fn with(checksums: SenderChecksums, cni: Cni) -> Result<Self> {
        Self::with_family(checksums, cni, Family::V4)
    }

    /// Builds the whole topology with the IP families of `family`: senders'
    /// checksums as `checksums` says, pods attached as `cni` says.
    /// [`Family::V4`] runs the very commands [`Self::with`] always ran.
    ///
    /// # Panics
    /// When `family` has IPv6 and this kernel has it off ([`crate::require_ipv6`]).
    pub fn with_family(checksums: SenderChecksums, cni: Cni, family: Family) -> Result<Self> {
        crate::require_root();
        if family.has_v6() {
            crate::require_ipv6();
        }
        remove_stale();
        let lan = Netns::new("lan")?;
        let client = Netns::new("client")?;
        let node1 = Netns::new("node1")?;
        let node2 = Netns::new("node2")?;
        if family.has_v6() {
            for (ns, forwarding) in [
                (&lan, false),
                (&client, false),
                (&node1, true),
                (&node2, true),
            ] {
                enable_ipv6(ns, forwarding)?;
            }
        }
        let mut topo = Self {
            lan_xdp_pass: None,
            pods: Vec::new(),
            client,
            node1,
            node2,
            lan,
            checksums,
            cni,
            family,
        };
        topo.build()?;
        Ok(topo)
    }

    fn build(&mut self) -> Result<()> {
        let lan = self.lan.name().to_string();
        ip(&lan, "link add br0 type bridge")?;
        if self.family.has_v6() {
            // Neighbor Solicitations flood without an MLD querier.
            ip(&lan, "link set br0 type bridge mcast_snooping 0")?;
        }
        ip(&lan, "link set br0 up")?;
        ip(&lan, "link set lo up")?;
        for (i, (ns, v4, v6)) in [
            (&self.client, "192.168.50.10/24", CLIENT_IP6),
            (&self.node1, "192.168.50.11/24", NODE1_IP6),
            (&self.node2, "192.168.50.12/24", NODE2_IP6),
        ]
        .into_iter()
        .enumerate()
        {
            let v6 = format!("{v6}/{LAN_PREFIX_LEN6}");
            let addrs = self.family_addrs(v4, &v6);
            attach_to_lan(&lan, &format!("lan{i}"), ns, &addrs, self.checksums)?;
        }
        self.lan_xdp_pass = Some(self.lan_takes_xdp_tx()?);
        if self.checksums == SenderChecksums::Partial {
            self.node1.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        if Firewall::from_env() == Firewall::InvalidDrop {
            self.install_invalid_drop()?;
        }
        self.routes()?;
        if self.cni.bridged() {
            self.cni_bridges()?;
        }
        for (name, last, node) in [
            ("pod1a", 2, 1),
            ("pod1b", 3, 1),
            ("pod1c", 4, 1),
            ("pod2a", 2, 2),
        ] {
            self.add_pod(name, last, node)?;
        }
        Ok(())
    }

    /// `v4` and `v6`, as far as the topology has their families.
    fn family_addrs<'a>(&self, v4: &'a str, v6: &'a str) -> Vec<&'a str> {
        let v4 = self.family.has_v4().then_some(v4);
        v4.into_iter()
            .chain(self.family.has_v6().then_some(v6))
            .collect()
    }

    /// The client's routes to the service ranges, the nodes' forwarding
    /// settings, and each node's route to the other's pods (over the LAN,
    /// or the overlay).
    fn routes(&self) -> Result<()> {
        if self.family.has_v4() {
            ip(
                self.client.name(),
                "route add 10.96.0.0/12 via 192.168.50.11",
            )?;
        }
        if self.family.has_v6() {
            ip(
                self.client.name(),
                &format!("-6 route add {SERVICE_CIDR6} via {NODE1_IP6}"),
            )?;
        }
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
            return overlay::overlay(&self.node1, &self.node2, self.family);
        }
        if self.family.has_v4() {
            ip(
                self.node1.name(),
                "route add 10.244.2.0/24 via 192.168.50.12",
            )?;
            ip(
                self.node2.name(),
                "route add 10.244.1.0/24 via 192.168.50.11",
            )?;
        }
        if self.family.has_v6() {
            for (node, other, via) in [(&self.node1, 2, NODE2_IP6), (&self.node2, 1, NODE1_IP6)] {
                ip(
                    node.name(),
                    &format!("-6 route add {} via {via}", pod_prefix6(other)),
                )?;
            }
        }
        Ok(())
    }

    /// Each node's `cni0` bridge ([`Cni::bridged`]) with the node's pod
    /// gateway addresses.
    fn cni_bridges(&self) -> Result<()> {
        for (node, index) in [(&self.node1, 1), (&self.node2, 2)] {
            ip(node.name(), "link add cni0 type bridge")?;
            if self.family.has_v4() {
                ip(
                    node.name(),
                    &format!("addr add 10.244.{index}.1/24 dev cni0"),
                )?;
            }
            if self.family.has_v6() {
                ip(node.name(), "link set cni0 type bridge mcast_snooping 0")?;
                ip(
                    node.name(),
                    &format!(
                        "addr add {}/{POD_PREFIX_LEN6} dev cni0 nodad",
                        pod_ip6(index, 1)
                    ),
                )?;
            }
            ip(node.name(), "link set cni0 up")?;
            node.exec(&["sysctl", "-qw", "net.ipv4.conf.cni0.rp_filter=0"])?;
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

    /// Another host on the LAN: a namespace of its own (`role`), its `eth0`
    /// on the bridge through the LAN's port `port`, with `addr` (a CIDR of
    /// 192.168.50.0/24, or of `fd00:50::/64` in a topology with IPv6) and no
    /// routes beyond the LAN. Removed on drop, before the topology if it is
    /// dropped first.
    pub fn add_lan_host(&self, role: &str, port: &str, addr: &str) -> Result<Netns> {
        let ns = Netns::new(role)?;
        if self.family.has_v6() {
            enable_ipv6(&ns, false)?;
        }
        attach_to_lan(
            self.lan.name(),
            port,
            &ns,
            &[addr],
            SenderChecksums::Complete,
        )?;
        Ok(ns)
    }

    /// Routes from the client to each node's pods via that node, in each of
    /// the topology's families, as a flat routed network would have them
    /// (the client routes only the service ranges otherwise).
    pub fn route_client_to_pods(&self) -> Result<()> {
        for (node, via4, via6) in [(1, NODE1_IP, NODE1_IP6), (2, NODE2_IP, NODE2_IP6)] {
            if self.family.has_v4() {
                ip(
                    self.client.name(),
                    &format!("route add 10.244.{node}.0/24 via {via4}"),
                )?;
            }
            if self.family.has_v6() {
                ip(
                    self.client.name(),
                    &format!("-6 route add {} via {via6}", pod_prefix6(node)),
                )?;
            }
        }
        Ok(())
    }

    /// The IP families of every host and pod.
    #[must_use]
    pub fn family(&self) -> Family {
        self.family
    }

    /// How pods are attached to their node.
    #[must_use]
    pub fn cni(&self) -> Cni {
        self.cni
    }

    /// Appends kube-proxy's rule dropping what conntrack finds INVALID
    /// (`-m conntrack --ctstate INVALID -j DROP`) to node1's FORWARD chain,
    /// unless it is there already ([`Firewall::InvalidDrop`] put it there);
    /// with IPv6, to `ip6tables`' FORWARD chain too.
    pub fn install_invalid_drop(&self) -> Result<()> {
        let tables: &[&str] = if self.family.has_v6() {
            &["iptables", "ip6tables"]
        } else {
            &["iptables"]
        };
        for &table in tables {
            let check = [&[table, "-C"][..], &INVALID_DROP].concat();
            if self.node1.exec(&check).is_err() {
                self.node1
                    .exec(&[&[table, "-A"][..], &INVALID_DROP].concat())?;
            }
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
/// `ns`, with `addrs`, both ends up, and (with complete `checksums`)
/// transmit checksum offload off on both.
fn attach_to_lan(
    lan: &str,
    port: &str,
    ns: &Netns,
    addrs: &[&str],
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
    for addr in addrs {
        // IPv6 addresses skip DAD, usable at once.
        let dad = if addr.contains(':') { " nodad" } else { "" };
        ip(ns.name(), &format!("addr add {addr} dev eth0{dad}"))?;
    }
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

fn ip(ns: &str, args: &str) -> Result<()> {
    let mut full = vec!["ip", "-n", ns];
    full.extend(args.split_whitespace());
    sh(&full).map(|_| ())
}
