//! Anti-spoofing for IPv6, as [`spoof`] for IPv4: packets from outside the
//! node that claim the node's own IPv6 address, and the reverse-path check
//! of replies ([`spoof::reply_path_ok`] with an IPv6 route lookup).

use aya_ebpf::EbpfContext;
use lb_common::{
    maps6::{same, FlowKey6},
    NodeConfig,
};

use crate::{fib, lb::Ingress, spoof};

/// Whether a packet from outside the node (uplink or pod interface) claims
/// the node's IPv6 address (`NodeConfig::node_addr6`) as its source: only
/// the node sends as the node, and replies to its SNAT tuples must not be
/// forged from outside as flows of its own (see
/// [`spoof::claims_node_address`]).
#[inline(always)]
pub fn claims_node_address(cfg: &NodeConfig, src: &[u32; 4]) -> bool {
    !same(&cfg.node_addr6, &[0; 4]) && same(src, &cfg.node_addr6)
}

/// Whether a reply with tuple `arrived` (as on the wire) that matched a
/// reverse-NAT entry could legitimately have arrived where it did (`at`);
/// `verified` is the interface its flow's replies were last verified on.
#[inline(always)]
pub fn reply_path_ok<C: EbpfContext>(
    ctx: &C,
    cfg: &NodeConfig,
    arrived: &FlowKey6,
    at: &Ingress,
    verified: u32,
) -> bool {
    if spoof::unchecked(cfg, at, verified) {
        return true;
    }
    let (ret, params) = fib::lookup6(
        ctx,
        &fib::Query6 {
            ifindex: at.ifindex,
            src: arrived.dst_addr,
            dst: arrived.src_addr,
            proto: arrived.proto,
            sport: arrived.dst_port,
            dport: arrived.src_port,
            tot_len: 0,
        },
        0,
    );
    spoof::route_admits(cfg, at, ret, &params)
}
