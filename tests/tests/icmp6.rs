//! `ICMPv6` errors about translated IPv6 flows (step 6 of the IPv6 data
//! path), the IPv6 twin of `tests/icmp.rs` for the flows IPv6 translates
//! (the backend keeps the client's address), through the real programs
//! (`BPF_PROG_TEST_RUN`): an error about a client's packet (a router's
//! Packet Too Big, the backend's port unreachable, quoting the translated
//! packet) reaches the client at egress as if about its own packet to the
//! Service; an error about a reply (quoting the reverse-translated reply)
//! reaches the backend where it enters the node. The quoted tuple, the
//! outer destination and, where the error came from the translated
//! endpoint itself, the outer source are translated; the `ICMPv6` checksum
//! is right (the expected frames are built from scratch), everything else
//! (the MTU, the quoted L4 checksum, the quoted payload) is the same.
//! Errors nobody's flow explains, errors at hooks that do not translate
//! them, quotes behind extension headers, neighbor discovery and echo pass
//! untouched and create no state. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{
    filter_bit6,
    maps6::{ipv6_words, Backend6, ServiceKey6},
    Family, ServiceEntry, Verdict, BACKEND_F_ACTIVE, BACKEND_F_LOCAL, BACKEND_F_SELECTED,
    BACKEND_F_SELECTED_LOCAL, FILTER_SEED_BACKEND6, FILTER_SEED_FRONTEND6, IPPROTO_TCP,
    IPPROTO_UDP,
};
use lb_tests::{
    packet::{Hook, TestDatapath},
    packet6::{checksums6_valid, icmp6, Ext, Packet6, IP6_OFF},
};
use lb_userspace::plan::MapOp;

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x10);
const ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 1);
const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// The pod of this node behind both of `VIP`'s ports.
const POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);

/// `ICMPv6` types and codes (RFC 4443).
const UNREACH: u8 = 1;
const PORT_UNREACH: u8 = 4;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;
const PARAM_PROBLEM: u8 = 4;
const ECHO_REQUEST: u8 = 128;
const NEIGHBOR_SOLICITATION: u8 = 135;
/// A Packet Too Big's MTU field.
const MTU_1400: [u8; 4] = 1400u32.to_be_bytes();
const UNUSED: [u8; 4] = [0; 4];
/// Every error type, with a code and bytes 4-7 of its header.
const ERRORS: [(u8, u8, [u8; 4]); 5] = [
    (UNREACH, 3, UNUSED),
    (UNREACH, PORT_UNREACH, UNUSED),
    (PACKET_TOO_BIG, 0, MTU_1400),
    (TIME_EXCEEDED, 0, UNUSED),
    (PARAM_PROBLEM, 0, [0, 0, 0, 40]),
];

/// Writes the frontend `VIP`:`port`/`proto` to `POD`:`target` (backend
/// `id`, service `id`) as the agent orders it.
fn program(dp: &mut TestDatapath, id: u32, port: u16, proto: u8, target: u16) {
    let mut ops = vec![];
    for (seed, addr, p) in [
        (FILTER_SEED_FRONTEND6, VIP, port),
        (FILTER_SEED_BACKEND6, POD, target),
    ] {
        let bit = filter_bit6(seed, ipv6_words(addr.octets()), p.to_be(), proto);
        let word = dp.datapath_mut().maps.filter.get(bit / 64).unwrap();
        dp.datapath_mut()
            .maps
            .apply(&[MapOp::SetFilterWord(bit / 64, word | 1 << (bit % 64))])
            .unwrap();
    }
    let offset = id * 100;
    ops.push(MapOp::SetBackend6(
        id,
        Backend6 {
            addr: ipv6_words(POD.octets()),
            port: target.to_be(),
            flags: BACKEND_F_ACTIVE
                | BACKEND_F_SELECTED
                | BACKEND_F_SELECTED_LOCAL
                | BACKEND_F_LOCAL,
            pad: 0,
            service_id: id,
        },
    ));
    ops.push(MapOp::SetTable {
        offset,
        slots: vec![id; 7],
    });
    ops.push(MapOp::SetLabel(id, format!("default/web-{id}/IPv6")));
    ops.push(MapOp::SetService6(
        ServiceKey6 {
            addr: ipv6_words(VIP.octets()),
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
    ));
    dp.datapath_mut().maps.apply(&ops).unwrap();
}

/// `VIP`:80/TCP -> `POD`:8080 and `VIP`:53/UDP -> `POD`:5353, with one
/// flow of each from `CLIENT` (ports 40000 and 41000) started through XDP.
fn datapath(name: &str) -> TestDatapath {
    let mut dp = TestDatapath::load(name, NODE).with_ipv6();
    program(&mut dp, 1, 80, IPPROTO_TCP, 8080);
    program(&mut dp, 2, 53, IPPROTO_UDP, 5353);
    let syn = Hook::Xdp.pass(&dp, &tcp_to_vip().syn().build());
    assert_eq!(syn, tcp_to_pod().syn().build(), "the flow is translated");
    let dgram = Hook::Xdp.pass(&dp, &udp_to_vip().build());
    assert_eq!(dgram, udp_to_pod().build(), "the flow is translated");
    dp
}

fn tcp_to_vip() -> Packet6 {
    Packet6::tcp(CLIENT, 40000, VIP, 80)
}
fn tcp_to_pod() -> Packet6 {
    Packet6::tcp(CLIENT, 40000, POD, 8080)
}
fn udp_to_vip() -> Packet6 {
    Packet6::udp(CLIENT, 41000, VIP, 53)
}
fn udp_to_pod() -> Packet6 {
    Packet6::udp(CLIENT, 41000, POD, 5353)
}

/// The IPv6 packet of `frame` (Ethernet stripped), as an error quotes it.
fn quote(frame: &[u8]) -> Vec<u8> {
    frame[IP6_OFF..].to_vec()
}

/// `quoted` with its addresses and ports set, its L4 checksum left as it
/// was (as the programs leave it).
fn quote_as(quoted: &[u8], src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Vec<u8> {
    let mut q = quoted.to_vec();
    q[8..24].copy_from_slice(&src.0.octets());
    q[24..40].copy_from_slice(&dst.0.octets());
    q[40..42].copy_from_slice(&src.1.to_be_bytes());
    q[42..44].copy_from_slice(&dst.1.to_be_bytes());
    q
}

/// An `ICMPv6` error from `src` to `dst`: type, code, bytes 4-7, the quote.
fn error(src: Ipv6Addr, dst: Ipv6Addr, kind: (u8, u8, [u8; 4]), quoted: &[u8]) -> Vec<u8> {
    let mut body = kind.2.to_vec();
    body.extend_from_slice(quoted);
    icmp6(src, dst, kind.0, kind.1, &body)
}

/// Asserts that `frame` through `hook` comes out as `expected`, checksum
/// valid, counted once as `verdict`, and creates no flow state.
fn translates(dp: &TestDatapath, hook: Hook, frame: &[u8], expected: &[u8], verdict: Verdict) {
    let flows = dp.flows6().len();
    let before = dp.verdict_of(Family::Ipv6, verdict);
    let out = hook.pass(dp, frame);
    assert_eq!(out, expected, "{hook:?}: the translated error");
    assert!(checksums6_valid(&out), "{hook:?}: the ICMPv6 checksum");
    assert_eq!(
        dp.verdict_of(Family::Ipv6, verdict),
        before + 1,
        "{hook:?}: one {verdict:?}"
    );
    assert_eq!(dp.flows6().len(), flows, "an error creates no flow state");
}

/// Asserts that every hook passes `frame` untouched and translates nothing.
fn untouched(dp: &TestDatapath, frame: &[u8], what: &str) {
    let flows = dp.flows6().len();
    let counts = |dp: &TestDatapath| {
        (
            dp.verdict_of(Family::Ipv6, Verdict::Translated),
            dp.verdict_of(Family::Ipv6, Verdict::Reversed),
        )
    };
    let before = counts(dp);
    for hook in [Hook::Xdp, Hook::TcUplink, Hook::Pod, Hook::Egress] {
        assert_eq!(
            hook.pass(dp, frame),
            frame,
            "{what}: {hook:?} must not modify"
        );
    }
    assert_eq!(counts(dp), before, "{what}: nothing translated");
    assert_eq!(dp.flows6().len(), flows, "{what}: no flow state");
}

/// A router's Packet Too Big about the client's translated packet reaches
/// the client from the router, its MTU kept, quoting client -> Service.
#[test]
fn packet_too_big_from_a_router_reaches_the_client_with_its_mtu() {
    let dp = datapath("icmp6ptb");
    let sent = quote(&tcp_to_pod().with_payload(&[0x5a; 1300]).build());
    let ptb = error(ROUTER, CLIENT, (PACKET_TOO_BIG, 0, MTU_1400), &sent);
    let expected = error(
        ROUTER,
        CLIENT,
        (PACKET_TOO_BIG, 0, MTU_1400),
        &quote_as(&sent, (CLIENT, 40000), (VIP, 80)),
    );
    translates(&dp, Hook::Egress, &ptb, &expected, Verdict::Reversed);
    // Where errors enter the node, one about a client's packet is not ours.
    for hook in Hook::ALL {
        assert_eq!(hook.pass(&dp, &ptb), ptb, "{hook:?} must not modify");
    }
}

/// The backend's own port unreachable reaches the client from the Service.
#[test]
fn port_unreachable_from_the_backend_reaches_the_client_from_the_service() {
    let dp = datapath("icmp6unr");
    let sent = quote(&udp_to_pod().build());
    let unreach = error(POD, CLIENT, (UNREACH, PORT_UNREACH, UNUSED), &sent);
    let expected = error(
        VIP,
        CLIENT,
        (UNREACH, PORT_UNREACH, UNUSED),
        &quote_as(&sent, (CLIENT, 41000), (VIP, 53)),
    );
    translates(&dp, Hook::Egress, &unreach, &expected, Verdict::Reversed);
}

/// Every error type about either protocol's forward packet is translated.
#[test]
fn every_error_type_about_a_client_packet_is_translated() {
    let dp = datapath("icmp6fwd");
    for (sent, service) in [
        (quote(&tcp_to_pod().build()), (VIP, 80)),
        (quote(&udp_to_pod().build()), (VIP, 53)),
    ] {
        let client = (CLIENT, u16::from_be_bytes([sent[40], sent[41]]));
        for kind in ERRORS {
            let frame = error(ROUTER, CLIENT, kind, &sent);
            let expected = error(ROUTER, CLIENT, kind, &quote_as(&sent, client, service));
            translates(&dp, Hook::Egress, &frame, &expected, Verdict::Reversed);
        }
    }
}

/// An error about a reply (the client's or a router's, quoting Service ->
/// client) reaches the backend, quoting backend -> client, at every hook
/// where packets enter the node; at egress it is not ours.
#[test]
fn errors_about_replies_reach_the_backend() {
    let dp = datapath("icmp6rep");
    for (sent, backend) in [
        (
            quote(&Packet6::tcp(VIP, 80, CLIENT, 40000).build()),
            (POD, 8080),
        ),
        (
            quote(&Packet6::udp(VIP, 53, CLIENT, 41000).build()),
            (POD, 5353),
        ),
    ] {
        let client = (CLIENT, u16::from_be_bytes([sent[42], sent[43]]));
        for from in [CLIENT, ROUTER] {
            for kind in ERRORS {
                let frame = error(from, VIP, kind, &sent);
                let expected = error(from, POD, kind, &quote_as(&sent, backend, client));
                for hook in Hook::ALL {
                    translates(&dp, hook, &frame, &expected, Verdict::Translated);
                }
                assert_eq!(Hook::Egress.pass(&dp, &frame), frame, "egress");
            }
        }
    }
}

/// What no translated flow explains, and `ICMPv6` that is no error, passes
/// untouched everywhere.
#[test]
fn what_is_not_ours_passes_untouched() {
    let dp = datapath("icmp6none");
    let sent = quote(&tcp_to_pod().build());
    let ptb = |quoted: &[u8]| error(ROUTER, CLIENT, (PACKET_TOO_BIG, 0, MTU_1400), quoted);
    let other_port = quote(&Packet6::tcp(CLIENT, 40001, POD, 8080).build());
    let behind_ext = quote(&tcp_to_pod().ext(Ext::DestOpts { len8: 0 }).build());
    let misaddressed = error(ROUTER, ROUTER, (PACKET_TOO_BIG, 0, MTU_1400), &sent);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a flow nobody tracks", ptb(&other_port)),
        ("a quote behind an extension header", ptb(&behind_ext)),
        ("an error not to the quoted source", misaddressed),
        ("a truncated quote", ptb(&sent[..40 + 4])),
        (
            "an echo request to the Service",
            icmp6(CLIENT, VIP, ECHO_REQUEST, 0, &[0, 1, 0, 1, 0xab, 0xcd]),
        ),
        (
            "a neighbor solicitation",
            icmp6(
                CLIENT,
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2),
                NEIGHBOR_SOLICITATION,
                0,
                &[&[0; 4][..], &POD.octets()].concat(),
            ),
        ),
        (
            "an echo request quoting a flow's tuple",
            icmp6(
                ROUTER,
                CLIENT,
                ECHO_REQUEST,
                0,
                &[&[0; 4][..], &sent].concat(),
            ),
        ),
    ];
    for (what, frame) in cases {
        untouched(&dp, &frame, what);
    }
}
