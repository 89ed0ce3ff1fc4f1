//! The maps shared by both programs. Layouts are documented in `lb_common::maps`.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use lb_common::{
    AffinityEntry, AffinityKey, Backend, BackendKey, CtEntry, FlowKey, FragKey, FragPorts,
    InternalTable, NodeConfig, RevNatEntry, ServiceEntry, ServiceKey, ServiceLabel, ServiceStats,
    SlabEntry, SnatExhaustion, SockAffinityKey, SockRevEntry, SockRevKey, SourceRangeKey,
    AFFINITY_MAX_ENTRIES, CONNTRACK_MAX_ENTRIES, EVENT_ARRAY_LEN, FILTER_WORDS,
    FRAGMENTS_MAX_ENTRIES, MAGLEV_SLAB_SLOTS, MAX_BACKENDS, MAX_SERVICES,
    NODE_PORT_ADDRS_MAX_ENTRIES, REVNAT_MAX_ENTRIES, SLOTS_PER_SLAB_ENTRY,
    SNAT_EXHAUSTED_MAX_ENTRIES, SOCK_REVERSE_MAX_ENTRIES, SOURCE_RANGES_MAX_ENTRIES,
    VERDICT_ARRAY_LEN,
};

/// Frontends. No prealloc: an updated value is freed only after an RCU grace
/// period, so a reader never sees an entry being overwritten in place.
#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Backends by id (0 unused).
#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The Maglev slab: every frontend's lookup table, slot -> backend id.
/// Memory-mapped by the agent, which writes tables into free slots only.
#[map(name = "MAGLEV")]
pub static MAGLEV: Array<SlabEntry> =
    Array::with_max_entries(MAGLEV_SLAB_SLOTS / SLOTS_PER_SLAB_ENTRY, BPF_F_MMAPABLE);

/// Forward connection tracking: client flow -> chosen backend.
#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, CtEntry> =
    LruHashMap::with_max_entries(CONNTRACK_MAX_ENTRIES, 0);

/// Reverse NAT: reply flow -> service and client addresses to restore.
#[map(name = "REVNAT")]
pub static REVNAT: LruHashMap<FlowKey, RevNatEntry> =
    LruHashMap::with_max_entries(REVNAT_MAX_ENTRIES, 0);

/// Session affinity: (frontend, client address) -> backend, last use.
#[map(name = "AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityEntry> =
    LruHashMap::with_max_entries(AFFINITY_MAX_ENTRIES, 0);

/// Per-CPU packets and bytes per frontend, by low service id; the agent
/// sets the length at load (`lb_common::service_stats_array_len`).
#[map(name = "SVC_STATS_ARRAY")]
pub static SERVICE_STATS_ARRAY: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(MAX_SERVICES + 1, 0);

/// Per-CPU packets and bytes per frontend, by service id beyond the array.
#[map(name = "SERVICE_STATS")]
pub static SERVICE_STATS: PerCpuHashMap<u32, ServiceStats> =
    PerCpuHashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Node configuration, index 0.
#[map(name = "CONFIG")]
pub static CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);

/// Per-CPU packet counts by family and verdict (`Verdict::slot`).
#[map(name = "VERDICTS")]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VERDICT_ARRAY_LEN, 0);

/// Service labels for `lb-agent status`; never read by the programs.
#[map(name = "SERVICE_LABELS")]
pub static SERVICE_LABELS: HashMap<u32, ServiceLabel> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Per-CPU event counts, by family and [`lb_common::Event`] (`Event::slot`).
#[map(name = "EVENTS")]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_ARRAY_LEN, 0);

/// The pass-through filter's words, memory-mapped by the agent.
#[map(name = "FILTER")]
pub static FILTER: Array<u64> = Array::with_max_entries(FILTER_WORDS, BPF_F_MMAPABLE);

/// Failed SNAT port claims per backend (atomic counts, all CPUs).
#[map(name = "SNAT_EXHAUSTED")]
pub static SNAT_EXHAUSTED: HashMap<BackendKey, SnatExhaustion> =
    HashMap::with_max_entries(SNAT_EXHAUSTED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-CPU scratch of a SNAT port claim's probe loop (not pinned).
#[map(name = "PROBES")]
pub static PROBES: PerCpuArray<crate::snat::Probes> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU budget of refusals (ICMP port unreachable for Services without
/// endpoints) in the current second (not pinned; see [`crate::reject`]).
#[map(name = "REJECTS")]
pub static REJECTS: PerCpuArray<crate::reject::Budget> = PerCpuArray::with_max_entries(1, 0);

/// Datagrams whose first fragment was translated: (source, destination, IP
/// id, protocol) -> ports, for their later fragments (not pinned; see
/// [`crate::frag`]).
#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragKey, FragPorts> =
    LruHashMap::with_max_entries(FRAGMENTS_MAX_ENTRIES, 0);

/// The client ranges of frontends flagged `SERVICE_F_SOURCE_RANGES`:
/// (service id, client prefix) -> 1 (see [`crate::ranges`]).
#[map(name = "SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u32> =
    LpmTrie::with_max_entries(SOURCE_RANGES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Each Service port's `Cluster` table, by its id, which pods use through
/// frontends flagged `SERVICE_F_INTERNAL_TABLE` (see [`crate::view`]).
#[map(name = "INTERNAL_TABLES")]
pub static INTERNAL_TABLES: Array<InternalTable> = Array::with_max_entries(MAX_SERVICES + 1, 0);

/// The node-port addresses: where a node port (a frontend of address 0) is
/// served (see [`crate::frontend`]).
#[map(name = "NODE_PORT_ADDRS")]
pub static NODE_PORT_ADDRS: HashMap<u32, u32> =
    HashMap::with_max_entries(NODE_PORT_ADDRS_MAX_ENTRIES, 0);

/// Where sockets balanced at `connect` (or per send) were pointed: (socket
/// cookie, backend) -> Service address, for `recvmsg` and `getpeername`
/// (see [`crate::sock`]).
#[map(name = "SOCK_REVERSE")]
pub static SOCK_REVERSE: LruHashMap<SockRevKey, SockRevEntry> =
    LruHashMap::with_max_entries(SOCK_REVERSE_MAX_ENTRIES, 0);

/// Socket-level session affinity: a network namespace's backend per Service
/// port (see `lb_common::MAP_SOCK_AFFINITY`).
#[map(name = "SOCK_AFFINITY")]
pub static SOCK_AFFINITY: LruHashMap<SockAffinityKey, AffinityEntry> =
    LruHashMap::with_max_entries(AFFINITY_MAX_ENTRIES, 0);
