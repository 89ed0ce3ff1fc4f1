//! IPv6 SNAT (step 4 of the IPv6 data path), the twin of `tests/snat.rs`
//! and of the SNAT cases of `tests/packets.rs`, through the real programs
//! (`BPF_PROG_TEST_RUN`), exact bytes out: a new flow to a backend on
//! another node from the uplink, and a pod reaching itself through its
//! Service, are translated to the node's IPv6 address with a port of the
//! pool, their replies to that tuple translated back where they enter; a
//! reply-tuple clash is remapped to a pool port of the client's address;
//! a full pool is counted per backend; a segment without SYN never claims
//! a port. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{
    filter_bit6,
    maps6::{ipv6_words, Backend6, ServiceKey6},
    Event, Family, ServiceEntry, Verdict, BACKEND_F_ACTIVE, BACKEND_F_LOCAL, BACKEND_F_SELECTED,
    BACKEND_F_SELECTED_LOCAL, FILTER_SEED_BACKEND6, FILTER_SEED_FRONTEND6, IPPROTO_TCP,
    IPPROTO_UDP,
};
use lb_tests::{
    packet::{test_flows, Hook, TestDatapath, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
    packet6::{checksums6_valid, src6_of, Packet6},
};
use lb_userspace::{
    flows::{FlowSettings, PortRange},
    plan::MapOp,
};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x11);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x10);
const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const POD_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);
const REMOTE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 2);
/// The tests' SNAT pool.
const POOL: std::ops::RangeInclusive<u16> = 2000..=2015;

/// A backend: (id, address, port, on this node).
type Member = (u32, Ipv6Addr, u16, bool);

fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Packet6 {
    Packet6::tcp(src, sport, dst, dport)
}

/// Writes the frontend `VIP`:`port`/`proto` (Service port `id`) of
/// `members`, its 101-slot table at `offset`, in the agent's order.
fn program(dp: &mut TestDatapath, id: u32, port: u16, proto: u8, members: &[Member], offset: u32) {
    let bit = |dp: &mut TestDatapath, seed, addr: Ipv6Addr, port: u16| {
        let bit = filter_bit6(seed, ipv6_words(addr.octets()), port.to_be(), proto);
        let word = dp.datapath_mut().maps.filter.get(bit / 64).unwrap();
        let op = MapOp::SetFilterWord(bit / 64, word | 1 << (bit % 64));
        dp.datapath_mut().maps.apply(&[op]).unwrap();
    };
    bit(dp, FILTER_SEED_FRONTEND6, VIP, port);
    let mut ops = vec![];
    for &(backend_id, addr, target, local) in members {
        let mut flags = BACKEND_F_ACTIVE | BACKEND_F_SELECTED | BACKEND_F_SELECTED_LOCAL;
        if local {
            flags |= BACKEND_F_LOCAL;
        }
        let backend = Backend6 {
            addr: ipv6_words(addr.octets()),
            port: target.to_be(),
            flags,
            pad: 0,
            service_id: id,
        };
        ops.push(MapOp::SetBackend6(backend_id, backend));
        bit(dp, FILTER_SEED_BACKEND6, addr, target);
    }
    let slots: Vec<u32> = (0..101).map(|i| members[i % members.len()].0).collect();
    ops.push(MapOp::SetTable { offset, slots });
    ops.push(MapOp::SetLabel(id, format!("default/web-{id}:http/IPv6")));
    let key = ServiceKey6 {
        addr: ipv6_words(VIP.octets()),
        port: port.to_be(),
        proto,
        pad: 0,
    };
    let entry = ServiceEntry {
        id,
        backend_count: u32::try_from(members.len()).unwrap(),
        table_offset: offset,
        table_size: 101,
        affinity_timeout: 0,
        flags: 0,
    };
    ops.push(MapOp::SetService6(key, entry));
    dp.datapath_mut().maps.apply(&ops).unwrap();
}

/// A data path with `NODE6` as its IPv6 address, the pool `pool`, and the
/// frontend `VIP`:`port`/`proto` of `members`.
fn setup(
    name: &str,
    pool: std::ops::RangeInclusive<u16>,
    port: u16,
    proto: u8,
    members: &[Member],
) -> TestDatapath {
    let flows = FlowSettings {
        snat_ports: PortRange(pool),
        ..test_flows()
    };
    let mut dp = TestDatapath::load_with_node6(name, NODE, NODE6, flows).with_ipv6();
    program(&mut dp, 7, port, proto, members, 1_000);
    dp
}

/// The pool port a translated frame leaves from (checked to be the node's
/// and in the pool).
fn snat_port(out: &[u8]) -> u16 {
    let (addr, port) = src6_of(out);
    assert_eq!(addr, NODE6, "translated to the node's IPv6 address");
    assert!(POOL.contains(&port), "port {port} is the pool's");
    port
}

#[test]
fn a_flow_to_a_remote_backend_is_translated_to_the_node_address_both_ways() {
    for hook in Hook::UPLINKS {
        let dp = setup(
            "snat6-remote",
            POOL,
            80,
            IPPROTO_TCP,
            &[(1, REMOTE, 8080, false)],
        );
        let (ret, out) = hook.run(&dp, &tcp(CLIENT, 40000, VIP, 80).syn().build());
        assert_eq!(ret, hook.passed(), "{hook:?}");
        let port = snat_port(&out);
        assert_eq!(
            out,
            tcp(NODE6, port, REMOTE, 8080).syn().build(),
            "{hook:?}: source and destination translated, checksum and all"
        );
        assert!(checksums6_valid(&out));
        // The reply to the node's tuple is translated back where it enters.
        let (ret, back) = hook.run(&dp, &tcp(REMOTE, 8080, NODE6, port).synack().build());
        assert_eq!(ret, hook.passed(), "{hook:?}");
        assert_eq!(
            back,
            tcp(VIP, 80, CLIENT, 40000).synack().build(),
            "{hook:?}"
        );
        assert!(checksums6_valid(&back));
        // The flow keeps its port.
        let (_, out) = hook.run(&dp, &tcp(CLIENT, 40000, VIP, 80).ack().build());
        assert_eq!(
            out,
            tcp(NODE6, port, REMOTE, 8080).ack().build(),
            "{hook:?}"
        );
        assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Translated), 2);
        assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Reversed), 1);
        assert_eq!(dp.event_of(Family::Ipv6, Event::Ipv6SnatUnserved), 0);
        assert_eq!(dp.verdict_of(Family::Ipv4, Verdict::Translated), 0);
        assert_eq!(dp.flows6().len(), 1);
        // The reply's egress passes it as it is: nothing translated twice.
        let reply = tcp(VIP, 80, CLIENT, 40000).ack().build();
        assert_eq!(dp.run_tc_egress(&reply), (TC_ACT_OK, reply));
    }
}

#[test]
fn udp_to_a_remote_backend_is_translated_too() {
    let dp = setup(
        "snat6-udp",
        POOL,
        53,
        IPPROTO_UDP,
        &[(1, REMOTE, 5353, false)],
    );
    let query = Packet6::udp(CLIENT, 40000, VIP, 53)
        .with_payload(b"query")
        .build();
    let (ret, out) = dp.run_xdp(&query);
    assert_eq!(ret, XDP_PASS);
    let port = snat_port(&out);
    assert_eq!(
        out,
        Packet6::udp(NODE6, port, REMOTE, 5353)
            .with_payload(b"query")
            .build()
    );
    assert!(checksums6_valid(&out));
    let answer = Packet6::udp(REMOTE, 5353, NODE6, port)
        .with_payload(b"answer")
        .build();
    let (_, back) = dp.run_xdp(&answer);
    assert_eq!(
        back,
        Packet6::udp(VIP, 53, CLIENT, 40000)
            .with_payload(b"answer")
            .build()
    );
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_translated_to_the_node_address() {
    let dp = setup("hairpin6", POOL, 80, IPPROTO_TCP, &[(1, POD_A, 8080, true)]);
    let (ret, out) = dp.run_tc(&tcp(POD_A, 33000, VIP, 80).syn().build());
    assert_eq!(ret, TC_ACT_OK);
    let port = snat_port(&out);
    assert_eq!(out, tcp(NODE6, port, POD_A, 8080).syn().build());
    let (ret, back) = dp.run_tc(&tcp(POD_A, 8080, NODE6, port).synack().build());
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(back, tcp(VIP, 80, POD_A, 33000).synack().build());
    assert_eq!(dp.event_of(Family::Ipv6, Event::Ipv6SnatUnserved), 0);
}

#[test]
fn a_segment_without_syn_never_claims_a_port() {
    let dp = setup(
        "snat6-nosyn",
        POOL,
        80,
        IPPROTO_TCP,
        &[(1, REMOTE, 8080, false)],
    );
    for i in 0..20 {
        let ack = tcp(CLIENT, 40000 + i, VIP, 80).ack().build();
        assert_eq!(
            dp.run_xdp(&ack).0,
            XDP_DROP,
            "a mid-stream segment from nowhere"
        );
    }
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Invalid), 20);
    assert!(dp.flows6().is_empty());
    assert_eq!(dp.event_of(Family::Ipv6, Event::RevNatCreated), 0);
}

#[test]
fn a_full_pool_is_counted_per_backend() {
    let dp = setup(
        "snat6-full",
        2000..=2001,
        80,
        IPPROTO_TCP,
        &[(1, REMOTE, 8080, false)],
    );
    let mut ports = vec![];
    for i in 0..2 {
        let (ret, out) = dp.run_xdp(&tcp(CLIENT, 40000 + i, VIP, 80).syn().build());
        assert_eq!(ret, XDP_PASS);
        ports.push(src6_of(&out).1);
    }
    ports.sort_unstable();
    assert_eq!(ports, [2000, 2001], "two flows, two ports");
    let (ret, _) = dp.run_xdp(&tcp(CLIENT, 40002, VIP, 80).syn().build());
    assert_eq!(ret, XDP_DROP, "no port left within the first second");
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Error), 1);
    assert_eq!(dp.event_of(Family::Ipv6, Event::SnatExhausted), 1);
    assert_eq!(dp.exhausted6(REMOTE, 8080, IPPROTO_TCP), 1);
    assert_eq!(dp.event_of(Family::Ipv4, Event::SnatExhausted), 0);
    // At TC the same.
    let (ret, _) = dp.run_tc_uplink(&tcp(CLIENT, 40003, VIP, 80).syn().build());
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(dp.exhausted6(REMOTE, 8080, IPPROTO_TCP), 2);
    // The agent's collector reads it beside IPv4's (the log and the
    // `lb_snat_exhausted_total` series), labelled with the backend.
    let counts = lb_userspace::conntrack::gc::Collector::new(dp.pin_dir())
        .exhaustion()
        .unwrap();
    assert_eq!(
        counts.get(&format!("[{REMOTE}]:8080/TCP")),
        Some(&2),
        "{counts:?}"
    );
}

/// One client port to two frontends served by one backend: the second
/// flow's replies would arrive as the first's, so its source port is
/// remapped to a pool port of the client's own address, as IPv4's is.
#[test]
fn a_reply_tuple_clash_is_remapped_to_a_pool_port() {
    let mut dp = setup("clash6", POOL, 80, IPPROTO_TCP, &[(1, POD_A, 8080, true)]);
    program(
        &mut dp,
        8,
        81,
        IPPROTO_TCP,
        &[(2, POD_A, 8080, true)],
        1_101,
    );
    let (_, out) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).syn().build());
    assert_eq!(out, tcp(CLIENT, 40000, POD_A, 8080).syn().build());
    let (ret, out) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 81).syn().build());
    assert_eq!(ret, XDP_PASS);
    let (addr, port) = src6_of(&out);
    assert_eq!(addr, CLIENT, "the client keeps its address");
    assert!(POOL.contains(&port), "port {port} is the pool's");
    assert_eq!(out, tcp(CLIENT, port, POD_A, 8080).syn().build());
    assert_eq!(dp.event_of(Family::Ipv6, Event::TupleRemapped), 1);
    // Each flow's replies go back to their own frontend, at egress.
    let (_, first) = dp.run_tc_egress(&tcp(POD_A, 8080, CLIENT, 40000).synack().build());
    assert_eq!(first, tcp(VIP, 80, CLIENT, 40000).synack().build());
    let (_, second) = dp.run_tc_egress(&tcp(POD_A, 8080, CLIENT, port).synack().build());
    assert_eq!(second, tcp(VIP, 81, CLIENT, 40000).synack().build());
    // The remapped flow keeps its port.
    let (_, out) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 81).ack().build());
    assert_eq!(out, tcp(CLIENT, port, POD_A, 8080).ack().build());
}

/// A new flow from outside claiming the node's IPv6 address is dropped, as
/// IPv4's claiming its address (`tests/spoofing.rs`): nobody else sends as
/// the node, and no flow starts from its tuples.
#[test]
fn a_packet_claiming_the_node_address_is_dropped() {
    let dp = setup("spoof6", POOL, 80, IPPROTO_TCP, &[(1, REMOTE, 8080, false)]);
    let forged = tcp(NODE6, 2000, VIP, 80).syn().build();
    for hook in Hook::ALL {
        assert_eq!(hook.run(&dp, &forged).0, hook.dropped(), "{hook:?}");
    }
    assert_eq!(dp.event_of(Family::Ipv6, Event::NodeSourceSpoofed), 3);
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Invalid), 3);
    assert!(dp.flows6().is_empty());
}
