//! Anti-spoofing: packets from outside the node that claim the node's
//! address, and replies that arrive where the route back to their source does
//! not lead (the reverse-path check, with real routes in a namespace of its
//! own). Crafted frames through the real programs with `BPF_PROG_TEST_RUN`;
//! needs root.

use std::net::Ipv4Addr;

use lb_common::{Event, Verdict, IPPROTO_TCP};
use lb_tests::{
    fixture::{frontend, setup},
    netns::{ifindex, in_netns, Netns},
    packet::{
        checksums_valid, flow_key, forwarded, handed_over, icmp_echo, src_of, test_flows, Packet,
        TestDatapath, TC_ACT_OK, TC_ACT_REDIRECT, XDP_DROP, XDP_PASS,
    },
};
use lb_userspace::{
    desired::{DesiredFrontend, Frontend, Protocol},
    flows::FlowSettings,
};

/// `TC_ACT_SHOT`.
const TC_ACT_SHOT: u32 = 2;

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Packet {
    Packet::tcp(src, sport, dst, dport)
}

// ---------------------------------------------------------------------------
// 4. The node's own address as a source, from the uplink or a pod.
// ---------------------------------------------------------------------------

/// The three hooks: name, program run, what it returns to pass and to drop.
type Run = fn(&TestDatapath, &[u8]) -> (u32, Vec<u8>);

const HOOKS: [(&str, Run, u32, u32); 3] = [
    ("XDP uplink", TestDatapath::run_xdp, XDP_PASS, XDP_DROP),
    (
        "TC uplink",
        TestDatapath::run_tc_uplink,
        TC_ACT_OK,
        TC_ACT_SHOT,
    ),
    ("TC pod", TestDatapath::run_tc, TC_ACT_OK, TC_ACT_SHOT),
];

fn spoof_state() -> Vec<(Frontend, DesiredFrontend)> {
    vec![
        frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)]),
        frontend(VIP, 53, Protocol::Udp, &[(REMOTE, 5353, false)]),
    ]
}

#[test]
fn packets_claiming_the_node_address_are_dropped_on_every_hook() {
    let (dp, _) = setup("spoof-node", NODE, test_flows(), &spoof_state());
    let spoofed: [(&str, Vec<u8>); 4] = [
        (
            "TCP SYN to a frontend",
            tcp(NODE, 40_000, VIP, 80).syn().build(),
        ),
        (
            "UDP to a frontend",
            Packet::udp(NODE, 40_000, VIP, 53).build(),
        ),
        ("ICMP echo", icmp_echo(NODE, VIP)),
        (
            "TCP to no frontend",
            tcp(NODE, 40_000, CLIENT, 22).syn().build(),
        ),
    ];
    let mut dropped = 0u64;
    for (hook, run, _, drop) in HOOKS {
        for (what, frame) in &spoofed {
            let (ret, _) = run(&dp, frame);
            assert_eq!(ret, drop, "{hook}: {what} from the node address is dropped");
            dropped += 1;
            assert_eq!(
                dp.event(Event::NodeSourceSpoofed),
                dropped,
                "{hook}: {what} counted"
            );
            assert_eq!(
                dp.verdict(Verdict::Invalid),
                dropped,
                "{hook}: {what} is invalid"
            );
        }
    }
    let snapshot = dp.snapshot();
    assert!(
        snapshot.flows.is_empty(),
        "no spoofed packet started a flow"
    );
    assert!(snapshot.replies.is_empty(), "nor claimed a port");
    assert_eq!(dp.verdict(Verdict::Translated), 0);
}

#[test]
fn the_same_packets_from_other_sources_are_translated_or_passed() {
    let (dp, _) = setup("spoof-other", NODE, test_flows(), &spoof_state());
    for (i, (hook, run, pass, _)) in HOOKS.into_iter().enumerate() {
        let sport = 40_000 + u16::try_from(i).unwrap();
        // A pod sends from its own address; a client beyond the uplink from its.
        let (src, snat) = if hook == "TC pod" {
            (POD, false)
        } else {
            (CLIENT, true)
        };
        let (ret, out) = run(&dp, &tcp(src, sport, VIP, 80).syn().build());
        assert_eq!(ret, pass, "{hook}: TCP SYN");
        let (new_src, new_sport) = src_of(&out);
        let expected = if snat {
            assert_eq!(new_src, NODE, "{hook}: SNAT to the node");
            tcp(NODE, new_sport, REMOTE, 8080).syn().build()
        } else {
            tcp(src, sport, REMOTE, 8080).syn().build()
        };
        assert_eq!(out, expected, "{hook}: TCP SYN translated");
        assert!(checksums_valid(&out));

        let (ret, out) = run(&dp, &Packet::udp(src, sport, VIP, 53).build());
        assert_eq!(ret, pass, "{hook}: UDP");
        let (_, new_sport) = src_of(&out);
        let expected = if snat {
            Packet::udp(NODE, new_sport, REMOTE, 5353).build()
        } else {
            Packet::udp(src, sport, REMOTE, 5353).build()
        };
        assert_eq!(out, expected, "{hook}: UDP translated");

        let echo = icmp_echo(src, VIP);
        assert_eq!(
            run(&dp, &echo),
            (pass, echo.clone()),
            "{hook}: ICMP passes untouched"
        );
    }
    assert_eq!(dp.event(Event::NodeSourceSpoofed), 0);
    assert_eq!(dp.verdict(Verdict::Invalid), 0);
    assert_eq!(dp.verdict(Verdict::Translated), 6);
}

// ---------------------------------------------------------------------------
// 5. The reverse-path check of replies, with real routes.
// ---------------------------------------------------------------------------

/// Runs `f` on a thread that entered `ns` (network namespaces are per
/// thread: `BPF_PROG_TEST_RUN` resolves interface indexes and routes in the
/// calling thread's namespace). Panics propagate.
/// A namespace shaped like a node: interface `d0` leads to the other node's pods
/// (10.244.2.0/24), `d1` is the uplink to the clients (192.168.50.0/24),
/// `d2` a local pod's interface (10.244.1.2); forwarding on, as on any node
/// (`bpf_fib_lookup` answers `FWD_DISABLED` otherwise). `extra` routes
/// are added last.
fn node_namespace(role: &str, extra: &[&[&str]]) -> Netns {
    let ns = Netns::new(role).expect("creating a namespace");
    let name = ns.name().to_string();
    let ip = |args: &[&str]| {
        let mut full = vec!["ip", "-n", name.as_str()];
        full.extend_from_slice(args);
        lb_tests::netns::sh(&full).unwrap_or_else(|e| panic!("{e:#}"));
    };
    // Veth pairs with both ends inside (this kernel has no dummy driver);
    // the peers `pN` only carry the link up.
    for (dev, peer) in [("d0", "p0"), ("d1", "p1"), ("d2", "p2")] {
        ip(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
        ip(&["link", "set", peer, "up"]);
        ip(&["link", "set", dev, "up"]);
    }
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .expect("enabling forwarding in the namespace");
    ip(&["route", "add", "10.244.2.0/24", "dev", "d0"]);
    ip(&["route", "add", "192.168.50.0/24", "dev", "d1"]);
    ip(&["route", "add", "10.244.1.2/32", "dev", "d2"]);
    for route in extra {
        let mut args = vec!["route", "add"];
        args.extend_from_slice(route);
        ip(&args);
    }
    ns
}

fn remote_state() -> Vec<(Frontend, DesiredFrontend)> {
    vec![frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)])]
}

/// Flow settings with the reverse-path check on.
fn path_checked() -> FlowSettings {
    FlowSettings {
        reply_path_check: true,
        ..test_flows()
    }
}

/// Opens a flow translated to the node address from the client (arriving
/// on the uplink `d1`) to the remote backend, through the uplink's TC
/// program (XDP would hand it over: the backend is behind `d0`); returns
/// its SNAT port.
fn open_remote_flow(dp: &TestDatapath, uplink: u32, sport: u16) -> u16 {
    let (ret, out) = dp.run_tc_uplink_on(uplink, &tcp(CLIENT, sport, VIP, 80).syn().build());
    assert_eq!(ret, TC_ACT_REDIRECT, "flow {sport}: the client's SYN");
    let (src, port) = src_of(&out);
    assert_eq!(src, NODE, "flow {sport}: SNATed");
    assert_eq!(out, forwarded(&tcp(NODE, port, REMOTE, 8080).syn().build()));
    port
}

/// Whether XDP on `ifindex` accepts `frame`, a reply to the node's address:
/// dropped untouched, or (every accepted reply here: the client is behind
/// another interface, or its neighbour is unresolved) translated to come
/// from the Service and handed to the TC program (`tests/forwarding.rs`).
fn xdp_accepts(dp: &TestDatapath, ifindex: u32, frame: &[u8]) -> bool {
    let (ret, out) = dp.run_xdp_on(ifindex, frame);
    match ret {
        XDP_DROP => {
            assert_eq!(out, frame, "a dropped reply is not rewritten");
            false
        }
        XDP_PASS => {
            let handed = handed_over(&out).expect("handed to TC");
            assert_eq!(src_of(handed), (VIP, 80), "translated");
            true
        }
        other => panic!("XDP returned {other}"),
    }
}

/// The ifindex the reverse entry of the remote flow on `port` caches.
fn cached_ifindex(dp: &TestDatapath, port: u16) -> u32 {
    dp.reverse(&flow_key(REMOTE, 8080, NODE, port, IPPROTO_TCP))
        .expect("the flow's reverse entry")
        .ifindex
}

/// The remote backend's replies to a flow are translated where the route to
/// the backend leads (`d0`) and dropped elsewhere (`d1`), in either order,
/// the cached interface never letting a later reply through the wrong one.
fn check_remote_replies(dp: &TestDatapath) {
    let (d0, d1) = (ifindex("d0"), ifindex("d1"));
    let synack = |port: u16| tcp(REMOTE, 8080, NODE, port).synack().build();
    let ack = |port: u16| tcp(REMOTE, 8080, NODE, port).ack().build();

    // Flow A: the reply arrives where the route leads, then on the other side.
    let a = open_remote_flow(dp, d1, 40_000);
    assert!(
        xdp_accepts(dp, d0, &synack(a)),
        "the backend's SYN-ACK on d0 (the route to 10.244.2.2) is accepted \
         (ReplyRejected = {})",
        dp.event(Event::ReplyRejected)
    );
    assert_eq!(
        cached_ifindex(dp, a),
        d0,
        "the verified interface is cached"
    );
    assert_eq!(dp.event(Event::ReplyRejected), 0);

    assert!(
        !xdp_accepts(dp, d1, &ack(a)),
        "the same flow's reply on d1 is dropped despite the cache"
    );
    assert_eq!(dp.event(Event::ReplyRejected), 1);
    assert_eq!(dp.verdict(Verdict::Invalid), 1);
    assert_eq!(
        cached_ifindex(dp, a),
        d0,
        "a rejected reply does not move the cache"
    );
    assert!(xdp_accepts(dp, d0, &ack(a)), "d0 again");

    // Flow B: the first reply arrives on the wrong side.
    let b = open_remote_flow(dp, d1, 40_001);
    assert!(
        !xdp_accepts(dp, d1, &synack(b)),
        "a first reply on d1 is dropped"
    );
    assert_eq!(dp.event(Event::ReplyRejected), 2);
    assert_eq!(cached_ifindex(dp, b), 0, "nothing verified yet");
    assert!(xdp_accepts(dp, d0, &synack(b)));
    assert!(
        !xdp_accepts(dp, d1, &ack(b)),
        "after one accepted on d0, d1 still fails"
    );
    assert_eq!(dp.event(Event::ReplyRejected), 3);
    assert_eq!(dp.verdict(Verdict::Reversed), 3);
}

#[test]
fn replies_are_accepted_only_from_the_interface_the_route_to_their_source_uses() {
    let ns = node_namespace("rpf", &[]);
    in_netns(&ns, || {
        check_remote_replies(&setup("rpf", NODE, path_checked(), &remote_state()).0);
    });
}

/// Strict, as `rp_filter=1`: the uplink's default route also covers the
/// backend's address, but the best route to it leads elsewhere.
#[test]
fn the_check_is_strict_when_a_default_route_leads_to_the_wrong_interface() {
    let ns = node_namespace("rpf-default", &[&["default", "dev", "d1"]]);
    in_netns(&ns, || {
        check_remote_replies(&setup("rpf-default", NODE, path_checked(), &remote_state()).0);
    });
}

#[test]
fn without_the_check_a_reply_from_any_interface_is_accepted() {
    let ns = node_namespace("rpf-off", &[]);
    assert!(!test_flows().reply_path_check);
    in_netns(&ns, || {
        let (dp, _) = setup("rpf-off", NODE, test_flows(), &remote_state());
        let (d0, d1) = (ifindex("d0"), ifindex("d1"));
        let port = open_remote_flow(&dp, d1, 40_000);
        assert!(
            xdp_accepts(&dp, d1, &tcp(REMOTE, 8080, NODE, port).synack().build()),
            "with the check off the reply on d1 is accepted"
        );
        assert!(xdp_accepts(
            &dp,
            d0,
            &tcp(REMOTE, 8080, NODE, port).ack().build()
        ));
        assert_eq!(dp.event(Event::ReplyRejected), 0);
    });
}

/// A local pod's replies cross the stack untranslated (the pod program
/// leaves them be) and are checked where they leave the node, by the
/// interface they entered it by: translated from the pod's own interface,
/// dropped from another.
#[test]
fn a_local_pods_replies_are_checked_where_they_leave_the_node() {
    let ns = node_namespace("rpf-pod", &[]);
    in_netns(&ns, || {
        let (dp, _) = setup(
            "rpf-pod",
            NODE,
            path_checked(),
            &[frontend(VIP, 80, Protocol::Tcp, &[(POD, 8080, true)])],
        );
        let (d0, d1, d2) = (ifindex("d0"), ifindex("d1"), ifindex("d2"));
        let (ret, out) = dp.run_xdp_on(d1, &tcp(CLIENT, 40_000, VIP, 80).syn().build());
        assert_eq!(
            (ret, out),
            (XDP_PASS, tcp(CLIENT, 40_000, POD, 8080).syn().build())
        );
        let reply = tcp(POD, 8080, CLIENT, 40_000).synack().build();
        let (ret, out) = dp.run_tc_on(d2, &reply);
        assert_eq!(
            (ret, &out),
            (TC_ACT_OK, &reply),
            "the pod program leaves it to the stack"
        );
        let (ret, out) = dp.run_tc_egress_on(d1, d2, &reply);
        assert_eq!(
            (ret, out),
            (TC_ACT_OK, tcp(VIP, 80, CLIENT, 40_000).synack().build()),
            "the pod's reply that entered by its own interface d2 is \
             reverse-translated leaving by d1 (ReplyRejected = {})",
            dp.event(Event::ReplyRejected)
        );
        let ack = tcp(POD, 8080, CLIENT, 40_000).ack().build();
        let (ret, _) = dp.run_tc_egress_on(d1, d0, &ack);
        assert_eq!(ret, TC_ACT_SHOT, "the same reply entered by d0 is dropped");
        assert_eq!(dp.event(Event::ReplyRejected), 1);
        // Where it leaves a pod, its own interface (a bridge CNI's port,
        // which egress cannot tell from the bridge) is checked as well.
        let (ret, _) = dp.run_tc_on(d0, &ack);
        assert_eq!(ret, TC_ACT_SHOT, "the same reply from pod interface d0");
        assert_eq!(dp.event(Event::ReplyRejected), 2);
        assert_eq!(dp.verdict(Verdict::Reversed), 1, "counted where it left");
    });
}

/// On the way into a pod (`lb_tc_egress`), a reply is judged by the
/// interface it entered the node by, not the pod interface it leaves by:
/// accepted from `d0` (the route to the backend, as an overlay's `vxlan0`
/// is), dropped from `d1`, and accepted from the node itself (no ingress
/// interface: a hostNetwork backend, the node's own ICMP errors).
#[test]
fn replies_into_a_pod_are_checked_where_they_entered_the_node() {
    let ns = node_namespace("rpf-egress", &[]);
    in_netns(&ns, || {
        let (dp, _) = setup("rpf-egress", NODE, path_checked(), &remote_state());
        let (d0, d1, d2) = (ifindex("d0"), ifindex("d1"), ifindex("d2"));
        // The local pod (behind d2) opens a flow to the remote backend.
        let (ret, out) = dp.run_tc_on(d2, &tcp(POD, 40_000, VIP, 80).syn().build());
        assert_eq!(
            (ret, out),
            (TC_ACT_OK, tcp(POD, 40_000, REMOTE, 8080).syn().build())
        );
        let reply = tcp(REMOTE, 8080, POD, 40_000).synack().build();
        let restored = tcp(VIP, 80, POD, 40_000).synack().build();
        let (ret, out) = dp.run_tc_egress_on(d2, d1, &reply);
        assert_eq!(
            (ret, out),
            (TC_ACT_SHOT, reply.clone()),
            "entered by d1, where the backend is not: dropped untranslated"
        );
        assert_eq!(dp.event(Event::ReplyRejected), 1);
        let (ret, out) = dp.run_tc_egress_on(d2, d0, &reply);
        assert_eq!(
            (ret, out),
            (TC_ACT_OK, restored.clone()),
            "entered by d0, the route to the backend: translated \
             (ReplyRejected = {})",
            dp.event(Event::ReplyRejected)
        );
        assert_eq!(
            dp.reverse(&flow_key(REMOTE, 8080, POD, 40_000, IPPROTO_TCP))
                .expect("the flow's reverse entry")
                .ifindex,
            d0,
            "the interface it entered by is the one verified"
        );
        let (ret, out) = dp.run_tc_egress_on(d2, 0, &reply);
        assert_eq!(
            (ret, out),
            (TC_ACT_OK, restored),
            "from the node itself: translated"
        );
        assert_eq!(
            dp.reverse(&flow_key(REMOTE, 8080, POD, 40_000, IPPROTO_TCP))
                .unwrap()
                .ifindex,
            d0,
            "the node's own packet leaves the verified interface as it was"
        );
        let (ret, _) = dp.run_tc_egress_on(d2, d1, &reply);
        assert_eq!(ret, TC_ACT_SHOT, "d1 still fails after d0 was verified");
        assert_eq!(dp.event(Event::ReplyRejected), 2);
        assert_eq!(dp.verdict(Verdict::Reversed), 2);
    });
}

/// With an overlay (the agent found `d0` to be one: VXLAN, Geneve), a remote
/// pod's replies to the node's SNAT address come over the underlay: an
/// uplink (`d1`) accepts them. Nowhere else: a pod interface still drops
/// them, and without the overlay the uplink does.
#[test]
fn replies_from_behind_the_overlay_are_accepted_on_the_uplink() {
    let ns = node_namespace("rpf-overlay", &[]);
    in_netns(&ns, || {
        let (mut dp, _) = setup("rpf-overlay", NODE, path_checked(), &remote_state());
        let (d0, d1, d2) = (ifindex("d0"), ifindex("d1"), ifindex("d2"));
        let port = open_remote_flow(&dp, d1, 40_000);
        let synack = tcp(REMOTE, 8080, NODE, port).synack().build();
        assert!(
            !xdp_accepts(&dp, d1, &synack),
            "no overlay: the uplink drops it"
        );
        dp.set_overlay_ifindex(d0);
        assert!(
            xdp_accepts(&dp, d1, &synack),
            "d0 is the overlay: its pods' replies on the uplink are accepted"
        );
        // A second flow's first reply at the TC uplink hook (nothing cached),
        // forwarded past the stack to the client behind d1.
        let second = open_remote_flow(&dp, d1, 40_001);
        let (ret, out) = dp.run_tc_uplink_on(d1, &tcp(REMOTE, 8080, NODE, second).synack().build());
        assert_eq!(
            (ret, out),
            (
                TC_ACT_REDIRECT,
                forwarded(&tcp(VIP, 80, CLIENT, 40_001).synack().build())
            ),
            "at the TC uplink hook too"
        );
        let (ret, _) = dp.run_tc_on(d2, &tcp(REMOTE, 8080, NODE, port).ack().build());
        assert_eq!(ret, TC_ACT_SHOT, "a pod interface still drops it");
        assert_eq!(dp.event(Event::ReplyRejected), 2);
    });
}

/// Another node's own address (a hostNetwork backend, routed over the
/// uplink `d1`) answers a pod over the overlay (`d0`), as its route to
/// this node's pod CIDR goes: on its way into the pod (`d2`) the reply is
/// accepted once `d0` is the overlay, and only from there.
#[test]
fn a_node_backend_answers_pods_over_the_overlay() {
    const NODE2: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 12);
    let ns = node_namespace("rpf-nodebe", &[]);
    in_netns(&ns, || {
        let state = [frontend(VIP, 443, Protocol::Tcp, &[(NODE2, 9080, false)])];
        let (mut dp, _) = setup("rpf-nodebe", NODE, path_checked(), &state);
        let (d0, d1, d2) = (ifindex("d0"), ifindex("d1"), ifindex("d2"));
        let (ret, out) = dp.run_tc_on(d2, &tcp(POD, 40_000, VIP, 443).syn().build());
        assert_eq!(
            (ret, out),
            (TC_ACT_OK, tcp(POD, 40_000, NODE2, 9080).syn().build())
        );
        let reply = tcp(NODE2, 9080, POD, 40_000).synack().build();
        let restored = tcp(VIP, 443, POD, 40_000).synack().build();
        let (ret, _) = dp.run_tc_egress_on(d2, d0, &reply);
        assert_eq!(ret, TC_ACT_SHOT, "no overlay: d0 is not the route to node2");
        dp.set_overlay_ifindex(d0);
        let (ret, out) = dp.run_tc_egress_on(d2, d0, &reply);
        assert_eq!(
            (ret, out),
            (TC_ACT_OK, restored.clone()),
            "entered by the overlay: translated"
        );
        let (ret, out) = dp.run_tc_egress_on(d2, d1, &reply);
        assert_eq!((ret, out), (TC_ACT_OK, restored), "by the route itself");
        let (ret, _) = dp.run_tc_egress_on(d2, d2, &reply);
        assert_eq!(ret, TC_ACT_SHOT, "from a pod interface: dropped");
        assert_eq!(dp.event(Event::ReplyRejected), 2);
    });
}
