//! Services without endpoints refuse, as kube-proxy's REJECT rule does,
//! through the real programs (`BPF_PROG_TEST_RUN`): a TCP SYN or a UDP
//! datagram (whole, or a first fragment) to a frontend of a Service port
//! that has no usable endpoint anywhere is answered with an ICMP port
//! unreachable from the frontend's address to the sender, quoting the
//! offending IPv4 header and its first 8 bytes of TCP/UDP, and sent back
//! where it came from (`XDP_TX`; TC redirects to the interface it arrived
//! on); the packet itself is dropped and counted as dropped. Anything else
//! to such a Service (a TCP segment without SYN, a SYN with IPv4 options, a
//! packet from a source no error may go to) drops as before, and so does
//! everything beyond the rate limit and a SYN to a frontend whose endpoints
//! are all on other nodes under a `Local` traffic policy (kube-proxy drops
//! there too). A Service with endpoints is not affected. Exact expected
//! bytes, built from scratch. Needs root.

use std::net::Ipv4Addr;

use lb_common::{Verdict, REJECTS_PER_SECOND};
use lb_tests::{
    fixture::{frontend, frontend_without_local_endpoints, program},
    packet::{checksum, dst_of, src_of, Hook, Packet, TestDatapath},
};
use lb_userspace::desired::Protocol;

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// A pod of this node that is a client (the pod hook).
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
/// A Service without endpoints: TCP 80, UDP 53; and its node port.
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const EMPTY_NODE_PORT: u16 = 30080;
/// A Service with an endpoint on another node.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
/// An external IP of a Service with `externalTrafficPolicy: Local` whose only
/// endpoint is on another node: no endpoint here, but endpoints.
const LOCAL_POLICY: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 200);

/// ICMP destination unreachable, code port unreachable.
const UNREACH: u8 = 3;
const PORT_UNREACH: u8 = 3;
/// L4 bytes a refusal quotes (RFC 792).
const QUOTED_L4: usize = 8;

/// The client `hook` sees: outside the node, or a pod (egress starts no
/// flow: only the hooks where packets enter are asked).
fn client_of(hook: Hook) -> Ipv4Addr {
    match hook {
        Hook::Xdp | Hook::TcUplink => CLIENT,
        Hook::Pod | Hook::Egress => POD,
    }
}

/// The empty Service (ClusterIP and node port, TCP and UDP), VIP:80/TCP to
/// REMOTE, and the Local-policy frontend whose endpoint is on another node.
fn datapath(name: &str) -> TestDatapath {
    let mut dp = TestDatapath::load(name, NODE);
    program(
        &mut dp,
        &[
            frontend(EMPTY, 80, Protocol::Tcp, &[]),
            frontend(EMPTY, 53, Protocol::Udp, &[]),
            frontend(NODE, EMPTY_NODE_PORT, Protocol::Tcp, &[]),
            frontend(NODE, EMPTY_NODE_PORT, Protocol::Udp, &[]),
            frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)]),
            frontend_without_local_endpoints(LOCAL_POLICY, 80, Protocol::Tcp, &[(REMOTE, 8080)]),
        ],
    );
    dp
}

/// The refusal of `offending` (Ethernet, 20-byte IPv4 header) as it must
/// leave: Ethernet addresses swapped; IPv4 from `from` to the offender's
/// source (TOS 0xc0, id 0, DF off, TTL 64); ICMP port unreachable quoting the
/// offending IPv4 header and 8 bytes after it. Checksums from scratch.
fn refusal(from: Ipv4Addr, offending: &[u8]) -> Vec<u8> {
    let mut icmp = vec![UNREACH, PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&offending[14..34 + QUOTED_L4]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0xc0];
    ip.extend_from_slice(&u16::try_from(20 + icmp.len()).unwrap().to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&offending[26..30]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = offending[6..12].to_vec();
    f.extend_from_slice(&offending[0..6]);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// Asserts that `frame` through `hook` is refused from `from`, counted once
/// as dropped, and leaves no flow state.
fn refused(dp: &TestDatapath, hook: Hook, frame: &[u8], from: Ipv4Addr, what: &str) {
    let dropped = dp.verdict(Verdict::Dropped);
    let (ret, out) = hook.run(dp, frame);
    assert_eq!(
        ret,
        hook.bounced(),
        "{what}: {hook:?} sends the refusal back"
    );
    assert_eq!(out, refusal(from, frame), "{what}: {hook:?}: the refusal");
    assert_eq!(
        dp.verdict(Verdict::Dropped),
        dropped + 1,
        "{what}: {hook:?}: the offending packet counts as dropped"
    );
    let s = dp.snapshot();
    assert!(
        s.flows.is_empty() && s.replies.is_empty(),
        "{what}: no flow state"
    );
}

/// Asserts that `frame` through `hook` is dropped, counted once as dropped.
fn dropped(dp: &TestDatapath, hook: Hook, frame: &[u8], what: &str) {
    let before = dp.verdict(Verdict::Dropped);
    let (ret, _) = hook.run(dp, frame);
    assert_eq!(ret, hook.dropped(), "{what}: {hook:?} drops");
    assert_eq!(
        dp.verdict(Verdict::Dropped),
        before + 1,
        "{what}: {hook:?}: counted as dropped"
    );
}

#[test]
fn a_syn_to_a_service_without_endpoints_is_refused_on_every_hook() {
    let dp = datapath("reject-syn");
    for hook in Hook::ALL {
        let syn = Packet::tcp(client_of(hook), 40000, EMPTY, 80).syn().build();
        refused(&dp, hook, &syn, EMPTY, "SYN to the ClusterIP");
    }
}

#[test]
fn a_syn_to_a_node_port_without_endpoints_is_refused_from_the_node_address() {
    let dp = datapath("reject-nodeport");
    for hook in Hook::ALL {
        let syn = Packet::tcp(client_of(hook), 40001, NODE, EMPTY_NODE_PORT)
            .syn()
            .build();
        refused(&dp, hook, &syn, NODE, "SYN to the node port");
    }
}

#[test]
fn a_udp_datagram_to_a_service_without_endpoints_is_refused_on_every_hook() {
    let dp = datapath("reject-udp");
    for hook in Hook::ALL {
        let query = Packet::udp(client_of(hook), 50000, EMPTY, 53)
            .with_payload(&[0x5a; 300])
            .build();
        refused(&dp, hook, &query, EMPTY, "datagram to the ClusterIP");
        let to_node_port = Packet::udp(client_of(hook), 50001, NODE, EMPTY_NODE_PORT).build();
        refused(&dp, hook, &to_node_port, NODE, "datagram to the node port");
    }
}

#[test]
fn the_first_fragment_of_a_datagram_is_refused_and_a_later_one_passes() {
    let dp = datapath("reject-fragments");
    for hook in Hook::ALL {
        let pieces = Packet::udp(client_of(hook), 50002, EMPTY, 53)
            .with_payload(&[0x33; 3000])
            .with_ip_id(0x7700)
            .fragments(1480);
        refused(&dp, hook, &pieces[0], EMPTY, "first fragment");
        let (ret, out) = hook.run(&dp, &pieces[1]);
        assert_eq!(
            (ret, out.as_slice()),
            (hook.passed(), pieces[1].as_slice()),
            "{hook:?}: a later fragment (no ports) passes untouched, as before"
        );
    }
}

#[test]
fn tcp_segments_without_syn_to_a_service_without_endpoints_drop() {
    let dp = datapath("reject-non-syn");
    for hook in Hook::ALL {
        let c = client_of(hook);
        for (what, segment) in [
            ("ACK", Packet::tcp(c, 40002, EMPTY, 80).build()),
            ("SYN-ACK", Packet::tcp(c, 40002, EMPTY, 80).synack().build()),
            ("RST", Packet::tcp(c, 40002, EMPTY, 80).rst().build()),
            ("FIN", Packet::tcp(c, 40002, EMPTY, 80).fin().build()),
        ] {
            dropped(&dp, hook, &segment, what);
        }
    }
}

#[test]
fn a_syn_with_ip_options_or_from_a_source_no_error_may_go_to_drops() {
    let dp = datapath("reject-unanswerable");
    for hook in Hook::ALL {
        let options = Packet::tcp(client_of(hook), 40003, EMPTY, 80)
            .syn()
            .with_ip_options()
            .build();
        dropped(&dp, hook, &options, "SYN with IPv4 options");
        for source in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(224, 0, 0, 5),
            Ipv4Addr::BROADCAST,
        ] {
            let query = Packet::udp(source, 50003, EMPTY, 53).build();
            dropped(&dp, hook, &query, &format!("datagram from {source}"));
        }
    }
}

#[test]
fn a_frontend_whose_endpoints_are_elsewhere_under_a_local_policy_drops() {
    let dp = datapath("reject-local-policy");
    for hook in Hook::ALL {
        let syn = Packet::tcp(client_of(hook), 40004, LOCAL_POLICY, 80)
            .syn()
            .build();
        dropped(
            &dp,
            hook,
            &syn,
            "SYN to an eTP=Local frontend without a local endpoint",
        );
    }
}

#[test]
fn a_service_with_endpoints_is_not_affected() {
    let dp = datapath("reject-unaffected");
    for hook in Hook::ALL {
        let syn = Packet::tcp(client_of(hook), 40005, VIP, 80).syn().build();
        let (ret, out) = hook.run(&dp, &syn);
        assert_eq!(ret, hook.passed(), "{hook:?}: translated and handed on");
        assert_eq!(dst_of(&out), (REMOTE, 8080), "{hook:?}: to the backend");
    }
    assert_eq!(dp.verdict(Verdict::Dropped), 0, "nothing dropped");
}

/// Monotonic coarse seconds: the clock the programs' rate limit counts in
/// (`bpf_ktime_get_coarse_ns` is `CLOCK_MONOTONIC_COARSE`).
fn coarse_seconds() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec
}

/// Pins the calling thread to CPU `cpu`: the limit is per CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // read and write only the set given, of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        assert_eq!(rc, 0, "sched_setaffinity");
    }
}

/// Waits (at most 2 s) for the coarse clock's next second; returns it.
fn next_second() -> i64 {
    let now = coarse_seconds();
    for _ in 0..2_000 {
        let s = coarse_seconds();
        if s != now {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("the coarse clock did not tick within 2 s");
}

#[test]
fn beyond_the_rate_limit_in_a_second_a_cpu_drops_instead() {
    pin_to_cpu(0);
    let dp = datapath("reject-rate");
    let hooks = [Hook::Xdp, Hook::TcUplink, Hook::Pod];
    let limit = usize::try_from(REJECTS_PER_SECOND).unwrap();
    // Within one second of the clock (retried when the runs straddle a tick).
    for attempt in 0..3 {
        let second = next_second();
        let mut codes = Vec::with_capacity(limit + 1);
        for i in 0..=limit {
            // Every hook shares the CPU's budget.
            let hook = hooks[i % hooks.len()];
            let port = 20_000 + u16::try_from(i).unwrap();
            let syn = Packet::tcp(client_of(hook), port, EMPTY, 80).syn().build();
            let (ret, out) = hook.run(&dp, &syn);
            codes.push((hook, ret, out, syn));
        }
        if coarse_seconds() != second {
            assert!(attempt < 2, "every attempt straddled a clock tick");
            continue;
        }
        for (i, (hook, ret, out, syn)) in codes.iter().enumerate().take(limit) {
            assert_eq!(*ret, hook.bounced(), "reject {i} of {limit} in a second");
            assert_eq!(*out, refusal(EMPTY, syn), "reject {i}: the refusal");
        }
        let (hook, ret, _, _) = &codes[limit];
        assert_eq!(
            *ret,
            hook.dropped(),
            "the {}th reject in a second is a drop",
            limit + 1
        );
        break;
    }
    // The next second refuses again.
    next_second();
    let syn = Packet::tcp(CLIENT, 19_999, EMPTY, 80).syn().build();
    refused(&dp, Hook::Xdp, &syn, EMPTY, "a SYN in the next second");
    assert_eq!(src_of(&refusal(EMPTY, &syn)).0, EMPTY);
}
