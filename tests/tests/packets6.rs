//! IPv6 packet tests (step 3 of the IPv6 data path), mirroring the cases of
//! `tests/packets.rs` that IPv6 serves so far: crafted frames through the
//! real programs with `BPF_PROG_TEST_RUN` (IPv6 reaches `lb_xdp6` and the
//! IPv6 TC programs through the IPv4 entry points' tail calls), checking the
//! exact bytes that come out. The agent's planner does not write IPv6 maps
//! yet, so each test writes them itself through `Maps::apply`: backends,
//! a Maglev table, the frontend and its filter bits. Needs root.

use std::{collections::BTreeMap, net::Ipv4Addr, net::Ipv6Addr};

use aya::{maps::lpm_trie::Key, programs::Xdp};
use lb_common::{
    filter_bit6,
    maps6::{ipv6_words, Backend6, ServiceKey6, SourceRangeKey6},
    Event, Family, ServiceEntry, Verdict, BACKEND_F_ACTIVE, BACKEND_F_LOCAL, BACKEND_F_SELECTED,
    BACKEND_F_SELECTED_LOCAL, FILTER_SEED_BACKEND6, FILTER_SEED_FRONTEND6, IPPROTO_TCP,
    IPPROTO_UDP, SERVICE_F_SOURCE_RANGES, SOURCE_RANGE_ID_BITS,
};
use lb_tests::{
    packet::{run, unique_pin_dir, Hook, TestDatapath, TC_ACT_OK, XDP_DROP, XDP_PASS},
    packet6::{checksums6_valid, dst6_of, maglev_slot6, Packet6},
};
use lb_userspace::{datapath::XDP_PROGRAM, plan::MapOp};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x10);
const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const POD_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);
const POD_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 3);
const POD_C: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 4);
const POD_D: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 5);
const REMOTE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 2);

/// The Service port id of the tests' frontend.
const SERVICE_ID: u32 = 7;
/// Slots of the tests' Maglev tables (a prime, as the agent's are).
const TABLE_SIZE: u32 = 101;
/// Where the first table goes in the slab; a changed one goes after it.
const TABLE_OFFSET: u32 = 1_000;

/// A backend of the tests' frontend: (id, address, port, on this node).
type Member = (u32, Ipv6Addr, u16, bool);

fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Packet6 {
    Packet6::tcp(src, sport, dst, dport)
}

/// The ops that set the filter bit of `addr`:`port` under `seed`.
fn filter_bit(dp: &mut TestDatapath, seed: u64, addr: Ipv6Addr, port: u16, proto: u8) -> MapOp {
    let bit = filter_bit6(seed, ipv6_words(addr.octets()), port.to_be(), proto);
    let word = dp.datapath_mut().maps.filter.get(bit / 64).unwrap();
    MapOp::SetFilterWord(bit / 64, word | 1 << (bit % 64))
}

/// The Maglev table the tests write for `members`: every member's id,
/// spread over `TABLE_SIZE` slots (not Maglev's own permutation: the
/// programs only read the slots).
fn table(members: &[Member]) -> Vec<u32> {
    if members.is_empty() {
        return vec![];
    }
    (0..TABLE_SIZE as usize)
        .map(|i| members[(i * 7 + 3) % members.len()].0)
        .collect()
}

/// Writes (or rewrites) the frontend `VIP`:`port` of `proto` with
/// `members`, its table at `offset`, as the agent orders it: backends and
/// filter bits, then the table, then the entry that publishes it.
fn program(
    dp: &mut TestDatapath,
    port: u16,
    proto: u8,
    members: &[Member],
    offset: u32,
) -> Vec<u32> {
    program_as(dp, SERVICE_ID, port, proto, members, offset)
}

/// [`program`] for the Service port `id`.
fn program_as(
    dp: &mut TestDatapath,
    id: u32,
    port: u16,
    proto: u8,
    members: &[Member],
    offset: u32,
) -> Vec<u32> {
    program_with_affinity(dp, id, port, proto, members, offset, 0)
}

/// [`program_as`] with `sessionAffinity: ClientIP` of `affinity_timeout`
/// seconds (0: none).
fn program_with_affinity(
    dp: &mut TestDatapath,
    id: u32,
    port: u16,
    proto: u8,
    members: &[Member],
    offset: u32,
    affinity_timeout: u32,
) -> Vec<u32> {
    let mut ops = vec![filter_bit(dp, FILTER_SEED_FRONTEND6, VIP, port, proto)];
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
        let bit = filter_bit(dp, FILTER_SEED_BACKEND6, addr, target, proto);
        // Apply each bit at once: two backends may share a word.
        dp.datapath_mut().maps.apply(&[bit]).unwrap();
    }
    let slots = table(members);
    if !slots.is_empty() {
        ops.push(MapOp::SetTable {
            offset,
            slots: slots.clone(),
        });
    }
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
        table_size: u32::try_from(slots.len()).unwrap(),
        affinity_timeout,
        flags: 0,
    };
    ops.push(MapOp::SetService6(key, entry));
    dp.datapath_mut().maps.apply(&ops).unwrap();
    slots
}

/// A data path with the frontend `VIP`:`port`/`proto` of `members`.
fn setup(name: &str, port: u16, proto: u8, members: &[Member]) -> TestDatapath {
    let mut dp = TestDatapath::load(name, NODE).with_ipv6();
    program(&mut dp, port, proto, members, TABLE_OFFSET);
    dp
}

/// The member at `sport`'s slot of `slots`, for a TCP flow from `CLIENT`.
fn pick(slots: &[u32], members: &[Member], sport: u16) -> (Ipv6Addr, u16) {
    let id = slots[maglev_slot6(CLIENT, sport, VIP, 80, IPPROTO_TCP, TABLE_SIZE)];
    let &(_, addr, port, _) = members.iter().find(|m| m.0 == id).unwrap();
    (addr, port)
}

#[test]
fn tcp_syn_to_local_backend_is_dnated_exactly() {
    let dp = setup("syn6", 80, IPPROTO_TCP, &[(1, POD_A, 8080, true)]);
    let syn = tcp(CLIENT, 40000, VIP, 80).syn().build();
    let (ret, out) = dp.run_xdp(&syn);
    assert_eq!(ret, XDP_PASS);
    let expected = tcp(CLIENT, 40000, POD_A, 8080).syn().build();
    assert_eq!(
        out, expected,
        "only the destination changes, with a valid checksum"
    );
    assert!(checksums6_valid(&out));
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Translated), 1);
    assert_eq!(dp.verdict_of(Family::Ipv4, Verdict::Translated), 0);
    assert_eq!(dp.event_of(Family::Ipv6, Event::ConntrackCreated), 1);
    assert_eq!(dp.event_of(Family::Ipv6, Event::RevNatCreated), 1);
    let (_, out) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).ack().build());
    assert_eq!(out, tcp(CLIENT, 40000, POD_A, 8080).ack().build());
    let stats = dp.service_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0], (SERVICE_ID, stats[0].1));
    assert_eq!(stats[0].1.packets, 2, "per-service packets");
    assert_eq!(
        stats[0].1.bytes,
        (syn.len() + out.len()) as u64,
        "per-service bytes"
    );
}

#[test]
fn every_ingress_hook_translates_as_xdp_does() {
    for hook in [Hook::TcUplink, Hook::Pod] {
        let dp = setup("hooks6", 80, IPPROTO_TCP, &[(1, POD_A, 8080, true)]);
        let (ret, out) = hook.run(&dp, &tcp(CLIENT, 40000, VIP, 80).syn().build());
        assert_eq!(ret, TC_ACT_OK, "{hook:?}");
        assert_eq!(
            out,
            tcp(CLIENT, 40000, POD_A, 8080).syn().build(),
            "{hook:?}"
        );
        assert!(checksums6_valid(&out), "{hook:?}");
        // One conntrack for every hook: XDP continues the same flow.
        let (_, again) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).ack().build());
        assert_eq!(
            again,
            tcp(CLIENT, 40000, POD_A, 8080).ack().build(),
            "{hook:?}"
        );
        assert_eq!(dp.flows6().len(), 1, "{hook:?}");
    }
}

#[test]
fn established_flow_keeps_its_backend_when_the_table_changes() {
    let members = [
        (1, POD_A, 8080, true),
        (2, POD_B, 8080, true),
        (3, POD_C, 8080, true),
    ];
    let mut dp = setup("est6", 80, IPPROTO_TCP, &members);
    let mut chosen = Vec::new();
    for sport in 41000..41030 {
        let (ret, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, 80).syn().build());
        assert_eq!(ret, XDP_PASS);
        chosen.push((sport, dst6_of(&out)));
    }
    // POD_C leaves, POD_D comes: a new table elsewhere in the slab.
    let changed = [
        (1, POD_A, 8080, true),
        (2, POD_B, 8080, true),
        (4, POD_D, 8080, true),
    ];
    let slots = program(
        &mut dp,
        80,
        IPPROTO_TCP,
        &changed,
        TABLE_OFFSET + TABLE_SIZE,
    );
    dp.datapath_mut()
        .maps
        .apply(&[MapOp::ClearBackend6(3)])
        .unwrap();
    let mut moved = 0;
    for &(sport, backend) in &chosen {
        let (ret, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, 80).ack().build());
        assert_eq!(ret, XDP_PASS);
        if backend.0 == POD_C {
            // Its backend is gone: a mid-stream segment is picked up by the
            // new table (the backend sees the client's address).
            assert_eq!(dst6_of(&out), pick(&slots, &changed, sport), "flow {sport}");
            moved += 1;
        } else {
            assert_eq!(
                out,
                tcp(CLIENT, sport, backend.0, backend.1).ack().build(),
                "flow {sport} lost its backend"
            );
        }
    }
    assert!(moved > 0, "some flows were on the removed backend");
}

#[test]
fn new_flows_follow_the_maglev_table_written() {
    let members: Vec<Member> = (0..10u16)
        .map(|i| {
            let addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x10 + i);
            (u32::from(i) + 20, addr, 8080, true)
        })
        .collect();
    let mut dp = TestDatapath::load("maglev6", NODE).with_ipv6();
    let slots = program(&mut dp, 80, IPPROTO_TCP, &members, TABLE_OFFSET);
    assert_eq!(
        dp.table(TABLE_OFFSET, TABLE_SIZE),
        slots,
        "the slab holds the table"
    );
    let mut hits = BTreeMap::new();
    for sport in 20000..20500u16 {
        let (_, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, 80).syn().build());
        let expected = pick(&slots, &members, sport);
        assert_eq!(dst6_of(&out), expected, "flow {sport}");
        *hits.entry(expected.0).or_insert(0) += 1;
    }
    assert_eq!(hits.len(), 10, "500 flows reach all 10 backends: {hits:?}");
}

#[test]
fn udp_is_translated_and_a_zero_checksum_never() {
    let dp = setup("udp6", 53, IPPROTO_UDP, &[(1, POD_A, 5353, true)]);
    for hook in [Hook::Xdp, Hook::TcUplink] {
        let (ret, out) = hook.run(&dp, &Packet6::udp(CLIENT, 50000, VIP, 53).build());
        assert_eq!(ret, hook.passed(), "{hook:?}");
        assert_eq!(
            out,
            Packet6::udp(CLIENT, 50000, POD_A, 5353).build(),
            "{hook:?}"
        );
        assert!(checksums6_valid(&out), "{hook:?}");
    }
    let zero = Packet6::udp(CLIENT, 50001, VIP, 53)
        .zero_udp_checksum()
        .build();
    for hook in [Hook::Xdp, Hook::TcUplink, Hook::Pod] {
        assert_eq!(
            hook.run(&dp, &zero),
            (hook.passed(), zero.clone()),
            "{hook:?}"
        );
    }
    assert_eq!(dp.flows6().len(), 1, "the zero checksum started no flow");
}

/// A translated UDP checksum that comes to 0 is sent as 0xffff (0 means
/// "no checksum", which IPv6 forbids): found by trying payloads.
#[test]
fn a_udp_checksum_that_comes_to_zero_is_sent_as_ffff() {
    let dp = setup("udp6ffff", 53, IPPROTO_UDP, &[(1, POD_A, 5353, true)]);
    let datagram = |dst: Ipv6Addr, port: u16, word: u16| {
        Packet6::udp(CLIENT, 50000, dst, port).with_payload(&word.to_be_bytes())
    };
    // The checksum is the frame's last 2 bytes but the 2-byte payload.
    let word = (0..=u16::MAX)
        .find(|&w| {
            let f = datagram(POD_A, 5353, w).build();
            f[f.len() - 4..f.len() - 2] == [0xff, 0xff]
        })
        .expect("a payload whose translated checksum computes to 0");
    for hook in [Hook::Xdp, Hook::TcUplink] {
        let (_, out) = hook.run(&dp, &datagram(VIP, 53, word).build());
        assert_eq!(out, datagram(POD_A, 5353, word).build(), "{hook:?}");
        assert!(checksums6_valid(&out), "{hook:?}");
    }
}

/// A local pod's reply crosses the stack as pod -> client and gets the
/// Service's address at egress.
#[test]
fn reply_from_local_pod_crosses_the_stack_and_gets_the_service_address_at_egress() {
    let dp = setup("reply6", 80, IPPROTO_TCP, &[(1, POD_A, 8080, true)]);
    let (ret, _) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).syn().build());
    assert_eq!(ret, XDP_PASS);
    let synack = tcp(POD_A, 8080, CLIENT, 40000).synack().build();
    let (ret, out) = dp.run_tc(&synack);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(out, synack, "untouched where it leaves the pod");
    let (ret, out) = dp.run_xdp(&synack);
    assert_eq!((ret, &out), (XDP_PASS, &synack), "untouched on the uplink");
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Reversed), 0);
    let (ret, out) = dp.run_tc_egress(&synack);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(out, tcp(VIP, 80, CLIENT, 40000).synack().build());
    assert!(checksums6_valid(&out));
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Reversed), 1);
    let reply = Packet6::tcp(POD_A, 8080, CLIENT, 40000).build();
    let (_, out) = dp.run_tc_egress(&reply);
    assert_eq!(out, Packet6::tcp(VIP, 80, CLIENT, 40000).build());
    assert_eq!(dp.verdict_of(Family::Ipv4, Verdict::Reversed), 0);
}

/// A pod reaching a Service keeps its address (pod addresses are routable),
/// also to a backend on another node; the reply is translated on its way
/// into the pod.
#[test]
fn pod_to_cluster_ip_keeps_the_pod_address() {
    let dp = setup("tcfwd6", 80, IPPROTO_TCP, &[(1, REMOTE, 8080, false)]);
    let (ret, out) = dp.run_tc(&tcp(POD_A, 33000, VIP, 80).syn().build());
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(out, tcp(POD_A, 33000, REMOTE, 8080).syn().build());
    assert!(checksums6_valid(&out));
    let synack = tcp(REMOTE, 8080, POD_A, 33000).synack().build();
    let (ret, through) = dp.run_xdp(&synack);
    assert_eq!((ret, through), (XDP_PASS, synack.clone()));
    let (ret, reply) = dp.run_tc_egress(&synack);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(reply, tcp(VIP, 80, POD_A, 33000).synack().build());
}

/// Where IPv4 translates the source (a backend on another node from the
/// uplink, a pod reaching itself), a node without an IPv6 address of its
/// own (the tests' data path has none) cannot: the packet passes
/// untouched, counted, and no flow starts (`tests/snat6.rs` translates).
#[test]
fn flows_that_need_snat_pass_untouched_and_are_counted() {
    let dp = setup("snat6", 80, IPPROTO_TCP, &[(1, REMOTE, 8080, false)]);
    for hook in [Hook::Xdp, Hook::TcUplink] {
        let syn = tcp(CLIENT, 40000, VIP, 80).syn().build();
        assert_eq!(hook.run(&dp, &syn), (hook.passed(), syn), "{hook:?}");
    }
    assert_eq!(dp.event_of(Family::Ipv6, Event::Ipv6SnatUnserved), 2);
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Translated), 0);
    assert!(dp.flows6().is_empty());
    let dp = setup("hairpin6", 80, IPPROTO_TCP, &[(1, POD_A, 8080, true)]);
    let syn = tcp(POD_A, 33000, VIP, 80).syn().build();
    assert_eq!(dp.run_tc(&syn), (TC_ACT_OK, syn), "a pod reaching itself");
    assert_eq!(dp.event_of(Family::Ipv6, Event::Ipv6SnatUnserved), 1);
    assert!(dp.flows6().is_empty());
}

/// One client port to two frontends served by one backend: the second
/// flow's replies would arrive as the first's. While the first flow lives
/// the second is remapped to a pool port (`tests/snat6.rs`); once it is
/// gone, the second takes the reply tuple over, as IPv4's does.
#[test]
fn a_reply_tuple_is_taken_over_only_from_a_flow_that_is_gone() {
    let mut dp = setup("tuple6", 80, IPPROTO_TCP, &[(1, POD_A, 8080, true)]);
    program_as(
        &mut dp,
        8,
        81,
        IPPROTO_TCP,
        &[(2, POD_A, 8080, true)],
        TABLE_OFFSET + TABLE_SIZE,
    );
    let (_, out) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).syn().build());
    assert_eq!(out, tcp(CLIENT, 40000, POD_A, 8080).syn().build());
    let second = tcp(CLIENT, 40000, VIP, 81).syn().build();
    assert_eq!(dp.flows6().len(), 1);
    // The first flow's conntrack entry goes (as the collector removes a
    // gone flow's); its reverse entry is a claim in progress for 2 s.
    let first = dp.flows6()[0];
    dp.remove_flow6(&first);
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let (_, out) = dp.run_xdp(&second);
    assert_eq!(
        out,
        tcp(CLIENT, 40000, POD_A, 8080).syn().build(),
        "taken over"
    );
    let synack = tcp(POD_A, 8080, CLIENT, 40000).synack().build();
    let (_, reply) = dp.run_tc_egress(&synack);
    assert_eq!(
        reply,
        tcp(VIP, 81, CLIENT, 40000).synack().build(),
        "the new flow's"
    );
}

/// A frontend flagged with source ranges takes new connections only from
/// clients in one of them (`SOURCE_RANGES6`), as IPv4's does.
#[test]
fn a_frontend_with_source_ranges_admits_only_clients_in_them() {
    let mut dp = setup("ranges6", 80, IPPROTO_TCP, &[(1, POD_A, 8080, true)]);
    let key = ServiceKey6 {
        addr: ipv6_words(VIP.octets()),
        port: 80u16.to_be(),
        proto: IPPROTO_TCP,
        pad: 0,
    };
    let maps = &mut dp.datapath_mut().maps;
    let mut entry = maps.services6.get(&key, 0).unwrap();
    entry.flags |= SERVICE_F_SOURCE_RANGES;
    maps.apply(&[MapOp::SetService6(key, entry)]).unwrap();
    let syn = tcp(CLIENT, 40000, VIP, 80).syn().build();
    assert_eq!(
        dp.run_xdp(&syn),
        (XDP_DROP, syn.clone()),
        "no range admits it"
    );
    assert_eq!(dp.event_of(Family::Ipv6, Event::SourceRangeDenied), 1);
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Dropped), 1);
    // CLIENT's /48.
    let range = Key::new(
        SOURCE_RANGE_ID_BITS + 48,
        SourceRangeKey6 {
            service_id: SERVICE_ID.to_be(),
            client_addr: ipv6_words(Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0).octets()),
        },
    );
    dp.datapath_mut()
        .maps
        .source_ranges6
        .insert(&range, 1, 0)
        .unwrap();
    let (ret, out) = dp.run_xdp(&syn);
    assert_eq!(ret, XDP_PASS);
    assert_eq!(out, tcp(CLIENT, 40000, POD_A, 8080).syn().build());
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0x51, 0, 0, 0, 0, 0x10);
    let outside = tcp(other, 40000, VIP, 80).syn().build();
    assert_eq!(
        dp.run_xdp(&outside),
        (XDP_DROP, outside.clone()),
        "outside the /48"
    );
    assert_eq!(dp.event_of(Family::Ipv6, Event::SourceRangeDenied), 2);
}

#[test]
fn a_service_without_endpoints_drops_new_connections() {
    let dp = setup("empty6", 80, IPPROTO_TCP, &[]);
    let (ret, _) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).syn().build());
    assert_eq!(ret, XDP_DROP);
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Dropped), 1);
}

#[test]
fn the_programs_skip_lookups_only_where_the_filter_has_no_bit() {
    let mut dp = setup("filter6", 80, IPPROTO_TCP, &[(1, POD_A, 8080, true)]);
    let bit = filter_bit6(
        FILTER_SEED_FRONTEND6,
        ipv6_words(VIP.octets()),
        80u16.to_be(),
        IPPROTO_TCP,
    );
    let word = dp.datapath_mut().maps.filter.get(bit / 64).unwrap();
    dp.datapath_mut()
        .maps
        .apply(&[MapOp::SetFilterWord(bit / 64, word & !(1 << (bit % 64)))])
        .unwrap();
    let syn = tcp(CLIENT, 40000, VIP, 80).syn().build();
    assert_eq!(
        dp.run_xdp(&syn),
        (XDP_PASS, syn.clone()),
        "passed untouched"
    );
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Passed), 1);
    dp.datapath_mut()
        .maps
        .apply(&[MapOp::SetFilterWord(bit / 64, word)])
        .unwrap();
    let (_, out) = dp.run_xdp(&syn);
    assert_eq!(out, tcp(CLIENT, 40000, POD_A, 8080).syn().build());
}

#[test]
fn packets_that_are_not_ours_pass_unmodified() {
    let mut dp = setup("pass6", 80, IPPROTO_TCP, &[(1, POD_A, 8080, true)]);
    program(
        &mut dp,
        53,
        IPPROTO_UDP,
        &[(2, POD_A, 5353, true)],
        TABLE_OFFSET + TABLE_SIZE,
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("other port", tcp(CLIENT, 40000, VIP, 81).syn().build()),
        (
            "other address",
            tcp(
                CLIENT,
                40000,
                Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x99),
                80,
            )
            .syn()
            .build(),
        ),
        (
            "UDP to the TCP port",
            Packet6::udp(CLIENT, 40000, VIP, 80).build(),
        ),
        (
            "TCP to the UDP port",
            tcp(CLIENT, 40000, VIP, 53).syn().build(),
        ),
        (
            "a backend's packet that is no reply",
            tcp(POD_A, 8080, CLIENT, 40000).synack().build(),
        ),
    ];
    for (what, bytes) in cases {
        for hook in [Hook::Xdp, Hook::TcUplink, Hook::Pod, Hook::Egress] {
            let (ret, out) = hook.run(&dp, &bytes);
            assert_eq!(ret, hook.passed(), "{what} at {hook:?}");
            assert_eq!(out, bytes, "{what}: {hook:?} must not modify");
        }
    }
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Translated), 0);
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Reversed), 0);
    assert!(dp.flows6().is_empty());
}

#[test]
fn client_ip_affinity_sends_a_clients_new_flows_to_one_backend() {
    let members: Vec<Member> = (2..7u16)
        .map(|i| {
            let addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, i);
            (u32::from(i), addr, 8080, true)
        })
        .collect();
    let mut dp = TestDatapath::load("affinity6", NODE).with_ipv6();
    program_with_affinity(
        &mut dp,
        SERVICE_ID,
        80,
        IPPROTO_TCP,
        &members,
        TABLE_OFFSET,
        1,
    );
    let dst = |dp: &TestDatapath, client: Ipv6Addr, sport: u16| {
        dst6_of(&dp.run_xdp(&tcp(client, sport, VIP, 80).syn().build()).1).0
    };
    let first = dst(&dp, CLIENT, 45000);
    for sport in 45001..45030 {
        assert_eq!(
            dst(&dp, CLIENT, sport),
            first,
            "flow {sport} of the same client"
        );
    }
    let others: std::collections::BTreeSet<_> = (1..60)
        .map(|i| {
            dst(
                &dp,
                Ipv6Addr::new(0x2001, 0xdb8, 0x60, 0, 0, 0, 0, i),
                45000,
            )
        })
        .collect();
    assert!(others.len() >= 3, "other clients spread out: {others:?}");
    // Remembered in the pinned AFFINITY6 (carried by a hand-over).
    let pins = lb_userspace::datapath::pins_dir(dp.pin_dir());
    let data = aya::maps::MapData::from_pin(pins.join(lb_common::maps6::MAP_AFFINITY6))
        .expect("AFFINITY6 is pinned");
    let affinity: aya::maps::HashMap<_, lb_common::maps6::AffinityKey6, lb_common::AffinityEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).unwrap();
    assert_eq!(affinity.keys().count(), 60, "one entry per client");

    // The remembered backend stops taking new connections (unselected, out
    // of a new table, as the agent writes it): the client moves, then sticks.
    let gone = *members.iter().find(|m| m.1 == first).unwrap();
    let rest: Vec<Member> = members.iter().copied().filter(|m| m.0 != gone.0).collect();
    let slots = program_with_affinity(
        &mut dp,
        SERVICE_ID,
        80,
        IPPROTO_TCP,
        &rest,
        TABLE_OFFSET + TABLE_SIZE,
        1,
    );
    let unselected = Backend6 {
        addr: ipv6_words(gone.1.octets()),
        port: gone.2.to_be(),
        flags: BACKEND_F_ACTIVE | BACKEND_F_LOCAL,
        pad: 0,
        service_id: SERVICE_ID,
    };
    dp.datapath_mut()
        .maps
        .apply(&[MapOp::SetBackend6(gone.0, unselected)])
        .unwrap();
    let second = dst(&dp, CLIENT, 46000);
    assert_ne!(second, first);
    for sport in 46001..46020 {
        assert_eq!(
            dst(&dp, CLIENT, sport),
            second,
            "flow {sport} sticks to the new backend"
        );
    }
    // After the timeout (1 s) without packets the client is hashed again: a
    // flow whose Maglev pick is another backend goes there.
    let mut elsewhere = (47000..47200).filter(|&p| pick(&slots, &rest, p).0 != second);
    let (kept, expired) = (elsewhere.next().unwrap(), elsewhere.next().unwrap());
    // Packets of an established flow keep the client's affinity alive past
    // its timeout (1.5 s of them, one every 300 ms).
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (_, out) = dp.run_xdp(&tcp(CLIENT, 46001, VIP, 80).ack().build());
        assert_eq!(dst6_of(&out).0, second);
    }
    assert_eq!(
        dst(&dp, CLIENT, kept),
        second,
        "the established flow's packets refreshed the affinity"
    );
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(
        dst(&dp, CLIENT, expired),
        pick(&slots, &rest, expired).0,
        "affinity expired"
    );
    assert_eq!(
        dp.verdict_of(Family::Ipv4, Verdict::Translated),
        0,
        "IPv6 only"
    );
}

#[test]
fn affinity_is_per_service_port_and_kept_at_every_ingress_hook() {
    // Two Service ports of the same address: a client's affinity to one
    // says nothing of the other; the pod hook keeps it as XDP does.
    let members: Vec<Member> = (2..7u16)
        .map(|i| {
            let addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, i);
            (u32::from(i), addr, 8080, true)
        })
        .collect();
    let mut dp = TestDatapath::load("affinity6-ports", NODE).with_ipv6();
    program_with_affinity(&mut dp, 7, 80, IPPROTO_TCP, &members, TABLE_OFFSET, 60);
    let members_b: Vec<Member> = members.iter().map(|m| (m.0 + 10, m.1, 8081, m.3)).collect();
    program_with_affinity(
        &mut dp,
        8,
        81,
        IPPROTO_TCP,
        &members_b,
        TABLE_OFFSET + TABLE_SIZE,
        60,
    );
    for (n, hook) in (1u16..).zip([Hook::Xdp, Hook::TcUplink, Hook::Pod]) {
        let client = Ipv6Addr::new(0x2001, 0xdb8, 0x70, 0, 0, 0, 0, n);
        let to = |port: u16, sport: u16| {
            dst6_of(&hook.pass(&dp, &tcp(client, sport, VIP, port).syn().build()))
        };
        let first = to(80, 40000);
        assert_eq!(first.1, 8080);
        for sport in 40001..40020 {
            assert_eq!(to(80, sport), first, "{hook:?}: flow {sport}");
        }
        let on_b: std::collections::BTreeSet<_> = (0..20u16)
            .map(|i| {
                let other = Ipv6Addr::new(0x2001, 0xdb8, 0x71, n, 0, 0, 0, i + 1);
                dst6_of(&hook.pass(&dp, &tcp(other, 41000, VIP, 81).syn().build())).0
            })
            .collect();
        assert!(
            on_b.len() >= 3,
            "{hook:?}: the other port's clients spread out"
        );
        let b_first = to(81, 42000);
        for sport in 42001..42020 {
            assert_eq!(to(81, sport), b_first, "{hook:?}: port 81 flow {sport}");
        }
    }
}

/// An agent with `--ipv6 off` leaves IPv6's programs out of the prog-array
/// slots, emptying those an earlier agent (IPv6 on) filled in the pinned
/// arrays: its IPv4 entry point passes IPv6 frames untouched.
#[test]
fn an_agent_with_ipv6_off_empties_an_earlier_agents_ipv6_slots() {
    let pin_dir = unique_pin_dir("ipv6-off");
    let syn = tcp(CLIENT, 40000, VIP, 80).syn().build();
    let served = {
        // Pins kept on drop, for the next agent.
        let mut on = TestDatapath::load_at(&pin_dir, NODE, 1 << 16, false).with_ipv6();
        program(
            &mut on,
            80,
            IPPROTO_TCP,
            &[(1, POD_A, 8080, true)],
            TABLE_OFFSET,
        );
        on.run_xdp(&syn)
    };
    // IPv6 off (the test data path's default); removes the pins on drop.
    let off = TestDatapath::load_at(&pin_dir, NODE, 1 << 16, true);
    let prog: &Xdp = off.program(XDP_PROGRAM).try_into().unwrap();
    // `run`, not `run_xdp`: that refuses an IPv6 frame without IPv6's programs.
    let (ret, out) = run(prog, &syn);
    assert_eq!(served.0, XDP_PASS);
    assert_eq!(dst6_of(&served.1), (POD_A, 8080), "served with IPv6 on");
    assert_eq!(
        (ret, out),
        (XDP_PASS, syn),
        "passed untouched with IPv6 off"
    );
}
