//! The IPv6 TC programs (`lb_tc6`, `lb_tc_uplink6`, `lb_tc_egress6`, reached
//! from their IPv4 entry points through [`crate::dispatch6`]): parse, decide
//! ([`lb6::decide`] where a frame enters the node, [`lb6::decide_reply`] at
//! egress), then rewrite through the skb helpers as IPv4's TC programs do,
//! which keep checksums right also for packets with offloaded (partial)
//! checksums; a packet of a flow translated to the node's address is
//! forwarded past the stack ([`forward6`]). Malformed frames pass untouched, counted where they enter the
//! node (`Event::Ipv6HeadersSkipped`; egress counts nothing, as for IPv4).

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use lb_common::{
    maps6::{same, TC6_SLOT_FLOW},
    Event, Family, Verdict, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    config, counters, forward6, frag6, icmp6,
    lb::{Hook, Ingress},
    lb6::{self, Action6},
    maps6::TC6_PROGS,
    nat6::Rewrite6,
    parse::{self, Fragment, TCP_CSUM_OFF, UDP_CSUM_OFF},
    parse6::{self, Flow6, Parsed6, IP6_DST_OFF, IP6_SRC_OFF, MAX_HEADERS_LEN6},
    reject6::{self, Answer6},
};

/// Bytes of an IPv6 address.
const ADDR6_LEN: u32 = 16;

/// Handles one IPv6 frame at `hook`.
#[inline(always)]
pub fn handle(ctx: &TcContext, hook: Hook) -> i32 {
    let len = ctx.len() as usize;
    let mut parsed = parse6::parse(ctx.data(), ctx.data_end(), len);
    if matches!(parsed, Parsed6::Malformed) && len > ctx.data_end() - ctx.data() {
        // The headers may sit in paged data: make them linear and look
        // again. Only then, so a frame whose headers are linear (nearly
        // all) is never unshared by a pull.
        // MAX_HEADERS_LEN6 is 370, so the value fits.
        #[allow(clippy::cast_possible_truncation)]
        let want = len.min(MAX_HEADERS_LEN6) as u32;
        if ctx.pull_data(want).is_ok() {
            parsed = parse6::parse(ctx.data(), ctx.data_end(), len);
        }
    }
    let egress = hook == Hook::Egress;
    let mut flow = match parsed {
        Parsed6::Flow(flow) => flow,
        Parsed6::NotOurs => return icmp(ctx, hook, len),
        Parsed6::Malformed => {
            if !egress {
                counters::event_in(Family::Ipv6, Event::Ipv6HeadersSkipped);
            }
            return TC_ACT_OK;
        }
    };
    if !frag6::complete(&mut flow) {
        return TC_ACT_OK;
    }
    let Some(cfg) = config::get() else {
        return TC_ACT_OK;
    };
    let at = ingress(ctx, hook);
    let action = if egress {
        lb6::decide_reply(ctx, &flow, at, cfg)
    } else {
        lb6::decide(ctx, &flow, at, cfg)
    };
    // An ICMPv6 error to answer with, sent from one call site (below).
    let mut answer = None;
    let (ret, translated) = match action {
        Action6::Pass => (TC_ACT_OK, false),
        Action6::Drop => (TC_ACT_SHOT, false),
        Action6::Refuse => {
            answer = Some(Answer6::Refusal);
            (TC_ACT_SHOT, false)
        }
        Action6::NewFlow => {
            // SAFETY: a tail call returns only when it fails (an empty slot);
            // the stage notes a first fragment's fate itself.
            unsafe { TC6_PROGS.tail_call(ctx, TC6_SLOT_FLOW) };
            counters::count_in(Family::Ipv6, Verdict::Error);
            (TC_ACT_SHOT, false)
        }
        Action6::Forward(rw) if forward6::past_stack(hook, flow.fragment) => {
            // Routed before it is written: one too big is answered as it came.
            match forward6::tc_route(ctx, at.ifindex, &rw.src, &rw.dst, flow.proto) {
                Err(mtu) if mtu != 0 => {
                    answer = Some(Answer6::TooBig(mtu));
                    (TC_ACT_SHOT, false)
                }
                route => {
                    if write(ctx, &flow, &rw).is_err() {
                        (TC_ACT_SHOT, true)
                    } else {
                        (
                            route.map_or(TC_ACT_OK, |dev| forward6::tc_send(ctx, dev)),
                            true,
                        )
                    }
                }
            }
        }
        Action6::Rewrite(rw) | Action6::Forward(rw) => {
            if write(ctx, &flow, &rw).is_err() {
                (TC_ACT_SHOT, true)
            } else {
                (TC_ACT_OK, true)
            }
        }
    };
    frag6::note_first(&flow, translated);
    if let Some(answer) = answer {
        return reject6::answer_tc(ctx, &flow, at.ifindex, answer);
    }
    ret
}

/// `lb_tc6_flow`: the new-flow stage of the flow `lb_tc6` or
/// `lb_tc_uplink6` left in its scratch slot ([`lb6::new_flow_stage`]),
/// then the rewrite of its packet, which nothing changed since.
#[inline(always)]
pub fn handle_flow(ctx: &TcContext) -> i32 {
    let (Some(s), Some(cfg)) = (lb6::scratch(), config::get()) else {
        return TC_ACT_SHOT;
    };
    let hook = if s.from_pod != 0 {
        Hook::Pod
    } else {
        Hook::Uplink
    };
    let (ret, translated) = match lb6::new_flow_stage(s, cfg) {
        Action6::Forward(rw) if forward6::past_stack(hook, s.flow.fragment) => {
            // SAFETY: the program's own skb context.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            // Routed before it is written: one too big is answered as it came.
            match forward6::tc_route(ctx, ifindex, &rw.src, &rw.dst, s.flow.proto) {
                Err(mtu) if mtu != 0 => (
                    reject6::answer_tc(ctx, &s.flow, ifindex, Answer6::TooBig(mtu)),
                    false,
                ),
                route => {
                    if write(ctx, &s.flow, &rw).is_err() {
                        (TC_ACT_SHOT, true)
                    } else {
                        (
                            route.map_or(TC_ACT_OK, |dev| forward6::tc_send(ctx, dev)),
                            true,
                        )
                    }
                }
            }
        }
        Action6::Rewrite(rw) | Action6::Forward(rw) => {
            if write(ctx, &s.flow, &rw).is_err() {
                (TC_ACT_SHOT, true)
            } else {
                (TC_ACT_OK, true)
            }
        }
        Action6::Pass => (TC_ACT_OK, false),
        // The stage neither refuses nor hands on: the main program did.
        Action6::Drop | Action6::NewFlow | Action6::Refuse => (TC_ACT_SHOT, false),
    };
    frag6::note_staged(translated);
    ret
}

/// Where a frame at `hook` entered the node.
#[inline(always)]
fn ingress(ctx: &TcContext, hook: Hook) -> Ingress {
    Ingress {
        hook,
        // SAFETY: the program's own skb context. At egress, the interface
        // the packet entered the node by is the one to judge a reply by.
        ifindex: unsafe {
            if hook == Hook::Egress {
                (*ctx.skb.skb).ingress_ifindex
            } else {
                (*ctx.skb.skb).ifindex
            }
        },
        src_mac: parse::source_mac(ctx.data(), ctx.data_end()),
    }
}

/// A frame that is not a flow of ours: an `ICMPv6` error about a
/// translated flow is translated in place ([`icmp6`]; the sum over the
/// packet is unchanged, so the skb's checksum state stays right);
/// everything else passes.
#[inline(always)]
fn icmp(ctx: &TcContext, hook: Hook, len: usize) -> i32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if !icmp6::is_icmp6(data, data_end) {
        return TC_ACT_OK;
    }
    let Some(cfg) = config::get() else {
        return TC_ACT_OK;
    };
    match icmp6::handle(ctx, data, data_end, len, ingress(ctx, hook), cfg) {
        icmp6::Outcome::Pass => TC_ACT_OK,
        icmp6::Outcome::Drop => TC_ACT_SHOT,
        icmp6::Outcome::Forward => {
            // SAFETY: the program's own skb context.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            forward6::handed_over(ctx, ifindex)
        }
    }
}

/// Writes the rewrite with `bpf_skb_store_bytes` and the checksum helpers,
/// as IPv4's TC path does: the address changes go into the L4 checksum as
/// pseudo-header changes (`BPF_F_PSEUDO_HDR`: a partial checksum's seed is
/// updated, a complete one's field), the port changes as data; a UDP result
/// of 0 is sent as 0xffff (`BPF_F_MARK_MANGLED_0`). A later fragment has
/// no L4 header: its addresses only (a complete `skb->csum` recomputed).
#[inline(always)]
fn write(ctx: &TcContext, flow: &Flow6, rw: &Rewrite6) -> Result<(), i64> {
    if flow.fragment == Fragment::Later {
        let recompute = u64::from(BPF_F_RECOMPUTE_CSUM);
        if !same(&rw.src, &flow.src) {
            ctx.store(IP6_SRC_OFF, &rw.src, recompute)?;
        }
        if !same(&rw.dst, &flow.dst) {
            ctx.store(IP6_DST_OFF, &rw.dst, recompute)?;
        }
        return Ok(());
    }
    let udp = flow.proto == IPPROTO_UDP;
    let l4_csum = flow.l4_off
        + if flow.proto == IPPROTO_TCP {
            TCP_CSUM_OFF
        } else {
            UDP_CSUM_OFF
        };
    let mangled = if udp {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if !same(&rw.src, &flow.src) {
        write_addr(ctx, l4_csum, IP6_SRC_OFF, &flow.src, &rw.src, mangled)?;
    }
    if !same(&rw.dst, &flow.dst) {
        write_addr(ctx, l4_csum, IP6_DST_OFF, &flow.dst, &rw.dst, mangled)?;
    }
    let port_flags = mangled | 2;
    if rw.sport != flow.sport {
        ctx.l4_csum_replace(
            l4_csum,
            u64::from(flow.sport),
            u64::from(rw.sport),
            port_flags,
        )?;
        ctx.store(flow.l4_off, &rw.sport, 0)?;
    }
    if rw.dport != flow.dport {
        ctx.l4_csum_replace(
            l4_csum,
            u64::from(flow.dport),
            u64::from(rw.dport),
            port_flags,
        )?;
        ctx.store(flow.l4_off + 2, &rw.dport, 0)?;
    }
    Ok(())
}

/// Replaces the address `old` at `off` by `new`, with its share of the L4
/// checksum at `l4_csum`: the 128-bit difference (`bpf_csum_diff`) goes in
/// as one pseudo-header change. The store recomputes a complete
/// `skb->csum` (`BPF_F_RECOMPUTE_CSUM`): the checksum helper, made for
/// IPv4, takes the change out of it as if a header checksum had absorbed
/// it, but IPv6 has none, so the address's own change puts it back.
#[inline(always)]
fn write_addr(
    ctx: &TcContext,
    l4_csum: usize,
    off: usize,
    old: &[u32; 4],
    new: &[u32; 4],
    mangled: u64,
) -> Result<(), i64> {
    let mut from = *old;
    let mut to = *new;
    // SAFETY: both buffers are 16 bytes on this stack, as the sizes say.
    let diff =
        unsafe { bpf_csum_diff(from.as_mut_ptr(), ADDR6_LEN, to.as_mut_ptr(), ADDR6_LEN, 0) };
    // A checksum is 32 bits; a negative value is an error.
    let diff = u32::try_from(diff).map_err(|_| diff)?;
    ctx.l4_csum_replace(
        l4_csum,
        0,
        u64::from(diff),
        u64::from(BPF_F_PSEUDO_HDR) | mangled,
    )?;
    ctx.store(off, &to, u64::from(BPF_F_RECOMPUTE_CSUM))
}
