//! The TC programs: decide, then rewrite through the skb-aware helpers, which
//! keep checksums right also for packets with offloaded (partial) checksums.
//! At the ingress of pod interfaces and uplinks every decision is taken
//! ([`lb::decide`]); at their egress, on the way out of the node or into a
//! pod, only replies are translated ([`lb::decide_reply`]).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use lb_common::{IPPROTO_ICMP, IPPROTO_UDP};

use crate::{
    config, forward, frag, icmp,
    lb::{self, Action, Hook, Ingress},
    nat::Rewrite,
    parse::{self, Flow, Fragment, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, MAX_HEADERS_LEN},
    reject,
};

/// Handles one packet leaving a pod (`Hook::Pod`), arriving on the uplink
/// (`Hook::Uplink`) or leaving through either (`Hook::Egress`).
#[inline(always)]
pub fn handle(ctx: &TcContext, hook: Hook) -> i32 {
    let egress = hook == Hook::Egress;
    if ctx.data() + MAX_HEADERS_LEN > ctx.data_end()
        && ctx.len() as usize > ctx.data_end() - ctx.data()
    {
        // Headers may sit in paged data: make them linear (fails harmlessly
        // when the packet is shorter than MAX_HEADERS_LEN).
        // MAX_HEADERS_LEN is 94, so the value fits.
        #[allow(clippy::cast_possible_truncation)]
        let want = (ctx.len() as usize).min(MAX_HEADERS_LEN) as u32;
        let _ = ctx.pull_data(want);
    }
    let Some(cfg) = config::get() else {
        return TC_ACT_OK;
    };
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(ip) = parse::ipv4(data, data_end) else {
        return TC_ACT_OK;
    };
    // The node's address is the node's own: checked where packets enter the
    // node, not on their way out (the node itself talks to its pods).
    if !egress && lb::spoofs_node(cfg, parse::source(ip)) {
        return TC_ACT_SHOT;
    }
    let at = Ingress {
        hook,
        // SAFETY: the program's own skb context. At egress, the interface
        // the packet entered the node by is the one to judge a reply by.
        ifindex: unsafe {
            if egress {
                (*ctx.skb.skb).ingress_ifindex
            } else {
                (*ctx.skb.skb).ifindex
            }
        },
        src_mac: parse::source_mac(data, data_end),
    };
    if ip.proto == IPPROTO_ICMP {
        // Written in place through direct packet access: the sum over the
        // packet is unchanged, so the skb's checksum state stays right.
        return match icmp::handle(ctx, data, data_end, ctx.len() as usize, at, cfg) {
            icmp::Outcome::Pass => TC_ACT_OK,
            icmp::Outcome::Drop => TC_ACT_SHOT,
            icmp::Outcome::Forward { src, dst } => {
                forward::to_next_hop(ctx, at.ifindex, src, dst, IPPROTO_ICMP)
            }
        };
    }
    let Some(mut flow) = parse::parse(data, data_end, ctx.len() as usize, ip) else {
        return TC_ACT_OK;
    };
    if !frag::complete(&mut flow) {
        return TC_ACT_OK;
    }
    let action = if egress {
        lb::decide_reply(ctx, &flow, at, cfg)
    } else {
        lb::decide(ctx, &flow, at, cfg)
    };
    match action {
        Action::Pass => TC_ACT_OK,
        Action::Drop => TC_ACT_SHOT,
        Action::Refuse => reject::refuse_tc(ctx, &flow, at.ifindex),
        Action::Rewrite(rw) => {
            if write(ctx, &flow, &rw).is_err() {
                TC_ACT_SHOT
            } else {
                TC_ACT_OK
            }
        }
        Action::Forward(rw) => {
            if write(ctx, &flow, &rw).is_err() {
                TC_ACT_SHOT
            } else {
                forward::to_next_hop(ctx, at.ifindex, rw.src, rw.dst, flow.proto)
            }
        }
    }
}

/// Writes the rewrite with `bpf_skb_store_bytes` and the checksum helpers.
/// A later fragment has no L4 header: its addresses and IPv4 checksum only.
#[inline(always)]
fn write(ctx: &TcContext, flow: &Flow, rw: &Rewrite) -> Result<(), i64> {
    let l4 = flow.fragment != Fragment::Later;
    let l4_csum = flow.l4_csum_off();
    let mangled = if flow.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let addr_flags = u64::from(BPF_F_PSEUDO_HDR) | mangled | 4;
    let port_flags = mangled | 2;
    if rw.src != flow.src {
        if l4 {
            ctx.l4_csum_replace(l4_csum, u64::from(flow.src), u64::from(rw.src), addr_flags)?;
        }
        ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(flow.src), u64::from(rw.src), 4)?;
        ctx.store(IP_SRC_OFF, &rw.src, 0)?;
    }
    if rw.dst != flow.dst {
        if l4 {
            ctx.l4_csum_replace(l4_csum, u64::from(flow.dst), u64::from(rw.dst), addr_flags)?;
        }
        ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(flow.dst), u64::from(rw.dst), 4)?;
        ctx.store(IP_DST_OFF, &rw.dst, 0)?;
    }
    if !l4 {
        return Ok(());
    }
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
