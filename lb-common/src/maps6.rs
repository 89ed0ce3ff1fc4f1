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
/// The slot of `lb_xdp6_flow` in [`MAP_XDP6_PROGS`].
pub const XDP6_FLOW_SLOT: u32 = 1;
/// The new-flow stage of `lb_xdp6`, which it tail-calls for a packet that
/// starts a flow: `lb_xdp6`'s stack has no room for it, nor for the SNAT
/// claim's `bpf_loop` callback, whose frame the verifier stacks on its
/// caller's.
pub const XDP6_FLOW_PROGRAM: &str = "lb_xdp6_flow";
/// The XDP IPv6 programs, at their slots of [`MAP_XDP6_PROGS`].
pub const XDP6_PROGRAMS: [&str; 2] = [XDP6_PROGRAM, XDP6_FLOW_PROGRAM];

/// Name of the TC prog array: one IPv6 program per TC entry point, by
/// [`TC6_PROGRAMS`]' order (pinned and filled as [`MAP_XDP6_PROGS`]).
pub const MAP_TC6_PROGS: &str = "TC6_PROGS";
/// The slot of `lb_tc6` (pod interfaces' ingress) in [`MAP_TC6_PROGS`].
pub const TC6_SLOT_POD: u32 = 0;
/// The slot of `lb_tc_uplink6` (the uplink's TC ingress).
pub const TC6_SLOT_UPLINK: u32 = 1;
/// The slot of `lb_tc_egress6` (egress of the uplink and pod interfaces).
pub const TC6_SLOT_EGRESS: u32 = 2;
/// The slot of `lb_tc6_flow`, the new-flow stage of `lb_tc6` and
/// `lb_tc_uplink6` (see [`XDP6_FLOW_PROGRAM`]).
pub const TC6_SLOT_FLOW: u32 = 3;
/// The IPv6 TC programs, at their slots of [`MAP_TC6_PROGS`].
pub const TC6_PROGRAMS: [&str; 4] = ["lb_tc6", "lb_tc_uplink6", "lb_tc_egress6", "lb_tc6_flow"];

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

/// Name of the IPv6 forward connection-tracking map: [`FlowKey6`] ->
/// [`CtEntry6`] (LRU hash), the twin of `CONNTRACK`.
pub const MAP_CONNTRACK6: &str = "CONNTRACK6";
/// Name of the IPv6 reverse-NAT map: reply [`FlowKey6`] -> [`RevNatEntry6`]
/// (LRU hash), the twin of `REVNAT`.
pub const MAP_REVNAT6: &str = "REVNAT6";
/// Capacity of [`MAP_CONNTRACK6`]: half of IPv4's entries. The kernel
/// preallocates an LRU map whole, and an IPv6 entry (40-byte key, 56-byte
/// value) is about twice an IPv4 one (16 and 32): this map and
/// [`MAP_REVNAT6`] take 20 MiB each (`memlock` on kernel 6.18, 2 CPUs),
/// against 28 MiB for each of IPv4's.
pub const CONNTRACK6_MAX_ENTRIES: u32 = 1 << 17;
/// Capacity of [`MAP_REVNAT6`] (one entry per tracked flow).
pub const REVNAT6_MAX_ENTRIES: u32 = CONNTRACK6_MAX_ENTRIES;

/// Name of the IPv6 session-affinity map: [`AffinityKey6`] ->
/// `AffinityEntry` (LRU hash), the twin of `AFFINITY`.
pub const MAP_AFFINITY6: &str = "AFFINITY6";
/// Capacity of [`MAP_AFFINITY6`] (client, service pairs): half of IPv4's,
/// as [`CONNTRACK6_MAX_ENTRIES`] is.
pub const AFFINITY6_MAX_ENTRIES: u32 = 1 << 15;

/// Key of the IPv6 session-affinity map: an IPv6 client of a Service port,
/// the twin of `AffinityKey`.
///
/// Layout (20 bytes): `service_id` u32 | `client_addr` [be32; 4].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey6 {
    /// `ServiceEntry::id` of the Service port.
    pub service_id: u32,
    /// Client IPv6 address, as [`ipv6_words`] stores it.
    pub client_addr: [u32; 4],
}

/// Name of the IPv6 fragment map: [`FragKey6`] -> `FragPorts` (LRU hash),
/// the twin of `FRAGMENTS`. Not pinned, for the same reason.
pub const MAP_FRAGMENTS6: &str = "FRAGMENTS6";
/// Capacity of [`MAP_FRAGMENTS6`]: IPv6 datagrams in flight whose first
/// fragment was translated.
pub const FRAGMENTS6_MAX_ENTRIES: u32 = 8_192;

/// Key of the IPv6 fragment map: one IPv6 datagram, as its fragments name it
/// on the wire (RFC 8200 4.5: source, destination and the fragment header's
/// identification), with the protocol after the fragment header, before
/// translation.
///
/// Layout (40 bytes): `src_addr` [be32; 4] | `dst_addr` [be32; 4] | `id`
/// be32 | `proto` u8 | pad [u8; 3].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    /// Source IPv6 address, as [`ipv6_words`] stores it.
    pub src_addr: [u32; 4],
    /// Destination IPv6 address, as [`ipv6_words`] stores it.
    pub dst_addr: [u32; 4],
    /// The fragment header's identification, network byte order.
    pub id: u32,
    /// IP protocol number (6 or 17).
    pub proto: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Key of the IPv6 flow maps: a 5-tuple as it appears on the wire, the
/// twin of `FlowKey`.
///
/// Layout (40 bytes): `src_addr` [be32; 4] | `dst_addr` [be32; 4] |
/// `src_port` be16 | `dst_port` be16 | `proto` u8 | pad [u8; 3].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey6 {
    /// Source address, as [`ipv6_words`] stores it.
    pub src_addr: [u32; 4],
    /// Destination address, as [`ipv6_words`] stores it.
    pub dst_addr: [u32; 4],
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// IP protocol number (the upper-layer header's).
    pub proto: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Value of the IPv6 conntrack map: the backend a client flow (keyed
/// client -> service, as it arrives) is pinned to, and the flow's state;
/// the twin of `CtEntry`, with the same flags, states and timeouts
/// (`crate::conntrack`).
///
/// Layout (56 bytes): `backend_id` u32 | `backend_port` be16 | `snat_port`
/// be16 | `backend_addr` [be32; 4] | `snat_addr` [be32; 4] | `flags` u16 |
/// `state` u8 | pad u8 | `last_seen_s` u32 | `created_ns` u64. The SNAT
/// fields are the design's whole layout although the programs write them
/// 0 so far (IPv6 translates no source yet): keeping them now spares the
/// pinned layout a change when SNAT comes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtEntry6 {
    /// Backend chosen for the flow (an id of `BACKENDS6`).
    pub backend_id: u32,
    /// Copy of the backend's port, network byte order.
    pub backend_port: u16,
    /// Source port after SNAT (network byte order), 0 without SNAT.
    pub snat_port: u16,
    /// Copy of the backend's address, to detect a reused id.
    pub backend_addr: [u32; 4],
    /// Source address after SNAT; zero without SNAT.
    pub snat_addr: [u32; 4],
    /// `CT_F_*` bits (`crate::conntrack`).
    pub flags: u16,
    /// `crate::conntrack::CtState` value.
    pub state: u8,
    /// Always zero.
    pub pad: u8,
    /// Monotonic seconds of the flow's last packet from the client.
    pub last_seen_s: u32,
    /// Monotonic time (`bpf_ktime_get_coarse_ns`) when the flow was created.
    pub created_ns: u64,
}

/// Value of the IPv6 reverse-NAT map: how to restore a reply (keyed
/// backend -> client, as the reply arrives), and who holds the reply
/// tuple; the twin of `RevNatEntry`.
///
/// Layout (56 bytes): `svc_addr` [be32; 4] | `client_addr` [be32; 4] |
/// `svc_port` be16 | `client_port` be16 | `created_s` u32 | `last_seen_s`
/// u32 | `ifindex` u32 | `claim` u64 (at 48, aligned for the atomic swap
/// a takeover makes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatEntry6 {
    /// Service address the client talked to.
    pub svc_addr: [u32; 4],
    /// Client address.
    pub client_addr: [u32; 4],
    /// Service port, network byte order.
    pub svc_port: u16,
    /// Client port, network byte order.
    pub client_port: u16,
    /// Monotonic seconds when the entry was written.
    pub created_s: u32,
    /// Monotonic seconds of the last reply; 0 before the first.
    pub last_seen_s: u32,
    /// Interface the replies were last verified to arrive on; 0 before the first.
    pub ifindex: u32,
    /// Tag of the claim that wrote the entry.
    pub claim: u64,
}

impl FlowKey6 {
    /// The client flow (client -> service) a reverse-NAT entry restores.
    #[inline(always)]
    #[must_use]
    pub const fn client_of(rev: &RevNatEntry6, proto: u8) -> FlowKey6 {
        FlowKey6 {
            src_addr: rev.client_addr,
            dst_addr: rev.svc_addr,
            src_port: rev.client_port,
            dst_port: rev.svc_port,
            proto,
            pad: [0, 0, 0],
        }
    }

    /// The reply tuple (backend -> client, or -> the translated source) of
    /// this client flow tracked as `ct`: its reverse-NAT key.
    #[inline(always)]
    #[must_use]
    pub const fn reply_of(&self, ct: &CtEntry6) -> FlowKey6 {
        let (dst_addr, dst_port) = if ct.flags & crate::conntrack::CT_F_SNAT != 0 {
            (ct.snat_addr, ct.snat_port)
        } else {
            (self.src_addr, self.src_port)
        };
        FlowKey6 {
            src_addr: ct.backend_addr,
            dst_addr,
            src_port: ct.backend_port,
            dst_port,
            proto: self.proto,
            pad: [0, 0, 0],
        }
    }
}

impl RevNatEntry6 {
    /// A new entry restoring the client flow `key`, written at `now_s` with
    /// claim tag `claim` (no reply seen yet).
    #[inline(always)]
    #[must_use]
    pub const fn restoring(key: &FlowKey6, now_s: u32, claim: u64) -> RevNatEntry6 {
        RevNatEntry6 {
            svc_addr: key.dst_addr,
            client_addr: key.src_addr,
            svc_port: key.dst_port,
            client_port: key.src_port,
            created_s: now_s,
            last_seen_s: 0,
            ifindex: 0,
            claim,
        }
    }

    /// Whether this entry restores the client flow `key`.
    #[inline(always)]
    #[must_use]
    pub const fn restores(&self, key: &FlowKey6) -> bool {
        same(&self.client_addr, &key.src_addr)
            && self.client_port == key.src_port
            && same(&self.svc_addr, &key.dst_addr)
            && self.svc_port == key.dst_port
    }
}

/// Name of the IPv6 socket reverse map: [`SockRevKey6`] -> [`SockRevEntry6`]
/// (LRU hash), the twin of `SOCK_REVERSE`: the Service address that
/// `recvmsg` and `getpeername` of an IPv6 socket pointed at a backend show.
/// A v4-mapped destination (`::ffff:a.b.c.d`) reaches an IPv4 Service, and
/// its entry is IPv4's, in `SOCK_REVERSE`.
pub const MAP_SOCK_REVERSE6: &str = "SOCK_REVERSE6";
/// Capacity of [`MAP_SOCK_REVERSE6`]: half of IPv4's, as the flow maps
/// (7.5 MiB preallocated, `memlock` on kernel 6.18, against 11 MiB for IPv4's).
pub const SOCK_REVERSE6_MAX_ENTRIES: u32 = 1 << 16;

/// Key of the IPv6 socket reverse map: a socket and a backend it was
/// pointed at, the twin of `SockRevKey`.
///
/// Layout (32 bytes): `cookie` u64 | `backend_addr` [be32; 4] |
/// `backend_port` be16 | pad [u16; 3].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey6 {
    /// The socket's cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// Backend IPv6 address, as [`ipv6_words`] stores it.
    pub backend_addr: [u32; 4],
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// Always zero.
    pub pad: [u16; 3],
}

/// Value of the IPv6 socket reverse map: the Service address the socket
/// asked for, the twin of `SockRevEntry`.
///
/// Layout (20 bytes): `svc_addr` [be32; 4] | `svc_port` be16 | pad u16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevEntry6 {
    /// Service (frontend) IPv6 address, as [`ipv6_words`] stores it.
    pub svc_addr: [u32; 4],
    /// Service port, network byte order.
    pub svc_port: u16,
    /// Always zero.
    pub pad: u16,
}

/// Name of the IPv6 per-backend SNAT exhaustion counters: [`BackendKey6`]
/// -> `SnatExhaustion` (hash, no prealloc), the twin of `SNAT_EXHAUSTED`,
/// as long.
pub const MAP_SNAT_EXHAUSTED6: &str = "SNAT_EXHAUSTED6";

/// Key of the IPv6 per-backend SNAT exhaustion counters: a backend's
/// address, port and protocol, the twin of `BackendKey`.
///
/// Layout (20 bytes): `addr` [be32; 4] | `port` be16 | `proto` u8 | pad u8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey6 {
    /// Backend address, as [`ipv6_words`] stores it.
    pub addr: [u32; 4],
    /// Backend port, network byte order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero.
    pub pad: u8,
}

/// Whether two addresses are equal (`==` on arrays is not `const`).
#[inline(always)]
#[must_use]
pub const fn same(a: &[u32; 4], b: &[u32; 4]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), made only of integers, with explicit
    // padding fields, so every bit pattern is valid and no byte is
    // uninitialised.
    unsafe impl aya::Pod for super::ServiceKey6 {}
    unsafe impl aya::Pod for super::Backend6 {}
    unsafe impl aya::Pod for super::SourceRangeKey6 {}
    unsafe impl aya::Pod for super::FlowKey6 {}
    unsafe impl aya::Pod for super::CtEntry6 {}
    unsafe impl aya::Pod for super::RevNatEntry6 {}
    unsafe impl aya::Pod for super::SockRevKey6 {}
    unsafe impl aya::Pod for super::SockRevEntry6 {}
    unsafe impl aya::Pod for super::BackendKey6 {}
    unsafe impl aya::Pod for super::AffinityKey6 {}
    unsafe impl aya::Pod for super::FragKey6 {}
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
        assert_eq!(size_of::<FlowKey6>(), 40);
        assert_eq!(size_of::<CtEntry6>(), 56);
        assert_eq!(size_of::<RevNatEntry6>(), 56);
        assert_eq!(size_of::<SockRevKey6>(), 32);
        assert_eq!(size_of::<SockRevEntry6>(), 20);
        assert!(MAP_SOCK_REVERSE6.len() <= 15);
        assert_eq!(size_of::<BackendKey6>(), 20);
        assert!(MAP_SNAT_EXHAUSTED6.len() <= 15);
        assert_eq!(size_of::<AffinityKey6>(), 20);
        assert_eq!(size_of::<FragKey6>(), 40);
        assert!(MAP_AFFINITY6.len() <= 15 && MAP_FRAGMENTS6.len() <= 15);
        assert_eq!(core::mem::offset_of!(CtEntry6, backend_addr), 8);
        assert_eq!(core::mem::offset_of!(CtEntry6, flags), 40);
        assert_eq!(core::mem::offset_of!(CtEntry6, created_ns), 48);
        assert_eq!(core::mem::offset_of!(RevNatEntry6, claim), 48);
        assert!(MAP_CONNTRACK6.len() <= 15 && MAP_REVNAT6.len() <= 15);
        assert!(MAP_NODE_PORT_ADDRS6.len() <= 15);
        assert!(MAP_SOURCE_RANGES6.len() <= 15);
    }

    #[test]
    fn a_reply_key_and_its_reverse_entry_restore_the_client_flow() {
        let key = FlowKey6 {
            src_addr: [1, 2, 3, 4],
            dst_addr: [5, 6, 7, 8],
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: 6,
            pad: [0, 0, 0],
        };
        let ct = CtEntry6 {
            backend_addr: [9, 10, 11, 12],
            backend_port: 8080u16.to_be(),
            ..CtEntry6::default()
        };
        let reply = key.reply_of(&ct);
        assert_eq!(
            (
                reply.src_addr,
                reply.src_port,
                reply.dst_addr,
                reply.dst_port
            ),
            (ct.backend_addr, ct.backend_port, key.src_addr, key.src_port)
        );
        let rev = RevNatEntry6::restoring(&key, 7, 9);
        assert!(rev.restores(&key));
        assert_eq!(FlowKey6::client_of(&rev, 6), key);
        let other = FlowKey6 {
            src_port: 40001u16.to_be(),
            ..key
        };
        assert!(!rev.restores(&other));
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
