//! The pods: each a namespace behind a veth from its node, attached as the
//! topology's [`Cni`] says, with the addresses of its [`Family`](super::Family).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;

use super::{enable_ipv6, ip, overlay_mtu, pod_ip6, ClusterTopology, Cni, SenderChecksums};
use crate::netns::Netns;

/// A pod: its namespace and address.
#[derive(Debug)]
pub struct Pod {
    /// Short name ("pod1a"), also what its servers answer.
    pub name: String,
    /// Its IPv4 address; `0.0.0.0` (none) in an IPv6-only topology, where
    /// [`Pod::ipv4`] says `None`.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in IPv6-only and dual-stack topologies.
    pub ip6: Option<Ipv6Addr>,
    /// The node it runs on ("node1" or "node2").
    pub node: String,
    /// Its namespace.
    pub ns: Netns,
}

impl Pod {
    /// Its IPv4 address, if its topology has IPv4.
    #[must_use]
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        (!self.ip.is_unspecified()).then_some(self.ip)
    }

    /// Its addresses: IPv4's first, then IPv6's.
    #[must_use]
    pub fn addrs(&self) -> Vec<IpAddr> {
        let v4 = self.ipv4().map(IpAddr::V4);
        v4.into_iter().chain(self.ip6.map(IpAddr::V6)).collect()
    }
}

impl ClusterTopology {
    pub(super) fn add_pod(&mut self, name: &str, last: u8, node_index: u8) -> Result<()> {
        let ns = Netns::new(name)?;
        if self.family.has_v6() {
            enable_ipv6(&ns, false)?;
        }
        let node = if node_index == 1 {
            &self.node1
        } else {
            &self.node2
        };
        let pod_ip = Ipv4Addr::new(10, 244, node_index, last);
        let pod_ip6 = pod_ip6(node_index, last.into());
        let host_if = format!("v{name}");
        ip(
            node.name(),
            &format!(
                "link add {host_if} type veth peer name eth0 netns {}",
                ns.name()
            ),
        )?;
        if self.cni == Cni::BridgeVxlan {
            // Pod links carry the overlay's MTU, both ends (as flannel's CNI sets them).
            let mtu = overlay_mtu(self.family);
            ip(node.name(), &format!("link set {host_if} mtu {mtu}"))?;
            ip(ns.name(), &format!("link set eth0 mtu {mtu}"))?;
        }
        self.pod_host_side(node, &host_if, node_index, (pod_ip, pod_ip6))?;
        self.pod_side(&ns, node_index, (pod_ip, pod_ip6))?;
        if node_index == 2 && self.checksums == SenderChecksums::Complete {
            // node2's pods reach node1 over the wire, where XDP sees them.
            ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        let (v4, v6) = (self.family.has_v4(), self.family.has_v6());
        self.pods.push(Pod {
            name: name.to_string(),
            ip: if v4 { pod_ip } else { Ipv4Addr::UNSPECIFIED },
            ip6: v6.then_some(pod_ip6),
            node: format!("node{node_index}"),
            ns,
        });
        Ok(())
    }

    /// The node's end of a pod's veth `host_if`: a port of `cni0`, or
    /// (routed) the node's pod gateway address on it and a host route to the
    /// pod's addresses `pod`.
    fn pod_host_side(
        &self,
        node: &Netns,
        host_if: &str,
        node_index: u8,
        pod: (Ipv4Addr, Ipv6Addr),
    ) -> Result<()> {
        let (v4, v6) = (self.family.has_v4(), self.family.has_v6());
        if self.cni.bridged() {
            ip(node.name(), &format!("link set {host_if} master cni0"))?;
            ip(
                node.name(),
                &format!("link set {host_if} type bridge_slave hairpin on"),
            )?;
            ip(node.name(), &format!("link set {host_if} up"))?;
        } else {
            if v4 {
                let gateway = format!("10.244.{node_index}.1");
                ip(node.name(), &format!("addr add {gateway}/32 dev {host_if}"))?;
            }
            if v6 {
                let gateway = pod_ip6(node_index, 1);
                ip(
                    node.name(),
                    &format!("addr add {gateway}/128 dev {host_if} nodad"),
                )?;
            }
            ip(node.name(), &format!("link set {host_if} up"))?;
            if v4 {
                ip(
                    node.name(),
                    &format!("route add {}/32 dev {host_if}", pod.0),
                )?;
            }
            if v6 {
                ip(
                    node.name(),
                    &format!("-6 route add {}/128 dev {host_if}", pod.1),
                )?;
            }
        }
        node.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{host_if}.rp_filter=0"),
        ])?;
        Ok(())
    }

    /// The pod's end of its veth: its addresses `pod` on `eth0`, and routes
    /// to its node's pod gateway on the link, then by default via it.
    fn pod_side(&self, ns: &Netns, node_index: u8, pod: (Ipv4Addr, Ipv6Addr)) -> Result<()> {
        let (v4, v6) = (self.family.has_v4(), self.family.has_v6());
        if v4 {
            ip(ns.name(), &format!("addr add {}/32 dev eth0", pod.0))?;
        }
        if v6 {
            ip(ns.name(), &format!("addr add {}/128 dev eth0 nodad", pod.1))?;
        }
        ip(ns.name(), "link set eth0 up")?;
        ip(ns.name(), "link set lo up")?;
        if v4 {
            let gateway = format!("10.244.{node_index}.1");
            ip(
                ns.name(),
                &format!("route add {gateway} dev eth0 scope link"),
            )?;
            ip(ns.name(), &format!("route add default via {gateway}"))?;
        }
        if v6 {
            let gateway = pod_ip6(node_index, 1);
            ip(ns.name(), &format!("-6 route add {gateway} dev eth0"))?;
            ip(ns.name(), &format!("-6 route add default via {gateway}"))?;
        }
        Ok(())
    }
}
