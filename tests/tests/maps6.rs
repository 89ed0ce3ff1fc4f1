//! IPv6's frontend maps (step 2 of the IPv6 data path): the agent's writes
//! land in `SERVICES6`, `BACKENDS6` and `NODEPORT_ADDRS6` with the layouts
//! `lb_common::maps6` documents, and leave IPv4's maps alone. Needs root.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    time::{Duration, Instant},
};

use lb_common::{
    maps6::{ipv6_words, Backend6, ServiceKey6},
    ServiceEntry, BACKEND_F_ACTIVE, IPPROTO_TCP,
};
use lb_tests::packet::TestDatapath;
use lb_userspace::{
    desired::{
        BackendInfo, DesiredFrontend, DesiredState, DesiredState6, Frontend, FrontendV6, Listen6,
        ObjectName, Protocol, SourceRangeV6, TrafficPolicy,
    },
    plan::{MapOp, Planner},
};

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

/// A dual-stack Service port: an IPv4 cluster IP, and an IPv6 one with a
/// source range and a UDP node port; the node port is returned apart.
fn dual_stack() -> (DesiredState, DesiredState6, FrontendV6) {
    let info = BackendInfo {
        local: true,
        for_cluster: true,
        for_local: true,
    };
    let want4 = DesiredFrontend {
        service: ObjectName {
            namespace: "default".into(),
            name: "web".into(),
        },
        port_name: "http".into(),
        backends: [(SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 5), 8080), info)].into(),
        policy: TrafficPolicy::Cluster,
        pods_policy: TrafficPolicy::Cluster,
        affinity_timeout: 0,
        has_endpoints: true,
        source_ranges: Vec::new(),
        node_port_addrs: Vec::new(),
    };
    let want6 = DesiredFrontend {
        service: want4.service.clone(),
        port_name: "http".into(),
        backends: [(SocketAddrV6::new(POD, 8080, 0, 0), info)].into(),
        policy: TrafficPolicy::Cluster,
        pods_policy: TrafficPolicy::Cluster,
        affinity_timeout: 0,
        has_endpoints: true,
        source_ranges: vec![SourceRangeV6 {
            addr: "2001:db8:40::".parse().unwrap(),
            prefix_len: 44,
        }],
        node_port_addrs: Vec::new(),
    };
    let fe4 = Frontend {
        addr: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        proto: Protocol::Tcp,
    };
    let fe6 = FrontendV6 {
        listen: Listen6::Addr(VIP, 80),
        proto: Protocol::Tcp,
    };
    let node_port = FrontendV6::node_port(30_080, Protocol::Udp);
    let mut np_want = want6.clone();
    np_want.source_ranges.clear();
    np_want.node_port_addrs = vec![NODE6];
    (
        [(fe4, want4)].into(),
        [(fe6, want6), (node_port, np_want)].into(),
        node_port,
    )
}

/// A dual-stack Service port planned and applied to real maps reads back
/// as planned (IPv4's and IPv6's apart), and a planner adopting what the
/// maps hold plans nothing more for either family.
#[test]
fn a_dual_stack_plan_reads_back_and_an_adopting_planner_replans_nothing() {
    const GRACE: Duration = Duration::from_secs(2);
    let mut dp = TestDatapath::load("maps6-dual", NODE);
    let (desired4, desired6, node_port) = dual_stack();
    let t0 = Instant::now();
    let slab = dp.slab_slots();
    let mut planner = Planner::new(slab, GRACE);
    let (add6, _) = planner.node_port_addresses6(&[NODE6]);
    let (plan4, errors4) = planner.plan(&desired4, t0);
    let (plan6, errors6) = planner.plan6(&desired6, t0);
    assert!(errors4.is_empty() && errors6.is_empty());
    let maps = &mut dp.datapath_mut().maps;
    for plan in [&add6, &plan4, &plan6] {
        maps.apply(&plan.ops).unwrap();
    }
    let mut read6 = maps.applied_frontends6().unwrap();
    read6.sort_by_key(|a| a.frontend);
    let planned6: Vec<_> = planner.frontends6().collect();
    assert_eq!(read6, planned6, "IPv6 reads back as planned");
    let planned4: Vec<_> = planner.frontends().collect();
    assert_eq!(maps.applied_frontends().unwrap(), planned4);
    let np = read6.iter().find(|a| a.frontend == node_port).unwrap();
    assert_eq!(np.node_port_addrs, [NODE6]);

    let mut adopted = Planner::adopt(
        maps.applied_frontends().unwrap(),
        maps.filter.words(),
        slab,
        GRACE,
    )
    .adopt6(read6)
    .with_node_port_addrs6(maps.node_port_addresses6().unwrap());
    assert!(adopted.node_port_addresses6(&[NODE6]).0.ops.is_empty());
    let (again4, _) = adopted.plan(&desired4, t0);
    let (again6, _) = adopted.plan6(&desired6, t0);
    assert!(again4.ops.is_empty(), "{:?}", again4.ops);
    assert!(again6.ops.is_empty(), "{:?}", again6.ops);
}

/// The batched read of a backend array (what a restarted agent reads back)
/// gives every slot in index order, as reading them one by one does,
/// across the batch boundaries and up to the last slot.
#[test]
fn a_batched_array_read_matches_slot_by_slot_reads() {
    use lb_userspace::datapath::batch::{read_array, BATCH_ELEMENTS};
    let mut dp = TestDatapath::load("maps6-batch", NODE);
    let maps = &mut dp.datapath_mut().maps;
    let len = maps.backends6.len();
    assert!(len > 2 * BATCH_ELEMENTS, "{len}");
    for (i, id) in [0, BATCH_ELEMENTS - 1, BATCH_ELEMENTS, len - 1]
        .into_iter()
        .enumerate()
    {
        let backend = Backend6 {
            addr: ipv6_words(POD.octets()),
            port: (8080 + u16::try_from(i).unwrap()).to_be(),
            flags: BACKEND_F_ACTIVE,
            pad: 0,
            service_id: id,
        };
        maps.backends6.set(id, backend, 0).unwrap();
    }
    let batched = read_array(&maps.backends6).unwrap();
    let one_by_one: Vec<Backend6> = maps.backends6.iter().map(Result::unwrap).collect();
    assert_eq!(batched.len(), len as usize);
    assert!(batched == one_by_one, "the batched read differs");
    assert_eq!(batched[(len - 1) as usize].service_id, len - 1);
    assert_eq!(u16::from_be(batched[BATCH_ELEMENTS as usize].port), 8082);
}
