//! ICMP errors about translated flows (destination unreachable, time
//! exceeded, parameter problem): the quoted packet is translated back the way
//! its flow was, so that the sender of the original packet gets the error,
//! under the addresses it knows. A router's "fragmentation needed" reaches
//! the client (path MTU discovery); a backend's "port unreachable" reaches a
//! UDP client as ECONNREFUSED.
//!
//! Layout handled (offsets from the start of the frame; both IPv4 headers
//! without options, which routers and hosts do not add to errors):
//!
//! ```text
//! 0   Ethernet (14)
//! 14  outer IPv4 (20): checksum at 24, source at 26, destination at 30
//! 34  ICMP header (8): type, code, checksum at 36, rest (MTU, pointer)
//! 42  quoted IPv4 (20): checksum at 52, source at 54, destination at 58
//! 62  quoted TCP/UDP (at least 8): source port at 62, destination port at 64
//! ```
//!
//! Errors are translated where the flow's own packets are (see [`crate::lb`]),
//! so that netfilter relates each to its connection:
//! - about a reply (travelling to the backend): where it enters the node,
//!   before routing (it is addressed to the Service);
//! - about a client's packet translated to the node's address (travelling to
//!   the node): where it enters, then forwarded past the stack as the
//!   flow's packets are ([`Outcome::Forward`]);
//! - about a client's packet that kept the client's address (travelling to
//!   the client): at TC egress ([`Hook::Egress`]), after netfilter related
//!   it to the connection as it saw it, client <-> backend.
//!
//! The quoted flow's state is looked up, never created or stamped. The quoted
//! L4 checksum is left as it is (a receiver does not verify it; `nf_nat`
//! leaves TCP's alone as well); the quoted IP checksum, the ICMP checksum and
//! the outer IP checksum are updated, so the sum over the whole packet is
//! unchanged (a `CHECKSUM_COMPLETE` value stays right). Anything else ICMP,
//! echo requests to a Service address included, is not ours and passes
//! untouched, as kube-proxy's iptables rules (TCP, UDP, SCTP only) leave it.

use aya_ebpf::EbpfContext;
use lb_common::{
    csum, FlowKey, NodeConfig, Verdict, CT_F_SNAT, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    conntrack, counters,
    lb::{Hook, Ingress},
    maps::{CONNTRACK, REVNAT},
    parse::{read_at, write_at, L3_OFF},
    spoof,
};

/// ICMP type: destination unreachable (all codes; code 4 carries the next-hop MTU).
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP type: time exceeded.
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP type: parameter problem.
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// Length of an IPv4 header without options.
const IPV4_LEN: usize = 20;
/// `version 4, IHL 5`: the first byte of an IPv4 header without options.
const IPV4_NO_OPTIONS: u8 = 0x45;
/// Offset of the ICMP header.
const ICMP_OFF: usize = L3_OFF + IPV4_LEN;
/// Length of the ICMP header (type, code, checksum, rest).
const ICMP_LEN: usize = 8;
/// Offset of the ICMP checksum.
const ICMP_CSUM_OFF: usize = ICMP_OFF + 2;
/// Offset of the quoted IPv4 header.
const QUOTED_IP_OFF: usize = ICMP_OFF + ICMP_LEN;
/// Offset of the quoted packet's L4 header.
const QUOTED_L4_OFF: usize = QUOTED_IP_OFF + IPV4_LEN;
/// Bytes of the quoted L4 header every error carries (RFC 792): the ports and more.
const QUOTED_L4_LEN: usize = 8;
/// Bytes an error about a TCP or UDP packet has at least, from the frame's start.
pub const ERROR_MIN_LEN: usize = QUOTED_L4_OFF + QUOTED_L4_LEN;
/// Offsets within an IPv4 header: fragment field, protocol, checksum, addresses.
const IP_FRAG: usize = 6;
/// See [`IP_FRAG`].
const IP_PROTO: usize = 9;
/// See [`IP_FRAG`].
const IP_CSUM: usize = 10;
/// See [`IP_FRAG`].
const IP_SRC: usize = 12;
/// See [`IP_FRAG`].
const IP_DST: usize = 16;
/// "More fragments" and fragment offset bits of the fragment field.
const IP_MF_OR_OFFSET: u16 = 0x3fff;
/// Fragment offset bits of the fragment field.
const IP_OFFSET: u16 = 0x1fff;

/// What became of an ICMP packet.
pub enum Outcome {
    /// Not an error about a translated flow (or translated in place): hand it on.
    Pass,
    /// An error about a tracked flow that failed the reverse-path check.
    Drop,
    /// Translated in place; to be forwarded past the stack from `src` to
    /// `dst` (its new outer addresses): an error about a flow translated to
    /// the node's address.
    Forward {
        /// New outer source.
        src: u32,
        /// New outer destination.
        dst: u32,
    },
}

/// Addresses and ports, raw network-order words.
#[derive(Clone, Copy)]
struct Tuple {
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
}

/// The new outer and quoted tuples of an error (outer ports unused).
struct Translation {
    outer: Tuple,
    quoted: Tuple,
    verdict: Verdict,
    /// The flow is translated to the node's address: forwarded past the stack.
    via_node: bool,
}

/// Handles an IPv4 ICMP packet whose headers are in `[data, data_end)` and
/// whose whole length is `len`: an error about a translated flow is
/// translated in place; everything else passes untouched.
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
    let (outer_vihl, outer_frag, outer_proto, outer_len) = unsafe {
        (
            read_at::<u8>(data, L3_OFF),
            u16::from_be(read_at::<u16>(data, L3_OFF + IP_FRAG)),
            read_at::<u8>(data, L3_OFF + IP_PROTO),
            usize::from(u16::from_be(read_at::<u16>(data, L3_OFF + 2))),
        )
    };
    let icmp_type = unsafe { read_at::<u8>(data, ICMP_OFF) };
    if outer_vihl != IPV4_NO_OPTIONS
        || outer_proto != IPPROTO_ICMP
        || outer_frag & IP_MF_OR_OFFSET != 0
        || outer_len < ERROR_MIN_LEN - L3_OFF
        || L3_OFF + outer_len > len
        || !matches!(
            icmp_type,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
    {
        return Outcome::Pass;
    }
    let (quoted_vihl, quoted_frag, proto) = unsafe {
        (
            read_at::<u8>(data, QUOTED_IP_OFF),
            u16::from_be(read_at::<u16>(data, QUOTED_IP_OFF + IP_FRAG)),
            read_at::<u8>(data, QUOTED_IP_OFF + IP_PROTO),
        )
    };
    // Ports are only in the first fragment of a quoted datagram.
    if quoted_vihl != IPV4_NO_OPTIONS
        || quoted_frag & IP_OFFSET != 0
        || (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
    {
        return Outcome::Pass;
    }
    let outer = unsafe {
        Tuple {
            src: read_at(data, L3_OFF + IP_SRC),
            dst: read_at(data, L3_OFF + IP_DST),
            sport: 0,
            dport: 0,
        }
    };
    let quoted = unsafe {
        Tuple {
            src: read_at(data, QUOTED_IP_OFF + IP_SRC),
            dst: read_at(data, QUOTED_IP_OFF + IP_DST),
            sport: read_at(data, QUOTED_L4_OFF),
            dport: read_at(data, QUOTED_L4_OFF + 2),
        }
    };
    // An error goes to the source of the packet it quotes.
    if outer.dst != quoted.src {
        return Outcome::Pass;
    }
    // The quoted packet's reverse: the reply tuple (if it was a client's
    // packet) or the client tuple (if it was a reply).
    let reversed = FlowKey {
        src_addr: quoted.dst,
        dst_addr: quoted.src,
        src_port: quoted.dport,
        dst_port: quoted.sport,
        proto,
        pad: [0, 0, 0],
    };
    let Some(new) = translation(at.hook, &reversed, &outer, &quoted, cfg) else {
        return Outcome::Pass;
    };
    let arrived = FlowKey {
        src_addr: outer.src,
        dst_addr: outer.dst,
        src_port: 0,
        dst_port: 0,
        proto: IPPROTO_ICMP,
        pad: [0, 0, 0],
    };
    if !spoof::reply_path_ok(ctx, cfg, &arrived, &at, 0) {
        counters::count(Verdict::Invalid);
        return Outcome::Drop;
    }
    // SAFETY: as above.
    unsafe { rewrite(data, &outer, &quoted, &new) };
    counters::count(new.verdict);
    if new.via_node {
        Outcome::Forward {
            src: new.outer.src,
            dst: new.outer.dst,
        }
    } else {
        Outcome::Pass
    }
}

/// The translation of an error at `hook`, if it is translated there. Where
/// it enters the node: errors about replies, and errors about client
/// packets translated to the node's address; at egress, errors about client
/// packets that kept the client's address.
#[inline(always)]
fn translation(
    hook: Hook,
    reversed: &FlowKey,
    outer: &Tuple,
    quoted: &Tuple,
    cfg: &NodeConfig,
) -> Option<Translation> {
    let via_node = cfg.node_addr != 0 && quoted.src == cfg.node_addr;
    if hook == Hook::Egress {
        if via_node {
            None
        } else {
            about_forward(reversed, outer, quoted, false)
        }
    } else if via_node {
        about_forward(reversed, outer, quoted, true)
            .or_else(|| about_reply(reversed, outer, quoted, cfg))
    } else {
        about_reply(reversed, outer, quoted, cfg)
    }
}

/// An error about a client's packet as it left translated (client or SNAT
/// source -> backend), travelling back to the client: its flow's reverse
/// entry (`reply`, the quoted packet's reply tuple) restores the client and
/// the Service, if the flow is live. `via_node`: the quoted packet's source
/// is the node's address.
#[inline(always)]
fn about_forward(
    reply: &FlowKey,
    outer: &Tuple,
    quoted: &Tuple,
    via_node: bool,
) -> Option<Translation> {
    // SAFETY: LRU values copied out at once.
    let rev = unsafe { *REVNAT.get(reply)? };
    let client = FlowKey::client_of(&rev, reply.proto);
    // SAFETY: as above.
    let ct = unsafe { *CONNTRACK.get(client)? };
    if client.reply_of(&ct) != *reply {
        // An orphaned reverse entry: no live flow sent the quoted packet.
        return None;
    }
    Some(Translation {
        outer: Tuple {
            // From the backend itself: as if from the Service; a router's stays.
            src: if outer.src == quoted.dst {
                rev.svc_addr
            } else {
                outer.src
            },
            dst: rev.client_addr,
            sport: 0,
            dport: 0,
        },
        quoted: Tuple {
            src: rev.client_addr,
            sport: rev.client_port,
            dst: rev.svc_addr,
            dport: rev.svc_port,
        },
        verdict: Verdict::Reversed,
        via_node,
    })
}

/// An error about a reply as it left translated (Service -> client),
/// travelling to the backend: the client flow (`client`, the quoted packet's
/// reverse) gives the backend and the address the backend replied to.
#[inline(always)]
fn about_reply(
    client: &FlowKey,
    outer: &Tuple,
    quoted: &Tuple,
    cfg: &NodeConfig,
) -> Option<Translation> {
    // SAFETY: LRU value copied out at once.
    let ct = unsafe { *CONNTRACK.get(client)? };
    if conntrack::idle_expired(client, &ct, cfg, conntrack::now_s()) {
        return None;
    }
    let reply = client.reply_of(&ct);
    let snat = ct.flags & CT_F_SNAT != 0;
    Some(Translation {
        outer: Tuple {
            // From the client itself: as if from the address the backend sees.
            src: if snat && outer.src == quoted.dst {
                reply.dst_addr
            } else {
                outer.src
            },
            dst: ct.backend_addr,
            sport: 0,
            dport: 0,
        },
        quoted: Tuple {
            src: ct.backend_addr,
            sport: ct.backend_port,
            dst: reply.dst_addr,
            dport: reply.dst_port,
        },
        verdict: Verdict::Translated,
        via_node: snat && cfg.node_addr != 0 && ct.snat_addr == cfg.node_addr,
    })
}

/// Writes the translation: outer addresses, quoted addresses and ports, and
/// the three checksums that cover them.
///
/// # Safety
/// `[data, data + ERROR_MIN_LEN)` must lie within the writable frame.
#[inline(always)]
unsafe fn rewrite(data: usize, outer: &Tuple, quoted: &Tuple, new: &Translation) {
    // SAFETY: the caller's bounds; raw network-order words throughout.
    unsafe {
        let mut outer_check: u16 = read_at(data, L3_OFF + IP_CSUM);
        outer_check = csum::replace32(outer_check, outer.src, new.outer.src);
        outer_check = csum::replace32(outer_check, outer.dst, new.outer.dst);
        write_at(data, L3_OFF + IP_SRC, new.outer.src);
        write_at(data, L3_OFF + IP_DST, new.outer.dst);
        write_at(data, L3_OFF + IP_CSUM, outer_check);

        let old_quoted_check: u16 = read_at(data, QUOTED_IP_OFF + IP_CSUM);
        let mut quoted_check = csum::replace32(old_quoted_check, quoted.src, new.quoted.src);
        quoted_check = csum::replace32(quoted_check, quoted.dst, new.quoted.dst);
        // The ICMP checksum covers the quoted header, its checksum and ports.
        let mut icmp_check: u16 = read_at(data, ICMP_CSUM_OFF);
        icmp_check = csum::replace32(icmp_check, quoted.src, new.quoted.src);
        icmp_check = csum::replace32(icmp_check, quoted.dst, new.quoted.dst);
        icmp_check = csum::replace16(icmp_check, old_quoted_check, quoted_check);
        icmp_check = csum::replace16(icmp_check, quoted.sport, new.quoted.sport);
        icmp_check = csum::replace16(icmp_check, quoted.dport, new.quoted.dport);
        write_at(data, QUOTED_IP_OFF + IP_SRC, new.quoted.src);
        write_at(data, QUOTED_IP_OFF + IP_DST, new.quoted.dst);
        write_at(data, QUOTED_IP_OFF + IP_CSUM, quoted_check);
        write_at(data, QUOTED_L4_OFF, new.quoted.sport);
        write_at(data, QUOTED_L4_OFF + 2, new.quoted.dport);
        write_at(data, ICMP_CSUM_OFF, icmp_check);
    }
}
