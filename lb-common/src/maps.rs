//! Map names, sizes, flags, and the key and value layouts of every map.

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Name of the services map: [`ServiceKey`] -> [`ServiceEntry`] (hash, no prealloc).
pub const MAP_SERVICES: &str = "SERVICES";
/// Name of the backends map: [`BackendId`] index -> [`Backend`] (array).
pub const MAP_BACKENDS: &str = "BACKENDS";
/// Name of the Maglev slab: entry -> [`SlabEntry`], two slots per entry (array).
pub const MAP_MAGLEV: &str = "MAGLEV";
/// Name of the forward connection-tracking map: [`FlowKey`] -> [`CtEntry`] (LRU hash).
pub const MAP_CONNTRACK: &str = "CONNTRACK";
/// Name of the reverse-NAT map: reply [`FlowKey`] -> [`RevNatEntry`] (LRU hash).
pub const MAP_REVNAT: &str = "REVNAT";
/// Name of the node configuration map: index 0 -> [`NodeConfig`] (array).
pub const MAP_CONFIG: &str = "CONFIG";
/// Name of the verdict counters: [`Verdict`] index -> packets (per-CPU array).
pub const MAP_VERDICTS: &str = "VERDICTS";
/// Name of the session-affinity map: [`AffinityKey`] -> [`AffinityEntry`] (LRU hash).
pub const MAP_AFFINITY: &str = "AFFINITY";
/// Capacity of the session-affinity map (client, service pairs).
pub const AFFINITY_MAX_ENTRIES: u32 = 1 << 16;

/// Key of the session-affinity map: a client of a frontend.
///
/// Layout (8 bytes): `service_id` u32 | `client_addr` be32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// [`ServiceEntry::id`] of the frontend.
    pub service_id: u32,
    /// Client IPv4 address, network byte order.
    pub client_addr: u32,
}

/// Value of the session-affinity map: the client's backend and when it was last used.
///
/// Layout (16 bytes): `backend_id` u32 | pad u32 | `last_seen_ns` u64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityEntry {
    /// The backend the client sticks to.
    pub backend_id: BackendId,
    /// Always zero.
    pub pad: u32,
    /// Monotonic time (`bpf_ktime_get_coarse_ns`, tick resolution) of the
    /// client's last packet to the frontend.
    pub last_seen_ns: u64,
}

/// Name of the per-service counters of service ids at or above the length of
/// [`MAP_SERVICE_STATS_ARRAY`]: [`ServiceEntry::id`] -> [`ServiceStats`]
/// (per-CPU hash, created on a frontend's first packet).
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";

/// Name of the per-service counters of low service ids: index
/// [`ServiceEntry::id`] -> [`ServiceStats`] (per-CPU array, no lookup by hash;
/// its length is set at load by [`service_stats_array_len`]).
pub const MAP_SERVICE_STATS_ARRAY: &str = "SVC_STATS_ARRAY";

/// Kernel memory the per-CPU array of service counters may take, all CPUs together.
pub const SERVICE_STATS_ARRAY_BUDGET: u64 = 16 << 20;

/// Length of [`MAP_SERVICE_STATS_ARRAY`] on a machine of `possible_cpus`:
/// every service id while the budget allows, fewer on machines of many CPUs.
#[must_use]
pub fn service_stats_array_len(possible_cpus: u32) -> u32 {
    let per_id = size_of::<ServiceStats>() as u64 * u64::from(possible_cpus.max(1));
    let fits = SERVICE_STATS_ARRAY_BUDGET / per_id;
    u32::try_from(fits.min(u64::from(MAX_SERVICES) + 1)).unwrap_or(MAX_SERVICES + 1)
}

/// Value of the per-service counters: packets and bytes sent to a frontend.
///
/// Layout (16 bytes): `packets` u64 | `bytes` u64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceStats {
    /// Packets translated to a backend.
    pub packets: u64,
    /// Their bytes, Ethernet header included.
    pub bytes: u64,
}

/// Name of the service labels: [`ServiceEntry::id`] -> [`ServiceLabel`] (hash,
/// written and read by userspace only, so `lb-agent status` works from the pins).
pub const MAP_SERVICE_LABELS: &str = "SERVICE_LABELS";

/// Capacity of the services map (frontends: address, port, protocol).
pub const MAX_SERVICES: u32 = 65_536;
/// Capacity of the backends array; id 0 is never used so a zero slot means "none".
pub const MAX_BACKENDS: u32 = 262_144;
/// Default number of slots in the Maglev slab (4 bytes each: 64 MiB, room
/// for 10,000 Services of 10 endpoints at 1,021 slots each), a
/// multiple of [`SLOTS_PER_SLAB_ENTRY`]. The
/// agent can resize it at load time; it is memory-mapped (`BPF_F_MMAPABLE`)
/// so the agent writes whole tables without a syscall per slot.
pub const MAGLEV_SLAB_SLOTS: u32 = 1 << 24;
/// Capacity of the connection-tracking map (forward direction).
pub const CONNTRACK_MAX_ENTRIES: u32 = 1 << 18;
/// Capacity of the reverse-NAT map (one entry per tracked flow).
pub const REVNAT_MAX_ENTRIES: u32 = CONNTRACK_MAX_ENTRIES;

/// First source port handed out for SNAT to the node address. The range sits
/// above Linux's default ephemeral range (32768-60999) so that translated flows
/// never collide with the node's own connections.
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Last source port handed out for SNAT to the node address.
pub const SNAT_PORT_MAX: u16 = 65_535;
/// How many ports a new flow probes before it gives up and is dropped.
pub const SNAT_PORT_ATTEMPTS: u32 = 16;

/// Index of an entry in the backends array. 0 means "no backend".
pub type BackendId = u32;

/// Maglev slots per slab entry. The kernel rounds array elements up to 8
/// bytes, so each entry packs two 4-byte slots: slot `s` is half `s % 2` of
/// entry `s / 2`, and the memory-mapped slab is a plain array of slots.
pub const SLOTS_PER_SLAB_ENTRY: u32 = 2;

/// Value of the Maglev slab: two consecutive slots.
pub type SlabEntry = [BackendId; SLOTS_PER_SLAB_ENTRY as usize];

/// Key of the services map: one frontend of a Service (address, port, protocol).
///
/// Layout (8 bytes): `addr` be32 | `port` be16 | `proto` u8 | pad u8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Virtual IPv4 address, network byte order.
    pub addr: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Always zero.
    pub pad: u8,
}

/// Value of the services map: where the frontend's Maglev table lives.
///
/// Layout (24 bytes): `id` u32 | `backend_count` u32 | `table_offset` u32 |
/// `table_size` u32 | `affinity_timeout` u32 | pad u32.
/// The agent writes a new table into free slab slots first and then swaps this
/// entry in one update, so a packet sees either the old table or the new one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceEntry {
    /// Agent-assigned id of this frontend (stable while it exists).
    pub id: u32,
    /// Number of distinct backends in the table; 0 means "no endpoints".
    pub backend_count: u32,
    /// First slot of the table in the Maglev slab.
    pub table_offset: u32,
    /// Number of slots of the table (a prime); 0 when `backend_count` is 0.
    pub table_size: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 without affinity.
    pub affinity_timeout: u32,
    /// Always zero.
    pub pad: u32,
}

/// Backend flag: the entry is in use.
pub const BACKEND_F_ACTIVE: u8 = 1;
/// Backend flag: the endpoint runs on this node (no SNAT, client IP kept).
pub const BACKEND_F_LOCAL: u8 = 2;
/// Backend flag: the endpoint takes new connections (it is in the Maglev
/// table); without it only established flows and no affinity may use it.
pub const BACKEND_F_SELECTED: u8 = 4;

/// Value of the backends array: one endpoint of one frontend.
///
/// Layout (12 bytes): `addr` be32 | `port` be16 | `flags` u8 | pad u8 | `service_id` u32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Endpoint IPv4 address, network byte order.
    pub addr: u32,
    /// Endpoint (target) port, network byte order.
    pub port: u16,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    /// Always zero.
    pub pad: u8,
    /// Id of the frontend this backend serves ([`ServiceEntry::id`]).
    pub service_id: u32,
}

/// Key of the conntrack and reverse-NAT maps: a flow's 5-tuple as seen on the wire.
///
/// Layout (16 bytes): `src_addr` be32 | `dst_addr` be32 | `src_port` be16 |
/// `dst_port` be16 | `proto` u8 | pad [u8; 3].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source IPv4 address, network byte order.
    pub src_addr: u32,
    /// Destination IPv4 address, network byte order.
    pub dst_addr: u32,
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Conntrack flag: the flow's source was rewritten to the node address.
pub const CT_F_SNAT: u32 = 1;
/// Conntrack flag: the client sent FIN first.
pub const CT_F_FIN_CLIENT: u32 = 2;
/// Conntrack flag: the backend sent FIN first (it holds `TIME_WAIT`).
pub const CT_F_FIN_BACKEND: u32 = 4;
/// Conntrack flag: either side sent RST.
pub const CT_F_RST: u32 = 8;
/// Conntrack flag: the flow's frontend had session affinity when the flow
/// began, so its packets refresh the client's affinity entry.
pub const CT_F_AFFINITY: u32 = 16;
/// Conntrack flags that mark a closing flow.
pub const CT_F_CLOSING: u32 = CT_F_FIN_CLIENT | CT_F_FIN_BACKEND | CT_F_RST;
/// Seconds a closed flow keeps its SNAT port after an RST (stragglers).
pub const SNAT_HOLD_AFTER_RST_S: u32 = 1;
/// Seconds after the client's FIN: the backend closes passively, no `TIME_WAIT` there.
pub const SNAT_HOLD_AFTER_CLIENT_FIN_S: u32 = 2;
/// Seconds after the backend's FIN: it holds `TIME_WAIT` for this tuple (Linux: 60 s).
pub const SNAT_HOLD_AFTER_BACKEND_FIN_S: u32 = 60;

/// Value of the conntrack map: the backend a client flow (keyed client -> service) is pinned to.
///
/// Layout (32 bytes): `backend_id` u32 | `backend_addr` be32 | `backend_port` be16 |
/// `snat_port` be16 | `snat_addr` be32 | `flags` u32 | `closing_s` u32 | `created_ns` u64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// Backend chosen for the flow.
    pub backend_id: BackendId,
    /// Copy of the backend's address, to detect a reused id.
    pub backend_addr: u32,
    /// Copy of the backend's port, network byte order.
    pub backend_port: u16,
    /// Source port after SNAT (network byte order), 0 without SNAT.
    pub snat_port: u16,
    /// Source address after SNAT (network byte order), 0 without SNAT.
    pub snat_addr: u32,
    /// `CT_F_*` bits.
    pub flags: u32,
    /// Monotonic seconds (at least 1) when the flow was first seen closing
    /// (FIN or RST); 0 while open. Its SNAT port is reused after a hold.
    pub closing_s: u32,
    /// Monotonic time (`bpf_ktime_get_coarse_ns`, tick resolution) when the flow was created.
    pub created_ns: u64,
}

/// Value of the reverse-NAT map: how to restore a reply (keyed backend -> client or node).
///
/// Layout (12 bytes): `svc_addr` be32 | `client_addr` be32 | `svc_port` be16 | `client_port` be16.
/// The reply's source becomes the service; its destination becomes the client
/// (a no-op unless the forward direction was translated to the node address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatEntry {
    /// Service address the client talked to, network byte order.
    pub svc_addr: u32,
    /// Client address, network byte order.
    pub client_addr: u32,
    /// Service port, network byte order.
    pub svc_port: u16,
    /// Client port, network byte order.
    pub client_port: u16,
}

/// Value of the configuration array (index 0): facts about this node.
///
/// Layout (8 bytes): `node_addr` be32 | `flags` u32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// Node address used as SNAT source for remote backends, network byte order.
    pub node_addr: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// Bytes of a [`ServiceLabel`].
pub const SERVICE_LABEL_LEN: usize = 160;

/// Value of the service labels map: "namespace/name:port-name", NUL-padded UTF-8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceLabel {
    /// The label bytes, NUL-padded.
    pub bytes: [u8; SERVICE_LABEL_LEN],
}

impl Default for ServiceLabel {
    fn default() -> Self {
        Self {
            bytes: [0; SERVICE_LABEL_LEN],
        }
    }
}

/// Outcome of one packet, the index into the verdict counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A packet to a service was translated to a backend.
    Translated = 0,
    /// A reply was translated back to the service address.
    Reversed = 1,
    /// A packet that is not ours was passed untouched.
    Passed = 2,
    /// A packet to a service was dropped: the service has no endpoints.
    Dropped = 3,
    /// A packet to a service could not be translated (no SNAT port, a map or
    /// helper failure, an inconsistent table) and was dropped.
    Error = 4,
}

/// Number of [`Verdict`] values (size of the verdict counters).
pub const VERDICT_COUNT: u32 = 5;

impl Verdict {
    /// Every verdict, in index order.
    pub const ALL: [Verdict; VERDICT_COUNT as usize] = [
        Verdict::Translated,
        Verdict::Reversed,
        Verdict::Passed,
        Verdict::Dropped,
        Verdict::Error,
    ];

    /// Lower-case name used in status output and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Translated => "translated",
            Verdict::Reversed => "reversed",
            Verdict::Passed => "passed",
            Verdict::Dropped => "dropped",
            Verdict::Error => "error",
        }
    }
}

/// Name of the pass-through filter: word index -> 64 bits (array, mmapped).
///
/// Layout: [`FILTER_WORDS`] little-endian u64 words; bit `b` is bit `b % 64`
/// of word `b / 64`. A frontend sets bit [`crate::hash::filter_bit`]
/// (`FILTER_SEED_FRONTEND`, address, port, protocol) and every backend of a
/// frontend sets the bit of its own address and port (`FILTER_SEED_BACKEND`).
/// A packet whose destination bit and source bit are both clear is neither
/// to a frontend nor a reply of a backend, so the programs pass it without
/// a hash lookup. A set bit may be shared (a false positive costs only the
/// lookups); a bit is never clear while its frontend or backend is in the maps.
pub const MAP_FILTER: &str = "FILTER";
/// Log2 of [`FILTER_BITS`].
pub const FILTER_BITS_LOG2: u32 = 21;
/// Bits of the pass-through filter (256 KiB).
pub const FILTER_BITS: u32 = 1 << FILTER_BITS_LOG2;
/// Words of the pass-through filter.
pub const FILTER_WORDS: u32 = FILTER_BITS / 64;

/// Name of the event counters: [`Event`] index -> count (per-CPU array).
pub const MAP_EVENTS: &str = "EVENTS";

/// A data-path event worth counting, the index into the event counters.
/// With the live entry counts they give the LRU evictions, which the kernel
/// does not report: evictions = created - live.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A conntrack entry was created for a flow that had none.
    ConntrackCreated = 0,
    /// A reverse-NAT entry was created for a flow that had none.
    RevNatCreated = 1,
}

/// Number of [`Event`] values (size of the event counters).
pub const EVENT_COUNT: u32 = 2;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), made only of integers, with explicit padding
    // fields, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceEntry {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::RevNatEntry {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::ServiceLabel {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityEntry {}
    unsafe impl aya::Pod for super::ServiceStats {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceEntry>(), 24);
        assert_eq!(size_of::<AffinityKey>(), 8);
        assert_eq!(size_of::<AffinityEntry>(), 16);
        assert_eq!(size_of::<Backend>(), 12);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<CtEntry>(), 32);
        assert_eq!(size_of::<RevNatEntry>(), 12);
        assert_eq!(size_of::<NodeConfig>(), 8);
    }

    #[test]
    fn stats_array_holds_every_service_id_until_the_budget_binds() {
        let every_id = MAX_SERVICES + 1;
        assert_eq!(service_stats_array_len(0), every_id);
        assert_eq!(service_stats_array_len(2), every_id);
        assert_eq!(service_stats_array_len(8), every_id);
        assert_eq!(service_stats_array_len(16), MAX_SERVICES);
        // 16 MiB / (16 bytes x 64 CPUs): the ids above count in the hash.
        assert_eq!(service_stats_array_len(64), 16_384);
        assert_eq!(service_stats_array_len(1024), 1024);
    }
}
