//! The pinned state across agents: a hand-over from an earlier pin layout
//! that keeps every flow, and LRU evictions made visible. Packets go through
//! the real programs with `BPF_PROG_TEST_RUN`. Needs root.

// Metrics are parsed as f64; the counts here are integers far below 2^53, so exact.
#![allow(clippy::float_cmp)]

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lb_common::{Event, CONNTRACK_MAX_ENTRIES, MAP_FILTER, MAP_SERVICE_STATS_ARRAY};
use lb_tests::{
    packet::{src_of, unique_pin_dir, Packet, TestDatapath, XDP_PASS},
    traffic::metric,
};
use lb_userspace::{
    datapath::{cleanup, PIN_LAYOUT},
    desired::{BackendInfo, DesiredFrontend, DesiredState, Frontend, ObjectName, Protocol},
    metrics::Metrics,
    plan::Planner,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const SLAB: u32 = 1 << 16;

/// Removes every pin under the directory when the test ends, passed or not.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        cleanup(&self.0);
    }
}

/// The web service, on a local and a remote backend (or only the local one).
fn web(remote: bool) -> DesiredState {
    let backends = [(LOCAL, true), (REMOTE, false)]
        .into_iter()
        .filter(|&(ip, _)| remote || ip != REMOTE)
        .map(|(ip, local)| {
            (
                SocketAddrV4::new(ip, 8080),
                BackendInfo {
                    local,
                    selected: true,
                },
            )
        })
        .collect();
    BTreeMap::from([(
        Frontend {
            addr: VIP,
            port: 80,
            proto: Protocol::Tcp,
        },
        DesiredFrontend {
            service: ObjectName {
                namespace: "default".into(),
                name: "web".into(),
            },
            port_name: "http".into(),
            backends,
            affinity_timeout: 0,
        },
    )])
}

fn apply(dp: &mut TestDatapath, desired: &DesiredState) {
    let mut planner = Planner::new(SLAB, Duration::ZERO);
    let (plan, errors) = planner.plan(desired, Instant::now());
    assert!(errors.is_empty(), "{errors:?}");
    dp.datapath_mut().maps.apply(&plan.ops).unwrap();
}

/// Turns the pins an agent of this layout left into those of the layout
/// before it: v2 is this layout without the pass-through filter and the
/// array of service counters.
fn make_previous_layout(pin_dir: &Path) {
    assert_eq!(
        PIN_LAYOUT, "v3",
        "update this test's picture of the previous layout"
    );
    std::fs::rename(pin_dir.join("v3"), pin_dir.join("v2")).unwrap();
    for map in [MAP_FILTER, MAP_SERVICE_STATS_ARRAY] {
        std::fs::remove_file(pin_dir.join("v2").join(map)).unwrap();
    }
}

#[test]
fn a_handover_from_the_previous_layout_keeps_every_flow_and_its_snat_port() {
    let pin_dir = unique_pin_dir("handover");
    let _pins = Pins(pin_dir.clone());
    let flows: Vec<u16> = (42000..42040).collect();
    // The earlier agent: 40 flows, about half SNATed to the remote backend.
    let mut before = Vec::new();
    {
        let mut old = TestDatapath::load_at(&pin_dir, NODE, SLAB, false);
        apply(&mut old, &web(true));
        for &sport in &flows {
            let (ret, _) = old.run_xdp(&Packet::tcp(CLIENT, sport, VIP, 80).syn().build());
            assert_eq!(ret, XDP_PASS);
            let ack = old.run_xdp(&Packet::tcp(CLIENT, sport, VIP, 80).ack().build());
            before.push(ack);
        }
    }
    let snated: Vec<(u16, u16)> = flows
        .iter()
        .zip(&before)
        .filter(|(_, (_, out))| src_of(out).0 == NODE)
        .map(|(&sport, (_, out))| (sport, src_of(out).1))
        .collect();
    assert!(
        (5..35).contains(&snated.len()),
        "Maglev spreads flows over both backends: {} of 40 SNATed",
        snated.len()
    );
    make_previous_layout(&pin_dir);

    // The new agent carries the earlier layout's maps over.
    let mut new = TestDatapath::load_at(&pin_dir, NODE, SLAB, true);
    assert!(
        new.datapath_mut().adopted(),
        "the services came along, ids and tables included"
    );
    for (&sport, expected) in flows.iter().zip(&before) {
        let after = new.run_xdp(&Packet::tcp(CLIENT, sport, VIP, 80).ack().build());
        assert_eq!(
            &after, expected,
            "flow {sport}: same backend and SNAT port, byte for byte"
        );
    }
    for &(sport, snat_port) in &snated {
        let reply = Packet::tcp(REMOTE, 8080, NODE, snat_port).ack().build();
        let (_, out) = new.run_xdp(&reply);
        assert_eq!(
            out,
            Packet::tcp(VIP, 80, CLIENT, sport).ack().build(),
            "the reply of flow {sport} is reversed from the carried reverse-NAT entry"
        );
    }
    assert!(
        pin_dir.join("v2").exists(),
        "kept until the hand-over finishes"
    );
    new.datapath_mut().finish_handover().unwrap();
    assert!(
        !pin_dir.join("v2").exists(),
        "the earlier layout's pins are gone"
    );
    let created = new
        .datapath_mut()
        .maps
        .event_total(Event::ConntrackCreated)
        .unwrap();
    assert_eq!(created, 40, "carried entries count as created");
    let text = Metrics::new(pin_dir.clone()).render().unwrap();
    assert_eq!(metric(&text, "lb_conntrack_evictions_total"), Some(0.0));
}

#[test]
fn conntrack_evictions_are_counted_when_the_table_overflows() {
    let pin_dir = unique_pin_dir("evict");
    let _pins = Pins(pin_dir.clone());
    let mut dp = TestDatapath::load_at(&pin_dir, NODE, SLAB, true);
    // A local backend only: no SNAT, whose ports (4,536 per backend) would run out first.
    apply(&mut dp, &web(false));
    let flows = CONNTRACK_MAX_ENTRIES + CONNTRACK_MAX_ENTRIES / 4;
    for i in 0..flows {
        // A new client address and port for each flow.
        let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i / 16);
        let sport = 20000 + u16::try_from(i % 16).unwrap();
        let (ret, _) = dp.run_xdp(&Packet::tcp(client, sport, VIP, 80).syn().build());
        assert_eq!(ret, XDP_PASS, "flow {i}");
    }
    let text = Metrics::new(pin_dir.clone()).render().unwrap();
    let get = |name: &str| metric(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    let created = get("lb_conntrack_created_total");
    let live = get("lb_conntrack_entries");
    let evicted = get("lb_conntrack_evictions_total");
    assert_eq!(created, f64::from(flows), "one entry created per new flow");
    assert!(live <= f64::from(CONNTRACK_MAX_ENTRIES), "{live}");
    assert_eq!(
        evicted,
        created - live,
        "every entry created is live or evicted"
    );
    assert!(
        evicted >= f64::from(flows - CONNTRACK_MAX_ENTRIES),
        "at least the overflow was evicted: {evicted}"
    );
    let rev_created = get("lb_reverse_nat_created_total");
    let rev_live = get("lb_reverse_nat_entries");
    assert_eq!(rev_created, f64::from(flows));
    assert_eq!(
        get("lb_reverse_nat_evictions_total"),
        rev_created - rev_live
    );
}
