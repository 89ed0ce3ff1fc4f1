//! One flow, one backend, one SNAT port, one reply tuple: the same new flow
//! from two CPUs at once, a pool with one port left, a stale conntrack entry,
//! and two flows whose replies would share a tuple. Crafted frames through
//! the real programs with `BPF_PROG_TEST_RUN`; needs root and two CPUs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use aya::programs::Xdp;
use lb_common::{
    conntrack::CtState, BackendKey, CtEntry, Event, FlowKey, RevNatEntry, Verdict, CT_F_REPLIED,
    CT_F_SNAT, IPPROTO_TCP,
};
use lb_tests::{
    fixture::{frontend, setup},
    packet::{
        checksums_valid, flow_key, run, src_of, test_flows, Packet, TestDatapath, TC_ACT_OK,
        XDP_DROP, XDP_PASS,
    },
};
use lb_userspace::{
    conntrack::{gc::Collector, monotonic_ns, monotonic_s},
    datapath::XDP_PROGRAM,
    desired::{DesiredFrontend, Frontend, Protocol},
    flows::{FlowSettings, PortRange},
    plan::Planner,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
/// A backend address no frontend has (any more).
const GONE: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 9);

/// Distinct flows raced through two CPUs, per variant.
const RACED_FLOWS: usize = 3_000;
/// How long a race variant may take, all rounds together.
const RACE_BUDGET: Duration = Duration::from_mins(1);

/// The id the planner gave backend `addr`:`port`.
fn backend_id(planner: &Planner, addr: Ipv4Addr, port: u16) -> u32 {
    planner
        .ports()
        .find_map(|p| p.backends.get(&SocketAddrV4::new(addr, port)))
        .expect("the backend is applied")
        .id
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Packet {
    Packet::tcp(src, sport, dst, dport)
}

fn ne(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The reply tuple `backend` -> `to`, as the reverse-NAT map keys it.
fn reply_key(backend: (Ipv4Addr, u16), to: (Ipv4Addr, u16)) -> FlowKey {
    flow_key(backend.0, backend.1, to.0, to.1, IPPROTO_TCP)
}

/// How many reverse-NAT entries restore each client flow (client, service).
fn restorers(dp: &TestDatapath) -> HashMap<(u32, u16, u32, u16), usize> {
    let mut count = HashMap::new();
    for rev in dp.snapshot().replies.values() {
        *count
            .entry((rev.client_addr, rev.client_port, rev.svc_addr, rev.svc_port))
            .or_insert(0) += 1;
    }
    count
}

// ---------------------------------------------------------------------------
// 1. The same new flow from two CPUs at once.
// ---------------------------------------------------------------------------

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity
    // writes at most its size into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: CPU_ISSET reads the set within CPU_SETSIZE.
    (0..usize::try_from(libc::CPU_SETSIZE).unwrap())
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to `cpu` and checks it runs there.
fn pin_to(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (it came from `allowed_cpus`).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set is valid for its size.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: no preconditions.
    let now_on = unsafe { libc::sched_getcpu() };
    assert_eq!(
        usize::try_from(now_on).ok(),
        Some(cpu),
        "the thread runs on its CPU"
    );
}

/// Sets the flag when its thread panics, so the other racing thread stops
/// waiting for it at once rather than at the end of [`RACE_BUDGET`].
struct AbortOnPanic<'a>(&'a AtomicBool);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs every frame through XDP from two threads pinned to two CPUs,
/// released together for each frame: both threads spin on one counter, so
/// the second to arrive releases the first within a cache-line transfer.
/// Returns each thread's (return code, frame out) per frame.
fn race(dp: &TestDatapath, frames: &[Vec<u8>]) -> [Vec<(u32, Vec<u8>)>; 2] {
    let prog: &Xdp = dp.program(XDP_PROGRAM).try_into().expect("the XDP program");
    let cpus = allowed_cpus();
    assert!(
        cpus.len() >= 2,
        "the race needs two CPUs, this process may use {cpus:?}"
    );
    let arrived = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let deadline = Instant::now() + RACE_BUDGET;
    // `None`: the other thread panicked (its panic is the one to report).
    let racer = |cpu: usize| {
        let _guard = AbortOnPanic(&abort);
        pin_to(cpu);
        let mut outs = Vec::with_capacity(frames.len());
        for (round, frame) in frames.iter().enumerate() {
            arrived.fetch_add(1, Ordering::SeqCst);
            let everyone = 2 * (round + 1);
            let mut spins = 0u32;
            while arrived.load(Ordering::Acquire) < everyone {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(4096) {
                    if abort.load(Ordering::Relaxed) {
                        return None;
                    }
                    assert!(
                        Instant::now() <= deadline,
                        "round {round}: the other CPU did not arrive within {RACE_BUDGET:?}"
                    );
                }
            }
            outs.push(run(prog, frame));
        }
        Some(outs)
    };
    let joined = std::thread::scope(|s| {
        let a = s.spawn(|| racer(cpus[0]));
        let b = s.spawn(|| racer(cpus[1]));
        [a.join(), b.join()]
    });
    joined
        .map(|r| r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        .map(|outs| outs.expect("a thread stops early only when the other panicked"))
}

/// One raced flow: its client port, its output (the same from both CPUs),
/// and its conntrack entry.
struct RacedFlow {
    sport: u16,
    out: Vec<u8>,
    ct: CtEntry,
}

/// Loads a data path whose VIP:80/TCP goes to `backend` alone and sends
/// `RACED_FLOWS` new flows (one client, one SYN each) through two CPUs at
/// once. Checks what holds whatever the backend: both CPUs sent each flow
/// the same bytes with valid checksums; each flow has one conntrack entry
/// and one reverse entry restoring it; one entry was created per flow;
/// every packet was translated; and the CPUs did race. Returns the data
/// path, the flows, and how many races the later CPU lost.
fn run_race(name: &str, backend: (Ipv4Addr, u16, bool)) -> (TestDatapath, Vec<RacedFlow>, u64) {
    let (dp, _planner) = setup(
        name,
        NODE,
        test_flows(),
        &[frontend(VIP, 80, Protocol::Tcp, &[backend])],
    );
    let syns: Vec<(u16, Vec<u8>)> = (0..RACED_FLOWS)
        .map(|i| {
            let sport = 10_000 + u16::try_from(i).unwrap();
            (sport, tcp(CLIENT, sport, VIP, 80).syn().build())
        })
        .collect();
    let frames: Vec<Vec<u8>> = syns.iter().map(|(_, f)| f.clone()).collect();
    let started = Instant::now();
    let runs = race(&dp, &frames);
    let took = started.elapsed();
    let lost = dp.event(Event::ConntrackRaceLost);
    eprintln!(
        "{name}: {RACED_FLOWS} flows x 2 CPUs in {took:?}: {lost} races lost (the later CPU adopted the entry)"
    );

    let restoring = restorers(&dp);
    let flows: Vec<RacedFlow> = syns
        .iter()
        .enumerate()
        .map(|(i, &(sport, _))| {
            let (a, b) = (&runs[0][i], &runs[1][i]);
            assert_eq!(a.0, XDP_PASS, "flow {sport}: CPU A's verdict");
            assert_eq!(b.0, XDP_PASS, "flow {sport}: CPU B's verdict");
            assert_eq!(
                a.1,
                b.1,
                "flow {sport}: the two CPUs sent it differently: {:?} vs {:?}",
                src_of(&a.1),
                src_of(&b.1)
            );
            assert!(checksums_valid(&a.1), "flow {sport}: checksums");
            let ct = dp
                .conntrack(&flow_key(CLIENT, sport, VIP, 80, IPPROTO_TCP))
                .unwrap_or_else(|| panic!("flow {sport} is tracked"));
            let n = restoring
                .get(&(ne(CLIENT), sport.to_be(), ne(VIP), 80u16.to_be()))
                .copied()
                .unwrap_or(0);
            assert_eq!(n, 1, "flow {sport}: reverse entries restoring it");
            RacedFlow {
                sport,
                out: a.1.clone(),
                ct,
            }
        })
        .collect();
    let snapshot = dp.snapshot();
    assert_eq!(
        snapshot.flows.len(),
        RACED_FLOWS,
        "one conntrack entry per flow"
    );
    assert_eq!(
        snapshot.replies.len(),
        RACED_FLOWS,
        "one reverse entry per flow: a losing CPU gave back any port it claimed"
    );
    assert_eq!(dp.event(Event::ConntrackCreated), RACED_FLOWS as u64);
    assert_eq!(dp.verdict(Verdict::Translated), 2 * RACED_FLOWS as u64);
    assert_eq!(dp.verdict(Verdict::Error), 0);
    assert!(
        lost > 0,
        "the two CPUs never raced in {RACED_FLOWS} rounds: the test proved nothing"
    );
    (dp, flows, lost)
}

#[test]
fn the_same_new_flow_on_two_cpus_gets_one_snat_port_and_one_reverse_entry() {
    let (dp, flows, lost) = run_race("race-snat", (REMOTE, 8080, false));
    let mut ports = BTreeSet::new();
    for RacedFlow { sport, out, ct } in &flows {
        let (src, snat_port) = src_of(out);
        assert_eq!(src, NODE, "flow {sport}: translated to the node");
        assert_eq!(
            *out,
            tcp(NODE, snat_port, REMOTE, 8080).syn().build(),
            "flow {sport}: exact bytes"
        );
        assert!(
            ports.insert(snat_port),
            "flow {sport}: SNAT port {snat_port} is another flow's too"
        );
        assert_eq!(
            (ct.flags & CT_F_SNAT, u16::from_be(ct.snat_port)),
            (CT_F_SNAT, snat_port),
            "flow {sport}: conntrack holds the port both CPUs used"
        );
        let rev = dp
            .reverse(&reply_key((REMOTE, 8080), (NODE, snat_port)))
            .expect("the port's reverse entry");
        assert_eq!(
            (rev.client_addr, rev.client_port),
            (ne(CLIENT), sport.to_be()),
            "flow {sport}: the reverse entry of its port is its own"
        );
    }
    assert_eq!(
        dp.event(Event::RevNatCreated),
        RACED_FLOWS as u64 + lost,
        "each flow claimed one port, and each loser one more that it released"
    );
}

#[test]
fn the_same_new_flow_on_two_cpus_to_a_local_backend_gets_one_entry() {
    let (dp, flows, _lost) = run_race("race-local", (POD, 8080, true));
    for RacedFlow { sport, out, ct } in &flows {
        assert_eq!(
            *out,
            tcp(CLIENT, *sport, POD, 8080).syn().build(),
            "flow {sport}: only the destination changes"
        );
        assert_eq!(ct.flags & CT_F_SNAT, 0, "flow {sport}: no SNAT");
        assert_eq!(ct.backend_addr, ne(POD));
    }
    assert_eq!(dp.event(Event::RevNatCreated), RACED_FLOWS as u64);
    assert_eq!(
        dp.event(Event::TupleRemapped),
        0,
        "a racing CPU never took its own flow's tuple for another flow's"
    );
}

// ---------------------------------------------------------------------------
// 2. A pool of four ports, three held; a stale entry.
// ---------------------------------------------------------------------------

/// Writes what the programs would have written for an established,
/// replied flow `client` -> VIP:80 to `backend` (its id, its address, port
/// 8080) holding SNAT port `port` of the node, with claim tag `claim`.
fn hold_port(
    dp: &TestDatapath,
    client: (Ipv4Addr, u16),
    backend: (u32, Ipv4Addr),
    port: u16,
    claim: u64,
) {
    let now = monotonic_s();
    dp.insert_reverse(
        &reply_key((backend.1, 8080), (NODE, port)),
        &RevNatEntry {
            svc_addr: ne(VIP),
            client_addr: ne(client.0),
            svc_port: 80u16.to_be(),
            client_port: client.1.to_be(),
            created_s: now,
            last_seen_s: now,
            ifindex: 0,
            claim,
        },
    );
    dp.insert_conntrack(
        &flow_key(client.0, client.1, VIP, 80, IPPROTO_TCP),
        &CtEntry {
            backend_id: backend.0,
            backend_addr: ne(backend.1),
            backend_port: 8080u16.to_be(),
            snat_port: port.to_be(),
            snat_addr: ne(NODE),
            flags: CT_F_SNAT | CT_F_REPLIED,
            state: CtState::Established as u8,
            pad: 0,
            last_seen_s: now,
            created_ns: monotonic_ns(),
        },
    );
}

#[test]
fn the_last_free_port_of_the_pool_is_found_then_the_pool_is_exhausted() {
    let flows = FlowSettings {
        snat_ports: PortRange(2000..=2003),
        ..test_flows()
    };
    let (dp, planner) = setup(
        "pool4",
        NODE,
        flows,
        &[frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)])],
    );
    let id = backend_id(&planner, REMOTE, 8080);
    for (i, port) in (2000..=2002).enumerate() {
        let n = u8::try_from(i).unwrap();
        hold_port(
            &dp,
            (Ipv4Addr::new(192, 168, 60, 1 + n), 50_000),
            (id, REMOTE),
            port,
            0x5eed_0000 + u64::from(n),
        );
    }

    // Every fresh client gets the one free port (128 random probes of 4 ports).
    let trials = 20u8;
    for trial in 0..trials {
        let client = Ipv4Addr::new(192, 168, 70, 1 + trial);
        let (ret, out) = dp.run_xdp(&tcp(client, 40_000, VIP, 80).syn().build());
        assert_eq!(ret, XDP_PASS, "trial {trial}");
        assert_eq!(
            out,
            tcp(NODE, 2003, REMOTE, 8080).syn().build(),
            "trial {trial}: the only free port, {:?}",
            src_of(&out)
        );
        if trial + 1 < trials {
            // The flow goes (as the collector removes a gone flow): the port is free again.
            dp.remove_conntrack(&flow_key(client, 40_000, VIP, 80, IPPROTO_TCP));
            dp.remove_reverse(&reply_key((REMOTE, 8080), (NODE, 2003)));
        }
    }
    // The last one completes its handshake: an assured flow, which keeps its port.
    let last = Ipv4Addr::new(192, 168, 70, trials);
    let (ret, reply) = dp.run_xdp(&tcp(REMOTE, 8080, NODE, 2003).synack().build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(reply, tcp(VIP, 80, last, 40_000).synack().build());
    let (_, ack) = dp.run_xdp(&tcp(last, 40_000, VIP, 80).ack().build());
    assert_eq!(ack, tcp(NODE, 2003, REMOTE, 8080).ack().build());
    let ct = dp
        .conntrack(&flow_key(last, 40_000, VIP, 80, IPPROTO_TCP))
        .unwrap();
    assert_eq!(
        (CtState::from_u8(ct.state), ct.flags & CT_F_REPLIED),
        (CtState::Established, CT_F_REPLIED)
    );
    assert_eq!(dp.verdict(Verdict::Error), 0);
    assert!(Collector::new(dp.pin_dir())
        .exhaustion()
        .unwrap()
        .is_empty());

    // Four live, assured holders: a new flow finds no port, and it is counted.
    let exhausted_key = lb_userspace::conntrack::backend_label(&BackendKey {
        addr: ne(REMOTE),
        port: 8080u16.to_be(),
        proto: IPPROTO_TCP,
        pad: 0,
    });
    for attempt in 1..=2u8 {
        let client = Ipv4Addr::new(192, 168, 80, attempt);
        let (ret, _) = dp.run_xdp(&tcp(client, 40_000, VIP, 80).syn().build());
        assert_eq!(ret, XDP_DROP, "attempt {attempt}: no port left");
        assert_eq!(dp.verdict(Verdict::Error), u64::from(attempt));
        assert_eq!(dp.event(Event::SnatExhausted), u64::from(attempt));
        let counts = Collector::new(dp.pin_dir()).exhaustion().unwrap();
        assert_eq!(
            counts,
            BTreeMap::from([(exhausted_key.clone(), u64::from(attempt))]),
            "SNAT_EXHAUSTED counts it for REMOTE:8080"
        );
        assert!(
            dp.conntrack(&flow_key(client, 40_000, VIP, 80, IPPROTO_TCP))
                .is_none(),
            "a refused flow is not tracked"
        );
    }
    // Nobody lost a port.
    let restoring = restorers(&dp);
    for (i, port) in (2000..=2002).enumerate() {
        let holder = Ipv4Addr::new(192, 168, 60, 1 + u8::try_from(i).unwrap());
        let rev = dp
            .reverse(&reply_key((REMOTE, 8080), (NODE, port)))
            .unwrap();
        assert_eq!(rev.client_addr, ne(holder), "port {port} keeps its holder");
    }
    assert_eq!(restoring.len(), 4);
    assert_eq!(dp.event(Event::SnatEarlyDrop), 0);
    assert_eq!(dp.event(Event::SnatReclaimed), 0);
}

#[test]
fn a_new_syn_replaces_a_conntrack_entry_whose_backend_is_gone() {
    let (dp, planner) = setup(
        "stale",
        NODE,
        test_flows(),
        &[frontend(VIP, 80, Protocol::Tcp, &[(REMOTE, 8080, false)])],
    );
    let id = backend_id(&planner, REMOTE, 8080);
    // Flow 41000's backend id no longer exists; flow 41001's id was reused
    // for another endpoint (the entry names the old address).
    let unused_id = id + 1000;
    for (sport, stale_id, old_port) in [(41_000u16, unused_id, 3_333u16), (41_001, id, 3_334)] {
        let key = flow_key(CLIENT, sport, VIP, 80, IPPROTO_TCP);
        hold_port(
            &dp,
            (CLIENT, sport),
            (stale_id, GONE),
            old_port,
            0xdead_0000 + u64::from(sport),
        );
        let (ret, out) = dp.run_xdp(&tcp(CLIENT, sport, VIP, 80).syn().build());
        assert_eq!(ret, XDP_PASS, "flow {sport}");
        let (src, port) = src_of(&out);
        assert_eq!(src, NODE);
        assert_eq!(
            out,
            tcp(NODE, port, REMOTE, 8080).syn().build(),
            "flow {sport}: to the live backend"
        );
        let ct = dp.conntrack(&key).expect("tracked");
        assert_eq!(
            (ct.backend_id, ct.backend_addr, u16::from_be(ct.snat_port)),
            (id, ne(REMOTE), port),
            "flow {sport}: the stale entry was replaced"
        );
        assert_eq!(
            CtState::from_u8(ct.state),
            CtState::SynSent,
            "flow {sport}: a new connection"
        );
        let rev = dp
            .reverse(&reply_key((REMOTE, 8080), (NODE, port)))
            .expect("the new port's reverse entry");
        assert_eq!(
            (rev.client_addr, rev.client_port),
            (ne(CLIENT), sport.to_be())
        );
        // The reply of the new backend comes back as the service.
        let (ret, reply) = dp.run_xdp(&tcp(REMOTE, 8080, NODE, port).synack().build());
        assert_eq!(
            (ret, reply),
            (XDP_PASS, tcp(VIP, 80, CLIENT, sport).synack().build())
        );
    }
    assert_eq!(dp.verdict(Verdict::Translated), 2);
    assert_eq!(dp.verdict(Verdict::Error), 0);
    assert_eq!(
        dp.event(Event::ConntrackRaceLost),
        0,
        "a dead entry is no race"
    );
}

// ---------------------------------------------------------------------------
// 3. Two frontends, one local backend, one client port: a reply-tuple clash.
// ---------------------------------------------------------------------------

fn clash_state() -> Vec<(Frontend, DesiredFrontend)> {
    vec![
        frontend(VIP, 443, Protocol::Tcp, &[(POD, 8443, true)]),
        frontend(VIP2, 443, Protocol::Tcp, &[(POD, 8443, true)]),
    ]
}

#[test]
fn a_reply_tuple_clash_remaps_the_second_flow_and_replies_go_to_their_frontends() {
    let (dp, _planner) = setup("clash", NODE, test_flows(), &clash_state());
    let pool = test_flows().snat_ports.0;

    let (ret, first) = dp.run_xdp(&tcp(CLIENT, 40_000, VIP, 443).syn().build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(
        first,
        tcp(CLIENT, 40_000, POD, 8443).syn().build(),
        "the first flow keeps the client's address and port"
    );
    let (ret, second) = dp.run_xdp(&tcp(CLIENT, 40_000, VIP2, 443).syn().build());
    assert_eq!(ret, XDP_PASS);
    let (src, p) = src_of(&second);
    assert_eq!(src, CLIENT, "the client's address is kept");
    assert!(
        pool.contains(&p) && p != 40_000,
        "the port is remapped into the pool: {p}"
    );
    assert_eq!(second, tcp(CLIENT, p, POD, 8443).syn().build());
    assert!(checksums_valid(&second));
    assert_eq!(dp.event(Event::TupleRemapped), 1);

    let ct = dp
        .conntrack(&flow_key(CLIENT, 40_000, VIP2, 443, IPPROTO_TCP))
        .unwrap();
    assert_eq!(
        (
            ct.flags & CT_F_SNAT,
            ct.snat_addr,
            u16::from_be(ct.snat_port)
        ),
        (CT_F_SNAT, ne(CLIENT), p)
    );

    // The pod's replies, leaving the node, go back to their own frontends.
    let (ret, reply1) = dp.run_tc_egress(&tcp(POD, 8443, CLIENT, 40_000).synack().build());
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(reply1, tcp(VIP, 443, CLIENT, 40_000).synack().build());
    let (ret, reply2) = dp.run_tc_egress(&tcp(POD, 8443, CLIENT, p).synack().build());
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(
        reply2,
        tcp(VIP2, 443, CLIENT, 40_000).synack().build(),
        "the remapped flow's reply is restored to port 40000, from VIP2"
    );
    assert!(checksums_valid(&reply1) && checksums_valid(&reply2));
    assert_eq!(dp.verdict(Verdict::Reversed), 2);

    // Both flows go on as they began.
    let (_, a) = dp.run_xdp(&tcp(CLIENT, 40_000, VIP, 443).ack().build());
    assert_eq!(a, tcp(CLIENT, 40_000, POD, 8443).ack().build());
    let (_, b) = dp.run_xdp(&tcp(CLIENT, 40_000, VIP2, 443).ack().build());
    assert_eq!(b, tcp(CLIENT, p, POD, 8443).ack().build());
    let (_, data) = dp.run_tc_egress(&tcp(POD, 8443, CLIENT, p).ack().build());
    assert_eq!(data, tcp(VIP2, 443, CLIENT, 40_000).ack().build());
    assert_eq!(
        dp.event(Event::TupleRemapped),
        1,
        "remapped once, not per packet"
    );
}

#[test]
fn a_tuple_whose_flow_expired_is_taken_over_without_a_remap() {
    // SYN-state flows live 2 s (not 1: a check right after the first flow
    // must not see it expire at a second boundary).
    let mut flows = test_flows();
    lb_userspace::flows::set_timeout(&mut flows.timeouts, "tcp-syn=2").unwrap();
    let (dp, _planner) = setup("clash-expiry", NODE, flows, &clash_state());

    let (_, first) = dp.run_xdp(&tcp(CLIENT, 40_000, VIP, 443).syn().build());
    assert_eq!(first, tcp(CLIENT, 40_000, POD, 8443).syn().build());
    let (_, second) = dp.run_xdp(&tcp(CLIENT, 40_000, VIP2, 443).syn().build());
    let (_, p) = src_of(&second);
    assert_ne!(
        p, 40_000,
        "while the first flow lives, the second is remapped"
    );
    assert_eq!(dp.event(Event::TupleRemapped), 1);

    // Both flows go quiet past their timeout (2 s, counted in whole seconds).
    std::thread::sleep(Duration::from_millis(3_200));
    let (ret, third) = dp.run_xdp(&tcp(CLIENT, 40_000, VIP2, 443).syn().build());
    assert_eq!(ret, XDP_PASS);
    assert_eq!(
        third,
        tcp(CLIENT, 40_000, POD, 8443).syn().build(),
        "the first flow is gone: the tuple is taken over, no remap ({:?})",
        src_of(&third)
    );
    assert_eq!(dp.event(Event::TupleRemapped), 1, "no second remap");
    assert!(
        dp.conntrack(&flow_key(CLIENT, 40_000, VIP, 443, IPPROTO_TCP))
            .is_none(),
        "the expired holder's conntrack entry went with its tuple"
    );
    let ct = dp
        .conntrack(&flow_key(CLIENT, 40_000, VIP2, 443, IPPROTO_TCP))
        .unwrap();
    assert_eq!(
        ct.flags & CT_F_SNAT,
        0,
        "the new flow keeps the client's port"
    );
    let (ret, reply) = dp.run_tc_egress(&tcp(POD, 8443, CLIENT, 40_000).synack().build());
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(
        reply,
        tcp(VIP2, 443, CLIENT, 40_000).synack().build(),
        "the tuple's replies now come from VIP2"
    );
}
