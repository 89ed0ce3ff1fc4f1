//! IPv6 refusals, the twin of [`crate::reject`]: a new connection to an
//! IPv6 Service without endpoints is answered with an `ICMPv6` destination
//! unreachable, port unreachable (type 1, code 4, RFC 4443) from the
//! frontend's address, so the client fails at once instead of waiting for
//! a timeout.
//!
//! Refused as IPv4 refuses: only a TCP SYN (without ACK, RST or FIN) or a
//! UDP datagram to a frontend flagged `SERVICE_F_REJECT`, within this CPU's
//! budget (`REJECTS`, shared with IPv4); anything else to it drops. The
//! offending IPv6 header must not be followed by extension headers (else:
//! drop; a fragment's included), so every offset below is fixed. No error
//! goes to a source that is not a unicast address: such a packet is never
//! a flow of ours ([`crate::parse6`] passes it).
//!
//! The reply is built in the offending frame itself: 48 bytes of room are
//! made between its Ethernet header and its IPv6 header, and the frame is
//! cut after the first 8 bytes of L4, so the checksum covers fixed bytes
//! (RFC 4443 allows up to the minimum MTU). Offsets from the frame's start:
//!
//! ```text
//! 0   Ethernet (14): the offending frame's addresses, swapped; type IPv6
//! 14  IPv6 (40): traffic class and flow label 0, payload length 56, next
//!     header 58, hop limit 64, frontend address at 22, offender at 38
//! 54  ICMPv6 (8): type 1, code 4, checksum at 56, 4 bytes unused (0)
//! 62  the offending IPv6 header (40), as it arrived
//! 102 its first 8 bytes of TCP/UDP
//! 110 end
//! ```
//!
//! The `ICMPv6` checksum covers the pseudo-header (both addresses, the
//! upper-layer length, next header 58) and the message. The frame is
//! reshaped as IPv4's is, with the same helpers and the same care for the
//! skb's checksum state (see [`crate::reject`]): a TCP SYN whose checksum
//! its sender left to offload keeps its 20-byte TCP header in the quote
//! (the reply is 122 bytes).
//!
//! The same reply shape carries the Packet Too Big (type 2, code 0, bytes
//! 4-7 the route's MTU) the node originates for a packet of a flow
//! translated to its address that is too big for its route
//! ([`too_big_xdp`], [`answer_tc`]): the stack's own would go to the
//! translated source, the node itself, and IPv6 routers never fragment.
//! It answers the packet as it arrived (before translation), to its sender
//! from the address it was sent to (a client's: the Service's), within the
//! same budget; the quote (the IPv6 header and 8 bytes of TCP/UDP, 20 of a
//! TCP header with a partial checksum) is well within the minimum MTU (RFC
//! 4443 2.4 (c)), and is all a sender's TCP or UDP needs to find its
//! socket. A packet with extension headers, or beyond the budget, drops, as
//! a router drops what it cannot forward.

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, TC_ACT_SHOT},
    helpers::{
        bpf_csum_update, bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use lb_common::{csum, maps6::IPPROTO_ICMPV6, ServiceEntry, IPPROTO_TCP, SERVICE_F_REJECT};
use network_types::ip::Ipv6Hdr;

use crate::{
    icmp6::{ICMP6_DEST_UNREACH, ICMP6_PACKET_TOO_BIG},
    parse::{read_at, write_at, L3_OFF},
    parse6::{Flow6, EXT_OFF, IP6_DST, IP6_PAYLOAD_LEN, IP6_SRC},
    reject::{opens, sum, within_budget},
};

/// Length of the fixed IPv6 header.
const IPV6_LEN: usize = Ipv6Hdr::LEN;
/// Length of the `ICMPv6` header.
const ICMP_LEN: usize = 8;
/// Room made in front of the offending IPv6 header: the new IPv6 and
/// `ICMPv6` headers.
const ROOM: usize = IPV6_LEN + ICMP_LEN;
/// Offset of the new `ICMPv6` header.
const ICMP_OFF: usize = L3_OFF + IPV6_LEN;
/// Offset of the quoted (offending) IPv6 header.
const QUOTE_OFF: usize = ICMP_OFF + ICMP_LEN;
/// Bytes of the offending packet's L4 header quoted.
const QUOTED_L4: usize = 8;
/// The fixed TCP header: what a quote of a TCP SYN with a partial checksum keeps.
const TCP_HEADER_LEN: usize = 20;
/// Length of the reply frame.
const REPLY_LEN: usize = QUOTE_OFF + IPV6_LEN + QUOTED_L4;
/// Length of the reply frame quoting a whole fixed TCP header.
const LONG_REPLY_LEN: usize = QUOTE_OFF + IPV6_LEN + TCP_HEADER_LEN;
/// Version 6, traffic class 0, flow label 0 (the header's first 4 bytes).
const VERSION_CLASS_LABEL: [u8; 4] = [0x60, 0, 0, 0];
/// Next header, then hop limit (64, as Linux sends its own errors).
const NEXT_HOP_LIMIT: [u8; 2] = [IPPROTO_ICMPV6, 64];
/// `ICMPv6` destination unreachable, code port unreachable.
const TYPE_CODE: [u8; 2] = [ICMP6_DEST_UNREACH, 4];
/// `ICMPv6` packet too big (code 0).
const TOO_BIG_TYPE_CODE: [u8; 2] = [ICMP6_PACKET_TOO_BIG, 0];
/// The Ethernet type of IPv6.
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
/// Ethernet address length.
const ETH_ALEN: usize = 6;

/// Whether `flow`, to the IPv6 frontend `svc` that has no backend to pick,
/// is refused (else it drops). Takes one refusal of this CPU's budget.
#[inline(always)]
pub fn refuses(flow: &Flow6, svc: &ServiceEntry) -> bool {
    svc.flags & SERVICE_F_REJECT != 0
        && flow.l4_off == EXT_OFF
        && opens(flow.proto, flow.tcp_flags)
        && within_budget()
}

/// Turns the offending frame in `ctx` into its refusal and sends it back
/// out of the interface it arrived on (`XDP_TX`); `XDP_DROP` when the frame
/// cannot be reshaped. `flow.len` is the frame's whole length.
#[inline(always)]
pub fn refuse_xdp(ctx: &XdpContext, flow: &Flow6) -> u32 {
    answer_xdp(ctx, flow, TYPE_CODE, 0)
}

/// Whether a packet `flow` of a flow translated to the node's address,
/// too big for its route, is answered with a Packet Too Big (else it
/// drops): without extension headers, within this CPU's budget.
#[inline(always)]
fn answers_too_big(flow: &Flow6) -> bool {
    flow.l4_off == EXT_OFF && within_budget()
}

/// Answers the frame in `ctx`, as it arrived, too big for its route's
/// `mtu`, with a Packet Too Big sent back out of its interface (`XDP_TX`);
/// `XDP_DROP` when it is not answered or cannot be reshaped.
#[inline(always)]
pub fn too_big_xdp(ctx: &XdpContext, flow: &Flow6, mtu: u16) -> u32 {
    if !answers_too_big(flow) {
        return xdp_action::XDP_DROP;
    }
    answer_xdp(ctx, flow, TOO_BIG_TYPE_CODE, u32::from(mtu).to_be())
}

/// Turns the frame in `ctx` into an `ICMPv6` error `type_code` about it
/// (bytes 4-7 `rest`, network order) and sends it back (see
/// [`refuse_xdp`]).
#[inline(always)]
fn answer_xdp(ctx: &XdpContext, flow: &Flow6, type_code: [u8; 2], rest: u32) -> u32 {
    // Both deltas are a few bytes to a few KiB: they fit an i32.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let (grow, cut) = (
        -(ROOM as i32),
        REPLY_LEN as i32 - (flow.len as i32 + ROOM as i32),
    );
    // SAFETY: the program's own context; the helpers check their bounds.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, grow) } != 0
        || unsafe { bpf_xdp_adjust_tail(ctx.ctx, cut) } != 0
    {
        return xdp_action::XDP_DROP;
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + REPLY_LEN > data_end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: REPLY_LEN bytes checked above; the old Ethernet header lies
    // at ROOM, before the quote.
    unsafe { build(data, ROOM, QUOTED_L4, type_code, rest) };
    xdp_action::XDP_TX
}

/// An `ICMPv6` error the node answers a packet with at TC ([`answer_tc`]).
#[derive(Clone, Copy)]
pub enum Answer6 {
    /// The refusal (port unreachable) of a packet [`refuses`] refused.
    Refusal,
    /// A Packet Too Big for a route of this MTU, if [`answers_too_big`].
    TooBig(u16),
}

/// Turns the offending skb in `ctx` into `answer` and redirects it to the
/// egress of `ifindex`, the interface it arrived on; `TC_ACT_SHOT` when
/// it is not answered or cannot be reshaped. One function for both, called
/// once: `lb_tc6`'s verification takes each call site anew.
#[inline(always)]
pub fn answer_tc(ctx: &TcContext, flow: &Flow6, ifindex: u32, answer: Answer6) -> i32 {
    let (type_code, rest) = match answer {
        Answer6::Refusal => (TYPE_CODE, 0),
        Answer6::TooBig(mtu) => {
            if !answers_too_big(flow) {
                return TC_ACT_SHOT;
            }
            (TOO_BIG_TYPE_CODE, u32::from(mtu).to_be())
        }
    };
    error_tc(ctx, flow, ifindex, type_code, rest)
}

/// Turns the skb in `ctx` into an `ICMPv6` error `type_code` about it
/// (bytes 4-7 `rest`, network order) and redirects it ([`answer_tc`]).
#[inline(always)]
fn error_tc(ctx: &TcContext, flow: &Flow6, ifindex: u32, type_code: [u8; 2], rest: u32) -> i32 {
    // The lengths are below 130: they fit any integer.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let (room, short, long) = (ROOM as i32, REPLY_LEN as u32, LONG_REPLY_LEN as u32);
    if ctx.adjust_room(room, BPF_ADJ_ROOM_MAC, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: the program's own skb; the helper checks the length.
    let cut = unsafe { bpf_skb_change_tail(ctx.skb.skb, short, 0) } == 0;
    // A partial checksum's field lies beyond 8 bytes of TCP (see above).
    // SAFETY: as above.
    let long_cut = !cut
        && flow.proto == IPPROTO_TCP
        && unsafe { bpf_skb_change_tail(ctx.skb.skb, long, 0) } == 0;
    if !cut && !long_cut {
        return TC_ACT_SHOT;
    }
    // Linear and writable: the whole frame, 122 bytes at most.
    if ctx.pull_data(ctx.len()).is_err() {
        return TC_ACT_SHOT;
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // SAFETY (both builds): the frame's bytes up to the end of the quote
    // are checked first; the Ethernet header is at 0, the room after it zeros.
    let added = if long_cut {
        if data + LONG_REPLY_LEN > data_end {
            return TC_ACT_SHOT;
        }
        unsafe { build(data, 0, TCP_HEADER_LEN, type_code, rest) }
    } else {
        if data + REPLY_LEN > data_end {
            return TC_ACT_SHOT;
        }
        unsafe { build(data, 0, QUOTED_L4, type_code, rest) }
    };
    // SAFETY: the program's own skb; adds the new headers' sum to a
    // complete checksum (the room they fill was zeros).
    unsafe { bpf_csum_update(ctx.skb.skb, u32::from(added)) };
    // SAFETY: helper without memory arguments; flags 0: egress.
    let verdict = unsafe { bpf_redirect(ifindex, 0) };
    // TC_ACT_REDIRECT (7), or TC_ACT_SHOT for an unknown flag.
    #[allow(clippy::cast_possible_truncation)]
    {
        verdict as i32
    }
}

/// Writes the reply's Ethernet, IPv6 and `ICMPv6` headers (`type_code`,
/// bytes 4-7 `rest`) in front of the quote (the offending IPv6 header at
/// [`QUOTE_OFF`] and `quoted_l4` bytes after it), the offending frame's
/// Ethernet header being at `eth_at`.
/// Returns the folded sum of the 48 bytes of new IPv6 and `ICMPv6` headers.
///
/// # Safety
/// `[data, data + QUOTE_OFF + IPV6_LEN + quoted_l4)` and the 12 address
/// bytes at `eth_at` must lie within the writable frame; `quoted_l4` is
/// [`QUOTED_L4`] or [`TCP_HEADER_LEN`].
#[inline(always)]
unsafe fn build(
    data: usize,
    eth_at: usize,
    quoted_l4: usize,
    type_code: [u8; 2],
    rest: u32,
) -> u16 {
    // SAFETY (every access): the caller's bounds; all offsets are below
    // QUOTE_OFF + IPV6_LEN + quoted_l4.
    unsafe {
        let to: [u8; ETH_ALEN] = read_at(data, eth_at);
        let from: [u8; ETH_ALEN] = read_at(data, eth_at + ETH_ALEN);
        // The offending packet's addresses, raw network-order words.
        let client: [u32; 4] = read_at(data, QUOTE_OFF + IP6_SRC);
        let frontend: [u32; 4] = read_at(data, QUOTE_OFF + IP6_DST);
        write_at(data, 0, from);
        write_at(data, ETH_ALEN, to);
        write_at(data, 2 * ETH_ALEN, ETH_P_IPV6);

        // IPv6 header. The payload length fits 16 bits (68 at most).
        #[allow(clippy::cast_possible_truncation)]
        let payload = ((ICMP_LEN + IPV6_LEN + quoted_l4) as u16).to_be();
        write_at(data, L3_OFF, VERSION_CLASS_LABEL);
        write_at(data, L3_OFF + IP6_PAYLOAD_LEN, payload);
        write_at(data, L3_OFF + IP6_PAYLOAD_LEN + 2, NEXT_HOP_LIMIT);
        write_at(data, L3_OFF + IP6_SRC, frontend);
        write_at(data, L3_OFF + IP6_DST, client);

        // ICMPv6 header, its checksum over the pseudo-header (addresses,
        // upper-layer length, next header: raw network-order halves, as
        // `sum` reads them), itself and the quote.
        write_at(data, ICMP_OFF, type_code);
        write_at(data, ICMP_OFF + 2, 0u16);
        write_at(data, ICMP_OFF + 4, rest);
        let mut icmp_sum = sum(data, L3_OFF + IP6_SRC, 16)
            + u32::from(payload)
            + u32::from(u16::from(IPPROTO_ICMPV6).to_be())
            + sum(data, ICMP_OFF, (ICMP_LEN + IPV6_LEN + QUOTED_L4) / 2);
        if quoted_l4 == TCP_HEADER_LEN {
            icmp_sum += sum(
                data,
                QUOTE_OFF + IPV6_LEN + QUOTED_L4,
                (TCP_HEADER_LEN - QUOTED_L4) / 2,
            );
        }
        let icmp_check = !csum::fold(icmp_sum);
        write_at(data, ICMP_OFF + 2, icmp_check);
        csum::fold(sum(data, L3_OFF, ROOM / 2))
    }
}
