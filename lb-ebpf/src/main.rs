//! The load balancer's kernel programs.
//!
//! `lb_xdp` (or `lb_tc_uplink`) runs on the node's uplink, `lb_tc` on the
//! host side of pod interfaces (ingress, i.e. traffic leaving the pods), and
//! `lb_tc_egress` at the egress of both (traffic leaving the node or into
//! the pods, replies only); beside `lb_xdp`, `lb_tc_uplink_handoff` at the
//! uplink's TC ingress forwards what XDP handed over ([`handoff`]). All share the maps in [`maps`] and the per-packet decision in
//! [`lb`]; they differ only in how a decided rewrite is written into the
//! packet ([`xdp`], [`tc`]) and in where they run ([`lb::Hook`]).
#![no_std]
#![no_main]
// Atomic compare-and-swap and add on map values (the target has no `Atomic*` CAS).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod affinity;
mod affinity6;
mod config;
mod conntrack;
mod conntrack6;
mod counters;
mod dispatch6;
mod fib;
mod filter;
mod filter6;
mod forward;
mod forward6;
mod frag;
mod frag6;
mod frontend;
mod frontend6;
mod handoff;
mod icmp;
mod icmp6;
mod lb;
mod lb6;
mod maps;
mod maps6;
mod mem;
mod nat;
mod nat6;
mod parse;
mod parse6;
mod ranges;
mod ranges6;
mod reject;
mod reject6;
mod select;
mod select6;
mod snat;
mod snat6;
mod sock;
mod sock6;
mod spoof;
mod spoof6;
mod tc;
mod tc6;
mod view;
mod xdp;
mod xdp6;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

/// XDP entry point for the node's uplink interface(s). Multi-buffer aware
/// (`xdp.frags`), so it attaches where the MTU is jumbo: headers are in the
/// first buffer, which is all it reads or writes.
#[xdp(frags)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    dispatch6::xdp(&ctx);
    xdp::handle(&ctx)
}

/// `lb_xdp`'s IPv6 frames, by tail call through `XDP6_PROGS` ([`xdp6`]).
/// Multi-buffer aware like `lb_xdp` (a prog array takes one kind only).
#[xdp(frags)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_xdp6(ctx: XdpContext) -> u32 {
    xdp6::handle(&ctx)
}

/// `lb_xdp6`'s new-flow stage, by tail call through `XDP6_PROGS` ([`xdp6`]).
#[xdp(frags)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_xdp6_flow(ctx: XdpContext) -> u32 {
    xdp6::handle_flow(&ctx)
}

/// The new-flow stage of `lb_tc6` and `lb_tc_uplink6`, by tail call through
/// `TC6_PROGS` ([`tc6`]).
#[classifier]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_tc6_flow(ctx: TcContext) -> i32 {
    tc6::handle_flow(&ctx)
}

/// `lb_tc`'s IPv6 frames, by tail call through `TC6_PROGS` ([`tc6`]).
#[classifier]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_tc6(ctx: TcContext) -> i32 {
    tc6::handle(&ctx, lb::Hook::Pod)
}

/// `lb_tc_uplink`'s IPv6 frames, by tail call through `TC6_PROGS` ([`tc6`]).
#[classifier]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_tc_uplink6(ctx: TcContext) -> i32 {
    tc6::handle(&ctx, lb::Hook::Uplink)
}

/// `lb_tc_egress`'s IPv6 frames, by tail call through `TC6_PROGS` ([`tc6`]).
#[classifier]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_tc_egress6(ctx: TcContext) -> i32 {
    tc6::handle(&ctx, lb::Hook::Egress)
}

/// TC ingress entry point for the host side of pod interfaces.
#[classifier]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_tc(ctx: TcContext) -> i32 {
    dispatch6::tc(&ctx, lb::Hook::Pod);
    tc::handle(&ctx, lb::Hook::Pod)
}

/// TC egress entry point for the host side of pod interfaces: packets on
/// their way into a pod, whatever device they entered the node by. Replies
/// of tracked flows that nothing translated yet (decapsulated from an
/// overlay, or from the node itself) are translated back; nothing else is
/// touched and no flow starts here.
#[classifier]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    dispatch6::tc(&ctx, lb::Hook::Egress);
    tc::handle(&ctx, lb::Hook::Egress)
}

/// TC ingress entry point for the node's uplink(s), in place of `lb_xdp`
/// (`--uplink-hook tc`): after GRO, and without the copy that XDP on a veth
/// makes of every cloned frame.
#[classifier]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_tc_uplink(ctx: TcContext) -> i32 {
    dispatch6::tc(&ctx, lb::Hook::Uplink);
    tc::handle(&ctx, lb::Hook::Uplink)
}

/// A program that passes every packet: the per-call floor for benchmarks, and
/// what a veth peer needs attached to receive `XDP_TX` or redirected frames.
/// At the uplink's TC ingress beside `lb_xdp`: routes the frames XDP
/// handed over ([`handoff::route`]).
#[classifier]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_tc_uplink_handoff(ctx: TcContext) -> i32 {
    handoff::route(&ctx)
}

/// `connect()` of a socket in the attached cgroup: one aimed at a Service
/// is pointed at a backend ([`sock`]).
#[cgroup_sock_addr(connect4)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, false)
}

/// `sendmsg()` of an unconnected UDP socket: each send to a Service goes to
/// the socket's backend.
#[cgroup_sock_addr(sendmsg4)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, true)
}

/// `recvmsg()` of a UDP socket: a reply from its backend shows the Service
/// address.
#[cgroup_sock_addr(recvmsg4)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

/// `getpeername()`: a socket pointed at a backend names the Service.
#[cgroup_sock_addr(getpeername4)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

/// `connect()` of an IPv6 socket in the attached cgroup: one aimed at an
/// IPv6 Service (or a v4-mapped IPv4 one) is pointed at a backend ([`sock6`]).
#[cgroup_sock_addr(connect6)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_sock_connect6(ctx: SockAddrContext) -> i32 {
    sock6::forward(&ctx, false)
}

/// `sendmsg()` of an unconnected IPv6 UDP socket: each send to a Service
/// goes to the socket's backend.
#[cgroup_sock_addr(sendmsg6)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock6::forward(&ctx, true)
}

/// `recvmsg()` of an IPv6 UDP socket: a reply from its backend shows the
/// Service address.
#[cgroup_sock_addr(recvmsg6)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock6::reverse(&ctx)
}

/// `getpeername()` of an IPv6 socket: one pointed at a backend names the
/// Service.
#[cgroup_sock_addr(getpeername6)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn lb_sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock6::reverse(&ctx)
}

#[xdp(frags)]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// The floor of any L4 balancer, for benchmarks: parse Ethernet, IPv4 and
/// TCP/UDP exactly as `lb_xdp` does, then pass the packet.
///
/// The parsed fields are folded into one word that is stored through a
/// volatile write to the stack: the compiler must compute it, so the whole
/// parse (the L4 header's bounds checks, ports and flags included) stays in
/// the program. Without such a sink it removes everything but the Ethernet
/// and IPv4 checks, and the "parse-only" baseline measures the bare per-call
/// floor. A stack store costs one instruction and touches no map: a per-CPU
/// scratch map would add a lookup `lb_xdp` does not pay for parsing, and a
/// verdict chosen from the fields would drop some packet.
#[xdp(frags)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn xdp_parse(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(ip) = parse::ipv4(data, data_end) else {
        return aya_ebpf::bindings::xdp_action::XDP_PASS;
    };
    let len = xdp::frame_len(&ctx, ip, data_end - data);
    if let Some(flow) = parse::parse(data, data_end, len, ip) {
        let ports = (u32::from(flow.sport) << 16) | u32::from(flow.dport);
        let rest = (u32::from(flow.proto) << 24)
            | (u32::from(flow.tcp_flags) << 16)
            | (u32::from(flow.ip_id) ^ (flow.fragment as u32));
        // A packet's headers lie within its first 4 GiB.
        #[allow(clippy::cast_possible_truncation)]
        let fold = flow.src ^ flow.dst ^ ports ^ rest ^ flow.len ^ (flow.l4_off as u32);
        let mut sink = 0u32;
        // SAFETY: a write to a local that is in scope.
        unsafe { core::ptr::write_volatile(&raw mut sink, fold) };
    }
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// [`xdp_parse`] for IPv6: the floor of an IPv6 balancer, for benchmarks:
/// parse Ethernet, IPv6, the extension headers and TCP/UDP exactly as
/// `lb_xdp6` does, fold the fields into a volatile stack store, pass.
#[xdp(frags)]
#[allow(clippy::needless_pass_by_value)] // the macro fixes the signature
pub fn xdp_parse6(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if !parse6::is_ipv6(data, data_end) {
        return aya_ebpf::bindings::xdp_action::XDP_PASS;
    }
    let len = xdp6::frame_len(&ctx, data, data_end);
    let fold = match parse6::parse(data, data_end, len) {
        parse6::Parsed6::Flow(flow) => {
            let ports = (u32::from(flow.sport) << 16) | u32::from(flow.dport);
            let rest = (u32::from(flow.proto) << 24)
                | (u32::from(flow.tcp_flags) << 16)
                | (flow.frag_id ^ (flow.fragment as u32));
            let addrs = flow.src[0]
                ^ flow.src[1]
                ^ flow.src[2]
                ^ flow.src[3]
                ^ flow.dst[0]
                ^ flow.dst[1]
                ^ flow.dst[2]
                ^ flow.dst[3];
            // A packet's headers lie within its first 4 GiB.
            #[allow(clippy::cast_possible_truncation)]
            let l4_off = flow.l4_off as u32;
            addrs ^ ports ^ rest ^ flow.len ^ l4_off
        }
        parse6::Parsed6::NotOurs => 1,
        parse6::Parsed6::Malformed => 2,
    };
    let mut sink = 0u32;
    // SAFETY: a write to a local that is in scope.
    unsafe { core::ptr::write_volatile(&raw mut sink, fold) };
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
