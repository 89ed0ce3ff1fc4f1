//! `lb-agent status`: what the kernel maps hold, read from the pins.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::Path,
};

use anyhow::Result;
use lb_common::{
    maps6::{ipv6_octets, ServiceKey6},
    Family, ServiceEntry, Verdict, BACKEND_F_ACTIVE, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    datapath::{decode_label, maps::Maps},
    desired::AddrFamily as _,
};

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct FrontendStatus {
    /// "namespace/name" of the Service (or "service #id" without a label).
    pub service: String,
    /// "addr:port/PROTO".
    pub frontend: String,
    /// Backends the Maglev table points at.
    pub backends: Vec<SocketAddr>,
}

/// Reads every frontend and the verdict totals from the maps pinned under `pin_dir`.
pub fn read(
    pin_dir: &Path,
) -> Result<(
    Vec<FrontendStatus>,
    [u64; lb_common::VERDICT_COUNT as usize],
)> {
    let maps = Maps::from_pins(pin_dir)?;
    let mut frontends = Vec::new();
    for item in &maps.services {
        let (key, entry) = item?;
        let backends = table_backends(&maps, &entry, |id| {
            let b = maps.backends.get(&id, 0)?;
            Ok((b.flags & BACKEND_F_ACTIVE != 0).then(|| {
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(b.addr.to_ne_bytes()),
                    u16::from_be(b.port),
                ))
            }))
        })?;
        frontends.push(FrontendStatus {
            service: service_label(&maps, entry.id),
            frontend: frontend_name(key),
            backends,
        });
    }
    for item in &maps.services6 {
        let (key, entry) = item?;
        let backends = table_backends(&maps, &entry, |id| {
            let b = maps.backends6.get(&id, 0)?;
            Ok((b.flags & BACKEND_F_ACTIVE != 0).then(|| {
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(ipv6_octets(b.addr)),
                    u16::from_be(b.port),
                    0,
                    0,
                ))
            }))
        })?;
        frontends.push(FrontendStatus {
            service: service_label(&maps, entry.id),
            frontend: frontend_name6(&key),
            backends,
        });
    }
    frontends.sort();
    Ok((frontends, maps.verdict_totals()?))
}

/// Every labelled service id with its Service ("namespace/name"), port
/// name and family.
pub fn ports_by_id(maps: &Maps) -> Result<Vec<(u32, PortLabel)>> {
    let mut out = Vec::new();
    for item in &maps.labels {
        let (id, label) = item?;
        out.push((id, PortLabel::parse(&decode_label(&label))));
    }
    Ok(out)
}

/// A service id's label, read: one family's side of one Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortLabel {
    /// "namespace/name" of the Service.
    pub service: String,
    /// The port's name ("" when unnamed).
    pub port: String,
    /// The family of the frontends the id serves.
    pub family: Family,
}

impl PortLabel {
    /// Reads "namespace/name:port" (IPv4) or "namespace/name:port/IPv6";
    /// a label without a port (layouts before v6) names the Service alone.
    #[must_use]
    pub fn parse(label: &str) -> Self {
        let (service, port) = label.split_once(':').unwrap_or((label, ""));
        let (port, family) = match port.strip_suffix(SocketAddrV6::LABEL_SUFFIX) {
            Some(port) => (port, Family::Ipv6),
            None => (port, Family::Ipv4),
        };
        Self {
            service: service.to_string(),
            port: port.to_string(),
            family,
        }
    }
}

/// "namespace/name" of a service id's Service (its label without the port
/// name), or "service #id" without a label.
fn service_label(maps: &Maps, id: u32) -> String {
    maps.labels.get(&id, 0).map_or_else(
        |_| format!("service #{id}"),
        |l| {
            let label = decode_label(&l);
            match label.split_once(':') {
                Some((service, _)) => service.to_string(),
                None => label,
            }
        },
    )
}

/// The distinct active backends the Maglev table of `entry` points at,
/// sorted; `backend` reads one id of the entry's family.
fn table_backends(
    maps: &Maps,
    entry: &ServiceEntry,
    backend: impl Fn(u32) -> Result<Option<SocketAddr>>,
) -> Result<Vec<SocketAddr>> {
    let ids: BTreeSet<u32> = maps
        .slab
        .read(entry.table_offset, entry.table_size)?
        .into_iter()
        .collect();
    let mut backends = Vec::new();
    for id in ids {
        backends.extend(backend(id)?);
    }
    backends.sort();
    Ok(backends)
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "TCP".to_string(),
        IPPROTO_UDP => "UDP".to_string(),
        other => format!("proto{other}"),
    }
}

fn frontend_name(key: lb_common::ServiceKey) -> String {
    format!(
        "{}:{}/{}",
        Ipv4Addr::from(key.addr.to_ne_bytes()),
        u16::from_be(key.port),
        proto_name(key.proto)
    )
}

/// "[addr]:port/PROTO" of an IPv6 frontend (a node port's address is `::`).
fn frontend_name6(key: &ServiceKey6) -> String {
    format!(
        "[{}]:{}/{}",
        Ipv6Addr::from(ipv6_octets(key.addr)),
        u16::from_be(key.port),
        proto_name(key.proto)
    )
}

/// Formats frontends `kubectl get endpoints`-style, then the verdict counters.
#[must_use]
pub fn format(frontends: &[FrontendStatus], verdicts: &[u64]) -> String {
    let mut out = String::new();
    for f in frontends {
        let backends = if f.backends.is_empty() {
            "<none>".to_string()
        } else {
            f.backends
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let _ = writeln!(out, "{} {} -> {backends}", f.service, f.frontend);
    }
    let counters: Vec<String> = Verdict::ALL
        .iter()
        .zip(verdicts)
        .map(|(v, n)| format!("{}={n}", v.name()))
        .collect();
    let _ = writeln!(out, "verdicts: {}", counters.join(" "));
    out
}

/// The status as JSON: `{"services": [...], "verdicts": {"translated": n, ...}}`.
pub fn to_json(frontends: &[FrontendStatus], verdicts: &[u64]) -> Result<String> {
    let counters: std::collections::BTreeMap<&str, u64> = Verdict::ALL
        .iter()
        .zip(verdicts)
        .map(|(v, n)| (v.name(), *n))
        .collect();
    Ok(serde_json::to_string_pretty(&serde_json::json!({
        "services": frontends,
        "verdicts": counters,
    }))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_label_names_its_family() {
        let read = |label| {
            let l = PortLabel::parse(label);
            (l.service, l.port, l.family)
        };
        let ipv4 = ("default/web".to_string(), "http".to_string(), Family::Ipv4);
        assert_eq!(read("default/web:http"), ipv4);
        let ipv6 = ("default/web".to_string(), "http".to_string(), Family::Ipv6);
        assert_eq!(read("default/web:http/IPv6"), ipv6);
        assert_eq!(read("default/web:/IPv6").1, "");
        // Before v6 a label named the Service only.
        assert_eq!(
            read("default/web"),
            ("default/web".into(), String::new(), Family::Ipv4)
        );
    }

    #[test]
    fn formats_like_kubectl_get_endpoints() {
        let frontends = vec![
            FrontendStatus {
                service: "default/web-service".into(),
                frontend: "10.96.0.10:80/TCP".into(),
                backends: vec![
                    "10.244.1.2:80".parse().unwrap(),
                    "10.244.1.3:80".parse().unwrap(),
                ],
            },
            FrontendStatus {
                service: "default/empty".into(),
                frontend: "10.96.0.11:53/UDP".into(),
                backends: vec![],
            },
            FrontendStatus {
                service: "default/web-service".into(),
                frontend: frontend_name6(&ServiceKey6 {
                    addr: lb_common::maps6::ipv6_words([
                        0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
                    ]),
                    port: 80u16.to_be(),
                    proto: IPPROTO_TCP,
                    pad: 0,
                }),
                backends: vec!["[fd00:244:1::2]:80".parse().unwrap()],
            },
        ];
        assert_eq!(
            format(&frontends, &[5, 4, 3, 2, 1]),
            "default/web-service 10.96.0.10:80/TCP -> 10.244.1.2:80,10.244.1.3:80\n\
             default/empty 10.96.0.11:53/UDP -> <none>\n\
             default/web-service [fd00:96::10]:80/TCP -> [fd00:244:1::2]:80\n\
             verdicts: translated=5 reversed=4 passed=3 dropped=2 error=1\n"
        );
    }
}
