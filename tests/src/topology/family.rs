//! The topology's IP families: IPv4 (the layout it always had), IPv6-only
//! and dual-stack, with IPv6's addresses and per-namespace settings
//! (`docs/design/ipv6-datapath.md` §4, "Topology needs").
//!
//! ```text
//!  client fd00:50::10 ─┐
//!  node1  fd00:50::11 ─┼─ br0     node1: pod1a fd00:244:1::2, pod1b ::3, pod1c ::4
//!  node2  fd00:50::12 ─┘          node2: pod2a fd00:244:2::2
//! ```
//!
//! Every address is added `nodad` and every namespace turns DAD off before
//! its links exist, so addresses (link-local ones too) are usable at once.

use std::net::Ipv6Addr;

use anyhow::Result;

use crate::netns::Netns;

/// The IP families a topology is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only: the topology's original layout, command for command.
    V4,
    /// IPv6 only: no IPv4 address anywhere but loopback.
    V6,
    /// Both families on every link, route and pod.
    Dual,
}

impl Family {
    /// Whether hosts and pods get IPv4 addresses.
    #[must_use]
    pub fn has_v4(self) -> bool {
        self != Family::V6
    }

    /// Whether hosts and pods get IPv6 addresses.
    #[must_use]
    pub fn has_v6(self) -> bool {
        self != Family::V4
    }
}

/// The client's IPv6 address on the LAN.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10);
/// node1's IPv6 address on the LAN.
pub const NODE1_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x11);
/// node2's IPv6 address on the LAN.
pub const NODE2_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x12);
/// The prefix length of the LAN's IPv6 addresses (`fd00:50::/64`).
pub const LAN_PREFIX_LEN6: u8 = 64;
/// The IPv6 service range the client routes via node1.
pub const SERVICE_CIDR6: &str = "fd00:96::/108";
/// The prefix length of each node's IPv6 pod prefix (`fd00:244:N::/64`).
pub const POD_PREFIX_LEN6: u8 = 64;
/// The overlay's MTU over the IPv6 LAN: 1500 less VXLAN's 70 bytes of
/// headers with an IPv6 outer header (flannel's `flannel-v6.1` MTU).
pub const VXLAN6_MTU: u16 = 1430;

/// Address `host` in node `node`'s IPv6 pod prefix: `fd00:244:<node>::<host>`
/// (host 0 is the prefix itself, 1 the node's pod gateway).
#[must_use]
pub fn pod_ip6(node: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, u16::from(node), 0, 0, 0, 0, host)
}

/// Node `node`'s IPv6 pod prefix, `fd00:244:<node>::/64`.
#[must_use]
pub fn pod_prefix6(node: u8) -> String {
    format!("{}/{POD_PREFIX_LEN6}", pod_ip6(node, 0))
}

/// Readies `ns` for IPv6 before any of its links exist (links copy the
/// `default` settings when created): IPv6 on, no DAD, and either forwarding
/// (a node: this also turns Router Advertisements off) or no IPv6 ICMP
/// Redirects accepted (a host: its routes stay as the topology sets them,
/// as the nodes' `send_redirects=0` keeps IPv4's).
pub(super) fn enable_ipv6(ns: &Netns, forwarding: bool) -> Result<()> {
    let role = if forwarding {
        [
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.default.forwarding=1",
        ]
    } else {
        [
            "net.ipv6.conf.all.accept_redirects=0",
            "net.ipv6.conf.default.accept_redirects=0",
        ]
    };
    for key in [
        "net.ipv6.conf.all.disable_ipv6=0",
        "net.ipv6.conf.default.disable_ipv6=0",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ]
    .into_iter()
    .chain(role)
    {
        ns.exec(&["sysctl", "-qw", key])?;
    }
    Ok(())
}
