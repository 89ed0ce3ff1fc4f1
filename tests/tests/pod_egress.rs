//! The program at TC egress of pod interfaces (`lb_tc_pod_egress`), on the
//! way into a pod, through the real programs (`BPF_PROG_TEST_RUN`): a reply
//! of a pod's flow that arrives untranslated (over an overlay, its backend
//! on another node) is translated back to come from the Service, TCP and
//! UDP, exact bytes; so is an ICMP error about the pod's own packet. A reply
//! the uplink already translated passes untouched (nothing is translated
//! twice), and so does everything that is not a reply of a tracked flow: it
//! never starts a flow, never drops the node's own address, and an error
//! about a reply (which goes to a backend) is not its business. Needs root.

use std::{collections::HashSet, net::Ipv4Addr};

use lb_common::{FlowKey, Verdict};
use lb_tests::{
    fixture::{frontend, program},
    packet::{
        arp, icmp_echo, icmp_error, ipv6_tcp, quote, quote_as, Packet, TestDatapath, TC_ACT_OK,
        XDP_PASS,
    },
};
use lb_userspace::desired::Protocol;

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// A Service whose only backend is a pod of another node.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The backend, on another node.
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
/// A pod of this node, the client.
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
/// Destination unreachable, port unreachable.
const UNREACH: u8 = 3;
const PORT_UNREACH: u8 = 3;
/// L4 bytes a router quotes (RFC 792).
const ROUTER_QUOTE: usize = 8;

/// VIP:80/TCP to REMOTE:8080, VIP:53/UDP to REMOTE:5353.
fn datapath(name: &str) -> TestDatapath {
    let mut dp = TestDatapath::load(name, NODE);
    program(
        &mut dp,
        &[
            frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)]),
            frontend(VIP, 53, Protocol::Udp, &[(REMOTE, 5353, false)]),
        ],
    );
    dp
}

/// Keys of both flow maps.
fn flow_keys(dp: &TestDatapath) -> (HashSet<FlowKey>, HashSet<FlowKey>) {
    let s = dp.snapshot();
    (
        s.flows.iter().map(|(k, _)| *k).collect(),
        s.replies.keys().copied().collect(),
    )
}

/// Every verdict's count.
fn verdicts(dp: &TestDatapath) -> Vec<u64> {
    [
        Verdict::Translated,
        Verdict::Reversed,
        Verdict::Passed,
        Verdict::Dropped,
        Verdict::Invalid,
        Verdict::Error,
    ]
    .iter()
    .map(|v| dp.verdict(*v))
    .collect()
}

/// Sends `packet` out of POD through the pod program (ingress of its
/// interface) and asserts it leaves translated to `expected`.
fn leaves_pod(dp: &TestDatapath, packet: &Packet, expected: &Packet) {
    let (ret, out) = dp.run_tc(&packet.build());
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(out, expected.build(), "the pod's packet, translated");
}

/// Runs `frame` into the pod; asserts it passes; the frame after.
fn into_pod(dp: &TestDatapath, frame: &[u8]) -> Vec<u8> {
    let (ret, out) = dp.run_tc_egress(frame);
    assert_eq!(
        ret, TC_ACT_OK,
        "the egress program passes what goes into a pod"
    );
    out
}

/// Asserts `frame` goes into the pod untouched, counted nowhere, no flow state made.
fn untouched(dp: &TestDatapath, frame: &[u8], what: &str) {
    let (keys, counts) = (flow_keys(dp), verdicts(dp));
    assert_eq!(into_pod(dp, frame), frame, "{what}: untouched");
    assert_eq!(verdicts(dp), counts, "{what}: counted nowhere");
    assert_eq!(flow_keys(dp), keys, "{what}: no flow state");
}

#[test]
fn a_reply_arriving_for_a_pod_is_reverse_translated() {
    let dp = datapath("egress-reply");
    // TCP: the pod's SYN leaves translated (no SNAT: pod addresses route).
    leaves_pod(
        &dp,
        &Packet::tcp(POD, 40_000, VIP, 80).syn(),
        &Packet::tcp(POD, 40_000, REMOTE, 8080).syn(),
    );
    let keys = flow_keys(&dp);
    let reversed = dp.verdict(Verdict::Reversed);
    for (reply, restored) in [
        (
            Packet::tcp(REMOTE, 8080, POD, 40_000).synack(),
            Packet::tcp(VIP, 80, POD, 40_000).synack(),
        ),
        (
            Packet::tcp(REMOTE, 8080, POD, 40_000).with_payload(b"HTTP/1.1 200 OK\r\n\r\n"),
            Packet::tcp(VIP, 80, POD, 40_000).with_payload(b"HTTP/1.1 200 OK\r\n\r\n"),
        ),
        // UDP: the datagram's flow is made by the pod's first datagram below.
    ] {
        assert_eq!(into_pod(&dp, &reply.build()), restored.build());
    }
    assert_eq!(dp.verdict(Verdict::Reversed), reversed + 2);
    assert_eq!(flow_keys(&dp), keys, "replies make no new flow state");

    leaves_pod(
        &dp,
        &Packet::udp(POD, 33_000, VIP, 53),
        &Packet::udp(POD, 33_000, REMOTE, 5353),
    );
    let answer = Packet::udp(REMOTE, 5353, POD, 33_000).with_payload(b"an answer");
    let restored = Packet::udp(VIP, 53, POD, 33_000).with_payload(b"an answer");
    assert_eq!(into_pod(&dp, &answer.build()), restored.build());
    // A datagram without a checksum keeps none.
    let bare = answer.clone().zero_udp_checksum();
    assert_eq!(
        into_pod(&dp, &bare.build()),
        restored.zero_udp_checksum().build()
    );
    assert_eq!(dp.verdict(Verdict::Reversed), reversed + 4);
}

/// A pod's reply crosses the uplink untouched (netfilter sees it as the
/// connection it saw leave the pod), is translated once on its way into the
/// pod, and what is translated already passes untouched.
#[test]
fn a_reply_crosses_the_uplink_untouched_and_is_translated_once_into_the_pod() {
    let dp = datapath("egress-twice");
    leaves_pod(
        &dp,
        &Packet::tcp(POD, 40_001, VIP, 80).syn(),
        &Packet::tcp(POD, 40_001, REMOTE, 8080).syn(),
    );
    leaves_pod(
        &dp,
        &Packet::udp(POD, 33_001, VIP, 53),
        &Packet::udp(POD, 33_001, REMOTE, 5353),
    );
    // On a routed layout the reply comes in on the uplink, which leaves it
    // to the stack; it goes into the pod from the Service.
    for (reply, restored) in [
        (
            Packet::tcp(REMOTE, 8080, POD, 40_001).synack(),
            Packet::tcp(VIP, 80, POD, 40_001).synack(),
        ),
        (
            Packet::udp(REMOTE, 5353, POD, 33_001),
            Packet::udp(VIP, 53, POD, 33_001),
        ),
    ] {
        let (ret, at_uplink) = dp.run_xdp(&reply.build());
        assert_eq!(
            (ret, &at_uplink),
            (XDP_PASS, &reply.build()),
            "untouched at the uplink"
        );
        let into = into_pod(&dp, &at_uplink);
        assert_eq!(into, restored.build(), "translated into the pod");
        untouched(&dp, &into, "a reply translated already");
    }
    assert_eq!(dp.verdict(Verdict::Reversed), 2, "each reply counted once");
}

#[test]
fn packets_that_are_no_replies_pass_untouched() {
    let dp = datapath("egress-unrelated").with_ipv6();
    leaves_pod(
        &dp,
        &Packet::tcp(POD, 40_002, VIP, 80).syn(),
        &Packet::tcp(POD, 40_002, REMOTE, 8080).syn(),
    );
    for (what, frame) in [
        // The backend, to another port of the pod: no flow of the pod's.
        (
            "the backend to another pod port",
            Packet::tcp(REMOTE, 8080, POD, 40_003).synack().build(),
        ),
        // A Service's frontend as destination: the egress program starts no flow.
        (
            "a SYN to a frontend",
            Packet::tcp(CLIENT, 41_000, VIP, 80).syn().build(),
        ),
        (
            "a datagram to a frontend",
            Packet::udp(POD, 33_009, VIP, 53).build(),
        ),
        // The flow's own packet, as the backend would see it.
        (
            "the pod's own packet",
            Packet::tcp(POD, 40_002, REMOTE, 8080).ack().build(),
        ),
        // The node talks to its pods: its address is no spoof on the way in.
        (
            "the node to a pod",
            Packet::tcp(NODE, 10_250, POD, 8080).syn().build(),
        ),
        (
            "a client to a pod",
            Packet::udp(CLIENT, 5000, POD, 5353).build(),
        ),
        ("an echo request", icmp_echo(CLIENT, POD)),
        ("ARP", arp()),
        ("IPv6", ipv6_tcp()),
    ] {
        untouched(&dp, &frame, what);
    }
}

#[test]
fn an_icmp_error_about_a_pods_packet_is_translated() {
    let dp = datapath("egress-icmp");
    let sent = Packet::udp(POD, 33_004, REMOTE, 5353);
    leaves_pod(&dp, &Packet::udp(POD, 33_004, VIP, 53), &sent);
    let quoted = quote(&sent.build(), ROUTER_QUOTE);
    let restored_quote = quote_as(&quoted, (POD, 33_004), (VIP, 53));
    let keys = flow_keys(&dp);
    let reversed = dp.verdict(Verdict::Reversed);
    // The backend's port unreachable: from the Service, about POD -> Service.
    let error = icmp_error(REMOTE, POD, UNREACH, PORT_UNREACH, [0; 4], &quoted);
    let expected = icmp_error(VIP, POD, UNREACH, PORT_UNREACH, [0; 4], &restored_quote);
    assert_eq!(into_pod(&dp, &error), expected);
    // A router's (the node's own, a hop beyond) keeps its source.
    let error = icmp_error(ROUTER, POD, UNREACH, 4, [0, 0, 0x05, 0x14], &quoted);
    let expected = icmp_error(ROUTER, POD, UNREACH, 4, [0, 0, 0x05, 0x14], &restored_quote);
    assert_eq!(into_pod(&dp, &error), expected);
    assert_eq!(dp.verdict(Verdict::Reversed), reversed + 2);
    assert_eq!(flow_keys(&dp), keys, "an ICMP error makes no flow state");

    // An error about a reply goes to the backend: the pod program (at the
    // ingress of the client pod's interface) translates it, the egress
    // program leaves it alone.
    let reply_as_received = Packet::udp(VIP, 53, POD, 33_004).build();
    let about_reply = icmp_error(
        POD,
        VIP,
        UNREACH,
        PORT_UNREACH,
        [0; 4],
        &quote(&reply_as_received, ROUTER_QUOTE),
    );
    untouched(&dp, &about_reply, "an error about a reply");
    let (ret, out) = dp.run_tc(&about_reply);
    assert_eq!(ret, TC_ACT_OK);
    assert_ne!(out, about_reply, "the pod program translates it");
}
