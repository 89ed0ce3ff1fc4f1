//! IPv6's maps. Layouts and names are documented in `lb_common::maps6`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    maps6::{
        AffinityKey6, Backend6, BackendKey6, CtEntry6, FlowKey6, FragKey6, RevNatEntry6,
        ServiceKey6, SockRevEntry6, SockRevKey6, SourceRangeKey6, AFFINITY6_MAX_ENTRIES,
        CONNTRACK6_MAX_ENTRIES, FRAGMENTS6_MAX_ENTRIES, REVNAT6_MAX_ENTRIES,
        SOCK_REVERSE6_MAX_ENTRIES, TC6_PROGRAMS, XDP6_PROGRAMS,
    },
    AffinityEntry, FragPorts, ServiceEntry, SnatExhaustion, MAX_BACKENDS, MAX_SERVICES,
    NODE_PORT_ADDRS_MAX_ENTRIES, SNAT_EXHAUSTED_MAX_ENTRIES, SOURCE_RANGES_MAX_ENTRIES,
};

/// `lb_xdp6`, which `lb_xdp` tail-calls for IPv6 frames, and its
/// new-flow stage (pinned).
#[map(name = "XDP6_PROGS")]
// Two programs: the length fits.
#[allow(clippy::cast_possible_truncation)]
pub static XDP6_PROGS: ProgramArray = ProgramArray::with_max_entries(XDP6_PROGRAMS.len() as u32, 0);

/// The IPv6 TC programs, which the TC entry points tail-call, and their
/// new-flow stage (pinned).
#[map(name = "TC6_PROGS")]
// Four programs: the length fits.
#[allow(clippy::cast_possible_truncation)]
pub static TC6_PROGS: ProgramArray = ProgramArray::with_max_entries(TC6_PROGRAMS.len() as u32, 0);

/// IPv6 frontends, the twin of `SERVICES` (no prealloc, for the same reason).
#[map(name = "SERVICES6")]
pub static SERVICES6: HashMap<ServiceKey6, ServiceEntry> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// IPv6 backends by id, in the id space `BACKENDS` shares (0 unused).
#[map(name = "BACKENDS6")]
pub static BACKENDS6: Array<Backend6> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The client ranges of IPv6 frontends flagged `SERVICE_F_SOURCE_RANGES`.
#[map(name = "SOURCE_RANGES6")]
pub static SOURCE_RANGES6: LpmTrie<SourceRangeKey6, u32> =
    LpmTrie::with_max_entries(SOURCE_RANGES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// The IPv6 node-port addresses: where an IPv6 node port (a frontend of
/// address `::`) is served.
#[map(name = "NODEPORT_ADDRS6")]
pub static NODEPORT_ADDRS6: HashMap<[u32; 4], u32> =
    HashMap::with_max_entries(NODE_PORT_ADDRS_MAX_ENTRIES, 0);

/// IPv6 forward connection tracking: client flow -> chosen backend.
#[map(name = "CONNTRACK6")]
pub static CONNTRACK6: LruHashMap<FlowKey6, CtEntry6> =
    LruHashMap::with_max_entries(CONNTRACK6_MAX_ENTRIES, 0);

/// IPv6 reverse NAT: reply flow -> service and client addresses to restore.
#[map(name = "REVNAT6")]
pub static REVNAT6: LruHashMap<FlowKey6, RevNatEntry6> =
    LruHashMap::with_max_entries(REVNAT6_MAX_ENTRIES, 0);

/// IPv6 socket-level balancing: (socket, backend) -> the Service address
/// it asked for (see `lb_common::maps6::MAP_SOCK_REVERSE6`).
#[map(name = "SOCK_REVERSE6")]
pub static SOCK_REVERSE6: LruHashMap<SockRevKey6, SockRevEntry6> =
    LruHashMap::with_max_entries(SOCK_REVERSE6_MAX_ENTRIES, 0);

/// Per-CPU scratch of one IPv6 packet's keys and entries (not pinned; see
/// [`crate::lb6::Scratch6`]).
#[map(name = "SCRATCH6")]
pub static SCRATCH6: PerCpuArray<crate::lb6::Scratch6> = PerCpuArray::with_max_entries(1, 0);

/// IPv6 SNAT pool exhaustion per backend, the twin of `SNAT_EXHAUSTED`
/// (pinned, for the agent).
#[map(name = "SNAT_EXHAUSTED6")]
pub static SNAT_EXHAUSTED6: HashMap<BackendKey6, SnatExhaustion> =
    HashMap::with_max_entries(SNAT_EXHAUSTED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-CPU state of one IPv6 SNAT claim (not pinned; see
/// [`crate::snat6::Probes6`]).
#[map(name = "PROBES6")]
pub static PROBES6: PerCpuArray<crate::snat6::Probes6> = PerCpuArray::with_max_entries(1, 0);

/// IPv6 datagrams whose first fragment was translated (not pinned; see
/// [`crate::frag6`]).
#[map(name = "FRAGMENTS6")]
pub static FRAGMENTS6: LruHashMap<FragKey6, FragPorts> =
    LruHashMap::with_max_entries(FRAGMENTS6_MAX_ENTRIES, 0);

/// IPv6 session affinity: (service id, client) -> its backend (pinned).
#[map(name = "AFFINITY6")]
pub static AFFINITY6: LruHashMap<AffinityKey6, AffinityEntry> =
    LruHashMap::with_max_entries(AFFINITY6_MAX_ENTRIES, 0);
