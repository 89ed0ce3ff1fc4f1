//! An external frontend of a Service with `externalTrafficPolicy: Local`
//! through the real programs (`BPF_PROG_TEST_RUN`): clients from outside
//! the node (XDP or TC on the uplink) reach only this node's endpoints,
//! while pods reach every node's, as kube-proxy sends in-cluster traffic to
//! such a frontend to the cluster-wide endpoints. On a node without a local
//! endpoint, outside clients are dropped and pods still served; session
//! affinity holds within each view. The frontends of one Service port share
//! its backend entries and a client's affinity. Exact bytes. Needs root.

use std::{collections::BTreeSet, net::Ipv4Addr};

use lb_common::Verdict;
use lb_tests::{
    fixture::{apply, frontend, program},
    packet::{dst_of, src_of, Hook, Packet, TestDatapath},
};
use lb_userspace::desired::{DesiredFrontend, Frontend, Protocol, TrafficPolicy};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
/// The Service's external IP.
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 200);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const REMOTE_2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);
/// New connections per view and case.
const FLOWS: u16 = 64;

/// The external frontend under `externalTrafficPolicy: Local`: every
/// endpoint listed (`local` on this node), selected for outside clients
/// when local, for pods always.
fn local_policy(endpoints: &[(Ipv4Addr, bool)], affinity: u32) -> (Frontend, DesiredFrontend) {
    let backends: Vec<(Ipv4Addr, u16, bool)> = endpoints
        .iter()
        .map(|&(ip, local)| (ip, 8080, local))
        .collect();
    let (fe, mut want) = frontend(EXTERNAL_IP, 80, Protocol::Tcp, &backends);
    want.policy = TrafficPolicy::Local;
    for info in want.backends.values_mut() {
        info.for_local = info.local;
    }
    want.affinity_timeout = affinity;
    (fe, want)
}

/// The backends `FLOWS` new connections from `client` at `hook` reach (each
/// also checked: the client's address and port kept), and the drops.
fn spread(
    dp: &TestDatapath,
    hook: Hook,
    client: Ipv4Addr,
    first_port: u16,
) -> (BTreeSet<Ipv4Addr>, u16) {
    let (mut reached, mut dropped) = (BTreeSet::new(), 0);
    for sport in first_port..first_port + FLOWS {
        let frame = Packet::tcp(client, sport, EXTERNAL_IP, 80).syn().build();
        let (ret, out) = hook.run(dp, &frame);
        if ret == hook.dropped() {
            assert_eq!(out, frame, "{hook:?}: dropped untouched");
            dropped += 1;
            continue;
        }
        assert_eq!(ret, hook.passed(), "{hook:?}");
        let (backend, port) = dst_of(&out);
        assert_eq!(port, 8080);
        if hook == Hook::Pod || backend == LOCAL {
            assert_eq!(
                out,
                Packet::tcp(client, sport, backend, 8080).syn().build(),
                "{hook:?}: the client's address kept"
            );
        } else {
            assert_eq!(
                src_of(&out).0,
                NODE,
                "{hook:?}: a remote backend gets the node's address"
            );
        }
        reached.insert(backend);
    }
    (reached, dropped)
}

#[test]
fn outside_clients_reach_local_endpoints_and_pods_every_node_s() {
    let mut dp = TestDatapath::load("pod-view", NODE);
    let mut planner = program(
        &mut dp,
        &[local_policy(
            &[(LOCAL, true), (REMOTE, false), (REMOTE_2, false)],
            0,
        )],
    );
    for hook in Hook::UPLINKS {
        assert_eq!(
            spread(&dp, hook, CLIENT, 40_000),
            ([LOCAL].into(), 0),
            "{hook:?}"
        );
    }
    assert_eq!(
        spread(&dp, Hook::Pod, POD, 41_000),
        ([LOCAL, REMOTE, REMOTE_2].into(), 0),
        "pods are spread over every node's endpoints"
    );

    // No local endpoint: outside clients are dropped, pods still served.
    apply(
        &mut dp,
        &mut planner,
        &[local_policy(&[(REMOTE, false), (REMOTE_2, false)], 0)],
    );
    let dropped = dp.verdict(Verdict::Dropped);
    for hook in Hook::UPLINKS {
        assert_eq!(
            spread(&dp, hook, CLIENT, 42_000),
            (BTreeSet::new(), FLOWS),
            "{hook:?}"
        );
    }
    assert_eq!(dp.verdict(Verdict::Dropped), dropped + 2 * u64::from(FLOWS));
    assert_eq!(
        spread(&dp, Hook::Pod, POD, 43_000),
        ([REMOTE, REMOTE_2].into(), 0)
    );

    // Every endpoint local: one table serves both.
    apply(&mut dp, &mut planner, &[local_policy(&[(LOCAL, true)], 0)]);
    assert_eq!(spread(&dp, Hook::Xdp, CLIENT, 44_000), ([LOCAL].into(), 0));
    assert_eq!(spread(&dp, Hook::Pod, POD, 44_000), ([LOCAL].into(), 0));
}

#[test]
fn affinity_holds_within_each_view() {
    let mut dp = TestDatapath::load("pod-view-affinity", NODE);
    program(
        &mut dp,
        &[local_policy(
            &[(LOCAL, true), (REMOTE, false), (REMOTE_2, false)],
            600,
        )],
    );
    let (pods, _) = spread(&dp, Hook::Pod, POD, 45_000);
    assert_eq!(pods.len(), 1, "a pod sticks to one backend: {pods:?}");
    let (outside, _) = spread(&dp, Hook::Xdp, CLIENT, 45_000);
    assert_eq!(outside, [LOCAL].into());
}

/// The web Service port's cluster IP.
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// The backend a SYN from `client`:`sport` to `dst`:80 at `hook` reaches.
fn reached(dp: &TestDatapath, hook: Hook, client: Ipv4Addr, sport: u16, dst: Ipv4Addr) -> Ipv4Addr {
    let (ret, out) = hook.run(dp, &Packet::tcp(client, sport, dst, 80).syn().build());
    assert_eq!(ret, hook.passed(), "{hook:?} to {dst}");
    dst_of(&out).0
}

#[test]
fn a_service_port_s_frontends_share_its_backends_and_a_client_s_affinity() {
    let endpoints = [(LOCAL, true), (REMOTE, false), (REMOTE_2, false)];
    let (external, mut at_external) = local_policy(&endpoints, 600);
    let (mut cluster_ip, mut at_cluster_ip) = local_policy(&endpoints, 600);
    cluster_ip.addr = CLUSTER_IP;
    at_cluster_ip.policy = TrafficPolicy::Cluster;
    at_cluster_ip.pods_policy = TrafficPolicy::Cluster;
    for want in [&mut at_external, &mut at_cluster_ip] {
        want.service.name = "web".into();
        want.port_name = "http".into();
    }
    let mut dp = TestDatapath::load("pod-view-shared", NODE);
    let planner = program(
        &mut dp,
        &[(external, at_external), (cluster_ip, at_cluster_ip)],
    );
    let ports: Vec<_> = planner.ports().collect();
    assert_eq!(ports.len(), 1, "one Service port");
    let applied = dp.datapath_mut().maps.applied_frontends().unwrap();
    let ids: BTreeSet<u32> = applied.iter().map(|f| f.entry.id).collect();
    assert_eq!(ids.len(), 1, "both frontends carry the port's id");
    let backend_ids: BTreeSet<u32> = applied
        .iter()
        .flat_map(|f| f.backends.values().map(|b| b.id))
        .collect();
    assert_eq!(backend_ids.len(), 3, "one backend entry per endpoint");

    // Outside clients: the cluster IP's Cluster table, the external IP's Local one.
    let to_cluster_ip: BTreeSet<Ipv4Addr> = (0..FLOWS)
        .map(|k| {
            reached(
                &dp,
                Hook::Xdp,
                Ipv4Addr::new(192, 168, 60, u8::try_from(k).unwrap()),
                46_000,
                CLUSTER_IP,
            )
        })
        .collect();
    assert_eq!(to_cluster_ip, [LOCAL, REMOTE, REMOTE_2].into());
    assert_eq!(spread(&dp, Hook::Xdp, CLIENT, 46_000), ([LOCAL].into(), 0));

    // A pod's affinity spans the port's frontends (kube-proxy's spans its
    // chains): its flows to the external IP follow its first to the cluster IP.
    let first = reached(&dp, Hook::Pod, POD, 47_000, CLUSTER_IP);
    for sport in 47_001..47_020 {
        assert_eq!(reached(&dp, Hook::Pod, POD, sport, EXTERNAL_IP), first);
        assert_eq!(reached(&dp, Hook::Pod, POD, sport + 100, CLUSTER_IP), first);
    }
    // An outside client's too, within what the external IP's Local policy
    // allows: a remote backend it stuck to through the cluster IP is not
    // one the external IP may give it.
    let outside = (0..FLOWS)
        .map(|k| Ipv4Addr::new(192, 168, 61, u8::try_from(k).unwrap()))
        .find(|c| reached(&dp, Hook::Xdp, *c, 48_000, CLUSTER_IP) != LOCAL)
        .expect("a client the cluster IP sends to a remote backend");
    assert_eq!(reached(&dp, Hook::Xdp, outside, 48_001, EXTERNAL_IP), LOCAL);
}
