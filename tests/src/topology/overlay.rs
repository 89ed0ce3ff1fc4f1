//! The VXLAN overlay between the nodes ([`Cni::BridgeVxlan`]), in each of
//! the topology's families.
//!
//! IPv4 and dual-stack topologies run one `vxlan0` per node over the IPv4
//! LAN, and a dual-stack one carries both families' pod traffic in it (as
//! Cilium's tunnel does: VXLAN carries Ethernet frames, whatever their IP
//! version). An IPv6-only topology runs it over the IPv6 LAN, with
//! [`VXLAN6_MTU`].
//!
//! [`Cni::BridgeVxlan`]: super::Cni::BridgeVxlan

use std::net::IpAddr;

use anyhow::Result;

use super::{
    family::{pod_ip6, pod_prefix6, Family, NODE1_IP6, NODE2_IP6, VXLAN6_MTU},
    ip, NODE1_IP, NODE2_IP, VXLAN_DEVICE, VXLAN_MTU, VXLAN_PORT,
};
use crate::netns::{sh, Netns};

/// The overlay's MTU in a topology of `family`: [`VXLAN_MTU`] over the IPv4
/// LAN, [`VXLAN6_MTU`] over the IPv6 one.
pub(super) fn overlay_mtu(family: Family) -> u16 {
    if family == Family::V6 {
        VXLAN6_MTU
    } else {
        VXLAN_MTU
    }
}

/// The overlay as flannel's `vxlan` backend programs it: per node a
/// `vxlan0` (VNI 1, UDP 8472, over `eth0`, no learning) with a fixed MAC
/// address and the `.0` (IPv6: `::`) of its pod prefix; towards the other
/// node a forwarding entry (its `vxlan0` MAC behind its LAN address), a
/// permanent neighbour (its `.0` at that MAC) and its pod prefix routed via
/// its `.0` over `vxlan0`. Only the families of `family` get addresses,
/// neighbours and routes.
pub(super) fn overlay(node1: &Netns, node2: &Netns, family: Family) -> Result<()> {
    let underlay = |v4, v6| -> IpAddr {
        if family == Family::V6 {
            IpAddr::V6(v6)
        } else {
            IpAddr::V4(v4)
        }
    };
    let ends = [
        (node1, 1u8, underlay(NODE1_IP, NODE1_IP6)),
        (node2, 2, underlay(NODE2_IP, NODE2_IP6)),
    ];
    for (node, index, addr) in ends {
        let name = node.name();
        ip(
            name,
            &format!(
                "link add {VXLAN_DEVICE} address {} type vxlan id 1 dstport {VXLAN_PORT} \
                 local {addr} dev eth0 nolearning",
                vxlan_mac(index)
            ),
        )?;
        ip(
            name,
            &format!("link set {VXLAN_DEVICE} mtu {}", overlay_mtu(family)),
        )?;
        if family.has_v4() {
            ip(
                name,
                &format!("addr add 10.244.{index}.0/32 dev {VXLAN_DEVICE}"),
            )?;
        }
        if family.has_v6() {
            ip(
                name,
                &format!(
                    "addr add {}/128 dev {VXLAN_DEVICE} nodad",
                    pod_ip6(index, 0)
                ),
            )?;
        }
        ip(name, &format!("link set {VXLAN_DEVICE} up"))?;
        node.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{VXLAN_DEVICE}.rp_filter=0"),
        ])?;
    }
    for ((node, _, _), (_, other, other_addr)) in [(ends[0], ends[1]), (ends[1], ends[0])] {
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
        if family.has_v4() {
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
        if family.has_v6() {
            let gateway = pod_ip6(other, 0);
            ip(
                name,
                &format!("-6 neigh add {gateway} lladdr {mac} dev {VXLAN_DEVICE} nud permanent"),
            )?;
            ip(
                name,
                &format!(
                    "-6 route add {} via {gateway} dev {VXLAN_DEVICE} onlink",
                    pod_prefix6(other)
                ),
            )?;
        }
    }
    Ok(())
}

/// The fixed MAC address of node `index`'s `vxlan0` (locally administered).
fn vxlan_mac(index: u8) -> String {
    format!("0e:00:00:00:00:{index:02x}")
}
