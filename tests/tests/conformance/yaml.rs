//! Manifests for the rows, in YAML, and the nodes they run on.

use std::net::Ipv4Addr;

use lb_userspace::desired::{NodeAddrs6, NodeInfo};

/// This node: `node1` in `zone-a`, at 192.168.50.11 and `fd00:50::11`.
pub fn node1() -> NodeInfo {
    NodeInfo {
        name: "node1".into(),
        zone: Some("zone-a".into()),
        addresses: vec![Ipv4Addr::new(192, 168, 50, 11)],
        local_addresses: Vec::new(),
        node_port_addresses: None,
        v6: NodeAddrs6 {
            addresses: vec!["fd00:50::11".parse().expect("an IPv6 address")],
            ..NodeAddrs6::default()
        },
    }
}

/// A Service `default/{name}` with `spec` (the inside of a flow mapping).
pub fn service(name: &str, spec: &str) -> String {
    service_with(&format!("name: {name}, namespace: default"), spec, "")
}

/// A Service with `metadata`, `spec` and `status` (each the inside of a
/// flow mapping; an empty `status` is left out).
pub fn service_with(metadata: &str, spec: &str, status: &str) -> String {
    let status = if status.is_empty() {
        String::new()
    } else {
        format!("status: {{{status}}}\n")
    };
    format!("apiVersion: v1\nkind: Service\nmetadata: {{{metadata}}}\nspec: {{{spec}}}\n{status}")
}

/// The Service `default/web` at 10.96.0.10, port `http` 80 to the named
/// targetPort `http`, with `spec` besides (may be empty).
pub fn web(spec: &str) -> String {
    let sep = if spec.is_empty() { "" } else { ", " };
    service(
        "web",
        &format!(
            "clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, targetPort: http}}]{sep}{spec}"
        ),
    )
}

/// An EndpointSlice `default/{name}` of `service` with `ports` (a flow
/// sequence) and `endpoints` (flow mappings).
pub fn slice(name: &str, service: &str, ports: &str, endpoints: &[String]) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: {ports}\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// An IPv6 slice `default/{name}` of `default/web` whose port `http` is 8080.
pub fn web_slice6(name: &str, endpoints: &[String]) -> String {
    slice(name, "web", "[{name: http, port: 8080}]", endpoints)
        .replace("addressType: IPv4", "addressType: IPv6")
}

/// A slice `default/{name}` of `default/web` whose port `http` is 8080.
pub fn web_slice(name: &str, endpoints: &[String]) -> String {
    slice(name, "web", "[{name: http, port: 8080}]", endpoints)
}

/// A ready endpoint (conditions unset: kube-proxy reads it as ready).
pub fn ready(ip: &str, node: &str) -> String {
    format!("{{addresses: [{ip}], nodeName: {node}}}")
}

/// An endpoint with `conditions` (the inside of a flow mapping).
pub fn with(ip: &str, node: &str, conditions: &str) -> String {
    format!("{{addresses: [{ip}], nodeName: {node}, conditions: {{{conditions}}}}}")
}

/// A ready endpoint hinted for `zones` (comma-separated).
pub fn for_zones(ip: &str, node: &str, zones: &str) -> String {
    let zones: Vec<String> = zones
        .split(',')
        .map(|z| format!("{{name: {}}}", z.trim()))
        .collect();
    format!(
        "{{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}, hints: {{forZones: [{}]}}}}",
        zones.join(", ")
    )
}

/// A ready endpoint hinted for `nodes` (comma-separated) and its zone.
pub fn for_nodes(ip: &str, node: &str, nodes: &str, zone: &str) -> String {
    let nodes: Vec<String> = nodes
        .split(',')
        .map(|n| format!("{{name: {}}}", n.trim()))
        .collect();
    format!(
        "{{addresses: [{ip}], nodeName: {node}, hints: {{forNodes: [{}], forZones: [{{name: {zone}}}]}}}}",
        nodes.join(", ")
    )
}
