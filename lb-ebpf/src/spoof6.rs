//! The reverse-path check of IPv6 replies: [`spoof::reply_path_ok`] with an
//! IPv6 route lookup. (The node-address spoofing drop needs the node's IPv6
//! address, which comes with IPv6 SNAT.)

use aya_ebpf::EbpfContext;
use lb_common::{maps6::FlowKey6, NodeConfig};

use crate::{fib, lb::Ingress, spoof};

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
        },
        0,
    );
    spoof::route_admits(cfg, at, ret, &params)
}
