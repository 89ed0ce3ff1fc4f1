//! Map names, sizes, flags, and the key and value layouts of every map.

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
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

/// Key of the session-affinity map: a client of a Service port (all its
/// frontends together, as kube-proxy's affinity spans them).
///
/// Layout (8 bytes): `service_id` u32 | `client_addr` be32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// [`ServiceEntry::id`] of the Service port.
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

/// Length of [`MAP_SERVICE_STATS_ARRAY`] on a machine of `possible_cpus`
/// with `service_slots` Service port ids: every id while the budget allows,
/// fewer on machines of many CPUs.
#[must_use]
pub fn service_stats_array_len(possible_cpus: u32, service_slots: u32) -> u32 {
    let per_id = size_of::<ServiceStats>() as u64 * u64::from(possible_cpus.max(1));
    let fits = SERVICE_STATS_ARRAY_BUDGET / per_id;
    let every_id = u64::from(service_slots) + 1;
    u32::try_from(fits.min(every_id)).unwrap_or(u32::MAX)
}

/// Value of the per-service counters: packets and bytes sent to a Service
/// port (all its frontends together).
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
/// written and read by userspace only, so `lb-agent status` works from the pins
/// and a restarted agent knows which Service port each id is).
pub const MAP_SERVICE_LABELS: &str = "SERVICE_LABELS";

/// Default capacity of the services map (frontends: address, port,
/// protocol) and of Service port ids, which size the maps indexed by them
/// (`--max-services` sets it at load).
pub const MAX_SERVICES: u32 = 65_536;
/// Default capacity of the backends array (endpoints of every Service port
/// together; `--max-backends` sets it at load); id 0 is never used so a zero
/// slot means "none".
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

/// Default first port of the SNAT pool: the pool sits below Kubernetes'
/// default NodePort range (30000-32767) and Linux's default ephemeral range
/// (32768-60999), so a translated flow never takes a port the node's own
/// connections or a NodePort could use. The agent checks both at start.
pub const SNAT_PORT_MIN: u16 = 1_024;
/// Default last port of the SNAT pool (28,976 ports per backend).
pub const SNAT_PORT_MAX: u16 = 29_999;
/// Random ports a new flow probes before it takes the port of an idle flow
/// that is not assured, or gives up (a pool 97% full still finds a free
/// port for all but about 1% of new flows).
pub const SNAT_PORT_PROBES: u32 = 128;
/// Probes after which a new flow stops looking for a free port once it has
/// found a flow that may give way (early drop): the pool is full enough.
pub const SNAT_PROBES_BEFORE_EARLY_DROP: u32 = 16;
/// Probes of a new flow to a backend whose pool was exhausted in the same
/// second: bounds what each packet of a flood costs while the pool is full.
pub const SNAT_PROBES_WHEN_EXHAUSTED: u32 = 8;

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

/// Service flag: the frontend's Service port has no usable endpoint
/// anywhere (kube-proxy's "has no endpoints"), so a new connection to it is
/// refused with an ICMP port unreachable (kube-proxy's REJECT). Without it, a
/// frontend with no backend in its table drops: its Service has endpoints,
/// but none this frontend may use (a `Local` traffic policy on a node
/// without a local endpoint, where kube-proxy drops too). Set only while
/// `backend_count` is 0. Entries written before the flag existed hold 0
/// here (the field was padding): they drop, as they did.
pub const SERVICE_F_REJECT: u32 = 1;

/// Service flag: the frontend accepts new connections only from the
/// clients in its entries of [`MAP_SOURCE_RANGES`] (`loadBalancerSourceRanges`
/// of a load-balancer IP); others are dropped, as kube-proxy's firewall chain
/// drops them. Flows already tracked are not checked again.
pub const SERVICE_F_SOURCE_RANGES: u32 = 2;

/// Service flag: clients inside the cluster (pods) use another table than
/// clients from outside: the Service port's table under the `Cluster`
/// policy, at its id in [`MAP_INTERNAL_TABLES`], with the backends flagged
/// [`BACKEND_F_SELECTED`]. An external IP, load-balancer IP or node port of
/// a Service with `externalTrafficPolicy: Local` serves pods from every
/// node's endpoints, as kube-proxy does, and outside clients from this
/// node's only (its own table, flagged [`SERVICE_F_LOCAL`]).
pub const SERVICE_F_INTERNAL_TABLE: u32 = 4;

/// Service flag: the frontend's own table follows the `Local` traffic
/// policy: a backend takes its new connections when flagged
/// [`BACKEND_F_SELECTED_LOCAL`] (not [`BACKEND_F_SELECTED`]), which session
/// affinity checks. Set only where the two policies select differently.
pub const SERVICE_F_LOCAL: u32 = 8;

/// Name of the in-cluster tables: [`ServiceEntry::id`] -> [`InternalTable`]
/// (array), read for frontends flagged [`SERVICE_F_INTERNAL_TABLE`] only.
pub const MAP_INTERNAL_TABLES: &str = "INTERNAL_TABLES";

/// Value of the in-cluster tables: where a Service port's Maglev table
/// under the `Cluster` policy lives, as in [`ServiceEntry`].
///
/// Layout (12 bytes): `backend_count` u32 | `table_offset` u32 | `table_size` u32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InternalTable {
    /// Number of distinct backends in the table; 0: none for these clients.
    pub backend_count: u32,
    /// First slot of the table in the Maglev slab.
    pub table_offset: u32,
    /// Number of slots of the table (a prime); 0 without backends.
    pub table_size: u32,
}

/// Name of the node-port addresses: IPv4 address (network byte order) ->
/// u32 (always 1) (hash). A node port is a frontend of address 0
/// ([`NODE_PORT_ADDR`]) in [`MAP_SERVICES`], served on every address of this
/// set (the node's local addresses, or those `--nodeport-addresses` picks)
/// without one entry per address.
pub const MAP_NODE_PORT_ADDRS: &str = "NODE_PORT_ADDRS";
/// Capacity of the node-port addresses.
pub const NODE_PORT_ADDRS_MAX_ENTRIES: u32 = 1_024;
/// The address of a node port's frontend key: any node-port address.
pub const NODE_PORT_ADDR: u32 = 0;

/// Name of the source-range map: a frontend's allowed client ranges,
/// `bpf_lpm_trie_key` of [`SOURCE_RANGE_KEY_BITS`] over [`SourceRangeKey`] ->
/// u32 (always 1) (LPM trie, no prealloc). The prefix length counts the 32
/// bits of the service id, which a lookup always matches whole, plus the
/// range's own length.
pub const MAP_SOURCE_RANGES: &str = "SOURCE_RANGES";
/// Capacity of the source-range map (the ranges of every frontend together).
pub const SOURCE_RANGES_MAX_ENTRIES: u32 = 65_536;
/// Bits of a [`SourceRangeKey`] before the client address: the service id,
/// matched whole by every entry.
pub const SOURCE_RANGE_ID_BITS: u32 = 32;
/// Bits of a [`SourceRangeKey`]: the prefix length of a lookup of one client
/// address (service id and the whole address).
pub const SOURCE_RANGE_KEY_BITS: u32 = SOURCE_RANGE_ID_BITS + 32;

/// Data of a source-range key (after the LPM trie's `prefixlen` u32).
///
/// Layout (8 bytes): `service_id` be32 | `client_addr` be32. The id is
/// stored big-endian so that its bits come first in the trie's bit order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    /// [`ServiceEntry::id`] of the Service port, network byte order.
    pub service_id: u32,
    /// Client IPv4 address (a range's network address), network byte order.
    pub client_addr: u32,
}

/// Name of the socket reverse map: [`SockRevKey`] -> [`SockRevEntry`] (LRU
/// hash). Socket-level balancing points a socket at a backend when it
/// connects (or per send of an unconnected UDP socket); the entry gives the
/// Service's address back to `recvmsg` and `getpeername` of that socket.
pub const MAP_SOCK_REVERSE: &str = "SOCK_REVERSE";
/// Capacity of the socket reverse map (sockets and backends they talk to).
pub const SOCK_REVERSE_MAX_ENTRIES: u32 = 1 << 17;

/// Key of the socket reverse map: a socket and a backend it was pointed at.
///
/// Layout (16 bytes): `cookie` u64 | `backend_addr` be32 | `backend_port`
/// be16 | pad u16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// The socket's cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// Backend IPv4 address, network byte order.
    pub backend_addr: u32,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// Always zero.
    pub pad: u16,
}

/// Value of the socket reverse map: the Service address the socket asked for.
///
/// Layout (8 bytes): `svc_addr` be32 | `svc_port` be16 | pad u16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevEntry {
    /// Service (frontend) IPv4 address, network byte order.
    pub svc_addr: u32,
    /// Service port, network byte order.
    pub svc_port: u16,
    /// Always zero.
    pub pad: u16,
}

/// Name of the socket-level session-affinity map: [`SockAffinityKey`] ->
/// [`AffinityEntry`] (LRU hash). A socket's client is its network namespace
/// (a pod, or the node), known at `connect` when its address is not yet.
pub const MAP_SOCK_AFFINITY: &str = "SOCK_AFFINITY";

/// Key of the socket-level session-affinity map: a network namespace as a
/// client of a Service port.
///
/// Layout (16 bytes): `service_id` u32 | pad u32 | `netns_cookie` u64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockAffinityKey {
    /// [`ServiceEntry::id`] of the Service port.
    pub service_id: u32,
    /// Always zero.
    pub pad: u32,
    /// The client's network namespace cookie (`bpf_get_netns_cookie`).
    pub netns_cookie: u64,
}

/// Refusals (ICMP port unreachable for a Service without endpoints) each
/// CPU sends per second at most; beyond it, the packets drop. Linux's own
/// `icmp_msgs_per_sec` is 1,000 for the whole node.
pub const REJECTS_PER_SECOND: u32 = 100;

/// Value of the services map: the frontend's Service port and where the
/// frontend's Maglev table lives. Every frontend of a Service port (cluster
/// IP, external and load-balancer IPs, node port) shares its id, its
/// backends, and its tables: one per traffic policy in use.
///
/// Layout (24 bytes): `id` u32 | `backend_count` u32 | `table_offset` u32 |
/// `table_size` u32 | `affinity_timeout` u32 | `flags` u32 (padding, always
/// zero, before [`SERVICE_F_REJECT`]: the layout is unchanged).
/// The agent writes a new table into free slab slots first and then swaps this
/// entry in one update, so a packet sees either the old table or the new one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceEntry {
    /// Agent-assigned id of the frontend's Service port (stable while it
    /// exists): its backends carry it; counters, session affinity, source
    /// ranges and the pods' table are keyed by it.
    pub id: u32,
    /// Number of distinct backends in the table; 0 means "no endpoints".
    pub backend_count: u32,
    /// First slot of the table in the Maglev slab.
    pub table_offset: u32,
    /// Number of slots of the table (a prime); 0 when `backend_count` is 0.
    pub table_size: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 without affinity.
    pub affinity_timeout: u32,
    /// `SERVICE_F_*` bits.
    pub flags: u32,
}

/// Backend flag: the entry is in use.
pub const BACKEND_F_ACTIVE: u8 = 1;
/// Backend flag: the endpoint runs on this node (no SNAT, client IP kept).
pub const BACKEND_F_LOCAL: u8 = 2;
/// Backend flag: the endpoint takes new connections under the `Cluster`
/// traffic policy (it is in the Service port's table of that policy);
/// without it (or [`BACKEND_F_SELECTED_LOCAL`], for a frontend flagged
/// [`SERVICE_F_LOCAL`]) only established flows and no affinity may use it.
pub const BACKEND_F_SELECTED: u8 = 4;
/// Backend flag: the endpoint takes new connections under the `Local`
/// traffic policy (it is in the Service port's table of that policy),
/// read by frontends flagged [`SERVICE_F_LOCAL`].
pub const BACKEND_F_SELECTED_LOCAL: u8 = 8;

/// Value of the backends array: one endpoint of one Service port, shared by
/// the Service port's frontends. (After a hand-over from layout v5, which
/// gave each frontend its own entries, an endpoint may have more than one
/// entry with the same contents, kept for the flows that use them.)
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
    /// Id of the Service port this backend serves ([`ServiceEntry::id`]).
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

/// Value of the conntrack map: the backend a client flow (keyed client ->
/// service, as it arrives) is pinned to, and the flow's state.
///
/// Layout (32 bytes): `backend_id` u32 | `backend_addr` be32 | `backend_port` be16 |
/// `snat_port` be16 | `snat_addr` be32 | `flags` u16 | `state` u8 | pad u8 |
/// `last_seen_s` u32 | `created_ns` u64.
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
    /// Source address after SNAT (network byte order): the node's, or the
    /// client's own after a reply-tuple clash; 0 without SNAT.
    pub snat_addr: u32,
    /// `CT_F_*` bits ([`crate::conntrack`]).
    pub flags: u16,
    /// [`crate::conntrack::CtState`] value.
    pub state: u8,
    /// Always zero.
    pub pad: u8,
    /// Monotonic seconds of the flow's last packet from the client (replies
    /// stamp [`RevNatEntry::last_seen_s`]); the flow is idle since the later.
    pub last_seen_s: u32,
    /// Monotonic time (`bpf_ktime_get_coarse_ns`, tick resolution) when the flow was created.
    pub created_ns: u64,
}

/// Value of the reverse-NAT map: how to restore a reply (keyed backend ->
/// client or node, as the reply arrives), and who holds the reply tuple.
///
/// Layout (32 bytes): `svc_addr` be32 | `client_addr` be32 | `svc_port` be16 |
/// `client_port` be16 | `created_s` u32 | `last_seen_s` u32 | `ifindex` u32 |
/// `claim` u64.
/// The reply's source becomes the service; its destination becomes the client
/// (a no-op unless the forward direction was translated to the node address).
/// The holder of a SNAT port is the conntrack entry of (client, service);
/// a new flow takes the port over only by swapping `claim` atomically.
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
    /// Monotonic seconds when the entry was written (a claim younger than
    /// [`CLAIM_GRACE_S`] is never taken for an orphan).
    pub created_s: u32,
    /// Monotonic seconds of the last reply; 0 before the first.
    pub last_seen_s: u32,
    /// Interface the replies were last verified to arrive on (reverse-path
    /// check); 0 before the first reply.
    pub ifindex: u32,
    /// Tag of the claim that wrote the entry; swapped atomically on a takeover.
    pub claim: u64,
}

impl FlowKey {
    /// The client flow (client -> service) a reverse-NAT entry restores.
    #[inline(always)]
    #[must_use]
    pub const fn client_of(rev: &RevNatEntry, proto: u8) -> FlowKey {
        FlowKey {
            src_addr: rev.client_addr,
            dst_addr: rev.svc_addr,
            src_port: rev.client_port,
            dst_port: rev.svc_port,
            proto,
            pad: [0, 0, 0],
        }
    }

    /// The reply tuple (backend -> client, or -> the translated source) of
    /// this client flow tracked as `ct`: its reverse-NAT key.
    #[inline(always)]
    #[must_use]
    pub const fn reply_of(&self, ct: &CtEntry) -> FlowKey {
        let (dst_addr, dst_port) = if ct.flags & crate::conntrack::CT_F_SNAT != 0 {
            (ct.snat_addr, ct.snat_port)
        } else {
            (self.src_addr, self.src_port)
        };
        FlowKey {
            src_addr: ct.backend_addr,
            dst_addr,
            src_port: ct.backend_port,
            dst_port,
            proto: self.proto,
            pad: [0, 0, 0],
        }
    }
}

impl RevNatEntry {
    /// A new entry restoring the client flow `key`, written at `now_s` with
    /// claim tag `claim` (no reply seen yet).
    #[inline(always)]
    #[must_use]
    pub const fn restoring(key: &FlowKey, now_s: u32, claim: u64) -> RevNatEntry {
        RevNatEntry {
            svc_addr: key.dst_addr,
            client_addr: key.src_addr,
            svc_port: key.dst_port,
            client_port: key.src_port,
            created_s: now_s,
            last_seen_s: 0,
            ifindex: 0,
            claim,
        }
    }

    /// Whether this entry restores the client flow `key`.
    #[inline(always)]
    #[must_use]
    pub const fn restores(&self, key: &FlowKey) -> bool {
        self.client_addr == key.src_addr
            && self.client_port == key.src_port
            && self.svc_addr == key.dst_addr
            && self.svc_port == key.dst_port
    }
}

/// Seconds during which a reverse entry without its conntrack entry is a
/// claim in progress (the conntrack entry follows within microseconds), not
/// an orphan to be reclaimed or collected.
pub const CLAIM_GRACE_S: u32 = 2;

/// Configuration flag: reverse-translate a reply only if a route to its
/// source leaves through the interface it arrived on (reverse-path check).
pub const CONFIG_F_REPLY_PATH_CHECK: u32 = 1;

/// Value of the configuration array (index 0): facts about this node and the
/// agent's settings.
///
/// Layout (80 bytes): `node_addr` be32 | `flags` u32 | `snat_port_min` u16 |
/// `snat_port_max` u16 | `overlay_ifindex` u32 | `hash_key` [u64; 2] |
/// `timeouts` [u32; 8] | `node_addr6` [be32; 4] (at 64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// Node address used as SNAT source for remote backends, network byte order.
    pub node_addr: u32,
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// First port of the SNAT pool, host byte order.
    pub snat_port_min: u16,
    /// Last port of the SNAT pool, host byte order.
    pub snat_port_max: u16,
    /// Index of the node's overlay device (VXLAN, Geneve: flannel's
    /// `flannel.1`, Calico's `vxlan.calico`), 0 without one. Other nodes'
    /// pods are routed through it, but their replies to the node's own
    /// address come over the underlay, unencapsulated: the reverse-path
    /// check accepts those on an uplink. (Zero padding in agents before it.)
    pub overlay_ifindex: u32,
    /// Secret key of the flow hash (Maglev), the same on every node of a cluster.
    pub hash_key: crate::siphash::HashKey,
    /// Idle timeouts in seconds, by [`crate::conntrack`] `T_*` index.
    pub timeouts: crate::conntrack::CtTimeouts,
    /// Node address used as IPv6 SNAT source (as `maps6::ipv6_words`
    /// stores it); all zeros: no IPv6 SNAT.
    pub node_addr6: [u32; 4],
}

/// Bytes of a [`ServiceLabel`].
pub const SERVICE_LABEL_LEN: usize = 160;

/// Value of the service labels map: "namespace/name:port-name" (the name
/// empty for an unnamed port), NUL-padded UTF-8. Layouts before v6 wrote
/// "namespace/name", one id per frontend.
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
    /// A packet to a service was dropped: the service has no endpoints (or
    /// none this frontend may use), or its client is outside the source ranges.
    Dropped = 3,
    /// A packet to a service could not be translated (no SNAT port, a map or
    /// helper failure, an inconsistent table) and was dropped.
    Error = 4,
    /// A packet that belongs to no tracked flow and may not start one (a TCP
    /// segment without SYN for a backend that needs SNAT), a reply that failed
    /// the reverse-path check, or a packet from outside claiming the node's
    /// address: dropped.
    Invalid = 5,
}

/// Number of [`Verdict`] values.
pub const VERDICT_COUNT: u32 = 6;

/// The address family a counter slot belongs to: the verdict and event
/// counters hold one block of slots per family, IPv4's first (so IPv4's
/// indexes are the verdict's or event's own number).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4: slots from 0.
    Ipv4 = 0,
    /// IPv6: slots from one block on.
    Ipv6 = 1,
}

impl Family {
    /// Both families, in slot order.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// Its name in metrics and status output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// Verdict slots per family (room for verdicts to come).
pub const VERDICT_SLOTS: u32 = 8;
/// Length of the verdict counters: one block of [`VERDICT_SLOTS`] per family.
pub const VERDICT_ARRAY_LEN: u32 = 2 * VERDICT_SLOTS;
const _: () = assert!(VERDICT_COUNT <= VERDICT_SLOTS);

impl Verdict {
    /// Its slot in the verdict counters for `family`.
    #[must_use]
    pub const fn slot(self, family: Family) -> u32 {
        family as u32 * VERDICT_SLOTS + self as u32
    }

    /// Every verdict, in index order.
    pub const ALL: [Verdict; VERDICT_COUNT as usize] = [
        Verdict::Translated,
        Verdict::Reversed,
        Verdict::Passed,
        Verdict::Dropped,
        Verdict::Error,
        Verdict::Invalid,
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
            Verdict::Invalid => "invalid",
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
    /// A new flow took the SNAT port of an expired flow.
    SnatReclaimed = 2,
    /// A new flow took the SNAT port of an idle flow that was not assured
    /// (the pool was full).
    SnatEarlyDrop = 3,
    /// A new flow found no SNAT port (also counted per backend in `SNAT_EXHAUST`).
    SnatExhausted = 4,
    /// A flow's missing reverse-NAT entry was restored from its conntrack entry.
    RevNatRestored = 5,
    /// A reply failed the reverse-path check and was dropped.
    ReplyRejected = 6,
    /// A flow's reply tuple was held by another live flow: its source port was remapped.
    TupleRemapped = 7,
    /// A packet from outside the node claimed the node's address as its source: dropped.
    NodeSourceSpoofed = 8,
    /// Two CPUs created the same flow at once; the later one adopted the first's entry.
    ConntrackRaceLost = 9,
    /// A new connection from a client outside a load-balancer IP's source
    /// ranges was dropped.
    SourceRangeDenied = 10,
    /// A socket's connect (or a send of an unconnected UDP socket) to a
    /// Service was pointed at a backend (socket-level balancing).
    SocketTranslated = 11,
    /// A socket's connect to a Service without a backend for it was refused.
    SocketRefused = 12,
    /// An IPv6 packet whose headers are malformed or beyond what the
    /// programs walk (too many or too long extension headers, lengths past
    /// the frame, a jumbogram, a UDP checksum of 0) was passed untouched.
    Ipv6HeadersSkipped = 13,
    /// A new IPv6 flow would need its source translated (a backend on
    /// another node reached from the uplink, a pod reaching itself through
    /// its Service) on a node without an IPv6 address of its own
    /// (`NodeConfig::node_addr6`): passed untouched.
    Ipv6SnatUnserved = 14,
}

/// Number of [`Event`] values.
pub const EVENT_COUNT: u32 = 15;
/// Event slots per family (room for events to come).
pub const EVENT_SLOTS: u32 = 32;
/// Length of the event counters: one block of [`EVENT_SLOTS`] per family.
pub const EVENT_ARRAY_LEN: u32 = 2 * EVENT_SLOTS;
const _: () = assert!(EVENT_COUNT <= EVENT_SLOTS);

impl Event {
    /// Every event, in index order.
    pub const ALL: [Event; EVENT_COUNT as usize] = [
        Event::ConntrackCreated,
        Event::RevNatCreated,
        Event::SnatReclaimed,
        Event::SnatEarlyDrop,
        Event::SnatExhausted,
        Event::RevNatRestored,
        Event::ReplyRejected,
        Event::TupleRemapped,
        Event::NodeSourceSpoofed,
        Event::ConntrackRaceLost,
        Event::SourceRangeDenied,
        Event::SocketTranslated,
        Event::SocketRefused,
        Event::Ipv6HeadersSkipped,
        Event::Ipv6SnatUnserved,
    ];

    /// Its slot in the event counters for `family`.
    #[must_use]
    pub const fn slot(self, family: Family) -> u32 {
        family as u32 * EVENT_SLOTS + self as u32
    }

    /// Lower-case name used in metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Event::ConntrackCreated => "conntrack_created",
            Event::RevNatCreated => "reverse_nat_created",
            Event::SnatReclaimed => "snat_reclaimed",
            Event::SnatEarlyDrop => "snat_early_drop",
            Event::SnatExhausted => "snat_exhausted",
            Event::RevNatRestored => "reverse_nat_restored",
            Event::ReplyRejected => "reply_rejected",
            Event::TupleRemapped => "tuple_remapped",
            Event::NodeSourceSpoofed => "node_source_spoofed",
            Event::ConntrackRaceLost => "conntrack_race_lost",
            Event::SourceRangeDenied => "source_range_denied",
            Event::SocketTranslated => "socket_translated",
            Event::SocketRefused => "socket_refused",
            Event::Ipv6HeadersSkipped => "ipv6_headers_skipped",
            Event::Ipv6SnatUnserved => "ipv6_snat_unserved",
        }
    }
}

/// Name of the per-backend SNAT exhaustion counters: [`BackendKey`] ->
/// [`SnatExhaustion`] (hash, no prealloc; an entry appears on a backend's
/// first exhaustion).
pub const MAP_SNAT_EXHAUSTED: &str = "SNAT_EXHAUSTED";
/// Capacity of [`MAP_SNAT_EXHAUSTED`].
pub const SNAT_EXHAUSTED_MAX_ENTRIES: u32 = 16_384;

/// Value of the per-backend SNAT exhaustion counters.
///
/// Layout (16 bytes): `count` u64 | `last_s` u32 | pad u32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnatExhaustion {
    /// New flows that found no port (atomic adds from every CPU).
    pub count: u64,
    /// Monotonic seconds of the last one.
    pub last_s: u32,
    /// Always zero.
    pub pad: u32,
}

/// Key of the per-backend SNAT exhaustion counters: a backend's address,
/// port and protocol (not its id, which is reused).
///
/// Layout (8 bytes): `addr` be32 | `port` be16 | `proto` u8 | pad u8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// Backend address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero.
    pub pad: u8,
}

/// Name of the fragment map: [`FragKey`] -> [`FragPorts`] (LRU hash). Not
/// pinned: it holds only datagrams in flight, for the programs of one load
/// (an agent's upgrade loses them, and with them those datagrams' later
/// fragments), so it is no part of the pin layout.
pub const MAP_FRAGMENTS: &str = "FRAGMENTS";
/// Capacity of the fragment map: datagrams in flight whose first fragment
/// was translated (each entry lives until the LRU needs its room).
pub const FRAGMENTS_MAX_ENTRIES: u32 = 8_192;

/// Key of the fragment map: one IPv4 datagram, as its fragments name it on
/// the wire (RFC 791: source, destination, identification and protocol),
/// before translation.
///
/// Layout (12 bytes): `src_addr` be32 | `dst_addr` be32 | `id` be16 |
/// `proto` u8 | pad u8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source IPv4 address, network byte order.
    pub src_addr: u32,
    /// Destination IPv4 address, network byte order.
    pub dst_addr: u32,
    /// IPv4 identification, network byte order.
    pub id: u16,
    /// IP protocol number (6 or 17).
    pub proto: u8,
    /// Always zero.
    pub pad: u8,
}

/// Value of the fragment map: the ports of a datagram whose first fragment
/// was translated, as they were on the wire before translation, so that its
/// later fragments (which carry no L4 header) are decided as the first was.
///
/// Layout (4 bytes): `src_port` be16 | `dst_port` be16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragPorts {
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
}

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
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::SnatExhaustion {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragPorts {}
    unsafe impl aya::Pod for super::SourceRangeKey {}
    unsafe impl aya::Pod for super::InternalTable {}
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::SockRevEntry {}
    unsafe impl aya::Pod for super::SockAffinityKey {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn ipv4_keeps_its_counter_slots_and_each_family_has_its_own_block() {
        // IPv4's slots are the numbers earlier layouts counted at.
        for v in Verdict::ALL {
            assert_eq!(v.slot(Family::Ipv4), v as u32);
            assert!(v.slot(Family::Ipv6) >= VERDICT_SLOTS);
            assert!(v.slot(Family::Ipv6) < VERDICT_ARRAY_LEN);
        }
        for e in Event::ALL {
            assert_eq!(e.slot(Family::Ipv4), e as u32);
            assert!(e.slot(Family::Ipv6) >= EVENT_SLOTS);
            assert!(e.slot(Family::Ipv6) < EVENT_ARRAY_LEN);
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceEntry>(), 24);
        assert_eq!(size_of::<AffinityKey>(), 8);
        assert_eq!(size_of::<AffinityEntry>(), 16);
        assert_eq!(size_of::<Backend>(), 12);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<CtEntry>(), 32);
        assert_eq!(size_of::<RevNatEntry>(), 32);
        assert_eq!(size_of::<NodeConfig>(), 80);
        assert_eq!(core::mem::offset_of!(NodeConfig, overlay_ifindex), 12);
        assert_eq!(core::mem::offset_of!(NodeConfig, hash_key), 16);
        assert_eq!(core::mem::offset_of!(NodeConfig, timeouts), 32);
        assert_eq!(core::mem::offset_of!(NodeConfig, node_addr6), 64);
        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(size_of::<SnatExhaustion>(), 16);
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(size_of::<FragPorts>(), 4);
        assert_eq!(size_of::<SourceRangeKey>(), 8);
        assert_eq!(size_of::<InternalTable>(), 12);
        assert_eq!(size_of::<SockRevKey>(), 16);
        assert_eq!(size_of::<SockRevEntry>(), 8);
        assert_eq!(size_of::<SockAffinityKey>(), 16);
    }

    #[test]
    fn stats_array_holds_every_service_id_until_the_budget_binds() {
        let every_id = MAX_SERVICES + 1;
        assert_eq!(service_stats_array_len(0, MAX_SERVICES), every_id);
        assert_eq!(service_stats_array_len(2, MAX_SERVICES), every_id);
        assert_eq!(service_stats_array_len(8, MAX_SERVICES), every_id);
        assert_eq!(service_stats_array_len(16, MAX_SERVICES), MAX_SERVICES);
        // 16 MiB / (16 bytes x 64 CPUs): the ids above count in the hash.
        assert_eq!(service_stats_array_len(64, MAX_SERVICES), 16_384);
        assert_eq!(service_stats_array_len(1024, MAX_SERVICES), 1024);
        // Fewer ids configured: no longer than they need; more: the budget binds.
        assert_eq!(service_stats_array_len(2, 100), 101);
        assert_eq!(service_stats_array_len(2, 1 << 20), 1 << 19);
    }
}
