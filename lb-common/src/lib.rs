//! Types shared by the kernel programs (`lb-ebpf`) and the agent (`lb-userspace`).
//!
//! Byte order: every address and port stored in a map is in network byte order,
//! exactly as it appears in the packet (`u32::from_ne_bytes(ip.octets())`,
//! `port.to_be()`), so the kernel compares and copies without swapping.
#![no_std]

pub mod conntrack;
pub mod csum;
pub mod hash;
pub mod maps;
pub mod maps6;
pub mod siphash;

pub use conntrack::{CT_F_AFFINITY, CT_F_REPLIED, CT_F_SNAT, CT_F_STREAM};
pub use hash::{
    filter_bit, filter_bit6, FILTER_SEED_BACKEND, FILTER_SEED_BACKEND6, FILTER_SEED_FRONTEND,
    FILTER_SEED_FRONTEND6,
};
pub use maps::*;
pub use siphash::{flow_hash, flow_hash6, HashKey};

/// The 4 bytes of XDP metadata (host order) marking a frame XDP hands to
/// the uplink's TC program to forward (`lb-ebpf/src/handoff.rs`): "LBHO".
pub const HANDOFF_MARK: u32 = 0x4c42_484f;
