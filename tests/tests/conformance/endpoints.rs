//! Where endpoints come from: slices and their ports (named targetPorts,
//! item 9), the union of a Service's slices (item 7), conditions (item 8)
//! and Endpoints mirrored as the `EndpointSliceMirroring` controller does
//! (item 12), as kube-proxy's `endpointslicecache.go` reads them.

use super::{
    yaml::{for_zones, ready, service, slice, web, web_slice, with},
    Row,
};

/// `default/web` without a selector, port `http` 80 to `http`.
const NO_SELECTOR: &str =
    "clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: http}]";

/// Endpoints `default/web` with one subset: ready `addresses`, then
/// `not_ready` ones, port `http` 8080.
fn endpoints(addresses: &[&str], not_ready: &[&str]) -> String {
    let list = |ips: &[&str]| -> String {
        let items: Vec<String> = ips
            .iter()
            .map(|ip| format!("{{ip: \"{ip}\", nodeName: node1}}"))
            .collect();
        format!("[{}]", items.join(", "))
    };
    format!(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: web, namespace: default}}\n\
         subsets: [{{notReadyAddresses: {}, addresses: {}, ports: [{{name: http, port: 8080}}]}}]\n",
        list(not_ready),
        list(addresses)
    )
}

/// The first `n` addresses of 10.244.16.0/20, one endpoint each.
fn many(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| std::net::Ipv4Addr::from(0x0af4_1000 + i).to_string())
        .collect()
}

#[allow(clippy::too_many_lines)] // one table
pub fn rows() -> Vec<Row> {
    let big = many(1_000);
    let big_refs: Vec<&str> = big.iter().map(String::as_str).collect();
    let big_backends: Vec<String> = big.iter().map(|ip| format!("{ip}:8080")).collect();
    vec![
        Row::new(
            "named targetPort: resolved per slice (two slices, two port numbers)",
            vec![
                web(""),
                web_slice("web-1", &[ready("10.244.1.2", "node1")]),
                slice("web-2", "web", "[{name: http, port: 8081}]", &[ready("10.244.2.2", "node2")]),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080, 10.244.2.2:8081"],
        ),
        Row::new(
            "the slice's port number wins over a numeric targetPort",
            vec![
                service("web", "clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 9090}]"),
                slice("web-1", "web", "[{port: 8080}]", &[ready("10.244.1.2", "node1")]),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080"],
        ),
        Row::new(
            "a slice port of another name gives the Service port nothing: rejected",
            vec![
                web(""),
                slice("web-1", "web", "[{name: metrics, port: 9100}]", &[ready("10.244.1.2", "node1")]),
            ],
            &["default/web 10.96.0.10:80/TCP -> reject"],
        ),
        Row::new(
            "two Service ports, each to its slice port",
            vec![
                service(
                    "web",
                    "clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP}]",
                ),
                slice(
                    "web-1",
                    "web",
                    "[{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]",
                    &[ready("10.244.1.2", "node1")],
                ),
            ],
            &[
                "default/web 10.96.0.10:53/UDP -> 10.244.1.2:5353",
                "default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080",
            ],
        ),
        Row::new(
            "an address in two slices counts once",
            vec![
                web(""),
                web_slice("web-1", &[ready("10.244.1.2", "node1")]),
                web_slice("web-2", &[ready("10.244.1.2", "node1"), ready("10.244.2.2", "node2")]),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080, 10.244.2.2:8080"],
        ),
        Row::new(
            "item 9: a slice without ports gives no endpoints, even to a numeric targetPort",
            vec![
                service("web", "clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]"),
                slice("web-1", "web", "[]", &[ready("10.244.1.2", "node1")]),
            ],
            &["default/web 10.96.0.10:80/TCP -> reject"],
        ),
        Row::new(
            "item 9: a portless slice beside one with the port: only the latter",
            vec![
                service("web", "clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]"),
                slice("web-1", "web", "[]", &[ready("10.244.1.2", "node1")]),
                slice("web-2", "web", "[{port: 8080}]", &[ready("10.244.2.2", "node2")]),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080"],
        ),
        Row::new(
            "item 8: serving unset on a terminating endpoint counts as serving (kube-proxy, not the API default)",
            vec![
                web(""),
                web_slice("web-1", &[with("10.244.2.2", "node2", "ready: false, terminating: true")]),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080"],
        ),
        Row::new(
            "item 8: the terminating fallback ignores zone hints",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        "{addresses: [10.244.1.2], nodeName: node1, conditions: {ready: false, serving: true, terminating: true}, hints: {forZones: [{name: zone-a}]}}".to_string(),
                        "{addresses: [10.244.2.2], nodeName: node2, conditions: {ready: false, serving: true, terminating: true}, hints: {forZones: [{name: zone-b}]}}".to_string(),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080, 10.244.2.2:8080"],
        ),
        Row::new(
            "item 8: hints count on ready endpoints only (a terminating one without hints does not disable them)",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        for_zones("10.244.1.2", "node1", "zone-a"),
                        for_zones("10.244.2.2", "node2", "zone-b"),
                        with("10.244.2.3", "node2", "ready: false, serving: true, terminating: true"),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080 | kept 10.244.2.2:8080, 10.244.2.3:8080"],
        ),
        Row::new(
            "item 7: mirrored and own slices are united",
            vec![
                service("web", NO_SELECTOR),
                endpoints(&["10.244.1.5"], &[]),
                web_slice("web-1", &[ready("10.244.1.2", "node1")]),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080, 10.244.1.5:8080"],
        ),
        Row::new(
            "item 12: Endpoints of a Service with a selector are not mirrored",
            vec![
                service("web", &format!("{NO_SELECTOR}, selector: {{app: web}}")),
                endpoints(&["10.244.1.5"], &[]),
                web_slice("web-1", &[ready("10.244.1.2", "node1")]),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080"],
        ),
        Row::new(
            "item 12: Endpoints without a Service are not mirrored",
            vec![endpoints(&["10.244.1.5"], &[])],
            &[],
        ),
        Row::new(
            "item 12: mirrored not-ready addresses are listed, not selected",
            vec![service("web", NO_SELECTOR), endpoints(&["10.244.1.5"], &["10.244.1.6"])],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.5:8080 | kept 10.244.1.6:8080"],
        ),
        Row::new(
            "item 12: an invalid address is skipped alone",
            vec![
                service("web", NO_SELECTOR),
                endpoints(&["10.244.1.5", "not-an-ip", "10.244.1.7"], &[]),
            ],
            &[
                "? Endpoints default/web: address \"not-an-ip\" is not a valid IP address; not mirrored",
                "default/web 10.96.0.10:80/TCP -> 10.244.1.5:8080, 10.244.1.7:8080",
            ],
        ),
        Row::new(
            "item 12: at most 1,000 addresses per subset, ready ones first",
            vec![service("web", NO_SELECTOR), endpoints(&big_refs, &["10.244.1.6"])],
            &[],
        )
        .expecting(vec![
            "? Endpoints default/web: subset 0 has more than 1000 addresses; 1 not mirrored (ready ones first)".to_string(),
            format!("default/web 10.96.0.10:80/TCP -> {}", big_backends.join(", ")),
        ]),
    ]
}
