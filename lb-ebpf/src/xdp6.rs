//! `lb_xdp6`, the XDP program of IPv6 frames (reached from `lb_xdp` through
//! [`crate::dispatch6`]): parse, decide ([`lb6::decide`]), then rewrite in
//! place, folding the 128-bit addresses into the L4 checksum itself (IPv6
//! has no header checksum; the pseudo-header is the L4 checksum's); a
//! packet of a flow translated to the node's address goes back out with
//! `XDP_TX` where its next hop allows ([`forward6`]).
//! Malformed frames pass untouched, counted (`Event::Ipv6HeadersSkipped`).

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_get_buff_len, programs::XdpContext};
use lb_common::{
    csum,
    maps6::{same, XDP6_FLOW_SLOT},
    Event, Family, Verdict, IPPROTO_UDP,
};
use network_types::{ip::Ipv6Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    config, counters, forward6, frag6, icmp6,
    lb::{Hook, Ingress},
    lb6::{self, Action6},
    maps6::XDP6_PROGS,
    nat6::Rewrite6,
    parse::{self, Fragment, L3_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF},
    parse6::{
        self, Flow6, Parsed6, EXT_OFF, IP6_DST_OFF, IP6_PAYLOAD_LEN, IP6_SRC_OFF, MAX_L4_OFF6,
    },
    reject6,
};

/// Handles one IPv6 frame on the uplink.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if !parse6::is_ipv6(data, data_end) {
        return xdp_action::XDP_PASS;
    }
    let len = frame_len(ctx, data, data_end);
    let mut flow = match parse6::parse(data, data_end, len) {
        Parsed6::Flow(flow) => flow,
        Parsed6::NotOurs => return icmp(ctx, data, data_end, len),
        Parsed6::Malformed => {
            counters::event_in(Family::Ipv6, Event::Ipv6HeadersSkipped);
            return xdp_action::XDP_PASS;
        }
    };
    if !frag6::complete(&mut flow) {
        return xdp_action::XDP_PASS;
    }
    let Some(cfg) = config::get() else {
        return xdp_action::XDP_PASS;
    };
    let (ret, translated) = match lb6::decide(ctx, &flow, uplink(ctx, data, data_end), cfg) {
        Action6::Pass => (xdp_action::XDP_PASS, false),
        Action6::Drop => (xdp_action::XDP_DROP, false),
        Action6::Refuse => (reject6::refuse_xdp(ctx, &flow), false),
        Action6::NewFlow => {
            // SAFETY: a tail call returns only when it fails (an empty slot);
            // the stage notes a first fragment's fate itself.
            unsafe { XDP6_PROGS.tail_call(ctx, XDP6_FLOW_SLOT) };
            counters::count_in(Family::Ipv6, Verdict::Error);
            (xdp_action::XDP_DROP, false)
        }
        Action6::Forward(rw) if forward6::past_stack(Hook::Uplink, flow.fragment) => {
            // Routed before it is written: one too big is answered as it came.
            match forward6::xdp_next_hop(ctx, len, ifindex(ctx), &rw.src, &rw.dst, flow.proto) {
                Err(mtu) => (reject6::too_big_xdp(ctx, &flow, mtu), false),
                Ok(next) => {
                    if !write(data, data_end, &flow, &rw) {
                        return xdp_action::XDP_DROP;
                    }
                    (forward6::xdp_send(ctx, next), true)
                }
            }
        }
        Action6::Rewrite(rw) | Action6::Forward(rw) => {
            if write(data, data_end, &flow, &rw) {
                (xdp_action::XDP_PASS, true)
            } else {
                (xdp_action::XDP_DROP, true)
            }
        }
    };
    frag6::note_first(&flow, translated);
    ret
}

/// `lb_xdp6_flow`: the new-flow stage of the flow `lb_xdp6` left in its
/// scratch slot ([`lb6::new_flow_stage`]), then the rewrite of its frame,
/// which nothing changed since.
#[inline(always)]
pub fn handle_flow(ctx: &XdpContext) -> u32 {
    let (Some(s), Some(cfg)) = (lb6::scratch(), config::get()) else {
        return xdp_action::XDP_DROP;
    };
    let action = lb6::new_flow_stage(s, cfg);
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let (ret, translated) = match action {
        Action6::Forward(rw) if forward6::past_stack(Hook::Uplink, s.flow.fragment) => {
            let len = frame_len(ctx, data, data_end);
            // Routed before it is written: one too big is answered as it came.
            match forward6::xdp_next_hop(ctx, len, ifindex(ctx), &rw.src, &rw.dst, s.flow.proto) {
                Err(mtu) => (reject6::too_big_xdp(ctx, &s.flow, mtu), false),
                Ok(next) => {
                    // Read back from the map: the verifier needs the bound again.
                    if s.flow.l4_off > MAX_L4_OFF6 || !write(data, data_end, &s.flow, &rw) {
                        return xdp_action::XDP_DROP;
                    }
                    (forward6::xdp_send(ctx, next), true)
                }
            }
        }
        Action6::Rewrite(rw) | Action6::Forward(rw) => {
            // Read back from the map: the verifier needs the bound again.
            if s.flow.l4_off <= MAX_L4_OFF6 && write(data, data_end, &s.flow, &rw) {
                (xdp_action::XDP_PASS, true)
            } else {
                (xdp_action::XDP_DROP, true)
            }
        }
        Action6::Pass => (xdp_action::XDP_PASS, false),
        // The stage neither refuses nor hands on: the main program did.
        Action6::Drop | Action6::NewFlow | Action6::Refuse => (xdp_action::XDP_DROP, false),
    };
    frag6::note_staged(translated);
    ret
}

/// Where a frame on the uplink entered the node.
#[inline(always)]
fn uplink(ctx: &XdpContext, data: usize, data_end: usize) -> Ingress {
    Ingress {
        hook: Hook::Uplink,
        ifindex: ifindex(ctx),
        src_mac: parse::source_mac(data, data_end),
    }
}

/// The uplink the frame arrived on.
#[inline(always)]
fn ifindex(ctx: &XdpContext) -> u32 {
    // Interface indexes are 32-bit in the kernel.
    #[allow(clippy::cast_possible_truncation)]
    {
        ctx.ingress_ifindex() as u32
    }
}

/// A frame that is not a flow of ours: an `ICMPv6` error about a
/// translated flow is translated ([`icmp6`]); everything else passes.
#[inline(always)]
fn icmp(ctx: &XdpContext, data: usize, data_end: usize, len: usize) -> u32 {
    if !icmp6::is_icmp6(data, data_end) {
        return xdp_action::XDP_PASS;
    }
    let Some(cfg) = config::get() else {
        return xdp_action::XDP_PASS;
    };
    match icmp6::handle(ctx, data, data_end, len, uplink(ctx, data, data_end), cfg) {
        icmp6::Outcome::Pass => xdp_action::XDP_PASS,
        icmp6::Outcome::Drop => xdp_action::XDP_DROP,
        icmp6::Outcome::Forward => forward6::xdp_handed_over(ctx, len),
    }
}

/// The frame's whole length: the linear part, or with the fragments of a
/// multi-buffer frame when its IPv6 payload goes on beyond the linear part.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext, data: usize, data_end: usize) -> usize {
    let linear = data_end - data;
    if data + EXT_OFF > data_end {
        return linear;
    }
    // SAFETY: the fixed header is in bounds (above); the field is 2 bytes.
    let payload = unsafe { *((data + L3_OFF + IP6_PAYLOAD_LEN) as *const [u8; 2]) };
    if L3_OFF + Ipv6Hdr::LEN + usize::from(u16::from_be_bytes(payload)) <= linear {
        return linear;
    }
    // SAFETY: the program's own context.
    let whole = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    usize::try_from(whole).unwrap_or(linear)
}

/// Writes the rewrite into the frame: ports and addresses, and the L4
/// checksum for both (the addresses through its pseudo-header). A later
/// fragment has no L4 header: its addresses only. `false` when a header is
/// not within the frame (nothing is written then).
#[inline(always)]
fn write(data: usize, data_end: usize, flow: &Flow6, rw: &Rewrite6) -> bool {
    if data + EXT_OFF > data_end {
        return false;
    }
    if flow.fragment == Fragment::Later {
        // SAFETY: the fixed header is within the bounds checked above.
        unsafe {
            ((data + IP6_SRC_OFF) as *mut [u32; 4]).write_unaligned(rw.src);
            ((data + IP6_DST_OFF) as *mut [u32; 4]).write_unaligned(rw.dst);
        }
        return true;
    }
    let udp = flow.proto == IPPROTO_UDP;
    let l4_len = if udp { UdpHdr::LEN } else { TcpHdr::LEN };
    let l4 = parse::opaque(data + flow.l4_off);
    if l4 + l4_len > data_end {
        return false;
    }
    let sport = l4 as *mut u16;
    let dport = (l4 + 2) as *mut u16;
    let l4_csum = (l4 + if udp { UDP_CSUM_OFF } else { TCP_CSUM_OFF }) as *mut u16;
    let src = (data + IP6_SRC_OFF) as *mut [u32; 4];
    let dst = (data + IP6_DST_OFF) as *mut [u32; 4];
    // SAFETY: every field lies within the bounds checked above (the fixed
    // header, and the L4 header's first l4_len bytes); packet fields may be
    // unaligned, hence read/write_unaligned.
    unsafe {
        let mut check = l4_csum.read_unaligned();
        if !same(&rw.src, &flow.src) {
            check = replace128(udp, check, &flow.src, &rw.src);
            src.write_unaligned(rw.src);
        }
        if !same(&rw.dst, &flow.dst) {
            check = replace128(udp, check, &flow.dst, &rw.dst);
            dst.write_unaligned(rw.dst);
        }
        if rw.sport != flow.sport {
            check = replace16(udp, check, flow.sport, rw.sport);
            sport.write_unaligned(rw.sport);
        }
        if rw.dport != flow.dport {
            check = replace16(udp, check, flow.dport, rw.dport);
            dport.write_unaligned(rw.dport);
        }
        l4_csum.write_unaligned(check);
    }
    true
}

/// L4 checksum update for an address (a UDP result of 0 is sent as 0xffff).
#[inline(always)]
fn replace128(udp: bool, check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    if udp {
        csum::udp6_replace128(check, old, new)
    } else {
        csum::replace128(check, old, new)
    }
}

/// L4 checksum update for a port (a UDP result of 0 is sent as 0xffff).
#[inline(always)]
fn replace16(udp: bool, check: u16, old: u16, new: u16) -> u16 {
    if udp {
        csum::udp6_replace16(check, old, new)
    } else {
        csum::replace16(check, old, new)
    }
}
