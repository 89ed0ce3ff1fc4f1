//! IPv4 fragments of datagrams to and from Services, through the real
//! programs (`BPF_PROG_TEST_RUN`). A datagram in fragments is translated
//! fragment by fragment, in order: the first (which carries the L4 header)
//! gets its addresses, ports and L4 checksum translated like any packet, and
//! every later one its addresses and IP header checksum only, its payload
//! untouched. What comes out is exactly the fragments of the translated
//! datagram, as its sender would have cut them, built from scratch. Both
//! ways (requests to a local backend and, translated to the node address,
//! to a remote one; replies from each), on every hook. A later fragment
//! whose first fragment was not seen, or of a datagram nobody tracks, passes
//! untouched and creates no state; a first fragment may carry a UDP length
//! beyond its own payload, an unfragmented datagram may not; a later
//! fragment moves no TCP state. Needs root.

use std::{collections::HashSet, net::Ipv4Addr};

use lb_common::{conntrack::CtState, FlowKey, Verdict, IPPROTO_UDP};
use lb_tests::{
    fixture::{frontend, program},
    packet::{dst_of, flow_key, src_of, with_ip_checksum, with_u16, Hook, Packet, TestDatapath},
};
use lb_userspace::desired::Protocol;

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// A Service whose backend is on another node (SNAT on the uplink).
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A Service whose backend is a pod of this node.
const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
/// A pod of this node that is a client.
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

/// The Services' UDP port and their backends' target port.
const PORT: u16 = 53;
const TARGET: u16 = 5353;
/// IP payload per fragment on a 1500-byte link.
const FRAGMENT: usize = 1480;
/// Payload of the datagrams in three fragments: 1480 + 1480 + 3 bytes of IP
/// payload (8 bytes of UDP header included), the last shorter than a UDP header.
const PAYLOAD: usize = 2 * FRAGMENT + 3 - 8;

/// Asserts two frames are the same bytes; on a difference, says where
/// (offsets from the frame's start) rather than printing both frames.
#[track_caller]
fn same_frame(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let differ: Vec<usize> = (0..got.len().min(want.len()))
        .filter(|&i| got[i] != want[i])
        .collect();
    let show = |f: &[u8]| {
        differ
            .iter()
            .take(12)
            .map(|&i| format!("{i}:{:02x}", f[i]))
            .collect::<Vec<_>>()
            .join(" ")
    };
    panic!(
        "{what}: {} bytes, expected {}; {} bytes differ: got [{}], expected [{}]",
        got.len(),
        want.len(),
        differ.len(),
        show(got),
        show(want)
    );
}

/// VIP:53/UDP to REMOTE:5353; `VIP_LOCAL`:53/UDP to LOCAL:5353.
fn datapath(name: &str) -> TestDatapath {
    let mut dp = TestDatapath::load(name, NODE);
    program(
        &mut dp,
        &[
            frontend(VIP, PORT, Protocol::Udp, &[(REMOTE, TARGET, false)]),
            frontend(VIP_LOCAL, PORT, Protocol::Udp, &[(LOCAL, TARGET, true)]),
        ],
    );
    dp
}

/// A datagram's bytes: every byte a function of its place, so a fragment
/// moved or changed shows.
fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i * 7 % 251).unwrap())
        .collect()
}

/// A UDP datagram of [`PAYLOAD`] bytes with IP id `id`.
fn datagram(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), id: u16) -> Packet {
    Packet::udp(src.0, src.1, dst.0, dst.1)
        .with_payload(&payload(PAYLOAD))
        .with_ip_id(id)
}

/// Keys of both flow maps, and the number of datagrams remembered.
fn state(dp: &TestDatapath) -> (HashSet<FlowKey>, HashSet<FlowKey>, usize) {
    let s = dp.snapshot();
    (
        s.flows.iter().map(|(k, _)| *k).collect(),
        s.replies.keys().copied().collect(),
        dp.fragments_remembered(),
    )
}

/// Sends the fragments of `sent` through `hook` in order and asserts each
/// comes out as the same fragment of `expected`, counted once as `verdict`.
fn translated_in_order(
    dp: &TestDatapath,
    hook: Hook,
    sent: &[Vec<u8>],
    expected: &[Vec<u8>],
    verdict: Verdict,
) {
    assert_eq!(sent.len(), expected.len());
    for (i, (fragment, want)) in sent.iter().zip(expected).enumerate() {
        let before = dp.verdict(verdict);
        let out = hook.pass(dp, fragment);
        same_frame(
            &out,
            want,
            &format!("{hook:?}: fragment {i} of {}", sent.len()),
        );
        assert_eq!(
            dp.verdict(verdict),
            before + 1,
            "{hook:?}: fragment {i} is one {verdict:?}"
        );
        if i > 0 {
            assert!(
                out[34..] == fragment[34..],
                "{hook:?}: fragment {i}'s payload is untouched"
            );
        }
    }
}

/// Asserts that each of `hooks` passes `frame` untouched, translates nothing
/// and leaves the flow maps and the remembered datagrams as they were.
fn untouched(dp: &TestDatapath, hooks: &[Hook], frame: &[u8], what: &str) {
    let before = state(dp);
    let counts = (
        dp.verdict(Verdict::Translated),
        dp.verdict(Verdict::Reversed),
    );
    for &hook in hooks {
        same_frame(
            &hook.pass(dp, frame),
            frame,
            &format!("{what}: {hook:?} must not modify"),
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
    assert_eq!(state(dp), before, "{what}: no state");
}

#[test]
fn a_datagram_in_fragments_to_a_local_backend_is_translated_fragment_by_fragment() {
    let dp = datapath("frag-local");
    for (hook, port) in [(Hook::Xdp, 50000), (Hook::TcUplink, 50001)] {
        let sent = datagram((CLIENT, port), (VIP_LOCAL, PORT), 0x4242).fragments(FRAGMENT);
        assert_eq!(sent.len(), 3);
        let expected = datagram((CLIENT, port), (LOCAL, TARGET), 0x4242).fragments(FRAGMENT);
        translated_in_order(&dp, hook, &sent, &expected, Verdict::Translated);
        let client = flow_key(CLIENT, port, VIP_LOCAL, PORT, IPPROTO_UDP);
        assert!(
            dp.conntrack(&client).is_some(),
            "{hook:?}: the flow is tracked"
        );
    }
    assert_eq!(
        dp.snapshot().flows.len(),
        2,
        "one flow per datagram's ports"
    );
}

#[test]
fn a_datagram_in_fragments_to_a_remote_backend_is_snated_fragment_by_fragment() {
    let dp = datapath("frag-remote");
    for (hook, port) in [(Hook::Xdp, 50010), (Hook::TcUplink, 50011)] {
        let sent = datagram((CLIENT, port), (VIP, PORT), 0x5151).fragments(FRAGMENT);
        let first = hook.pass(&dp, &sent[0]);
        let (node, snat) = src_of(&first);
        assert_eq!(
            (node, dst_of(&first)),
            (NODE, (REMOTE, TARGET)),
            "{hook:?}: SNATed"
        );
        let expected = datagram((NODE, snat), (REMOTE, TARGET), 0x5151).fragments(FRAGMENT);
        same_frame(
            &first,
            &expected[0],
            &format!("{hook:?}: the first fragment"),
        );
        translated_in_order(&dp, hook, &sent[1..], &expected[1..], Verdict::Translated);
        let client = flow_key(CLIENT, port, VIP, PORT, IPPROTO_UDP);
        let ct = dp.conntrack(&client).expect("the flow is tracked");
        assert_eq!(
            ct.snat_port,
            snat.to_be(),
            "{hook:?}: one SNAT port for the datagram"
        );
    }
}

#[test]
fn a_reply_in_fragments_is_translated_back_fragment_by_fragment() {
    let dp = datapath("frag-reply");
    // From the local backend: the reply crosses the stack as it left the
    // pod and is translated where it leaves the node.
    let request = datagram((CLIENT, 50020), (VIP_LOCAL, PORT), 1).fragments(FRAGMENT);
    for fragment in &request {
        let _ = Hook::Xdp.pass(&dp, fragment);
    }
    let reply = datagram((LOCAL, TARGET), (CLIENT, 50020), 0x6001).fragments(FRAGMENT);
    let expected = datagram((VIP_LOCAL, PORT), (CLIENT, 50020), 0x6001).fragments(FRAGMENT);
    untouched(&dp, &[Hook::Pod], &reply[0], "a local pod's reply");
    translated_in_order(&dp, Hook::Egress, &reply, &expected, Verdict::Reversed);
    // From the remote backend to the node's SNAT port: back through the uplink.
    for (hook, port, id) in [(Hook::Xdp, 50021, 0x6002), (Hook::TcUplink, 50022, 0x6003)] {
        let request = datagram((CLIENT, port), (VIP, PORT), 2).fragments(FRAGMENT);
        let snat = src_of(&hook.pass(&dp, &request[0])).1;
        for fragment in &request[1..] {
            let _ = hook.pass(&dp, fragment);
        }
        let reply = datagram((REMOTE, TARGET), (NODE, snat), id).fragments(FRAGMENT);
        let expected = datagram((VIP, PORT), (CLIENT, port), id).fragments(FRAGMENT);
        translated_in_order(&dp, hook, &reply, &expected, Verdict::Reversed);
    }
}

#[test]
fn fragments_from_a_pod_are_translated_on_the_pod_hook() {
    let dp = datapath("frag-pod");
    // To a local backend: both ways through pod interfaces.
    let sent = datagram((POD, 33000), (VIP_LOCAL, PORT), 0x7001).fragments(FRAGMENT);
    let expected = datagram((POD, 33000), (LOCAL, TARGET), 0x7001).fragments(FRAGMENT);
    translated_in_order(&dp, Hook::Pod, &sent, &expected, Verdict::Translated);
    let reply = datagram((LOCAL, TARGET), (POD, 33000), 0x7002).fragments(FRAGMENT);
    let expected = datagram((VIP_LOCAL, PORT), (POD, 33000), 0x7002).fragments(FRAGMENT);
    translated_in_order(&dp, Hook::Egress, &reply, &expected, Verdict::Reversed);
    // To a remote backend (a pod's address is routable: no SNAT); the reply
    // comes back through the uplink and the stack, into the pod.
    let sent = datagram((POD, 33001), (VIP, PORT), 0x7003).fragments(FRAGMENT);
    let expected = datagram((POD, 33001), (REMOTE, TARGET), 0x7003).fragments(FRAGMENT);
    translated_in_order(&dp, Hook::Pod, &sent, &expected, Verdict::Translated);
    let reply = datagram((REMOTE, TARGET), (POD, 33001), 0x7004).fragments(FRAGMENT);
    let expected = datagram((VIP, PORT), (POD, 33001), 0x7004).fragments(FRAGMENT);
    untouched(
        &dp,
        &Hook::UPLINKS,
        &reply[0],
        "a pod's reply on the uplink",
    );
    translated_in_order(&dp, Hook::Egress, &reply, &expected, Verdict::Reversed);
}

#[test]
fn a_later_fragment_before_its_first_passes_untouched_and_creates_no_state() {
    let dp = datapath("frag-early");
    let sent = datagram((CLIENT, 50030), (VIP_LOCAL, PORT), 0x8001).fragments(FRAGMENT);
    untouched(&dp, &Hook::ALL, &sent[1], "the second fragment first");
    untouched(&dp, &Hook::ALL, &sent[2], "the last fragment first");
    let s = dp.snapshot();
    assert!(s.flows.is_empty() && s.replies.is_empty(), "no flow state");
    assert_eq!(dp.fragments_remembered(), 0, "no datagram remembered");
    // Once the first arrives, the rest of the datagram follows it.
    let expected = datagram((CLIENT, 50030), (LOCAL, TARGET), 0x8001).fragments(FRAGMENT);
    translated_in_order(&dp, Hook::Xdp, &sent, &expected, Verdict::Translated);
    // A reply's later fragment before its first: untouched as well.
    let reply = datagram((LOCAL, TARGET), (CLIENT, 50030), 0x8002).fragments(FRAGMENT);
    untouched(
        &dp,
        &Hook::ALL,
        &reply[1],
        "a reply's second fragment first",
    );
}

#[test]
fn a_later_fragment_of_a_datagram_nobody_tracks_passes_untouched() {
    let dp = datapath("frag-unknown");
    // A tracked flow whose datagram in fragments went through.
    let sent = datagram((CLIENT, 50040), (VIP_LOCAL, PORT), 0x9001).fragments(FRAGMENT);
    for fragment in &sent {
        let _ = Hook::Xdp.pass(&dp, fragment);
    }
    let later = |src: Ipv4Addr, dst: Ipv4Addr, id: u16| {
        datagram((src, 50040), (dst, PORT), id).fragments(FRAGMENT)[1].clone()
    };
    for (what, frame) in [
        ("another id", later(CLIENT, VIP_LOCAL, 0x9002)),
        ("another source", later(POD, VIP_LOCAL, 0x9001)),
        ("another destination", later(CLIENT, VIP, 0x9001)),
        (
            "to nobody's address",
            later(CLIENT, Ipv4Addr::new(10, 96, 0, 99), 0x9001),
        ),
        (
            "TCP with the datagram's addresses and id",
            Packet::tcp(CLIENT, 50040, VIP_LOCAL, PORT)
                .with_payload(&payload(PAYLOAD))
                .with_ip_id(0x9001)
                .fragments(FRAGMENT)[1]
                .clone(),
        ),
    ] {
        untouched(&dp, &Hook::ALL, &frame, what);
    }
    // A datagram that is not ours: none of its fragments is remembered or touched.
    let other = datagram((CLIENT, 50041), (VIP_LOCAL, 54), 0x9003).fragments(FRAGMENT);
    for (i, fragment) in other.iter().enumerate() {
        untouched(
            &dp,
            &Hook::ALL,
            fragment,
            &format!("fragment {i} to a port no Service has"),
        );
    }
}

#[test]
fn a_first_fragment_that_is_not_translated_ends_what_its_id_meant() {
    let dp = datapath("frag-reused-id");
    let sent = datagram((CLIENT, 50050), (VIP_LOCAL, PORT), 0xa001).fragments(FRAGMENT);
    for fragment in &sent {
        let _ = Hook::Xdp.pass(&dp, fragment);
    }
    // The sender's id comes round again, on a datagram that is not ours:
    // its later fragments must not take the earlier datagram's ports.
    let other = datagram((CLIENT, 50051), (VIP_LOCAL, 54), 0xa001).fragments(FRAGMENT);
    for (i, fragment) in other.iter().enumerate() {
        same_frame(
            &Hook::Xdp.pass(&dp, fragment),
            fragment,
            &format!("fragment {i} of the other"),
        );
    }
}

#[test]
fn a_first_fragment_may_carry_a_udp_length_beyond_its_payload_but_a_whole_datagram_may_not() {
    let dp = datapath("frag-udp-length");
    let first = datagram((CLIENT, 50060), (VIP_LOCAL, PORT), 0xb001).fragments(FRAGMENT)[0].clone();
    let udp_len = u16::from_be_bytes([first[38], first[39]]);
    assert!(
        usize::from(udp_len) > first.len() - 34,
        "the datagram goes on"
    );
    // The same frame with the more-fragments flag clear: malformed.
    let whole = with_ip_checksum(&with_u16(&first, 20, 0));
    untouched(
        &dp,
        &Hook::ALL,
        &whole,
        "a whole datagram whose UDP length exceeds it",
    );
    let s = dp.snapshot();
    assert!(s.flows.is_empty() && s.replies.is_empty(), "no flow state");
    let expected = datagram((CLIENT, 50060), (LOCAL, TARGET), 0xb001).fragments(FRAGMENT);
    translated_in_order(
        &dp,
        Hook::Xdp,
        &[first],
        &expected[..1],
        Verdict::Translated,
    );
}

#[test]
fn a_truncated_fragment_is_never_rewritten() {
    let dp = datapath("frag-truncated");
    let sent = datagram((CLIENT, 50070), (VIP_LOCAL, PORT), 0xc001).fragments(FRAGMENT);
    // A first fragment cut short of its total length creates nothing.
    untouched(
        &dp,
        &Hook::ALL,
        &sent[0][..sent[0].len() - 1],
        "a first fragment cut short",
    );
    let _ = Hook::Xdp.pass(&dp, &sent[0]);
    for cut in [1, 100] {
        let frame = &sent[1][..sent[1].len() - cut];
        untouched(
            &dp,
            &Hook::ALL,
            frame,
            &format!("a later fragment {cut} bytes short"),
        );
    }
}

#[test]
fn the_uplink_hooks_agree_on_every_fragment() {
    // Each uplink hook alone, on a datagram the other started: the map is shared.
    let dp = datapath("frag-shared");
    let sent = datagram((CLIENT, 50080), (VIP_LOCAL, PORT), 0xd001).fragments(FRAGMENT);
    let expected = datagram((CLIENT, 50080), (LOCAL, TARGET), 0xd001).fragments(FRAGMENT);
    same_frame(
        &Hook::Xdp.pass(&dp, &sent[0]),
        &expected[0],
        "the first, XDP",
    );
    for hook in Hook::UPLINKS {
        same_frame(
            &hook.pass(&dp, &sent[1]),
            &expected[1],
            &format!("the second, {hook:?}"),
        );
    }
}

#[test]
fn a_later_fragment_moves_no_tcp_state() {
    let mut dp = TestDatapath::load("frag-tcp", NODE);
    program(
        &mut dp,
        &[frontend(
            VIP_LOCAL,
            80,
            Protocol::Tcp,
            &[(LOCAL, 8080, true)],
        )],
    );
    let key = flow_key(CLIENT, 40000, VIP_LOCAL, 80, lb_common::IPPROTO_TCP);
    let state = |dp: &TestDatapath| CtState::from_u8(dp.conntrack(&key).unwrap().state);
    let _ = Hook::Xdp.pass(
        &dp,
        &Packet::tcp(CLIENT, 40000, VIP_LOCAL, 80).syn().build(),
    );
    let _ = Hook::Egress.pass(
        &dp,
        &Packet::tcp(LOCAL, 8080, CLIENT, 40000).synack().build(),
    );
    assert_eq!(state(&dp), CtState::SynRecv);
    // A SYN sent again, with data, in fragments: the first (with the flags)
    // leaves the handshake where it was; the later ones carry no flags and
    // must not read as the client's ACK.
    let syn = Packet::tcp(CLIENT, 40000, VIP_LOCAL, 80)
        .syn()
        .with_payload(&payload(PAYLOAD))
        .with_ip_id(0xe001);
    let sent = syn.fragments(FRAGMENT);
    let expected = Packet::tcp(CLIENT, 40000, LOCAL, 8080)
        .syn()
        .with_payload(&payload(PAYLOAD))
        .with_ip_id(0xe001)
        .fragments(FRAGMENT);
    translated_in_order(&dp, Hook::Xdp, &sent, &expected, Verdict::Translated);
    assert_eq!(
        state(&dp),
        CtState::SynRecv,
        "no fragment completed the handshake"
    );
}

#[test]
fn the_fragment_map_is_not_pinned() {
    let dp = datapath("frag-unpinned");
    let sent = datagram((CLIENT, 50090), (VIP_LOCAL, PORT), 0xf001).fragments(FRAGMENT);
    let _ = Hook::Xdp.pass(&dp, &sent[0]);
    assert_eq!(dp.fragments_remembered(), 1, "the datagram is remembered");
    let pins = lb_userspace::datapath::pins_dir(dp.pin_dir());
    assert!(
        pins.join(lb_common::MAP_CONNTRACK).exists(),
        "the flow maps are pinned"
    );
    assert!(
        !pins.join(lb_common::MAP_FRAGMENTS).exists(),
        "datagrams in flight are no part of the pin layout"
    );
}
