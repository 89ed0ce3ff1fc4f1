//! Hands IPv6 frames from the entry points to the IPv6 programs by a tail
//! call, so IPv4's programs keep their size and verification time. The
//! check runs first, before the IPv4 program's body: placed inside it (where
//! the IPv4 parse fails) it cost IPv4's code 100 instructions of register
//! shuffling, first it costs an IPv4 packet one load and one compare. A
//! tail call that finds its slot empty (the agent has not filled it yet)
//! returns, and the IPv4 body passes the frame untouched, as it passed every
//! non-IPv4 frame before.

use aya_ebpf::programs::{TcContext, XdpContext};
use lb_common::maps6::{TC6_SLOT_EGRESS, TC6_SLOT_POD, TC6_SLOT_UPLINK, XDP6_SLOT};

use crate::{
    lb::Hook,
    maps6::{TC6_PROGS, XDP6_PROGS},
    parse6,
};

/// An IPv6 frame at `lb_xdp` goes to `lb_xdp6`; returns for the others,
/// and for an IPv6 one when the slot is empty.
#[inline(always)]
pub fn xdp(ctx: &XdpContext) {
    if parse6::is_ipv6(ctx.data(), ctx.data_end()) {
        // SAFETY: a tail call returns only when it fails; the frame then passes.
        unsafe { XDP6_PROGS.tail_call(ctx, XDP6_SLOT) };
    }
}

/// An IPv6 frame at a TC entry point goes to the IPv6 program of `hook`;
/// returns for the others, and for an IPv6 one when the slot is empty.
#[inline(always)]
pub fn tc(ctx: &TcContext, hook: Hook) {
    if parse6::is_ipv6(ctx.data(), ctx.data_end()) {
        let slot = match hook {
            Hook::Pod => TC6_SLOT_POD,
            Hook::Uplink => TC6_SLOT_UPLINK,
            Hook::Egress => TC6_SLOT_EGRESS,
        };
        // SAFETY: a tail call returns only when it fails; the frame then passes.
        unsafe { TC6_PROGS.tail_call(ctx, slot) };
    }
}
