//! Refusals: a new connection to a Service without endpoints is answered
//! with an ICMP port unreachable from the frontend's address, as
//! kube-proxy's REJECT rule answers it, so the client fails at once
//! ("connection refused") instead of waiting for a timeout.
//!
//! Only a TCP SYN (without ACK, RST or FIN) or a UDP datagram (whole, or its
//! first fragment) to a frontend flagged `SERVICE_F_REJECT` is refused;
//! anything else to it drops, as does a frontend without the flag (its
//! Service has endpoints, but none this frontend may use: a `Local` traffic
//! policy on a node without a local endpoint, where kube-proxy drops too).
//! No error goes to a source that is not a unicast address (RFC 1122
//! 3.2.2), and each CPU sends at most `REJECTS_PER_SECOND` a second (a
//! per-CPU budget in [`REJECTS`], not pinned); beyond it, packets drop.
//! The offending IPv4 header must be without options (else: drop), so every
//! offset below is fixed.
//!
//! The reply is built in the offending frame itself: 28 bytes of room are
//! made between its Ethernet header and its IPv4 header, and the frame is cut
//! after the first 8 bytes of L4 (RFC 792). Offsets from the frame's start:
//!
//! ```text
//! 0   Ethernet (14): the offending frame's addresses, swapped
//! 14  IPv4 (20): TOS 0xc0, total length 56, id 0, DF off, TTL 64, ICMP,
//!     checksum at 24, frontend address at 26, offender at 30
//! 34  ICMP (8): type 3, code 3, checksum at 36, 4 bytes unused (0)
//! 42  the offending IPv4 header (20), as it arrived
//! 62  its first 8 bytes of TCP/UDP (ports, sequence number or length and checksum)
//! 70  end
//! ```
//!
//! XDP makes the room with `bpf_xdp_adjust_head` (the frame's Ethernet
//! header then lies at 28, where it is read before the new headers cover
//! it), cuts with `bpf_xdp_adjust_tail` and returns `XDP_TX`. TC makes it
//! with `bpf_skb_adjust_room` at the MAC header (zeroed room, the Ethernet
//! header moved in front of it), cuts with `bpf_skb_change_tail` and
//! redirects to the egress of the interface the packet arrived on (into the
//! pod, or back to the LAN). The skb's checksum state stays right: the room
//! is zeros and the cut is taken out of a complete checksum by the helpers,
//! and the new headers' sum is added with `bpf_csum_update` (a no-op unless
//! the checksum is complete); `adjust_room` turns "checksum unnecessary"
//! into "none", so the receiver verifies the new ICMP checksum. A packet
//! whose checksum its sender left to offload (a partial checksum, from a pod
//! or a host behind a veth) keeps that pending completion, now pointing into
//! the quote, which the reply's receiver over the veth neither completes nor
//! verifies (a device completing it in software on the way would break the
//! ICMP checksum: see the README's limits). A TCP SYN of that kind cannot
//! be cut before its TCP checksum field: its quote keeps the 20-byte TCP
//! header (the reply is 82 bytes), within RFC 1812's "as much as fits".

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, TC_ACT_SHOT},
    helpers::{
        bpf_csum_update, bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use lb_common::{
    conntrack::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    csum, ServiceEntry, IPPROTO_ICMP, IPPROTO_TCP, REJECTS_PER_SECOND, SERVICE_F_REJECT,
};

use crate::{
    conntrack,
    maps::REJECTS,
    parse::{read_at, write_at, Flow, Fragment, L3_OFF},
};

/// Length of an IPv4 header without options.
const IPV4_LEN: usize = 20;
/// Length of the ICMP header.
const ICMP_LEN: usize = 8;
/// Room made in front of the offending IPv4 header: the new IPv4 and ICMP headers.
const ROOM: usize = IPV4_LEN + ICMP_LEN;
/// Offset of the new ICMP header.
const ICMP_OFF: usize = L3_OFF + IPV4_LEN;
/// Offset of the quoted (offending) IPv4 header.
const QUOTE_OFF: usize = ICMP_OFF + ICMP_LEN;
/// Bytes of the offending packet's L4 header quoted (RFC 792).
const QUOTED_L4: usize = 8;
/// The fixed TCP header: what a quote of a TCP SYN with a partial checksum keeps.
const TCP_HEADER_LEN: usize = 20;
/// Length of the reply frame.
const REPLY_LEN: usize = QUOTE_OFF + IPV4_LEN + QUOTED_L4;
/// Length of the reply frame quoting a whole fixed TCP header.
const LONG_REPLY_LEN: usize = QUOTE_OFF + IPV4_LEN + TCP_HEADER_LEN;
/// `version 4, IHL 5` then TOS: internetwork control precedence, as Linux
/// sends its own ICMP errors.
const VIHL_TOS: [u8; 2] = [0x45, 0xc0];
/// TTL of the reply, then its protocol.
const TTL_PROTO: [u8; 2] = [64, IPPROTO_ICMP];
/// ICMP destination unreachable, code port unreachable.
const TYPE_CODE: [u8; 2] = [3, 3];
/// The Ethernet type of IPv4.
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
/// Ethernet address length.
const ETH_ALEN: usize = 6;
/// Highest first octet of a unicast IPv4 address (224 and up are
/// multicast, reserved and broadcast).
const LAST_UNICAST_OCTET: u8 = 223;
/// First octet of loopback addresses.
const LOOPBACK_OCTET: u8 = 127;

/// This CPU's refusal budget: the second it counts and the refusals sent
/// in it. XDP and TC run with bottom halves off, so nothing else on this CPU
/// touches the slot while a program runs.
#[repr(C)]
pub struct Budget {
    /// Monotonic seconds of the count.
    second: u32,
    /// Refusals sent in that second.
    sent: u32,
}

/// Whether `flow`, to the frontend `svc` that has no backend to pick, is
/// refused (else it drops). Takes one refusal of this CPU's budget.
#[inline(always)]
pub fn refuses(flow: &Flow, svc: &ServiceEntry) -> bool {
    if svc.flags & SERVICE_F_REJECT == 0
        || flow.fragment == Fragment::Later
        || flow.l4_off != L3_OFF + IPV4_LEN
    {
        return false;
    }
    if !opens(flow.proto, flow.tcp_flags) {
        return false;
    }
    // The first octet of the raw network-order source.
    let first = flow.src.to_ne_bytes()[0];
    if first == 0 || first == LOOPBACK_OCTET || first > LAST_UNICAST_OCTET {
        return false;
    }
    within_budget()
}

/// Whether a packet of protocol `proto` with TCP flags `tcp_flags` may be
/// refused: a UDP datagram, or only the first packet of a TCP connection (a
/// SYN without ACK, RST or FIN); a stray segment gets nothing.
#[inline(always)]
pub fn opens(proto: u8, tcp_flags: u8) -> bool {
    proto != IPPROTO_TCP || tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

/// Takes one refusal of this CPU's budget for the current second, if any
/// is left (both families share it).
#[inline(always)]
pub fn within_budget() -> bool {
    let Some(budget) = REJECTS.get_ptr_mut(0) else {
        return false;
    };
    let now = conntrack::now_s();
    // SAFETY: this CPU's slot (see `Budget`), plain stores.
    unsafe {
        if (*budget).second != now {
            (*budget).second = now;
            (*budget).sent = 0;
        }
        if (*budget).sent >= REJECTS_PER_SECOND {
            return false;
        }
        (*budget).sent += 1;
    }
    true
}

/// Turns the offending frame in `ctx` into its refusal and sends it back
/// out of the interface it arrived on (`XDP_TX`); `XDP_DROP` when the frame
/// cannot be reshaped. `flow.len` is the frame's whole length.
#[inline(always)]
pub fn refuse_xdp(ctx: &XdpContext, flow: &Flow) -> u32 {
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
    unsafe { build(data, ROOM, QUOTED_L4) };
    xdp_action::XDP_TX
}

/// Turns the offending skb in `ctx` into its refusal and redirects it to
/// the egress of `ifindex`, the interface it arrived on; `TC_ACT_SHOT` when
/// it cannot be reshaped.
#[inline(always)]
pub fn refuse_tc(ctx: &TcContext, flow: &Flow, ifindex: u32) -> i32 {
    // The lengths are below 100: they fit any integer.
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
    // Linear and writable: the whole frame, 82 bytes at most.
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
        unsafe { build(data, 0, TCP_HEADER_LEN) }
    } else {
        if data + REPLY_LEN > data_end {
            return TC_ACT_SHOT;
        }
        unsafe { build(data, 0, QUOTED_L4) }
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

/// Ones'-complement sum (unfolded) of the `words` 16-bit words at `data + off`.
///
/// # Safety
/// `data + off + 2 * words` must lie within the frame.
#[inline(always)]
pub unsafe fn sum(data: usize, off: usize, words: usize) -> u32 {
    let mut total = 0u32;
    for i in 0..words {
        // SAFETY: the caller's bounds.
        total += u32::from(unsafe { read_at::<u16>(data, off + 2 * i) });
    }
    total
}

/// Writes the reply's Ethernet, IPv4 and ICMP headers in front of the
/// quote (the offending IPv4 header at [`QUOTE_OFF`] and `quoted_l4` bytes
/// after it), the offending frame's Ethernet header being at `eth_at`.
/// Returns the folded sum of the 28 bytes of new IPv4 and ICMP headers.
///
/// # Safety
/// `[data, data + QUOTE_OFF + IPV4_LEN + quoted_l4)` and the 12 address
/// bytes at `eth_at` must lie within the writable frame; `quoted_l4` is
/// [`QUOTED_L4`] or [`TCP_HEADER_LEN`].
#[inline(always)]
unsafe fn build(data: usize, eth_at: usize, quoted_l4: usize) -> u16 {
    // SAFETY (every access): the caller's bounds; all offsets are below
    // QUOTE_OFF + IPV4_LEN + quoted_l4.
    unsafe {
        let to: [u8; ETH_ALEN] = read_at(data, eth_at);
        let from: [u8; ETH_ALEN] = read_at(data, eth_at + ETH_ALEN);
        // The offending packet's addresses, raw network-order words.
        let client: u32 = read_at(data, QUOTE_OFF + 12);
        let frontend: u32 = read_at(data, QUOTE_OFF + 16);
        write_at(data, 0, from);
        write_at(data, ETH_ALEN, to);
        write_at(data, 2 * ETH_ALEN, ETH_P_IP);

        // IPv4 header. The length fits 16 bits (82 at most).
        #[allow(clippy::cast_possible_truncation)]
        let total = ((IPV4_LEN + ICMP_LEN + IPV4_LEN + quoted_l4) as u16).to_be();
        write_at(data, L3_OFF, VIHL_TOS);
        write_at(data, L3_OFF + 2, total);
        // Identification 0; flags and fragment offset 0 (DF off).
        write_at(data, L3_OFF + 4, 0u32);
        write_at(data, L3_OFF + 8, TTL_PROTO);
        write_at(data, L3_OFF + 10, 0u16);
        write_at(data, L3_OFF + 12, frontend);
        write_at(data, L3_OFF + 16, client);
        let ip_check = !csum::fold(sum(data, L3_OFF, IPV4_LEN / 2));
        write_at(data, L3_OFF + 10, ip_check);

        // ICMP header, its checksum over itself and the quote.
        write_at(data, ICMP_OFF, TYPE_CODE);
        write_at(data, ICMP_OFF + 2, 0u16);
        write_at(data, ICMP_OFF + 4, 0u32);
        let mut icmp_sum = sum(data, ICMP_OFF, (ICMP_LEN + IPV4_LEN + QUOTED_L4) / 2);
        if quoted_l4 == TCP_HEADER_LEN {
            icmp_sum += sum(
                data,
                QUOTE_OFF + IPV4_LEN + QUOTED_L4,
                (TCP_HEADER_LEN - QUOTED_L4) / 2,
            );
        }
        let icmp_check = !csum::fold(icmp_sum);
        write_at(data, ICMP_OFF + 2, icmp_check);
        csum::fold(sum(data, L3_OFF, ROOM / 2))
    }
}
