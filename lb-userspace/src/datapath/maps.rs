//! Typed handles on the data path's maps, taken from a freshly loaded object
//! or reopened from their pins (for `lb-agent status`).

use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
    ptr::NonNull,
};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use lb_common::{
    Backend, BackendId, NodeConfig, ServiceEntry, ServiceKey, ServiceLabel, ServiceStats,
    SlabEntry, MAP_BACKENDS, MAP_CONFIG, MAP_MAGLEV, MAP_SERVICES, MAP_SERVICE_LABELS,
    MAP_SERVICE_STATS, MAP_VERDICTS, SLOTS_PER_SLAB_ENTRY,
};

/// Every map the agent writes or reads, by name.
pub const PINNED_MAPS: [&str; 11] = [
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
    lb_common::MAP_EVENTS,
];

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
    /// Per-CPU packets and bytes per frontend.
    pub service_stats: PerCpuHashMap<MapData, u32, ServiceStats>,
    /// Per-CPU event counters.
    pub events: PerCpuArray<MapData, u64>,
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
            events: PerCpuArray::try_from(take(lb_common::MAP_EVENTS)?)?,
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
            events: PerCpuArray::try_from(Map::PerCpuArray(open(lb_common::MAP_EVENTS)?))?,
        })
    }

    /// Packets and bytes per service id, summed over CPUs.
    pub fn service_totals(&self) -> Result<Vec<(u32, ServiceStats)>> {
        let mut out = Vec::new();
        for item in &self.service_stats {
            let (id, per_cpu) = item?;
            let total = per_cpu
                .iter()
                .fold(ServiceStats::default(), |acc, s| ServiceStats {
                    packets: acc.packets + s.packets,
                    bytes: acc.bytes + s.bytes,
                });
            out.push((id, total));
        }
        Ok(out)
    }

    /// Sums the per-CPU count of `event`.
    pub fn event_total(&self, event: lb_common::Event) -> Result<u64> {
        Ok(self.events.get(&(event as u32), 0)?.iter().sum())
    }

    /// Adds `count` to `event` (on the first CPU's slot): entries carried
    /// over from an earlier layout count as created.
    pub fn add_events(&mut self, event: lb_common::Event, count: u64) -> Result<()> {
        let mut values = self.events.get(&(event as u32), 0)?.to_vec();
        values[0] += count;
        self.events
            .set(event as u32, PerCpuValues::try_from(values)?, 0)?;
        Ok(())
    }

    /// Sums the per-CPU verdict counters, in `Verdict::ALL` order.
    pub fn verdict_totals(&self) -> Result<[u64; lb_common::VERDICT_COUNT as usize]> {
        let mut totals = [0; lb_common::VERDICT_COUNT as usize];
        for (index, total) in (0u32..).zip(totals.iter_mut()) {
            *total = self.verdicts.get(&index, 0)?.iter().sum();
        }
        Ok(totals)
    }
}

/// The Maglev slab array, mapped into this process so a whole table is written
/// with plain stores instead of one syscall per slot.
pub struct Slab {
    map: Array<MapData, SlabEntry>,
    base: NonNull<BackendId>,
    slots: u32,
    len_bytes: usize,
}

impl Slab {
    /// Maps the slab array of `map` into this process.
    pub(super) fn new(map: Map) -> Result<Self> {
        let fd = match &map {
            Map::Array(data) => data.fd().as_fd().as_raw_fd(),
            _ => bail!("{MAP_MAGLEV} is not an array map"),
        };
        let map: Array<MapData, SlabEntry> = Array::try_from(map)?;
        let slots = map.len() * SLOTS_PER_SLAB_ENTRY;
        let len_bytes = usize::try_from(slots)? * size_of::<BackendId>();
        // SAFETY: mapping a BPF_F_MMAPABLE array of `len_bytes` bytes, shared
        // with the kernel; the fd stays open as long as `map` lives in `self`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "cannot mmap the {MAP_MAGLEV} map: {}",
                std::io::Error::last_os_error()
            );
        }
        let base = NonNull::new(ptr.cast::<BackendId>()).context("mmap returned null")?;
        Ok(Self {
            map,
            base,
            slots,
            len_bytes,
        })
    }

    /// Number of slots in the slab.
    #[must_use]
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Writes `table` at `offset`. The slots must not be referenced by any service yet.
    pub fn write(&mut self, offset: u32, table: &[BackendId]) -> Result<()> {
        let end = u64::from(offset) + table.len() as u64;
        if end > u64::from(self.slots) {
            bail!(
                "a table of {} slots at {offset} does not fit the {} slots of the Maglev slab",
                table.len(),
                self.slots
            );
        }
        // SAFETY: bounds checked above; the mapping is live and only this
        // process writes it (the kernel only reads).
        unsafe {
            std::ptr::copy_nonoverlapping(
                table.as_ptr(),
                self.base.as_ptr().add(offset as usize),
                table.len(),
            );
        }
        // Make the table visible before the service entry that points at it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Reads `len` slots from `offset` (through the mapping).
    pub fn read(&self, offset: u32, len: u32) -> Result<Vec<BackendId>> {
        if u64::from(offset) + u64::from(len) > u64::from(self.slots) {
            bail!("slots {offset}..+{len} are outside the Maglev slab");
        }
        let mut out = vec![0; len as usize];
        // SAFETY: bounds checked above; the mapping is live.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(offset as usize),
                out.as_mut_ptr(),
                len as usize,
            );
        }
        Ok(out)
    }

    /// Reads one slot through the map syscall (cross-checks the mapping in tests).
    pub fn get(&self, slot: u32) -> Result<BackendId> {
        let entry = self.map.get(&(slot / SLOTS_PER_SLAB_ENTRY), 0)?;
        Ok(entry[(slot % SLOTS_PER_SLAB_ENTRY) as usize])
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `new`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len_bytes);
        }
    }
}

// SAFETY: the mapping is owned by the Slab and only accessed through &mut self.
unsafe impl Send for Slab {}
