//! The flows the data path tracks, read from the pins: `lb-agent conntrack`,
//! the conntrack metrics, and the garbage collection of expired flows
//! ([`gc`]). Expiry follows `lb_common::conntrack`, as the kernel judges it.

pub mod family;
pub mod gc;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{
    conntrack::{expired, timeout_s, CtState, CtTimeouts},
    maps6::FlowKey6,
    BackendKey, FlowKey, NodeConfig, IPPROTO_TCP, IPPROTO_UDP, MAP_CONFIG,
};
use serde::Serialize;

pub use self::family::FlowFamily;

/// One tracked flow: client -> service, the backend it is pinned to, its state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrackedFlow {
    /// "TCP" or "UDP".
    pub protocol: String,
    /// The client.
    pub client: SocketAddr,
    /// The service frontend it talks to.
    pub service: SocketAddr,
    /// The backend it is pinned to.
    pub backend: SocketAddr,
    /// The address and port the client was translated to, if any.
    pub snat: Option<SocketAddr>,
    /// Its state (`lb_common::conntrack::CtState` names).
    pub state: String,
    /// Seconds since the flow's first packet.
    pub age_seconds: f64,
    /// Seconds until it expires unless a packet comes (0: expired, awaiting collection).
    pub expires_in_seconds: u32,
}

/// The monotonic clock, as `bpf_ktime_get_ns` reads it.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Monotonic seconds, as the programs stamp flows.
#[must_use]
pub fn monotonic_s() -> u32 {
    lb_common::conntrack::seconds_of(monotonic_ns())
}

/// Both flow maps of family `K` (IPv4's by default) and the timeouts,
/// read at one moment (`now_s`).
#[derive(Clone, Debug)]
pub struct Snapshot<K: FlowFamily = FlowKey> {
    /// Conntrack entries.
    pub flows: Vec<(K, K::Ct)>,
    /// Reverse-NAT entries by reply tuple.
    pub replies: StdHashMap<K, K::Rev>,
    /// The idle timeouts the programs apply.
    pub timeouts: CtTimeouts,
    /// Monotonic seconds when read.
    pub now_s: u32,
}

impl<K: FlowFamily> Default for Snapshot<K> {
    fn default() -> Self {
        Self {
            flows: Vec::new(),
            replies: StdHashMap::new(),
            timeouts: CtTimeouts::default(),
            now_s: 0,
        }
    }
}

/// What a snapshot says of one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLife<K = FlowKey> {
    /// Its state.
    pub state: CtState,
    /// Its reverse entry's tuple, when that entry restores it.
    pub reply: Option<K>,
    /// Seconds of its last packet, either direction.
    pub last_seen_s: u32,
    /// Its idle timeout.
    pub timeout_s: u32,
    /// Whether it is gone.
    pub expired: bool,
}

impl Snapshot {
    /// Reads IPv4's flow maps pinned under `pin_dir` (an agent's `--pin-dir`).
    pub fn read(pin_dir: &Path) -> Result<Self> {
        Self::read_in(pin_dir)
    }
}

impl<K: FlowFamily> Snapshot<K> {
    /// Reads family `K`'s flow maps pinned under `pin_dir`.
    pub fn read_in(pin_dir: &Path) -> Result<Self> {
        let dir = crate::datapath::pins_dir(pin_dir);
        let open = |name: &str| {
            let path = dir.join(name);
            MapData::from_pin(&path).with_context(|| {
                format!(
                    "cannot open {}: is an agent running with this --pin-dir?",
                    path.display()
                )
            })
        };
        let config: Array<MapData, NodeConfig> = Array::try_from(Map::Array(open(MAP_CONFIG)?))?;
        let timeouts = config.get(&0, 0)?.timeouts;
        let now_s = monotonic_s();
        let ct: HashMap<MapData, K, K::Ct> =
            HashMap::try_from(Map::LruHashMap(open(K::CONNTRACK)?))?;
        let mut flows = Vec::new();
        for item in &ct {
            flows.push(item?);
        }
        let rev: HashMap<MapData, K, K::Rev> =
            HashMap::try_from(Map::LruHashMap(open(K::REVNAT)?))?;
        let mut replies = StdHashMap::new();
        for item in &rev {
            let (k, v) = item?;
            replies.insert(k, v);
        }
        Ok(Self {
            flows,
            replies,
            timeouts,
            now_s,
        })
    }

    /// What the snapshot says of flow `key` tracked as `ct`.
    #[must_use]
    pub fn life(&self, key: &K, ct: &K::Ct) -> FlowLife<K> {
        let common = K::common(ct);
        let state = CtState::from_u8(common.state);
        let reply = key.reply_of(ct);
        let rev = self.replies.get(&reply).filter(|r| key.restored_by(r));
        let last_seen_s = common.last_seen_s.max(rev.map_or(0, |r| K::rev_times(r).1));
        let timeout_s = timeout_s(state, common.flags, &self.timeouts);
        FlowLife {
            state,
            reply: rev.map(|_| reply),
            last_seen_s,
            timeout_s,
            expired: expired(self.now_s, last_seen_s, timeout_s),
        }
    }

    /// Every tracked flow, oldest first, with `now_ns` the monotonic clock.
    #[must_use]
    pub fn tracked(&self, now_ns: u64) -> Vec<TrackedFlow> {
        let mut flows: Vec<TrackedFlow> = self
            .flows
            .iter()
            .map(|(key, ct)| flow(key, ct, &self.life(key, ct), self.now_s, now_ns))
            .collect();
        flows.sort_by(|a, b| b.age_seconds.total_cmp(&a.age_seconds));
        flows
    }

    /// Live flows by state, and SNAT ports in use per backend.
    #[must_use]
    pub fn stats(&self) -> FlowStats {
        let mut stats = FlowStats::default();
        for (key, ct) in &self.flows {
            let life = self.life(key, ct);
            if life.expired {
                stats.expired += 1;
                continue;
            }
            *stats.by_state.entry(life.state).or_default() += 1;
            if let Some(backend) = key.snat_backend(ct) {
                *stats.snat_ports.entry(backend).or_default() += 1;
            }
        }
        stats
    }
}

/// Counts over a snapshot's flows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Live flows by state.
    pub by_state: BTreeMap<CtState, u64>,
    /// SNAT ports held by live flows, per backend.
    pub snat_ports: BTreeMap<BackendKey, u64>,
    /// Flows expired but not yet collected.
    pub expired: u64,
}

impl FlowStats {
    /// Adds `other`'s counts (another family's) to these.
    pub fn add(&mut self, other: &FlowStats) {
        for (state, n) in &other.by_state {
            *self.by_state.entry(*state).or_default() += n;
        }
        for (backend, n) in &other.snat_ports {
            *self.snat_ports.entry(*backend).or_default() += n;
        }
        self.expired += other.expired;
    }
}

/// "addr:port/PROTO" of a backend key.
#[must_use]
pub fn backend_label(backend: &BackendKey) -> String {
    format!(
        "{}/{}",
        std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::from(backend.addr.to_ne_bytes()),
            u16::from_be(backend.port)
        ),
        protocol_name(backend.proto)
    )
}

/// "[addr]:port/PROTO" of an IPv6 backend key.
#[must_use]
pub fn backend_label6(backend: &lb_common::maps6::BackendKey6) -> String {
    format!(
        "{}/{}",
        std::net::SocketAddrV6::new(
            std::net::Ipv6Addr::from(lb_common::maps6::ipv6_octets(backend.addr)),
            u16::from_be(backend.port),
            0,
            0
        ),
        protocol_name(backend.proto)
    )
}

fn protocol_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "TCP".to_string(),
        IPPROTO_UDP => "UDP".to_string(),
        other => format!("proto{other}"),
    }
}

/// The flow of one conntrack entry, at `now_s` (seconds) and `clock_ns` (the monotonic clock).
#[must_use]
pub fn flow<K: FlowFamily>(
    key: &K,
    entry: &K::Ct,
    life: &FlowLife<K>,
    now_s: u32,
    clock_ns: u64,
) -> TrackedFlow {
    #[allow(clippy::cast_precision_loss)] // ages in seconds, fine as f64
    let age_seconds = clock_ns.saturating_sub(K::common(entry).created_ns) as f64 / 1e9;
    let sockets = key.sockets(entry);
    let expires_in_seconds = if life.expired {
        0
    } else {
        (life.last_seen_s + life.timeout_s).saturating_sub(now_s)
    };
    TrackedFlow {
        protocol: protocol_name(key.proto()),
        client: sockets.client,
        service: sockets.service,
        backend: sockets.backend,
        snat: sockets.snat,
        state: life.state.name().to_string(),
        age_seconds,
        expires_in_seconds,
    }
}

/// Every tracked flow in the maps pinned under `pin_dir`, IPv4's then
/// IPv6's, each oldest first.
pub fn read(pin_dir: &Path) -> Result<Vec<TrackedFlow>> {
    let now_ns = monotonic_ns();
    let mut flows = Snapshot::read(pin_dir)?.tracked(now_ns);
    flows.extend(Snapshot::<FlowKey6>::read_in(pin_dir)?.tracked(now_ns));
    Ok(flows)
}

/// One line per flow: `TCP client -> service -> backend [snat addr:port] state age expiry`.
#[must_use]
pub fn format(flows: &[TrackedFlow]) -> String {
    let mut out = String::new();
    for f in flows {
        let snat = f.snat.map(|s| format!(" snat {s}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{} {} -> {} -> {}{snat} {} age {:.1}s expires in {}s",
            f.protocol,
            f.client,
            f.service,
            f.backend,
            f.state,
            f.age_seconds,
            f.expires_in_seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use lb_common::{conntrack::DEFAULT_TIMEOUTS, CtEntry, RevNatEntry, CT_F_REPLIED, CT_F_SNAT};

    use super::*;

    fn key() -> FlowKey {
        FlowKey {
            src_addr: u32::from_ne_bytes([192, 168, 50, 10]),
            dst_addr: u32::from_ne_bytes([10, 96, 0, 10]),
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            pad: [0; 3],
        }
    }

    fn snated(last_seen_s: u32) -> CtEntry {
        CtEntry {
            backend_id: 3,
            backend_addr: u32::from_ne_bytes([10, 244, 2, 2]),
            backend_port: 8080u16.to_be(),
            snat_port: 1234u16.to_be(),
            snat_addr: u32::from_ne_bytes([192, 168, 50, 11]),
            flags: CT_F_SNAT | CT_F_REPLIED,
            state: CtState::Established as u8,
            pad: 0,
            last_seen_s,
            created_ns: 1_000_000_000,
        }
    }

    fn reverse(last_seen_s: u32) -> RevNatEntry {
        RevNatEntry {
            svc_addr: u32::from_ne_bytes([10, 96, 0, 10]),
            client_addr: u32::from_ne_bytes([192, 168, 50, 10]),
            svc_port: 80u16.to_be(),
            client_port: 40000u16.to_be(),
            created_s: 1,
            last_seen_s,
            ifindex: 2,
            claim: 7,
        }
    }

    #[test]
    fn formats_a_snated_flow_with_its_state_and_expiry() {
        let snapshot = Snapshot {
            flows: vec![(key(), snated(100))],
            replies: StdHashMap::from([(key().reply_of(&snated(100)), reverse(0))]),
            timeouts: DEFAULT_TIMEOUTS,
            now_s: 103,
        };
        let flows = snapshot.tracked(3_500_000_000);
        assert_eq!(
            format(&flows),
            "TCP 192.168.50.10:40000 -> 10.96.0.10:80 -> 10.244.2.2:8080 snat 192.168.50.11:1234 \
             established age 2.5s expires in 86397s\n"
        );
        let json = serde_json::to_string(&flows[0]).unwrap();
        assert!(json.contains("\"backend\":\"10.244.2.2:8080\""), "{json}");
        assert!(json.contains("\"state\":\"established\""), "{json}");
    }

    #[test]
    fn a_reply_keeps_a_flow_alive_and_only_its_own_reverse_entry_counts() {
        let mut snapshot = Snapshot {
            flows: vec![(key(), snated(100))],
            replies: StdHashMap::new(),
            timeouts: [5; lb_common::conntrack::CT_TIMEOUT_COUNT],
            now_s: 110,
        };
        assert!(snapshot.life(&key(), &snated(100)).expired);
        let reply = key().reply_of(&snated(100));
        snapshot.replies.insert(reply, reverse(108));
        let life = snapshot.life(&key(), &snated(100));
        assert!(!life.expired);
        assert_eq!((life.last_seen_s, life.reply), (108, Some(reply)));
        // The port now restores another client: it is not this flow's.
        let mut other = reverse(109);
        other.client_port = 1;
        snapshot.replies.insert(reply, other);
        assert!(snapshot.life(&key(), &snated(100)).expired);
        assert_eq!(snapshot.stats().expired, 1);
    }

    #[test]
    fn stats_count_live_flows_by_state_and_snat_ports_by_backend() {
        let mut second = key();
        second.src_port = 40001u16.to_be();
        let mut closing = snated(100);
        closing.state = CtState::FinClient as u8;
        closing.snat_port = 1235u16.to_be();
        let snapshot = Snapshot {
            flows: vec![(key(), snated(100)), (second, closing)],
            replies: StdHashMap::new(),
            timeouts: DEFAULT_TIMEOUTS,
            now_s: 101,
        };
        let stats = snapshot.stats();
        assert_eq!(
            stats.by_state,
            BTreeMap::from([(CtState::Established, 1), (CtState::FinClient, 1)])
        );
        let (backend, ports) = stats.snat_ports.iter().next().unwrap();
        assert_eq!(
            (backend_label(backend).as_str(), *ports),
            ("10.244.2.2:8080/TCP", 2)
        );
    }

    #[test]
    fn formats_an_ipv6_flow_with_bracketed_addresses() {
        let key = FlowKey6 {
            src_addr: lb_common::maps6::ipv6_words(
                "fd00:50::10"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            ),
            dst_addr: lb_common::maps6::ipv6_words(
                "fd00:96::10"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            ),
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            pad: [0; 3],
        };
        let ct = lb_common::maps6::CtEntry6 {
            backend_id: 3,
            backend_port: 8080u16.to_be(),
            backend_addr: lb_common::maps6::ipv6_words(
                "fd00:244:1::5"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            ),
            flags: CT_F_REPLIED,
            state: CtState::Established as u8,
            last_seen_s: 100,
            created_ns: 1_000_000_000,
            ..Default::default()
        };
        let snapshot = Snapshot::<FlowKey6> {
            flows: vec![(key, ct)],
            replies: StdHashMap::new(),
            timeouts: DEFAULT_TIMEOUTS,
            now_s: 101,
        };
        assert_eq!(
            format(&snapshot.tracked(2_000_000_000)),
            "TCP [fd00:50::10]:40000 -> [fd00:96::10]:80 -> [fd00:244:1::5]:8080 established \
             age 1.0s expires in 86399s\n"
        );
    }
}
