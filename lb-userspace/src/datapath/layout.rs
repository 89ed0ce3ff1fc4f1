//! The pin layout: which version of the map layouts a pin directory holds,
//! the shape every pinned map must have before it is read, and what an agent
//! may carry over from an earlier layout during a hand-over.

use std::{collections::BTreeMap, path::Path, sync::OnceLock};

use anyhow::{bail, Context, Result};
use aya::maps::MapInfo;
use lb_common::{
    maps6::{
        MAP_AFFINITY6, MAP_BACKENDS6, MAP_CONNTRACK6, MAP_REVNAT6, MAP_SERVICES6,
        MAP_SOCK_REVERSE6, MAP_SOURCE_RANGES6,
    },
    MAP_AFFINITY, MAP_BACKENDS, MAP_CONNTRACK, MAP_EVENTS, MAP_INTERNAL_TABLES, MAP_MAGLEV,
    MAP_REVNAT, MAP_SERVICES, MAP_SERVICE_LABELS, MAP_SERVICE_STATS, MAP_SERVICE_STATS_ARRAY,
    MAP_SOCK_AFFINITY, MAP_SOCK_REVERSE, MAP_SOURCE_RANGES, MAP_VERDICTS,
};

use super::{maps::PINNED_MAPS, EBPF_OBJECT};

/// Version of the pin layout (map names, key and value layouts). A new layout
/// gets a new directory, so an agent never misreads an older agent's maps.
pub const PIN_LAYOUT: &str = "v8";

/// Fingerprint of [`PIN_LAYOUT`]'s map shapes; a test fails when the maps
/// change without a new version (then bump the version, extend
/// [`READABLE_LAYOUTS`], and record the new fingerprint here).
pub const PIN_LAYOUT_FINGERPRINT: u64 = 11_769_785_225_651_164_621;

/// Earlier layouts this agent can read, each with the maps whose key and
/// value layouts are unchanged since: only those are carried over as they
/// are. The pass-through filter (v3) is never carried: it follows from the
/// services and backends, and is rebuilt from those carried. v2's service
/// counters (a hash) are carried into the hash, which counts alongside the
/// per-CPU array of low ids that v3 added. v4 added `SNAT_EXHAUSTED`, one
/// verdict and events (counters only grow), and changed the flow state:
/// see [`CONVERTED_LAYOUTS`]. v5 added `SOURCE_RANGES`, `INTERNAL_TABLES`,
/// `NODE_PORT_ADDRS` (never carried: the first sync writes it; v4's node
/// ports, one frontend per node address, become one frontend of address 0),
/// one event and a backend flag (`BACKEND_F_SELECTED_INTERNAL`, which
/// v4's carried backends get where they had `BACKEND_F_SELECTED`: v4 served
/// pods from the same table). v6 added `SOCK_REVERSE` (socket-level
/// balancing; it starts empty) and changed the meaning of a service id: one per Service port, shared by its frontends with its
/// backends, tables, counters, affinity and source ranges (labelled
/// "namespace/name:port"); the `Local` policy's selection has the backend
/// flag v5 gave pods', and an entry flag (`SERVICE_F_LOCAL`) says which a
/// frontend reads. v5's maps are carried as they are: each frontend is a
/// port of its own until the first sync merges each Service port's
/// frontends into the port of the first one placed, the others' backend
/// entries kept as aliases for their flows (see `plan::adopt`). v7 added
/// `SOCK_AFFINITY` (socket-level session affinity, keyed by network
/// namespace; it starts empty). v8 added IPv6: the prog arrays
/// `XDP6_PROGS` and `TC6_PROGS` (never carried: each load fills its own),
/// and one block of verdict and event counters per family, IPv4's first
/// (v7's counters fit into the longer arrays as IPv4's), and IPv6's
/// frontend maps `SERVICES6`, `BACKENDS6`, `SOURCE_RANGES6` (see
/// [`SERVICE_MAPS6`]) and `NODEPORT_ADDRS6`, and its flow maps
/// `CONNTRACK6` (see [`ID_DEPENDENT_MAPS6`]) and `REVNAT6` (see
/// [`INDEPENDENT_MAPS6`]) and its socket reverse map `SOCK_REVERSE6`,
/// which start empty after a hand-over from an earlier layout, and
/// `SNAT_EXHAUSTED6` (never carried, as `SNAT_EXHAUSTED` was not); `CONFIG`
/// grew by IPv6's node address.
pub const READABLE_LAYOUTS: &[(&str, &[&str])] = &[
    (
        "v7",
        &[
            MAP_SERVICES,
            MAP_BACKENDS,
            MAP_MAGLEV,
            MAP_SERVICE_LABELS,
            MAP_AFFINITY,
            MAP_VERDICTS,
            MAP_SERVICE_STATS,
            MAP_SERVICE_STATS_ARRAY,
            MAP_EVENTS,
            MAP_CONNTRACK,
            MAP_REVNAT,
            MAP_SOURCE_RANGES,
            MAP_INTERNAL_TABLES,
            MAP_SOCK_REVERSE,
            MAP_SOCK_AFFINITY,
        ],
    ),
    (
        "v6",
        &[
            MAP_SERVICES,
            MAP_BACKENDS,
            MAP_MAGLEV,
            MAP_SERVICE_LABELS,
            MAP_AFFINITY,
            MAP_VERDICTS,
            MAP_SERVICE_STATS,
            MAP_SERVICE_STATS_ARRAY,
            MAP_EVENTS,
            MAP_CONNTRACK,
            MAP_REVNAT,
            MAP_SOURCE_RANGES,
            MAP_INTERNAL_TABLES,
            MAP_SOCK_REVERSE,
        ],
    ),
    (
        "v5",
        &[
            MAP_SERVICES,
            MAP_BACKENDS,
            MAP_MAGLEV,
            MAP_SERVICE_LABELS,
            MAP_AFFINITY,
            MAP_VERDICTS,
            MAP_SERVICE_STATS,
            MAP_SERVICE_STATS_ARRAY,
            MAP_EVENTS,
            MAP_CONNTRACK,
            MAP_REVNAT,
            MAP_SOURCE_RANGES,
            MAP_INTERNAL_TABLES,
        ],
    ),
    (
        "v4",
        &[
            MAP_SERVICES,
            MAP_BACKENDS,
            MAP_MAGLEV,
            MAP_SERVICE_LABELS,
            MAP_AFFINITY,
            MAP_VERDICTS,
            MAP_SERVICE_STATS,
            MAP_SERVICE_STATS_ARRAY,
            MAP_EVENTS,
            MAP_CONNTRACK,
            MAP_REVNAT,
        ],
    ),
    (
        "v3",
        &[
            MAP_SERVICES,
            MAP_BACKENDS,
            MAP_MAGLEV,
            MAP_SERVICE_LABELS,
            MAP_AFFINITY,
            MAP_VERDICTS,
            MAP_SERVICE_STATS,
            MAP_SERVICE_STATS_ARRAY,
            MAP_EVENTS,
        ],
    ),
    (
        // v3 added FILTER and SVC_STATS_ARRAY.
        "v2",
        &[
            MAP_SERVICES,
            MAP_BACKENDS,
            MAP_MAGLEV,
            MAP_SERVICE_LABELS,
            MAP_AFFINITY,
            MAP_VERDICTS,
            MAP_SERVICE_STATS,
            MAP_EVENTS,
        ],
    ),
    (
        // v2 added EVENTS.
        "v1",
        &[
            MAP_SERVICES,
            MAP_BACKENDS,
            MAP_MAGLEV,
            MAP_SERVICE_LABELS,
            MAP_AFFINITY,
            MAP_VERDICTS,
            MAP_SERVICE_STATS,
        ],
    ),
];

/// Earlier layouts whose flow state this agent converts entry by entry
/// (`handover::convert`): v1 to v3 kept conntrack and reverse-NAT entries in
/// the layout v4 replaced (state machine, timestamps, claim tags).
pub const CONVERTED_LAYOUTS: &[&str] = &["v1", "v2", "v3"];
/// The maps converted from [`CONVERTED_LAYOUTS`].
pub const CONVERTED_MAPS: [&str; 2] = [MAP_CONNTRACK, MAP_REVNAT];
/// Key and value sizes of the converted maps in those layouts.
pub const CONVERTED_SHAPES: [(&str, u32, u32); 2] = [(MAP_CONNTRACK, 16, 32), (MAP_REVNAT, 16, 12)];

/// The maps naming each other's ids (service ids, backend ids, slab
/// offsets): carried all together or not at all.
pub const SERVICE_MAPS: [&str; 4] = [MAP_MAGLEV, MAP_BACKENDS, MAP_SERVICE_LABELS, MAP_SERVICES];
/// Maps whose entries hold service or backend ids: carried only with
/// [`SERVICE_MAPS`]. The source ranges and the pods' tables may start
/// empty under carried services (a layout before they existed): the first
/// sync writes them.
pub const ID_DEPENDENT_MAPS: [&str; 7] = [
    MAP_CONNTRACK,
    MAP_AFFINITY,
    MAP_SOCK_AFFINITY,
    MAP_SERVICE_STATS,
    MAP_SERVICE_STATS_ARRAY,
    MAP_SOURCE_RANGES,
    MAP_INTERNAL_TABLES,
];
/// IPv6's twins of [`SERVICE_MAPS`] and [`ID_DEPENDENT_MAPS`] (new in v8):
/// they share the slab, labels and ids of the IPv4 maps, so they are carried
/// only with those, and only when all of them pass. Failing, they start
/// empty without holding IPv4 back: nothing of IPv4 names their entries.
/// `NODEPORT_ADDRS6` is never carried, as `NODE_PORT_ADDRS` is not.
pub const SERVICE_MAPS6: [&str; 3] = [MAP_BACKENDS6, MAP_SERVICES6, MAP_SOURCE_RANGES6];
/// IPv6's maps whose entries hold IPv6 backend ids: carried only with
/// [`SERVICE_MAPS6`], as [`ID_DEPENDENT_MAPS`] are with [`SERVICE_MAPS`];
/// failing on their own, they start empty and hold nothing back.
pub const ID_DEPENDENT_MAPS6: [&str; 2] = [MAP_CONNTRACK6, MAP_AFFINITY6];
/// IPv6's twins of [`INDEPENDENT_MAPS`]: addresses only, carried on their
/// own when readable (reported after IPv6's service maps).
pub const INDEPENDENT_MAPS6: [&str; 2] = [MAP_REVNAT6, MAP_SOCK_REVERSE6];
/// Maps carried on their own when readable: addresses and counters only.
pub const INDEPENDENT_MAPS: [&str; 4] = [MAP_REVNAT, MAP_VERDICTS, MAP_EVENTS, MAP_SOCK_REVERSE];

/// `BPF_MAP_TYPE_LRU_HASH`.
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// A map's kind and sizes: what must match before its contents are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    /// `bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Capacity (an array's length).
    pub max_entries: u32,
}

impl MapShape {
    /// Whether a map of shape `self` can be read as one of shape `expected`
    /// (the capacity may differ: the slab's follows `--maglev-slab-slots`).
    #[must_use]
    pub fn matches(&self, expected: &MapShape) -> bool {
        self.map_type == expected.map_type
            && self.key_size == expected.key_size
            && self.value_size == expected.value_size
    }

    /// Whether the contents of a map of shape `self` fit one of shape `new`.
    #[must_use]
    pub fn fits_into(&self, new: &MapShape) -> bool {
        self.matches(new) && (!is_array(self.map_type) || self.max_entries <= new.max_entries)
    }
}

fn is_array(map_type: u32) -> bool {
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    matches!(map_type, BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY)
}

/// Shapes of the pinned maps, by name.
pub type Shapes = BTreeMap<String, MapShape>;

/// The shapes of the pinned maps as the embedded programs declare them.
pub fn object_shapes() -> Result<&'static Shapes> {
    static SHAPES: OnceLock<Shapes> = OnceLock::new();
    if let Some(shapes) = SHAPES.get() {
        return Ok(shapes);
    }
    let object = aya_obj::Object::parse(EBPF_OBJECT).context("parsing the eBPF object")?;
    let mut shapes = Shapes::new();
    for name in PINNED_MAPS {
        let map = object
            .maps
            .get(name)
            .with_context(|| format!("the eBPF object has no map {name}"))?;
        shapes.insert(
            name.to_string(),
            MapShape {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: map.max_entries(),
            },
        );
    }
    Ok(SHAPES.get_or_init(|| shapes))
}

/// The shape of the map pinned at `path`.
pub fn pinned_shape(path: &Path) -> Result<MapShape> {
    let info = MapInfo::from_pin(path)
        .with_context(|| format!("reading the pinned map {}", path.display()))?;
    Ok(MapShape {
        map_type: info.map_type()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

/// The shapes of the maps pinned in `dir` (a layout directory), by name;
/// entries that are not maps (the links directory) are skipped.
#[must_use]
pub fn pinned_shapes(dir: &Path) -> Shapes {
    let mut shapes = Shapes::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return shapes;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(shape) = pinned_shape(&entry.path()) {
            shapes.insert(name, shape);
        }
    }
    shapes
}

/// Refuses a layout directory of this agent's version whose maps do not
/// have the shapes the programs expect (a layout changed without a new
/// version): reading them would misread every entry.
pub fn check_same_version(dir: &Path, pinned: &Shapes, expected: &Shapes) -> Result<()> {
    for (name, shape) in pinned {
        let Some(want) = expected.get(name) else {
            continue;
        };
        if !shape.matches(want) {
            bail!(
                "the map {name} pinned in {} has {shape:?} but this agent's programs expect \
                 {want:?}: the layout changed without a new version ({PIN_LAYOUT}); remove the \
                 pins with `lb-agent cleanup` (this resets connection tracking)",
                dir.display()
            );
        }
    }
    Ok(())
}

/// What a hand-over from an earlier layout carries over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handover {
    /// The earlier layout's version.
    pub from: String,
    /// Maps whose entries are copied into the new ones (those also in
    /// [`Handover::convert`] entry by entry through a conversion).
    pub carry: Vec<&'static str>,
    /// Carried maps whose entries are converted from the earlier layout.
    pub convert: Vec<&'static str>,
    /// Maps that start empty, each with the reason.
    pub fresh: Vec<(&'static str, String)>,
}

impl Handover {
    /// Whether the services, backends and Maglev tables come along (then the
    /// new agent adopts them like its own pins).
    #[must_use]
    pub fn carries_services(&self) -> bool {
        self.carry.contains(&MAP_SERVICES)
    }
}

/// Decides what to carry over from the maps of layout `from` (shapes `old`)
/// into maps of shapes `new`: only maps this agent knows to be unchanged
/// since `from`, of the same shape; id-bearing maps only with the services.
#[must_use]
pub fn plan_handover(from: &str, old: &Shapes, new: &Shapes) -> Handover {
    let readable: &[&str] = READABLE_LAYOUTS
        .iter()
        .find(|(version, _)| *version == from)
        .map_or(&[], |(_, maps)| maps);
    let converted =
        |name: &'static str| CONVERTED_LAYOUTS.contains(&from) && CONVERTED_MAPS.contains(&name);
    let check = |name: &'static str| -> Result<(), String> {
        if readable.is_empty() && !CONVERTED_LAYOUTS.contains(&from) {
            return Err(format!("layout {from} is unknown to this agent"));
        }
        let (Some(o), Some(n)) = (old.get(name), new.get(name)) else {
            return Err(format!("layout {from} has no such map"));
        };
        if converted(name) {
            let legacy = CONVERTED_SHAPES
                .iter()
                .any(|&(m, k, v)| m == name && o.key_size == k && o.value_size == v);
            return if o.map_type == BPF_MAP_TYPE_LRU_HASH && legacy {
                Ok(())
            } else {
                Err(format!("its shape differs from layout {from}'s ({o:?})"))
            };
        }
        if !readable.contains(&name) {
            return Err(if readable.is_empty() {
                format!("layout {from} is unknown to this agent")
            } else {
                format!("its layout changed since {from}")
            });
        }
        if o.fits_into(n) {
            Ok(())
        } else {
            Err(format!("its shape differs ({o:?} vs {n:?})"))
        }
    };
    let mut plan = Handover {
        from: from.to_string(),
        ..Handover::default()
    };
    let services = SERVICE_MAPS.iter().try_for_each(|&name| {
        check(name).map_err(|why| format!("{name} cannot be carried: {why}"))
    });
    for name in SERVICE_MAPS.into_iter().chain(ID_DEPENDENT_MAPS) {
        let verdict = services.clone().and_then(|()| check(name));
        match verdict {
            Ok(()) => plan.carry.push(name),
            Err(why) => plan.fresh.push((name, why)),
        }
    }
    for name in INDEPENDENT_MAPS {
        match check(name) {
            Ok(()) => plan.carry.push(name),
            Err(why) => plan.fresh.push((name, why)),
        }
    }
    // After the IPv4 maps, so that their order in `fresh` stays as it was.
    let services6 = services.and_then(|()| {
        SERVICE_MAPS6.iter().try_for_each(|&name| {
            check(name).map_err(|why| format!("{name} cannot be carried: {why}"))
        })
    });
    for name in SERVICE_MAPS6.into_iter().chain(ID_DEPENDENT_MAPS6) {
        // A map's own reason first (an older layout has none of them).
        match check(name).and_then(|()| services6.clone()) {
            Ok(()) => plan.carry.push(name),
            Err(why) => plan.fresh.push((name, why)),
        }
    }
    for name in INDEPENDENT_MAPS6 {
        match check(name) {
            Ok(()) => plan.carry.push(name),
            Err(why) => plan.fresh.push((name, why)),
        }
    }
    plan.convert = plan
        .carry
        .iter()
        .copied()
        .filter(|&name| converted(name))
        .collect();
    plan
}

/// A stable fingerprint of map shapes (FNV-1a over names, types and sizes).
#[must_use]
pub fn fingerprint(shapes: &Shapes) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, shape) in shapes {
        eat(name.as_bytes());
        // Capacities are left out: they change without changing a layout.
        for n in [shape.map_type, shape.key_size, shape.value_size] {
            eat(&n.to_le_bytes());
        }
    }
    hash
}

/// Directories of other layout versions under `pin_dir` (`v<N>`), oldest first.
#[must_use]
pub fn other_layouts(pin_dir: &Path) -> Vec<String> {
    let mut versions: Vec<(u32, String)> = std::fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix('v')?.parse().ok()?;
            (name != PIN_LAYOUT && e.path().is_dir()).then_some((n, name))
        })
        .collect();
    versions.sort();
    versions.into_iter().map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests;
