//! Forwarding past the stack, for the translated packets the stack would
//! drop: a packet leaving a pod that now carries the node's own address as
//! its source (a pod reaching itself through its Service, translated to
//! the node's address; a reply to a node port). Entering the stack through a pod interface
//! or a bridge CNI's `cni0`, such a packet is a martian unless
//! `accept_local` is set there, and `accept_local` would let any pod send as
//! the node. So the TC program routes it itself: a forwarding route lookup
//! for its (translated) destination, the TTL decremented as a router does,
//! and a redirect to the route's device, whose neighbour entry gives the
//! Ethernet addresses (`bpf_redirect_neigh`). Where the lookup fails (no
//! route, forwarding disabled, TTL spent) the packet goes to the stack, as
//! before.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_OK},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};

use crate::{fib, parse::L3_OFF};

/// Offset of the TTL and protocol word in the IPv4 header.
const IP_TTL_OFF: usize = L3_OFF + 8;
/// Offset of the IPv4 header checksum.
const IP_CSUM_OFF: usize = L3_OFF + 10;

/// Routes the translated packet (now `src` -> `dst`, protocol `proto`) that
/// arrived on `ifindex` and hands it to its next hop; the TC verdict.
#[inline(always)]
pub fn to_next_hop(ctx: &TcContext, ifindex: u32, src: u32, dst: u32, proto: u8) -> i32 {
    let (ret, params) = fib::lookup(
        ctx,
        &fib::Query {
            ifindex,
            src,
            dst,
            proto,
            sport: 0,
            dport: 0,
        },
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    );
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || !decrement_ttl(ctx) {
        // The stack answers what it must (time exceeded, unreachable).
        return TC_ACT_OK;
    }
    // SAFETY: no neighbour parameters: the kernel resolves the next hop of the route.
    let verdict = unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) };
    // TC_ACT_REDIRECT (7) or TC_ACT_SHOT (2).
    #[allow(clippy::cast_possible_truncation)]
    {
        verdict as i32
    }
}

/// Decrements the IPv4 TTL with its checksum, as forwarding does; `false`
/// (nothing changed) when it is spent or cannot be read.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext) -> bool {
    let Ok(word) = ctx.load::<u16>(IP_TTL_OFF) else {
        return false;
    };
    // The word is TTL then protocol, in network order.
    let ttl = word.to_ne_bytes()[0];
    if ttl <= 1 {
        return false;
    }
    let mut bytes = word.to_ne_bytes();
    bytes[0] = ttl - 1;
    let new = u16::from_ne_bytes(bytes);
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(word), u64::from(new), 2)
        .and_then(|()| ctx.store(IP_TTL_OFF, &new, 0))
        .is_ok()
}
