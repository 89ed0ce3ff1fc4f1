//! The IPv6 TC programs (`lb_tc6`, `lb_tc_uplink6`, `lb_tc_egress6`, reached
//! from their IPv4 entry points through [`crate::dispatch6`]). So far they
//! parse and count what they cannot read where a frame enters the node
//! (`Event::Ipv6HeadersSkipped`; egress counts nothing, as for IPv4); every
//! frame passes untouched.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use lb_common::{Event, Family};

use crate::{
    counters,
    lb::Hook,
    parse6::{self, Parsed6, MAX_HEADERS_LEN6},
};

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
    if matches!(parsed, Parsed6::Malformed) && hook != Hook::Egress {
        counters::event_in(Family::Ipv6, Event::Ipv6HeadersSkipped);
    }
    TC_ACT_OK
}
