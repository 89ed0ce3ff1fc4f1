//! `loadBalancerSourceRanges` through the real programs (`BPF_PROG_TEST_RUN`):
//! a load-balancer IP with source ranges opens connections only for clients
//! inside one of them, at every hook where connections start (the uplink by
//! XDP or TC, and pods); others are dropped (never refused, even when the
//! Service has no endpoints), counted as dropped and as
//! `source_range_denied`. Connections already open are not checked again,
//! as kube-proxy's firewall chain checks new ones only. Other frontends and
//! other frontends' ranges are not affected. Exact bytes. Needs root.

use std::net::Ipv4Addr;

use lb_common::{Event, Verdict};
use lb_tests::{
    fixture::{apply, frontend, program},
    packet::{Hook, Packet, TestDatapath},
};
use lb_userspace::desired::{DesiredFrontend, Frontend, Protocol, SourceRange};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// A client inside the ranges, one outside, and pods of this node (in and out).
const INSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const POD_INSIDE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const POD_OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 3);
/// The load-balancer IP, and the same Service's cluster IP (no ranges there).
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 7);
/// Another Service's load-balancer IP, without endpoints, with other ranges.
const EMPTY_LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
/// The only endpoint, on this node (the client's address is kept).
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);

fn range(addr: Ipv4Addr, prefix_len: u8) -> SourceRange {
    SourceRange { addr, prefix_len }
}

/// The frontend at `addr`:80 to the local backend, with `ranges`.
fn restricted(addr: Ipv4Addr, ranges: Vec<SourceRange>) -> (Frontend, DesiredFrontend) {
    let (fe, mut want) = frontend(addr, 80, Protocol::Tcp, &[(BACKEND, 8080, true)]);
    want.source_ranges = ranges;
    (fe, want)
}

/// The load-balancer IP open to 192.168.50.0/24 and the pods' 10.244.1.0/24
/// (1,000 single hosts besides, so the lookup is one among many), its
/// cluster IP open to all, and an empty Service's LB IP open to 10.0.0.0/8.
fn state(ranges: Vec<SourceRange>) -> Vec<(Frontend, DesiredFrontend)> {
    let (empty_fe, mut empty) = frontend(EMPTY_LB_IP, 80, Protocol::Tcp, &[]);
    empty.source_ranges = vec![range(Ipv4Addr::new(10, 0, 0, 0), 8)];
    vec![
        restricted(LB_IP, ranges),
        restricted(CLUSTER_IP, vec![]),
        (empty_fe, empty),
    ]
}

fn default_ranges() -> Vec<SourceRange> {
    let mut ranges = vec![
        range(Ipv4Addr::new(10, 244, 1, 0), 24),
        range(Ipv4Addr::new(192, 168, 50, 0), 24),
    ];
    ranges.extend((0..1_000u32).map(|i| range(Ipv4Addr::from(0xac10_0000 + i), 32)));
    ranges.sort_unstable();
    ranges
}

/// A SYN from `client` to `vip`:80 and what the hook makes of it.
fn syn(
    dp: &TestDatapath,
    hook: Hook,
    client: Ipv4Addr,
    sport: u16,
    vip: Ipv4Addr,
) -> (u32, Vec<u8>) {
    hook.run(dp, &Packet::tcp(client, sport, vip, 80).syn().build())
}

#[test]
fn only_clients_inside_the_ranges_open_connections_at_every_hook() {
    let mut dp = TestDatapath::load("ranges-hooks", NODE);
    program(&mut dp, &state(default_ranges()));
    let cases = [
        (Hook::Xdp, INSIDE, OUTSIDE),
        (Hook::TcUplink, INSIDE, OUTSIDE),
        (Hook::Pod, POD_INSIDE, POD_OUTSIDE),
    ];
    let mut denied = 0;
    for (k, (hook, inside, outside)) in cases.into_iter().enumerate() {
        let sport = 40_000 + u16::try_from(k).unwrap();
        let (ret, out) = syn(&dp, hook, inside, sport, LB_IP);
        assert_eq!(ret, hook.passed(), "{hook:?}: {inside} is inside");
        assert_eq!(
            out,
            Packet::tcp(inside, sport, BACKEND, 8080).syn().build(),
            "{hook:?}: translated to the local backend, the client's address kept"
        );
        let dropped = dp.verdict(Verdict::Dropped);
        let frame = Packet::tcp(outside, sport, LB_IP, 80).syn().build();
        assert_eq!(
            hook.run(&dp, &frame),
            (hook.dropped(), frame.clone()),
            "{hook:?}: {outside} is outside"
        );
        denied += 1;
        assert_eq!(dp.event(Event::SourceRangeDenied), denied);
        assert_eq!(dp.verdict(Verdict::Dropped), dropped + 1);
        // The same client reaches the Service's cluster IP, which has no ranges.
        let (ret, out) = syn(&dp, hook, outside, sport, CLUSTER_IP);
        assert_eq!(ret, hook.passed(), "{hook:?}");
        assert_eq!(
            out,
            Packet::tcp(outside, sport, BACKEND, 8080).syn().build()
        );
    }
    // One host among the 1,000 /32s.
    let host = Ipv4Addr::new(172, 16, 3, 231);
    assert_eq!(
        syn(&dp, Hook::Xdp, host, 41_000, LB_IP).0,
        Hook::Xdp.passed()
    );
    let next = Ipv4Addr::new(172, 16, 3, 232);
    assert_eq!(
        syn(&dp, Hook::Xdp, next, 41_001, LB_IP).0,
        Hook::Xdp.dropped(),
        "the 1,001st is not in"
    );
}

#[test]
fn a_client_outside_is_dropped_not_refused_when_the_service_has_no_endpoints() {
    let mut dp = TestDatapath::load("ranges-empty", NODE);
    program(&mut dp, &state(default_ranges()));
    for hook in Hook::UPLINKS {
        let frame = Packet::tcp(INSIDE, 42_000, EMPTY_LB_IP, 80).syn().build();
        assert_eq!(
            hook.run(&dp, &frame),
            (hook.dropped(), frame),
            "{hook:?}: outside 10.0.0.0/8, no refusal"
        );
        let (ret, _) = syn(&dp, hook, Ipv4Addr::new(10, 1, 2, 3), 42_001, EMPTY_LB_IP);
        assert_eq!(
            ret,
            hook.bounced(),
            "{hook:?}: inside, the refusal goes back"
        );
    }
}

#[test]
fn open_connections_outlive_a_change_of_ranges_and_new_ones_follow_it() {
    let mut dp = TestDatapath::load("ranges-change", NODE);
    let mut planner = program(&mut dp, &state(default_ranges()));
    let (ret, _) = syn(&dp, Hook::Xdp, INSIDE, 43_000, LB_IP);
    assert_eq!(ret, Hook::Xdp.passed());

    // The client's range goes: its open connection goes on, a new one is dropped.
    let narrower = vec![range(Ipv4Addr::new(10, 244, 1, 0), 24)];
    apply(&mut dp, &mut planner, &state(narrower));
    let ack = Packet::tcp(INSIDE, 43_000, LB_IP, 80).ack().build();
    assert_eq!(
        dp.run_xdp(&ack),
        (
            Hook::Xdp.passed(),
            Packet::tcp(INSIDE, 43_000, BACKEND, 8080).ack().build()
        ),
        "the tracked flow is not checked again"
    );
    assert_eq!(
        syn(&dp, Hook::Xdp, INSIDE, 43_001, LB_IP).0,
        Hook::Xdp.dropped()
    );

    // Without ranges, anyone.
    apply(&mut dp, &mut planner, &state(vec![]));
    assert_eq!(
        syn(&dp, Hook::Xdp, OUTSIDE, 43_002, LB_IP).0,
        Hook::Xdp.passed()
    );
    // And with one again: the outside client's open flow stays, a new one drops.
    apply(&mut dp, &mut planner, &state(vec![range(INSIDE, 32)]));
    let ack = Packet::tcp(OUTSIDE, 43_002, LB_IP, 80).ack().build();
    assert_eq!(dp.run_xdp(&ack).0, Hook::Xdp.passed());
    assert_eq!(
        syn(&dp, Hook::Xdp, OUTSIDE, 43_003, LB_IP).0,
        Hook::Xdp.dropped()
    );
    assert_eq!(
        syn(&dp, Hook::Xdp, INSIDE, 43_004, LB_IP).0,
        Hook::Xdp.passed()
    );
}
