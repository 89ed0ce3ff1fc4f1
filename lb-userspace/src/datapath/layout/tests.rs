use lb_common::{MAP_FILTER, MAP_SERVICE_STATS_ARRAY};

use super::*;

fn shape(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> MapShape {
    MapShape {
        map_type,
        key_size,
        value_size,
        max_entries,
    }
}

/// The v2 layout: today's shapes without `FILTER` and `SVC_STATS_ARRAY`.
fn v2(current: &Shapes) -> Shapes {
    let mut old = current.clone();
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

fn carried(plan: &Handover) -> Vec<&str> {
    let mut names = plan.carry.clone();
    names.sort_unstable();
    names
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
fn from_v1_everything_but_the_new_counters_is_carried() {
    let new = object_shapes().unwrap();
    let plan = plan_handover("v1", &v1(new), new);
    let mut expected: Vec<&str> = PINNED_MAPS
        .into_iter()
        .filter(|m| {
            ![
                MAP_EVENTS,
                MAP_FILTER,
                MAP_SERVICE_STATS_ARRAY,
                lb_common::MAP_CONFIG,
            ]
            .contains(m)
        })
        .collect();
    expected.sort_unstable();
    assert_eq!(carried(&plan), expected);
    let none = |name| (name, "layout v1 has no such map".to_string());
    assert_eq!(
        plan.fresh,
        vec![none(MAP_SERVICE_STATS_ARRAY), none(MAP_EVENTS)]
    );
    assert!(plan.carries_services());
}

#[test]
fn from_v2_every_map_it_had_is_carried() {
    let new = object_shapes().unwrap();
    let plan = plan_handover("v2", &v2(new), new);
    let mut expected: Vec<&str> = PINNED_MAPS
        .into_iter()
        .filter(|m| ![MAP_FILTER, MAP_SERVICE_STATS_ARRAY, lb_common::MAP_CONFIG].contains(m))
        .collect();
    expected.sort_unstable();
    assert_eq!(carried(&plan), expected);
    // v2 counted every service in the hash, which is carried.
    assert_eq!(
        plan.fresh,
        vec![(
            MAP_SERVICE_STATS_ARRAY,
            "layout v2 has no such map".to_string()
        )]
    );
}

#[test]
fn an_unknown_layout_carries_nothing() {
    let new = object_shapes().unwrap();
    let plan = plan_handover("v7", new, new);
    assert!(plan.carry.is_empty(), "{plan:?}");
    assert!(!plan.carries_services());
    assert!(plan
        .fresh
        .iter()
        .any(|(m, why)| *m == MAP_CONNTRACK && why.contains("layout v7 is unknown")));
}

#[test]
fn a_changed_conntrack_entry_starts_conntrack_empty_only() {
    let new = object_shapes().unwrap();
    let mut old = v1(new);
    let ct = old.get_mut(MAP_CONNTRACK).unwrap();
    ct.value_size += 8;
    let plan = plan_handover("v1", &old, new);
    assert!(plan.carries_services());
    assert!(!plan.carry.contains(&MAP_CONNTRACK));
    assert!(plan.carry.contains(&MAP_REVNAT));
    assert!(plan.carry.contains(&MAP_AFFINITY));
    assert!(plan
        .fresh
        .iter()
        .any(|(m, why)| *m == MAP_CONNTRACK && why.contains("shape differs")));
}

#[test]
fn changed_backends_leave_every_id_bearing_map_behind() {
    let new = object_shapes().unwrap();
    let mut old = v1(new);
    old.get_mut(MAP_BACKENDS).unwrap().value_size = 16;
    let plan = plan_handover("v1", &old, new);
    assert_eq!(carried(&plan), vec![MAP_REVNAT, MAP_VERDICTS]);
    for name in SERVICE_MAPS.into_iter().chain(ID_DEPENDENT_MAPS) {
        assert!(
            plan.fresh.iter().any(|(m, _)| *m == name),
            "{name}: {plan:?}"
        );
    }
}

#[test]
fn a_larger_old_slab_does_not_fit_a_smaller_new_one() {
    let new = object_shapes().unwrap();
    let mut old = v1(new);
    old.get_mut(MAP_MAGLEV).unwrap().max_entries = new[MAP_MAGLEV].max_entries * 2;
    let plan = plan_handover("v1", &old, new);
    assert!(!plan.carries_services());
    let mut smaller = v1(new);
    smaller.get_mut(MAP_MAGLEV).unwrap().max_entries = new[MAP_MAGLEV].max_entries / 2;
    assert!(plan_handover("v1", &smaller, new).carries_services());
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
    assert!(!hash.matches(&shape(9, 16, 32, 100)));
    assert!(!hash.matches(&shape(1, 16, 40, 100)));
}

#[test]
fn a_same_version_dir_with_other_shapes_is_refused_by_name() {
    let expected = object_shapes().unwrap();
    let mut pinned = expected.clone();
    pinned.get_mut(MAP_REVNAT).unwrap().key_size = 12;
    let err = check_same_version(Path::new("/sys/fs/bpf/lb/v2"), &pinned, expected)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("REVNAT") && err.contains("lb-agent cleanup"),
        "{err}"
    );
    check_same_version(Path::new("/x"), expected, expected).unwrap();
}

#[test]
fn other_layout_dirs_are_listed_oldest_first() {
    let dir = std::env::temp_dir().join(format!("lb-layouts-{}", std::process::id()));
    for sub in ["v10", "v1", PIN_LAYOUT, "links", "vx", "v7"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("v4"), "a file, not a layout").unwrap();
    let found = other_layouts(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found, vec!["v1", "v7", "v10"]);
}
