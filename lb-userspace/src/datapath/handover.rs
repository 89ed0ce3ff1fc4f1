//! Hand-over from an earlier pin layout: the maps this agent can read are
//! copied into its own (see [`super::layout::plan_handover`]); the links move
//! to the new programs once the first sync has filled the new maps.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::{
    maps::{
        lpm_trie::LpmTrie, Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues,
    },
    Pod,
};
use lb_common::{
    maps6::{
        AffinityKey6, CtEntry6, FlowKey6, RevNatEntry6, SockRevEntry6, SockRevKey6, MAP_AFFINITY6,
        MAP_CONNTRACK6, MAP_REVNAT6, MAP_SOCK_REVERSE6,
    },
    AffinityEntry, AffinityKey, Backend, CtEntry, FlowKey, InternalTable, RevNatEntry,
    ServiceEntry, ServiceKey, ServiceLabel, ServiceStats, SockAffinityKey, SockRevEntry,
    SockRevKey, SourceRangeKey, BACKEND_F_ACTIVE, BACKEND_F_SELECTED, BACKEND_F_SELECTED_LOCAL,
    MAP_AFFINITY, MAP_BACKENDS, MAP_CONNTRACK, MAP_EVENTS, MAP_INTERNAL_TABLES, MAP_MAGLEV,
    MAP_REVNAT, MAP_SERVICES, MAP_SERVICE_LABELS, MAP_SERVICE_STATS, MAP_SERVICE_STATS_ARRAY,
    MAP_SOCK_AFFINITY, MAP_SOCK_REVERSE, MAP_SOURCE_RANGES, MAP_VERDICTS,
};

use super::{
    convert::{self, V3CtEntry, V3RevNatEntry},
    layout::Handover,
    maps::{Maps, Slab},
};
use crate::filter::{self, FilterBits};

/// `BPF_NOEXIST`: an entry the new programs already wrote is kept.
const BPF_NOEXIST: u64 = 1;

/// A hand-over under way: the earlier layouts' directories, and what is
/// carried from the newest of them.
pub struct PendingHandover {
    /// Directories of earlier layouts, whose links move once the first sync is done.
    pub dirs: Vec<PathBuf>,
    /// The directory carried from, and the plan.
    pub carry: Option<(PathBuf, Handover)>,
    /// Conntrack and reverse-NAT entries copied so far.
    pub copied: (u64, u64),
    /// When the first copy began (monotonic ns): the second copies only
    /// converted flows made since.
    pub started_ns: u64,
}

impl PendingHandover {
    /// Whether an earlier layout has a link pinned for `kind` ("xdp", "tc") on `iface`.
    #[must_use]
    pub fn has_link(&self, kind: &str, iface: &str) -> bool {
        self.dirs.iter().any(|d| link_pin(d, kind, iface).exists())
    }
}

/// Where a layout directory pins the link of `kind` on `iface`.
#[must_use]
pub fn link_pin(layout_dir: &Path, kind: &str, iface: &str) -> PathBuf {
    layout_dir
        .join(super::LINKS_DIR)
        .join(format!("{kind}-{iface}"))
}

fn open(path: &Path) -> Result<Map> {
    let data =
        MapData::from_pin(path).with_context(|| format!("opening the map {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

fn exists(error: &MapError) -> bool {
    matches!(error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EEXIST))
}

/// Copies every entry of the hash map at `old` into the one at `new`, keeping
/// entries `new` has already. Returns how many were copied.
fn copy_hash<K: Pod, V: Pod>(old: &Path, new: &Path) -> Result<u64> {
    let from: HashMap<MapData, K, V> = HashMap::try_from(open(old)?)?;
    let mut to: HashMap<MapData, K, V> = HashMap::try_from(open(new)?)?;
    let mut copied = 0;
    for item in &from {
        let (key, value) = item?;
        match to.insert(key, value, BPF_NOEXIST) {
            Ok(()) => copied += 1,
            Err(e) if exists(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("copying into {}", new.display())),
        }
    }
    Ok(copied)
}

/// Copies the array at `old` into the one at `new` (at least as long).
fn copy_array<V: Pod + PartialEq>(old: &Path, new: &Path) -> Result<()> {
    let from: Array<MapData, V> = Array::try_from(open(old)?)?;
    let mut to: Array<MapData, V> = Array::try_from(open(new)?)?;
    // Both read in batches; only the slots that differ are written (most
    // of a fresh array's slots are empty in both).
    let current = super::batch::read_array(&to)?;
    for (index, value) in (0u32..).zip(super::batch::read_array(&from)?) {
        if current.get(index as usize) != Some(&value) {
            to.set(index, value, 0)?;
        }
    }
    Ok(())
}

/// Adds the per-CPU counters of the array at `old` to those at `new`,
/// slot by slot with `add`.
fn add_per_cpu_array<T: Pod + Default + PartialEq>(
    old: &Path,
    new: &Path,
    add: impl Fn(&mut T, &T),
) -> Result<()> {
    let from: PerCpuArray<MapData, T> = PerCpuArray::try_from(open(old)?)?;
    let mut to: PerCpuArray<MapData, T> = PerCpuArray::try_from(open(new)?)?;
    for index in 0..from.len().min(to.len()) {
        let old = from.get(&index, 0)?;
        if old.iter().all(|v| *v == T::default()) {
            continue;
        }
        let mut sum = to.get(&index, 0)?.to_vec();
        for (total, old) in sum.iter_mut().zip(old.iter()) {
            add(total, old);
        }
        to.set(index, PerCpuValues::try_from(sum)?, 0)?;
    }
    Ok(())
}

/// Adds the per-service counters at `old` to those at `new`.
fn add_service_stats(old: &Path, new: &Path) -> Result<()> {
    let from: PerCpuHashMap<MapData, u32, ServiceStats> = PerCpuHashMap::try_from(open(old)?)?;
    let mut to: PerCpuHashMap<MapData, u32, ServiceStats> = PerCpuHashMap::try_from(open(new)?)?;
    for item in &from {
        let (id, old) = item?;
        let mut sum = old.to_vec();
        if let Ok(current) = to.get(&id, 0) {
            for (total, new) in sum.iter_mut().zip(current.iter()) {
                total.packets += new.packets;
                total.bytes += new.bytes;
            }
        }
        to.insert(id, PerCpuValues::try_from(sum)?, 0)?;
    }
    Ok(())
}

/// Copies every entry of the LPM trie at `old` into the one at `new`.
fn copy_lpm<K: Pod, V: Pod>(old: &Path, new: &Path) -> Result<()> {
    let from: LpmTrie<MapData, K, V> = LpmTrie::try_from(open(old)?)?;
    let mut to: LpmTrie<MapData, K, V> = LpmTrie::try_from(open(new)?)?;
    for item in &from {
        let (key, value) = item?;
        to.insert(&key, value, 0)
            .with_context(|| format!("copying into {}", new.display()))?;
    }
    Ok(())
}

/// Gives every active backend selected for new connections the flag that
/// selects it under the `Local` policy too: a v4 frontend had one table,
/// for every client, and no entry reads the flag before the first sync.
fn select_for_pods_as_before(backends: &mut Array<MapData, Backend>) -> Result<()> {
    for index in 0..backends.len() {
        let mut backend = backends.get(&index, 0)?;
        if backend.flags & BACKEND_F_ACTIVE != 0 && backend.flags & BACKEND_F_SELECTED != 0 {
            backend.flags |= BACKEND_F_SELECTED_LOCAL;
            backends.set(index, backend, 0)?;
        }
    }
    Ok(())
}

/// Copies the services, backends and Maglev tables (and the source ranges
/// when `plan` carries them): the slab, the backends and the ranges first,
/// the frontends last, so no frontend points at a missing table or range.
pub fn carry_services(
    old_dir: &Path,
    new_dir: &Path,
    plan: &Handover,
    maps: &mut Maps,
) -> Result<()> {
    if plan.carry.contains(&MAP_SOURCE_RANGES) {
        copy_lpm::<SourceRangeKey, u32>(
            &old_dir.join(MAP_SOURCE_RANGES),
            &new_dir.join(MAP_SOURCE_RANGES),
        )?;
    }
    if plan.carry.contains(&MAP_INTERNAL_TABLES) {
        copy_array::<InternalTable>(
            &old_dir.join(MAP_INTERNAL_TABLES),
            &new_dir.join(MAP_INTERNAL_TABLES),
        )?;
    }
    let old_slab = Slab::new(open(&old_dir.join(MAP_MAGLEV))?)?;
    maps.slab.write(0, &old_slab.read(0, old_slab.slots())?)?;
    copy_array::<Backend>(&old_dir.join(MAP_BACKENDS), &new_dir.join(MAP_BACKENDS))?;
    if !old_dir.join(MAP_INTERNAL_TABLES).exists() {
        // A layout before pods had tables of their own (v4): pods used each
        // frontend's table, so a backend selected there is selected for them.
        select_for_pods_as_before(&mut maps.backends)?;
    }
    copy_hash::<u32, ServiceLabel>(
        &old_dir.join(MAP_SERVICE_LABELS),
        &new_dir.join(MAP_SERVICE_LABELS),
    )?;
    copy_hash::<ServiceKey, ServiceEntry>(
        &old_dir.join(MAP_SERVICES),
        &new_dir.join(MAP_SERVICES),
    )?;
    // The filter follows from what was carried; it is set before any
    // program of this layout sees a packet.
    let mut bits = FilterBits::new(maps.filter.words());
    for applied in maps.applied_frontends()? {
        bits.add(filter::bits_of(&applied));
    }
    for applied in maps.applied_frontends6()? {
        bits.add(filter::bits_of(&applied));
    }
    for (index, word) in bits.writes().before {
        maps.filter.set(index, word)?;
    }
    Ok(())
}

/// Copies every entry of the hash map at `old` into the one at `new`
/// through `convert`, keeping entries `new` has already. Returns how many
/// were copied.
fn convert_hash<K: Pod, O: Pod, V: Pod>(
    old: &Path,
    new: &Path,
    mut convert: impl FnMut(&K, &O) -> Option<V>,
) -> Result<u64> {
    let from: HashMap<MapData, K, O> = HashMap::try_from(open(old)?)?;
    let mut to: HashMap<MapData, K, V> = HashMap::try_from(open(new)?)?;
    let mut copied = 0;
    for item in &from {
        let (key, value) = item?;
        let Some(value) = convert(&key, &value) else {
            continue;
        };
        match to.insert(key, value, BPF_NOEXIST) {
            Ok(()) => copied += 1,
            Err(e) if exists(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("copying into {}", new.display())),
        }
    }
    Ok(copied)
}

/// Copies the flow state the plan carries (conntrack, reverse NAT, affinity,
/// the sockets' reverse entries),
/// converting entries of an earlier layout where the plan says so, and
/// keeping entries the new programs made. With `since_ns` (the second pass,
/// after the links moved) only converted flows the earlier programs created
/// since then come along: an entry the new programs removed meanwhile (a
/// port taken over, a collected flow) is not brought back. Returns the
/// conntrack and reverse-NAT entries copied.
pub fn carry_state(
    old_dir: &Path,
    new_dir: &Path,
    plan: &Handover,
    since_ns: Option<u64>,
) -> Result<(u64, u64)> {
    let carries = |name| plan.carry.contains(&name);
    let converts = |name| plan.convert.contains(&name);
    let now = crate::conntrack::monotonic_s();
    let mut copied = (0, 0);
    let mut fresh = std::collections::HashSet::new();
    let (old_ct, new_ct) = (old_dir.join(MAP_CONNTRACK), new_dir.join(MAP_CONNTRACK));
    if converts(MAP_CONNTRACK) {
        copied.0 = convert_hash::<FlowKey, V3CtEntry, CtEntry>(&old_ct, &new_ct, |k, v| {
            if since_ns.is_some_and(|since| v.created_ns < since) {
                return None;
            }
            fresh.insert(*k);
            Some(convert::conntrack(k, v, now))
        })?;
    } else if carries(MAP_CONNTRACK) {
        copied.0 = copy_hash::<FlowKey, CtEntry>(&old_ct, &new_ct)?;
    }
    let (old_rev, new_rev) = (old_dir.join(MAP_REVNAT), new_dir.join(MAP_REVNAT));
    if converts(MAP_REVNAT) {
        // Tags distinct from the new programs' random ones, and from pass to pass.
        let mut claims = u64::from(now) << 32;
        copied.1 =
            convert_hash::<FlowKey, V3RevNatEntry, RevNatEntry>(&old_rev, &new_rev, |k, v| {
                let client = FlowKey {
                    src_addr: v.client_addr,
                    dst_addr: v.svc_addr,
                    src_port: v.client_port,
                    dst_port: v.svc_port,
                    proto: k.proto,
                    pad: [0; 3],
                };
                if since_ns.is_some() && !fresh.contains(&client) {
                    return None;
                }
                claims += 1;
                Some(convert::reverse_nat(v, now, claims))
            })?;
    } else if carries(MAP_REVNAT) {
        copied.1 = copy_hash::<FlowKey, RevNatEntry>(&old_rev, &new_rev)?;
    }
    if carries(MAP_AFFINITY) {
        copy_hash::<AffinityKey, AffinityEntry>(
            &old_dir.join(MAP_AFFINITY),
            &new_dir.join(MAP_AFFINITY),
        )?;
    }
    if carries(MAP_SOCK_AFFINITY) {
        copy_hash::<SockAffinityKey, AffinityEntry>(
            &old_dir.join(MAP_SOCK_AFFINITY),
            &new_dir.join(MAP_SOCK_AFFINITY),
        )?;
    }
    // IPv6's flows (no layout before v8 had them: nothing to convert).
    if carries(MAP_CONNTRACK6) {
        copied.0 += copy_hash::<FlowKey6, CtEntry6>(
            &old_dir.join(MAP_CONNTRACK6),
            &new_dir.join(MAP_CONNTRACK6),
        )?;
    }
    if carries(MAP_REVNAT6) {
        copied.1 += copy_hash::<FlowKey6, RevNatEntry6>(
            &old_dir.join(MAP_REVNAT6),
            &new_dir.join(MAP_REVNAT6),
        )?;
    }
    if carries(MAP_AFFINITY6) {
        copy_hash::<AffinityKey6, AffinityEntry>(
            &old_dir.join(MAP_AFFINITY6),
            &new_dir.join(MAP_AFFINITY6),
        )?;
    }
    // Connected sockets keep showing the Service's address: the earlier
    // programs pointed them (both passes: they serve until their links go).
    if carries(MAP_SOCK_REVERSE) {
        copy_hash::<SockRevKey, SockRevEntry>(
            &old_dir.join(MAP_SOCK_REVERSE),
            &new_dir.join(MAP_SOCK_REVERSE),
        )?;
    }
    if carries(MAP_SOCK_REVERSE6) {
        copy_hash::<SockRevKey6, SockRevEntry6>(
            &old_dir.join(MAP_SOCK_REVERSE6),
            &new_dir.join(MAP_SOCK_REVERSE6),
        )?;
    }
    Ok(copied)
}

/// Adds the counters the plan carries; once the old programs are detached.
pub fn carry_counters(old_dir: &Path, new_dir: &Path, plan: &Handover) -> Result<()> {
    for name in [MAP_VERDICTS, MAP_EVENTS] {
        if plan.carry.contains(&name) {
            add_per_cpu_array::<u64>(&old_dir.join(name), &new_dir.join(name), |t, o| *t += o)?;
        }
    }
    if plan.carry.contains(&MAP_SERVICE_STATS) {
        add_service_stats(
            &old_dir.join(MAP_SERVICE_STATS),
            &new_dir.join(MAP_SERVICE_STATS),
        )?;
    }
    if plan.carry.contains(&MAP_SERVICE_STATS_ARRAY) {
        add_per_cpu_array::<ServiceStats>(
            &old_dir.join(MAP_SERVICE_STATS_ARRAY),
            &new_dir.join(MAP_SERVICE_STATS_ARRAY),
            |total, old| {
                total.packets += old.packets;
                total.bytes += old.bytes;
            },
        )?;
    }
    Ok(())
}
