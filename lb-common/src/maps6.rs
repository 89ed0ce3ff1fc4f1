//! IPv6's side of the data path, shared by the programs and the agent: the
//! prog arrays through which the IPv4 entry points hand IPv6 frames to the
//! IPv6 programs, and the protocol numbers of the IPv6 header chain. IPv4's
//! keys, values and programs stay as they are (see
//! `docs/design/ipv6-datapath.md`).

/// Name of the XDP prog array: slot [`XDP6_SLOT`] holds `lb_xdp6`, which
/// `lb_xdp` tail-calls for every IPv6 frame. Pinned: the kernel empties a
/// prog array once no file descriptor or pin holds it, even while the
/// programs that call it stay attached. Never carried over: each load
/// fills its own.
pub const MAP_XDP6_PROGS: &str = "XDP6_PROGS";
/// The slot of `lb_xdp6` in [`MAP_XDP6_PROGS`].
pub const XDP6_SLOT: u32 = 0;
/// The IPv6 program of `lb_xdp`, in [`MAP_XDP6_PROGS`].
pub const XDP6_PROGRAM: &str = "lb_xdp6";

/// Name of the TC prog array: one IPv6 program per TC entry point, by
/// [`TC6_PROGRAMS`]' order (pinned and filled as [`MAP_XDP6_PROGS`]).
pub const MAP_TC6_PROGS: &str = "TC6_PROGS";
/// The slot of `lb_tc6` (pod interfaces' ingress) in [`MAP_TC6_PROGS`].
pub const TC6_SLOT_POD: u32 = 0;
/// The slot of `lb_tc_uplink6` (the uplink's TC ingress).
pub const TC6_SLOT_UPLINK: u32 = 1;
/// The slot of `lb_tc_egress6` (egress of the uplink and pod interfaces).
pub const TC6_SLOT_EGRESS: u32 = 2;
/// The IPv6 TC programs, at their slots of [`MAP_TC6_PROGS`].
pub const TC6_PROGRAMS: [&str; 3] = ["lb_tc6", "lb_tc_uplink6", "lb_tc_egress6"];

/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// IPv6 next header: hop-by-hop options (first in the chain only).
pub const NEXTHDR_HOP: u8 = 0;
/// IPv6 next header: routing header.
pub const NEXTHDR_ROUTING: u8 = 43;
/// IPv6 next header: fragment header.
pub const NEXTHDR_FRAGMENT: u8 = 44;
/// IPv6 next header: `ICMPv6`.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 next header: destination options.
pub const NEXTHDR_DEST: u8 = 60;
/// Extension headers the programs walk at most (hop-by-hop, destination
/// options, routing, fragment, destination options: RFC 8200's order).
pub const IPV6_MAX_EXT_HEADERS: usize = 5;
/// Bytes of extension headers the programs walk at most.
pub const IPV6_MAX_EXT_BYTES: usize = 256;
