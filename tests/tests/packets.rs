//! Packet tests: crafted frames through the real XDP and TC programs with
//! `BPF_PROG_TEST_RUN`, checking the exact bytes that come out. Needs root.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_common::{Verdict, SNAT_PORT_MAX, SNAT_PORT_MIN};
use lb_tests::{
    fixture::{self, apply, frontend, program},
    packet::{test_flows, Packet, TestDatapath, TC_ACT_OK, XDP_DROP, XDP_PASS, XDP_TX},
};
use lb_userspace::{
    desired::{DesiredFrontend, Frontend, Protocol},
    plan::Planner,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const POD_C: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);

/// A data path on `NODE` with the test flow settings and `state` applied.
fn setup(name: &str, state: &[(Frontend, DesiredFrontend)]) -> (TestDatapath, Planner) {
    fixture::setup(name, NODE, test_flows(), state)
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Packet {
    Packet::tcp(src, sport, dst, dport)
}

#[test]
fn tcp_syn_to_local_backend_is_dnated_exactly() {
    let (dp, _p) = setup(
        "syn",
        &[frontend(VIP, 80, Protocol::Tcp, &[(POD_A, 8080, true)])],
    );
    let syn = tcp(CLIENT, 40000, VIP, 80).syn();
    let (ret, out) = dp.run_xdp(&syn.build());
    assert_eq!(ret, XDP_PASS);
    let expected = tcp(CLIENT, 40000, POD_A, 8080).syn().build();
    assert_eq!(
        out, expected,
        "only the destination changes, with valid checksums"
    );
    assert!(lb_tests::packet::checksums_valid(&out));
    assert_eq!(dp.verdict(Verdict::Translated), 1);
    let (_, out) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).ack().build());
    let stats = dp.service_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].1.packets, 2, "per-service packets");
    assert_eq!(
        stats[0].1.bytes,
        (syn.build().len() + out.len()) as u64,
        "per-service bytes"
    );
}

/// Service ids beyond the per-CPU array count in the hash; a removed
/// service's counters end in both.
#[test]
fn service_counters_beyond_the_array_count_in_the_hash_and_end_with_the_service() {
    // An array of ids 0 and 1: service id 1 counts there, id 2 in the hash.
    let mut dp = TestDatapath::load_with_stats_array("statshash", NODE, 2);
    let mut planner = program(
        &mut dp,
        &[
            frontend(VIP, 80, Protocol::Tcp, &[(POD_A, 8080, true)]),
            frontend(VIP, 81, Protocol::Tcp, &[(POD_B, 8080, true)]),
        ],
    );
    for port in [80, 81] {
        for sport in [40000, 40001] {
            let (ret, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, port).syn().build());
            assert_eq!(ret, XDP_PASS);
            assert_ne!(lb_tests::packet::dst_of(&out).0, VIP, "translated");
        }
    }
    let packets: Vec<(u32, u64)> = dp
        .service_stats()
        .iter()
        .map(|(id, s)| (*id, s.packets))
        .collect();
    assert_eq!(packets, vec![(1, 2), (2, 2)], "two packets per service");
    let in_hash = |dp: &mut TestDatapath, id: u32| {
        dp.datapath_mut()
            .maps
            .service_stats
            .get(&id, 0)
            .map(|per_cpu| per_cpu.iter().map(|s| s.packets).sum::<u64>())
            .ok()
    };
    assert_eq!(in_hash(&mut dp, 1), None, "id 1 counts in the array");
    assert_eq!(in_hash(&mut dp, 2), Some(2), "id 2 counts in the hash");
    apply(&mut dp, &mut planner, &[]);
    assert!(dp.service_stats().is_empty());
    assert_eq!(
        in_hash(&mut dp, 2),
        None,
        "the hash entry ends with its service"
    );
    let slot = dp
        .datapath_mut()
        .maps
        .service_stats_array
        .get(&1, 0)
        .unwrap();
    assert!(
        slot.iter()
            .all(|s| *s == lb_common::ServiceStats::default()),
        "the array slot is zeroed with its service"
    );
}

#[test]
fn ip_options_are_skipped_and_translated() {
    let (dp, _p) = setup(
        "opts",
        &[frontend(VIP, 80, Protocol::Tcp, &[(POD_A, 8080, true)])],
    );
    let (ret, out) = dp.run_xdp(&tcp(CLIENT, 40001, VIP, 80).syn().with_ip_options().build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(
        out,
        tcp(CLIENT, 40001, POD_A, 8080)
            .syn()
            .with_ip_options()
            .build()
    );
}

#[test]
fn established_flow_keeps_its_backend_when_the_set_changes() {
    let backends = [
        (POD_A, 8080, true),
        (POD_B, 8080, true),
        (POD_C, 8080, true),
    ];
    let (mut dp, mut planner) = setup("est", &[frontend(VIP, 80, Protocol::Tcp, &backends)]);
    // Open 30 flows and remember where each went.
    let mut chosen = Vec::new();
    for sport in 41000..41030 {
        let (ret, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, 80).syn().build());
        assert_eq!(ret, XDP_PASS);
        chosen.push((sport, lb_tests::packet::dst_of(&out)));
    }
    // Replace POD_C by REMOTE and add two more backends: tables change.
    let changed = [
        (POD_A, 8080, true),
        (POD_B, 8080, true),
        (REMOTE, 8080, false),
        (Ipv4Addr::new(10, 244, 1, 5), 8080, true),
    ];
    apply(
        &mut dp,
        &mut planner,
        &[frontend(VIP, 80, Protocol::Tcp, &changed)],
    );
    let applied = planner.frontends().next().unwrap();
    let table = dp.table(applied.entry.table_offset, applied.entry.table_size);
    let pick = |sport: u16| {
        let id = table
            [lb_tests::packet::maglev_slot(CLIENT, sport, VIP, 80, 6, applied.entry.table_size)];
        *applied
            .backends
            .iter()
            .find(|(_, b)| b.id == id)
            .unwrap()
            .0
            .ip()
    };
    let mut moved = 0;
    for &(sport, backend) in &chosen {
        let (ret, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, 80).ack().build());
        if backend.0 == POD_C {
            // Its backend is gone: a mid-stream segment is picked up by the
            // new Maglev pick if that backend sees the client's address (it
            // answers with an RST), and dropped if it would need a SNAT port,
            // which only a SYN may claim.
            if pick(sport) == REMOTE {
                assert_eq!(ret, XDP_DROP, "flow {sport}: no SNAT port mid-stream");
            } else {
                assert_eq!(ret, XDP_PASS);
                assert_eq!(
                    lb_tests::packet::dst_of(&out).0,
                    pick(sport),
                    "flow {sport}"
                );
            }
            moved += 1;
        } else {
            assert_eq!(ret, XDP_PASS);
            assert_eq!(
                lb_tests::packet::dst_of(&out),
                backend,
                "flow {sport} lost its backend"
            );
            assert_eq!(out, tcp(CLIENT, sport, backend.0, backend.1).ack().build());
        }
    }
    assert!(moved > 0, "some flows were on the removed backend");
}

#[test]
fn a_draining_backend_keeps_its_flows_and_gets_no_new_ones() {
    let both = [(POD_A, 8080, true), (POD_B, 8080, true)];
    let (mut dp, mut planner) = setup("drain", &[frontend(VIP, 80, Protocol::Tcp, &both)]);
    let mut on_b = Vec::new();
    for sport in 42000..42040 {
        let (_, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, 80).syn().build());
        if lb_tests::packet::dst_of(&out).0 == POD_B {
            on_b.push(sport);
        }
    }
    assert!(!on_b.is_empty(), "some of 40 flows went to POD_B");
    // POD_B terminates: listed but not selected.
    let (fe, mut desired) = frontend(VIP, 80, Protocol::Tcp, &both);
    let unselected = desired.backends.values_mut().nth(1).unwrap();
    unselected.for_cluster = false;
    unselected.for_local = false;
    apply(&mut dp, &mut planner, &[(fe, desired.clone())]);
    for &sport in &on_b {
        let (_, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, 80).ack().build());
        assert_eq!(
            lb_tests::packet::dst_of(&out),
            (POD_B, 8080),
            "established flow {sport} stays"
        );
    }
    for sport in 43000..43040 {
        let (_, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, 80).syn().build());
        assert_eq!(
            lb_tests::packet::dst_of(&out).0,
            POD_A,
            "new flow {sport} avoids the draining backend"
        );
    }
    // Even with no backend left for new connections, established ones continue.
    let unselected = desired.backends.values_mut().next().unwrap();
    unselected.for_cluster = false;
    unselected.for_local = false;
    apply(&mut dp, &mut planner, &[(fe, desired)]);
    let (ret, out) = dp.run_xdp(&tcp(CLIENT, on_b[0], VIP, 80).ack().build());
    assert_eq!(
        (ret, lb_tests::packet::dst_of(&out)),
        (XDP_PASS, (POD_B, 8080))
    );
    let (ret, _) = dp.run_xdp(&tcp(CLIENT, 44000, VIP, 80).syn().build());
    assert_eq!(ret, XDP_DROP, "a new flow has nowhere to go");
}

#[test]
fn client_ip_affinity_sends_a_clients_new_flows_to_one_backend() {
    let backends: Vec<_> = (2..7)
        .map(|i| (Ipv4Addr::new(10, 244, 1, i), 8080, true))
        .collect();
    let (fe, mut desired) = frontend(VIP, 80, Protocol::Tcp, &backends);
    desired.affinity_timeout = 1;
    let (mut dp, mut planner) = setup("affinity", &[(fe, desired.clone())]);
    let dst = |dp: &TestDatapath, client: Ipv4Addr, sport: u16| {
        lb_tests::packet::dst_of(&dp.run_xdp(&tcp(client, sport, VIP, 80).syn().build()).1).0
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
        .map(|i| dst(&dp, Ipv4Addr::new(192, 168, 60, i), 45000))
        .collect();
    assert!(others.len() >= 3, "other clients spread out: {others:?}");

    // The remembered backend stops taking new connections: the client moves, then sticks.
    let gone = SocketAddrV4::new(first, 8080);
    let unselected = desired.backends.get_mut(&gone).unwrap();
    unselected.for_cluster = false;
    unselected.for_local = false;
    apply(&mut dp, &mut planner, &[(fe, desired)]);
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
    let applied = planner.frontends().next().unwrap();
    let table = dp.table(applied.entry.table_offset, applied.entry.table_size);
    let maglev_pick = |sport: u16| {
        let id = table
            [lb_tests::packet::maglev_slot(CLIENT, sport, VIP, 80, 6, applied.entry.table_size)];
        *applied
            .backends
            .iter()
            .find(|(_, b)| b.id == id)
            .unwrap()
            .0
            .ip()
    };
    let mut elsewhere = (47000..47200).filter(|&p| maglev_pick(p) != second);
    let (kept, expired) = (elsewhere.next().unwrap(), elsewhere.next().unwrap());
    // Packets of an established flow keep the client's affinity alive past
    // its timeout (1.5 s of them, one every 300 ms).
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (_, out) = dp.run_xdp(&tcp(CLIENT, 46001, VIP, 80).ack().build());
        assert_eq!(lb_tests::packet::dst_of(&out).0, second);
    }
    assert_eq!(
        dst(&dp, CLIENT, kept),
        second,
        "the established flow's packets refreshed the affinity"
    );
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(
        dst(&dp, CLIENT, expired),
        maglev_pick(expired),
        "affinity expired"
    );
}

#[test]
fn new_flows_follow_the_maglev_table_the_agent_wrote() {
    let backends: Vec<_> = (2..12)
        .map(|i| (Ipv4Addr::new(10, 244, 1, i), 8080, true))
        .collect();
    let (dp, planner) = setup("maglev", &[frontend(VIP, 80, Protocol::Tcp, &backends)]);
    let applied = planner.frontends().next().expect("one frontend");
    let table = dp.table(applied.entry.table_offset, applied.entry.table_size);
    let mut hits = BTreeMap::new();
    for sport in 20000..20500u16 {
        let (_, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, 80).syn().build());
        let id = table
            [lb_tests::packet::maglev_slot(CLIENT, sport, VIP, 80, 6, applied.entry.table_size)];
        let expected = applied
            .backends
            .iter()
            .find(|(_, b)| b.id == id)
            .expect("id in table")
            .0;
        assert_eq!(
            lb_tests::packet::dst_of(&out),
            (*expected.ip(), expected.port())
        );
        *hits.entry(*expected.ip()).or_insert(0) += 1;
    }
    assert_eq!(hits.len(), 10, "500 flows reach all 10 backends: {hits:?}");
}

#[test]
fn udp_is_translated_and_zero_checksum_stays_zero() {
    let (dp, _p) = setup(
        "udp",
        &[frontend(VIP, 53, Protocol::Udp, &[(POD_A, 5353, true)])],
    );
    let (ret, out) = dp.run_xdp(&Packet::udp(CLIENT, 50000, VIP, 53).build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(out, Packet::udp(CLIENT, 50000, POD_A, 5353).build());
    assert!(lb_tests::packet::checksums_valid(&out));

    let (ret, out) = dp.run_xdp(
        &Packet::udp(CLIENT, 50001, VIP, 53)
            .zero_udp_checksum()
            .build(),
    );
    assert_eq!(ret, XDP_PASS);
    assert_eq!(
        out,
        Packet::udp(CLIENT, 50001, POD_A, 5353)
            .zero_udp_checksum()
            .build()
    );
}

/// A local pod's reply crosses the stack as pod -> client (netfilter sees
/// the connection it saw going in) and gets the Service's address at egress.
#[test]
fn reply_from_local_pod_crosses_the_stack_and_gets_the_service_address_at_egress() {
    let (dp, _p) = setup(
        "reply",
        &[frontend(VIP, 80, Protocol::Tcp, &[(POD_A, 8080, true)])],
    );
    let (ret, _) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).syn().build());
    assert_eq!(ret, XDP_PASS);
    let synack = tcp(POD_A, 8080, CLIENT, 40000).synack().build();
    let (ret, out) = dp.run_tc(&synack);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(out, synack, "untouched where it leaves the pod");
    assert_eq!(dp.verdict(Verdict::Reversed), 0);
    let (ret, out) = dp.run_tc_egress(&synack);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(out, tcp(VIP, 80, CLIENT, 40000).synack().build());
    assert!(lb_tests::packet::checksums_valid(&out));
    assert_eq!(dp.verdict(Verdict::Reversed), 1);
}

#[test]
fn remote_backend_is_snated_and_the_reply_is_reversed_twice() {
    let (dp, _p) = setup(
        "snat",
        &[frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)])],
    );
    let (ret, out) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).syn().build());
    assert_eq!(ret, XDP_PASS);
    let (src, sport) = lb_tests::packet::src_of(&out);
    assert_eq!(src, NODE, "source becomes the node address");
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&sport),
        "SNAT port {sport} in range"
    );
    assert_eq!(out, tcp(NODE, sport, REMOTE, 8080).syn().build());

    // The same flow keeps its SNAT port.
    let (_, again) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).ack().build());
    assert_eq!(again, tcp(NODE, sport, REMOTE, 8080).ack().build());

    let (ret, reply) = dp.run_xdp(&tcp(REMOTE, 8080, NODE, sport).synack().build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(reply, tcp(VIP, 80, CLIENT, 40000).synack().build());
}

#[test]
fn the_uplink_tc_program_translates_as_xdp_does() {
    let (dp, _p) = setup(
        "tcup",
        &[frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)])],
    );
    let (ret, out) = dp.run_tc_uplink(&tcp(CLIENT, 40000, VIP, 80).syn().build());
    assert_eq!(ret, TC_ACT_OK);
    let (src, sport) = lb_tests::packet::src_of(&out);
    assert_eq!(
        src, NODE,
        "a client outside the node is SNATed to a remote backend"
    );
    assert_eq!(out, tcp(NODE, sport, REMOTE, 8080).syn().build());
    assert!(lb_tests::packet::checksums_valid(&out));
    // One conntrack for both uplink hooks: XDP continues the same flow.
    let (_, again) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).ack().build());
    assert_eq!(again, tcp(NODE, sport, REMOTE, 8080).ack().build());
    let (ret, reply) = dp.run_tc_uplink(&tcp(REMOTE, 8080, NODE, sport).synack().build());
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(reply, tcp(VIP, 80, CLIENT, 40000).synack().build());
    assert!(lb_tests::packet::checksums_valid(&reply));
    // The pod program keeps the source of the same kind of packet.
    let (_, from_pod) = dp.run_tc(&tcp(CLIENT, 40001, VIP, 80).syn().build());
    assert_eq!(from_pod, tcp(CLIENT, 40001, REMOTE, 8080).syn().build());
}

#[test]
fn pod_to_cluster_ip_in_tc_keeps_the_pod_address() {
    let (dp, _p) = setup(
        "tcfwd",
        &[frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)])],
    );
    let (ret, out) = dp.run_tc(&tcp(POD_A, 33000, VIP, 80).syn().build());
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(out, tcp(POD_A, 33000, REMOTE, 8080).syn().build());
    // The reply arrives on the uplink, crosses the stack as it is, and is
    // translated on its way into the pod.
    let synack = tcp(REMOTE, 8080, POD_A, 33000).synack().build();
    let (ret, through) = dp.run_xdp(&synack);
    assert_eq!(ret, XDP_PASS);
    assert_eq!(through, synack);
    let (ret, reply) = dp.run_tc_egress(&synack);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(reply, tcp(VIP, 80, POD_A, 33000).synack().build());
}

#[test]
fn pod_reaching_itself_through_the_service_is_snated() {
    let (dp, _p) = setup(
        "hairpin",
        &[frontend(VIP, 80, Protocol::Tcp, &[(POD_A, 8080, true)])],
    );
    let (ret, out) = dp.run_tc(&tcp(POD_A, 33000, VIP, 80).syn().build());
    assert_eq!(ret, TC_ACT_OK);
    let (src, sport) = lb_tests::packet::src_of(&out);
    assert_eq!(src, NODE);
    assert_eq!(out, tcp(NODE, sport, POD_A, 8080).syn().build());
    let (_, reply) = dp.run_tc(&tcp(POD_A, 8080, NODE, sport).synack().build());
    assert_eq!(reply, tcp(VIP, 80, POD_A, 33000).synack().build());
}

/// The filter bit of a frontend (`FILTER_SEED_FRONTEND`) or backend, as (word, mask).
fn filter_word(seed: u64, addr: Ipv4Addr, port: u16) -> (u32, u64) {
    let bit = lb_common::filter_bit(
        seed,
        u32::from_ne_bytes(addr.octets()),
        port.to_be(),
        lb_common::IPPROTO_TCP,
    );
    (bit / 64, 1 << (bit % 64))
}

#[test]
fn the_programs_skip_lookups_only_where_the_filter_has_no_bit() {
    let (mut dp, mut planner) = setup(
        "filter",
        &[frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)])],
    );
    let maps = &dp.datapath_mut().maps;
    let (fe_word, fe_mask) = filter_word(lb_common::FILTER_SEED_FRONTEND, VIP, 80);
    let (be_word, be_mask) = filter_word(lb_common::FILTER_SEED_BACKEND, REMOTE, 8080);
    let fe_bits = maps.filter.get(fe_word).unwrap();
    let be_bits = maps.filter.get(be_word).unwrap();
    assert_ne!(fe_bits & fe_mask, 0, "the frontend's bit is set");
    assert_ne!(be_bits & be_mask, 0, "the backend's bit is set");
    let words = maps.filter.words();
    assert_eq!(
        words.iter().map(|w| w.count_ones()).sum::<u32>(),
        2,
        "nothing else"
    );
    assert_eq!(words[fe_word as usize], fe_bits, "the mapping is the map");

    let (_, out) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).syn().build());
    let (node, sport) = lb_tests::packet::src_of(&out);
    let reply = tcp(REMOTE, 8080, node, sport).synack().build();

    // Without the frontend's bit the programs never look the frontend up.
    dp.datapath_mut()
        .maps
        .filter
        .set(fe_word, fe_bits & !fe_mask)
        .unwrap();
    let syn = tcp(CLIENT, 40001, VIP, 80).syn().build();
    assert_eq!(
        dp.run_xdp(&syn),
        (XDP_PASS, syn.clone()),
        "passed untouched"
    );
    assert_eq!(dp.verdict(Verdict::Passed), 1);
    // Without the backend's bit, neither the reply.
    dp.datapath_mut()
        .maps
        .filter
        .set(be_word, be_bits & !be_mask)
        .unwrap();
    assert_eq!(dp.run_xdp(&reply), (XDP_PASS, reply.clone()));
    assert_eq!(dp.verdict(Verdict::Passed), 2);

    // The next plan touching the frontend sets both bits again.
    apply(&mut dp, &mut planner, &[]);
    apply(
        &mut dp,
        &mut planner,
        &[frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)])],
    );
    let (ret, out) = dp.run_xdp(&syn);
    assert_eq!(ret, XDP_PASS);
    assert_eq!(lb_tests::packet::dst_of(&out), (REMOTE, 8080), "translated");
    let (_, out) = dp.run_xdp(&reply);
    assert_eq!(out, tcp(VIP, 80, CLIENT, 40000).synack().build());

    // Removing the frontend clears every bit it needed.
    apply(&mut dp, &mut planner, &[]);
    let words = dp.datapath_mut().maps.filter.words();
    assert!(words.iter().all(|w| *w == 0), "an empty filter");
}

/// The refusal's bytes and every case are in `tests/reject.rs`.
#[test]
fn service_without_endpoints_refuses_a_syn_and_drops_the_rest() {
    let (dp, _p) = setup("empty", &[frontend(VIP, 80, Protocol::Tcp, &[])]);
    let (ret, _) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).syn().build());
    assert_eq!(ret, XDP_TX, "the SYN is answered (port unreachable)");
    let (ret, _) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).build());
    assert_eq!(ret, XDP_DROP, "a segment without SYN drops");
    assert_eq!(dp.verdict(Verdict::Dropped), 2);
}

#[test]
fn packets_that_are_not_ours_pass_unmodified() {
    let (dp, _p) = setup(
        "pass",
        &[
            frontend(VIP, 80, Protocol::Tcp, &[(POD_A, 8080, true)]),
            frontend(VIP, 53, Protocol::Udp, &[(POD_A, 5353, true)]),
        ],
    );
    // The IPv6 frame is passed by IPv6's program, not by an empty slot.
    let dp = dp.with_ipv6();
    let service_syn = tcp(CLIENT, 40000, VIP, 80).syn().build();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("other port", tcp(CLIENT, 40000, VIP, 81).syn().build()),
        (
            "other address",
            tcp(CLIENT, 40000, Ipv4Addr::new(10, 96, 0, 99), 80)
                .syn()
                .build(),
        ),
        (
            "UDP to the TCP port",
            Packet::udp(CLIENT, 40000, VIP, 80).build(),
        ),
        (
            "TCP to the UDP port",
            tcp(CLIENT, 40000, VIP, 53).syn().build(),
        ),
        ("ICMP", lb_tests::packet::icmp_echo(CLIENT, VIP)),
        ("IPv6", lb_tests::packet::ipv6_tcp()),
        ("ARP", lb_tests::packet::arp()),
        // A first fragment to a Service is translated (tests/fragments.rs);
        // a later one whose first was never seen is not ours.
        (
            "later fragment",
            tcp(CLIENT, 40000, VIP, 80)
                .syn()
                .fragment(false, 185)
                .build(),
        ),
        (
            "IHL below 5",
            lb_tests::packet::with_byte(&service_syn, 14, 0x44),
        ),
        (
            "IP version 6 in an IPv4 frame",
            lb_tests::packet::with_byte(&service_syn, 14, 0x65),
        ),
        (
            "total length beyond the frame",
            lb_tests::packet::with_u16(&service_syn, 16, 1500),
        ),
        (
            "total length below the headers",
            lb_tests::packet::with_u16(&service_syn, 16, 30),
        ),
        (
            "TCP data offset below 5",
            lb_tests::packet::with_byte(&service_syn, 14 + 20 + 12, 0x20),
        ),
    ];
    for cut in [15, 20, 33, 34, 40, 53] {
        cases.push(("truncated", service_syn[..cut].to_vec()));
    }
    for (what, bytes) in cases {
        let (ret, out) = dp.run_xdp(&bytes);
        assert_eq!(ret, XDP_PASS, "{what}: XDP verdict");
        assert_eq!(out, bytes, "{what}: XDP must not modify");
        // The kernel's test run builds an skb only from a frame holding a
        // whole IPv4 header (it pulls one), so TC sees the longer cases.
        if bytes.len() >= 34 {
            let (ret, out) = dp.run_tc(&bytes);
            assert_eq!(ret, TC_ACT_OK, "{what}: TC verdict");
            assert_eq!(out, bytes, "{what}: TC must not modify");
        }
    }
    assert_eq!(dp.verdict(Verdict::Translated), 0);
}

/// Captures `log` records (the kernel programs' aya-log output lands here).
struct Captured(std::sync::Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }

    fn flush(&self) {}
}

#[test]
fn an_untranslatable_packet_is_dropped_and_logged_at_debug_level() {
    static CAPTURED: Captured = Captured(std::sync::Mutex::new(Vec::new()));
    log::set_logger(&CAPTURED).expect("the only logger of this test binary");
    log::set_max_level(log::LevelFilter::Trace);
    // No node address: a remote backend cannot be reached through SNAT.
    let mut dp = TestDatapath::load("nosnat", Ipv4Addr::UNSPECIFIED);
    program(
        &mut dp,
        &[frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)])],
    );
    let (ret, _) = dp.run_xdp(&tcp(CLIENT, 40000, VIP, 80).syn().build());
    assert_eq!(ret, XDP_DROP);
    assert_eq!(dp.verdict(Verdict::Error), 1);
    dp.flush_kernel_logs();
    let logs = CAPTURED.0.lock().unwrap().clone();
    assert!(
        logs.iter().any(|l| l.starts_with("DEBUG")
            && l.contains("192.168.50.10:40000")
            && l.contains("dropped")),
        "{logs:?}"
    );
}

#[test]
fn the_slab_is_mapped_a_window_at_a_time_and_the_kernel_keeps_every_table() {
    use lb_userspace::datapath::maps::SLAB_WINDOW;
    // 4 MiB of slab: tables far apart are written through different windows.
    let slots = 1 << 20;
    let mut dp = TestDatapath::load_with("slab-windows", NODE, slots);
    let placed = [
        (0, 1_021),
        (1_021, 1_021),
        (300_001, 1_021),
        (slots - 131_071, 131_071),
        (600_000, 4_093),
    ];
    let tables: Vec<(u32, Vec<u32>)> = placed
        .iter()
        .zip(1u32..)
        .map(|(&(offset, len), k)| (offset, (0..len).map(|i| i * 7 + k).collect()))
        .collect();
    let slab = &mut dp.datapath_mut().maps.slab;
    assert_eq!(slab.mapped_bytes(), 0, "nothing mapped before a write");
    // One window of SLAB_WINDOW bytes from the first page written (the
    // second table fits the first's window), cut at the slab's end.
    let mapped = [
        SLAB_WINDOW,
        SLAB_WINDOW,
        SLAB_WINDOW,
        (slots as usize - (slots as usize - 131_071) / 1024 * 1024) * 4,
        SLAB_WINDOW,
    ];
    for ((offset, table), want) in tables.iter().zip(mapped) {
        slab.write(*offset, table).unwrap();
        assert_eq!(slab.mapped_bytes(), want, "after the table at {offset}");
    }
    // Every table, those whose window is long unmapped too, is in the kernel's map.
    for (offset, table) in &tables {
        for (i, want) in (0u32..).zip(table).step_by(89) {
            assert_eq!(slab.get(offset + i).unwrap(), *want, "slot {}", offset + i);
        }
        let len = u32::try_from(table.len()).unwrap();
        assert_eq!(&slab.read(*offset, len).unwrap(), table);
    }
    assert!(slab.write(slots - 10, &[1; 11]).is_err(), "past the end");
    assert!(slab.read(slots - 10, 11).is_err(), "past the end");
}
