//! ICMP errors about tracked flows, through the real programs
//! (`BPF_PROG_TEST_RUN`): an error about a forward packet (the backend's or a
//! router's, quoting the translated packet) reaches the client as if about its
//! own packet to the service; an error about a reply (the client's or a
//! router's, quoting the reverse-translated reply) reaches the backend as if
//! about the backend's own reply. The quoted tuple, the outer destination and,
//! where the error came from the translated endpoint itself, the outer source
//! are translated; the IPv4 and ICMP checksums are right, everything else
//! (the quoted L4 checksum, the MTU, TTLs, ids, the quoted payload) is the
//! same. Errors about flows nobody tracks, misaddressed or truncated errors,
//! echo requests and errors quoting ICMP pass untouched and create no state;
//! so do TCP and UDP packets whose header claims more than the IP payload.
//! Exact expected bytes, built from scratch. Needs root.

use std::{collections::HashSet, net::Ipv4Addr};

use lb_common::{FlowKey, Verdict, IPPROTO_ICMP, IPPROTO_TCP};
use lb_tests::{
    fixture::{frontend, program},
    packet::{
        checksum, dst_of, flow_key, icmp_echo, icmp_error, quote, quote_as, src_of, with_byte,
        with_u16, Hook, Packet, TestDatapath,
    },
};
use lb_userspace::desired::Protocol;

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 1);
/// A Service whose backends are on another node (SNAT on the uplink).
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A Service whose backends are pods of this node.
const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
/// A pod of this node that is a client.
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

const UNUSED: [u8; 4] = [0; 4];
/// Destination unreachable (code 3: port unreachable).
const UNREACH: u8 = 3;
const PORT_UNREACH: u8 = 3;
const TIME_EXCEEDED: u8 = 11;
const PARAM_PROBLEM: u8 = 12;
/// Every error type, with a code and bytes 4-7 of its header.
const ERRORS: [(u8, u8, [u8; 4]); 6] = [
    (UNREACH, 1, UNUSED),
    (UNREACH, PORT_UNREACH, UNUSED),
    (UNREACH, 4, [0, 0, 0x05, 0x14]),
    (UNREACH, 13, UNUSED),
    (TIME_EXCEEDED, 0, UNUSED),
    (PARAM_PROBLEM, 0, [20, 0, 0, 0]),
];
/// L4 bytes a router quotes (RFC 792).
const ROUTER_QUOTE: usize = 8;
/// L4 bytes Linux quotes at most (576 bytes in all).
const LINUX_QUOTE: usize = 576 - 20 - 8 - 20;

/// VIP:80/TCP, VIP:53/UDP to REMOTE; `VIP_LOCAL`:80/TCP, :53/UDP to LOCAL.
fn datapath(name: &str) -> TestDatapath {
    let mut dp = TestDatapath::load(name, NODE);
    program(
        &mut dp,
        &[
            frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)]),
            frontend(VIP, 53, Protocol::Udp, &[(REMOTE, 5353, false)]),
            frontend(VIP_LOCAL, 80, Protocol::Tcp, &[(LOCAL, 8080, true)]),
            frontend(VIP_LOCAL, 53, Protocol::Udp, &[(LOCAL, 5353, true)]),
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

/// Asserts that `error` through each of `hooks` comes out as `expected`,
/// counted once as `verdict`, and leaves the flow maps' keys as they were.
fn translates(dp: &TestDatapath, hooks: &[Hook], error: &[u8], expected: &[u8], verdict: Verdict) {
    let keys = flow_keys(dp);
    for &hook in hooks {
        let before = dp.verdict(verdict);
        let out = hook.pass(dp, error);
        assert_eq!(out, expected, "{hook:?}: the translated error");
        assert_eq!(dp.verdict(verdict), before + 1, "{hook:?}: one {verdict:?}");
    }
    assert_eq!(flow_keys(dp), keys, "an ICMP error creates no flow state");
}

/// Asserts that each of `hooks` passes `frame` untouched, translates nothing
/// and leaves the flow maps' keys as they were.
fn untouched(dp: &TestDatapath, hooks: &[Hook], frame: &[u8], what: &str) {
    let keys = flow_keys(dp);
    let counts = (
        dp.verdict(Verdict::Translated),
        dp.verdict(Verdict::Reversed),
    );
    for &hook in hooks {
        assert_eq!(
            hook.pass(dp, frame),
            frame,
            "{what}: {hook:?} must not modify"
        );
    }
    assert_eq!(
        (
            dp.verdict(Verdict::Translated),
            dp.verdict(Verdict::Reversed)
        ),
        counts,
        "{what}: nothing translated"
    );
    assert_eq!(flow_keys(dp), keys, "{what}: no flow state");
}

/// Asserts that both flow maps are empty.
fn no_state_at_all(dp: &TestDatapath) {
    let s = dp.snapshot();
    assert!(s.flows.is_empty() && s.replies.is_empty(), "no flow state");
}

/// A port unreachable from `src` to `dst` quoting `quoted`.
fn port_unreachable(src: Ipv4Addr, dst: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    icmp_error(src, dst, UNREACH, PORT_UNREACH, UNUSED, quoted)
}

/// CLIENT:`port`'s SYN to VIP:80 through XDP, translated (to the node address).
fn snated_syn(dp: &TestDatapath, port: u16) -> Vec<u8> {
    let syn = Hook::Xdp.pass(dp, &Packet::tcp(CLIENT, port, VIP, 80).syn().build());
    assert_eq!((src_of(&syn).0, dst_of(&syn)), (NODE, (REMOTE, 8080)));
    syn
}

#[test]
fn every_error_from_a_snated_backend_reaches_the_client_from_the_service() {
    let dp = datapath("icmp-fwd-backend");
    let syn = snated_syn(&dp, 40000);
    for (icmp_type, code, rest) in ERRORS {
        for len in [ROUTER_QUOTE, 20] {
            let quoted = quote(&syn, len);
            let error = icmp_error(REMOTE, NODE, icmp_type, code, rest, &quoted);
            let translated = quote_as(&quoted, (CLIENT, 40000), (VIP, 80));
            let expected = icmp_error(VIP, CLIENT, icmp_type, code, rest, &translated);
            translates(&dp, &Hook::UPLINKS, &error, &expected, Verdict::Reversed);
        }
    }
}

#[test]
fn fragmentation_needed_from_a_router_reaches_the_client_from_the_router_with_its_mtu() {
    let dp = datapath("icmp-fwd-mtu");
    let syn = snated_syn(&dp, 40001);
    let snat = src_of(&syn).1;
    let synack = Packet::tcp(REMOTE, 8080, NODE, snat).synack().build();
    let _ = Hook::Xdp.pass(&dp, &synack);
    let data = Packet::tcp(CLIENT, 40001, VIP, 80)
        .with_payload(&[0xa5; 1360])
        .ack()
        .build();
    let big = Hook::Xdp.pass(&dp, &data);
    assert_eq!(src_of(&big), (NODE, snat));
    let mtu = [0, 0, 0x05, 0x14]; // 1300
    for len in [ROUTER_QUOTE, LINUX_QUOTE] {
        let quoted = quote(&big, len);
        let error = icmp_error(ROUTER, NODE, UNREACH, 4, mtu, &quoted);
        let translated = quote_as(&quoted, (CLIENT, 40001), (VIP, 80));
        let expected = icmp_error(ROUTER, CLIENT, UNREACH, 4, mtu, &translated);
        translates(&dp, &Hook::UPLINKS, &error, &expected, Verdict::Reversed);
    }
}

#[test]
fn a_port_unreachable_about_a_whole_udp_datagram_reaches_the_client_from_the_service() {
    let dp = datapath("icmp-fwd-udp");
    let query = Packet::udp(CLIENT, 50000, VIP, 53)
        .with_payload(&[0x3c; 500])
        .build();
    let sent = Hook::TcUplink.pass(&dp, &query);
    assert_eq!((src_of(&sent).0, dst_of(&sent)), (NODE, (REMOTE, 5353)));
    for len in [ROUTER_QUOTE, LINUX_QUOTE] {
        let quoted = quote(&sent, len);
        let error = port_unreachable(REMOTE, NODE, &quoted);
        let translated = quote_as(&quoted, (CLIENT, 50000), (VIP, 53));
        let expected = port_unreachable(VIP, CLIENT, &translated);
        translates(&dp, &Hook::UPLINKS, &error, &expected, Verdict::Reversed);
    }
}

#[test]
fn a_port_unreachable_from_a_local_backend_pod_reaches_the_pod_client_from_the_service() {
    let dp = datapath("icmp-fwd-pod");
    let query = Packet::udp(POD, 33000, VIP_LOCAL, 53).build();
    let sent = Hook::Pod.pass(&dp, &query);
    assert_eq!(sent, Packet::udp(POD, 33000, LOCAL, 5353).build());
    for len in [ROUTER_QUOTE, LINUX_QUOTE] {
        let quoted = quote(&sent, len);
        let error = port_unreachable(LOCAL, POD, &quoted);
        let translated = quote_as(&quoted, (POD, 33000), (VIP_LOCAL, 53));
        let expected = port_unreachable(VIP_LOCAL, POD, &translated);
        // It crosses the stack as it is (related to the connection netfilter
        // saw), and is translated on its way into the client pod.
        untouched(
            &dp,
            &[Hook::Pod],
            &error,
            "an error about a pod client's packet",
        );
        translates(&dp, &[Hook::Egress], &error, &expected, Verdict::Reversed);
    }
}

/// CLIENT:40002's SYN to VIP:80 answered: (the SNAT port, the reply as the client gets it).
fn snated_reply(dp: &TestDatapath) -> (u16, Vec<u8>) {
    let snat = src_of(&snated_syn(dp, 40002)).1;
    let synack = Packet::tcp(REMOTE, 8080, NODE, snat).synack().build();
    let reply = Hook::Xdp.pass(dp, &synack);
    assert_eq!(reply, Packet::tcp(VIP, 80, CLIENT, 40002).synack().build());
    (snat, reply)
}

#[test]
fn an_error_from_the_client_about_a_reply_reaches_the_snated_backend_from_the_node() {
    let dp = datapath("icmp-rev-client");
    let (snat, reply) = snated_reply(&dp);
    for (icmp_type, code, rest) in ERRORS {
        for len in [ROUTER_QUOTE, 20] {
            let quoted = quote(&reply, len);
            let error = icmp_error(CLIENT, VIP, icmp_type, code, rest, &quoted);
            let translated = quote_as(&quoted, (REMOTE, 8080), (NODE, snat));
            let expected = icmp_error(NODE, REMOTE, icmp_type, code, rest, &translated);
            translates(&dp, &Hook::UPLINKS, &error, &expected, Verdict::Translated);
        }
    }
}

#[test]
fn time_exceeded_from_a_router_about_a_reply_reaches_the_snated_backend_from_the_router() {
    let dp = datapath("icmp-rev-router");
    let (snat, reply) = snated_reply(&dp);
    for len in [ROUTER_QUOTE, 20] {
        let quoted = quote(&reply, len);
        let error = icmp_error(ROUTER, VIP, TIME_EXCEEDED, 0, UNUSED, &quoted);
        let translated = quote_as(&quoted, (REMOTE, 8080), (NODE, snat));
        let expected = icmp_error(ROUTER, REMOTE, TIME_EXCEEDED, 0, UNUSED, &translated);
        translates(&dp, &Hook::UPLINKS, &error, &expected, Verdict::Translated);
    }
}

#[test]
fn an_error_about_a_local_backends_reply_reaches_the_backend_from_the_client_itself() {
    let dp = datapath("icmp-rev-local");
    let sent = Hook::Xdp.pass(&dp, &Packet::udp(CLIENT, 50001, VIP_LOCAL, 53).build());
    assert_eq!(sent, Packet::udp(CLIENT, 50001, LOCAL, 5353).build());
    let answer = Packet::udp(LOCAL, 5353, CLIENT, 50001).build();
    assert_eq!(Hook::Pod.pass(&dp, &answer), answer);
    let reply = Hook::Egress.pass(&dp, &answer);
    assert_eq!(reply, Packet::udp(VIP_LOCAL, 53, CLIENT, 50001).build());
    for (icmp_type, code, rest) in [
        (UNREACH, PORT_UNREACH, UNUSED),
        (PARAM_PROBLEM, 0, [8, 0, 0, 0]),
    ] {
        for len in [ROUTER_QUOTE, LINUX_QUOTE] {
            let quoted = quote(&reply, len);
            let error = icmp_error(CLIENT, VIP_LOCAL, icmp_type, code, rest, &quoted);
            let translated = quote_as(&quoted, (LOCAL, 5353), (CLIENT, 50001));
            let expected = icmp_error(CLIENT, LOCAL, icmp_type, code, rest, &translated);
            translates(&dp, &Hook::UPLINKS, &error, &expected, Verdict::Translated);
        }
    }
}

#[test]
fn an_error_from_a_pod_client_about_a_reply_leaves_the_pod_toward_the_backend() {
    let dp = datapath("icmp-rev-pod");
    let sent = Hook::Pod.pass(&dp, &Packet::udp(POD, 33001, VIP, 53).build());
    assert_eq!(sent, Packet::udp(POD, 33001, REMOTE, 5353).build());
    let answer = Packet::udp(REMOTE, 5353, POD, 33001).build();
    assert_eq!(Hook::Xdp.pass(&dp, &answer), answer);
    let reply = Hook::Egress.pass(&dp, &answer);
    assert_eq!(reply, Packet::udp(VIP, 53, POD, 33001).build());
    let quoted = quote(&reply, ROUTER_QUOTE);
    let error = port_unreachable(POD, VIP, &quoted);
    let translated = quote_as(&quoted, (REMOTE, 5353), (POD, 33001));
    let expected = port_unreachable(POD, REMOTE, &translated);
    translates(&dp, &[Hook::Pod], &error, &expected, Verdict::Translated);
}

#[test]
fn an_error_about_a_flow_nobody_tracks_passes_untouched_and_creates_no_state() {
    let dp = datapath("icmp-unknown");
    for (what, src, dst, quoted) in [
        (
            "forward, SNATed",
            REMOTE,
            NODE,
            Packet::tcp(NODE, 2000, REMOTE, 8080).syn(),
        ),
        (
            "reply",
            CLIENT,
            VIP,
            Packet::tcp(VIP, 80, CLIENT, 40000).synack(),
        ),
        (
            "to a service",
            ROUTER,
            CLIENT,
            Packet::udp(CLIENT, 50000, VIP, 53),
        ),
        (
            "forward, pod",
            LOCAL,
            POD,
            Packet::udp(POD, 33000, LOCAL, 5353),
        ),
    ] {
        let error = port_unreachable(src, dst, &quote(&quoted.build(), 8));
        untouched(&dp, &Hook::ALL, &error, what);
    }
    no_state_at_all(&dp);
}

#[test]
fn an_error_not_addressed_to_the_quoted_source_passes_untouched() {
    let dp = datapath("icmp-misaddressed");
    let (snat, reply) = snated_reply(&dp);
    let forward = Packet::tcp(NODE, snat, REMOTE, 8080).ack().build();
    for (what, src, dst, quoted) in [
        ("forward, to the client", REMOTE, CLIENT, quote(&forward, 8)),
        ("forward, to another", REMOTE, OTHER, quote(&forward, 8)),
        ("reply, to the node", CLIENT, NODE, quote(&reply, 8)),
        ("reply, to the backend", CLIENT, REMOTE, quote(&reply, 8)),
    ] {
        let error = port_unreachable(src, dst, &quoted);
        untouched(&dp, &Hook::ALL, &error, what);
    }
}

#[test]
fn an_error_quoting_less_than_eight_bytes_of_the_transport_header_passes_untouched() {
    let dp = datapath("icmp-short");
    let (snat, reply) = snated_reply(&dp);
    let forward = Packet::tcp(NODE, snat, REMOTE, 8080).ack().build();
    for len in [0, 4, 7] {
        let error = port_unreachable(REMOTE, NODE, &quote(&forward, len));
        untouched(&dp, &Hook::ALL, &error, &format!("forward, {len} bytes"));
        let error = port_unreachable(CLIENT, VIP, &quote(&reply, len));
        untouched(&dp, &Hook::ALL, &error, &format!("reply, {len} bytes"));
    }
    // A whole error whose frame ends early (its total length beyond the frame).
    let error = port_unreachable(REMOTE, NODE, &quote(&forward, 8));
    for cut in [1, 4] {
        untouched(
            &dp,
            &Hook::ALL,
            &error[..error.len() - cut],
            "a truncated frame",
        );
    }
}

#[test]
fn an_echo_request_to_a_service_address_is_passed_to_the_stack_untouched() {
    let dp = datapath("icmp-echo");
    let (_, reply) = snated_reply(&dp);
    for (what, src, dst) in [
        ("to the service", CLIENT, VIP),
        ("to the local service", CLIENT, VIP_LOCAL),
        ("from a pod", POD, VIP),
        ("to the node", CLIENT, NODE),
    ] {
        untouched(&dp, &Hook::ALL, &icmp_echo(src, dst), what);
    }
    // Echo data that reads like a quote of the tracked flow's reply is data.
    for (what, icmp_type) in [("request", 8), ("reply", 0)] {
        let echo = icmp_error(CLIENT, VIP, icmp_type, 0, [0, 1, 0, 1], &quote(&reply, 8));
        untouched(
            &dp,
            &Hook::ALL,
            &echo,
            &format!("an echo {what} with a flow's tuple"),
        );
    }
}

#[test]
fn an_error_quoting_icmp_passes_untouched() {
    let dp = datapath("icmp-about-icmp");
    let syn = snated_syn(&dp, 40003);
    // The flow's state as if it were ICMP's too: only refusing to read an
    // ICMP quote keeps the error below untouched.
    let (node, snat) = src_of(&syn);
    let client = flow_key(CLIENT, 40003, VIP, 80, IPPROTO_TCP);
    let reply = flow_key(REMOTE, 8080, node, snat, IPPROTO_TCP);
    let (ct, rev) = (dp.conntrack(&client).unwrap(), dp.reverse(&reply).unwrap());
    let icmp = |key: FlowKey| FlowKey {
        proto: IPPROTO_ICMP,
        ..key
    };
    dp.insert_conntrack(&icmp(client), &ct);
    dp.insert_reverse(&icmp(reply), &rev);
    // The translated SYN as if it were ICMP: its first 8 bytes still look
    // like the tracked flow's ports.
    let mut as_icmp = quote(&syn, 8);
    as_icmp[9] = 1;
    as_icmp[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&as_icmp[..20]);
    as_icmp[10..12].copy_from_slice(&c.to_be_bytes());
    let error = port_unreachable(REMOTE, NODE, &as_icmp);
    untouched(&dp, &Hook::ALL, &error, "ICMP shaped like the flow");
    let echo = icmp_echo(NODE, REMOTE);
    let error = icmp_error(REMOTE, NODE, UNREACH, 1, UNUSED, &quote(&echo, 8));
    untouched(&dp, &Hook::ALL, &error, "an echo request");
}

#[test]
fn a_tcp_segment_whose_data_offset_exceeds_the_ip_payload_is_passed_untouched() {
    let dp = datapath("malformed-tcp");
    // Headers of 24 and 60 bytes in 20 (SYN), of 40 in 38 (data) bytes of payload.
    let syn = Packet::tcp(CLIENT, 40004, VIP, 80).syn().build();
    let data = Packet::tcp(CLIENT, 40005, VIP_LOCAL, 80).ack().build();
    for (what, frame) in [
        ("SYN, doff 6", with_byte(&syn, 46, 0x60)),
        ("SYN, doff 15", with_byte(&syn, 46, 0xf0)),
        ("data, doff 10", with_byte(&data, 46, 0xa0)),
    ] {
        untouched(&dp, &Hook::ALL, &frame, what);
    }
    no_state_at_all(&dp);
}

#[test]
fn a_udp_datagram_whose_length_exceeds_the_ip_payload_is_passed_untouched() {
    let dp = datapath("malformed-udp");
    let query = Packet::udp(CLIENT, 50002, VIP, 53).build();
    let local = Packet::udp(CLIENT, 50003, VIP_LOCAL, 53).build();
    let len = u16::try_from(query.len() - 34).unwrap();
    for (what, frame) in [
        ("one byte more", with_u16(&query, 38, len + 1)),
        ("65535", with_u16(&query, 38, 0xffff)),
        ("local, one byte more", with_u16(&local, 38, len + 1)),
    ] {
        untouched(&dp, &Hook::ALL, &frame, what);
    }
    no_state_at_all(&dp);
}
