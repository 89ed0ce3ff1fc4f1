//! Anti-spoofing: packets from outside the node that claim the node's own
//! address, and replies that could not have arrived where they did.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    EbpfContext,
};
use lb_common::{FlowKey, NodeConfig, CONFIG_F_REPLY_PATH_CHECK};

use crate::{
    fib,
    lb::{Hook, Ingress},
};

/// The ingress interface index of a packet the node itself originated (a
/// local process, the kernel's own ICMP errors): it entered by no interface.
pub const NODE_ITSELF: u32 = 0;

/// Whether a packet from outside the node (uplink or pod interface) claims
/// the node's address as its source. The agent sets `accept_local` where
/// translated packets need it; this keeps what `accept_local=0` gave: nobody
/// else may send as the node.
#[inline(always)]
pub fn claims_node_address(cfg: &NodeConfig, src: u32) -> bool {
    cfg.node_addr != 0 && src == cfg.node_addr
}

/// Whether a reply (or an ICMP error) with tuple `arrived` (as on the wire)
/// that matched a reverse-NAT entry could legitimately have arrived where it
/// did (`at`): the route back to its source leaves through the interface it
/// arrived on (strict reverse-path check, in the spirit of `rp_filter=1`), or,
/// where that interface is a port of a bridge the route leaves through (a
/// bridge CNI's pod veth, an uplink enslaved to a bridge), the frame came from
/// the neighbour that route resolves to (its Ethernet source is the
/// neighbour's address). The lookup is the forwarding one, which fails where
/// the interface does not forward, as a node balancing traffic always does.
/// `verified` is the interface the flow's replies were last verified on, so a
/// flow pays for one route lookup, not one per packet.
///
/// Three more cases pass:
/// - On an uplink, a reply whose source is routed through the node's overlay
///   device (`overlay_ifindex`): an overlay carries traffic to pod CIDRs
///   only, so a remote pod's replies to the node's own address (a flow
///   translated to it) come over the underlay, unencapsulated.
/// - On its way into a pod ([`Hook::Egress`]), a reply that entered by the
///   overlay device, wherever its source is routed: another node answers a
///   pod from its own address (a hostNetwork backend) over the overlay, as
///   its route to this node's pod CIDR goes. The overlay already admits
///   that node's pods' addresses from any sender of its encapsulation.
/// - A packet the node itself originated ([`NODE_ITSELF`], seen only at
///   [`Hook::Egress`]): a hostNetwork backend at the node's address
///   answering a pod, the node's own ICMP error about a pod's translated
///   packet. No interface to judge, and nothing from outside the node
///   arrives without one; the node is trusted as it is for its own address.
#[inline(always)]
pub fn reply_path_ok<C: EbpfContext>(
    ctx: &C,
    cfg: &NodeConfig,
    arrived: &FlowKey,
    at: &Ingress,
    verified: u32,
) -> bool {
    if unchecked(cfg, at, verified) {
        return true;
    }
    // The route a packet arriving on this interface and addressed to the
    // reply's source would take (an input lookup, unrestricted; the kernel
    // also takes the namespace from this interface), with its neighbour.
    let (ret, params) = fib::lookup(
        ctx,
        &fib::Query {
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
    route_admits(cfg, at, ret, &params)
}

/// Whether a reply passes [`reply_path_ok`] without a route lookup: the
/// check is off, the node sent it, or its interface is the one `verified`.
#[inline(always)]
pub fn unchecked(cfg: &NodeConfig, at: &Ingress, verified: u32) -> bool {
    cfg.flags & CONFIG_F_REPLY_PATH_CHECK == 0
        || at.ifindex == NODE_ITSELF
        || verified == at.ifindex
}

/// Whether the route back to a reply's source (`bpf_fib_lookup`'s return
/// code `ret` and parameters, of either family) admits it where it arrived
/// (see [`reply_path_ok`]).
#[inline(always)]
pub fn route_admits(cfg: &NodeConfig, at: &Ingress, ret: i64, params: &bpf_fib_lookup) -> bool {
    let routed =
        ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH);
    routed
        && (params.ifindex == at.ifindex
            || (ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) && params.dmac == at.src_mac)
            || (cfg.overlay_ifindex != 0
                && ((at.hook == Hook::Uplink && params.ifindex == cfg.overlay_ifindex)
                    || (at.hook == Hook::Egress && at.ifindex == cfg.overlay_ifindex))))
}
