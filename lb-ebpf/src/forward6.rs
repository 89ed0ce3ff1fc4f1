//! Forwarding past the stack for IPv6, as [`crate::forward`] does for IPv4:
//! the packets of flows translated to the node's IPv6 address (a backend on
//! another node from the uplink, a pod reaching itself through its
//! Service), both ways ([`crate::lb6::Action6::Forward`]). Through the
//! stack, netfilter would see each direction as a different connection (a
//! firewall dropping conntrack `INVALID` drops the replies). So the program
//! routes the packet itself: an `AF_INET6` forwarding route lookup for its
//! translated addresses (with the packet's length: the route's MTU), the
//! hop limit decremented (IPv6 has no header checksum), and the packet
//! handed to the route's device: `XDP_TX` back out of the uplink with the
//! neighbour's addresses, the hand-off to the uplink's TC program
//! ([`crate::handoff`]) for what XDP cannot reach, `bpf_redirect_neigh` at
//! TC. Where the lookup fails (no route, forwarding disabled, hop limit
//! spent) the packet goes to the stack, as a router would get it,
//! untouched by the decrement. The lookup comes before the packet is
//! written: a packet too big for the route is answered, as it arrived,
//! with a Packet Too Big ([`crate::reject6::too_big_xdp`]), which the
//! stack would send to the translated source, the node itself.
//!
//! A fragment from the uplink goes to the stack translated, as IPv4's do
//! ([`past_stack`]).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_F_RECOMPUTE_CSUM, TC_ACT_OK,
    },
    programs::{TcContext, XdpContext},
    EbpfContext,
};

use crate::{
    fib,
    forward::{self, XdpNextHop, ETH_ALEN},
    handoff,
    lb::Hook,
    parse::{read_at, write_at, Fragment, L3_OFF},
    parse6::{self, EXT_OFF, IP6_DST_OFF, IP6_NEXT, IP6_SRC_OFF},
};

/// Offset of the hop limit.
const HOP_LIMIT_OFF: usize = L3_OFF + 7;

/// Whether a packet of a flow translated to the node's address that
/// entered at `hook` is forwarded past the stack: all but a fragment from
/// the uplink, which goes to the stack translated, as IPv4's does (see
/// `lb::decide`: a datagram whose fragments took both paths would never be
/// whole where netfilter reassembles it).
#[inline(always)]
pub fn past_stack(hook: Hook, fragment: Fragment) -> bool {
    hook != Hook::Uplink || fragment == Fragment::Whole
}

/// Routes the translated packet (now `src` -> `dst`, upper-layer protocol
/// `proto`) that arrived on `ifindex` and hands it to its next hop; the TC
/// verdict (`TC_ACT_OK`: the stack forwards it, or answers for it; a
/// packet too big for the route too).
#[inline(always)]
pub fn to_next_hop(
    ctx: &TcContext,
    ifindex: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
    proto: u8,
) -> i32 {
    match tc_route(ctx, ifindex, src, dst, proto) {
        Ok(dev) => tc_send(ctx, dev),
        Err(_) => TC_ACT_OK,
    }
}

/// The route of a packet at TC that arrived on `ifindex`, once translated
/// to `src` -> `dst` (protocol `proto`), looked up before it is written:
/// `Ok` its device, `Err(mtu)` too big for a route of `mtu`, `Err(0)` no
/// route (the stack's to answer).
#[inline(always)]
pub fn tc_route(
    ctx: &TcContext,
    ifindex: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
    proto: u8,
) -> Result<u32, u16> {
    // A GRO packet is longer than its segments: unchecked.
    let tot_len = if forward::gso(ctx) {
        0
    } else {
        ip_len(ctx.len() as usize)
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
    if ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        Ok(params.ifindex)
    } else {
        Err(too_big_mtu(ret, &params))
    }
}

/// Hands the (translated) packet at TC to the route's device `dev`, its
/// hop limit one less; the TC verdict (`TC_ACT_OK`: a spent hop limit is
/// the stack's to answer).
#[inline(always)]
pub fn tc_send(ctx: &TcContext, dev: u32) -> i32 {
    if !decrement_hop_limit(ctx) {
        return TC_ACT_OK;
    }
    forward::redirect(dev)
}

/// The MTU of the route a lookup returning `ret` found too small, 0 for
/// any other failure.
#[inline(always)]
fn too_big_mtu(ret: i64, params: &bpf_fib_lookup) -> u16 {
    if ret == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        // SAFETY: a plain integer; on FRAG_NEEDED the kernel wrote the
        // route's MTU over the length (a union).
        unsafe { params.__bindgen_anon_1.mtu_result }
    } else {
        0
    }
}

/// Looks up where the frame, `len` bytes in all, that arrived on `ifindex`
/// goes once translated to `src` -> `dst` (protocol `proto`), before it is
/// written: `Err(mtu)`, too big for a route of `mtu`.
#[inline(always)]
pub fn xdp_next_hop(
    ctx: &XdpContext,
    len: usize,
    ifindex: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
    proto: u8,
) -> Result<XdpNextHop, u16> {
    let (ret, params) = route(ctx, ifindex, src, dst, proto, ip_len(len), 0);
    let mtu = too_big_mtu(ret, &params);
    if mtu != 0 {
        return Err(mtu);
    }
    Ok(forward::next_hop_of(
        ret,
        &params,
        ifindex,
        len,
        ctx.data_end() - ctx.data(),
    ))
}

/// The IP length of a frame of `len` bytes, checked against the route's
/// MTU (the frame's own length, not the header's: no packet read, and
/// never less than the packet).
#[inline(always)]
fn ip_len(len: usize) -> u16 {
    u16::try_from(len.saturating_sub(L3_OFF)).unwrap_or(u16::MAX)
}

/// Sends a translated frame on to `next`: back out of the uplink
/// ([`xdp_transmit`]), handed to the uplink's TC program to route (marked,
/// [`handoff`]), or to the stack (also where the driver keeps no metadata
/// for the mark).
#[inline(always)]
pub fn xdp_send(ctx: &XdpContext, next: XdpNextHop) -> u32 {
    match next {
        XdpNextHop::Tx { dmac, smac } => xdp_transmit(ctx, dmac, smac),
        XdpNextHop::Tc => {
            let _ = handoff::mark(ctx);
            xdp_action::XDP_PASS
        }
        XdpNextHop::Stack => xdp_action::XDP_PASS,
    }
}

/// Sends the (translated) frame back out of its uplink to the neighbour at
/// `dmac`, from `smac`, its hop limit one less; the XDP verdict
/// (`XDP_PASS`, the frame untouched by the decrement: the stack answers a
/// spent hop limit).
#[inline(always)]
fn xdp_transmit(ctx: &XdpContext, dmac: [u8; ETH_ALEN], smac: [u8; ETH_ALEN]) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + EXT_OFF > data_end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the hop limit and both Ethernet addresses lie within the
    // bounds checked above.
    unsafe {
        let Some(hops) = forward::hops_decremented(read_at::<u8>(data, HOP_LIMIT_OFF)) else {
            return xdp_action::XDP_PASS;
        };
        write_at(data, HOP_LIMIT_OFF, hops);
        forward::write_macs(data, dmac, smac);
    }
    xdp_action::XDP_TX
}

/// The hand-off program's IPv6 frame ([`handoff::route`]): routed as
/// [`to_next_hop`] by its fixed header (XDP translated it); a frame
/// without one goes to the stack.
#[inline(always)]
pub fn handed_over(ctx: &TcContext, ifindex: u32) -> i32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if !parse6::is_ipv6(data, data_end) || data + EXT_OFF > data_end {
        return TC_ACT_OK;
    }
    // SAFETY: the fixed header lies within the bounds checked above.
    let (src, dst, next) = unsafe {
        (
            read_at::<[u32; 4]>(data, IP6_SRC_OFF),
            read_at::<[u32; 4]>(data, IP6_DST_OFF),
            read_at::<u8>(data, L3_OFF + IP6_NEXT),
        )
    };
    to_next_hop(ctx, ifindex, &src, &dst, next)
}

/// An XDP frame, `len` bytes in all, translated in place (an `ICMPv6`
/// error about a via-node flow): routed by its fixed header and sent as
/// [`xdp_send`] sends; a frame without one, or too big for its route, goes
/// to the stack.
#[inline(always)]
pub fn xdp_handed_over(ctx: &XdpContext, len: usize) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + EXT_OFF > data_end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the fixed header lies within the bounds checked above.
    let (src, dst, next) = unsafe {
        (
            read_at::<[u32; 4]>(data, IP6_SRC_OFF),
            read_at::<[u32; 4]>(data, IP6_DST_OFF),
            read_at::<u8>(data, L3_OFF + IP6_NEXT),
        )
    };
    // Interface indexes are 32-bit in the kernel.
    #[allow(clippy::cast_possible_truncation)]
    let ifindex = ctx.ingress_ifindex() as u32;
    match xdp_next_hop(ctx, len, ifindex, &src, &dst, next) {
        Ok(next) => xdp_send(ctx, next),
        Err(_) => xdp_action::XDP_PASS,
    }
}

/// Decrements the hop limit, as forwarding does (no checksum covers it; a
/// complete `skb->csum` is recomputed); `false` (nothing changed) when it
/// is spent or cannot be read.
#[inline(always)]
fn decrement_hop_limit(ctx: &TcContext) -> bool {
    let Some(hops) = ctx
        .load::<u8>(HOP_LIMIT_OFF)
        .ok()
        .and_then(forward::hops_decremented)
    else {
        return false;
    };
    ctx.store(HOP_LIMIT_OFF, &hops, u64::from(BPF_F_RECOMPUTE_CSUM))
        .is_ok()
}

/// The forwarding route lookup of a translated packet `src` -> `dst`
/// (protocol `proto`, IPv6 length `tot_len`, 0: MTU unchecked) arriving on
/// `ifindex`, with the `BPF_FIB_LOOKUP_*` `flags`.
#[inline(always)]
fn route<C: EbpfContext>(
    ctx: &C,
    ifindex: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
    proto: u8,
    tot_len: u16,
    flags: u32,
) -> (i64, bpf_fib_lookup) {
    let query = fib::Query6 {
        ifindex,
        src: *src,
        dst: *dst,
        proto,
        sport: 0,
        dport: 0,
        tot_len,
    };
    fib::lookup6(ctx, &query, flags)
}
