//! IPv6's side of the data path, shared by the programs and the agent: the
//! prog arrays through which the IPv4 entry points hand IPv6 frames to the
//! IPv6 programs, the protocol numbers of the IPv6 header chain, and the
//! IPv6 twins of the frontend maps. IPv4's keys, values and programs stay as
//! they are (see `docs/design/ipv6-datapath.md`).
//!
//! An IPv6 address in a map is `[u32; 4]`, each word the native-endian view
//! of four octets as they appear in the packet ([`ipv6_words`]): the kernel
//! compares and copies it without swapping, as it does IPv4's `u32`.
//!
//! The two families share everything indexed by a Service port's id: the
//! Maglev slab (`MAGLEV`), `INTERNAL_TABLES`, the labels and counters, and
//! the id space of the backends arrays (a backend id names an entry of
//! `BACKENDS` or of [`MAP_BACKENDS6`], never both), so one allocator serves
//! both and a table's slots are backend ids of its own family only.

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

/// Name of the IPv6 services map: [`ServiceKey6`] -> `ServiceEntry` (hash),
/// the twin of `SERVICES`, sized like it.
pub const MAP_SERVICES6: &str = "SERVICES6";
/// Name of the IPv6 backends array: backend id -> [`Backend6`], the twin of
/// `BACKENDS`, as long (the ids are shared: see the module's doc).
pub const MAP_BACKENDS6: &str = "BACKENDS6";
/// Name of the IPv6 source-range map: `bpf_lpm_trie_key` of
/// [`SOURCE_RANGE_KEY6_BITS`] over [`SourceRangeKey6`] -> u32 (always 1), the
/// twin of `SOURCE_RANGES`.
pub const MAP_SOURCE_RANGES6: &str = "SOURCE_RANGES6";
/// Name of the IPv6 node-port addresses: `[u32; 4]` -> u32 (always 1)
/// (hash), the twin of `NODE_PORT_ADDRS` (15 characters, the kernel's limit
/// for a map name).
pub const MAP_NODE_PORT_ADDRS6: &str = "NODEPORT_ADDRS6";
/// The address of an IPv6 node port's frontend key: any IPv6 node-port address.
pub const NODE_PORT_ADDR6: [u32; 4] = [0; 4];
/// Bits of a [`SourceRangeKey6`]: the service id and the whole client address.
pub const SOURCE_RANGE_KEY6_BITS: u32 = crate::maps::SOURCE_RANGE_ID_BITS + 128;

/// An IPv6 address's octets as a map stores them (see the module's doc).
#[must_use]
pub const fn ipv6_words(octets: [u8; 16]) -> [u32; 4] {
    let o = octets;
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The octets of an address stored by [`ipv6_words`].
#[must_use]
pub const fn ipv6_octets(words: [u32; 4]) -> [u8; 16] {
    let [a, b, c, d] = [
        words[0].to_ne_bytes(),
        words[1].to_ne_bytes(),
        words[2].to_ne_bytes(),
        words[3].to_ne_bytes(),
    ];
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// Key of the IPv6 services map: one frontend (address, port, protocol).
///
/// Layout (20 bytes): `addr` [be32; 4] | `port` be16 | `proto` u8 | pad u8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey6 {
    /// Virtual IPv6 address, as [`ipv6_words`] stores it.
    pub addr: [u32; 4],
    /// Service port, network byte order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Always zero.
    pub pad: u8,
}

/// Value of the IPv6 backends array: one endpoint of one Service port, as
/// `Backend` is for IPv4 (the same `BACKEND_F_*` flags).
///
/// Layout (24 bytes): `addr` [be32; 4] | `port` be16 | `flags` u8 | pad u8 |
/// `service_id` u32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend6 {
    /// Endpoint IPv6 address, as [`ipv6_words`] stores it.
    pub addr: [u32; 4],
    /// Endpoint (target) port, network byte order.
    pub port: u16,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    /// Always zero.
    pub pad: u8,
    /// Id of the Service port this backend serves (`ServiceEntry::id`).
    pub service_id: u32,
}

/// Data of an IPv6 source-range key (after the LPM trie's `prefixlen` u32).
///
/// Layout (20 bytes): `service_id` be32 | `client_addr` [be32; 4]; the id
/// big-endian so that its bits come first in the trie's bit order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey6 {
    /// `ServiceEntry::id` of the Service port, network byte order.
    pub service_id: u32,
    /// Client IPv6 address (a range's network address), as [`ipv6_words`] stores it.
    pub client_addr: [u32; 4],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), made only of integers, with explicit
    // padding fields, so every bit pattern is valid and no byte is
    // uninitialised.
    unsafe impl aya::Pod for super::ServiceKey6 {}
    unsafe impl aya::Pod for super::Backend6 {}
    unsafe impl aya::Pod for super::SourceRangeKey6 {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn ipv6_layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey6>(), 20);
        assert_eq!(size_of::<Backend6>(), 24);
        assert_eq!(size_of::<SourceRangeKey6>(), 20);
        assert!(MAP_NODE_PORT_ADDRS6.len() <= 15);
        assert!(MAP_SOURCE_RANGES6.len() <= 15);
    }

    #[test]
    fn ipv6_words_keep_the_octets_in_wire_order() {
        let octets = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
        let words = ipv6_words(octets);
        // In memory the words are the octets, in order.
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(bytes, octets);
        assert_eq!(ipv6_octets(words), octets);
    }
}
