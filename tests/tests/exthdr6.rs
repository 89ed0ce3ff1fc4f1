//! IPv6 pass-through guarantees (step 1 of the IPv6 data path): every
//! Ethernet frame of ethertype 0x86DD reaches the IPv6 programs from
//! `lb_xdp`, `lb_tc_uplink`, `lb_tc` and `lb_tc_egress`, and, addressed to
//! no Service (none is programmed here), leaves them byte-identical. A
//! malformed one (fixed header, extension-header chain, L4 header) counts
//! `Ipv6HeadersSkipped` once where it enters the node (not at egress); a
//! well-formed TCP or UDP packet counts one IPv6 `passed` verdict there, as
//! IPv4 counts one (a first fragment too; a later fragment of a datagram
//! nobody tracks counts nothing, as IPv4's); one that is
//! not ours (neighbor discovery, MLD, AH/ESP, a routing header with
//! segments left, link-local or multicast addresses) counts nothing; none
//! starts a flow. Through `BPF_PROG_TEST_RUN`; needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use lb_common::{Event, Family, Verdict};
use lb_tests::{
    packet::{with_byte, with_u16, Hook, Packet, TestDatapath},
    packet6::{
        checksums6_valid, truncated6, with_payload_len, Ext, Packet6, IP6_PAYLOAD_OFF, NEXTHDR_ESP,
        NEXTHDR_NONE,
    },
};
use lb_userspace::datapath::{EGRESS_TC_PROGRAM, TC_PROGRAM, UPLINK_TC_PROGRAM, XDP_PROGRAM};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x10);
const NEIGHBOR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x11);
const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const ROUTER_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const MLDV2_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
/// The solicited-node multicast address of `NEIGHBOR`.
const SOLICITED: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x11);
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

const HOOKS: [Hook; 4] = [Hook::Xdp, Hook::TcUplink, Hook::Pod, Hook::Egress];

/// What a case counts where it enters the node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Count {
    /// `Ipv6HeadersSkipped`: malformed.
    Skipped,
    /// The `passed` verdict: a whole TCP or UDP packet to no Service.
    Passed,
    /// Nothing: not ours, or a later fragment of a datagram nobody tracks.
    Nothing,
}

/// A case: its name, the frame, and what it counts.
type Case = (String, Vec<u8>, Count);

fn syn() -> Packet6 {
    Packet6::tcp(CLIENT, 40000, VIP, 80).syn()
}

fn chain(p: Packet6, exts: impl IntoIterator<Item = Ext>) -> Packet6 {
    exts.into_iter().fold(p, Packet6::ext)
}

fn frag(offset: u16, more: bool) -> Ext {
    Ext::Fragment {
        offset,
        more,
        id: 0x0bad_cafe,
    }
}

fn malformed(name: &str, frame: Vec<u8>) -> Case {
    (name.to_string(), frame, Count::Skipped)
}

/// A well-formed TCP or UDP case whose checksums the builder made valid.
fn valid(name: &str, p: &Packet6) -> Case {
    let frame = p.build();
    assert!(checksums6_valid(&frame), "{name}: the builder's checksums");
    (name.to_string(), frame, Count::Passed)
}

/// A well-formed case that counts nothing (not ours, or a later fragment).
fn silent(name: &str, p: &Packet6) -> Case {
    (valid(name, p).0, p.build(), Count::Nothing)
}

/// A TCP SYN behind `exts`.
fn syn_behind(exts: impl IntoIterator<Item = Ext>) -> Vec<u8> {
    chain(syn(), exts).build()
}

/// Faults of the fixed header.
fn fixed_header_faults() -> Vec<Case> {
    let syn_frame = syn().build();
    let mut cases = vec![
        malformed(
            "version 4 in an IPv6 frame",
            with_byte(&syn_frame, 14, 0x40),
        ),
        malformed(
            "version 7 in an IPv6 frame",
            with_byte(&syn_frame, 14, 0x70),
        ),
        malformed(
            "payload_len one byte past the frame",
            with_u16(&syn_frame, 18, 21),
        ),
        malformed("payload_len 1500", with_u16(&syn_frame, 18, 1500)),
        malformed(
            "payload_len 0 without a hop-by-hop header",
            with_payload_len(&syn_frame, 0),
        ),
        malformed(
            "jumbogram: payload_len 0 and a jumbo payload option",
            with_payload_len(&syn_behind([Ext::jumbo(8 + 20)]), 0),
        ),
    ];
    // Ethertype 0x86DD and at least one byte of the fixed header.
    for cut in [15, 34, 53] {
        cases.push(malformed(
            &format!("{cut}-byte frame, shorter than the fixed header"),
            syn_frame[..cut].to_vec(),
        ));
    }
    cases
}

/// Faults of the extension-header chain and of the L4 header.
fn chain_and_l4_faults() -> Vec<Case> {
    let syn_frame = syn().build();
    let (hbh, dest) = (Ext::HopByHop { len8: 0 }, Ext::DestOpts { len8: 0 });
    vec![
        malformed(
            "six destination-options headers",
            syn_behind(vec![dest.clone(); 6]),
        ),
        malformed(
            "336 bytes of extension headers (hop-by-hop 168, destination options 168)",
            syn_behind([Ext::HopByHop { len8: 20 }, Ext::DestOpts { len8: 20 }]),
        ),
        malformed(
            "264 bytes of extension headers (136 + 128)",
            syn_behind([Ext::HopByHop { len8: 16 }, Ext::DestOpts { len8: 15 }]),
        ),
        malformed(
            "one hop-by-hop header of 264 bytes",
            syn_behind([Ext::HopByHop { len8: 32 }]),
        ),
        malformed(
            "hop-by-hop after destination options",
            syn_behind([dest.clone(), hbh.clone()]),
        ),
        malformed("hop-by-hop twice", syn_behind([hbh.clone(), hbh])),
        malformed(
            "destination options claiming 1608 bytes in a frame of 82",
            with_byte(&syn_behind([dest.clone()]), IP6_PAYLOAD_OFF + 1, 200),
        ),
        malformed(
            "frame ends inside the first extension header",
            truncated6(
                &syn_behind([Ext::HopByHop { len8: 1 }]),
                IP6_PAYLOAD_OFF + 10,
            ),
        ),
        malformed(
            "TCP header cut short (10 of 20 bytes)",
            truncated6(&syn_frame, IP6_PAYLOAD_OFF + 10),
        ),
        malformed(
            "TCP header cut short (19 of 20 bytes)",
            truncated6(&syn_frame, IP6_PAYLOAD_OFF + 19),
        ),
        malformed(
            "TCP header cut short behind destination options",
            truncated6(&syn_behind([dest]), IP6_PAYLOAD_OFF + 8 + 12),
        ),
        malformed(
            "TCP data offset 4",
            with_byte(&syn_frame, IP6_PAYLOAD_OFF + 12, 0x40),
        ),
        malformed(
            "UDP checksum 0",
            Packet6::udp(CLIENT, 40000, VIP, 53)
                .zero_udp_checksum()
                .build(),
        ),
        malformed(
            "first fragment without the whole TCP header",
            truncated6(&syn_behind([frag(0, true)]), IP6_PAYLOAD_OFF + 8 + 12),
        ),
    ]
}

fn well_formed_cases() -> Vec<Case> {
    let data = b"0123456789abcdef0123456789abcdef";
    let five = [
        Ext::HopByHop { len8: 0 },
        Ext::DestOpts { len8: 1 },
        Ext::Routing { segments_left: 0 },
        frag(0, true),
        Ext::DestOpts { len8: 0 },
    ];
    let ack = Packet6::tcp(CLIENT, 40000, VIP, 80)
        .ack()
        .with_payload(data);
    let later = ack.clone().ext(frag(185, false)).build();
    vec![
        valid("TCP SYN", &syn()),
        valid("TCP ACK with data", &ack),
        valid("UDP", &Packet6::udp(CLIENT, 40000, VIP, 53)),
        valid(
            "DSCP EF and a flow label",
            &syn().traffic_class(0xb8).flow_label(0x1_2345),
        ),
        valid("hop-by-hop + TCP", &syn().ext(Ext::HopByHop { len8: 0 })),
        valid("destination options + TCP", &syn().ext(Ext::DestOpts { len8: 0 })),
        valid(
            "routing (segments left 0) + TCP",
            &syn().ext(Ext::Routing { segments_left: 0 }),
        ),
        valid(
            "five headers: hop-by-hop, destination options, routing, first fragment, destination options + UDP",
            &chain(Packet6::udp(CLIENT, 40000, VIP, 53), five),
        ),
        valid(
            "256 bytes of extension headers (128 + 128)",
            &chain(syn(), [Ext::HopByHop { len8: 15 }, Ext::DestOpts { len8: 15 }]),
        ),
        valid(
            "one hop-by-hop header of 256 bytes",
            &syn().ext(Ext::HopByHop { len8: 31 }),
        ),
        valid(
            "first fragment with the whole TCP header",
            &ack.clone().ext(frag(0, true)),
        ),
        silent("later fragment of TCP", &ack.clone().ext(frag(185, false))),
        // A later fragment holds no L4 header: fewer bytes than one are fine.
        (
            "later fragment of TCP, 10 bytes".to_string(),
            truncated6(&later, IP6_PAYLOAD_OFF + 8 + 10),
            Count::Nothing,
        ),
        valid("atomic fragment + TCP", &ack.ext(frag(0, false))),
    ]
}

fn not_ours_cases() -> Vec<Case> {
    let mut ns = vec![0; 4];
    ns.extend_from_slice(&NEIGHBOR.octets());
    ns.extend_from_slice(&[1, 1]);
    ns.extend_from_slice(&MAC);
    let mut na = vec![0x60, 0, 0, 0];
    na.extend_from_slice(&NEIGHBOR.octets());
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(&MAC);
    let mut rs = vec![0, 0, 0, 0, 1, 1];
    rs.extend_from_slice(&MAC);
    // Hop limit 64, no flags, lifetime 1800 s, then a /64 prefix option.
    let mut ra = vec![64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    ra.extend_from_slice(&[
        3, 4, 64, 0xc0, 0, 0, 0x0e, 0x10, 0, 0, 0x07, 0x08, 0, 0, 0, 0,
    ]);
    ra.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0).octets());
    // One record: change to exclude mode (join) of the solicited-node group.
    let mut mld = vec![0, 0, 0, 1, 4, 0, 0, 0];
    mld.extend_from_slice(&SOLICITED.octets());
    let esp = [
        0, 0, 0x10, 0, 0, 0, 0, 1, 0x5a, 0xa5, 0x5a, 0xa5, 0x5a, 0xa5, 0x5a, 0xa5,
    ];
    vec![
        silent(
            "routing (segments left 1) + TCP",
            &syn().ext(Ext::Routing { segments_left: 1 }),
        ),
        silent(
            "routing (segments left 3) + TCP",
            &syn().ext(Ext::Routing { segments_left: 3 }),
        ),
        silent("AH + TCP", &syn().ext(Ext::auth())),
        (
            "ESP".to_string(),
            Packet6::opaque(CLIENT, VIP, NEXTHDR_ESP, &esp).build(),
            Count::Nothing,
        ),
        (
            "no next header after destination options".to_string(),
            Packet6::opaque(CLIENT, VIP, NEXTHDR_NONE, &[])
                .ext(Ext::DestOpts { len8: 0 })
                .build(),
            Count::Nothing,
        ),
        (
            "no next header, 8 bytes after it".to_string(),
            Packet6::opaque(CLIENT, VIP, NEXTHDR_NONE, &[0; 8]).build(),
            Count::Nothing,
        ),
        silent(
            "neighbor solicitation",
            &Packet6::icmp6(CLIENT, SOLICITED, 135, 0, &ns),
        ),
        silent(
            "neighbor advertisement",
            &Packet6::icmp6(NEIGHBOR, CLIENT, 136, 0, &na),
        ),
        silent(
            "router solicitation",
            &Packet6::icmp6(LINK_LOCAL, ALL_ROUTERS, 133, 0, &rs),
        ),
        silent(
            "router advertisement",
            &Packet6::icmp6(ROUTER_LL, ALL_NODES, 134, 0, &ra),
        ),
        silent(
            "echo request to a Service address",
            &Packet6::icmp6(CLIENT, VIP, 128, 0, b"\x12\x34\x00\x01ping"),
        ),
        silent(
            "MLDv2 report after a hop-by-hop router alert",
            &Packet6::icmp6(LINK_LOCAL, MLDV2_ROUTERS, 143, 0, &mld).ext(Ext::router_alert()),
        ),
        silent(
            "TCP from link-local fe80::1",
            &Packet6::tcp(LINK_LOCAL, 40000, VIP, 80).syn(),
        ),
        silent(
            "UDP to multicast ff02::1",
            &Packet6::udp(CLIENT, 5353, ALL_NODES, 5353),
        ),
        silent(
            "TCP from the unspecified address",
            &Packet6::tcp(Ipv6Addr::UNSPECIFIED, 40000, VIP, 80).syn(),
        ),
        silent(
            "TCP to loopback ::1",
            &Packet6::tcp(CLIENT, 40000, Ipv6Addr::LOCALHOST, 80).syn(),
        ),
    ]
}

/// Every verdict and event counter of both families: (family, name, count).
fn counters(dp: &TestDatapath) -> Vec<(Family, &'static str, u64)> {
    let mut all = Vec::new();
    for family in Family::ALL {
        for v in Verdict::ALL {
            all.push((family, v.name(), dp.verdict_of(family, v)));
        }
        for e in Event::ALL {
            all.push((family, e.name(), dp.event_of(family, e)));
        }
    }
    all
}

/// Counters that differ between two readings, but IPv6's skipped headers
/// and passed verdicts (checked on their own).
fn moved(
    before: &[(Family, &'static str, u64)],
    after: &[(Family, &'static str, u64)],
) -> Vec<String> {
    let skipped = (Family::Ipv6, Event::Ipv6HeadersSkipped.name());
    let passed = (Family::Ipv6, Verdict::Passed.name());
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.2 != a.2 && (b.0, b.1) != skipped && (b.0, b.1) != passed)
        .map(|(b, a)| format!("{}/{}: {} -> {}", b.0.name(), b.1, b.2, a.2))
        .collect()
}

/// One run of `frame` at `hook`: (return code, frame after); `None` when the
/// kernel refuses to build an skb of it (a TC program and an IPv6 frame
/// shorter than the fixed header: recent kernels ask the test run for one).
fn run(dp: &TestDatapath, hook: Hook, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: 1,
        ..TestRunOptions::default()
    };
    let result = if hook == Hook::Xdp {
        let prog: &Xdp = dp.program(XDP_PROGRAM).try_into().unwrap();
        prog.test_run(opts)
    } else {
        let name = match hook {
            Hook::TcUplink => UPLINK_TC_PROGRAM,
            Hook::Pod => TC_PROGRAM,
            _ => EGRESS_TC_PROGRAM,
        };
        let prog: &SchedClassifier = dp.program(name).try_into().unwrap();
        prog.test_run(opts)
    };
    match result {
        Ok(r) => {
            out.truncate(r.data_size_out as usize);
            Some((r.return_value, out))
        }
        Err(_) if hook != Hook::Xdp && frame.len() < IP6_PAYLOAD_OFF => None,
        Err(e) => panic!(
            "{hook:?}: BPF_PROG_TEST_RUN of a {}-byte frame: {e:?}",
            frame.len()
        ),
    }
}

/// Runs every case at every hook: passed byte-identical, skipped counted
/// once if malformed, passed once if a whole TCP or UDP packet, no other
/// counter moved, no flow. Every deviation is listed before the test fails.
fn check(dp: &TestDatapath, cases: &[Case]) {
    let skipped = || dp.event_of(Family::Ipv6, Event::Ipv6HeadersSkipped);
    let passed = || dp.verdict_of(Family::Ipv6, Verdict::Passed);
    let mut failures = Vec::new();
    for (name, frame, count) in cases {
        for hook in HOOKS {
            let before = counters(dp);
            let (skipped_before, passed_before) = (skipped(), passed());
            let Some((ret, out)) = run(dp, hook, frame) else {
                continue;
            };
            let mut wrong = Vec::new();
            if ret != hook.passed() {
                wrong.push(format!("returned {ret}, not {}", hook.passed()));
            }
            if out != *frame {
                wrong.push("the frame changed".to_string());
            }
            // Counted where a frame enters the node; egress counts nothing
            // (a forwarded frame would count twice), as for IPv4.
            let entering = hook != Hook::Egress;
            let expected = u64::from(*count == Count::Skipped && entering);
            let counted = skipped() - skipped_before;
            if counted != expected {
                wrong.push(format!("Ipv6HeadersSkipped +{counted}, not +{expected}"));
            }
            let expected = u64::from(*count == Count::Passed && entering);
            let counted = passed() - passed_before;
            if counted != expected {
                wrong.push(format!("passed +{counted}, not +{expected}"));
            }
            let moved = moved(&before, &counters(dp));
            if !moved.is_empty() {
                wrong.push(format!("counters moved: {moved:?}"));
            }
            if !wrong.is_empty() {
                failures.push(format!("{name} at {hook:?}: {}", wrong.join("; ")));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} deviations:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(dp.snapshot().flows.is_empty(), "no flow recorded");
    assert!(dp.flows6().is_empty(), "no IPv6 flow recorded");
}

#[test]
fn malformed_ipv6_frames_pass_byte_identical_and_count_once() {
    let dp = TestDatapath::load("exthdr6bad", NODE).with_ipv6();
    let mut cases = fixed_header_faults();
    cases.extend(chain_and_l4_faults());
    check(&dp, &cases);
}

#[test]
fn well_formed_and_foreign_ipv6_frames_pass_byte_identical() {
    let dp = TestDatapath::load("exthdr6ok", NODE).with_ipv6();
    let mut cases = well_formed_cases();
    cases.extend(not_ours_cases());
    check(&dp, &cases);
    assert_eq!(dp.event_of(Family::Ipv6, Event::Ipv6HeadersSkipped), 0);

    // IPv4 is untouched: a SYN to nowhere passes as it did, counting
    // nothing in IPv6's slots.
    let v4 = Packet::tcp(
        Ipv4Addr::new(192, 168, 50, 10),
        40000,
        Ipv4Addr::new(10, 96, 0, 99),
        80,
    )
    .syn()
    .build();
    for hook in HOOKS {
        let before = counters(&dp);
        assert_eq!(
            hook.run(&dp, &v4),
            (hook.passed(), v4.clone()),
            "IPv4 at {hook:?}"
        );
        let ipv6_moved: Vec<_> = moved(&before, &counters(&dp))
            .into_iter()
            .filter(|m| m.starts_with("ipv6/"))
            .collect();
        assert!(ipv6_moved.is_empty(), "IPv4 at {hook:?}: {ipv6_moved:?}");
    }
    assert_eq!(dp.event_of(Family::Ipv6, Event::Ipv6HeadersSkipped), 0);
    assert!(dp.snapshot().flows.is_empty(), "no flow recorded");
}
