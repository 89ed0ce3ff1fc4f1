//! The hand-off from XDP to the uplink's TC program, for the frames of
//! flows forwarded past the stack that XDP cannot send itself
//! ([`crate::forward::XdpNextHop::Tc`]; IPv6's through
//! [`crate::forward6::handed_over`]): XDP translates such a frame (and
//! counts it) as any other, marks it in the frame's metadata and passes it;
//! the TC program at the same uplink's ingress (`lb_tc_uplink_handoff`)
//! takes only marked frames and routes them ([`route`]): the route lookup
//! and `bpf_redirect_neigh`, which reaches any device and resolves the
//! neighbour. Nothing is decided or counted twice. Every other frame goes
//! on to the next program of the hook. A driver that keeps no metadata
//! gets the frame to the stack, translated, as before (see [`mark`]).
//!
//! Some kernels refuse `bpf_xdp_adjust_meta` to XDP programs: the agent
//! probes it and clears [`XDP_META`], the verifier then never sees the
//! call, and the TC program recognises an IPv4 frame XDP translated to the
//! node's address by its source instead ([`translated_to_node`]): XDP
//! drops every IPv4 frame from outside that claims the node's address, so
//! after XDP only its own translations carry it. Fragments among them go to
//! the stack, as XDP meant them to. Nothing marks a reply translated back
//! to a client, nor an IPv6 frame (IPv6's XDP drops spoofs of the node's
//! address only where a flow starts): those go to the stack without
//! metadata.
//!
//! Layout: 4 bytes of metadata before the frame, [`HANDOFF_MARK`] in host
//! order (shared with userspace, whose tests read it).

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::bpf_xdp_adjust_meta,
    programs::{TcContext, XdpContext},
};
use lb_common::HANDOFF_MARK;
use network_types::ip::Ipv4Hdr;

use crate::{
    config, forward, forward6,
    parse::{self, read_at, write_at},
};
/// Length of the metadata.
const META_LEN: usize = 4;

/// Nonzero: this kernel's XDP programs may call `bpf_xdp_adjust_meta`.
/// Set by the agent at load from a helper probe (some kernels refuse the
/// helper to XDP, and would refuse every program that calls it); a
/// read-only global, so with 0 the verifier prunes the call as dead code.
#[unsafe(no_mangle)]
static XDP_META: u8 = 1;

/// Marks the frame for the uplink's TC program; `false` (nothing changed)
/// when the driver keeps no metadata.
#[inline(always)]
pub fn mark(ctx: &XdpContext) -> bool {
    if !xdp_meta() {
        return false;
    }
    // META_LEN is 4: the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let grow = -(META_LEN as i32);
    // SAFETY: the program's own context; packet pointers are read anew below.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, grow) } != 0 {
        return false;
    }
    let (meta, data) = (ctx.metadata(), ctx.metadata_end());
    if meta + META_LEN > data {
        return false;
    }
    // SAFETY: the metadata lies within the bounds checked above.
    unsafe { write_at(meta, 0, HANDOFF_MARK) };
    true
}

/// Whether XDP may write metadata ([`XDP_META`]).
#[inline(always)]
fn xdp_meta() -> bool {
    // SAFETY: a read of a constant the loader may have rewritten; volatile
    // so the compiler does not fold the value it was compiled with.
    unsafe { core::ptr::read_volatile(&raw const XDP_META) != 0 }
}

/// Without XDP metadata: whether `ip` is a frame XDP translated to the
/// node's address (its source; see the module's notes), and not a fragment.
#[inline(always)]
fn translated_to_node(ip: &Ipv4Hdr) -> bool {
    let Some(cfg) = config::get() else {
        return false;
    };
    cfg.node_addr != 0 && parse::source(ip) == cfg.node_addr && !parse::is_fragment(ip)
}

/// Whether XDP marked the packet for this TC program.
#[inline(always)]
pub fn marked(ctx: &TcContext) -> bool {
    // SAFETY: the program's own skb context; packet pointers are 32-bit
    // fields of it.
    let (meta, data) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).data_meta as usize, (*skb).data as usize)
    };
    if meta + META_LEN > data {
        return false;
    }
    // SAFETY: the metadata lies within the bounds checked above.
    unsafe { read_at::<u32>(meta, 0) == HANDOFF_MARK }
}

/// The TC verdict for a packet at the uplink's TC ingress beside XDP: a
/// marked one routed past the stack, any other on to the next program of
/// the hook (`TC_ACT_UNSPEC`, TCX's "next": `TC_ACT_OK` would end the
/// chain, and the TC uplink program that replaces this one on a switch to
/// `--uplink-hook tc` runs after it for a moment).
#[inline(always)]
pub fn route(ctx: &TcContext) -> i32 {
    let meta = xdp_meta();
    // Unmarked frames, nearly all, leave before anything is parsed.
    if meta && !marked(ctx) {
        return TC_ACT_UNSPEC;
    }
    let ip = parse::ipv4(ctx.data(), ctx.data_end());
    if !meta && !ip.is_some_and(translated_to_node) {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: the program's own skb context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(ip) = ip else {
        return forward6::handed_over(ctx, ifindex);
    };
    forward::to_next_hop(
        ctx,
        ifindex,
        parse::source(ip),
        u32::from_ne_bytes(ip.dst_addr),
        ip.proto,
    )
}
