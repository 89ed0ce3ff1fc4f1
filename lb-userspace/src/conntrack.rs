//! `lb-agent conntrack`: the flows the data path tracks, read from the pins.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{
    CtEntry, FlowKey, RevNatEntry, CT_F_SNAT, IPPROTO_TCP, IPPROTO_UDP, MAP_CONNTRACK, MAP_REVNAT,
};
use serde::Serialize;

/// One tracked flow: client -> service, and the backend it is pinned to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrackedFlow {
    /// "TCP" or "UDP".
    pub protocol: String,
    /// The client.
    pub client: SocketAddrV4,
    /// The service frontend it talks to.
    pub service: SocketAddrV4,
    /// The backend it is pinned to.
    pub backend: SocketAddrV4,
    /// The node address and port the client was translated to, if any.
    pub snat: Option<SocketAddrV4>,
    /// Seconds since the flow's first packet.
    pub age_seconds: f64,
}

fn socket(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(addr.to_ne_bytes()), u16::from_be(port))
}

/// The flow of one conntrack entry, `now_ns` being the monotonic clock now.
#[must_use]
pub fn flow(key: &FlowKey, entry: &CtEntry, now_ns: u64) -> TrackedFlow {
    let protocol = match key.proto {
        IPPROTO_TCP => "TCP".to_string(),
        IPPROTO_UDP => "UDP".to_string(),
        other => format!("proto{other}"),
    };
    #[allow(clippy::cast_precision_loss)] // ages in seconds, fine as f64
    let age_seconds = now_ns.saturating_sub(entry.created_ns) as f64 / 1e9;
    TrackedFlow {
        protocol,
        client: socket(key.src_addr, key.src_port),
        service: socket(key.dst_addr, key.dst_port),
        backend: socket(entry.backend_addr, entry.backend_port),
        snat: (entry.flags & CT_F_SNAT != 0).then(|| socket(entry.snat_addr, entry.snat_port)),
        age_seconds,
    }
}

/// The monotonic clock, as `bpf_ktime_get_ns` reads it.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Every tracked flow in the maps pinned under `pin_dir`, oldest first.
pub fn read(pin_dir: &Path) -> Result<Vec<TrackedFlow>> {
    let path = crate::datapath::pins_dir(pin_dir).join(MAP_CONNTRACK);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open {}: is an agent running with this --pin-dir?",
            path.display()
        )
    })?;
    let map: HashMap<MapData, FlowKey, CtEntry> = HashMap::try_from(Map::LruHashMap(data))?;
    let now = monotonic_ns();
    let mut flows = Vec::new();
    for item in &map {
        let (key, entry) = item?;
        flows.push(flow(&key, &entry, now));
    }
    flows.sort_by(|a, b| b.age_seconds.total_cmp(&a.age_seconds));
    Ok(flows)
}

/// Number of reply flows in the reverse-NAT map pinned under `pin_dir`.
pub fn count_reverse_nat(pin_dir: &Path) -> Result<usize> {
    let path = crate::datapath::pins_dir(pin_dir).join(MAP_REVNAT);
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let map: HashMap<MapData, FlowKey, RevNatEntry> = HashMap::try_from(Map::LruHashMap(data))?;
    let mut count = 0;
    for key in map.keys() {
        key?;
        count += 1;
    }
    Ok(count)
}

/// One line per flow: `TCP client -> service -> backend [snat addr:port] age`.
#[must_use]
pub fn format(flows: &[TrackedFlow]) -> String {
    let mut out = String::new();
    for f in flows {
        let snat = f.snat.map(|s| format!(" snat {s}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{} {} -> {} -> {}{snat} age {:.1}s",
            f.protocol, f.client, f.service, f.backend, f.age_seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_snated_flow() {
        let key = FlowKey {
            src_addr: u32::from_ne_bytes([192, 168, 50, 10]),
            dst_addr: u32::from_ne_bytes([10, 96, 0, 10]),
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            pad: [0; 3],
        };
        let entry = CtEntry {
            backend_id: 3,
            backend_addr: u32::from_ne_bytes([10, 244, 2, 2]),
            backend_port: 8080u16.to_be(),
            snat_port: 61234u16.to_be(),
            snat_addr: u32::from_ne_bytes([192, 168, 50, 11]),
            flags: CT_F_SNAT,
            closing_s: 0,
            created_ns: 1_000_000_000,
        };
        let f = flow(&key, &entry, 3_500_000_000);
        assert_eq!(
            format(std::slice::from_ref(&f)),
            "TCP 192.168.50.10:40000 -> 10.96.0.10:80 -> 10.244.2.2:8080 snat 192.168.50.11:61234 age 2.5s\n"
        );
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains("\"backend\":\"10.244.2.2:8080\""), "{json}");
    }
}
