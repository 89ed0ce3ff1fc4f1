//! A cold start where this agent replaces kube-proxy: the kubeconfig (as the
//! in-cluster config would) names the `kubernetes` Service's cluster IP,
//! which nothing serves before the agent has programmed it. With
//! `--api-server` naming the API server's direct address the agent starts,
//! programs the Services, and the cluster IP then reaches the API server.
//! Needs root.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    time::Duration,
};

use lb_tests::{agent::Agent, apiserver::TestApiServer, netns::Netns, topology::ClusterTopology};

/// The `kubernetes` Service's cluster IP and port: the in-cluster address.
const KUBERNETES: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 443);
/// The control plane: node2's LAN address, where the API server listens.
const CONTROL_PLANE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 12);

/// The `kubernetes` Service and its slice: the API server at `port` on the
/// control plane's address (a host-network endpoint, as kube-apiserver's).
fn kubernetes_service(port: u16) -> [String; 2] {
    [
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: kubernetes, namespace: default}}\n\
             spec: {{clusterIP: {}, ports: [{{name: https, port: 443, protocol: TCP, targetPort: {port}}}]}}\n",
            KUBERNETES.ip()
        ),
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: kubernetes, namespace: default, labels: {{kubernetes.io/service-name: kubernetes}}}}\n\
             addressType: IPv4\nports: [{{name: https, port: {port}, protocol: TCP}}]\n\
             endpoints: [{{addresses: [\"{CONTROL_PLANE}\"], nodeName: node2, conditions: {{ready: true}}}}]\n"
        ),
    ]
}

/// GET `path` over HTTP/1.0 from `ns` to `addr`: the whole response.
fn get(ns: &Netns, addr: SocketAddrV4, path: &str) -> anyhow::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream =
        ns.run(move || TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout))??;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: kubernetes\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

#[test]
fn a_cold_node_reaches_the_api_server_at_its_direct_address() {
    let topo = ClusterTopology::new().unwrap();
    let api = TestApiServer::start_at(Some(&topo.node2), CONTROL_PLANE).unwrap();
    let port: u16 = api.url().rsplit(':').next().unwrap().parse().unwrap();
    for object in kubernetes_service(port) {
        api.apply(&object).unwrap();
    }
    // The in-cluster address is served by nobody yet: a node booting
    // without pinned maps cannot reach the API server through it.
    assert!(
        get(&topo.client, KUBERNETES, "/version").is_err(),
        "the cluster IP answered before any balancer served it"
    );
    let kubeconfig = std::env::temp_dir().join(format!("lbt{}-bootstrap", std::process::id()));
    let in_cluster = TestApiServer::kubeconfig_text(&format!("http://{KUBERNETES}"));
    std::fs::write(&kubeconfig, in_cluster).unwrap();
    let config = kubeconfig.to_string_lossy().into_owned();
    let direct = format!("http://{CONTROL_PLANE}:{port}");
    let mut agent = Agent::start_with(
        &topo.node1,
        &[
            "--source",
            "kube",
            "--kubeconfig",
            &config,
            "--api-server",
            &direct,
        ],
    )
    .unwrap();
    let ready = agent.wait_ready(Duration::from_secs(30));
    let _ = std::fs::remove_file(&kubeconfig);
    ready.unwrap();
    assert!(
        agent
            .log()
            .contains("reaching the API server at --api-server"),
        "{}",
        agent.log()
    );
    // Programmed from the direct address, the cluster IP now reaches the
    // API server (translated on node1 to the control plane).
    let response = get(&topo.client, KUBERNETES, "/api/v1/services").unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    assert!(response.contains("\"kubernetes\""), "{response}");
}
