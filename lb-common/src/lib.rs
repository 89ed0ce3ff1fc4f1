//! Types shared by the kernel programs (`lb-ebpf`) and the agent (`lb-userspace`).
//!
//! Byte order: every address and port stored in a map is in network byte order,
//! exactly as it appears in the packet (`u32::from_ne_bytes(ip.octets())`,
//! `port.to_be()`), so the kernel compares and copies without swapping.
#![no_std]

pub mod csum;
pub mod hash;
pub mod maps;

pub use hash::{filter_bit, flow_hash_of, FILTER_SEED_BACKEND, FILTER_SEED_FRONTEND};
pub use maps::*;
