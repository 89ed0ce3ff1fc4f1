//! The benchmarks' baselines do the work they claim: `xdp_parse` keeps the
//! whole Ethernet + IPv4 + TCP/UDP parse after optimisation, and passes every
//! packet unchanged, like `xdp_pass`. Needs root.

use std::net::Ipv4Addr;

use aya::programs::Xdp;
use lb_tests::packet::{arp, icmp_echo, ipv6_tcp, run, with_u16, Packet, TestDatapath, XDP_PASS};
use lb_userspace::datapath::{XDP_PARSE_PROGRAM, XDP_PASS_PROGRAM};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Instructions `xdp_parse` must have after the verifier at least. Measured
/// on kernel 6.18: 44 when the compiler had removed the L4 parse (its result
/// was never used: only the Ethernet type, IPv4 version, header length,
/// fragment bits and total length were read), 173 with the parse kept (the
/// TCP/UDP header checks, ports and flags). A real L4 parse cannot fit under
/// 100; the parse-less program cannot reach it.
const MIN_PARSE_INSNS: u32 = 100;

/// Instructions of a loaded program after the verifier (`xlated_prog_len` / 8).
fn instructions(dp: &TestDatapath, name: &str) -> u32 {
    let prog: &Xdp = dp.program(name).try_into().unwrap();
    let info = prog.info().expect("bpf_prog_info");
    info.size_translated().expect("xlated_prog_len") / 8
}

#[test]
fn parse_only_keeps_the_l4_parse() {
    let dp = TestDatapath::load("baseline-insns", NODE);
    let (parse, pass) = (
        instructions(&dp, XDP_PARSE_PROGRAM),
        instructions(&dp, XDP_PASS_PROGRAM),
    );
    eprintln!("instructions after the verifier: xdp_parse {parse}, xdp_pass {pass}");
    assert!(
        parse >= MIN_PARSE_INSNS,
        "xdp_parse has {parse} instructions: the compiler removed the parse it is meant to measure"
    );
}

/// Frames of every kind the parse meets: TCP and UDP (whole, first and later
/// fragments, IP options, payload), and what it rejects (malformed, not
/// IPv4, not TCP/UDP).
fn frames() -> Vec<Vec<u8>> {
    let tcp = || Packet::tcp(CLIENT, 40000, VIP, 80);
    let udp = || Packet::udp(CLIENT, 40001, VIP, 53);
    let syn = tcp().syn().build();
    vec![
        syn.clone(),
        tcp().ack().with_payload(b"GET / HTTP/1.1\r\n\r\n").build(),
        tcp().fin().build(),
        tcp().rst().build(),
        tcp().syn().with_ip_options().build(),
        udp().with_payload(b"query").build(),
        udp().zero_udp_checksum().build(),
        udp().with_payload(&[7; 64]).fragment(true, 0).build(),
        udp().with_payload(&[7; 64]).fragment(false, 8).build(),
        tcp().ack().with_payload(&[1; 1400]).build(),
        // Total length beyond the frame (truncated), and a TCP data offset
        // below the header's.
        with_u16(&syn, 16, 1500),
        {
            let mut f = syn.clone();
            f[46] = 0x20;
            f
        },
        syn[..40].to_vec(),
        icmp_echo(CLIENT, VIP),
        ipv6_tcp(),
        arp(),
    ]
}

#[test]
fn baselines_pass_every_packet_unchanged() {
    let dp = TestDatapath::load("baseline-pass", NODE);
    for name in [XDP_PARSE_PROGRAM, XDP_PASS_PROGRAM] {
        let prog: &Xdp = dp.program(name).try_into().unwrap();
        for (i, frame) in frames().iter().enumerate() {
            let (code, out) = run(prog, frame);
            assert_eq!(code, XDP_PASS, "{name} on frame {i}");
            assert_eq!(&out, frame, "{name} changed frame {i}");
        }
    }
}
