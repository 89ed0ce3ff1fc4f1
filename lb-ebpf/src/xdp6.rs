//! `lb_xdp6`, the XDP program of IPv6 frames (reached from `lb_xdp` through
//! [`crate::dispatch6`]). So far it parses and counts what it cannot read
//! (`Event::Ipv6HeadersSkipped`); every frame passes untouched.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_get_buff_len, programs::XdpContext};
use lb_common::{Event, Family};
use network_types::ip::Ipv6Hdr;

use crate::{
    counters,
    parse::L3_OFF,
    parse6::{self, Parsed6, EXT_OFF},
};

/// Offset of the payload length within the frame.
const PAYLOAD_LEN_OFF: usize = L3_OFF + 4;

/// Handles one IPv6 frame on the uplink.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if !parse6::is_ipv6(data, data_end) {
        return xdp_action::XDP_PASS;
    }
    let len = frame_len(ctx, data, data_end);
    if let Parsed6::Malformed = parse6::parse(data, data_end, len) {
        counters::event_in(Family::Ipv6, Event::Ipv6HeadersSkipped);
    }
    xdp_action::XDP_PASS
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
    let payload = unsafe { *((data + PAYLOAD_LEN_OFF) as *const [u8; 2]) };
    if L3_OFF + Ipv6Hdr::LEN + usize::from(u16::from_be_bytes(payload)) <= linear {
        return linear;
    }
    // SAFETY: the program's own context.
    let whole = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    usize::try_from(whole).unwrap_or(linear)
}
