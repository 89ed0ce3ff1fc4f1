//! The pass-through filter: one bit per frontend and per backend (see
//! `lb_common::MAP_FILTER`), so a packet that is neither to a frontend nor a
//! reply of a backend is passed after two array reads instead of two hash
//! lookups.

use lb_common::{filter_bit, FILTER_SEED_BACKEND, FILTER_SEED_FRONTEND};

use crate::{maps::FILTER, parse::Flow};

/// Whether the filter bit `bit` is set (a missing word counts as set).
#[inline(always)]
pub fn is_set(bit: u32) -> bool {
    FILTER
        .get(bit / 64)
        .is_none_or(|word| word & (1 << (bit % 64)) != 0)
}

/// Whether the packet may be addressed to a frontend.
#[inline(always)]
pub fn may_be_frontend(flow: &Flow) -> bool {
    is_set(filter_bit(
        FILTER_SEED_FRONTEND,
        flow.dst,
        flow.dport,
        flow.proto,
    ))
}

/// Whether the packet may be a reply of a backend.
#[inline(always)]
pub fn may_be_reply(flow: &Flow) -> bool {
    is_set(filter_bit(
        FILTER_SEED_BACKEND,
        flow.src,
        flow.sport,
        flow.proto,
    ))
}
