//! IPv6 fragments of datagrams to and from Services (step 7 of the IPv6 data
//! path), the twin of `tests/fragments.rs`, through the real programs
//! (`BPF_PROG_TEST_RUN`). A datagram in fragments is translated fragment by
//! fragment, in order: the first (which carries the L4 header) gets its
//! addresses, ports and L4 checksum translated like any packet (the checksum
//! covers the whole datagram, so the first fragment's pseudo-header and port
//! deltas are the datagram's), every later one its addresses only (IPv6 has
//! no header checksum), its payload untouched. What comes out is exactly the
//! fragments of the translated datagram, as its sender would have cut them,
//! built from scratch. Both ways (requests to a local backend; replies), on
//! every hook. A later fragment whose first fragment was not seen, or of a
//! datagram nobody tracks, passes untouched and creates no state; a first
//! fragment may carry a UDP length beyond its own payload, a whole datagram
//! may not; a later fragment moves no TCP state, and one overlapping the L4
//! header is never read as one. Needs root.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    conntrack::CtState,
    filter_bit6,
    maps6::{ipv6_words, Backend6, FlowKey6, ServiceKey6},
    Event, Family, ServiceEntry, Verdict, BACKEND_F_ACTIVE, BACKEND_F_LOCAL, BACKEND_F_SELECTED,
    BACKEND_F_SELECTED_LOCAL, FILTER_SEED_BACKEND6, FILTER_SEED_FRONTEND6, IPPROTO_TCP,
    IPPROTO_UDP,
};
use lb_tests::{
    netns::{ifindex, in_netns, Netns},
    packet::{test_flows, unique_pin_dir, Hook, TestDatapath},
    packet6::{checksums6_valid, Ext, Packet6, IP6_OFF},
};
use lb_userspace::{flows::FlowSettings, plan::MapOp};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x10);
/// A Service whose backend is on another node.
const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// A Service whose backend is a pod of this node.
const VIP_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x20);
const REMOTE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 2);
const LOCAL: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);
/// A pod of this node that is a client.
const POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 3);

/// The Services' UDP port and their backends' target port.
const PORT: u16 = 53;
const TARGET: u16 = 5353;
/// Upper-layer bytes per fragment on a 1500-byte link: 1500 - 40 (fixed
/// header) - 8 (fragment header), down to a multiple of 8.
const FRAGMENT: usize = 1448;
/// Payload of the datagrams in three fragments: 1448 + 1448 + 3 bytes of
/// upper layer (8 bytes of UDP header included), the last shorter than a
/// UDP header.
const PAYLOAD: usize = 2 * FRAGMENT + 3 - 8;
/// Offset of the fragment header in a frame without other extension headers.
const FRAG_HDR: usize = IP6_OFF + 40;
/// Offset of a later fragment's payload (after the fragment header).
const LATER_PAYLOAD: usize = FRAG_HDR + 8;

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

/// Writes the frontend `vip`:`port`/`proto` (Service port and backend `id`)
/// to `backend`:`target`, as the agent orders it.
#[allow(clippy::too_many_arguments)]
fn frontend(
    dp: &mut TestDatapath,
    id: u32,
    vip: Ipv6Addr,
    port: u16,
    proto: u8,
    backend: Ipv6Addr,
    target: u16,
    local: bool,
) {
    for (seed, addr, p) in [
        (FILTER_SEED_FRONTEND6, vip, port),
        (FILTER_SEED_BACKEND6, backend, target),
    ] {
        let bit = filter_bit6(seed, ipv6_words(addr.octets()), p.to_be(), proto);
        let word = dp.datapath_mut().maps.filter.get(bit / 64).unwrap();
        dp.datapath_mut()
            .maps
            .apply(&[MapOp::SetFilterWord(bit / 64, word | 1 << (bit % 64))])
            .unwrap();
    }
    let mut flags = BACKEND_F_ACTIVE | BACKEND_F_SELECTED | BACKEND_F_SELECTED_LOCAL;
    if local {
        flags |= BACKEND_F_LOCAL;
    }
    let offset = id * 100;
    let ops = [
        MapOp::SetBackend6(
            id,
            Backend6 {
                addr: ipv6_words(backend.octets()),
                port: target.to_be(),
                flags,
                pad: 0,
                service_id: id,
            },
        ),
        MapOp::SetTable {
            offset,
            slots: vec![id; 7],
        },
        MapOp::SetLabel(id, format!("default/svc-{id}/IPv6")),
        MapOp::SetService6(
            ServiceKey6 {
                addr: ipv6_words(vip.octets()),
                port: port.to_be(),
                proto,
                pad: 0,
            },
            ServiceEntry {
                id,
                backend_count: 1,
                table_offset: offset,
                table_size: 7,
                affinity_timeout: 0,
                flags: 0,
            },
        ),
    ];
    dp.datapath_mut().maps.apply(&ops).unwrap();
}

/// VIP:53/UDP to REMOTE:5353; `VIP_LOCAL`:53/UDP to LOCAL:5353.
fn datapath(name: &str) -> TestDatapath {
    let mut dp = TestDatapath::load(name, NODE).with_ipv6();
    frontend(&mut dp, 1, VIP, PORT, IPPROTO_UDP, REMOTE, TARGET, false);
    frontend(
        &mut dp,
        2,
        VIP_LOCAL,
        PORT,
        IPPROTO_UDP,
        LOCAL,
        TARGET,
        true,
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

/// A UDP datagram of [`PAYLOAD`] bytes.
fn datagram(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Packet6 {
    Packet6::udp(src.0, src.1, dst.0, dst.1).with_payload(&payload(PAYLOAD))
}

/// The fragments of a UDP datagram of [`PAYLOAD`] bytes with fragment id `id`.
fn fragments(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), id: u32) -> Vec<Vec<u8>> {
    datagram(src, dst).fragments(FRAGMENT, id)
}

/// The key of a UDP client flow.
fn flow_key(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), proto: u8) -> FlowKey6 {
    FlowKey6 {
        src_addr: ipv6_words(src.0.octets()),
        dst_addr: ipv6_words(dst.0.octets()),
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        proto,
        pad: [0; 3],
    }
}

/// The IPv6 flows tracked, and the number of datagrams remembered.
fn state(dp: &TestDatapath) -> (HashSet<FlowKey6>, usize) {
    (
        dp.flows6().into_iter().collect(),
        dp.fragments6_remembered(),
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
        let before = dp.verdict_of(Family::Ipv6, verdict);
        let out = hook.pass(dp, fragment);
        same_frame(
            &out,
            want,
            &format!("{hook:?}: fragment {i} of {}", sent.len()),
        );
        assert_eq!(
            dp.verdict_of(Family::Ipv6, verdict),
            before + 1,
            "{hook:?}: fragment {i} is one {verdict:?}"
        );
        if i > 0 {
            assert!(
                out[LATER_PAYLOAD..] == fragment[LATER_PAYLOAD..],
                "{hook:?}: fragment {i}'s payload is untouched"
            );
        }
    }
}

/// Asserts that each of `hooks` passes `frame` untouched, translates nothing
/// and leaves the flow map and the remembered datagrams as they were.
fn untouched(dp: &TestDatapath, hooks: &[Hook], frame: &[u8], what: &str) {
    let before = state(dp);
    let counts = (
        dp.verdict_of(Family::Ipv6, Verdict::Translated),
        dp.verdict_of(Family::Ipv6, Verdict::Reversed),
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
            dp.verdict_of(Family::Ipv6, Verdict::Translated),
            dp.verdict_of(Family::Ipv6, Verdict::Reversed)
        ),
        counts,
        "{what}: nothing translated"
    );
    assert_eq!(state(dp), before, "{what}: no state");
}

#[test]
fn a_datagram_in_fragments_to_a_local_backend_is_translated_fragment_by_fragment() {
    let dp = datapath("frag6-local");
    for (hook, port) in [(Hook::Xdp, 50000), (Hook::TcUplink, 50001)] {
        let sent = fragments((CLIENT, port), (VIP_LOCAL, PORT), 0x4242_0001);
        assert_eq!(sent.len(), 3);
        let expected = fragments((CLIENT, port), (LOCAL, TARGET), 0x4242_0001);
        translated_in_order(&dp, hook, &sent, &expected, Verdict::Translated);
        let client = flow_key((CLIENT, port), (VIP_LOCAL, PORT), IPPROTO_UDP);
        assert!(
            dp.conntrack6(&client).is_some(),
            "{hook:?}: the flow is tracked"
        );
    }
    assert_eq!(dp.flows6().len(), 2, "one flow per datagram's ports");
    // Reassembled, the translated datagram's checksum holds: the first
    // fragment's update covered the whole datagram.
    assert!(checksums6_valid(
        &datagram((CLIENT, 50000), (LOCAL, TARGET)).build()
    ));
}

#[test]
fn a_datagram_in_fragments_after_a_hop_by_hop_header_is_translated() {
    let dp = datapath("frag6-hbh");
    let hbh = |p: Packet6| p.ext(Ext::HopByHop { len8: 0 });
    let sent = hbh(datagram((CLIENT, 50100), (VIP_LOCAL, PORT))).fragments(FRAGMENT, 7);
    let expected = hbh(datagram((CLIENT, 50100), (LOCAL, TARGET))).fragments(FRAGMENT, 7);
    for (i, (fragment, want)) in sent.iter().zip(&expected).enumerate() {
        same_frame(
            &Hook::Xdp.pass(&dp, fragment),
            want,
            &format!("fragment {i}"),
        );
    }
}

#[test]
fn fragments_out_of_order_after_the_first_are_translated() {
    let dp = datapath("frag6-order");
    let sent = fragments((CLIENT, 50110), (VIP_LOCAL, PORT), 0x0110);
    let expected = fragments((CLIENT, 50110), (LOCAL, TARGET), 0x0110);
    for i in [0, 2, 1] {
        same_frame(
            &Hook::Xdp.pass(&dp, &sent[i]),
            &expected[i],
            &format!("fragment {i}"),
        );
    }
}

#[test]
fn an_atomic_fragment_is_a_whole_datagram() {
    // Offset 0 and no more fragments (RFC 6946): translated as a whole
    // datagram, and no datagram remembered.
    let dp = datapath("frag6-atomic");
    let atomic = |dst: (Ipv6Addr, u16)| {
        Packet6::udp(CLIENT, 50120, dst.0, dst.1)
            .with_payload(b"atomic")
            .ext(Ext::Fragment {
                offset: 0,
                more: false,
                id: 0x0120,
            })
            .build()
    };
    same_frame(
        &Hook::Xdp.pass(&dp, &atomic((VIP_LOCAL, PORT))),
        &atomic((LOCAL, TARGET)),
        "an atomic fragment",
    );
    assert_eq!(dp.fragments6_remembered(), 0, "no datagram remembered");
}

#[test]
fn a_reply_in_fragments_is_translated_back_fragment_by_fragment() {
    let dp = datapath("frag6-reply");
    // From the local backend: the reply crosses the stack as it left the
    // pod and is translated where it leaves the node.
    for fragment in &fragments((CLIENT, 50020), (VIP_LOCAL, PORT), 1) {
        let _ = Hook::Xdp.pass(&dp, fragment);
    }
    let reply = fragments((LOCAL, TARGET), (CLIENT, 50020), 0x6001);
    let expected = fragments((VIP_LOCAL, PORT), (CLIENT, 50020), 0x6001);
    untouched(&dp, &[Hook::Pod], &reply[0], "a local pod's reply");
    translated_in_order(&dp, Hook::Egress, &reply, &expected, Verdict::Reversed);
}

#[test]
fn fragments_from_a_pod_are_translated_on_the_pod_hook() {
    let dp = datapath("frag6-pod");
    // To a local backend: both ways through pod interfaces.
    let sent = fragments((POD, 33000), (VIP_LOCAL, PORT), 0x7001);
    let expected = fragments((POD, 33000), (LOCAL, TARGET), 0x7001);
    translated_in_order(&dp, Hook::Pod, &sent, &expected, Verdict::Translated);
    let reply = fragments((LOCAL, TARGET), (POD, 33000), 0x7002);
    let expected = fragments((VIP_LOCAL, PORT), (POD, 33000), 0x7002);
    translated_in_order(&dp, Hook::Egress, &reply, &expected, Verdict::Reversed);
    // To a remote backend (a pod's address is routable: no SNAT); the reply
    // comes back through the uplink and the stack, into the pod.
    let sent = fragments((POD, 33001), (VIP, PORT), 0x7003);
    let expected = fragments((POD, 33001), (REMOTE, TARGET), 0x7003);
    translated_in_order(&dp, Hook::Pod, &sent, &expected, Verdict::Translated);
    let reply = fragments((REMOTE, TARGET), (POD, 33001), 0x7004);
    let expected = fragments((VIP, PORT), (POD, 33001), 0x7004);
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
    let dp = datapath("frag6-early");
    let sent = fragments((CLIENT, 50030), (VIP_LOCAL, PORT), 0x8001);
    untouched(&dp, &Hook::ALL, &sent[1], "the second fragment first");
    untouched(&dp, &Hook::ALL, &sent[2], "the last fragment first");
    assert!(dp.flows6().is_empty(), "no flow state");
    assert_eq!(dp.fragments6_remembered(), 0, "no datagram remembered");
    // Once the first arrives, the rest of the datagram follows it.
    let expected = fragments((CLIENT, 50030), (LOCAL, TARGET), 0x8001);
    translated_in_order(&dp, Hook::Xdp, &sent, &expected, Verdict::Translated);
    // A reply's later fragment before its first: untouched as well.
    let reply = fragments((LOCAL, TARGET), (CLIENT, 50030), 0x8002);
    untouched(
        &dp,
        &[Hook::Xdp, Hook::TcUplink, Hook::Pod, Hook::Egress],
        &reply[1],
        "a reply's second fragment first",
    );
}

#[test]
fn a_later_fragment_of_a_datagram_nobody_tracks_passes_untouched() {
    let dp = datapath("frag6-unknown");
    // A tracked flow whose datagram in fragments went through.
    for fragment in &fragments((CLIENT, 50040), (VIP_LOCAL, PORT), 0x9001) {
        let _ = Hook::Xdp.pass(&dp, fragment);
    }
    let later =
        |src: Ipv6Addr, dst: Ipv6Addr, id: u32| fragments((src, 50040), (dst, PORT), id)[1].clone();
    for (what, frame) in [
        ("another id", later(CLIENT, VIP_LOCAL, 0x9002)),
        (
            "another id in its high half",
            later(CLIENT, VIP_LOCAL, 0x0001_9001),
        ),
        ("another source", later(POD, VIP_LOCAL, 0x9001)),
        ("another destination", later(CLIENT, VIP, 0x9001)),
        (
            "to nobody's address",
            later(CLIENT, "fd00:96::99".parse().unwrap(), 0x9001),
        ),
        (
            "TCP with the datagram's addresses and id",
            Packet6::tcp(CLIENT, 50040, VIP_LOCAL, PORT)
                .with_payload(&payload(PAYLOAD))
                .fragments(FRAGMENT, 0x9001)[1]
                .clone(),
        ),
    ] {
        untouched(&dp, &Hook::ALL, &frame, what);
    }
    // A datagram that is not ours: none of its fragments is remembered or touched.
    let other = fragments((CLIENT, 50041), (VIP_LOCAL, 54), 0x9003);
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
    let dp = datapath("frag6-reused-id");
    for fragment in &fragments((CLIENT, 50050), (VIP_LOCAL, PORT), 0xa001) {
        let _ = Hook::Xdp.pass(&dp, fragment);
    }
    // The sender's id comes round again, on a datagram that is not ours:
    // its later fragments must not take the earlier datagram's ports.
    let other = fragments((CLIENT, 50051), (VIP_LOCAL, 54), 0xa001);
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
    let dp = datapath("frag6-udp-length");
    let first = fragments((CLIENT, 50060), (VIP_LOCAL, PORT), 0xb001)[0].clone();
    let udp = LATER_PAYLOAD;
    let udp_len = u16::from_be_bytes([first[udp + 4], first[udp + 5]]);
    assert!(
        usize::from(udp_len) > first.len() - udp,
        "the datagram goes on"
    );
    // The same frame with the more-fragments flag clear (an atomic
    // fragment, a whole datagram): malformed.
    let mut whole = first.clone();
    whole[FRAG_HDR + 3] &= !1;
    untouched(
        &dp,
        &Hook::ALL,
        &whole,
        "a whole datagram whose UDP length exceeds it",
    );
    assert!(dp.flows6().is_empty(), "no flow state");
    let expected = fragments((CLIENT, 50060), (LOCAL, TARGET), 0xb001);
    translated_in_order(
        &dp,
        Hook::Xdp,
        &[first],
        &expected[..1],
        Verdict::Translated,
    );
}

#[test]
fn a_truncated_or_short_fragment_is_never_rewritten() {
    let dp = datapath("frag6-truncated");
    let sent = fragments((CLIENT, 50070), (VIP_LOCAL, PORT), 0xc001);
    // A first fragment cut short of its payload length creates nothing.
    untouched(
        &dp,
        &Hook::ALL,
        &sent[0][..sent[0].len() - 1],
        "a first fragment cut short",
    );
    // A first fragment too short for the UDP header (RFC 7112): malformed.
    let short = Packet6::udp(CLIENT, 50070, VIP_LOCAL, PORT)
        .with_payload(&payload(PAYLOAD))
        .fragments(FRAGMENT, 0xc002)[0][..LATER_PAYLOAD + 4]
        .to_vec();
    let mut short = short;
    short[IP6_OFF + 4..IP6_OFF + 6].copy_from_slice(&12u16.to_be_bytes());
    untouched(&dp, &Hook::ALL, &short, "a first fragment of 4 bytes");
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
    // A later fragment with no payload at all.
    let mut empty = sent[1][..LATER_PAYLOAD].to_vec();
    empty[IP6_OFF + 4..IP6_OFF + 6].copy_from_slice(&8u16.to_be_bytes());
    untouched(&dp, &Hook::ALL, &empty, "a later fragment without payload");
}

#[test]
fn a_later_fragment_overlapping_the_l4_header_gets_its_addresses_only() {
    // A hostile later fragment at offset 8 bytes, whose payload would sit
    // where the first fragment's UDP header ends and claims other ports:
    // nothing in it is read or written as an L4 header (the receiver drops
    // an overlapping datagram, RFC 5722).
    let dp = datapath("frag6-overlap");
    let sent = fragments((CLIENT, 50080), (VIP_LOCAL, PORT), 0xd001);
    let _ = Hook::Xdp.pass(&dp, &sent[0]);
    let mut overlap = sent[1].clone();
    overlap[FRAG_HDR + 2..FRAG_HDR + 4].copy_from_slice(&(1u16 << 3).to_be_bytes());
    overlap[LATER_PAYLOAD..LATER_PAYLOAD + 8]
        .copy_from_slice(&[0x12, 0x34, 0x00, 0x35, 0, 8, 0xff, 0xff]);
    let mut expected = overlap.clone();
    expected[IP6_OFF + 24..IP6_OFF + 40].copy_from_slice(&LOCAL.octets());
    for hook in Hook::UPLINKS {
        same_frame(
            &hook.pass(&dp, &overlap),
            &expected,
            &format!("{hook:?}: the overlapping fragment"),
        );
    }
}

#[test]
fn the_uplink_hooks_agree_on_every_fragment() {
    // Each uplink hook alone, on a datagram the other started: the map is shared.
    let dp = datapath("frag6-shared");
    let sent = fragments((CLIENT, 50090), (VIP_LOCAL, PORT), 0xe001);
    let expected = fragments((CLIENT, 50090), (LOCAL, TARGET), 0xe001);
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
    let mut dp = TestDatapath::load("frag6-tcp", NODE).with_ipv6();
    frontend(&mut dp, 3, VIP_LOCAL, 80, IPPROTO_TCP, LOCAL, 8080, true);
    let key = flow_key((CLIENT, 40000), (VIP_LOCAL, 80), IPPROTO_TCP);
    let state = |dp: &TestDatapath| CtState::from_u8(dp.conntrack6(&key).unwrap().state);
    let _ = Hook::Xdp.pass(
        &dp,
        &Packet6::tcp(CLIENT, 40000, VIP_LOCAL, 80).syn().build(),
    );
    let _ = Hook::Egress.pass(
        &dp,
        &Packet6::tcp(LOCAL, 8080, CLIENT, 40000).synack().build(),
    );
    assert_eq!(state(&dp), CtState::SynRecv);
    // A SYN sent again, with data, in fragments: the first (with the flags)
    // leaves the handshake where it was; the later ones carry no flags and
    // must not read as the client's ACK.
    let sent = Packet6::tcp(CLIENT, 40000, VIP_LOCAL, 80)
        .syn()
        .with_payload(&payload(PAYLOAD))
        .fragments(FRAGMENT, 0xf001);
    let expected = Packet6::tcp(CLIENT, 40000, LOCAL, 8080)
        .syn()
        .with_payload(&payload(PAYLOAD))
        .fragments(FRAGMENT, 0xf001);
    translated_in_order(&dp, Hook::Xdp, &sent, &expected, Verdict::Translated);
    assert_eq!(
        state(&dp),
        CtState::SynRecv,
        "no fragment completed the handshake"
    );
}

#[test]
fn the_fragment_map_is_not_pinned() {
    let dp = datapath("frag6-unpinned");
    let sent = fragments((CLIENT, 50095), (VIP_LOCAL, PORT), 0xf101);
    let _ = Hook::Xdp.pass(&dp, &sent[0]);
    assert_eq!(dp.fragments6_remembered(), 1, "the datagram is remembered");
    let pins = lb_userspace::datapath::pins_dir(dp.pin_dir());
    assert!(
        pins.join(lb_common::maps6::MAP_CONNTRACK6).exists(),
        "the flow maps are pinned"
    );
    assert!(
        !pins.join(lb_common::maps6::MAP_FRAGMENTS6).exists(),
        "datagrams in flight are no part of the pin layout"
    );
}

/// A namespace shaped like a node for the reverse-path check: `d2` leads to
/// the local pods (`LOCAL` and `POD` behind it, as behind a bridge CNI's
/// `cni0`), `d0` is one more interface (as a bridge's port: no route leads
/// there); IPv6 forwarding on (`bpf_fib_lookup` needs it).
fn node_namespace6(role: &str) -> Netns {
    let ns = Netns::new(role).expect("creating a namespace");
    for key in [
        "net.ipv6.conf.all.disable_ipv6=0",
        "net.ipv6.conf.default.disable_ipv6=0",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv6.conf.default.forwarding=1",
    ] {
        ns.exec(&["sysctl", "-qw", key])
            .expect("sysctl in the namespace");
    }
    ns.script(
        "ip link add d0 type veth peer name p0
         ip link add d2 type veth peer name p2
         ip link set p0 up
         ip link set d0 up
         ip link set p2 up
         ip link set d2 up
         ip -6 route add fd00:244:1::2/128 dev d2
         ip -6 route add fd00:244:1::3/128 dev d2",
    );
    ns
}

/// A reply in fragments that the node reassembled and cut again (a bridge
/// CNI with `br_netfilter`'s conntrack, the stack forwarding the datagram
/// from `cni0`): at egress, the first fragment carries the interface the
/// datagram entered the stack by, each later one the interface its own
/// original fragment arrived by (the kernel's re-fragmentation sends those
/// buffers again and does not copy the ingress interface), a bridge port no
/// route leads to. With the reverse-path check on, the later fragments are
/// the checked first's datagram (its addresses, id and protocol): translated
/// as it was, not judged again by their own interface.
#[test]
fn later_fragments_of_a_checked_reply_are_not_judged_again() {
    let ns = node_namespace6("frag6-rpf");
    in_netns(&ns, || {
        let flows = FlowSettings {
            reply_path_check: true,
            ..test_flows()
        };
        let mut dp = TestDatapath::load_at_with_flows(
            &unique_pin_dir("frag6-rpf"),
            NODE,
            1 << 16,
            true,
            flows,
        )
        .with_ipv6();
        frontend(
            &mut dp,
            2,
            VIP_LOCAL,
            PORT,
            IPPROTO_UDP,
            LOCAL,
            TARGET,
            true,
        );
        let (d0, d2) = (ifindex("d0"), ifindex("d2"));
        let request = Packet6::udp(POD, 50030, VIP_LOCAL, PORT).build();
        let _ = Hook::Pod.pass(&dp, &request);
        let reply = fragments((LOCAL, TARGET), (POD, 50030), 0x7001);
        let expected = fragments((VIP_LOCAL, PORT), (POD, 50030), 0x7001);
        for (i, (fragment, want)) in reply.iter().zip(&expected).enumerate() {
            let entered = if i == 0 { d2 } else { d0 };
            let (ret, out) = dp.run_tc_egress_on(d2, entered, fragment);
            assert_eq!(
                ret,
                Hook::Egress.passed(),
                "fragment {i} passes (ReplyRejected = {})",
                dp.event_of(Family::Ipv6, Event::ReplyRejected)
            );
            same_frame(&out, want, &format!("fragment {i} translated"));
        }
        assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Reversed), 3);
        assert_eq!(dp.event_of(Family::Ipv6, Event::ReplyRejected), 0);
        // A whole reply is still judged by the interface it entered by.
        let whole = Packet6::udp(LOCAL, TARGET, POD, 50030).build();
        let (ret, _) = dp.run_tc_egress_on(d2, d0, &whole);
        assert_eq!(ret, Hook::Egress.dropped(), "a whole reply from d0");
        assert_eq!(dp.event_of(Family::Ipv6, Event::ReplyRejected), 1);
    });
}
