//! `lb-agent status`: what the kernel maps hold, read from the pins.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use anyhow::Result;
use lb_common::{Verdict, BACKEND_F_ACTIVE, IPPROTO_TCP, IPPROTO_UDP};

use crate::datapath::{decode_label, maps::Maps};

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct FrontendStatus {
    /// "namespace/name" of the Service (or "service #id" without a label).
    pub service: String,
    /// "addr:port/PROTO".
    pub frontend: String,
    /// Backends the Maglev table points at.
    pub backends: Vec<SocketAddrV4>,
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
        let service = service_label(&maps, entry.id);
        let frontend = frontend_name(key);
        let ids: BTreeSet<u32> = maps
            .slab
            .read(entry.table_offset, entry.table_size)?
            .into_iter()
            .collect();
        let mut backends = Vec::new();
        for id in ids {
            let backend = maps.backends.get(&id, 0)?;
            if backend.flags & BACKEND_F_ACTIVE != 0 {
                backends.push(SocketAddrV4::new(
                    Ipv4Addr::from(backend.addr.to_ne_bytes()),
                    u16::from_be(backend.port),
                ));
            }
        }
        backends.sort();
        frontends.push(FrontendStatus {
            service,
            frontend,
            backends,
        });
    }
    frontends.sort();
    Ok((frontends, maps.verdict_totals()?))
}

/// Every labelled service id with its Service ("namespace/name") and port name.
pub fn ports_by_id(maps: &Maps) -> Result<Vec<(u32, String, String)>> {
    let mut out = Vec::new();
    for item in &maps.labels {
        let (id, label) = item?;
        let label = decode_label(&label);
        let (service, port) = label.split_once(':').unwrap_or((label.as_str(), ""));
        out.push((id, service.to_string(), port.to_string()));
    }
    Ok(out)
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

fn frontend_name(key: lb_common::ServiceKey) -> String {
    let proto = match key.proto {
        IPPROTO_TCP => "TCP".to_string(),
        IPPROTO_UDP => "UDP".to_string(),
        other => format!("proto{other}"),
    };
    format!(
        "{}:{}/{proto}",
        Ipv4Addr::from(key.addr.to_ne_bytes()),
        u16::from_be(key.port)
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
        ];
        assert_eq!(
            format(&frontends, &[5, 4, 3, 2, 1]),
            "default/web-service 10.96.0.10:80/TCP -> 10.244.1.2:80,10.244.1.3:80\n\
             default/empty 10.96.0.11:53/UDP -> <none>\n\
             verdicts: translated=5 reversed=4 passed=3 dropped=2 error=1\n"
        );
    }
}
