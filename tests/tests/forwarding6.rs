//! IPv6 flows translated to the node's address are forwarded past the
//! stack (`forward6.rs`), the twin of `tests/forwarding.rs`: exact bytes out
//! of `BPF_PROG_TEST_RUN` in a namespace whose routes and neighbours the
//! programs' lookups see. XDP sends a frame back out of its uplink itself
//! (`XDP_TX`, hop limit one less, the neighbour's Ethernet addresses); what
//! it cannot send (a next hop behind another device, or without a
//! neighbour entry) it hands to the uplink's TC program translated, marked
//! in the frame's metadata; TC redirects (`bpf_redirect_neigh`). A spent
//! hop limit, or no route, leaves the frame to the stack, translated, its
//! hop limit as it came. A packet too big for its route is answered with an
//! `ICMPv6` Packet Too Big from the address its sender used. Needs root.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use lb_common::IPPROTO_TCP;
use lb_tests::{
    fixture::{frontend6, program6},
    netns::{ifindex, in_netns, Netns},
    packet::{
        handed_over, test_flows, with_macs, TestDatapath, TC_ACT_OK, TC_ACT_REDIRECT, XDP_PASS,
        XDP_TX,
    },
    packet6::{checksums6_valid, dst6_of, forwarded6, src6_of, Packet6},
};
use lb_userspace::{
    desired::{Listen6, Protocol},
    plan::Planner,
};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x11);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10);
/// A backend on the LAN, behind the uplink, with a neighbour entry.
const NEIGHBOUR: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x12);
/// A backend on the LAN without a neighbour entry.
const UNRESOLVED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x13);
/// A backend behind the other device (as an overlay's pods are).
const BEHIND_OVERLAY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 2);
/// A backend no route reaches.
const UNROUTED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
/// A backend behind the other device, by a route of MTU 1280.
const NARROW: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x98, 0, 0, 0, 0, 0, 2);
/// A pod on this node, behind its own interface.
const POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);
const VIP_NEIGHBOUR: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x12);
const VIP_UNRESOLVED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x13);
const VIP_OVERLAY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x14);
const VIP_UNROUTED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x15);
const VIP_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x16);
const VIP_NARROW: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x17);
/// `ICMPv6` Packet Too Big.
const PACKET_TOO_BIG: u8 = 2;
/// The neighbours' Ethernet addresses (permanent entries).
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const NEIGHBOUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
/// The uplink's own Ethernet address.
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

/// A node: `upl` the uplink (`fd00:50::/64`, its address `NODE6`,
/// permanent neighbours for the client and `NEIGHBOUR`), `ovl` another
/// device (`fd00:244:2::/64`, and `fd00:98::/64` by a route of MTU 1280,
/// locked: the lookup takes an unlocked route's MTU from its device),
/// `pod` a pod's interface (`POD`, a permanent neighbour); IPv6
/// forwarding on.
fn node() -> Netns {
    let ns = Netns::new("fwd6").expect("creating a namespace");
    ns.script(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0
         sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
         sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.forwarding=1
         ip link add upl type veth peer name uplp
         ip link add ovl type veth peer name ovlp
         ip link add pod type veth peer name podp
         ip link set uplp up
         ip link set ovlp up
         ip link set podp up
         ip link set dev upl address 02:00:00:00:00:11
         ip link set upl up
         ip link set ovl up
         ip link set pod up
         ip -6 addr add fd00:50::11/64 dev upl nodad
         ip -6 route add fd00:244:2::/64 dev ovl
         ip -6 route add fd00:98::/64 dev ovl mtu lock 1280
         ip -6 route add fd00:244:1::2/128 dev pod
         ip -6 neigh add fd00:50::10 lladdr 02:00:00:00:00:10 dev upl nud permanent
         ip -6 neigh add fd00:50::12 lladdr 02:00:00:00:00:12 dev upl nud permanent
         ip -6 neigh add fd00:244:1::2 lladdr 02:00:00:00:00:22 dev pod nud permanent",
    );
    ns
}

/// A data path with `NODE6` and a frontend at port 80 (TCP) and 53 (UDP)
/// of each VIP, to its one backend (8080, 5353), on another node but for
/// the pod's.
fn datapath() -> TestDatapath {
    let mut dp = TestDatapath::load_with_node6("fwd6", NODE, NODE6, test_flows()).with_ipv6();
    let mut state = vec![];
    for (vip, backend) in [
        (VIP_NEIGHBOUR, NEIGHBOUR),
        (VIP_UNRESOLVED, UNRESOLVED),
        (VIP_OVERLAY, BEHIND_OVERLAY),
        (VIP_UNROUTED, UNROUTED),
        (VIP_POD, POD),
        (VIP_NARROW, NARROW),
    ] {
        let local = backend == POD;
        state.push(frontend6(
            Listen6::Addr(vip, 80),
            Protocol::Tcp,
            &[(backend, 8080, local)],
        ));
        state.push(frontend6(
            Listen6::Addr(vip, 53),
            Protocol::Udp,
            &[(backend, 5353, local)],
        ));
    }
    let mut planner = Planner::new(dp.slab_slots(), Duration::ZERO);
    program6(&mut dp, &mut planner, &[], &state);
    dp
}

/// A frame with the client's and the uplink's Ethernet addresses.
fn from_client(packet: &Packet6) -> Vec<u8> {
    with_macs(&packet.build(), UPLINK_MAC, CLIENT_MAC)
}

/// The SNAT port a translated frame leaves from (checked to be the node's).
fn snat_port(out: &[u8]) -> u16 {
    let (addr, port) = src6_of(out);
    assert_eq!(addr, NODE6, "translated to the node's IPv6 address");
    port
}

/// The TCP and UDP packets of one flow from the client's `sport` to `vip`:
/// (client's first, the backend's reply (its port picked by
/// [`reply_to`]), the reply as the client gets it).
fn exchanges(sport: u16, vip: Ipv6Addr, backend: Ipv6Addr) -> [(Packet6, Packet6, Packet6); 2] {
    [
        (
            Packet6::tcp(CLIENT, sport, vip, 80).syn(),
            Packet6::tcp(backend, 8080, NODE6, 0).synack(),
            Packet6::tcp(vip, 80, CLIENT, sport).synack(),
        ),
        (
            Packet6::udp(CLIENT, sport, vip, 53),
            Packet6::udp(backend, 5353, NODE6, 0),
            Packet6::udp(vip, 53, CLIENT, sport),
        ),
    ]
}

/// The client's packet as sent to the backend from `port`.
fn sent(first: &Packet6, backend: Ipv6Addr, port: u16) -> Vec<u8> {
    if is_tcp(first) {
        Packet6::tcp(NODE6, port, backend, 8080).syn().build()
    } else {
        Packet6::udp(NODE6, port, backend, 5353).build()
    }
}

fn is_tcp(packet: &Packet6) -> bool {
    packet.upper_next_header() == IPPROTO_TCP
}

/// The backend's reply to the node's `port`.
fn reply_to(reply: &Packet6, backend: Ipv6Addr, port: u16) -> Packet6 {
    if is_tcp(reply) {
        Packet6::tcp(backend, 8080, NODE6, port).synack()
    } else {
        Packet6::udp(backend, 5353, NODE6, port)
    }
}

#[test]
fn a_flow_to_a_backend_behind_the_uplink_goes_back_out_with_xdp_tx_both_ways() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let up = ifindex("upl");
        for (first, reply, back) in exchanges(40_000, VIP_NEIGHBOUR, NEIGHBOUR) {
            let (ret, out) = dp.run_xdp_on(up, &from_client(&first));
            assert_eq!(ret, XDP_TX, "{first:?}: sent back out of the uplink");
            let port = snat_port(&out);
            assert_eq!(
                out,
                with_macs(
                    &forwarded6(&sent(&first, NEIGHBOUR, port)),
                    NEIGHBOUR_MAC,
                    UPLINK_MAC
                ),
                "{first:?}: SNATed, hop limit one less, to the backend's neighbour entry"
            );
            assert!(checksums6_valid(&out));
            let reply = reply_to(&reply, NEIGHBOUR, port).build();
            let (ret, out) = dp.run_xdp_on(up, &with_macs(&reply, UPLINK_MAC, NEIGHBOUR_MAC));
            assert_eq!(ret, XDP_TX, "{first:?}: the reply too");
            assert_eq!(
                out,
                with_macs(&forwarded6(&back.build()), CLIENT_MAC, UPLINK_MAC),
                "{first:?}: translated back, hop limit one less, to the client's neighbour entry"
            );
        }
    });
}

#[test]
fn at_tc_a_flow_to_a_backend_on_another_node_is_redirected_both_ways() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let up = ifindex("upl");
        for (vip, backend) in [
            (VIP_NEIGHBOUR, NEIGHBOUR),
            (VIP_UNRESOLVED, UNRESOLVED),
            (VIP_OVERLAY, BEHIND_OVERLAY),
        ] {
            for (first, reply, back) in exchanges(40_100, vip, backend) {
                let frame = from_client(&first);
                let (ret, out) = dp.run_tc_uplink_on(up, &frame);
                assert_eq!(ret, TC_ACT_REDIRECT, "{first:?}: to the route's device");
                let port = snat_port(&out);
                assert_eq!(
                    out,
                    forwarded6(&with_macs(
                        &sent(&first, backend, port),
                        UPLINK_MAC,
                        CLIENT_MAC
                    )),
                    "{first:?}: SNATed, hop limit one less (the neighbour's addresses are the redirect's)"
                );
                let reply = with_macs(
                    &reply_to(&reply, backend, port).build(),
                    UPLINK_MAC,
                    NEIGHBOUR_MAC,
                );
                let (ret, out) = dp.run_tc_uplink_on(up, &reply);
                assert_eq!(ret, TC_ACT_REDIRECT, "{first:?}: the reply too");
                assert_eq!(
                    out,
                    forwarded6(&with_macs(&back.build(), UPLINK_MAC, NEIGHBOUR_MAC))
                );
            }
        }
    });
}

#[test]
fn what_xdp_cannot_send_it_translates_and_hands_to_the_tc_program() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let up = ifindex("upl");
        for (vip, backend, why) in [
            (
                VIP_OVERLAY,
                BEHIND_OVERLAY,
                "next hop behind another device",
            ),
            (
                VIP_UNRESOLVED,
                UNRESOLVED,
                "next hop without a neighbour entry",
            ),
        ] {
            let first = Packet6::tcp(CLIENT, 40_001, vip, 80).syn();
            let (ret, out) = dp.run_xdp_on(up, &from_client(&first));
            assert_eq!(ret, XDP_PASS, "{why}");
            let handed = handed_over(&out).unwrap_or_else(|| panic!("{why}: marked for TC"));
            let port = snat_port(handed);
            assert_eq!(
                handed,
                with_macs(&sent(&first, backend, port), UPLINK_MAC, CLIENT_MAC),
                "{why}: translated (SNATed), hop limit and Ethernet addresses left to TC"
            );
        }
    });
}

#[test]
fn a_spent_hop_limit_or_no_route_leaves_the_translated_frame_to_the_stack() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let up = ifindex("upl");
        for (i, (vip, backend, hops, why)) in [
            (VIP_NEIGHBOUR, NEIGHBOUR, 1, "hop limit 1"),
            (VIP_UNROUTED, UNROUTED, 64, "no route"),
        ]
        .into_iter()
        .enumerate()
        {
            let sport = 41_000 + u16::try_from(i).unwrap() * 10;
            let first = Packet6::tcp(CLIENT, sport, vip, 80).syn().hop_limit(hops);
            let (ret, out) = dp.run_xdp_on(up, &from_client(&first));
            assert_eq!(ret, XDP_PASS, "XDP, {why}: to the stack");
            let port = snat_port(&out);
            let translated = Packet6::tcp(NODE6, port, backend, 8080)
                .syn()
                .hop_limit(hops)
                .build();
            assert_eq!(
                out,
                with_macs(&translated, UPLINK_MAC, CLIENT_MAC),
                "XDP, {why}: translated, unmarked, hop limit as it came"
            );
            let first = Packet6::tcp(CLIENT, sport + 1, vip, 80)
                .syn()
                .hop_limit(hops);
            let (ret, out) = dp.run_tc_uplink_on(up, &from_client(&first));
            assert_eq!(ret, TC_ACT_OK, "TC, {why}: to the stack");
            let port = snat_port(&out);
            let translated = Packet6::tcp(NODE6, port, backend, 8080)
                .syn()
                .hop_limit(hops)
                .build();
            assert_eq!(
                out,
                with_macs(&translated, UPLINK_MAC, CLIENT_MAC),
                "TC, {why}: translated, hop limit as it came"
            );
        }
    });
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_redirected_back_to_it() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let pod = ifindex("pod");
        let (ret, out) = dp.run_tc_on(pod, &Packet6::tcp(POD, 33_000, VIP_POD, 80).syn().build());
        assert_eq!(ret, TC_ACT_REDIRECT, "to the pod's interface");
        let port = snat_port(&out);
        assert_eq!(
            out,
            forwarded6(&Packet6::tcp(NODE6, port, POD, 8080).syn().build())
        );
        let reply = Packet6::tcp(POD, 8080, NODE6, port).synack().build();
        let (ret, out) = dp.run_tc_on(pod, &reply);
        assert_eq!(ret, TC_ACT_REDIRECT, "the reply too");
        assert_eq!(
            out,
            forwarded6(&Packet6::tcp(VIP_POD, 80, POD, 33_000).synack().build())
        );
    });
}

/// The Packet Too Big the node sends for `offending` (a client's frame,
/// Ethernet and IPv6 without extension headers, as it arrived): to its
/// sender from the address it was sent to, the route's MTU 1280, quoting
/// its IPv6 header and 8 bytes of UDP/TCP, Ethernet addresses swapped.
fn packet_too_big(offending: &[u8]) -> Vec<u8> {
    let mut body = 1280u32.to_be_bytes().to_vec();
    body.extend_from_slice(&offending[14..14 + 40 + 8]);
    let (sender, _) = src6_of(offending);
    let (service, _) = dst6_of(offending);
    let ptb = Packet6::icmp6(service, sender, PACKET_TOO_BIG, 0, &body).build();
    with_macs(&ptb, CLIENT_MAC, UPLINK_MAC)
}

#[test]
fn a_packet_too_big_for_its_route_is_answered_with_a_packet_too_big_from_the_service() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let up = ifindex("upl");
        // 1,300 bytes of payload: over the 1,280 of the route.
        let big_udp = |sport| {
            from_client(&Packet6::udp(CLIENT, sport, VIP_NARROW, 53).with_payload(&[7; 1300]))
        };
        let big_tcp = |sport| {
            from_client(&Packet6::tcp(CLIENT, sport, VIP_NARROW, 80).with_payload(&[7; 1300]))
        };
        // A new flow's first packet (the new-flow stage).
        let frame = big_udp(42_000);
        let (ret, out) = dp.run_xdp_on(up, &frame);
        assert_eq!(ret, XDP_TX, "XDP, new flow: the Packet Too Big goes back");
        assert_eq!(out, packet_too_big(&frame), "XDP, new flow");
        assert!(checksums6_valid(&out), "XDP, new flow: its checksum");
        let frame = big_udp(42_001);
        let (ret, out) = dp.run_tc_uplink_on(up, &frame);
        assert_eq!(
            ret, TC_ACT_REDIRECT,
            "TC, new flow: the Packet Too Big goes back"
        );
        assert_eq!(out, packet_too_big(&frame), "TC, new flow");
        assert!(checksums6_valid(&out), "TC, new flow: its checksum");
        // An established flow's (the main program), TCP and UDP.
        let syn = from_client(&Packet6::tcp(CLIENT, 42_010, VIP_NARROW, 80).syn());
        assert_eq!(
            dp.run_tc_uplink_on(up, &syn).0,
            TC_ACT_REDIRECT,
            "a SYN fits"
        );
        let small = from_client(&Packet6::udp(CLIENT, 42_010, VIP_NARROW, 53));
        assert_eq!(dp.run_tc_uplink_on(up, &small).0, TC_ACT_REDIRECT, "fits");
        for (frame, what) in [(big_tcp(42_010), "TCP"), (big_udp(42_010), "UDP")] {
            let (ret, out) = dp.run_xdp_on(up, &frame);
            assert_eq!(ret, XDP_TX, "XDP, {what}: the Packet Too Big goes back");
            assert_eq!(out, packet_too_big(&frame), "XDP, {what}");
            assert!(checksums6_valid(&out), "XDP, {what}: its checksum");
            let (ret, out) = dp.run_tc_uplink_on(up, &frame);
            assert_eq!(
                ret, TC_ACT_REDIRECT,
                "TC, {what}: the Packet Too Big goes back"
            );
            assert_eq!(out, packet_too_big(&frame), "TC, {what}");
        }
        // A packet that fits the route is forwarded.
        let small = Packet6::udp(CLIENT, 42_100, VIP_NARROW, 53);
        let (ret, out) = dp.run_tc_uplink_on(up, &from_client(&small));
        assert_eq!(ret, TC_ACT_REDIRECT, "TC: a packet that fits is redirected");
        let port = snat_port(&out);
        assert_eq!(
            out,
            forwarded6(&with_macs(
                &Packet6::udp(NODE6, port, NARROW, 5353).build(),
                UPLINK_MAC,
                CLIENT_MAC
            ))
        );
    });
}

#[test]
fn a_routers_packet_too_big_about_a_via_node_packet_reaches_the_client_forwarded() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let up = ifindex("upl");
        // NEIGHBOUR, a permanent neighbour on the uplink, plays the router.
        let mtu = 1280u32.to_be_bytes();
        for (i, hook) in ["XDP", "TC"].into_iter().enumerate() {
            let sport = 43_000 + u16::try_from(i).unwrap();
            let syn = from_client(&Packet6::tcp(CLIENT, sport, VIP_OVERLAY, 80).syn());
            let (_, out) = dp.run_tc_uplink_on(up, &syn);
            let port = snat_port(&out);
            // The translated SYN as it left the node (hop limit 63).
            let sent = Packet6::tcp(NODE6, port, BEHIND_OVERLAY, 8080)
                .syn()
                .hop_limit(63)
                .build();
            let mut body = mtu.to_vec();
            body.extend_from_slice(&sent[14..14 + 48]);
            let error = with_macs(
                &Packet6::icmp6(NEIGHBOUR, NODE6, PACKET_TOO_BIG, 0, &body).build(),
                UPLINK_MAC,
                NEIGHBOUR_MAC,
            );
            // The same error about the SYN as the client sent it, to the client.
            let client_sent = Packet6::tcp(CLIENT, sport, VIP_OVERLAY, 80)
                .syn()
                .hop_limit(63)
                .build();
            let mut body = mtu.to_vec();
            body.extend_from_slice(&client_sent[14..14 + 48]);
            let translated = Packet6::icmp6(NEIGHBOUR, CLIENT, PACKET_TOO_BIG, 0, &body).build();
            let (next_hop, from) = if hook == "XDP" {
                (CLIENT_MAC, UPLINK_MAC)
            } else {
                (UPLINK_MAC, NEIGHBOUR_MAC)
            };
            assert_error_forwarded(
                &dp,
                hook,
                up,
                &error,
                &with_macs(&translated, next_hop, from),
                "the router's",
            );
        }
    });
}

/// Runs `error` through `hook`'s uplink program ("XDP" or "TC") on `up`:
/// it must leave forwarded (`XDP_TX` back out of the uplink, or a TC
/// redirect) as `translated` (its Ethernet addresses those the hook
/// writes) with the hop limit one less, its checksum valid.
fn assert_error_forwarded(
    dp: &TestDatapath,
    hook: &str,
    up: u32,
    error: &[u8],
    translated: &[u8],
    who: &str,
) {
    let (ret, out) = if hook == "XDP" {
        dp.run_xdp_on(up, error)
    } else {
        dp.run_tc_uplink_on(up, error)
    };
    let sent = if hook == "XDP" {
        XDP_TX
    } else {
        TC_ACT_REDIRECT
    };
    assert_eq!(ret, sent, "{hook}, {who}: forwarded");
    assert_eq!(
        out,
        forwarded6(translated),
        "{hook}, {who}: translated, hop limit one less"
    );
    assert!(checksums6_valid(&out), "{hook}, {who}: its checksum");
}

/// A router on the uplink's LAN (no neighbour entry needed: it only sends).
const ROUTER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
/// The router's Ethernet address.
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// `ICMPv6` destination unreachable, port unreachable.
const UNREACH: u8 = 1;
const PORT_UNREACH: u8 = 4;

/// An `ICMPv6` error from `src` to `dst`, of type `ty` and code `code`,
/// bytes 4-7 zero, quoting the IPv6 header and 8 bytes of TCP of `frame`
/// (an Ethernet frame without extension headers).
fn error_quoting(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, frame: &[u8]) -> Vec<u8> {
    let mut body = vec![0; 4];
    body.extend_from_slice(&frame[14..14 + 40 + 8]);
    Packet6::icmp6(src, dst, ty, code, &body).build()
}

#[test]
fn an_error_about_a_via_node_reply_reaches_the_backend_forwarded() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let up = ifindex("upl");
        // The client's own port unreachable (as if from the node's address,
        // which the backend sees) and a router's (its source kept).
        let senders = [
            (CLIENT, CLIENT_MAC, NODE6, "the client's"),
            (ROUTER, ROUTER_MAC, ROUTER, "a router's"),
        ];
        let mut sport = 44_000;
        for hook in ["XDP", "TC"] {
            for (from, from_mac, seen_from, who) in senders {
                sport += 1;
                let syn = from_client(&Packet6::tcp(CLIENT, sport, VIP_NEIGHBOUR, 80).syn());
                let (_, out) = dp.run_tc_uplink_on(up, &syn);
                let port = snat_port(&out);
                let reply = with_macs(
                    &Packet6::tcp(NEIGHBOUR, 8080, NODE6, port).synack().build(),
                    UPLINK_MAC,
                    NEIGHBOUR_MAC,
                );
                assert_eq!(dp.run_tc_uplink_on(up, &reply).0, TC_ACT_REDIRECT);
                // The reply as the client got it (hop limit 63), and as the
                // backend sent it.
                let got = Packet6::tcp(VIP_NEIGHBOUR, 80, CLIENT, sport)
                    .synack()
                    .hop_limit(63)
                    .build();
                let sent = Packet6::tcp(NEIGHBOUR, 8080, NODE6, port)
                    .synack()
                    .hop_limit(63)
                    .build();
                let error = with_macs(
                    &error_quoting(from, VIP_NEIGHBOUR, UNREACH, PORT_UNREACH, &got),
                    UPLINK_MAC,
                    from_mac,
                );
                let translated = error_quoting(seen_from, NEIGHBOUR, UNREACH, PORT_UNREACH, &sent);
                let (next_hop, from) = if hook == "XDP" {
                    (NEIGHBOUR_MAC, UPLINK_MAC)
                } else {
                    (UPLINK_MAC, from_mac)
                };
                assert_error_forwarded(
                    &dp,
                    hook,
                    up,
                    &error,
                    &with_macs(&translated, next_hop, from),
                    who,
                );
            }
        }
    });
}

#[test]
fn an_error_about_a_local_backends_reply_is_translated_for_the_stack() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let up = ifindex("upl");
        for (i, hook) in ["XDP", "TC"].into_iter().enumerate() {
            let sport = 45_000 + u16::try_from(i).unwrap();
            let syn = from_client(&Packet6::tcp(CLIENT, sport, VIP_POD, 80).syn());
            let (_, out) = dp.run_tc_uplink_on(up, &syn);
            assert_eq!(
                src6_of(&out),
                (CLIENT, sport),
                "a local backend sees the client"
            );
            let got = Packet6::tcp(VIP_POD, 80, CLIENT, sport)
                .synack()
                .hop_limit(63)
                .build();
            let sent = Packet6::tcp(POD, 8080, CLIENT, sport)
                .synack()
                .hop_limit(63)
                .build();
            let error = with_macs(
                &error_quoting(CLIENT, VIP_POD, UNREACH, PORT_UNREACH, &got),
                UPLINK_MAC,
                CLIENT_MAC,
            );
            // The client's address stays (the backend knows it); no hop spent.
            let translated = with_macs(
                &error_quoting(CLIENT, POD, UNREACH, PORT_UNREACH, &sent),
                UPLINK_MAC,
                CLIENT_MAC,
            );
            let (pass, (ret, out)) = if hook == "XDP" {
                (XDP_PASS, dp.run_xdp_on(up, &error))
            } else {
                (TC_ACT_OK, dp.run_tc_uplink_on(up, &error))
            };
            assert_eq!(ret, pass, "{hook}: to the stack");
            assert_eq!(out, translated, "{hook}: translated to the backend");
            assert!(checksums6_valid(&out), "{hook}: its checksum");
        }
    });
}
