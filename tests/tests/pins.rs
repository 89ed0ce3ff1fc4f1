//! The pinned state across agents: hand-overs from the previous pin layouts
//! (v5, v4, v3) that keep every flow and its SNAT port, and LRU evictions
//! made visible. Packets go through the real programs with `BPF_PROG_TEST_RUN`.
//! Needs root.

// Metrics are parsed as f64; the counts here are integers far below 2^53, so exact.
#![allow(clippy::float_cmp)]

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    ops::RangeInclusive,
    path::Path,
    time::{Duration, Instant},
};

use lb_common::{
    conntrack::{assured, CtState, DEFAULT_TIMEOUTS, EARLY_DROP_IDLE_S, T_ESTABLISHED},
    Event, Family, SockRevEntry, SockRevKey, Verdict, CONNTRACK_MAX_ENTRIES, CT_F_REPLIED,
    CT_F_SNAT, IPPROTO_TCP, MAP_SOCK_REVERSE, REVNAT_MAX_ENTRIES,
};
use lb_tests::{
    agent::PinDirGuard,
    fixture::{frontend, program},
    legacy::{self, Written},
    packet::{
        dst_of, flow_key, src_of, test_flows, unique_pin_dir, Packet, TestDatapath, TC_ACT_OK,
        XDP_DROP, XDP_PASS,
    },
    traffic::metric,
};
use lb_userspace::{
    conntrack::{FlowLife, Snapshot},
    datapath::PIN_LAYOUT,
    desired::{DesiredFrontend, Frontend, Protocol, SourceRange},
    flows::{FlowSettings, PortRange},
    metrics::Metrics,
    plan::{MapOp, Planner},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// An external IP of the web service (the v5 hand-over).
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const SLAB: u32 = 1 << 16;

/// The web service (`default/web`, port `http`), on a local and a remote
/// backend (or only the local one).
fn web(remote: bool) -> (Frontend, DesiredFrontend) {
    let backends: &[_] = if remote {
        &[(LOCAL, 8080, true), (REMOTE, 8080, false)]
    } else {
        &[(LOCAL, 8080, true)]
    };
    let (fe, mut desired) = frontend(VIP, 80, Protocol::Tcp, backends);
    desired.service.name = "web".into();
    desired.port_name = "http".into();
    (fe, desired)
}

/// An agent's data path at `pin_dir` with its own SNAT pool `pool`.
fn load_agent(pin_dir: &Path, pool: RangeInclusive<u16>, detach_on_exit: bool) -> TestDatapath {
    let flows = FlowSettings {
        snat_ports: PortRange(pool),
        ..test_flows()
    };
    TestDatapath::load_at_with_flows(pin_dir, NODE, SLAB, detach_on_exit, flows)
}

/// The SNAT pool of the earlier agent: where v3 took its ports from.
const V3_POOL: RangeInclusive<u16> = 61_000..=61_127;

/// One client flow of the web service and what the programs made of it.
struct WebFlow {
    /// The frontend address it went to.
    dst: Ipv4Addr,
    /// The client's port.
    sport: u16,
    /// Its SNAT port, when it goes to the remote backend.
    snat: Option<u16>,
    /// The client's data segment, translated.
    forward: (u32, Vec<u8>),
    /// The backend's data segment, translated back.
    reply: (u32, Vec<u8>),
}

impl WebFlow {
    /// The backend's segment with `flags` (`Packet::ack` or `Packet::synack`),
    /// and whether it arrives through XDP (the remote backend, to the node's
    /// port) rather than TC egress (the local one's, leaving the node to the client).
    fn backend_segment(&self, flags: fn(Packet) -> Packet) -> (Packet, bool) {
        match self.snat {
            Some(port) => (flags(Packet::tcp(REMOTE, 8080, NODE, port)), true),
            None => (flags(Packet::tcp(LOCAL, 8080, CLIENT, self.sport)), false),
        }
    }

    /// Sends the client's and the backend's data segments.
    fn exchange(&self, agent: &TestDatapath) -> ((u32, Vec<u8>), (u32, Vec<u8>)) {
        let forward = agent.run_xdp(&Packet::tcp(CLIENT, self.sport, self.dst, 80).ack().build());
        let (reply, uplink) = self.backend_segment(Packet::ack);
        let reply = if uplink {
            agent.run_xdp(&reply.build())
        } else {
            agent.run_tc_egress(&reply.build())
        };
        (forward, reply)
    }

    /// A connection through `agent` to the cluster IP: SYN, the backend's
    /// SYN-ACK, the client's ACK, then data both ways.
    fn open(agent: &TestDatapath, sport: u16) -> Self {
        Self::open_at(agent, VIP, sport)
    }

    /// [`WebFlow::open`] to frontend address `dst`.
    fn open_at(agent: &TestDatapath, dst: Ipv4Addr, sport: u16) -> Self {
        let (ret, syn) = agent.run_xdp(&Packet::tcp(CLIENT, sport, dst, 80).syn().build());
        assert_eq!(ret, XDP_PASS, "flow {sport}");
        let backend = dst_of(&syn);
        assert!(
            backend == (LOCAL, 8080) || backend == (REMOTE, 8080),
            "{backend:?}"
        );
        let snat = (src_of(&syn).0 == NODE).then_some(src_of(&syn).1);
        assert_eq!(
            snat.is_some(),
            backend.0 == REMOTE,
            "SNAT to the remote one only"
        );
        let mut flow = Self {
            dst,
            sport,
            snat,
            forward: (0, vec![]),
            reply: (0, vec![]),
        };
        let (synack, uplink) = flow.backend_segment(Packet::synack);
        let (ret, out) = if uplink {
            agent.run_xdp(&synack.build())
        } else {
            agent.run_tc_egress(&synack.build())
        };
        assert_eq!(ret, if uplink { XDP_PASS } else { TC_ACT_OK });
        assert_eq!(
            out,
            Packet::tcp(dst, 80, CLIENT, sport).synack().build(),
            "the SYN-ACK of flow {sport} is translated back"
        );
        (flow.forward, flow.reply) = flow.exchange(agent);
        assert_eq!(flow.forward.0, XDP_PASS);
        assert_eq!(
            flow.reply.1,
            Packet::tcp(dst, 80, CLIENT, sport).ack().build()
        );
        flow
    }
}

/// The conntrack entry of the web flow from `sport`, and what the snapshot says of it.
fn tracked(snapshot: &Snapshot, sport: u16) -> (lb_common::CtEntry, FlowLife) {
    let key = flow_key(CLIENT, sport, VIP, 80, IPPROTO_TCP);
    let (_, ct) = snapshot
        .flows
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("flow {sport} is tracked"));
    (*ct, snapshot.life(&key, ct))
}

/// Every flow is established, answered, assured and far from expiry, with
/// its SNAT port.
fn assert_established(pin_dir: &Path, flows: &[WebFlow]) {
    let snapshot = Snapshot::read(pin_dir).unwrap();
    for flow in flows {
        let (ct, life) = tracked(&snapshot, flow.sport);
        assert_eq!(
            life.state,
            CtState::Established,
            "flow {}: v3's closing marks are not taken for a close",
            flow.sport
        );
        assert_eq!(ct.flags & CT_F_REPLIED, CT_F_REPLIED);
        assert_eq!(ct.flags & CT_F_SNAT != 0, flow.snat.is_some());
        assert_eq!(ct.snat_port, flow.snat.unwrap_or(0).to_be());
        assert!(assured(life.state, ct.flags), "flow {}", flow.sport);
        assert!(!life.expired);
        assert_eq!(life.timeout_s, DEFAULT_TIMEOUTS[T_ESTABLISHED]);
    }
}

/// Every flow's data segments, both ways, come out as before, byte for byte.
fn assert_unchanged(agent: &TestDatapath, flows: &[WebFlow], when: &str) {
    for flow in flows {
        assert_eq!(
            flow.exchange(agent),
            (flow.forward.clone(), flow.reply.clone()),
            "flow {} {when}: same backend and SNAT port, byte for byte, both ways",
            flow.sport
        );
    }
}

/// Opens new connections until the SNAT pool `pool` is full and 20 more
/// were refused: each must take a port of the pool that no live flow holds,
/// never one of `carried`. Each is answered and acknowledged, so it is
/// assured and never gives way to a later one. Returns the ports taken.
fn fill_pool(
    agent: &TestDatapath,
    pool: &RangeInclusive<u16>,
    carried: &BTreeSet<u16>,
) -> BTreeSet<u16> {
    let free = usize::from(pool.end() - pool.start()) + 1 - carried.len();
    let (mut taken, mut refused) = (BTreeSet::new(), 0);
    for sport in 50_000..60_000 {
        if taken.len() == free && refused == 20 {
            break;
        }
        let (ret, out) = agent.run_xdp(&Packet::tcp(CLIENT, sport, VIP, 80).syn().build());
        if ret == XDP_DROP {
            // Random probes may miss the last free ports: only count refusals of a full pool.
            refused += u32::from(taken.len() == free);
            continue;
        }
        assert_eq!(ret, XDP_PASS);
        if dst_of(&out).0 == LOCAL {
            continue;
        }
        let (addr, port) = src_of(&out);
        assert_eq!(addr, NODE);
        assert!(
            !carried.contains(&port),
            "new flow {sport} took port {port} of a carried flow"
        );
        assert!(pool.contains(&port), "{port}");
        assert!(taken.insert(port), "port {port} given to two live flows");
        let (ret, _) = agent.run_xdp(&Packet::tcp(REMOTE, 8080, NODE, port).synack().build());
        assert_eq!(ret, XDP_PASS);
        let (ret, _) = agent.run_xdp(&Packet::tcp(CLIENT, sport, VIP, 80).ack().build());
        assert_eq!(ret, XDP_PASS);
    }
    assert_eq!(taken.len(), free, "the new flows took every free port");
    assert_eq!(refused, 20, "a full pool refuses new flows");
    taken
}

#[test]
fn a_handover_from_v3_converts_every_flow_and_keeps_its_snat_port() {
    assert_eq!(PIN_LAYOUT, "v8", "the earlier layout made below is v3");
    let pin_dir = unique_pin_dir("handover");
    let _pins = PinDirGuard(pin_dir.clone());
    // The earlier agent: 40 connections, about half SNATed to the remote backend.
    let flows: Vec<WebFlow> = {
        let mut old = load_agent(&pin_dir, V3_POOL, false);
        program(&mut old, &[web(true)]);
        (42000..42040)
            .map(|sport| WebFlow::open(&old, sport))
            .collect()
    };
    let carried: BTreeSet<u16> = flows.iter().filter_map(|f| f.snat).collect();
    assert!(
        (5..35).contains(&carried.len()),
        "Maglev spreads flows over both backends: {} of 40 SNATed",
        carried.len()
    );
    // What v3 left: its layout, and the marks of its bug on every SNATed flow.
    let written = legacy::make_v3(&pin_dir, true).unwrap();
    assert_eq!(
        written,
        Written {
            conntrack: 40,
            marked: carried.len(),
            reverse: 40
        }
    );

    // The new agent converts the flows; its pool is the carried ports and the gaps between.
    let pool = *carried.first().unwrap()..=*carried.last().unwrap();
    let mut new = load_agent(&pin_dir, pool.clone(), true);
    assert!(
        new.datapath_mut().adopted(),
        "the services came along, ids and tables included"
    );
    assert_established(&pin_dir, &flows);
    assert_unchanged(&new, &flows, "during the hand-over");
    assert!(
        pin_dir.join(legacy::V3).exists(),
        "kept until the hand-over finishes"
    );
    new.datapath_mut().finish_handover().unwrap();
    assert!(
        !pin_dir.join(legacy::V3).exists(),
        "the earlier layout's pins are gone"
    );
    assert_eq!(
        new.event(Event::ConntrackCreated),
        40,
        "carried entries count as created"
    );
    let text = Metrics::new(pin_dir.clone()).render().unwrap();
    assert_eq!(metric(&text, "lb_conntrack_evictions_total"), Some(0.0));
    assert_eq!(metric(&text, "lb_reverse_nat_evictions_total"), Some(0.0));

    // Idle long enough to give way if they were not assured, the carried
    // flows keep their ports while new connections fill the pool.
    std::thread::sleep(Duration::from_secs(u64::from(EARLY_DROP_IDLE_S) + 1));
    let taken = fill_pool(&new, &pool, &carried);
    let snapshot = Snapshot::read(&pin_dir).unwrap();
    let mut held: Vec<u16> = snapshot
        .flows
        .iter()
        .filter(|(_, ct)| ct.flags & CT_F_SNAT != 0)
        .map(|(_, ct)| u16::from_be(ct.snat_port))
        .collect();
    held.sort_unstable();
    assert_eq!(
        held,
        carried.union(&taken).copied().collect::<Vec<_>>(),
        "each port of the pool is held by one flow: a carried one or a new one"
    );
    assert_eq!(held, pool.clone().collect::<Vec<_>>());
    assert!(new.event(Event::SnatExhausted) >= 20);
    assert_eq!(
        (
            new.event(Event::SnatReclaimed),
            new.event(Event::SnatEarlyDrop)
        ),
        (0, 0),
        "no port was taken from a flow holding it"
    );
    assert_unchanged(&new, &flows, "with the pool full");
    assert_established(&pin_dir, &flows);
}

/// The socket reverse map pinned in layout `layout` under `pin_dir`.
fn sock_reverse(
    pin_dir: &Path,
    layout: &str,
) -> aya::maps::HashMap<aya::maps::MapData, SockRevKey, SockRevEntry> {
    let path = pin_dir.join(layout).join(MAP_SOCK_REVERSE);
    let data = aya::maps::MapData::from_pin(&path).expect("opening the pinned SOCK_REVERSE");
    aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("an LRU hash")
}

/// v7 -> v8 (IPv6's prog arrays and counter blocks): every IPv4 flow, SNAT
/// port and count comes along, and the new programs hand IPv6 frames to
/// their IPv6 programs from the first packet.
#[test]
fn a_handover_from_v7_keeps_every_flow_and_count_and_serves_ipv6_at_once() {
    assert_eq!(PIN_LAYOUT, "v8", "the previous layout made below is v7");
    let pin_dir = unique_pin_dir("handover-v7");
    let _pins = PinDirGuard(pin_dir.clone());
    let (flows, counts) = {
        let mut old = load_agent(&pin_dir, V3_POOL, false);
        program(&mut old, &[web(true)]);
        let flows: Vec<WebFlow> = (44000..44010)
            .map(|sport| WebFlow::open(&old, sport))
            .collect();
        let counts: Vec<u64> = Verdict::ALL.iter().map(|&v| old.verdict(v)).collect();
        (flows, counts)
    };
    assert!(counts.iter().any(|&n| n > 0), "the old programs counted");
    legacy::make_v7(&pin_dir).unwrap();

    let mut new = load_agent(&pin_dir, V3_POOL, true).with_ipv6();
    assert!(new.datapath_mut().adopted(), "the services came along");
    // IPv6's frontend maps are new: they start empty beside IPv4's.
    let maps = &new.datapath_mut().maps;
    assert_eq!(maps.services6.keys().count(), 0, "SERVICES6 starts empty");
    assert!(maps.node_port_addresses6().unwrap().is_empty());
    assert!(
        maps.services.keys().count() > 0,
        "IPv4's frontends came along"
    );
    assert!(new.flows6().is_empty(), "CONNTRACK6 starts empty");
    // A malformed IPv6 frame (payload length past the frame) reaches lb_xdp6.
    let truncated = lb_tests::packet::with_u16(&lb_tests::packet::ipv6_tcp(), 18, 1400);
    let (ret, out) = new.run_xdp(&truncated);
    assert_eq!((ret, out), (XDP_PASS, truncated), "passed untouched");
    assert_eq!(new.event_of(Family::Ipv6, Event::Ipv6HeadersSkipped), 1);
    assert_unchanged(&new, &flows, "during the hand-over");
    let ipv4 = |dp: &TestDatapath| -> Vec<u64> {
        Verdict::ALL
            .iter()
            .map(|&v| dp.verdict_of(Family::Ipv4, v))
            .collect()
    };
    let own = ipv4(&new);
    new.datapath_mut().finish_handover().unwrap();
    assert!(
        !pin_dir.join(legacy::V7).exists(),
        "the earlier layout is gone"
    );
    // The old counts are added to IPv4's block once the old programs are gone.
    let summed: Vec<u64> = own.iter().zip(&counts).map(|(a, b)| a + b).collect();
    assert_eq!(ipv4(&new), summed, "v7's verdict counts are IPv4's");
    assert_unchanged(&new, &flows, "after the hand-over");
    assert_established(&pin_dir, &flows);
}

#[test]
fn a_handover_from_v6_keeps_every_flow_and_what_connected_sockets_were_pointed_at() {
    assert_eq!(PIN_LAYOUT, "v8", "the previous layout made below is v6");
    let pin_dir = unique_pin_dir("handover-v6");
    let _pins = PinDirGuard(pin_dir.clone());
    // A connected socket the earlier programs pointed at the local backend
    // (as `connect4` records it): its `getpeername` must keep showing the
    // Service once the new programs serve it.
    let socket = SockRevKey {
        cookie: 0x5eed_0000_0001,
        backend_addr: u32::from(LOCAL).to_be(),
        backend_port: 8080u16.to_be(),
        pad: 0,
    };
    let service = SockRevEntry {
        svc_addr: u32::from(VIP).to_be(),
        svc_port: 80u16.to_be(),
        pad: 0,
    };
    let flows: Vec<WebFlow> = {
        let mut old = load_agent(&pin_dir, V3_POOL, false);
        program(&mut old, &[web(true)]);
        sock_reverse(&pin_dir, PIN_LAYOUT)
            .insert(socket, service, 0)
            .unwrap();
        (43000..43010)
            .map(|sport| WebFlow::open(&old, sport))
            .collect()
    };
    legacy::make_v6(&pin_dir).unwrap();

    let mut new = load_agent(&pin_dir, V3_POOL, true);
    assert!(new.datapath_mut().adopted(), "the services came along");
    assert_unchanged(&new, &flows, "during the hand-over");
    new.datapath_mut().finish_handover().unwrap();
    assert!(
        !pin_dir.join(legacy::V6).exists(),
        "the earlier layout is gone"
    );
    assert_eq!(
        sock_reverse(&pin_dir, PIN_LAYOUT).get(&socket, 0).unwrap(),
        service,
        "the socket's Service address came along"
    );
    assert_unchanged(&new, &flows, "after the hand-over");
    assert_established(&pin_dir, &flows);
}

#[test]
fn a_handover_from_v5_merges_the_frontends_of_a_service_port_and_keeps_their_flows() {
    assert_eq!(PIN_LAYOUT, "v8", "the previous layout made below is v5");
    let pin_dir = unique_pin_dir("handover-v5");
    let _pins = PinDirGuard(pin_dir.clone());
    let at = |addr: Ipv4Addr, port_name: &str| {
        let (mut fe, mut desired) = web(true);
        fe.addr = addr;
        desired.port_name = port_name.to_string();
        (fe, desired)
    };
    // v5 gave each frontend a service id, backends and a table of its own:
    // as v6 does for two Service ports, which `make_v5` relabels as v5 did.
    let flows: Vec<WebFlow> = {
        let mut old = load_agent(&pin_dir, V3_POOL, false);
        program(&mut old, &[at(VIP, "v5-a"), at(EXTERNAL, "v5-b")]);
        let to_vip = (43000..43010).map(|sport| WebFlow::open(&old, sport));
        let to_external = (43100..43110).map(|sport| WebFlow::open_at(&old, EXTERNAL, sport));
        to_vip.chain(to_external).collect()
    };
    legacy::make_v5(&pin_dir).unwrap();

    let mut new = load_agent(&pin_dir, V3_POOL, true);
    assert!(new.datapath_mut().adopted(), "the services came along");
    assert_unchanged(&new, &flows, "during the hand-over");
    new.datapath_mut().finish_handover().unwrap();

    // The first sync: both frontends of the one Service port `http`.
    let dp = new.datapath_mut();
    let mut planner = Planner::adopt(
        dp.maps.applied_frontends().unwrap(),
        dp.maps.filter.words(),
        dp.maps.slab.slots(),
        Duration::ZERO,
    );
    let desired = [at(VIP, "http"), at(EXTERNAL, "http")]
        .into_iter()
        .collect();
    let (plan, errors) = planner.plan(&desired, Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        plan.ops
            .iter()
            .all(|op| !matches!(op, MapOp::ClearBackend(_))),
        "every endpoint stays: no backend entry is cleared: {:?}",
        plan.ops
    );
    dp.maps.apply(&plan.ops).unwrap();
    let applied = dp.maps.applied_frontends().unwrap();
    let ids: BTreeSet<u32> = applied.iter().map(|f| f.entry.id).collect();
    assert_eq!(
        ids.len(),
        1,
        "one service id for both frontends: {applied:?}"
    );
    assert_eq!(planner.ports().count(), 1);
    assert!(
        planner
            .ports()
            .all(|p| p.backends.values().all(|b| b.aliases.len() == 1)),
        "the other frontend's entries are kept for its flows"
    );
    assert_unchanged(&new, &flows, "once the frontends share a Service port");
    // New connections through either frontend still open.
    WebFlow::open(&new, 44000);
    WebFlow::open_at(&new, EXTERNAL, 44001);
}

#[test]
fn a_handover_from_v4_carries_every_flow_as_it_is_and_then_writes_the_source_ranges() {
    assert_eq!(PIN_LAYOUT, "v8", "the layout made below is v4");
    let pin_dir = unique_pin_dir("handover-v4");
    let _pins = PinDirGuard(pin_dir.clone());
    let flows: Vec<WebFlow> = {
        let mut old = load_agent(&pin_dir, V3_POOL, false);
        program(&mut old, &[web(true)]);
        (43000..43020)
            .map(|sport| WebFlow::open(&old, sport))
            .collect()
    };
    let before = Snapshot::read(&pin_dir).unwrap();
    legacy::make_v4(&pin_dir).unwrap();

    let mut new = load_agent(&pin_dir, V3_POOL, true);
    assert!(new.datapath_mut().adopted(), "the services came along");
    let after = Snapshot::read(&pin_dir).unwrap();
    for flow in &flows {
        assert_eq!(
            tracked(&after, flow.sport).0,
            tracked(&before, flow.sport).0,
            "flow {}: v4's entry carried as it was",
            flow.sport
        );
    }
    assert_unchanged(&new, &flows, "during the hand-over");
    new.datapath_mut().finish_handover().unwrap();
    assert!(!pin_dir.join(legacy::V4).exists());
    assert_eq!(
        new.event(Event::ConntrackCreated),
        20,
        "v4's counters carried"
    );

    // The carried frontend gains source ranges: written by the next sync,
    // which only new connections from outside them feel.
    let (fe, mut desired) = web(true);
    desired.source_ranges = vec![SourceRange {
        addr: Ipv4Addr::new(10, 0, 0, 0),
        prefix_len: 8,
    }];
    let dp = new.datapath_mut();
    let mut planner = Planner::adopt(
        dp.maps.applied_frontends().unwrap(),
        dp.maps.filter.words(),
        dp.maps.slab.slots(),
        Duration::ZERO,
    );
    let (plan, errors) = planner.plan(&[(fe, desired)].into_iter().collect(), Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        plan.ops
            .iter()
            .all(|op| !matches!(op, MapOp::SetTable { .. } | MapOp::SetBackend(..))),
        "only the ranges and the entry change: {:?}",
        plan.ops
    );
    dp.maps.apply(&plan.ops).unwrap();
    let (ret, _) = new.run_xdp(&Packet::tcp(CLIENT, 44000, VIP, 80).syn().build());
    assert_eq!(ret, XDP_DROP, "{CLIENT} is outside 10.0.0.0/8");
    assert_eq!(new.event(Event::SourceRangeDenied), 1);
    assert_unchanged(&new, &flows, "once the ranges apply");
}

#[test]
fn conntrack_evictions_are_counted_when_the_table_overflows() {
    let pin_dir = unique_pin_dir("evict");
    let _pins = PinDirGuard(pin_dir.clone());
    let mut dp = TestDatapath::load_at(&pin_dir, NODE, SLAB, true);
    // A local backend only: no SNAT, whose ports would run out first.
    program(&mut dp, &[web(false)]);
    let flows = CONNTRACK_MAX_ENTRIES + CONNTRACK_MAX_ENTRIES / 4;
    let mut clients = Vec::new();
    for i in 0..flows {
        // A new client address and port for each flow.
        let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i / 16);
        let sport = 20000 + u16::try_from(i % 16).unwrap();
        let (ret, _) = dp.run_xdp(&Packet::tcp(client, sport, VIP, 80).syn().build());
        assert_eq!(ret, XDP_PASS, "flow {i}");
        clients.push((client, sport));
    }
    // The flows whose entries the LRU pushed out, found in the maps themselves.
    let mut gone = (0u32, 0u32);
    for &(client, sport) in &clients {
        gone.0 += u32::from(
            dp.conntrack(&flow_key(client, sport, VIP, 80, IPPROTO_TCP))
                .is_none(),
        );
        gone.1 += u32::from(
            dp.reverse(&flow_key(LOCAL, 8080, client, sport, IPPROTO_TCP))
                .is_none(),
        );
    }
    let text = Metrics::new(pin_dir.clone()).render().unwrap();
    let get = |name: &str| metric(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    for map in ["conntrack", "reverse_nat"] {
        assert_eq!(
            get(&format!("lb_{map}_created_total")),
            f64::from(flows),
            "one {map} entry created per new flow"
        );
        // The metric is created - live - collected: nothing was collected here.
        assert_eq!(
            get(&format!("lb_conntrack_gc_deleted_total{{map=\"{map}\"}}")),
            0.0
        );
    }
    assert!(
        gone.0 >= flows - CONNTRACK_MAX_ENTRIES,
        "at least the overflow was evicted: {gone:?}"
    );
    assert_eq!(
        get("lb_conntrack_evictions_total"),
        f64::from(gone.0),
        "the metric counts exactly the flows whose conntrack entry is gone"
    );
    assert!(gone.1 >= flows - REVNAT_MAX_ENTRIES, "{gone:?}");
    assert_eq!(
        get("lb_reverse_nat_evictions_total"),
        f64::from(gone.1),
        "the metric counts exactly the flows whose reverse entry is gone"
    );
}
