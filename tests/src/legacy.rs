//! Pins of the previous layouts, made from the current one: what an agent
//! of layout v7, v6, v5, v4 or v3 would have left under a pin directory, for
//! hand-over tests.
//!
//! v7 had the maps of v8 but IPv6's (the prog arrays `XDP6_PROGS` and
//! `TC6_PROGS`, the frontend maps, `CONNTRACK6`, `REVNAT6`, `AFFINITY6` and `SOCK_REVERSE6`), with IPv4's
//! counters only (6 verdicts, 13 events): [`make_v7`] renames the layout
//! directory, removes IPv6's maps and shortens the counter arrays.
//!
//! v6 had the maps of v7 but `SOCK_AFFINITY`, of the same shapes.
//!
//! v5 had the maps of v6, of the same shapes, but one service id per
//! frontend, labelled "namespace/name", and no `SERVICE_F_LOCAL`: for a
//! state where each Service port has one frontend and no `Local` policy,
//! v5 wrote the same entries but the labels; it had no `SOCK_REVERSE`.
//! [`make_v5`] first gives each
//! frontend a port of its own (through the real planner, so the entries of
//! its flows stay), then renames the layout directory and strips the port
//! names from the labels. It refuses a frontend following `Local`.
//!
//! v4 kept every map of v5 but `SOURCE_RANGES`, `INTERNAL_TABLES` and
//! `NODE_PORT_ADDRS`, with
//! one event fewer (10) and no backend flagged `BACKEND_F_SELECTED_INTERNAL`:
//! [`make_v4`] renames the layout directory, removes the two maps, shortens
//! the event counters and clears the flag.
//!
//! v3 kept the maps of v4 but `SNAT_EXHAUSTED`, with other flow entries
//! (conntrack 32 bytes of another layout, reverse NAT 12 bytes), a smaller
//! `CONFIG` (8 bytes) and fewer verdicts (5) and events (2). [`make_v3`]
//! renames the layout directory, removes what v3 lacked and replaces the
//! maps whose layout changed by maps of v3's shapes holding the same flows
//! and counts, written in v3's layout. The byte layouts are written out here
//! from v3's documentation rather than taken from the agent's conversion, so
//! a mistake there shows.
//!
//! The replaced maps are new kernel objects: programs still attached (an
//! agent killed with its links pinned) keep using the old ones, so flows
//! they open after [`make_v3`] are not in the v3 pins.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData, MapInfo, PerCpuArray, PerCpuValues};
use lb_common::{
    conntrack::CtState,
    maps6::{
        MAP_AFFINITY6, MAP_BACKENDS6, MAP_CONNTRACK6, MAP_NODE_PORT_ADDRS6, MAP_REVNAT6,
        MAP_SERVICES6, MAP_SOCK_REVERSE6, MAP_SOURCE_RANGES6, MAP_TC6_PROGS, MAP_XDP6_PROGS,
    },
    Backend, CtEntry, FlowKey, NodeConfig, RevNatEntry, ServiceEntry, ServiceKey, ServiceLabel,
    BACKEND_F_SELECTED_LOCAL, CT_F_AFFINITY, CT_F_REPLIED, CT_F_SNAT, IPPROTO_TCP, MAP_BACKENDS,
    MAP_CONFIG, MAP_CONNTRACK, MAP_EVENTS, MAP_INTERNAL_TABLES, MAP_NODE_PORT_ADDRS, MAP_REVNAT,
    MAP_SERVICES, MAP_SERVICE_LABELS, MAP_SNAT_EXHAUSTED, MAP_SOCK_AFFINITY, MAP_SOCK_REVERSE,
    MAP_SOURCE_RANGES, MAP_VERDICTS, SERVICE_F_LOCAL, SERVICE_F_REJECT, SERVICE_F_SOURCE_RANGES,
};
use lb_userspace::{
    datapath::{maps::Maps, PIN_LAYOUT},
    desired::{BackendInfo, DesiredFrontend, DesiredState, TrafficPolicy},
    plan::Planner,
};

/// The layout [`make_v3`] makes.
pub const V3: &str = "v3";
/// The layout [`make_v4`] makes.
pub const V4: &str = "v4";
/// The layout [`make_v6`] makes.
pub const V6: &str = "v6";
/// Layout v7's directory name.
pub const V7: &str = "v7";
/// Verdict counters of layouts v4 to v7 (IPv4's only).
pub const V7_VERDICTS: u32 = 6;
/// Event counters of layout v7 (IPv4's only).
pub const V7_EVENTS: u32 = 13;
/// The layout [`make_v5`] makes.
pub const V5: &str = "v5";
/// Length of v4's event counters (v5 added `source_range_denied`).
pub const V4_EVENTS: u32 = 10;

/// v3's conntrack flag: the source was translated.
pub const V3_SNAT: u32 = 1;
/// v3's conntrack flag: the client sent FIN first.
pub const V3_FIN_CLIENT: u32 = 2;
/// v3's conntrack flag: the backend sent FIN first.
pub const V3_FIN_BACKEND: u32 = 4;
/// v3's conntrack flag: either side sent RST.
pub const V3_RST: u32 = 8;
/// v3's conntrack flag: the flow began with session affinity.
pub const V3_AFFINITY: u32 = 16;
/// What v3 wrote on a translated TCP flow once the backend answered: its
/// SYN-ACK was taken for the backend's FIN (the bug v4 fixed).
pub const V3_BOGUS_MARKS: u32 = V3_SNAT | V3_FIN_BACKEND;

/// Bytes of a v3 conntrack value: `backend_id` u32 | `backend_addr` be32 |
/// `backend_port` be16 | `snat_port` be16 | `snat_addr` be32 | `flags` u32 |
/// `closing_s` u32 | `created_ns` u64.
pub const V3_CONNTRACK_VALUE: usize = 32;
/// Bytes of a v3 reverse-NAT value: `svc_addr` be32 | `client_addr` be32 |
/// `svc_port` be16 | `client_port` be16.
pub const V3_REVNAT_VALUE: usize = 12;
/// Bytes of v3's node configuration: `node_addr` be32 | `flags` u32 (zero).
pub const V3_CONFIG_VALUE: usize = 8;
/// Length of v3's verdict counters (translated, reversed, passed, dropped, error).
pub const V3_VERDICTS: u32 = 5;
/// Length of v3's event counters (conntrack and reverse-NAT entries created).
pub const V3_EVENTS: u32 = 2;

/// `BPF_MAP_CREATE`.
const BPF_MAP_CREATE: libc::c_int = 0;
/// `BPF_MAP_TYPE_ARRAY`.
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_LRU_HASH`.
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// What [`make_v3`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Conntrack entries.
    pub conntrack: usize,
    /// Of those, translated TCP flows given [`V3_BOGUS_MARKS`].
    pub marked: usize,
    /// Reverse-NAT entries.
    pub reverse: usize,
}

/// Turns the pins an agent of layout v8 left under `pin_dir` (its
/// `--pin-dir`; the agent gone) into those an agent of layout v7 would have
/// left: the same maps and entries, without IPv6's maps (prog arrays,
/// frontend and flow maps), with
/// IPv4's [`V7_VERDICTS`] verdict and [`V7_EVENTS`] event counters only.
pub fn make_v7(pin_dir: &Path) -> Result<()> {
    ensure!(
        PIN_LAYOUT == "v8",
        "layout {PIN_LAYOUT}: update tests/src/legacy.rs to make the layouts before it"
    );
    let (from, to) = (pin_dir.join(PIN_LAYOUT), pin_dir.join(V7));
    ensure!(!to.exists(), "{} exists already", to.display());
    let counters = [(MAP_VERDICTS, V7_VERDICTS), (MAP_EVENTS, V7_EVENTS)]
        .into_iter()
        .map(|(name, len)| Ok((name, read_counters(&from, name, len)?)))
        .collect::<Result<Vec<_>>>()?;
    std::fs::rename(&from, &to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    for name in [
        MAP_XDP6_PROGS,
        MAP_TC6_PROGS,
        MAP_SERVICES6,
        MAP_BACKENDS6,
        MAP_SOURCE_RANGES6,
        MAP_NODE_PORT_ADDRS6,
        MAP_CONNTRACK6,
        MAP_REVNAT6,
        MAP_SOCK_REVERSE6,
        MAP_AFFINITY6,
    ] {
        std::fs::remove_file(to.join(name)).with_context(|| format!("removing {name}"))?;
    }
    for (name, values) in counters {
        write_counters(&to, name, values)?;
    }
    Ok(())
}

/// [`make_v5`], then every link v5 pins pinned again where this layout
/// pins it: as an upgrade's first successor leaves them when it dies in
/// its hand-over between pinning a link's new path and removing its old
/// one. Both pins name one link, which must keep serving.
pub fn make_v5_mid_handover(pin_dir: &Path) -> Result<()> {
    make_v5(pin_dir)?;
    let (old, new) = (
        pin_dir.join(V5).join("links"),
        pin_dir.join(PIN_LAYOUT).join("links"),
    );
    std::fs::create_dir_all(&new).with_context(|| format!("creating {}", new.display()))?;
    let mut pinned = 0;
    for entry in std::fs::read_dir(&old).with_context(|| format!("reading {}", old.display()))? {
        let entry = entry?;
        let link = aya::programs::links::PinnedLink::from_pin(entry.path())
            .with_context(|| format!("opening {}", entry.path().display()))?;
        aya::programs::links::FdLink::from(link)
            .pin(new.join(entry.file_name()))
            .with_context(|| format!("pinning {} again", entry.path().display()))?;
        pinned += 1;
    }
    ensure!(pinned > 0, "{} pins no link", old.display());
    Ok(())
}

/// Turns the pins an agent of layout v8 left under `pin_dir` (its
/// `--pin-dir`; the agent gone) into those an agent of layout v6 would have
/// left: those of [`make_v7`], without `SOCK_AFFINITY`.
pub fn make_v6(pin_dir: &Path) -> Result<()> {
    make_v7(pin_dir)?;
    let (from, to) = (pin_dir.join(V7), pin_dir.join(V6));
    ensure!(!to.exists(), "{} exists already", to.display());
    std::fs::rename(&from, &to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    std::fs::remove_file(to.join(MAP_SOCK_AFFINITY)).context("removing SOCK_AFFINITY")
}

/// Turns the pins an agent of layout v8 left under `pin_dir` (its
/// `--pin-dir`; the agent gone) into those an agent of layout v5 would have
/// left: the same maps and entries, each label without its port name.
/// Refuses a state v5 could not have written (a service id shared by
/// frontends, a frontend following `Local`).
pub fn make_v5(pin_dir: &Path) -> Result<()> {
    let (from, to) = (pin_dir.join(V7), pin_dir.join(V5));
    ensure!(!to.exists(), "{} exists already", to.display());
    // Through this agent's maps, before they become v7's.
    one_port_per_frontend(pin_dir)?;
    make_v7(pin_dir)?;
    let services: HashMap<MapData, ServiceKey, ServiceEntry> =
        HashMap::try_from(Map::HashMap(open(&from, MAP_SERVICES)?))?;
    let mut ids = std::collections::BTreeSet::new();
    for item in &services {
        let (key, entry) = item?;
        ensure!(
            ids.insert(entry.id),
            "service id {} is shared (frontend {key:?}): v5 gave each frontend its own",
            entry.id
        );
        ensure!(
            entry.flags & SERVICE_F_LOCAL == 0,
            "frontend {key:?} follows Local: v5 wrote no such flag"
        );
    }
    let mut labels: HashMap<MapData, u32, ServiceLabel> =
        HashMap::try_from(Map::HashMap(open(&from, MAP_SERVICE_LABELS)?))?;
    let all = labels.iter().collect::<Result<Vec<_>, _>>()?;
    for (id, mut label) in all {
        let end = label
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(label.bytes.len());
        if let Some(colon) = label.bytes[..end].iter().position(|&b| b == b':') {
            label.bytes[colon..].fill(0);
            labels.insert(id, label, 0)?;
        }
    }
    std::fs::rename(&from, &to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    std::fs::remove_file(to.join(MAP_SOCK_AFFINITY)).context("removing SOCK_AFFINITY")?;
    std::fs::remove_file(to.join(MAP_SOCK_REVERSE)).context("removing SOCK_REVERSE")
}

/// Moves every frontend of a Service port shared with others in the
/// current layout's pins under `pin_dir` into a port of its own, named after the frontend, as v5
/// kept them: the planner adopts the maps and plans each frontend as it is
/// (its backends, flags, ranges) under its own port name. The shared
/// entries stay, as aliases, for the flows that use them.
fn one_port_per_frontend(pin_dir: &Path) -> Result<()> {
    let mut maps = Maps::from_pins(pin_dir)?;
    let applied = maps.applied_frontends()?;
    let ids: std::collections::BTreeSet<u32> = applied.iter().map(|f| f.entry.id).collect();
    if ids.len() == applied.len() {
        return Ok(());
    }
    let mut desired = DesiredState::new();
    for f in &applied {
        ensure!(
            f.entry.flags & SERVICE_F_LOCAL == 0,
            "frontend {} follows Local: v5 wrote no such flag",
            f.frontend
        );
        let want = DesiredFrontend {
            service: f.service.clone(),
            port_name: format!("v5-{}-{}", f.frontend.port, desired.len()),
            backends: f
                .backends
                .iter()
                .map(|(addr, b)| (*addr, BackendInfo::from(b)))
                .collect(),
            policy: TrafficPolicy::Cluster,
            pods_policy: TrafficPolicy::Cluster,
            affinity_timeout: f.entry.affinity_timeout,
            has_endpoints: f.entry.flags & SERVICE_F_REJECT == 0,
            source_ranges: if f.entry.flags & SERVICE_F_SOURCE_RANGES == 0 {
                Vec::new()
            } else {
                f.source_ranges.clone()
            },
            node_port_addrs: f.node_port_addrs.clone(),
        };
        desired.insert(f.frontend, want);
    }
    let mut planner = Planner::adopt(
        applied,
        maps.filter.words(),
        maps.slab.slots(),
        Duration::ZERO,
    );
    let (plan, errors) = planner.plan(&desired, Instant::now());
    ensure!(errors.is_empty(), "giving each frontend a port: {errors:?}");
    maps.apply(&plan.ops)
}

/// Turns the pins an agent of layout v8 left under `pin_dir` (its
/// `--pin-dir`; the agent gone) into those an agent of layout v4 would have
/// left: those of [`make_v5`], without `SOURCE_RANGES`, with the
/// first [`V4_EVENTS`] event counters.
pub fn make_v4(pin_dir: &Path) -> Result<()> {
    make_v5(pin_dir)?;
    let (from, to) = (pin_dir.join(V5), pin_dir.join(V4));
    ensure!(!to.exists(), "{} exists already", to.display());
    let events = read_counters(&from, MAP_EVENTS, V4_EVENTS)?;
    std::fs::rename(&from, &to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    std::fs::remove_file(to.join(MAP_SOURCE_RANGES)).context("removing SOURCE_RANGES")?;
    std::fs::remove_file(to.join(MAP_INTERNAL_TABLES)).context("removing INTERNAL_TABLES")?;
    std::fs::remove_file(to.join(MAP_NODE_PORT_ADDRS)).context("removing NODE_PORT_ADDRS")?;
    clear_pod_selection(&to)?;
    write_counters(&to, MAP_EVENTS, events)
}

/// Clears the backend flag v5 added (`BACKEND_F_SELECTED_INTERNAL` then,
/// `BACKEND_F_SELECTED_LOCAL` since v6) on every backend in `dir`.
fn clear_pod_selection(dir: &Path) -> Result<()> {
    let mut backends: Array<MapData, Backend> =
        Array::try_from(Map::Array(open(dir, MAP_BACKENDS)?))?;
    for index in 0..backends.len() {
        let mut backend = backends.get(&index, 0)?;
        if backend.flags & BACKEND_F_SELECTED_LOCAL != 0 {
            backend.flags &= !BACKEND_F_SELECTED_LOCAL;
            backends.set(index, backend, 0)?;
        }
    }
    Ok(())
}

/// Turns the pins an agent of layout v8 left under `pin_dir` (its
/// `--pin-dir`; the agent gone) into those an agent of layout v3 would have
/// left (through [`make_v5`]). With `bogus_marks`, every translated TCP flow that was answered
/// carries v3's [`V3_BOGUS_MARKS`] and a closing time, as v3 wrote them
/// after a handshake.
pub fn make_v3(pin_dir: &Path, bogus_marks: bool) -> Result<Written> {
    make_v5(pin_dir)?;
    let (from, to) = (pin_dir.join(V5), pin_dir.join(V3));
    ensure!(!to.exists(), "{} exists already", to.display());
    // Everything is read before anything changes.
    let flows: HashMap<MapData, FlowKey, CtEntry> =
        HashMap::try_from(Map::LruHashMap(open(&from, MAP_CONNTRACK)?))?;
    let flows = flows.iter().collect::<Result<Vec<_>, _>>()?;
    let replies: HashMap<MapData, FlowKey, RevNatEntry> =
        HashMap::try_from(Map::LruHashMap(open(&from, MAP_REVNAT)?))?;
    let replies = replies.iter().collect::<Result<Vec<_>, _>>()?;
    let config: Array<MapData, NodeConfig> = Array::try_from(Map::Array(open(&from, MAP_CONFIG)?))?;
    let node_addr = config.get(&0, 0)?.node_addr;
    let counters = [(MAP_VERDICTS, V3_VERDICTS), (MAP_EVENTS, V3_EVENTS)]
        .into_iter()
        .map(|(name, len)| Ok((name, read_counters(&from, name, len)?)))
        .collect::<Result<Vec<_>>>()?;
    let capacity = |name: &str| -> Result<u32> {
        Ok(MapInfo::from_pin(from.join(name))
            .with_context(|| format!("reading {name}"))?
            .max_entries())
    };
    let (ct_capacity, rev_capacity) = (capacity(MAP_CONNTRACK)?, capacity(MAP_REVNAT)?);

    std::fs::rename(&from, &to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    std::fs::remove_file(to.join(MAP_SNAT_EXHAUSTED)).context("removing SNAT_EXHAUSTED")?;
    std::fs::remove_file(to.join(MAP_SOURCE_RANGES)).context("removing SOURCE_RANGES")?;
    std::fs::remove_file(to.join(MAP_INTERNAL_TABLES)).context("removing INTERNAL_TABLES")?;
    std::fs::remove_file(to.join(MAP_NODE_PORT_ADDRS)).context("removing NODE_PORT_ADDRS")?;
    clear_pod_selection(&to)?;

    let mut written = Written::default();
    let mut ct: HashMap<MapData, FlowKey, [u8; V3_CONNTRACK_VALUE]> =
        HashMap::try_from(Map::LruHashMap(replace(
            &to,
            MAP_CONNTRACK,
            BPF_MAP_TYPE_LRU_HASH,
            16,
            V3_CONNTRACK_VALUE,
            ct_capacity,
        )?))?;
    for (key, entry) in &flows {
        let value = v3_conntrack(key, entry, bogus_marks);
        if value != v3_conntrack(key, entry, false) {
            written.marked += 1;
        }
        ct.insert(key, value, 0)?;
        written.conntrack += 1;
    }
    let mut rev: HashMap<MapData, FlowKey, [u8; V3_REVNAT_VALUE]> =
        HashMap::try_from(Map::LruHashMap(replace(
            &to,
            MAP_REVNAT,
            BPF_MAP_TYPE_LRU_HASH,
            16,
            V3_REVNAT_VALUE,
            rev_capacity,
        )?))?;
    for (key, entry) in &replies {
        rev.insert(key, v3_reverse_nat(entry), 0)?;
        written.reverse += 1;
    }
    let mut config: Array<MapData, [u8; V3_CONFIG_VALUE]> = Array::try_from(Map::Array(replace(
        &to,
        MAP_CONFIG,
        BPF_MAP_TYPE_ARRAY,
        4,
        V3_CONFIG_VALUE,
        1,
    )?))?;
    let mut value = [0u8; V3_CONFIG_VALUE];
    value[0..4].copy_from_slice(&node_addr.to_ne_bytes());
    config.set(0, value, 0)?;
    for (name, values) in counters {
        write_counters(&to, name, values)?;
    }
    Ok(written)
}

/// Replaces the per-CPU counter array `name` in `dir` by one holding `values`.
fn write_counters(dir: &Path, name: &str, values: Vec<PerCpuValues<u64>>) -> Result<()> {
    let len = u32::try_from(values.len())?;
    let mut map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(replace(
        dir,
        name,
        BPF_MAP_TYPE_PERCPU_ARRAY,
        4,
        8,
        len,
    )?))?;
    for (index, per_cpu) in (0..).zip(values) {
        map.set(index, per_cpu, 0)?;
    }
    Ok(())
}

/// The v3 conntrack value of the v4 flow `key` -> `ct`; with `bogus_marks`,
/// an answered translated TCP flow gets [`V3_BOGUS_MARKS`].
#[must_use]
pub fn v3_conntrack(key: &FlowKey, ct: &CtEntry, bogus_marks: bool) -> [u8; V3_CONNTRACK_VALUE] {
    let mut flags = 0;
    if ct.flags & CT_F_SNAT != 0 {
        flags |= V3_SNAT;
    }
    if ct.flags & CT_F_AFFINITY != 0 {
        flags |= V3_AFFINITY;
    }
    flags |= match CtState::from_u8(ct.state) {
        CtState::FinClient | CtState::Closed => V3_FIN_CLIENT,
        CtState::FinBackend | CtState::TimeWait => V3_FIN_BACKEND,
        CtState::Reset => V3_RST,
        _ => 0,
    };
    if bogus_marks
        && key.proto == IPPROTO_TCP
        && ct.flags & CT_F_SNAT != 0
        && ct.flags & CT_F_REPLIED != 0
    {
        flags |= V3_FIN_BACKEND;
    }
    // v3 stamped the first sign of closing; v4 keeps only the last packet.
    let closing_s = if flags & (V3_FIN_CLIENT | V3_FIN_BACKEND | V3_RST) == 0 {
        0
    } else {
        ct.last_seen_s.max(1)
    };
    let mut v = [0u8; V3_CONNTRACK_VALUE];
    v[0..4].copy_from_slice(&ct.backend_id.to_ne_bytes());
    v[4..8].copy_from_slice(&ct.backend_addr.to_ne_bytes());
    v[8..10].copy_from_slice(&ct.backend_port.to_ne_bytes());
    v[10..12].copy_from_slice(&ct.snat_port.to_ne_bytes());
    v[12..16].copy_from_slice(&ct.snat_addr.to_ne_bytes());
    v[16..20].copy_from_slice(&flags.to_ne_bytes());
    v[20..24].copy_from_slice(&closing_s.to_ne_bytes());
    v[24..32].copy_from_slice(&ct.created_ns.to_ne_bytes());
    v
}

/// The flags of a v3 conntrack value.
#[must_use]
pub fn flags_of(value: &[u8; V3_CONNTRACK_VALUE]) -> u32 {
    u32::from_ne_bytes([value[16], value[17], value[18], value[19]])
}

/// The v3 reverse-NAT value of a v4 one.
#[must_use]
pub fn v3_reverse_nat(rev: &RevNatEntry) -> [u8; V3_REVNAT_VALUE] {
    let mut v = [0u8; V3_REVNAT_VALUE];
    v[0..4].copy_from_slice(&rev.svc_addr.to_ne_bytes());
    v[4..8].copy_from_slice(&rev.client_addr.to_ne_bytes());
    v[8..10].copy_from_slice(&rev.svc_port.to_ne_bytes());
    v[10..12].copy_from_slice(&rev.client_port.to_ne_bytes());
    v
}

fn open(dir: &Path, name: &str) -> Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

/// The first `len` per-CPU counters of the array `name` in `dir`.
fn read_counters(dir: &Path, name: &str, len: u32) -> Result<Vec<PerCpuValues<u64>>> {
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(open(dir, name)?))?;
    (0..len.min(map.len()))
        .map(|index| Ok(map.get(&index, 0)?))
        .collect()
}

/// Replaces the map pinned as `name` in `dir` by a new, empty one of this shape.
fn replace(
    dir: &Path,
    name: &str,
    map_type: u32,
    key_size: u32,
    value_size: usize,
    max_entries: u32,
) -> Result<MapData> {
    let path = dir.join(name);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    let map = create_map(
        name,
        map_type,
        key_size,
        u32::try_from(value_size)?,
        max_entries,
    )
    .with_context(|| format!("creating a map {name} of v3's shape"))?;
    map.pin(&path)
        .with_context(|| format!("pinning {}", path.display()))?;
    Ok(map)
}

/// `union bpf_attr` of `BPF_MAP_CREATE`, up to `map_name`: the kernel reads
/// the fields after it as zero.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates a map not pinned anywhere (aya 0.14 creates only those of an
/// object, and standalone hashes that are not LRU).
fn create_map(
    name: &str,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> Result<MapData> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: [0; 16],
    };
    // The name keeps a terminating NUL.
    ensure!(name.len() < attr.map_name.len(), "map name {name} too long");
    attr.map_name[..name.len()].copy_from_slice(name.as_bytes());
    let size = libc::c_uint::try_from(size_of::<MapCreateAttr>())?;
    // SAFETY: `attr` is a valid, fully initialised `union bpf_attr` prefix
    // (repr(C), u32 fields and a byte array: no padding) of `size` bytes,
    // which the kernel only reads; no memory is handed over.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            (&raw const attr).cast::<libc::c_void>(),
            size,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("BPF_MAP_CREATE");
    }
    let fd = i32::try_from(fd)?;
    // SAFETY: `fd` is the new map's descriptor, open and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(MapData::from_fd(fd)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_values_are_laid_out_as_v3_wrote_them() {
        let key = FlowKey {
            proto: IPPROTO_TCP,
            ..FlowKey::default()
        };
        let ct = CtEntry {
            backend_id: 7,
            backend_addr: 0x0a0b_0c0d,
            backend_port: 8080u16.to_be(),
            snat_port: 61_000u16.to_be(),
            snat_addr: 0x0102_0304,
            flags: CT_F_SNAT | CT_F_REPLIED,
            state: CtState::Established as u8,
            pad: 0,
            last_seen_s: 900,
            created_ns: 5_000_000_000,
        };
        let honest = v3_conntrack(&key, &ct, false);
        assert_eq!(flags_of(&honest), V3_SNAT);
        assert_eq!(
            &honest[20..24],
            &0u32.to_ne_bytes(),
            "open: no closing time"
        );
        let bogus = v3_conntrack(&key, &ct, true);
        assert_eq!(flags_of(&bogus), 0x5);
        assert_eq!(&bogus[20..24], &900u32.to_ne_bytes());
        assert_eq!(&bogus[0..4], &7u32.to_ne_bytes());
        assert_eq!(&bogus[10..12], &61_000u16.to_be_bytes());
        assert_eq!(&bogus[24..32], &5_000_000_000u64.to_ne_bytes());
        // Not translated, or not answered: v3 marked nothing.
        let local = CtEntry {
            flags: CT_F_REPLIED,
            ..ct
        };
        assert_eq!(flags_of(&v3_conntrack(&key, &local, true)), 0);
        let unanswered = CtEntry {
            flags: CT_F_SNAT,
            state: CtState::SynSent as u8,
            ..ct
        };
        assert_eq!(flags_of(&v3_conntrack(&key, &unanswered, true)), V3_SNAT);
        let reset = CtEntry {
            state: CtState::Reset as u8,
            ..local
        };
        assert_eq!(flags_of(&v3_conntrack(&key, &reset, true)), V3_RST);
        let rev = v3_reverse_nat(&RevNatEntry {
            svc_addr: 1,
            client_addr: 2,
            svc_port: 80u16.to_be(),
            client_port: 42_000u16.to_be(),
            ..RevNatEntry::default()
        });
        assert_eq!(&rev[0..8], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&rev[8..12], &[0, 80, 0xa4, 0x10]);
    }
}
