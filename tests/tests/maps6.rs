//! IPv6's frontend maps (step 2 of the IPv6 data path): the agent's writes
//! land in `SERVICES6`, `BACKENDS6` and `NODEPORT_ADDRS6` with the layouts
//! `lb_common::maps6` documents, and leave IPv4's maps alone. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{
    maps6::{ipv6_words, Backend6, ServiceKey6},
    ServiceEntry, BACKEND_F_ACTIVE, IPPROTO_TCP,
};
use lb_tests::packet::TestDatapath;
use lb_userspace::plan::MapOp;

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x5);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x11);

#[test]
fn ipv6_writes_read_back_and_leave_ipv4_s_maps_alone() {
    let mut dp = TestDatapath::load("maps6", NODE);
    let key = ServiceKey6 {
        addr: ipv6_words(VIP.octets()),
        port: 80u16.to_be(),
        proto: IPPROTO_TCP,
        pad: 0,
    };
    let backend = Backend6 {
        addr: ipv6_words(POD.octets()),
        port: 8080u16.to_be(),
        flags: BACKEND_F_ACTIVE,
        pad: 0,
        service_id: 7,
    };
    let entry = ServiceEntry {
        id: 7,
        backend_count: 1,
        ..ServiceEntry::default()
    };
    let maps = &mut dp.datapath_mut().maps;
    maps.apply(&[
        MapOp::SetBackend6(3, backend),
        MapOp::SetService6(key, entry),
        MapOp::SetNodePortAddr6(NODE6),
    ])
    .unwrap();
    assert_eq!(maps.backends6.get(&3, 0).unwrap(), backend);
    assert_eq!(maps.services6.get(&key, 0).unwrap(), entry);
    assert_eq!(maps.node_port_addresses6().unwrap(), vec![NODE6]);
    // The address is stored in wire order: its first word is fd00:0096.
    let stored = maps.services6.keys().next().unwrap().unwrap();
    assert_eq!(stored.addr[0].to_ne_bytes(), [0xfd, 0x00, 0x00, 0x96]);
    // IPv4's maps saw nothing: the id space is shared, the entries are not.
    assert_eq!(maps.services.keys().count(), 0);
    assert_eq!(maps.backends.get(&3, 0).unwrap().flags, 0);
    assert!(maps.node_port_addresses().unwrap().is_empty());

    maps.apply(&[
        MapOp::DeleteService6(key),
        MapOp::ClearBackend6(3),
        MapOp::DeleteNodePortAddr6(NODE6),
        // Already gone: no error.
        MapOp::DeleteNodePortAddr6(NODE6),
    ])
    .unwrap();
    assert_eq!(maps.services6.keys().count(), 0);
    assert_eq!(maps.backends6.get(&3, 0).unwrap(), Backend6::default());
    assert!(maps.node_port_addresses6().unwrap().is_empty());
}
