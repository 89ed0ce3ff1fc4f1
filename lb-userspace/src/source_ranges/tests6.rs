//! IPv6 source ranges: the IPv4 rules over each family's own ranges.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::{
    desired::{NodeAddrs6, Protocol},
    model::ServiceV6,
};

fn v6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

fn range(text: &str) -> SourceRangeV6 {
    let (addr, len) = text.split_once('/').unwrap();
    SourceRangeV6::new(v6(addr), len.parse().unwrap())
}

fn at(addr: Ipv6Addr) -> FrontendV6 {
    FrontendV6 {
        listen: Listen6::Addr(addr, 80),
        proto: Protocol::Tcp,
    }
}

fn node6(addr: &str) -> NodeInfo {
    NodeInfo {
        addresses: vec![Ipv4Addr::new(192, 168, 50, 11)],
        v6: NodeAddrs6 {
            addresses: vec![v6(addr)],
            ..NodeAddrs6::default()
        },
        ..NodeInfo::default()
    }
}

const LB: &str = "2001:db8:51::7";

/// A dual-stack load balancer with IPv4 ranges `v4` and IPv6 ranges `v6`.
fn service(v4: &[(u8, u8)], ranges6: &[&str]) -> ServiceSpec {
    ServiceSpec {
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 7)],
        load_balancer_ips: vec![Ipv4Addr::new(198, 51, 100, 7)],
        source_ranges: v4
            .iter()
            .map(|&(first, prefix_len)| SourceRange {
                addr: Ipv4Addr::new(first, 0, 0, 0),
                prefix_len,
            })
            .collect(),
        v6: Some(Box::new(ServiceV6 {
            cluster_ips: vec![v6("fd00:96::7")],
            external_ips: vec![v6("2001:db8:113::7")],
            load_balancer_ips: vec![v6(LB)],
            source_ranges: ranges6.iter().map(|r| range(r)).collect(),
        })),
        ..ServiceSpec::default()
    }
}

#[test]
fn ipv6_ranges_apply_to_ipv6_load_balancer_ips_and_admit_them_when_the_node_is_in_range() {
    let svc = service(&[], &["fd00:10::/32", "2001:db8:50::/48"]);
    let outside = node6("2001:db8:99::11");
    let inside = node6("2001:db8:50::11");
    assert_eq!(
        of_frontend6(&svc, at(v6(LB)), &outside),
        [range("2001:db8:50::/48"), range("fd00:10::/32")],
        "sorted"
    );
    assert_eq!(
        of_frontend6(&svc, at(v6(LB)), &inside),
        [
            range("2001:db8:50::/48"),
            range("2001:db8:51::7/128"),
            range("fd00:10::/32"),
        ],
        "a node in range also admits the load balancer's own IP as a source"
    );
    for open in [
        at(v6("fd00:96::7")),
        at(v6("2001:db8:113::7")),
        at(v6("2001:db8:50::11")),
        FrontendV6::node_port(80, Protocol::Tcp),
    ] {
        assert!(of_frontend6(&svc, open, &inside).is_empty(), "{open}");
    }
}

#[test]
fn all_addresses_or_no_range_of_its_family_opens_to_any_client() {
    let lb = at(v6(LB));
    let node = node6("2001:db8:50::11");
    assert!(of_frontend6(&service(&[], &["2001:db8:50::/48", "::/0"]), lb, &node).is_empty());
    assert!(of_frontend6(&service(&[], &[]), lb, &node).is_empty());
    // kube-proxy's IPv6 proxier reads only IPv6 ranges, its IPv4 one only IPv4 ones.
    let v4_ranges = service(&[(10, 8)], &[]);
    assert!(of_frontend6(&v4_ranges, lb, &node).is_empty());
    let v4_lb = Frontend {
        addr: Ipv4Addr::new(198, 51, 100, 7),
        port: 80,
        proto: Protocol::Tcp,
    };
    assert_eq!(of_frontend(&v4_ranges, v4_lb, &node).len(), 1);
    let v6_ranges = service(&[], &["2001:db8:50::/48"]);
    assert!(of_frontend(&v6_ranges, v4_lb, &node).is_empty());
    assert_eq!(of_frontend6(&v6_ranges, lb, &node).len(), 2);
    // `0.0.0.0/0` opens IPv4 only.
    let both = service(&[(0, 0)], &["2001:db8:50::/48"]);
    assert!(of_frontend(&both, v4_lb, &node).is_empty());
    assert_eq!(of_frontend6(&both, lb, &node).len(), 2);
    let without_v6 = ServiceSpec {
        v6: None,
        ..service(&[(10, 8)], &[])
    };
    assert!(of_frontend6(&without_v6, lb, &node).is_empty());
}

#[test]
fn only_the_node_s_ipv6_addresses_admit_the_load_balancer() {
    // The node's IPv4 address is inside 192.0.0.0/8, its IPv6 one outside
    // every IPv6 range: IPv6 adds no /128.
    let svc = service(&[(192, 8)], &["2001:db8:50::/48"]);
    let node = node6("2001:db8:99::11");
    assert_eq!(
        of_frontend6(&svc, at(v6(LB)), &node),
        [range("2001:db8:50::/48")]
    );
    let v4_lb = Frontend {
        addr: Ipv4Addr::new(198, 51, 100, 7),
        port: 80,
        proto: Protocol::Tcp,
    };
    assert_eq!(
        of_frontend(&svc, v4_lb, &node).len(),
        2,
        "IPv4 admits its load balancer"
    );
}
