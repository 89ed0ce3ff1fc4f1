//! Forwarding past the stack, for the packets of flows translated to the
//! node's own address (a backend on another node; a pod reaching itself
//! through its Service), both ways (see [`crate::lb`]). Carrying the node's
//! address, such a packet is a martian to the stack where it enters (unless
//! `accept_local`, which would let anyone send as the node), and netfilter
//! would see each direction as a different connection. So the program
//! routes it itself: a forwarding route lookup for its (translated)
//! destination, the TTL decremented as a router does, and the packet handed
//! to the route's device. Where the lookup fails (no route, forwarding
//! disabled, TTL spent, no neighbour yet at XDP, a next hop XDP cannot
//! reach) the packet goes to the stack, as a router would get it.
//!
//! - At TC: a redirect to the route's device, whose neighbour entry gives
//!   the Ethernet addresses (`bpf_redirect_neigh`).
//! - At XDP: the neighbour's addresses from the lookup, and `XDP_TX` when
//!   the next hop is behind the interface the packet came in by (the
//!   balancer's usual case). A next hop behind another device (a redirect
//!   could reach only devices that take XDP frames: no overlay), or without
//!   a resolved neighbour, is the uplink's TC program's to reach: XDP hands
//!   the translated frame over ([`crate::handoff`]).
//!
//! IPv6's twin is [`crate::forward6`], which shares the family-independent
//! parts here (the redirect, the XDP next hop's decision, the hop count).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_OK,
    },
    helpers::bpf_redirect_neigh,
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::csum;

use crate::{
    fib,
    parse::{read_at, write_at, L3_OFF},
};

/// Length of the Ethernet addresses.
pub const ETH_ALEN: usize = 6;
/// Offset of the IPv4 total length.
const IP_TOT_LEN_OFF: usize = L3_OFF + 2;

/// Offset of the TTL and protocol word in the IPv4 header.
const IP_TTL_OFF: usize = L3_OFF + 8;
/// Offset of the IPv4 header checksum.
const IP_CSUM_OFF: usize = L3_OFF + 10;

/// Routes the translated packet (now `src` -> `dst`, protocol `proto`) that
/// arrived on `ifindex` and hands it to its next hop; the TC verdict
/// (`TC_ACT_OK`: the stack forwards it).
#[inline(always)]
pub fn to_next_hop(ctx: &TcContext, ifindex: u32, src: u32, dst: u32, proto: u8) -> i32 {
    // A packet too big for the route (an overlay's smaller MTU) goes to the
    // stack, which fragments it or answers "fragmentation needed". A GRO
    // packet is longer than its segments: the device segments it.
    let tot_len = if gso(ctx) {
        0
    } else {
        ctx.load::<u16>(IP_TOT_LEN_OFF).map_or(0, u16::from_be)
    };
    let (ret, params) = route(
        ctx,
        ifindex,
        src,
        dst,
        proto,
        tot_len,
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    );
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || !decrement_ttl(ctx) {
        // The stack answers what it must (time exceeded, unreachable).
        return TC_ACT_OK;
    }
    redirect(params.ifindex)
}

/// Whether the skb is a GRO packet, longer than its segments: its length
/// is not checked against the route's MTU (the device segments it).
#[inline(always)]
pub fn gso(ctx: &TcContext) -> bool {
    // SAFETY: the program's own skb context.
    unsafe { (*ctx.skb.skb).gso_size != 0 }
}

/// Redirects the packet to the route's device `ifindex`, whose neighbour
/// entry gives the Ethernet addresses: the TC verdict.
#[inline(always)]
pub fn redirect(ifindex: u32) -> i32 {
    // SAFETY: no neighbour parameters: the kernel resolves the next hop of the route.
    let verdict = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    // TC_ACT_REDIRECT (7) or TC_ACT_SHOT (2).
    #[allow(clippy::cast_possible_truncation)]
    {
        verdict as i32
    }
}

/// Where XDP sends a frame it forwards ([`xdp_next_hop`]).
#[derive(Clone, Copy)]
pub enum XdpNextHop {
    /// Back out of the uplink it came in by, to the neighbour at `dmac`
    /// from the uplink's `smac` ([`xdp_transmit`]). Only the addresses are
    /// kept: the XDP program's stack has little room left.
    Tx {
        /// The neighbour's Ethernet address.
        dmac: [u8; ETH_ALEN],
        /// The uplink's Ethernet address.
        smac: [u8; ETH_ALEN],
    },
    /// Through the uplink's TC program, translated ([`crate::handoff`]): the
    /// next hop is behind another device (an overlay's, which takes no XDP
    /// frames), its neighbour is not resolved yet (`bpf_redirect_neigh`
    /// resolves it), or the frame is multi-buffer (not every driver
    /// transmits one).
    Tc,
    /// To the stack: no route, forwarding disabled, too big for the route
    /// (the stack fragments it or answers for it), unreadable.
    Stack,
}

/// Looks up where the frame in `[data, data_end)`, `len` bytes in all, that
/// arrived on `ifindex` goes once translated to `src` -> `dst` (protocol
/// `proto`). Reads the packet, writes nothing.
#[inline(always)]
pub fn xdp_next_hop(
    ctx: &XdpContext,
    len: usize,
    ifindex: u32,
    src: u32,
    dst: u32,
    proto: u8,
) -> XdpNextHop {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + L3_OFF + 20 > data_end {
        return XdpNextHop::Stack;
    }
    // With the packet's length, the lookup also checks the route's MTU.
    // SAFETY: the IPv4 header lies within the bounds checked above.
    let tot_len = u16::from_be(unsafe { read_at::<u16>(data, IP_TOT_LEN_OFF) });
    let (ret, params) = route(ctx, ifindex, src, dst, proto, tot_len, 0);
    // The decision of `next_hop_of`, written out: through the shared
    // function, `lb_xdp`'s verification took 1,363 more instructions.
    if ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return XdpNextHop::Tc;
    }
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return XdpNextHop::Stack;
    }
    if params.ifindex != ifindex || len > data_end - data {
        XdpNextHop::Tc
    } else {
        XdpNextHop::Tx {
            dmac: params.dmac,
            smac: params.smac,
        }
    }
}

/// Where XDP sends a frame of `len` bytes, `linear` of them in its linear
/// part, that arrived on `ifindex`, by its route lookup's result (`ret`,
/// `params`): IPv6's ([`crate::forward6`]); IPv4's [`xdp_next_hop`] decides
/// the same inline.
#[inline(always)]
pub fn next_hop_of(
    ret: i64,
    params: &bpf_fib_lookup,
    ifindex: u32,
    len: usize,
    linear: usize,
) -> XdpNextHop {
    if ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return XdpNextHop::Tc;
    }
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return XdpNextHop::Stack;
    }
    if params.ifindex != ifindex || len > linear {
        XdpNextHop::Tc
    } else {
        XdpNextHop::Tx {
            dmac: params.dmac,
            smac: params.smac,
        }
    }
}

/// Sends the (translated) frame back out of its uplink to the neighbour at
/// `dmac`, from `smac` ([`XdpNextHop::Tx`]): TTL decremented with its
/// checksum; the XDP verdict (`XDP_PASS`: the stack answers a spent TTL).
#[inline(always)]
pub fn xdp_transmit(ctx: &XdpContext, dmac: [u8; ETH_ALEN], smac: [u8; ETH_ALEN]) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + L3_OFF + 20 > data_end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the TTL word and both Ethernet addresses lie within the bounds
    // checked above; packet fields may be unaligned (read/write_at).
    unsafe {
        let word: u16 = read_at(data, IP_TTL_OFF);
        let Some(new) = ttl_decremented(word) else {
            return xdp_action::XDP_PASS;
        };
        let check: u16 = read_at(data, IP_CSUM_OFF);
        write_at(data, IP_CSUM_OFF, csum::replace16(check, word, new));
        write_at(data, IP_TTL_OFF, new);
        write_macs(data, dmac, smac);
    }
    xdp_action::XDP_TX
}

/// Writes the neighbour's `dmac` and the uplink's `smac` into the frame at
/// `data`.
///
/// # Safety
/// The Ethernet header at `data` must lie within the frame's bounds.
#[inline(always)]
pub unsafe fn write_macs(data: usize, dmac: [u8; ETH_ALEN], smac: [u8; ETH_ALEN]) {
    // SAFETY: as the caller promises; packet fields may be unaligned.
    unsafe {
        write_at(data, 0, dmac);
        write_at(data, ETH_ALEN, smac);
    }
}

/// Decrements the IPv4 TTL with its checksum, as forwarding does; `false`
/// (nothing changed) when it is spent or cannot be read.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext) -> bool {
    let Some((word, new)) = ctx
        .load::<u16>(IP_TTL_OFF)
        .ok()
        .and_then(|word| Some((word, ttl_decremented(word)?)))
    else {
        return false;
    };
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(word), u64::from(new), 2)
        .and_then(|()| ctx.store(IP_TTL_OFF, &new, 0))
        .is_ok()
}

/// The forwarding route lookup of a translated packet `src` -> `dst`
/// (protocol `proto`, IP length `tot_len`, 0: MTU unchecked) arriving on
/// `ifindex`, with the `BPF_FIB_LOOKUP_*` `flags`.
#[inline(always)]
fn route<C: EbpfContext>(
    ctx: &C,
    ifindex: u32,
    src: u32,
    dst: u32,
    proto: u8,
    tot_len: u16,
    flags: u32,
) -> (i64, bpf_fib_lookup) {
    let query = fib::Query {
        ifindex,
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        tot_len,
    };
    fib::lookup(ctx, &query, flags)
}

/// The IPv4 TTL and protocol word (network order) with the TTL one less,
/// as a router forwards it; `None` when the TTL is spent.
#[inline(always)]
fn ttl_decremented(word: u16) -> Option<u16> {
    let mut bytes = word.to_ne_bytes();
    bytes[0] = hops_decremented(bytes[0])?;
    Some(u16::from_ne_bytes(bytes))
}

/// A TTL or hop limit one less, as a router forwards it; `None` when it is
/// spent (1 or 0: the stack answers "time exceeded").
#[inline(always)]
pub fn hops_decremented(hops: u8) -> Option<u8> {
    hops.checked_sub(1).filter(|&left| left > 0)
}
