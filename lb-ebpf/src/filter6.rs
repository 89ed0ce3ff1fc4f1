//! The pass-through filter for IPv6 packets: the bits of `FILTER` that
//! `lb_common::filter_bit6` gives an IPv6 frontend or backend, with IPv6's
//! own seeds (see [`crate::filter`]).

use lb_common::{filter_bit6, FILTER_SEED_BACKEND6, FILTER_SEED_FRONTEND6};

use crate::{filter::is_set, parse6::Flow6};

/// Whether the packet may be addressed to an IPv6 frontend.
#[inline(always)]
pub fn may_be_frontend(flow: &Flow6) -> bool {
    is_set(filter_bit6(
        FILTER_SEED_FRONTEND6,
        flow.dst,
        flow.dport,
        flow.proto,
    ))
}

/// Whether the packet may be a reply of an IPv6 backend.
#[inline(always)]
pub fn may_be_reply(flow: &Flow6) -> bool {
    is_set(filter_bit6(
        FILTER_SEED_BACKEND6,
        flow.src,
        flow.sport,
        flow.proto,
    ))
}
