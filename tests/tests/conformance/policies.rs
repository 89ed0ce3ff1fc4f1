//! Traffic policies (`internalTrafficPolicy`, `externalTrafficPolicy`,
//! issue 13 item 2), topology hints and the terminating fallback, as
//! kube-proxy's `CategorizeEndpoints` and its table (`topology_test.go`)
//! decide them.

use super::{
    yaml::{for_nodes, for_zones, node1, ready, service, web, web_slice, with},
    Row,
};

/// A NodePort `web` with an external IP and `externalTrafficPolicy: Local`.
const NODE_PORT_LOCAL: &str = "type: NodePort, clusterIP: 10.96.0.10, externalIPs: [203.0.113.7], externalTrafficPolicy: Local,
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]";

/// A LoadBalancer `web` (198.51.100.7, node port 30080) with `policy`.
fn load_balancer(policy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{type: LoadBalancer, clusterIP: 10.96.0.10, externalTrafficPolicy: {policy}, healthCheckNodePort: 32000,\n  \
         ports: [{{name: http, port: 80, targetPort: http, nodePort: 30080}}]}}\n\
         status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.7}}]}}}}\n"
    )
}

#[allow(clippy::too_many_lines)] // one table
pub fn rows() -> Vec<Row> {
    let two_nodes = || {
        web_slice(
            "web-1",
            &[
                ready("10.244.1.2", "node1"),
                ready("10.244.2.2", "node2"),
                with("10.244.2.3", "node2", "ready: false"),
            ],
        )
    };
    let remote_only = || web_slice("web-1", &[ready("10.244.2.2", "node2")]);
    vec![
        Row::new(
            "Cluster: every ready endpoint; a not-ready one only keeps its flows",
            vec![web(""), two_nodes()],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080, 10.244.2.2:8080 | kept 10.244.2.3:8080"],
        ),
        Row::new(
            "internalTrafficPolicy: Local: this node's endpoints at the cluster IP",
            vec![web("internalTrafficPolicy: Local"), two_nodes()],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080 | kept 10.244.2.2:8080, 10.244.2.3:8080"],
        ),
        Row::new(
            "internalTrafficPolicy: Local, no local endpoint: dropped, not rejected",
            vec![web("internalTrafficPolicy: Local"), remote_only()],
            &["default/web 10.96.0.10:80/TCP -> drop | kept 10.244.2.2:8080"],
        ),
        Row::new(
            "item 2: externalTrafficPolicy: Local: outside clients get local endpoints, pods all (external IP, node port); the cluster IP all",
            vec![service("web", NODE_PORT_LOCAL), two_nodes()],
            &[
                "default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080, 10.244.2.2:8080 | kept 10.244.2.3:8080",
                "default/web 203.0.113.7:80/TCP -> 10.244.1.2:8080 | pods -> 10.244.1.2:8080, 10.244.2.2:8080 | kept 10.244.2.3:8080",
                "default/web *:30080/TCP -> 10.244.1.2:8080 | pods -> 10.244.1.2:8080, 10.244.2.2:8080 | kept 10.244.2.3:8080 | at 192.168.50.11",
            ],
        ),
        Row::new(
            "item 2: externalTrafficPolicy: Local on a node without local endpoints: outside clients dropped, pods served",
            vec![load_balancer("Local"), remote_only()],
            &[
                "default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080",
                "default/web 198.51.100.7:80/TCP -> drop | pods -> 10.244.2.2:8080",
                "default/web *:30080/TCP -> drop | pods -> 10.244.2.2:8080 | at 192.168.50.11",
            ],
        ),
        Row::new(
            "externalTrafficPolicy: Cluster: one table for everyone",
            vec![load_balancer("Cluster"), remote_only()],
            &[
                "default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080",
                "default/web 198.51.100.7:80/TCP -> 10.244.2.2:8080",
                "default/web *:30080/TCP -> 10.244.2.2:8080 | at 192.168.50.11",
            ],
        ),
        Row::new(
            "externalTrafficPolicy: Local, no endpoint anywhere: rejected everywhere",
            vec![load_balancer("Local"), web_slice("web-1", &[])],
            &[
                "default/web 10.96.0.10:80/TCP -> reject",
                "default/web 198.51.100.7:80/TCP -> reject",
                "default/web *:30080/TCP -> reject | at 192.168.50.11",
            ],
        ),
        Row::new(
            "externalTrafficPolicy: Local: the local serving-terminating endpoint for outside clients, the ready remote one for pods",
            vec![
                load_balancer("Local"),
                web_slice(
                    "web-1",
                    &[
                        with("10.244.1.2", "node1", "ready: false, serving: true, terminating: true"),
                        ready("10.244.2.2", "node2"),
                    ],
                ),
            ],
            &[
                "default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080 | kept 10.244.1.2:8080",
                "default/web 198.51.100.7:80/TCP -> 10.244.1.2:8080 | pods -> 10.244.2.2:8080",
                "default/web *:30080/TCP -> 10.244.1.2:8080 | pods -> 10.244.2.2:8080 | at 192.168.50.11",
            ],
        ),
        Row::new(
            "externalTrafficPolicy: Local, no ready endpoint, a remote terminating one: outside clients dropped (not rejected), pods to it",
            vec![
                load_balancer("Local"),
                web_slice(
                    "web-1",
                    &[with("10.244.2.2", "node2", "ready: false, serving: true, terminating: true")],
                ),
            ],
            &[
                "default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080",
                "default/web 198.51.100.7:80/TCP -> drop | pods -> 10.244.2.2:8080",
                "default/web *:30080/TCP -> drop | pods -> 10.244.2.2:8080 | at 192.168.50.11",
            ],
        ),
        Row::new(
            "externalTrafficPolicy: Local: local endpoints ignore hints, pods follow the zone hints",
            vec![
                load_balancer("Local"),
                web_slice(
                    "web-1",
                    &[
                        for_zones("10.244.1.2", "node1", "zone-b"),
                        for_zones("10.244.1.3", "node1", "zone-a"),
                        for_zones("10.244.2.2", "node2", "zone-a"),
                    ],
                ),
            ],
            &[
                "default/web 10.96.0.10:80/TCP -> 10.244.1.3:8080, 10.244.2.2:8080 | kept 10.244.1.2:8080",
                "default/web 198.51.100.7:80/TCP -> 10.244.1.2:8080, 10.244.1.3:8080 | pods -> 10.244.1.3:8080, 10.244.2.2:8080",
                "default/web *:30080/TCP -> 10.244.1.2:8080, 10.244.1.3:8080 | pods -> 10.244.1.3:8080, 10.244.2.2:8080 | at 192.168.50.11",
            ],
        ),
        Row::new(
            "zone hints: only the endpoints hinted for this node's zone",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        for_zones("10.244.1.3", "node1", "zone-a"),
                        for_zones("10.244.1.4", "node2", "zone-b"),
                        for_zones("10.244.1.5", "node3", "zone-c"),
                        for_zones("10.244.1.6", "node4", "zone-a"),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.3:8080, 10.244.1.6:8080 | kept 10.244.1.4:8080, 10.244.1.5:8080"],
        ),
        Row::new(
            "zone hints: one ready endpoint without hints disables them",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        for_zones("10.244.1.3", "node1", "zone-a"),
                        ready("10.244.1.4", "node2"),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.3:8080, 10.244.1.4:8080"],
        ),
        Row::new(
            "zone hints: none for this zone: every endpoint",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        for_zones("10.244.1.3", "node2", "zone-b"),
                        for_zones("10.244.1.4", "node3", "zone-c"),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.3:8080, 10.244.1.4:8080"],
        ),
        Row::new(
            "zone hints on a node without a zone: every endpoint",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        for_zones("10.244.1.3", "node1", "zone-a"),
                        for_zones("10.244.1.4", "node2", "zone-b"),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.3:8080, 10.244.1.4:8080"],
        )
        .on(lb_userspace::desired::NodeInfo {
            zone: None,
            ..node1()
        }),
        Row::new(
            "zone hints: several zones per endpoint",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        for_zones("10.244.1.3", "node2", "zone-a, zone-b"),
                        for_zones("10.244.1.4", "node3", "zone-c"),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.3:8080 | kept 10.244.1.4:8080"],
        ),
        Row::new(
            "node hints: only the endpoints hinted for this node, before zone hints",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        for_nodes("10.244.1.2", "node1", "node1", "zone-a"),
                        for_nodes("10.244.1.3", "node5", "node5", "zone-a"),
                        for_nodes("10.244.2.2", "node2", "node2", "zone-b"),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080 | kept 10.244.1.3:8080, 10.244.2.2:8080"],
        ),
        Row::new(
            "node hints: none for this node: the zone hints",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        for_nodes("10.244.1.3", "node5", "node5", "zone-a"),
                        for_nodes("10.244.2.2", "node2", "node2", "zone-b"),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.3:8080 | kept 10.244.2.2:8080"],
        ),
        Row::new(
            "terminating fallback: no ready endpoint: the serving terminating ones",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        with("10.244.1.2", "node1", "ready: false, serving: true, terminating: true"),
                        with("10.244.1.3", "node1", "ready: false, serving: false, terminating: true"),
                        with("10.244.2.2", "node2", "ready: false, serving: true, terminating: true"),
                        with("10.244.2.3", "node2", "ready: false"),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080, 10.244.2.2:8080 | kept 10.244.1.3:8080, 10.244.2.3:8080"],
        ),
        Row::new(
            "terminating endpoints are not used while one is ready",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[
                        with("10.244.1.2", "node1", "ready: false, serving: true, terminating: true"),
                        ready("10.244.2.2", "node2"),
                    ],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> 10.244.2.2:8080 | kept 10.244.1.2:8080"],
        ),
        Row::new(
            "only not-ready endpoints: no endpoints, rejected",
            vec![
                web(""),
                web_slice(
                    "web-1",
                    &[with("10.244.1.2", "node1", "ready: false, serving: false")],
                ),
            ],
            &["default/web 10.96.0.10:80/TCP -> reject | kept 10.244.1.2:8080"],
        ),
    ]
}
