//! End to end with `--source kube`: kube-proxy's health endpoints on node1,
//! asked from the client outside, as a cloud load balancer asks. The health
//! check node port of an `externalTrafficPolicy: Local` LoadBalancer Service
//! answers 200 while node1 has a ready endpoint of it, 503 once its only
//! endpoint is on node2, and closes when the Service goes; `:10256/healthz`
//! answers 200, then 503 once node1 carries the autoscaler's deletion taint,
//! while `/livez` stays 200. Needs root.

use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_tests::{
    agent::Agent,
    apiserver::TestApiServer,
    netns::Netns,
    topology::{ClusterTopology, NODE1_IP},
};

/// The Service's health check node port.
const HC_PORT: u16 = 32100;
/// kube-proxy's health port.
const HEALTHZ_PORT: u16 = 10256;

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: hc, namespace: default}\n\
spec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.70\n  externalTrafficPolicy: Local\n\
\x20 healthCheckNodePort: 32100\n\
\x20 ports:\n  - {name: http, port: 80, nodePort: 30095, protocol: TCP, targetPort: 8080}\n";

/// The Service's slice with one ready endpoint on `node`.
fn slice(node: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: hc-1, namespace: default, labels: {{kubernetes.io/service-name: hc}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
         endpoints: [{{addresses: [\"10.244.1.2\"], nodeName: {node}, conditions: {{ready: true}}}}]\n"
    )
}

/// node1's Node, with `taints` (YAML list).
fn node(taints: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata: {{name: node1}}\nspec: {{taints: {taints}}}\n")
}

/// Status and body of `GET path` from `ns` to node1's `port`.
fn get(ns: &Netns, port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::V4(SocketAddrV4::new(NODE1_IP, port));
    let mut stream =
        ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))??;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_string()))
}

/// Waits up to 10 s until `GET` answers `status`; returns the body.
fn until_status(ns: &Netns, port: u16, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(ns, port, path);
        match &answer {
            Ok((s, body)) if *s == status => return body.clone(),
            _ if Instant::now() > deadline => {
                panic!("{NODE1_IP}:{port}{path}: wanted {status}, got {answer:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn health_check_node_port_and_proxy_healthz_follow_endpoints_and_the_node() {
    let topo = ClusterTopology::new().unwrap();
    let api = TestApiServer::start_in(Some(&topo.node1)).unwrap();
    let kubeconfig = std::env::temp_dir().join(format!("lbt{}-hc-kubeconfig", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.apply(&node("[]")).unwrap();
    api.apply(SERVICE).unwrap();
    api.apply(&slice("node1")).unwrap();
    let config = kubeconfig.to_string_lossy().into_owned();
    let mut agent =
        Agent::start_with(&topo.node1, &["--source", "kube", "--kubeconfig", &config]).unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let _ = std::fs::remove_file(&kubeconfig);
    let client = &topo.client;

    let body = until_status(client, HC_PORT, "/", 200);
    assert!(body.contains("\"localEndpoints\": 1,"), "{body}");
    assert!(body.contains("\"name\": \"hc\""), "{body}");
    let body = until_status(client, HEALTHZ_PORT, "/healthz", 200);
    assert!(body.contains(r#""nodeEligible":true"#), "{body}");

    // The endpoint moves to node2: node1 fails the check.
    api.apply(&slice("node2")).unwrap();
    let body = until_status(client, HC_PORT, "/", 503);
    assert!(body.contains("\"localEndpoints\": 0,"), "{body}");
    // And back.
    api.apply(&slice("node1")).unwrap();
    until_status(client, HC_PORT, "/healthz", 200);

    // The autoscaler is about to delete node1: /healthz fails, /livez not.
    api.apply(&node(
        "[{key: ToBeDeletedByClusterAutoscaler, value: \"1700000000\", effect: NoSchedule}]",
    ))
    .unwrap();
    let body = until_status(client, HEALTHZ_PORT, "/healthz", 503);
    assert!(body.contains(r#""nodeEligible":false"#), "{body}");
    let (status, body) = get(client, HEALTHZ_PORT, "/livez").unwrap();
    assert_eq!(status, 200, "{body}");

    // The Service goes: its port closes.
    assert!(api.delete("Service", "default", "hc"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(client, HC_PORT, "/").is_ok() {
        assert!(
            Instant::now() < deadline,
            "the health check port stays open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.is_running());
    assert!(
        !agent.log().contains("cannot listen"),
        "every port was free:\n{}",
        agent.log()
    );
}
