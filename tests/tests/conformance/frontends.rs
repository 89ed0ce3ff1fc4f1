//! Which frontends a Service gets and what they carry: contested frontends
//! (item 1), `loadBalancerSourceRanges` (item 3), SCTP ports (item 5),
//! `ipMode: Proxy` ingress (item 6), session affinity, no endpoints,
//! headless and ExternalName Services, as kube-proxy's `serviceport.go`
//! and proxiers read a Service.

use super::{
    yaml::{ready, service, service_with, slice, web, web_slice, web_slice6},
    Row,
};

/// kube-dns at 10.96.0.10:53/UDP with one endpoint.
fn kube_dns() -> Vec<String> {
    vec![
        service_with(
            "name: kube-dns, namespace: kube-system",
            "clusterIP: 10.96.0.10, ports: [{name: dns, port: 53, protocol: UDP}]",
            "",
        ),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: kube-dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}\n\
         addressType: IPv4\nports: [{name: dns, port: 53, protocol: UDP}]\n\
         endpoints: [{addresses: [10.244.1.2], nodeName: node1}]\n"
            .to_string(),
    ]
}

/// `default/zz-a` at 10.96.0.20, claiming kube-dns's cluster IP as an external IP.
fn hijacker() -> Vec<String> {
    vec![
        service(
            "zz-a",
            "clusterIP: 10.96.0.20, externalIPs: [10.96.0.10], ports: [{name: dns, port: 53, protocol: UDP}]",
        ),
        slice(
            "zz-a-1",
            "zz-a",
            "[{name: dns, port: 53, protocol: UDP}]",
            &[ready("10.244.9.9", "node2")],
        ),
    ]
}

/// Service `default/{name}` at `cluster_ip`, external IP 203.0.113.9:80,
/// created at `created` (none: ""), with one endpoint `backend`:8080.
fn claimant(name: &str, cluster_ip: &str, created: &str, backend: &str) -> Vec<String> {
    let created = if created.is_empty() {
        String::new()
    } else {
        format!(", creationTimestamp: \"{created}\"")
    };
    vec![
        service_with(
            &format!("name: {name}, namespace: default{created}"),
            &format!("clusterIP: {cluster_ip}, externalIPs: [203.0.113.9], ports: [{{port: 80, targetPort: 8080}}]"),
            "",
        ),
        slice(&format!("{name}-1"), name, "[{port: 8080}]", &[ready(backend, "node2")]),
    ]
}

fn concat(parts: &[Vec<String>]) -> Vec<String> {
    parts.concat()
}

/// A LoadBalancer `web` (node port 30080, external IP 203.0.113.7) with
/// `metadata` and `spec` besides, and `ingress` (a flow sequence).
fn load_balancer(metadata: &str, spec: &str, ingress: &str) -> String {
    let sep = if spec.is_empty() { "" } else { ", " };
    service_with(
        &format!("name: web, namespace: default{metadata}"),
        &format!(
            "type: LoadBalancer, clusterIP: 10.96.0.10, externalIPs: [203.0.113.7], \
             ports: [{{name: http, port: 80, targetPort: http, nodePort: 30080}}]{sep}{spec}"
        ),
        &format!("loadBalancer: {{ingress: {ingress}}}"),
    )
}

fn one_endpoint() -> String {
    web_slice("web-1", &[ready("10.244.2.2", "node2")])
}

const OPEN: [&str; 3] = [
    "default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080",
    "default/web 203.0.113.7:80/TCP -> 10.244.2.2:8080",
    "default/web *:30080/TCP -> 10.244.2.2:8080 | at 192.168.50.11",
];

/// [`OPEN`] and the load-balancer IPs `lines`.
fn open_and(lines: &[&'static str]) -> Vec<&'static str> {
    OPEN.iter().chain(lines).copied().collect()
}

#[allow(clippy::too_many_lines)] // one table
pub fn rows() -> Vec<Row> {
    let dns_owned = [
        "kube-system/kube-dns 10.96.0.10:53/UDP -> 10.244.1.2:53",
        "default/zz-a 10.96.0.20:53/UDP -> 10.244.9.9:53",
        "! default/zz-a FrontendConflict",
    ];
    vec![
        Row::new(
            "item 1: an external IP equal to another Service's cluster IP does not take it; it gets it when the cluster IP's Service goes, and gives it back",
            concat(&[kube_dns(), hijacker()]),
            &dns_owned,
        )
        .then(
            hijacker(),
            &[
                "default/zz-a 10.96.0.10:53/UDP -> 10.244.9.9:53",
                "default/zz-a 10.96.0.20:53/UDP -> 10.244.9.9:53",
            ],
        )
        .then(concat(&[hijacker(), kube_dns()]), &dns_owned),
        Row::new(
            "item 1: two external claims: the older Service by creationTimestamp, whatever the names; the other takes over when it goes",
            concat(&[
                claimant("a", "10.96.0.21", "2024-06-01T00:00:00Z", "10.244.2.10"),
                claimant("b", "10.96.0.22", "2024-01-01T00:00:00Z", "10.244.2.11"),
            ]),
            &[
                "default/a 10.96.0.21:80/TCP -> 10.244.2.10:8080",
                "default/b 10.96.0.22:80/TCP -> 10.244.2.11:8080",
                "default/b 203.0.113.9:80/TCP -> 10.244.2.11:8080",
                "! default/a FrontendConflict",
            ],
        )
        .then(
            claimant("a", "10.96.0.21", "2024-06-01T00:00:00Z", "10.244.2.10"),
            &[
                "default/a 10.96.0.21:80/TCP -> 10.244.2.10:8080",
                "default/a 203.0.113.9:80/TCP -> 10.244.2.10:8080",
            ],
        ),
        Row::new(
            "item 1: two external claims of one age: by namespace/name",
            concat(&[
                claimant("b", "10.96.0.22", "2024-01-01T00:00:00Z", "10.244.2.11"),
                claimant("a", "10.96.0.21", "2024-01-01T00:00:00Z", "10.244.2.10"),
            ]),
            &[
                "default/a 10.96.0.21:80/TCP -> 10.244.2.10:8080",
                "default/a 203.0.113.9:80/TCP -> 10.244.2.10:8080",
                "default/b 10.96.0.22:80/TCP -> 10.244.2.11:8080",
                "! default/b FrontendConflict",
            ],
        ),
        Row::new(
            "item 1: a Service with a creationTimestamp before one without (manifests)",
            concat(&[
                claimant("a", "10.96.0.21", "", "10.244.2.10"),
                claimant("b", "10.96.0.22", "2024-01-01T00:00:00Z", "10.244.2.11"),
            ]),
            &[
                "default/a 10.96.0.21:80/TCP -> 10.244.2.10:8080",
                "default/b 10.96.0.22:80/TCP -> 10.244.2.11:8080",
                "default/b 203.0.113.9:80/TCP -> 10.244.2.11:8080",
                "! default/a FrontendConflict",
            ],
        ),
        Row::new(
            "item 3: loadBalancerSourceRanges restrict the load-balancer IP only (node outside the ranges)",
            vec![
                load_balancer("", "loadBalancerSourceRanges: [10.0.0.0/8]", "[{ip: 198.51.100.7}]"),
                one_endpoint(),
            ],
            &open_and(&["default/web 198.51.100.7:80/TCP -> 10.244.2.2:8080 | from 10.0.0.0/8"]),
        ),
        Row::new(
            "item 3: a node inside the ranges adds every load-balancer IP as a /32",
            vec![
                load_balancer(
                    "",
                    "loadBalancerSourceRanges: [10.0.0.0/8, 192.168.0.0/16]",
                    "[{ip: 198.51.100.7}, {ip: 198.51.100.8}]",
                ),
                one_endpoint(),
            ],
            &open_and(&[
                "default/web 198.51.100.7:80/TCP -> 10.244.2.2:8080 | from 10.0.0.0/8, 192.168.0.0/16, 198.51.100.7/32, 198.51.100.8/32",
                "default/web 198.51.100.8:80/TCP -> 10.244.2.2:8080 | from 10.0.0.0/8, 192.168.0.0/16, 198.51.100.7/32, 198.51.100.8/32",
            ]),
        ),
        Row::new(
            "item 3: ranges padded with spaces or with host bits read as their networks",
            vec![
                load_balancer("", "loadBalancerSourceRanges: [\" 10.1.2.3/8 \"]", "[{ip: 198.51.100.7}]"),
                one_endpoint(),
            ],
            &open_and(&["default/web 198.51.100.7:80/TCP -> 10.244.2.2:8080 | from 10.0.0.0/8"]),
        ),
        Row::new(
            // kube-proxy treats a zero-masked range as no restriction at all.
            "item 3: 0.0.0.0/0 restricts nothing",
            vec![
                load_balancer("", "loadBalancerSourceRanges: [0.0.0.0/0, 10.0.0.0/8]", "[{ip: 198.51.100.7}]"),
                one_endpoint(),
            ],
            &open_and(&["default/web 198.51.100.7:80/TCP -> 10.244.2.2:8080"]),
        ),
        Row::new(
            // kube-proxy reads only spec.loadBalancerSourceRanges; the annotation is
            // for cloud load balancers.
            "item 3: the source-ranges annotation restricts nothing",
            vec![
                load_balancer(
                    ", annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: \"10.0.0.0/8,172.16.0.0/12\"}",
                    "",
                    "[{ip: 198.51.100.7}]",
                ),
                one_endpoint(),
            ],
            &open_and(&["default/web 198.51.100.7:80/TCP -> 10.244.2.2:8080"]),
        ),
        Row::new(
            "item 6: an ingress with ipMode: Proxy is not programmed, one with VIP is",
            vec![
                load_balancer("", "", "[{ip: 198.51.100.7, ipMode: VIP}, {ip: 198.51.100.8, ipMode: Proxy}]"),
                one_endpoint(),
            ],
            &open_and(&["default/web 198.51.100.7:80/TCP -> 10.244.2.2:8080"]),
        ),
        Row::new(
            "item 5: an SCTP port is skipped alone, the other port served",
            vec![
                service(
                    "web",
                    "clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: http}, {name: sig, port: 9999, protocol: SCTP}]",
                ),
                slice(
                    "web-1",
                    "web",
                    "[{name: http, port: 8080}, {name: sig, port: 9999, protocol: SCTP}]",
                    &[ready("10.244.1.2", "node1")],
                ),
            ],
            &[
                "default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080",
                "! default/web UnsupportedPort",
            ],
        ),
        Row::new(
            "sessionAffinity: ClientIP: the default timeout (10800 s) on every frontend",
            vec![
                service(
                    "web",
                    "type: NodePort, clusterIP: 10.96.0.10, sessionAffinity: ClientIP, ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]",
                ),
                one_endpoint(),
            ],
            &[
                "default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080 | affinity 10800s",
                "default/web *:30080/TCP -> 10.244.2.2:8080 | affinity 10800s | at 192.168.50.11",
            ],
        ),
        Row::new(
            "sessionAffinity: ClientIP with timeoutSeconds",
            vec![
                web("sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}"),
                one_endpoint(),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080 | affinity 60s"],
        ),
        Row::new(
            "no endpoints (no slice): every frontend rejects",
            vec![service(
                "web",
                "type: NodePort, clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]",
            )],
            &[
                "default/web 10.96.0.10:80/TCP -> reject",
                "default/web *:30080/TCP -> reject | at 192.168.50.11",
            ],
        ),
        Row::new(
            "dual-stack: each cluster IP takes its own family's slices (none for IPv6: it rejects)",
            vec![
                web("clusterIPs: [10.96.0.10, \"fd00::10\"], ipFamilies: [IPv4, IPv6], ipFamilyPolicy: PreferDualStack"),
                one_endpoint(),
            ],
            &[
                "default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080",
                "default/web [fd00::10]:80/TCP -> reject",
            ],
        )
        .then(
            vec![
                web("clusterIPs: [10.96.0.10, \"fd00::10\"], ipFamilies: [IPv4, IPv6], ipFamilyPolicy: PreferDualStack"),
                one_endpoint(),
                web_slice6("web-2", &[ready("\"fd00:244:2::2\"", "node2")]),
            ],
            &[
                "default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080",
                "default/web [fd00::10]:80/TCP -> [fd00:244:2::2]:8080",
            ],
        ),
        Row::new(
            "IPv6 node ports are written and served, on the node's IPv6 node-port addresses",
            vec![
                service(
                    "web",
                    "type: NodePort, clusterIP: \"fd00::10\", ipFamilies: [IPv6], ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]",
                ),
                web_slice6("web-2", &[ready("\"fd00:244:2::2\"", "node2")]),
            ],
            &[
                "default/web [fd00::10]:80/TCP -> [fd00:244:2::2]:8080",
                "default/web node port 30080/TCP -> [fd00:244:2::2]:8080 | at fd00:50::11",
            ],
        ),
        Row::new(
            "headless and ExternalName Services: no frontend",
            vec![
                service("web", "clusterIP: None, ports: [{name: http, port: 80, targetPort: http}]"),
                one_endpoint(),
                service("ext", "type: ExternalName, externalName: db.example.com"),
            ],
            &[],
        ),
    ]
}
