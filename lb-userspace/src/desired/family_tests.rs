//! The two families through [`AddrFamily`]: IPv4 gives exactly what its own
//! types give, IPv6 its map layouts; and the node's IPv6 addresses.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use lb_common::{
    filter_bit, filter_bit6, maps6::ServiceKey6, Backend, Family, ServiceKey, FILTER_SEED_BACKEND,
    FILTER_SEED_BACKEND6, FILTER_SEED_FRONTEND, FILTER_SEED_FRONTEND6,
};

use super::*;
use crate::model::{NodeFacts, ServiceSpec, ServiceV6};

fn v6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

/// The 16 bytes a `[u32; 4]` address holds in memory.
fn bytes(words: [u32; 4]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

#[test]
fn ipv4_through_the_trait_is_ipv4_as_it_was() {
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let frontend = <SocketAddrV4 as AddrFamily>::frontend(vip, 80, Protocol::Tcp);
    assert_eq!(
        frontend,
        Frontend {
            addr: vip,
            port: 80,
            proto: Protocol::Tcp
        }
    );
    assert_eq!(
        SocketAddrV4::key(&frontend),
        ServiceKey {
            addr: u32::from_ne_bytes([10, 96, 0, 10]),
            port: 80u16.to_be(),
            proto: 6,
            pad: 0,
        }
    );
    assert_eq!(SocketAddrV4::frontend_ip(&frontend), Some(vip));
    assert!(!SocketAddrV4::is_node_port(&frontend));
    let node_port = <SocketAddrV4 as AddrFamily>::node_port(30080, Protocol::Udp);
    assert_eq!(node_port, Frontend::node_port(30080, Protocol::Udp));
    assert!(SocketAddrV4::is_node_port(&node_port));
    assert_eq!(SocketAddrV4::frontend_ip(&node_port), None);
    assert_eq!(SocketAddrV4::frontend_port(&node_port), 30080);
    assert_eq!(SocketAddrV4::proto(&node_port), Protocol::Udp);

    let backend = <SocketAddrV4 as AddrFamily>::new(Ipv4Addr::new(10, 244, 1, 2), 8080);
    assert_eq!(backend, "10.244.1.2:8080".parse().unwrap());
    assert_eq!(backend.ip_of(), Ipv4Addr::new(10, 244, 1, 2));
    assert_eq!(backend.port_of(), 8080);
    assert_eq!(
        backend.entry(0b101, 7),
        Backend {
            addr: u32::from_ne_bytes([10, 244, 1, 2]),
            port: 8080u16.to_be(),
            flags: 0b101,
            pad: 0,
            service_id: 7,
        }
    );
    // The filter's bits as filter.rs computes them from the key.
    let key = frontend.key();
    assert_eq!(
        SocketAddrV4::filter_bit(FilterSeed::Frontend, vip, 80, Protocol::Tcp),
        filter_bit(FILTER_SEED_FRONTEND, key.addr, key.port, key.proto)
    );
    assert_eq!(
        SocketAddrV4::filter_bit(FilterSeed::Backend, *backend.ip(), 8080, Protocol::Tcp),
        filter_bit(
            FILTER_SEED_BACKEND,
            u32::from_ne_bytes([10, 244, 1, 2]),
            8080u16.to_be(),
            6
        )
    );
    assert_eq!(SocketAddrV4::FAMILY, Family::Ipv4);
    assert_eq!(SocketAddrV4::LABEL_SUFFIX, "");
}

#[test]
fn ipv6_keys_entries_and_bits_hold_the_address_in_wire_order() {
    let vip = v6("fd00:96::a");
    let frontend = <SocketAddrV6 as AddrFamily>::frontend(vip, 80, Protocol::Tcp);
    assert_eq!(frontend.listen, Listen6::Addr(vip, 80));
    let key = SocketAddrV6::key(&frontend);
    assert_eq!(key, frontend.key());
    assert_eq!(bytes(key.addr), vip.octets());
    assert_eq!((key.port, key.proto, key.pad), (80u16.to_be(), 6, 0));
    assert!(!frontend.is_node_port());
    assert_eq!(SocketAddrV6::frontend_ip(&frontend), Some(vip));

    let node_port = <SocketAddrV6 as AddrFamily>::node_port(30080, Protocol::Udp);
    assert!(SocketAddrV6::is_node_port(&node_port));
    assert_eq!(SocketAddrV6::frontend_ip(&node_port), None);
    assert_eq!(
        node_port.key(),
        ServiceKey6 {
            addr: [0; 4],
            port: 30080u16.to_be(),
            proto: 17,
            pad: 0,
        }
    );
    assert_eq!(node_port.to_string(), "node port 30080/UDP");
    assert_eq!(frontend.to_string(), "[fd00:96::a]:80/TCP");

    let addr = v6("fd00:244:1::2");
    let backend = <SocketAddrV6 as AddrFamily>::new(addr, 8080);
    assert_eq!(backend, "[fd00:244:1::2]:8080".parse().unwrap());
    assert_eq!((backend.ip_of(), backend.port_of()), (addr, 8080));
    let entry = backend.entry(0b11, 9);
    assert_eq!(bytes(entry.addr), addr.octets());
    assert_eq!(
        (entry.port, entry.flags, entry.pad, entry.service_id),
        (8080u16.to_be(), 0b11, 0, 9)
    );
    assert_eq!(
        SocketAddrV6::filter_bit(FilterSeed::Frontend, vip, 80, Protocol::Tcp),
        filter_bit6(FILTER_SEED_FRONTEND6, key.addr, key.port, 6)
    );
    assert_eq!(
        SocketAddrV6::filter_bit(FilterSeed::Backend, addr, 8080, Protocol::Udp),
        filter_bit6(FILTER_SEED_BACKEND6, entry.addr, entry.port, 17)
    );
    assert_eq!(SocketAddrV6::FAMILY, Family::Ipv6);
    assert_eq!(SocketAddrV6::LABEL_SUFFIX, "/IPv6");
}

#[test]
fn a_cluster_ip_is_one_of_its_own_family() {
    let service = ServiceSpec {
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
        external_ips: vec![Ipv4Addr::new(203, 0, 113, 7)],
        v6: Some(Box::new(ServiceV6 {
            cluster_ips: vec![v6("fd00:96::a")],
            external_ips: vec![v6("2001:db8::7")],
            ..ServiceV6::default()
        })),
        ..ServiceSpec::default()
    };
    let at4 = |ip| <SocketAddrV4 as AddrFamily>::frontend(ip, 80, Protocol::Tcp);
    let at6 = |ip| <SocketAddrV6 as AddrFamily>::frontend(ip, 80, Protocol::Tcp);
    assert!(SocketAddrV4::is_cluster_ip(
        &service,
        &at4(Ipv4Addr::new(10, 96, 0, 10))
    ));
    assert!(!SocketAddrV4::is_cluster_ip(
        &service,
        &at4(Ipv4Addr::new(203, 0, 113, 7))
    ));
    assert!(SocketAddrV6::is_cluster_ip(
        &service,
        &at6(v6("fd00:96::a"))
    ));
    assert!(!SocketAddrV6::is_cluster_ip(
        &service,
        &at6(v6("2001:db8::7"))
    ));
    assert!(!SocketAddrV6::is_cluster_ip(
        &service,
        &FrontendV6::node_port(80, Protocol::Tcp)
    ));
    let v4_only = ServiceSpec {
        v6: None,
        ..service
    };
    assert!(!SocketAddrV6::is_cluster_ip(
        &v4_only,
        &at6(v6("fd00:96::a"))
    ));
}

#[test]
fn the_node_owns_its_ipv6_addresses_but_loopback_and_link_local_ones() {
    let node = NodeInfo {
        v6: NodeAddrs6 {
            addresses: vec![v6("2001:db8::11")],
            local_addresses: vec![
                Ipv6Addr::LOCALHOST,
                v6("fe80::1"),
                v6("fd00:244:1::1"),
                v6("2001:db8::11"),
            ],
            node_port_addresses: None,
        },
        ..NodeInfo::default()
    };
    for (addr, owned) in [
        (v6("2001:db8::11"), true),
        (v6("fd00:244:1::1"), true),
        (v6("2001:db8::12"), false),
        (Ipv6Addr::LOCALHOST, false),
        (v6("fe80::1"), false),
        (Ipv6Addr::UNSPECIFIED, false),
    ] {
        assert_eq!(node.owns6(addr), owned, "{addr}");
        assert_eq!(addr.owned_by(&node), owned, "{addr} through FamilyIp");
    }
    assert!(!node.owns(Ipv4Addr::new(192, 168, 50, 11)), "IPv4 apart");
}

#[test]
fn ipv6_node_port_addresses_are_those_set_or_the_node_s_own() {
    let mut node = NodeInfo {
        addresses: vec![Ipv4Addr::new(192, 168, 50, 11)],
        v6: NodeAddrs6 {
            addresses: vec![v6("2001:db8::12"), v6("2001:db8::11"), v6("2001:db8::12")],
            ..NodeAddrs6::default()
        },
        ..NodeInfo::default()
    };
    assert_eq!(
        node.node_port_addresses6(),
        [v6("2001:db8::11"), v6("2001:db8::12")],
        "its own, sorted and unique"
    );
    assert_eq!(
        SocketAddrV6::node_port_addrs(&node),
        node.node_port_addresses6()
    );
    assert_eq!(
        SocketAddrV4::node_port_addrs(&node),
        [Ipv4Addr::new(192, 168, 50, 11)]
    );
    node.v6.node_port_addresses = Some(vec![v6("fd00::1")]);
    assert_eq!(node.node_port_addresses6(), [v6("fd00::1")]);
    assert_eq!(
        node.node_port_addresses(),
        [Ipv4Addr::new(192, 168, 50, 11)],
        "IPv4 apart"
    );
}

#[test]
fn merging_the_node_object_adds_its_ipv6_addresses_once() {
    let node = NodeInfo {
        name: "node1".into(),
        v6: NodeAddrs6 {
            addresses: vec![v6("2001:db8::11")],
            ..NodeAddrs6::default()
        },
        ..NodeInfo::default()
    };
    let facts = NodeFacts {
        addresses: vec![Ipv4Addr::new(192, 168, 50, 11)],
        addresses_v6: vec![v6("2001:db8::11"), v6("fd00:50::11")],
        ..NodeFacts::default()
    };
    let merged = node.merged(Some(&facts));
    assert_eq!(merged.v6.addresses, [v6("2001:db8::11"), v6("fd00:50::11")]);
    assert_eq!(merged.addresses, [Ipv4Addr::new(192, 168, 50, 11)]);
    assert_eq!(node.merged(None), node);
}
