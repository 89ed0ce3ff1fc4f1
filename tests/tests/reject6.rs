//! IPv6 Services without endpoints refuse, the twin of `tests/reject.rs`,
//! through the real programs (`BPF_PROG_TEST_RUN`): a TCP SYN or a UDP
//! datagram to an IPv6 frontend of a Service port that has no usable
//! endpoint anywhere is answered with an `ICMPv6` destination unreachable,
//! port unreachable (type 1, code 4), from the frontend's address to the
//! sender, quoting the offending IPv6 header and its first 8 bytes of
//! TCP/UDP, and sent back where it came from (`XDP_TX`; TC redirects to the
//! interface it arrived on); the packet itself is dropped and counted as
//! dropped. Anything else to such a Service (a TCP segment without SYN, a
//! SYN behind extension headers) drops, and so does a SYN to a frontend
//! whose endpoints are all on other nodes under a `Local` traffic policy;
//! the per-CPU budget is IPv4's, shared. A Service with endpoints is not
//! affected. Exact expected bytes, built from scratch. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{Family, Verdict, REJECTS_PER_SECOND};
use lb_tests::{
    fixture::{apply, frontend, frontend6, program6},
    packet::{Hook, Packet, TestDatapath},
    packet6::{checksums6_valid, dst6_of, Ext, Packet6},
};
use lb_userspace::{
    desired::{Listen6, Protocol, TrafficPolicy},
    plan::Planner,
};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x11);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x10);
/// A pod of this node that is a client (the pod hook).
const POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 3);
/// A Service without endpoints: TCP 80, UDP 53; and its node port.
const EMPTY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x30);
const EMPTY_NODE_PORT: u16 = 30080;
/// A Service with an endpoint on this node.
const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const LOCAL: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);
/// An endpoint on another node.
const REMOTE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 2);
/// An IPv4 Service without endpoints (the shared budget).
const EMPTY4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// An external IP of a Service with `externalTrafficPolicy: Local` whose only
/// endpoint is on another node: no endpoint here, but endpoints.
const LOCAL_POLICY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x200);

/// `ICMPv6` destination unreachable, code port unreachable.
const UNREACH: u8 = 1;
const PORT_UNREACH: u8 = 4;
/// L4 bytes a refusal quotes.
const QUOTED_L4: usize = 8;
/// Offsets in an IPv6 frame: the IPv6 header, its source, its destination,
/// the byte after it.
const IP6: usize = 14;
const SRC: usize = 22;
const DST: usize = 38;
const L4: usize = 54;

/// The client `hook` sees: outside the node, or a pod.
fn client_of(hook: Hook) -> Ipv6Addr {
    match hook {
        Hook::Xdp | Hook::TcUplink => CLIENT,
        Hook::Pod | Hook::Egress => POD,
    }
}

/// The empty Service (cluster IP and node port, TCP and UDP), VIP:80/TCP
/// to LOCAL, and the Local-policy frontend whose endpoint is elsewhere.
fn datapath(name: &str) -> TestDatapath {
    datapath_and_planner(name).0
}

/// [`datapath`], and the planner that holds what it has.
fn datapath_and_planner(name: &str) -> (TestDatapath, Planner) {
    let mut dp = TestDatapath::load(name, NODE).with_ipv6();
    let mut planner = Planner::new(dp.slab_slots(), std::time::Duration::ZERO);
    let (local_fe, mut local) = frontend6(
        Listen6::Addr(LOCAL_POLICY, 80),
        Protocol::Tcp,
        &[(REMOTE, 8080, false)],
    );
    local.policy = TrafficPolicy::Local;
    local.pods_policy = TrafficPolicy::Local;
    program6(
        &mut dp,
        &mut planner,
        &[NODE6],
        &[
            frontend6(Listen6::Addr(EMPTY, 80), Protocol::Tcp, &[]),
            frontend6(Listen6::Addr(EMPTY, 53), Protocol::Udp, &[]),
            frontend6(Listen6::NodePort(EMPTY_NODE_PORT), Protocol::Tcp, &[]),
            frontend6(Listen6::NodePort(EMPTY_NODE_PORT), Protocol::Udp, &[]),
            frontend6(
                Listen6::Addr(VIP, 80),
                Protocol::Tcp,
                &[(LOCAL, 8080, true)],
            ),
            (local_fe, local),
        ],
    );
    (dp, planner)
}

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap()
}

/// The refusal of `offending` (Ethernet, IPv6 without extension headers)
/// as it must leave, quoting `quoted_l4` bytes of its TCP/UDP header:
/// Ethernet addresses swapped; IPv6 from `from` to the offender's source
/// (traffic class and flow label 0, hop limit 64); `ICMPv6` port
/// unreachable quoting the offending IPv6 header and the L4 bytes, its
/// checksum over the pseudo-header, from scratch.
fn refusal_quoting(from: Ipv6Addr, offending: &[u8], quoted_l4: usize) -> Vec<u8> {
    let to = &offending[SRC..DST];
    let mut icmp = vec![UNREACH, PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&offending[IP6..L4 + quoted_l4]);
    let len = u16::try_from(icmp.len()).unwrap();
    let mut pseudo = from.octets().to_vec();
    pseudo.extend_from_slice(to);
    pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let c = checksum(&pseudo);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = offending[6..12].to_vec();
    f.extend_from_slice(&offending[0..6]);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[58, 64]);
    f.extend_from_slice(&from.octets());
    f.extend_from_slice(to);
    f.extend_from_slice(&icmp);
    f
}

/// [`refusal_quoting`] 8 bytes of TCP/UDP.
fn refusal(from: Ipv6Addr, offending: &[u8]) -> Vec<u8> {
    refusal_quoting(from, offending, QUOTED_L4)
}

/// Asserts that `frame` through `hook` is refused from `from`, counted once
/// as dropped, and leaves no flow state.
fn refused(dp: &TestDatapath, hook: Hook, frame: &[u8], from: Ipv6Addr, what: &str) {
    let dropped = dp.verdict_of(Family::Ipv6, Verdict::Dropped);
    let (ret, out) = hook.run(dp, frame);
    assert_eq!(
        ret,
        hook.bounced(),
        "{what}: {hook:?} sends the refusal back"
    );
    assert_eq!(out, refusal(from, frame), "{what}: {hook:?}: the refusal");
    assert!(checksums6_valid(&out), "{what}: {hook:?}: its checksum");
    assert_eq!(
        dp.verdict_of(Family::Ipv6, Verdict::Dropped),
        dropped + 1,
        "{what}: {hook:?}: the offending packet counts as dropped"
    );
    assert!(dp.flows6().is_empty(), "{what}: no flow state");
}

/// Asserts that `frame` through `hook` is dropped, counted once as dropped.
fn dropped(dp: &TestDatapath, hook: Hook, frame: &[u8], what: &str) {
    let before = dp.verdict_of(Family::Ipv6, Verdict::Dropped);
    let (ret, _) = hook.run(dp, frame);
    assert_eq!(ret, hook.dropped(), "{what}: {hook:?} drops");
    assert_eq!(
        dp.verdict_of(Family::Ipv6, Verdict::Dropped),
        before + 1,
        "{what}: {hook:?}: counted as dropped"
    );
}

#[test]
fn a_syn_to_an_ipv6_service_without_endpoints_is_refused_on_every_hook() {
    let dp = datapath("reject6-syn");
    for hook in Hook::ALL {
        let syn = Packet6::tcp(client_of(hook), 40000, EMPTY, 80)
            .syn()
            .build();
        refused(&dp, hook, &syn, EMPTY, "SYN to the cluster IP");
    }
}

#[test]
fn a_syn_to_an_ipv6_node_port_without_endpoints_is_refused_from_the_node_address() {
    let dp = datapath("reject6-nodeport");
    for hook in Hook::ALL {
        let syn = Packet6::tcp(client_of(hook), 40001, NODE6, EMPTY_NODE_PORT)
            .syn()
            .build();
        refused(&dp, hook, &syn, NODE6, "SYN to the node port");
    }
}

#[test]
fn a_udp_datagram_to_an_ipv6_service_without_endpoints_is_refused_on_every_hook() {
    let dp = datapath("reject6-udp");
    for hook in Hook::ALL {
        let query = Packet6::udp(client_of(hook), 50000, EMPTY, 53)
            .with_payload(&[0x5a; 300])
            .build();
        refused(&dp, hook, &query, EMPTY, "datagram to the cluster IP");
        let to_node_port = Packet6::udp(client_of(hook), 50001, NODE6, EMPTY_NODE_PORT).build();
        refused(&dp, hook, &to_node_port, NODE6, "datagram to the node port");
    }
}

#[test]
fn tcp_segments_without_syn_or_behind_extension_headers_drop() {
    let dp = datapath("reject6-unanswered");
    for hook in Hook::ALL {
        let c = client_of(hook);
        for (what, segment) in [
            ("ACK", Packet6::tcp(c, 40002, EMPTY, 80).build()),
            (
                "SYN-ACK",
                Packet6::tcp(c, 40002, EMPTY, 80).synack().build(),
            ),
            (
                "SYN behind destination options",
                Packet6::tcp(c, 40002, EMPTY, 80)
                    .syn()
                    .ext(Ext::options(60, &[1, 4, 0, 0, 0, 0]))
                    .build(),
            ),
        ] {
            dropped(&dp, hook, &segment, what);
        }
    }
}

#[test]
fn a_frontend_whose_endpoints_are_elsewhere_under_a_local_policy_drops() {
    let dp = datapath("reject6-local-policy");
    for hook in Hook::ALL {
        let syn = Packet6::tcp(client_of(hook), 40004, LOCAL_POLICY, 80)
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
fn an_ipv6_service_with_endpoints_is_not_affected() {
    let dp = datapath("reject6-unaffected");
    for hook in Hook::ALL {
        let syn = Packet6::tcp(client_of(hook), 40005, VIP, 80).syn().build();
        let (ret, out) = hook.run(&dp, &syn);
        assert_eq!(ret, hook.passed(), "{hook:?}: translated and handed on");
        assert_eq!(dst6_of(&out), (LOCAL, 8080), "{hook:?}: to the backend");
    }
    assert_eq!(dp.verdict_of(Family::Ipv6, Verdict::Dropped), 0);
}

/// Monotonic coarse seconds: the clock the programs' rate limit counts in.
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

/// Pins the calling thread to CPU `cpu`: the budget is per CPU.
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
fn ipv4_and_ipv6_refusals_share_a_cpus_budget() {
    pin_to_cpu(0);
    let (mut dp, mut planner) = datapath_and_planner("reject6-budget");
    apply(
        &mut dp,
        &mut planner,
        &[frontend(EMPTY4, 80, Protocol::Tcp, &[])],
    );
    let limit = u16::try_from(REJECTS_PER_SECOND).unwrap();
    for attempt in 0..3 {
        let second = next_second();
        // IPv4 takes the whole budget, then IPv6 finds none left.
        let refused4 = (0..limit)
            .filter(|i| {
                let syn = Packet::tcp(Ipv4Addr::new(192, 168, 50, 10), 20_000 + i, EMPTY4, 80)
                    .syn()
                    .build();
                dp.run_xdp(&syn).0 == Hook::Xdp.bounced()
            })
            .count();
        let syn = Packet6::tcp(CLIENT, 21_000, EMPTY, 80).syn().build();
        let ret6 = dp.run_xdp(&syn).0;
        if coarse_seconds() != second {
            assert!(attempt < 2, "every attempt straddled a clock tick");
            continue;
        }
        assert_eq!(refused4, usize::from(limit), "IPv4 refusals in a second");
        assert_eq!(ret6, Hook::Xdp.dropped(), "no budget left for IPv6");
        return;
    }
}
