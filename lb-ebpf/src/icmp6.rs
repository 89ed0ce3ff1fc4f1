//! `ICMPv6` errors about translated IPv6 flows (destination unreachable,
//! packet too big, time exceeded, parameter problem), the twin of
//! [`crate::icmp`] for the flows IPv6 translates (the backend keeps the
//! client's address): the quoted packet is translated back the way its flow
//! was, so that the sender of the original packet gets the error under the
//! addresses it knows. A router's Packet Too Big reaches the client with its
//! MTU (path MTU discovery); a backend's port unreachable reaches a UDP
//! client as ECONNREFUSED.
//!
//! Layout handled (offsets from the start of the frame; neither IPv6 header
//! followed by extension headers: an error with any passes untouched):
//!
//! ```text
//! 0   Ethernet (14)
//! 14  outer IPv6 (40): payload length at 18, next header at 20,
//!     source at 22, destination at 38
//! 54  ICMPv6 header (8): type, code, checksum at 56, rest (MTU, pointer)
//! 62  quoted IPv6 (40): next header at 68, source at 70, destination at 86
//! 102 quoted TCP/UDP (at least 8): source port at 102, destination port at 104
//! ```
//!
//! Errors are translated where IPv4 translates them:
//! - about a client's packet translated to the node's address (quoted node
//!   -> backend, travelling to the node): where it enters, then forwarded
//!   past the stack as the flow's packets are ([`Outcome::Forward`]);
//! - about a reply (quoted Service -> client, travelling to the backend):
//!   where it enters the node (uplink, pod), before routing; one about a
//!   flow translated to the node's address is forwarded past the stack too;
//! - about a client's packet (quoted client -> backend, travelling to the
//!   client): at TC egress ([`Hook::Egress`]), after netfilter related it to
//!   the connection as it saw it, client <-> backend.
//!
//! The quoted flow's state is looked up, never created or stamped. IPv6 has
//! no header checksum; the `ICMPv6` checksum covers the pseudo-header (outer
//! addresses) and the whole message, so every outer and quoted field changed
//! goes into it. The quoted L4 checksum is left as it is, as IPv4 leaves it
//! (a receiver does not verify it). The sum over the packet (IPv6 header
//! included) is unchanged, so a `CHECKSUM_COMPLETE` value stays right.
//! Anything else `ICMPv6` (neighbor discovery, MLD, echo) is not ours and
//! passes untouched.

// Keys and entries are passed as references into the scratch slot (or the
// map) on purpose: by value they would be copied onto the stack, which has
// no room to spare (see `lb6::Scratch6`).
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::EbpfContext;
use lb_common::{
    csum,
    maps6::{same, FlowKey6, IPPROTO_ICMPV6},
    Family, NodeConfig, Verdict, IPPROTO_TCP, IPPROTO_UDP,
};
use network_types::ip::Ipv6Hdr;

use crate::{
    conntrack::now_s,
    conntrack6, counters,
    lb::{Hook, Ingress},
    lb6::{self, Scratch6},
    maps6::{CONNTRACK6, REVNAT6},
    mem::copy_from,
    parse::{read_at, write_at, L3_OFF},
    parse6::{IP6_DST, IP6_NEXT, IP6_PAYLOAD_LEN, IP6_SRC},
    spoof6,
};

/// `ICMPv6` type: destination unreachable (code 4: port unreachable).
pub const ICMP6_DEST_UNREACH: u8 = 1;
/// `ICMPv6` type: packet too big (bytes 4-7: the next hop's MTU, kept).
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
/// `ICMPv6` type: time exceeded.
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
/// `ICMPv6` type: parameter problem.
pub const ICMP6_PARAMETER_PROBLEM: u8 = 4;

/// Length of the fixed IPv6 header.
const IPV6_LEN: usize = Ipv6Hdr::LEN;
/// Offset of the `ICMPv6` header.
const ICMP_OFF: usize = L3_OFF + IPV6_LEN;
/// Length of the `ICMPv6` header (type, code, checksum, rest).
const ICMP_LEN: usize = 8;
/// Offset of the `ICMPv6` checksum.
const ICMP_CSUM_OFF: usize = ICMP_OFF + 2;
/// Offset of the quoted IPv6 header.
const QUOTED_IP_OFF: usize = ICMP_OFF + ICMP_LEN;
/// Offset of the quoted packet's L4 header.
const QUOTED_L4_OFF: usize = QUOTED_IP_OFF + IPV6_LEN;
/// Bytes of the quoted L4 header read: the ports and more (an error quotes
/// as much as fits in 1280 bytes, RFC 4443).
const QUOTED_L4_LEN: usize = 8;
/// Bytes an error about a TCP or UDP packet has at least, from the frame's start.
pub const ERROR_MIN_LEN: usize = QUOTED_L4_OFF + QUOTED_L4_LEN;
/// The version nibble of an IPv6 header's first byte.
const VERSION_6: u8 = 6;

/// What became of an `ICMPv6` packet.
pub enum Outcome {
    /// Not an error about a translated flow, or translated in place: hand it on.
    Pass,
    /// An error about a tracked flow that failed the reverse-path check.
    Drop,
    /// Translated in place; to be forwarded past the stack by its new
    /// fixed header: an error about a packet of a flow translated to the
    /// node's address (the client's, travelling to the node; a reply,
    /// travelling to the backend), as the flow's packets are.
    Forward,
}

/// Addresses and ports of a quoted packet, or an outer header's addresses
/// (ports unused); raw network-order words.
#[derive(Clone, Copy)]
struct Tuple6 {
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
}

/// Whether the IPv6 frame in `[data, data_end)` is `ICMPv6` right after its
/// fixed header (the only layout [`handle`] translates).
#[inline(always)]
pub fn is_icmp6(data: usize, data_end: usize) -> bool {
    if data + ICMP_OFF > data_end {
        return false;
    }
    // SAFETY: the fixed header is in bounds (above).
    unsafe { read_at::<u8>(data, L3_OFF + IP6_NEXT) == IPPROTO_ICMPV6 }
}

/// Handles an IPv6 frame (`ICMPv6` or not: checked here), whose
/// headers are in `[data, data_end)` and whose whole length is `len`: an
/// error about a translated flow is translated in place; everything else
/// passes untouched.
#[inline(always)]
pub fn handle<C: EbpfContext>(
    ctx: &C,
    data: usize,
    data_end: usize,
    len: usize,
    at: Ingress,
    cfg: &NodeConfig,
) -> Outcome {
    if data + ERROR_MIN_LEN > data_end {
        return Outcome::Pass;
    }
    // SAFETY (every read and write below): the offsets lie below
    // ERROR_MIN_LEN, checked against data_end above.
    let (outer_version, outer_next, payload_len, icmp_type) = unsafe {
        (
            read_at::<u8>(data, L3_OFF) >> 4,
            read_at::<u8>(data, L3_OFF + IP6_NEXT),
            usize::from(u16::from_be(read_at::<u16>(data, L3_OFF + IP6_PAYLOAD_LEN))),
            read_at::<u8>(data, ICMP_OFF),
        )
    };
    if outer_version != VERSION_6
        || outer_next != IPPROTO_ICMPV6
        || payload_len < ERROR_MIN_LEN - ICMP_OFF
        || ICMP_OFF + payload_len > len
        || !matches!(
            icmp_type,
            ICMP6_DEST_UNREACH
                | ICMP6_PACKET_TOO_BIG
                | ICMP6_TIME_EXCEEDED
                | ICMP6_PARAMETER_PROBLEM
        )
    {
        return Outcome::Pass;
    }
    let (quoted_version, proto) = unsafe {
        (
            read_at::<u8>(data, QUOTED_IP_OFF) >> 4,
            read_at::<u8>(data, QUOTED_IP_OFF + IP6_NEXT),
        )
    };
    // A quoted extension header (a fragment header included) is not walked.
    if quoted_version != VERSION_6 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Outcome::Pass;
    }
    let outer = unsafe {
        Tuple6 {
            src: read_at(data, L3_OFF + IP6_SRC),
            dst: read_at(data, L3_OFF + IP6_DST),
            sport: 0,
            dport: 0,
        }
    };
    let quoted = unsafe {
        Tuple6 {
            src: read_at(data, QUOTED_IP_OFF + IP6_SRC),
            dst: read_at(data, QUOTED_IP_OFF + IP6_DST),
            sport: read_at(data, QUOTED_L4_OFF),
            dport: read_at(data, QUOTED_L4_OFF + 2),
        }
    };
    // An error goes to the source of the packet it quotes.
    if !same(&outer.dst, &quoted.src) {
        return Outcome::Pass;
    }
    let Some(s) = lb6::scratch() else {
        return Outcome::Pass;
    };
    // The quoted packet's reverse: the client flow (if it was a reply) or
    // the reply tuple (if it was a client's packet).
    s.key = FlowKey6 {
        src_addr: quoted.dst,
        dst_addr: quoted.src,
        src_port: quoted.dport,
        dst_port: quoted.sport,
        proto,
        pad: [0, 0, 0],
    };
    // An error to the node's address about its own packet: about a client's
    // packet translated to it (only a pool port's can match).
    let via_node = at.hook != Hook::Egress
        && !same(&cfg.node_addr6, &[0; 4])
        && same(&outer.dst, &cfg.node_addr6);
    let found = if at.hook == Hook::Egress || via_node {
        about_forward(s, &outer, &quoted).map(|verdict| (verdict, via_node))
    } else {
        about_reply(s, &outer, &quoted, cfg)
    };
    let Some((verdict, forward)) = found else {
        return Outcome::Pass;
    };
    // The lookups are done: the key's room holds the error as it arrived.
    s.key = FlowKey6 {
        src_addr: outer.src,
        dst_addr: outer.dst,
        src_port: 0,
        dst_port: 0,
        proto: IPPROTO_ICMPV6,
        pad: [0, 0, 0],
    };
    if !spoof6::reply_path_ok(ctx, cfg, &s.key, &at, 0) {
        counters::count_in(Family::Ipv6, Verdict::Invalid);
        return Outcome::Drop;
    }
    // SAFETY: as above.
    unsafe { rewrite(data, &outer, &quoted, s) };
    counters::count_in(Family::Ipv6, verdict);
    if forward {
        Outcome::Forward
    } else {
        Outcome::Pass
    }
}

/// An error about a client's packet as it left translated (client ->
/// backend), travelling back to the client: its flow's reverse entry
/// (`s.key`, the quoted packet's reply tuple) restores the Service, if the
/// flow is live. Leaves the new outer addresses in `s.holder`, the new
/// quoted tuple in `s.reply`.
#[inline(always)]
fn about_forward(s: &mut Scratch6, outer: &Tuple6, quoted: &Tuple6) -> Option<Verdict> {
    // SAFETY: LRU values copied out at once.
    unsafe { copy_from(&mut s.rev, REVNAT6.get_ptr(&s.key)?) };
    s.reply = FlowKey6::client_of(&s.rev, s.key.proto);
    // SAFETY: as above.
    unsafe { copy_from(&mut s.ct, CONNTRACK6.get_ptr(&s.reply)?) };
    let reply = s.reply.reply_of(&s.ct);
    if reply != s.key {
        // An orphaned reverse entry: no live flow sent the quoted packet.
        return None;
    }
    // From the backend itself: as if from the Service; a router's stays.
    s.holder.src_addr = if same(&outer.src, &quoted.dst) {
        s.rev.svc_addr
    } else {
        outer.src
    };
    s.holder.dst_addr = s.rev.client_addr;
    // `s.reply`, the client flow, is the quoted packet as the client sent it.
    Some(Verdict::Reversed)
}

/// An error about a reply as it left translated (Service -> client),
/// travelling to the backend: the client flow (`s.key`, the quoted packet's
/// reverse) gives the backend and the address it replied to. The outer
/// source stays (a router's; the client's where the backend sees the
/// client) but for the client's own error about a flow translated to the
/// node's address: as if from the node, which the backend sees. Leaves the
/// new tuples as [`about_forward`] does; `true` with the verdict for a flow
/// translated to the node's address, whose error is forwarded past the
/// stack as its packets are (the stack never saw the flow).
#[inline(always)]
fn about_reply(
    s: &mut Scratch6,
    outer: &Tuple6,
    quoted: &Tuple6,
    cfg: &NodeConfig,
) -> Option<(Verdict, bool)> {
    // SAFETY: LRU value copied out at once.
    unsafe { copy_from(&mut s.ct, CONNTRACK6.get_ptr(&s.key)?) };
    if conntrack6::idle_expired(&s.key, &s.ct, &mut s.reply, cfg, now_s()) {
        return None;
    }
    // The reply as the backend sent it: backend -> client (or node).
    s.reply = s.key.reply_of(&s.ct);
    // The backend replied to another address than the client's: the node's
    // (a flow remapped after a clash keeps the client's address).
    let via_node = !same(&s.reply.dst_addr, &quoted.dst);
    s.holder.src_addr = if via_node && same(&outer.src, &quoted.dst) {
        s.reply.dst_addr
    } else {
        outer.src
    };
    s.holder.dst_addr = s.ct.backend_addr;
    Some((Verdict::Translated, via_node))
}

/// Writes the translation left in `s` (new outer addresses in `s.holder`,
/// new quoted tuple in `s.reply`) and the `ICMPv6` checksum, which covers
/// the outer addresses (pseudo-header) and the quoted ones and ports.
///
/// # Safety
/// `[data, data + ERROR_MIN_LEN)` must lie within the writable frame.
#[inline(always)]
unsafe fn rewrite(data: usize, outer: &Tuple6, quoted: &Tuple6, s: &Scratch6) {
    let (new_outer, new_quoted) = (&s.holder, &s.reply);
    // SAFETY: the caller's bounds; raw network-order words throughout.
    unsafe {
        let mut check: u16 = read_at(data, ICMP_CSUM_OFF);
        check = csum::replace128(check, &outer.src, &new_outer.src_addr);
        check = csum::replace128(check, &outer.dst, &new_outer.dst_addr);
        check = csum::replace128(check, &quoted.src, &new_quoted.src_addr);
        check = csum::replace128(check, &quoted.dst, &new_quoted.dst_addr);
        check = csum::replace16(check, quoted.sport, new_quoted.src_port);
        check = csum::replace16(check, quoted.dport, new_quoted.dst_port);
        write_at(data, L3_OFF + IP6_SRC, new_outer.src_addr);
        write_at(data, L3_OFF + IP6_DST, new_outer.dst_addr);
        write_at(data, QUOTED_IP_OFF + IP6_SRC, new_quoted.src_addr);
        write_at(data, QUOTED_IP_OFF + IP6_DST, new_quoted.dst_addr);
        write_at(data, QUOTED_L4_OFF, new_quoted.src_port);
        write_at(data, QUOTED_L4_OFF + 2, new_quoted.dst_port);
        write_at(data, ICMP_CSUM_OFF, check);
    }
}
