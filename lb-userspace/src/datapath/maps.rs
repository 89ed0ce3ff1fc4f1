//! Typed handles on the data path's maps, taken from a freshly loaded object
//! or reopened from their pins (for `lb-agent status`).

use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
    ptr::NonNull,
};

use anyhow::{bail, Context, Result};
use aya::maps::{
    lpm_trie::LpmTrie, Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
};
use lb_common::{
    maps6::{
        ipv6_octets, Backend6, ServiceKey6, SourceRangeKey6, MAP_BACKENDS6, MAP_NODE_PORT_ADDRS6,
        MAP_SERVICES6, MAP_SOURCE_RANGES6,
    },
    Backend, BackendId, Family, InternalTable, NodeConfig, ServiceEntry, ServiceKey, ServiceLabel,
    ServiceStats, SlabEntry, SourceRangeKey, Verdict, MAP_BACKENDS, MAP_CONFIG, MAP_FILTER,
    MAP_MAGLEV, MAP_SERVICES, MAP_SERVICE_LABELS, MAP_SERVICE_STATS, MAP_SERVICE_STATS_ARRAY,
    MAP_VERDICTS, SLOTS_PER_SLAB_ENTRY,
};

/// Every map the agent writes or reads, by name.
pub const PINNED_MAPS: [&str; 30] = [
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_MAGLEV,
    lb_common::MAP_CONNTRACK,
    lb_common::MAP_REVNAT,
    MAP_CONFIG,
    MAP_VERDICTS,
    MAP_SERVICE_LABELS,
    lb_common::MAP_AFFINITY,
    MAP_SERVICE_STATS,
    MAP_SERVICE_STATS_ARRAY,
    lb_common::MAP_EVENTS,
    MAP_FILTER,
    lb_common::MAP_SNAT_EXHAUSTED,
    lb_common::MAP_SOURCE_RANGES,
    lb_common::MAP_INTERNAL_TABLES,
    lb_common::MAP_NODE_PORT_ADDRS,
    lb_common::MAP_SOCK_REVERSE,
    lb_common::MAP_SOCK_AFFINITY,
    lb_common::maps6::MAP_XDP6_PROGS,
    lb_common::maps6::MAP_TC6_PROGS,
    MAP_SERVICES6,
    MAP_BACKENDS6,
    MAP_SOURCE_RANGES6,
    MAP_NODE_PORT_ADDRS6,
    lb_common::maps6::MAP_CONNTRACK6,
    lb_common::maps6::MAP_REVNAT6,
    lb_common::maps6::MAP_SOCK_REVERSE6,
    lb_common::maps6::MAP_SNAT_EXHAUSTED6,
    lb_common::maps6::MAP_AFFINITY6,
];

/// Number of possible CPUs: the length of every per-CPU value.
pub fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))
}

/// The maps the control path writes, plus the counters it reads.
pub struct Maps {
    /// Frontends.
    pub services: HashMap<MapData, ServiceKey, ServiceEntry>,
    /// Backends by id.
    pub backends: Array<MapData, Backend>,
    /// The Maglev slab, memory-mapped.
    pub slab: Slab,
    /// Node configuration.
    pub config: Array<MapData, NodeConfig>,
    /// Verdict counters.
    pub verdicts: PerCpuArray<MapData, u64>,
    /// Service labels for status output.
    pub labels: HashMap<MapData, u32, ServiceLabel>,
    /// Per-CPU packets and bytes per frontend of a high service id.
    pub service_stats: PerCpuHashMap<MapData, u32, ServiceStats>,
    /// Per-CPU packets and bytes per frontend of a low service id.
    pub service_stats_array: PerCpuArray<MapData, ServiceStats>,
    /// Per-CPU event counters.
    pub events: PerCpuArray<MapData, u64>,
    /// The pass-through filter, memory-mapped.
    pub filter: Filter,
    /// Client ranges of frontends restricted to them.
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
    /// The tables pods use, by frontend id.
    pub internal_tables: Array<MapData, InternalTable>,
    /// The node-port addresses (network byte order).
    pub node_port_addrs: HashMap<MapData, u32, u32>,
    /// IPv6 frontends.
    pub services6: HashMap<MapData, ServiceKey6, ServiceEntry>,
    /// IPv6 backends, by ids of the space `backends` shares.
    pub backends6: Array<MapData, Backend6>,
    /// Client ranges of IPv6 frontends restricted to them.
    pub source_ranges6: LpmTrie<MapData, SourceRangeKey6, u32>,
    /// The IPv6 node-port addresses.
    pub node_port_addrs6: HashMap<MapData, [u32; 4], u32>,
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        Ok(Self {
            services: HashMap::try_from(take(MAP_SERVICES)?)?,
            backends: Array::try_from(take(MAP_BACKENDS)?)?,
            slab: Slab::new(take(MAP_MAGLEV)?)?,
            config: Array::try_from(take(MAP_CONFIG)?)?,
            verdicts: PerCpuArray::try_from(take(MAP_VERDICTS)?)?,
            labels: HashMap::try_from(take(MAP_SERVICE_LABELS)?)?,
            service_stats: PerCpuHashMap::try_from(take(MAP_SERVICE_STATS)?)?,
            service_stats_array: PerCpuArray::try_from(take(MAP_SERVICE_STATS_ARRAY)?)?,
            events: PerCpuArray::try_from(take(lb_common::MAP_EVENTS)?)?,
            filter: Filter::new(take(MAP_FILTER)?)?,
            source_ranges: LpmTrie::try_from(take(lb_common::MAP_SOURCE_RANGES)?)?,
            internal_tables: Array::try_from(take(lb_common::MAP_INTERNAL_TABLES)?)?,
            node_port_addrs: HashMap::try_from(take(lb_common::MAP_NODE_PORT_ADDRS)?)?,
            services6: HashMap::try_from(take(MAP_SERVICES6)?)?,
            backends6: Array::try_from(take(MAP_BACKENDS6)?)?,
            source_ranges6: LpmTrie::try_from(take(MAP_SOURCE_RANGES6)?)?,
            node_port_addrs6: HashMap::try_from(take(MAP_NODE_PORT_ADDRS6)?)?,
        })
    }

    /// Reopens the maps pinned under an agent's `--pin-dir`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        let dir = super::pins_dir(pin_dir);
        let open = |name: &str| {
            let path = dir.join(name);
            MapData::from_pin(&path).with_context(|| {
                format!(
                    "cannot open the pinned map {}: is an agent running with this --pin-dir?",
                    path.display()
                )
            })
        };
        Ok(Self {
            services: HashMap::try_from(Map::HashMap(open(MAP_SERVICES)?))?,
            backends: Array::try_from(Map::Array(open(MAP_BACKENDS)?))?,
            slab: Slab::new(Map::Array(open(MAP_MAGLEV)?))?,
            config: Array::try_from(Map::Array(open(MAP_CONFIG)?))?,
            verdicts: PerCpuArray::try_from(Map::PerCpuArray(open(MAP_VERDICTS)?))?,
            labels: HashMap::try_from(Map::HashMap(open(MAP_SERVICE_LABELS)?))?,
            service_stats: PerCpuHashMap::try_from(Map::PerCpuHashMap(open(MAP_SERVICE_STATS)?))?,
            service_stats_array: PerCpuArray::try_from(Map::PerCpuArray(open(
                MAP_SERVICE_STATS_ARRAY,
            )?))?,
            events: PerCpuArray::try_from(Map::PerCpuArray(open(lb_common::MAP_EVENTS)?))?,
            filter: Filter::new(Map::Array(open(MAP_FILTER)?))?,
            source_ranges: LpmTrie::try_from(Map::LpmTrie(open(lb_common::MAP_SOURCE_RANGES)?))?,
            internal_tables: Array::try_from(Map::Array(open(lb_common::MAP_INTERNAL_TABLES)?))?,
            node_port_addrs: HashMap::try_from(Map::HashMap(open(
                lb_common::MAP_NODE_PORT_ADDRS,
            )?))?,
            services6: HashMap::try_from(Map::HashMap(open(MAP_SERVICES6)?))?,
            backends6: Array::try_from(Map::Array(open(MAP_BACKENDS6)?))?,
            source_ranges6: LpmTrie::try_from(Map::LpmTrie(open(MAP_SOURCE_RANGES6)?))?,
            node_port_addrs6: HashMap::try_from(Map::HashMap(open(MAP_NODE_PORT_ADDRS6)?))?,
        })
    }

    /// The node-port addresses the maps hold.
    pub fn node_port_addresses(&self) -> Result<Vec<std::net::Ipv4Addr>> {
        self.node_port_addrs
            .keys()
            .map(|k| Ok(std::net::Ipv4Addr::from(k?.to_ne_bytes())))
            .collect()
    }

    /// The IPv6 node-port addresses the maps hold.
    pub fn node_port_addresses6(&self) -> Result<Vec<std::net::Ipv6Addr>> {
        self.node_port_addrs6
            .keys()
            .map(|k| Ok(std::net::Ipv6Addr::from(ipv6_octets(k?))))
            .collect()
    }

    /// Packets and bytes per service id that has counted any, summed over CPUs.
    pub fn service_totals(&self) -> Result<Vec<(u32, ServiceStats)>> {
        let sum = |per_cpu: &PerCpuValues<ServiceStats>| {
            per_cpu
                .iter()
                .fold(ServiceStats::default(), |acc, s| ServiceStats {
                    packets: acc.packets + s.packets,
                    bytes: acc.bytes + s.bytes,
                })
        };
        let mut totals = std::collections::BTreeMap::<u32, ServiceStats>::new();
        for item in &self.service_stats {
            let (id, per_cpu) = item?;
            totals.insert(id, sum(&per_cpu));
        }
        // Array slots of live services only (those with a label): reading
        // every slot would cost a system call per possible id.
        for id in self.labels.keys() {
            let id = id?;
            if id >= self.service_stats_array.len() {
                continue;
            }
            let low = sum(&self.service_stats_array.get(&id, 0)?);
            if low.packets > 0 {
                let total = totals.entry(id).or_default();
                total.packets += low.packets;
                total.bytes += low.bytes;
            }
        }
        Ok(totals.into_iter().collect())
    }

    /// Zeroes the counters of service id `id` (its service is gone; the id
    /// may be reused later); an id never counted is fine.
    pub fn clear_service_stats(&mut self, id: u32) -> Result<()> {
        let _ = self.service_stats.remove(&id);
        if id < self.service_stats_array.len() {
            let zeros = vec![ServiceStats::default(); possible_cpus()?];
            self.service_stats_array
                .set(id, PerCpuValues::try_from(zeros)?, 0)?;
        }
        Ok(())
    }

    /// Sums the per-CPU count of `event`, both families.
    pub fn event_total(&self, event: lb_common::Event) -> Result<u64> {
        Family::ALL
            .iter()
            .map(|&family| self.event_count(family, event))
            .sum()
    }

    /// Sums the per-CPU count of `event` in `family`'s slots.
    pub fn event_count(&self, family: Family, event: lb_common::Event) -> Result<u64> {
        Ok(self.events.get(&event.slot(family), 0)?.iter().sum())
    }

    /// Adds `count` to `event` (on the first CPU's slot): entries carried
    /// over from an earlier layout count as created (IPv4's slots: earlier
    /// layouts carried IPv4 flows only).
    pub fn add_events(&mut self, event: lb_common::Event, count: u64) -> Result<()> {
        let slot = event.slot(Family::Ipv4);
        let mut values = self.events.get(&slot, 0)?.to_vec();
        values[0] += count;
        self.events.set(slot, PerCpuValues::try_from(values)?, 0)?;
        Ok(())
    }

    /// Sums the per-CPU verdict counters of both families, in `Verdict::ALL` order.
    pub fn verdict_totals(&self) -> Result<[u64; lb_common::VERDICT_COUNT as usize]> {
        let mut totals = [0; lb_common::VERDICT_COUNT as usize];
        for (verdict, total) in Verdict::ALL.iter().zip(totals.iter_mut()) {
            for family in Family::ALL {
                *total += self.verdict_count(family, *verdict)?;
            }
        }
        Ok(totals)
    }

    /// Sums the per-CPU counter of `verdict` in `family`'s slots.
    pub fn verdict_count(&self, family: Family, verdict: Verdict) -> Result<u64> {
        Ok(self.verdicts.get(&verdict.slot(family), 0)?.iter().sum())
    }
}

/// The Maglev slab array, mapped into this process a window at a time, so
/// a whole table is written with plain stores instead of one syscall per
/// slot. Mapping a BPF array maps all its pages at once, so the agent maps
/// only the pages it writes (at least [`SLAB_WINDOW`] bytes, kept for the
/// next write): its resident memory stays a window, not the whole slab,
/// which is kernel memory either way.
pub struct Slab {
    map: Array<MapData, SlabEntry>,
    /// The array's fd, open as long as `map` lives.
    fd: i32,
    slots: u32,
    len_bytes: usize,
    page: usize,
    window: Option<Mapping>,
}

/// Bytes of the slab the agent maps at least for a write (1 MiB).
pub const SLAB_WINDOW: usize = 1 << 20;

/// A shared mapping of `len` bytes of a `BPF_F_MMAPABLE` array (the slab,
/// the filter) from byte `start`.
struct Mapping {
    base: NonNull<u8>,
    start: usize,
    len: usize,
}

impl Mapping {
    fn new(fd: i32, (start, len): (usize, usize), name: &str) -> Result<Self> {
        // SAFETY: mapping part of a BPF_F_MMAPABLE array, at a page-aligned
        // offset inside it, shared with the kernel; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                libc::off_t::try_from(start)?,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "cannot mmap {len} bytes at {start} of the {name} map: {}",
                std::io::Error::last_os_error()
            );
        }
        let base = NonNull::new(ptr.cast::<u8>()).context("mmap returned null")?;
        Ok(Self { base, start, len })
    }

    fn holds(&self, (start, len): (usize, usize)) -> bool {
        self.start <= start && start + len <= self.start + self.len
    }

    /// Pointer to slot `slot` of the slab, which the mapping holds.
    fn slot_ptr(&self, slot: u32) -> *mut BackendId {
        let byte = slot as usize * size_of::<BackendId>();
        debug_assert!(byte >= self.start && byte < self.start + self.len);
        // SAFETY: in bounds of the mapping (checked by the callers' `holds`).
        unsafe { self.base.as_ptr().add(byte - self.start).cast() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `new`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The page-aligned byte range `(start, len)` to map for slots
/// `offset..offset + count` of a slab of `total_bytes`: the pages those
/// slots touch, extended to at least `min_bytes` (within the slab).
#[must_use]
pub fn window_for(
    offset: u32,
    count: usize,
    total_bytes: usize,
    page: usize,
    min_bytes: usize,
) -> (usize, usize) {
    let first = offset as usize * size_of::<BackendId>();
    let end = first + count * size_of::<BackendId>();
    let start = first / page * page;
    let end = end.max(start + min_bytes).div_ceil(page) * page;
    let total = total_bytes.div_ceil(page) * page;
    let end = end.min(total);
    (start, end - start)
}

/// The array map `map` (named `name`) and its descriptor, for `mmap`; the
/// descriptor lives as long as the returned array.
fn array_with_fd<T: aya::Pod>(map: Map, name: &str) -> Result<(i32, Array<MapData, T>)> {
    let fd = match &map {
        Map::Array(data) => data.fd().as_fd().as_raw_fd(),
        _ => bail!("{name} is not an array map"),
    };
    Ok((fd, Array::try_from(map)?))
}

impl Slab {
    /// Opens the slab array of `map` (nothing is mapped until a write or read).
    pub(super) fn new(map: Map) -> Result<Self> {
        let (fd, map) = array_with_fd::<SlabEntry>(map, MAP_MAGLEV)?;
        let slots = map.len() * SLOTS_PER_SLAB_ENTRY;
        let len_bytes = usize::try_from(slots)? * size_of::<BackendId>();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        Ok(Self {
            map,
            fd,
            slots,
            len_bytes,
            page,
            window: None,
        })
    }

    /// Number of slots in the slab.
    #[must_use]
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Bytes of the slab mapped into this process now.
    #[must_use]
    pub fn mapped_bytes(&self) -> usize {
        self.window.as_ref().map_or(0, |w| w.len)
    }

    fn check(&self, offset: u32, len: usize) -> Result<()> {
        if u64::from(offset) + len as u64 > u64::from(self.slots) {
            bail!(
                "a table of {len} slots at {offset} does not fit the {} slots of the Maglev slab",
                self.slots
            );
        }
        Ok(())
    }

    /// Writes `table` at `offset`. The slots must not be referenced by any service yet.
    pub fn write(&mut self, offset: u32, table: &[BackendId]) -> Result<()> {
        self.check(offset, table.len())?;
        if table.is_empty() {
            return Ok(());
        }
        let needed = window_for(offset, table.len(), self.len_bytes, self.page, 0);
        if !self.window.as_ref().is_some_and(|w| w.holds(needed)) {
            // The old window goes first, so at most one is mapped.
            self.window = None;
            let range = window_for(offset, table.len(), self.len_bytes, self.page, SLAB_WINDOW);
            self.window = Some(Mapping::new(self.fd, range, MAP_MAGLEV)?);
        }
        let window = self.window.as_ref().expect("mapped above");
        // SAFETY: the window holds these slots (bounds checked above); only
        // this process writes the slab (the kernel only reads).
        unsafe {
            std::ptr::copy_nonoverlapping(table.as_ptr(), window.slot_ptr(offset), table.len());
        }
        // Make the table visible before the service entry that points at it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if window.len > SLAB_WINDOW {
            // A bulk copy (a hand-over): do not keep it all mapped.
            self.window = None;
        }
        Ok(())
    }

    /// Reads `len` slots from `offset` (through a mapping of just those pages).
    pub fn read(&self, offset: u32, len: u32) -> Result<Vec<BackendId>> {
        if u64::from(offset) + u64::from(len) > u64::from(self.slots) {
            bail!("slots {offset}..+{len} are outside the Maglev slab");
        }
        let mut out = vec![0; len as usize];
        if len == 0 {
            return Ok(out);
        }
        let mapping = Mapping::new(
            self.fd,
            window_for(offset, len as usize, self.len_bytes, self.page, 0),
            MAP_MAGLEV,
        )?;
        // SAFETY: the mapping holds these slots; it lives until the copy is done.
        unsafe {
            std::ptr::copy_nonoverlapping(mapping.slot_ptr(offset), out.as_mut_ptr(), len as usize);
        }
        Ok(out)
    }

    /// Reads one slot through the map syscall (cross-checks the mapping in tests).
    pub fn get(&self, slot: u32) -> Result<BackendId> {
        let entry = self.map.get(&(slot / SLOTS_PER_SLAB_ENTRY), 0)?;
        Ok(entry[(slot % SLOTS_PER_SLAB_ENTRY) as usize])
    }
}

// SAFETY: the mappings are owned by the Slab; the window is only written
// through &mut self, and reads map their own pages.
unsafe impl Send for Slab {}

/// The pass-through filter's words, mapped into this process (256 KiB).
pub struct Filter {
    map: Array<MapData, u64>,
    mapping: Mapping,
}

impl Filter {
    /// Maps the filter array of `map` into this process.
    pub(super) fn new(map: Map) -> Result<Self> {
        let (fd, map) = array_with_fd::<u64>(map, MAP_FILTER)?;
        let len = usize::try_from(map.len())? * size_of::<u64>();
        let mapping = Mapping::new(fd, (0, len), MAP_FILTER)?;
        Ok(Self { map, mapping })
    }

    /// Number of words.
    #[must_use]
    pub fn len(&self) -> u32 {
        self.map.len()
    }

    /// Whether the filter has no words (never, for a loaded object).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn word_ptr(&self, index: u32) -> *mut u64 {
        // The mapping starts on a page, so every word is 8-byte aligned.
        #[allow(clippy::cast_ptr_alignment)]
        let words = self.mapping.base.as_ptr().cast::<u64>();
        // SAFETY: callers check `index < len`; the mapping holds every word.
        unsafe { words.add(index as usize) }
    }

    /// Writes word `index`.
    pub fn set(&mut self, index: u32, bits: u64) -> Result<()> {
        if index >= self.len() {
            bail!("filter word {index} is outside the {} words", self.len());
        }
        // SAFETY: in bounds (checked above) and 8-byte aligned (the mapping is
        // page aligned), so the kernel's 8-byte loads see the old or the new word.
        unsafe { std::ptr::write_volatile(self.word_ptr(index), bits) };
        Ok(())
    }

    /// Every word, in order.
    #[must_use]
    pub fn words(&self) -> Vec<u64> {
        (0..self.len())
            // SAFETY: in bounds of the live, aligned mapping.
            .map(|i| unsafe { std::ptr::read_volatile(self.word_ptr(i)) })
            .collect()
    }

    /// Reads word `index` through the map syscall (cross-checks the mapping in tests).
    pub fn get(&self, index: u32) -> Result<u64> {
        Ok(self.map.get(&index, 0)?)
    }
}

// SAFETY: the mapping is owned by the Filter and only written through &mut self.
unsafe impl Send for Filter {}

#[cfg(test)]
mod tests {
    use super::window_for;

    #[test]
    fn windows_are_whole_pages_around_the_slots_within_the_slab() {
        let total = 64 << 20;
        // Slot 1,500 is byte 6,000: page 1.
        assert_eq!(window_for(1_500, 10, total, 4096, 0), (4096, 4096));
        // Across a page boundary: both pages.
        assert_eq!(window_for(1_020, 10, total, 4096, 0), (0, 8192));
        // Extended to the minimum window.
        assert_eq!(window_for(1_500, 10, total, 4096, 1 << 20), (4096, 1 << 20));
        // Larger than the minimum: what the slots need.
        assert_eq!(
            window_for(0, 131_071, total, 4096, 1 << 16),
            (0, 131_072 * 4)
        );
        // Never past the end of the slab (rounded up to its last page).
        assert_eq!(
            window_for(4_000, 10, 4 * 4_010, 4096, 1 << 20),
            (12_288, 4096)
        );
        // The whole slab.
        assert_eq!(window_for(0, 1 << 24, total, 4096, 0), (0, total));
    }
}
