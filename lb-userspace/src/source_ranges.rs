//! Which clients each frontend accepts: `loadBalancerSourceRanges`, as
//! kube-proxy's firewall chain reads it.
//!
//! - The ranges restrict a Service's load-balancer IPs only: its cluster
//!   IPs, external IPs and node ports accept any client (kube-proxy: "this
//!   only works for VIP-like load balancers that preserve source IPs").
//! - When a range holds one of this node's addresses, the Service's
//!   load-balancer IPs are accepted as sources too: a load balancer whose
//!   IP is a local address on the node sends the node's own requests to it
//!   from that IP (kube-proxy's `allowFromNode`).
//! - No ranges, or a range of all addresses (`0.0.0.0/0`): any client.
//! - Each family reads its own ranges only ([`of_frontend`] IPv4's,
//!   [`of_frontend6`] IPv6's), with the node's addresses of that family:
//!   kube-proxy's proxier of a family ignores the other family's ranges, so
//!   a Service listing only IPv4 ranges leaves its IPv6 load-balancer IPs
//!   open to any client (and the other way round).

use crate::{
    desired::{Frontend, FrontendV6, Listen6, NodeInfo},
    model::{ServiceSpec, SourceRange, SourceRangeV6},
};

/// The ranges of clients that may open connections to `frontend` of
/// `service`, sorted and unique; empty when any client may.
#[must_use]
pub fn of_frontend(service: &ServiceSpec, frontend: Frontend, node: &NodeInfo) -> Vec<SourceRange> {
    let open_to_all = service.source_ranges.iter().any(|r| r.prefix_len == 0);
    if open_to_all || !service.load_balancer_ips.contains(&frontend.addr) {
        return Vec::new();
    }
    let mut ranges = service.source_ranges.clone();
    let allow_from_node = ranges
        .iter()
        .any(|r| node.addresses.iter().any(|&a| r.contains(a)));
    if allow_from_node {
        ranges.extend(service.load_balancer_ips.iter().map(|&addr| SourceRange {
            addr,
            prefix_len: 32,
        }));
    }
    ranges.sort_unstable();
    ranges.dedup();
    ranges
}

/// The IPv6 ranges of clients that may open connections to the IPv6
/// `frontend` of `service`, sorted and unique; empty when any client may
/// (`::/0` among the ranges, no IPv6 range, or not a load-balancer IP).
#[must_use]
pub fn of_frontend6(
    service: &ServiceSpec,
    frontend: FrontendV6,
    node: &NodeInfo,
) -> Vec<SourceRangeV6> {
    let (Some(v6), Listen6::Addr(ip, _)) = (&service.v6, frontend.listen) else {
        return Vec::new();
    };
    let open_to_all = v6.source_ranges.iter().any(|r| r.prefix_len == 0);
    if open_to_all || !v6.load_balancer_ips.contains(&ip) {
        return Vec::new();
    }
    let mut ranges = v6.source_ranges.clone();
    let allow_from_node = ranges
        .iter()
        .any(|r| node.v6.addresses.iter().any(|&a| r.contains(a)));
    if allow_from_node {
        ranges.extend(
            v6.load_balancer_ips
                .iter()
                .map(|&addr| SourceRangeV6::new(addr, 128)),
        );
    }
    ranges.sort_unstable();
    ranges.dedup();
    ranges
}

#[cfg(test)]
mod tests6;

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::ident::Protocol;

    fn range(a: [u8; 4], prefix_len: u8) -> SourceRange {
        SourceRange {
            addr: Ipv4Addr::from(a),
            prefix_len,
        }
    }

    #[test]
    fn ranges_apply_to_load_balancer_ips_and_admit_them_when_the_node_is_in_range() {
        let lb = Ipv4Addr::new(198, 51, 100, 7);
        let service = ServiceSpec {
            cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 7)],
            external_ips: vec![Ipv4Addr::new(203, 0, 113, 7)],
            load_balancer_ips: vec![lb],
            source_ranges: vec![range([10, 0, 0, 0], 8), range([192, 168, 0, 0], 16)],
            ..ServiceSpec::default()
        };
        let at = |addr| Frontend {
            addr,
            port: 80,
            proto: Protocol::Tcp,
        };
        let outside = NodeInfo {
            addresses: vec![Ipv4Addr::new(172, 16, 0, 11)],
            ..NodeInfo::default()
        };
        let inside = NodeInfo {
            addresses: vec![Ipv4Addr::new(192, 168, 50, 11)],
            ..NodeInfo::default()
        };
        assert_eq!(
            of_frontend(&service, at(lb), &outside),
            service.source_ranges
        );
        assert_eq!(
            of_frontend(&service, at(lb), &inside),
            vec![
                range([10, 0, 0, 0], 8),
                range([192, 168, 0, 0], 16),
                range([198, 51, 100, 7], 32)
            ],
            "a node in range also admits the load balancer's own IP as a source"
        );
        for open in [
            Ipv4Addr::new(10, 96, 0, 7),
            Ipv4Addr::new(203, 0, 113, 7),
            Ipv4Addr::new(172, 16, 0, 11),
        ] {
            assert!(
                of_frontend(&service, at(open), &inside).is_empty(),
                "{open}"
            );
        }
        let unrestricted = ServiceSpec {
            source_ranges: Vec::new(),
            ..service
        };
        assert!(of_frontend(&unrestricted, at(lb), &inside).is_empty());
    }
}
