use lb_common::{
    maps6::{MAP_NODE_PORT_ADDRS6, MAP_SNAT_EXHAUSTED6, MAP_TC6_PROGS, MAP_XDP6_PROGS},
    CtEntry, RevNatEntry, MAP_CONFIG, MAP_FILTER, MAP_INTERNAL_TABLES, MAP_NODE_PORT_ADDRS,
    MAP_SERVICE_STATS_ARRAY, MAP_SNAT_EXHAUSTED, MAP_SOCK_AFFINITY, MAP_SOCK_REVERSE,
    MAP_SOURCE_RANGES,
};

use super::*;
use crate::datapath::convert::{V3CtEntry, V3RevNatEntry};

/// `BPF_MAP_TYPE_HASH`.
const BPF_MAP_TYPE_HASH: u32 = 1;

fn shape(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> MapShape {
    MapShape {
        map_type,
        key_size,
        value_size,
        max_entries,
    }
}

/// The v7 layout: today's maps without IPv6's (prog arrays and frontend
/// maps), with IPv4's counters only (6 verdicts, 13 events).
fn v7(current: &Shapes) -> Shapes {
    let mut old = current.clone();
    old.remove(MAP_XDP6_PROGS);
    old.remove(MAP_TC6_PROGS);
    old.remove(MAP_NODE_PORT_ADDRS6);
    old.remove(MAP_SNAT_EXHAUSTED6);
    for name in ipv6_maps() {
        old.remove(name);
    }
    old.get_mut(MAP_VERDICTS).unwrap().max_entries = 6;
    old.get_mut(MAP_EVENTS).unwrap().max_entries = 13;
    old
}

/// The v6 layout: v7's maps without `SOCK_AFFINITY`.
fn v6(current: &Shapes) -> Shapes {
    let mut old = v7(current);
    old.remove(MAP_SOCK_AFFINITY);
    old
}

/// The v5 layout: v6's maps, of the same shapes (v6 changed what a
/// service id means), without `SOCK_REVERSE`.
fn v5(current: &Shapes) -> Shapes {
    let mut old = v6(current);
    old.remove(MAP_SOCK_REVERSE);
    old
}

/// The v4 layout: v5's maps without `SOURCE_RANGES`, `INTERNAL_TABLES`
/// and `NODE_PORT_ADDRS`, with one event fewer (10).
fn v4(current: &Shapes) -> Shapes {
    let mut old = v5(current);
    old.remove(MAP_SOURCE_RANGES);
    old.remove(MAP_INTERNAL_TABLES);
    old.remove(MAP_NODE_PORT_ADDRS);
    old.get_mut(MAP_EVENTS).unwrap().max_entries = 10;
    old
}

/// The v3 layout: v4's maps without `SNAT_EXHAUSTED`, with v3's flow
/// entries (a conntrack value of the same size but another layout, a
/// reverse-NAT value of 12 bytes), its 8-byte `CONFIG`, and fewer verdicts
/// (5) and events (2).
fn v3(current: &Shapes) -> Shapes {
    let mut old = v4(current);
    old.remove(MAP_SNAT_EXHAUSTED);
    old.get_mut(MAP_CONNTRACK).unwrap().value_size = 32;
    old.get_mut(MAP_REVNAT).unwrap().value_size = 12;
    old.get_mut(MAP_CONFIG).unwrap().value_size = 8;
    old.get_mut(MAP_VERDICTS).unwrap().max_entries = 5;
    old.get_mut(MAP_EVENTS).unwrap().max_entries = 2;
    old
}

/// The v2 layout: v3 without `FILTER` and `SVC_STATS_ARRAY`.
fn v2(current: &Shapes) -> Shapes {
    let mut old = v3(current);
    old.remove(MAP_FILTER);
    old.remove(MAP_SERVICE_STATS_ARRAY);
    old
}

/// The v1 layout: v2 without EVENTS.
fn v1(current: &Shapes) -> Shapes {
    let mut old = v2(current);
    old.remove(MAP_EVENTS);
    old
}

fn sorted(names: &[&'static str]) -> Vec<&'static str> {
    let mut names = names.to_vec();
    names.sort_unstable();
    names
}

/// Every pinned map but `but`, sorted.
fn every_map_but(but: &[&str]) -> Vec<&'static str> {
    let names: Vec<&str> = PINNED_MAPS
        .into_iter()
        .filter(|m| !but.contains(m))
        .collect();
    sorted(&names)
}

/// Maps no hand-over carries: the agent writes the node configuration, the
/// filter follows from the services, the exhaustion counters are new in v4,
/// the first sync writes the node-port addresses, and each load fills its
/// own prog arrays. IPv6's exhaustion counters start empty, as IPv4's did.
const NEVER_CARRIED: [&str; 8] = [
    MAP_CONFIG,
    MAP_FILTER,
    MAP_SNAT_EXHAUSTED,
    MAP_NODE_PORT_ADDRS,
    MAP_XDP6_PROGS,
    MAP_TC6_PROGS,
    MAP_NODE_PORT_ADDRS6,
    MAP_SNAT_EXHAUSTED6,
];

/// IPv6's maps that a hand-over plans for, in the order it reports them:
/// the frontend maps, the flows that name their ids, the reverse entries.
fn ipv6_maps() -> Vec<&'static str> {
    SERVICE_MAPS6
        .into_iter()
        .chain(ID_DEPENDENT_MAPS6)
        .chain(INDEPENDENT_MAPS6)
        .collect()
}

/// The maps a hand-over from a layout before v8 leaves empty besides
/// `NEVER_CARRIED`: IPv6's maps, reported last.
fn fresh6(layout: &str) -> Vec<(&'static str, String)> {
    ipv6_maps()
        .into_iter()
        .map(|name| none(name, layout))
        .collect()
}

fn none(name: &'static str, layout: &str) -> (&'static str, String) {
    (name, format!("layout {layout} has no such map"))
}

#[test]
fn the_layout_version_follows_the_maps() {
    let shapes = object_shapes().unwrap();
    assert_eq!(
        fingerprint(shapes),
        PIN_LAYOUT_FINGERPRINT,
        "the pinned maps changed shape: give them a new PIN_LAYOUT, say in READABLE_LAYOUTS \
         which maps an agent may still read from the previous one, and record the new \
         fingerprint"
    );
    assert_eq!(shapes.len(), PINNED_MAPS.len());
}

#[test]
fn the_flow_maps_are_v4_s_and_the_converted_shapes_v3_s() {
    let new = object_shapes().unwrap();
    let lru = |value: usize| shape(BPF_MAP_TYPE_LRU_HASH, 16, u32::try_from(value).unwrap(), 0);
    assert!(new[MAP_CONNTRACK].matches(&lru(size_of::<CtEntry>())));
    assert!(new[MAP_REVNAT].matches(&lru(size_of::<RevNatEntry>())));
    // What the conversion reads is what it accepts.
    assert_eq!(
        CONVERTED_SHAPES,
        [
            (
                MAP_CONNTRACK,
                16,
                u32::try_from(size_of::<V3CtEntry>()).unwrap()
            ),
            (
                MAP_REVNAT,
                16,
                u32::try_from(size_of::<V3RevNatEntry>()).unwrap()
            ),
        ]
    );
    assert_eq!(CONVERTED_MAPS, CONVERTED_SHAPES.map(|(m, _, _)| m));
    // The picture of v3 here differs from today's where v4 changed a layout.
    assert_ne!(v3(new)[MAP_REVNAT], new[MAP_REVNAT]);
    assert!(!v3(new).contains_key(MAP_SNAT_EXHAUSTED));
}

#[test]
fn from_v7_every_ipv4_map_is_carried_as_it_is_and_ipv6_s_start_empty() {
    let new = object_shapes().unwrap();
    let plan = plan_handover("v7", &v7(new), new);
    let mut but = NEVER_CARRIED.to_vec();
    but.extend(ipv6_maps());
    assert_eq!(sorted(&plan.carry), every_map_but(&but));
    assert!(plan.convert.is_empty(), "v7's flows are v8's: {plan:?}");
    assert_eq!(plan.fresh, fresh6("v7"));
    assert!(plan.carries_services());
    // v7's counters are IPv4's block of v8's longer arrays.
    assert!(new[MAP_VERDICTS].max_entries > 6 && new[MAP_EVENTS].max_entries > 13);
    assert!(plan.carry.contains(&MAP_VERDICTS) && plan.carry.contains(&MAP_EVENTS));
}

#[test]
fn from_v6_every_map_is_carried_as_it_is() {
    let new = object_shapes().unwrap();
    let plan = plan_handover("v6", &v6(new), new);
    let mut but = NEVER_CARRIED.to_vec();
    but.extend(ipv6_maps());
    but.push(MAP_SOCK_AFFINITY);
    assert_eq!(sorted(&plan.carry), every_map_but(&but));
    assert!(plan.convert.is_empty(), "v6's flows are v7's: {plan:?}");
    assert_eq!(
        plan.fresh,
        [vec![none(MAP_SOCK_AFFINITY, "v6")], fresh6("v6")].concat()
    );
    assert!(plan.carries_services());
    // Connected sockets keep their Service's address across the hand-over.
    assert!(plan.carry.contains(&MAP_SOCK_REVERSE));
}

#[test]
fn from_v5_every_map_is_carried_as_it_is() {
    let new = object_shapes().unwrap();
    let plan = plan_handover("v5", &v5(new), new);
    let mut but = NEVER_CARRIED.to_vec();
    but.extend(ipv6_maps());
    but.extend([MAP_SOCK_AFFINITY, MAP_SOCK_REVERSE]);
    assert_eq!(sorted(&plan.carry), every_map_but(&but));
    assert!(plan.convert.is_empty(), "v5's flows are v6's: {plan:?}");
    assert_eq!(
        plan.fresh,
        [
            vec![none(MAP_SOCK_AFFINITY, "v5"), none(MAP_SOCK_REVERSE, "v5")],
            fresh6("v5")
        ]
        .concat()
    );
    assert!(plan.carries_services());
}

#[test]
fn from_v4_every_map_is_carried_as_it_is_and_the_source_ranges_start_empty() {
    let new = object_shapes().unwrap();
    let plan = plan_handover("v4", &v4(new), new);
    let mut but = NEVER_CARRIED.to_vec();
    but.extend(ipv6_maps());
    but.extend([MAP_SOCK_AFFINITY, MAP_SOCK_REVERSE]);
    but.extend([MAP_SOURCE_RANGES, MAP_INTERNAL_TABLES]);
    assert_eq!(sorted(&plan.carry), every_map_but(&but));
    assert!(plan.convert.is_empty(), "v4's flows are v5's: {plan:?}");
    assert_eq!(
        plan.fresh,
        [
            vec![
                none(MAP_SOCK_AFFINITY, "v4"),
                none(MAP_SOURCE_RANGES, "v4"),
                none(MAP_INTERNAL_TABLES, "v4"),
                none(MAP_SOCK_REVERSE, "v4")
            ],
            fresh6("v4")
        ]
        .concat()
    );
    assert!(plan.carries_services());
    // v4 counted one event fewer: its counters fit into v5's.
    assert!(plan.carry.contains(&MAP_EVENTS));
}

#[test]
fn from_v3_every_map_is_carried_and_the_flows_converted() {
    let new = object_shapes().unwrap();
    let plan = plan_handover("v3", &v3(new), new);
    assert_eq!(plan.from, "v3");
    let mut but = NEVER_CARRIED.to_vec();
    but.extend(ipv6_maps());
    but.extend([MAP_SOCK_AFFINITY, MAP_SOCK_REVERSE]);
    but.extend([MAP_SOURCE_RANGES, MAP_INTERNAL_TABLES]);
    assert_eq!(sorted(&plan.carry), every_map_but(&but));
    assert_eq!(plan.convert, vec![MAP_CONNTRACK, MAP_REVNAT]);
    assert_eq!(
        plan.fresh,
        [
            vec![
                none(MAP_SOCK_AFFINITY, "v3"),
                none(MAP_SOURCE_RANGES, "v3"),
                none(MAP_INTERNAL_TABLES, "v3"),
                none(MAP_SOCK_REVERSE, "v3")
            ],
            fresh6("v3")
        ]
        .concat()
    );
    assert!(plan.carries_services());
    // v3's counter arrays are shorter: they fit into v4's.
    assert!(plan.carry.contains(&MAP_VERDICTS) && plan.carry.contains(&MAP_EVENTS));
    for name in NEVER_CARRIED {
        assert!(
            !plan.carry.contains(&name) && plan.fresh.iter().all(|(m, _)| *m != name),
            "{name} is not the hand-over's business"
        );
    }
}

#[test]
fn from_v2_every_map_it_had_is_carried_and_the_flows_converted() {
    let new = object_shapes().unwrap();
    let plan = plan_handover("v2", &v2(new), new);
    let mut but = NEVER_CARRIED.to_vec();
    but.extend(ipv6_maps());
    but.extend([MAP_SOCK_AFFINITY, MAP_SOCK_REVERSE]);
    but.extend([
        MAP_SERVICE_STATS_ARRAY,
        MAP_SOURCE_RANGES,
        MAP_INTERNAL_TABLES,
    ]);
    assert_eq!(sorted(&plan.carry), every_map_but(&but));
    assert_eq!(plan.convert, vec![MAP_CONNTRACK, MAP_REVNAT]);
    // v2 counted every service in the hash, which is carried.
    assert_eq!(
        plan.fresh,
        [
            vec![
                none(MAP_SOCK_AFFINITY, "v2"),
                none(MAP_SERVICE_STATS_ARRAY, "v2"),
                none(MAP_SOURCE_RANGES, "v2"),
                none(MAP_INTERNAL_TABLES, "v2"),
                none(MAP_SOCK_REVERSE, "v2")
            ],
            fresh6("v2")
        ]
        .concat()
    );
    assert!(plan.carries_services());
}

#[test]
fn from_v1_everything_but_the_new_counters_is_carried_and_the_flows_converted() {
    let new = object_shapes().unwrap();
    let plan = plan_handover("v1", &v1(new), new);
    let mut but = NEVER_CARRIED.to_vec();
    but.extend(ipv6_maps());
    but.extend([MAP_SOCK_AFFINITY, MAP_SOCK_REVERSE]);
    but.extend([
        MAP_SERVICE_STATS_ARRAY,
        MAP_EVENTS,
        MAP_SOURCE_RANGES,
        MAP_INTERNAL_TABLES,
    ]);
    assert_eq!(sorted(&plan.carry), every_map_but(&but));
    assert_eq!(plan.convert, vec![MAP_CONNTRACK, MAP_REVNAT]);
    assert_eq!(
        plan.fresh,
        [
            vec![
                none(MAP_SOCK_AFFINITY, "v1"),
                none(MAP_SERVICE_STATS_ARRAY, "v1"),
                none(MAP_SOURCE_RANGES, "v1"),
                none(MAP_INTERNAL_TABLES, "v1"),
                none(MAP_EVENTS, "v1"),
                none(MAP_SOCK_REVERSE, "v1")
            ],
            fresh6("v1")
        ]
        .concat()
    );
    assert!(plan.carries_services());
}

/// A change to a map's shape, and what it makes of the map.
type Change = (&'static str, fn(&mut MapShape));

#[test]
fn a_v3_conntrack_of_an_unexpected_shape_is_not_converted() {
    let new = object_shapes().unwrap();
    let changes: [Change; 4] = [
        ("a longer value", |s| s.value_size += 8),
        ("a longer key", |s| s.key_size = 20),
        ("a plain hash", |s| s.map_type = BPF_MAP_TYPE_HASH),
        ("v4's reverse-NAT value", |s| s.value_size = 32),
    ];
    for (map, other) in [(MAP_CONNTRACK, MAP_REVNAT), (MAP_REVNAT, MAP_CONNTRACK)] {
        for (what, change) in changes {
            let mut old = v3(new);
            change(old.get_mut(map).unwrap());
            if old[map] == v3(new)[map] {
                // v4's reverse-NAT value size is v3's conntrack one: no change there.
                continue;
            }
            let plan = plan_handover("v3", &old, new);
            assert!(!plan.carry.contains(&map), "{map} of {what}: {plan:?}");
            assert!(!plan.convert.contains(&map), "{map} of {what}: {plan:?}");
            assert!(
                plan.fresh
                    .iter()
                    .any(|(m, why)| *m == map
                        && why.starts_with("its shape differs from layout v3's")),
                "{map} of {what}: {plan:?}"
            );
            // The rest comes along: the other flow map still converted.
            assert!(plan.carries_services(), "{map} of {what}");
            assert_eq!(plan.convert, vec![other], "{map} of {what}");
            assert!(plan.carry.contains(&MAP_AFFINITY));
            assert_eq!(
                plan.fresh.len(),
                5 + ipv6_maps().len(),
                "{map} of {what}: {plan:?}"
            );
        }
    }
}

#[test]
fn an_unknown_layout_carries_nothing() {
    let new = object_shapes().unwrap();
    // Neither one of today's shapes, nor v3's flow maps under another name.
    for (from, old) in [("v8", new.clone()), ("v9", v3(new)), ("v0", v3(new))] {
        let plan = plan_handover(from, &old, new);
        assert!(plan.carry.is_empty(), "{from}: {plan:?}");
        assert!(plan.convert.is_empty(), "{from}: {plan:?}");
        assert!(!plan.carries_services());
        let planned: Vec<&str> = SERVICE_MAPS
            .into_iter()
            .chain(ID_DEPENDENT_MAPS)
            .chain(INDEPENDENT_MAPS)
            .chain(ipv6_maps())
            .collect();
        assert_eq!(
            plan.fresh.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
            planned
        );
        for (map, why) in &plan.fresh {
            assert!(
                why.contains(&format!("layout {from} is unknown to this agent")),
                "{map}: {why}"
            );
        }
    }
}

#[test]
fn changed_backends_leave_every_id_bearing_map_behind() {
    let new = object_shapes().unwrap();
    for (from, old, carried) in [
        ("v3", v3(new), vec![MAP_EVENTS, MAP_REVNAT, MAP_VERDICTS]),
        ("v1", v1(new), vec![MAP_REVNAT, MAP_VERDICTS]),
    ] {
        let mut old = old;
        old.get_mut(MAP_BACKENDS).unwrap().value_size = 16;
        let plan = plan_handover(from, &old, new);
        assert_eq!(sorted(&plan.carry), carried, "{from}");
        // Reverse NAT holds addresses only: still converted.
        assert_eq!(plan.convert, vec![MAP_REVNAT], "{from}");
        for name in SERVICE_MAPS.into_iter().chain(ID_DEPENDENT_MAPS) {
            let why = plan.fresh.iter().find(|(m, _)| *m == name);
            assert!(why.is_some(), "{from} {name}: {plan:?}");
            if from == "v3" {
                assert!(
                    why.unwrap().1.starts_with("BACKENDS cannot be carried"),
                    "{why:?}"
                );
            }
        }
    }
}

#[test]
fn a_larger_old_array_does_not_fit_a_smaller_new_one() {
    let new = object_shapes().unwrap();
    let mut old = v3(new);
    old.get_mut(MAP_MAGLEV).unwrap().max_entries = new[MAP_MAGLEV].max_entries * 2;
    let plan = plan_handover("v3", &old, new);
    assert!(!plan.carries_services());
    assert!(!plan.carry.contains(&MAP_CONNTRACK));
    let mut smaller = v3(new);
    smaller.get_mut(MAP_MAGLEV).unwrap().max_entries = new[MAP_MAGLEV].max_entries / 2;
    assert!(plan_handover("v3", &smaller, new).carries_services());
    // More verdicts than this agent counts: their indexes mean something else.
    let mut more = v3(new);
    more.get_mut(MAP_VERDICTS).unwrap().max_entries = new[MAP_VERDICTS].max_entries + 1;
    let plan = plan_handover("v3", &more, new);
    assert!(!plan.carry.contains(&MAP_VERDICTS));
    assert!(plan.carries_services());
}

#[test]
fn shapes_match_regardless_of_capacity() {
    let hash = shape(1, 16, 32, 100);
    assert!(hash.matches(&shape(1, 16, 32, 5)));
    assert!(hash.fits_into(&shape(1, 16, 32, 5)), "hash maps may shrink");
    assert!(
        !shape(2, 4, 8, 10).fits_into(&shape(2, 4, 8, 5)),
        "arrays may not"
    );
    assert!(shape(6, 4, 8, 5).fits_into(&shape(6, 4, 8, 6)), "but grow");
    assert!(!hash.matches(&shape(9, 16, 32, 100)));
    assert!(!hash.matches(&shape(1, 16, 40, 100)));
}

#[test]
fn a_same_version_dir_with_other_shapes_is_refused_by_name() {
    let expected = object_shapes().unwrap();
    // v3's reverse-NAT map where v4's is expected.
    let mut pinned = expected.clone();
    pinned.insert(MAP_REVNAT.to_string(), v3(expected)[MAP_REVNAT]);
    let dir = format!("/sys/fs/bpf/lb/{PIN_LAYOUT}");
    let err = check_same_version(Path::new(&dir), &pinned, expected)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("REVNAT") && err.contains("lb-agent cleanup") && err.contains(PIN_LAYOUT),
        "{err}"
    );
    check_same_version(Path::new("/x"), expected, expected).unwrap();
}

#[test]
fn other_layout_dirs_are_listed_oldest_first() {
    let dir = std::env::temp_dir().join(format!("lb-layouts-{}", std::process::id()));
    for sub in ["v10", "v1", "v3", PIN_LAYOUT, "links", "vx", "v9"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("v7"), "a file, not a layout").unwrap();
    let found = other_layouts(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found, vec!["v1", "v3", "v9", "v10"]);
}
