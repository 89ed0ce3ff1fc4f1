//! Endpoint selection: which backends serve each frontend, by kube-proxy's rules.

use std::{collections::BTreeMap, net::SocketAddrV4};

use crate::{
    desired::{BackendInfo, DesiredFrontend, DesiredState, Frontend},
    model::{AddressType, Cluster, ServiceKind, ServicePort, SliceSpec, TargetPort},
};

/// The desired state of every frontend, and warnings about ignored input.
///
/// Rules (kube-proxy's, for ClusterIP traffic):
/// - Headless and ExternalName Services are skipped; ClusterIP, NodePort and
///   LoadBalancer Services get a frontend per IPv4 cluster IP and port.
/// - A Service's endpoints come from the slices in its namespace labelled
///   with its name. Slices mirrored from legacy Endpoints count only when the
///   Service has no EndpointSlice of its own.
/// - A Service port takes, in each slice, the slice port with the same name
///   and protocol; its number is the endpoint port (so a named targetPort
///   resolves per slice). A numeric targetPort is used when the slice has no
///   ports at all. A slice without a matching port contributes nothing.
/// - Only endpoints whose `ready` condition is not false; an address found in
///   several slices counts once. Slices of another address family are ignored
///   with a warning.
/// - A backend is local when its endpoint's nodeName is `node_name`.
/// - A frontend with no endpoints is kept with no backends, so the data path
///   drops its packets rather than passing them on to nowhere.
#[must_use]
pub fn desired_state(cluster: &Cluster, node_name: &str) -> (DesiredState, Vec<String>) {
    let mut state = DesiredState::new();
    let mut warnings = Vec::new();
    let mut by_service: BTreeMap<(&str, &str), Vec<&SliceSpec>> = BTreeMap::new();
    for slice in cluster.slices.values() {
        if let AddressType::Other(family) = &slice.address_type {
            warnings.push(format!(
                "EndpointSlice {}: address type {family} is not served (IPv4 only); ignored",
                slice.name
            ));
            continue;
        }
        by_service
            .entry((slice.name.namespace.as_str(), slice.service.as_str()))
            .or_default()
            .push(slice);
    }
    for service in cluster.services.values() {
        if matches!(
            service.kind,
            ServiceKind::Headless | ServiceKind::ExternalName
        ) {
            continue;
        }
        let all = by_service
            .get(&(service.name.namespace.as_str(), service.name.name.as_str()))
            .cloned()
            .unwrap_or_default();
        let has_own = all.iter().any(|s| !s.mirrored);
        let slices: Vec<&SliceSpec> = all
            .into_iter()
            .filter(|s| !has_own || !s.mirrored)
            .collect();
        for port in &service.ports {
            let backends = backends_for(port, &slices, node_name);
            for &addr in &service.cluster_ips {
                state.insert(
                    Frontend {
                        addr,
                        port: port.port,
                        proto: port.protocol,
                    },
                    DesiredFrontend {
                        service: service.name.clone(),
                        port_name: port.name.clone(),
                        backends: backends.clone(),
                    },
                );
            }
        }
    }
    (state, warnings)
}

fn backends_for(
    port: &ServicePort,
    slices: &[&SliceSpec],
    node_name: &str,
) -> BTreeMap<SocketAddrV4, BackendInfo> {
    let mut backends = BTreeMap::new();
    for slice in slices {
        let number = if slice.ports.is_empty() {
            match port.target_port {
                TargetPort::Number(n) => Some(n),
                TargetPort::Name(_) => None,
            }
        } else {
            slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
                .map(|p| p.port)
        };
        let Some(number) = number else { continue };
        for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
            let Some(&ip) = endpoint.addresses.first() else {
                continue;
            };
            let local = endpoint.node_name.as_deref() == Some(node_name);
            backends
                .entry(SocketAddrV4::new(ip, number))
                .or_insert(BackendInfo { local });
        }
    }
    backends
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        desired::{ObjectName, Protocol},
        model::{EndpointSpec, ServiceSpec, SlicePort},
    };

    fn name(n: &str) -> ObjectName {
        ObjectName {
            namespace: "default".into(),
            name: n.into(),
        }
    }

    fn service(kind: ServiceKind, ports: Vec<ServicePort>) -> ServiceSpec {
        ServiceSpec {
            name: name("web"),
            kind,
            cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
            ports,
        }
    }

    fn port(name: &str, port: u16, protocol: Protocol, target: TargetPort) -> ServicePort {
        ServicePort {
            name: name.into(),
            port,
            protocol,
            target_port: target,
        }
    }

    fn endpoint(last: u8, ready: bool, node: &str) -> EndpointSpec {
        EndpointSpec {
            addresses: vec![Ipv4Addr::new(10, 244, 1, last)],
            ready,
            serving: Some(ready),
            terminating: Some(false),
            node_name: Some(node.into()),
            zone: None,
        }
    }

    fn slice(n: &str, ports: &[(&str, u16)], endpoints: Vec<EndpointSpec>) -> SliceSpec {
        SliceSpec {
            name: name(n),
            service: "web".into(),
            address_type: AddressType::Ipv4,
            ports: ports
                .iter()
                .map(|&(name, port)| SlicePort {
                    name: name.into(),
                    port,
                    protocol: Protocol::Tcp,
                })
                .collect(),
            endpoints,
            mirrored: false,
        }
    }

    fn cluster(service: ServiceSpec, slices: Vec<SliceSpec>) -> Cluster {
        Cluster {
            services: [(service.name.clone(), service)].into_iter().collect(),
            slices: slices.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }

    /// The backends of 10.96.0.10:80/TCP as "last-octet:port[L]" (L = local).
    fn backends(cluster: &Cluster) -> Option<Vec<String>> {
        let (state, _) = desired_state(cluster, "node1");
        let frontend = Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: Protocol::Tcp,
        };
        state.get(&frontend).map(|f| {
            f.backends
                .iter()
                .map(|(a, i)| {
                    format!(
                        "{}:{}{}",
                        a.ip().octets()[3],
                        a.port(),
                        if i.local { "L" } else { "" }
                    )
                })
                .collect()
        })
    }

    fn http() -> Vec<ServicePort> {
        vec![port(
            "http",
            80,
            Protocol::Tcp,
            TargetPort::Name("http".into()),
        )]
    }

    #[test]
    #[allow(clippy::too_many_lines)] // one table row per rule
    fn selection_rules() {
        let ready = |l| endpoint(l, true, "node1");
        let cases: Vec<(&str, Cluster, Option<Vec<&str>>)> = vec![
            (
                "named targetPort through the slice port",
                cluster(
                    service(ServiceKind::ClusterIp, http()),
                    vec![slice("a", &[("http", 8080)], vec![ready(2)])],
                ),
                Some(vec!["2:8080L"]),
            ),
            (
                "a name maps to different numbers per slice",
                cluster(
                    service(ServiceKind::ClusterIp, http()),
                    vec![
                        slice("a", &[("http", 8080)], vec![ready(2)]),
                        slice("b", &[("http", 9090)], vec![ready(3)]),
                    ],
                ),
                Some(vec!["2:8080L", "3:9090L"]),
            ),
            (
                "not ready endpoints are left out",
                cluster(
                    service(ServiceKind::ClusterIp, http()),
                    vec![slice(
                        "a",
                        &[("http", 8080)],
                        vec![ready(2), endpoint(3, false, "node1")],
                    )],
                ),
                Some(vec!["2:8080L"]),
            ),
            (
                "duplicates across slices count once",
                cluster(
                    service(ServiceKind::ClusterIp, http()),
                    vec![
                        slice("a", &[("http", 8080)], vec![ready(2)]),
                        slice("b", &[("http", 8080)], vec![ready(2)]),
                    ],
                ),
                Some(vec!["2:8080L"]),
            ),
            (
                "other nodes' endpoints are remote",
                cluster(
                    service(ServiceKind::ClusterIp, http()),
                    vec![slice(
                        "a",
                        &[("http", 8080)],
                        vec![endpoint(2, true, "node2")],
                    )],
                ),
                Some(vec!["2:8080"]),
            ),
            (
                "a slice without the port contributes nothing",
                cluster(
                    service(ServiceKind::ClusterIp, http()),
                    vec![slice("a", &[("metrics", 9100)], vec![ready(2)])],
                ),
                Some(vec![]),
            ),
            (
                "no slices: the frontend exists with no backends",
                cluster(service(ServiceKind::ClusterIp, http()), vec![]),
                Some(vec![]),
            ),
            (
                "numeric targetPort with a portless slice",
                cluster(
                    service(
                        ServiceKind::ClusterIp,
                        vec![port("", 80, Protocol::Tcp, TargetPort::Number(8081))],
                    ),
                    vec![slice("a", &[], vec![ready(2)])],
                ),
                Some(vec!["2:8081L"]),
            ),
            (
                "NodePort services keep their ClusterIP frontend",
                cluster(
                    service(ServiceKind::NodePort, http()),
                    vec![slice("a", &[("http", 8080)], vec![ready(2)])],
                ),
                Some(vec!["2:8080L"]),
            ),
            (
                "headless services are skipped",
                cluster(
                    service(ServiceKind::Headless, http()),
                    vec![slice("a", &[("http", 8080)], vec![ready(2)])],
                ),
                None,
            ),
            (
                "ExternalName services are skipped",
                cluster(service(ServiceKind::ExternalName, http()), vec![]),
                None,
            ),
        ];
        for (rule, cluster, expected) in cases {
            let expected = expected.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(backends(&cluster), expected, "{rule}");
        }
    }

    #[test]
    fn mirrored_slices_count_only_without_a_real_slice() {
        let mut mirrored = slice(
            "web-mirror-0",
            &[("http", 8080)],
            vec![endpoint(5, true, "node1")],
        );
        mirrored.mirrored = true;
        let only_mirrored = cluster(
            service(ServiceKind::ClusterIp, http()),
            vec![mirrored.clone()],
        );
        assert_eq!(backends(&only_mirrored), Some(vec!["5:8080L".to_string()]));
        let both = cluster(
            service(ServiceKind::ClusterIp, http()),
            vec![
                mirrored,
                slice("a", &[("http", 8080)], vec![endpoint(2, true, "node1")]),
            ],
        );
        assert_eq!(backends(&both), Some(vec!["2:8080L".to_string()]));
    }

    #[test]
    fn other_address_families_are_ignored_with_a_warning() {
        let mut v6 = slice("v6", &[("http", 8080)], vec![]);
        v6.address_type = AddressType::Other("IPv6".into());
        let c = cluster(service(ServiceKind::ClusterIp, http()), vec![v6]);
        let (state, warnings) = desired_state(&c, "node1");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("default/v6") && warnings[0].contains("IPv6"),
            "{warnings:?}"
        );
        assert!(state.values().all(|f| f.backends.is_empty()));
    }

    #[test]
    fn the_examples_give_the_documented_state() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let loaded = crate::manifest::load_dir(&dir, &crate::manifest::ManifestCache::default());
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let (state, warnings) = desired_state(&loaded.cluster(), "node1");
        assert!(warnings.is_empty(), "{warnings:?}");
        let lines: Vec<String> = state
            .iter()
            .map(|(f, d)| {
                let b: Vec<String> = d
                    .backends
                    .iter()
                    .map(|(a, i)| format!("{a}{}", if i.local { "(local)" } else { "" }))
                    .collect();
                format!("{} {f} -> {}", d.service, b.join(","))
            })
            .collect();
        assert_eq!(
            lines,
            [
                "default/web-service 10.96.0.10:53/UDP -> 10.244.1.2:5353(local),10.244.1.3:5353(local),10.244.1.4:5353(local),10.244.2.2:5353",
                "default/web-service 10.96.0.10:80/TCP -> 10.244.1.2:8080(local),10.244.1.3:8080(local),10.244.1.4:8080(local),10.244.2.2:8080",
                "default/external-service 10.96.0.20:80/TCP -> 10.244.1.3:8080(local),10.244.2.2:8080",
            ]
        );
    }
}
