//! The XDP program: decide, then rewrite in place with incremental checksums;
//! packets of flows translated to the node's address go back out with
//! `XDP_TX` where their next hop allows ([`forward`]).

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_get_buff_len, programs::XdpContext};
use lb_common::{csum, IPPROTO_ICMP, IPPROTO_UDP};
use network_types::{ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    config,
    forward::{self, XdpNextHop},
    frag, handoff, icmp,
    lb::{self, Action, Hook, Ingress},
    nat::Rewrite,
    parse::{
        self, Flow, Fragment, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
    reject,
};

/// Handles one packet on the uplink.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(cfg) = config::get() else {
        return xdp_action::XDP_PASS;
    };
    let Some(ip) = parse::ipv4(data, data_end) else {
        return xdp_action::XDP_PASS;
    };
    if lb::spoofs_node(cfg, parse::source(ip)) {
        return xdp_action::XDP_DROP;
    }
    let at = Ingress {
        hook: Hook::Uplink,
        // Interface indexes are 32-bit in the kernel.
        #[allow(clippy::cast_possible_truncation)]
        ifindex: ctx.ingress_ifindex() as u32,
        src_mac: parse::source_mac(data, data_end),
    };
    let len = frame_len(ctx, ip, data_end - data);
    if ip.proto == IPPROTO_ICMP {
        return match icmp::handle(ctx, data, data_end, len, at, cfg) {
            icmp::Outcome::Pass => xdp_action::XDP_PASS,
            icmp::Outcome::Drop => xdp_action::XDP_DROP,
            icmp::Outcome::Forward { src, dst } => send(
                ctx,
                forward::xdp_next_hop(ctx, len, at.ifindex, src, dst, IPPROTO_ICMP),
            ),
        };
    }
    let Some(mut flow) = parse::parse(data, data_end, len, ip) else {
        return xdp_action::XDP_PASS;
    };
    if !frag::complete(&mut flow) {
        return xdp_action::XDP_PASS;
    }
    match lb::decide(ctx, &flow, at, cfg) {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
        Action::Refuse => reject::refuse_xdp(ctx, &flow),
        Action::Rewrite(rw) => {
            if write(data, data_end, &flow, &rw) {
                xdp_action::XDP_PASS
            } else {
                xdp_action::XDP_DROP
            }
        }
        Action::Forward(rw) => {
            let next = forward::xdp_next_hop(ctx, len, at.ifindex, rw.src, rw.dst, flow.proto);
            if !write(data, data_end, &flow, &rw) {
                return xdp_action::XDP_DROP;
            }
            send(ctx, next)
        }
    }
}

/// Sends a translated frame on to `next`: back out of the uplink, handed to
/// the uplink's TC program to route (marked, [`handoff`]), or to the stack
/// (also where the driver keeps no metadata for the mark).
#[inline(always)]
fn send(ctx: &XdpContext, next: XdpNextHop) -> u32 {
    match next {
        XdpNextHop::Tx { dmac, smac } => forward::xdp_transmit(ctx, dmac, smac),
        XdpNextHop::Tc => {
            let _ = handoff::mark(ctx);
            xdp_action::XDP_PASS
        }
        XdpNextHop::Stack => xdp_action::XDP_PASS,
    }
}

/// The whole frame's length: the linear part `linear` unless the IP header
/// says the packet goes on into fragments of a multi-buffer frame (a jumbo
/// frame, `xdp.frags`); only then is the helper asked. Headers are always
/// read and rewritten in the linear part.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext, ip: &Ipv4Hdr, linear: usize) -> usize {
    let ip_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if parse::L3_OFF + ip_len <= linear {
        return linear;
    }
    // SAFETY: the program's own context.
    let whole = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    usize::try_from(whole).unwrap_or(linear)
}

/// Writes the rewrite into the packet, fixing the IPv4 and L4 checksums. A
/// later fragment has no L4 header: its addresses and IPv4 checksum only.
#[inline(always)]
fn write(data: usize, data_end: usize, flow: &Flow, rw: &Rewrite) -> bool {
    if data + IP_DST_OFF + 4 > data_end {
        return false;
    }
    if flow.fragment != Fragment::Later && !write_l4(data, data_end, flow, rw) {
        return false;
    }
    let ip_csum = (data + IP_CSUM_OFF) as *mut u16;
    let src = (data + IP_SRC_OFF) as *mut u32;
    let dst = (data + IP_DST_OFF) as *mut u32;
    // SAFETY: the IPv4 header's fields lie within the bounds checked above;
    // packet fields may be unaligned, hence read/write_unaligned.
    unsafe {
        let mut ip_check = ip_csum.read_unaligned();
        if rw.src != flow.src {
            ip_check = csum::replace32(ip_check, flow.src, rw.src);
            src.write_unaligned(rw.src);
        }
        if rw.dst != flow.dst {
            ip_check = csum::replace32(ip_check, flow.dst, rw.dst);
            dst.write_unaligned(rw.dst);
        }
        ip_csum.write_unaligned(ip_check);
    }
    true
}

/// Writes the rewrite's ports and updates the L4 checksum for them and for
/// the addresses (its pseudo-header); `false` when the L4 header is not
/// within the frame. The addresses themselves are the caller's to write.
#[inline(always)]
fn write_l4(data: usize, data_end: usize, flow: &Flow, rw: &Rewrite) -> bool {
    let udp = flow.proto == IPPROTO_UDP;
    let l4_len = if udp { UdpHdr::LEN } else { TcpHdr::LEN };
    let l4 = parse::opaque(data + flow.l4_off);
    if l4 + l4_len > data_end {
        return false;
    }
    let sport = l4 as *mut u16;
    let dport = (l4 + 2) as *mut u16;
    let l4_csum = (l4 + if udp { UDP_CSUM_OFF } else { TCP_CSUM_OFF }) as *mut u16;
    // SAFETY: every field lies within the bounds checked above; packet fields
    // may be unaligned, hence read/write_unaligned.
    unsafe {
        let mut l4_check = l4_csum.read_unaligned();
        if rw.src != flow.src {
            l4_check = l4_replace32(udp, l4_check, flow.src, rw.src);
        }
        if rw.dst != flow.dst {
            l4_check = l4_replace32(udp, l4_check, flow.dst, rw.dst);
        }
        if rw.sport != flow.sport {
            l4_check = l4_replace16(udp, l4_check, flow.sport, rw.sport);
            sport.write_unaligned(rw.sport);
        }
        if rw.dport != flow.dport {
            l4_check = l4_replace16(udp, l4_check, flow.dport, rw.dport);
            dport.write_unaligned(rw.dport);
        }
        l4_csum.write_unaligned(l4_check);
    }
    true
}

/// L4 checksum update for a 32-bit field (UDP keeps a zero checksum zero).
#[inline(always)]
fn l4_replace32(udp: bool, check: u16, old: u32, new: u32) -> u16 {
    if udp {
        csum::udp_replace32(check, old, new)
    } else {
        csum::replace32(check, old, new)
    }
}

/// L4 checksum update for a 16-bit field (UDP keeps a zero checksum zero).
#[inline(always)]
fn l4_replace16(udp: bool, check: u16, old: u16, new: u16) -> u16 {
    if udp {
        csum::udp_replace16(check, old, new)
    } else {
        csum::replace16(check, old, new)
    }
}
