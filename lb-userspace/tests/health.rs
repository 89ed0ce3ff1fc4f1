//! The health servers in process, on 127.0.0.1 and ephemeral ports: health
//! check node ports follow the Services and their local endpoints, a taken
//! port is retried until it is free, and `/healthz` turns 503 when the node
//! is being deleted or the maps are late.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use lb_userspace::{
    health::{Bind, Health, HealthOptions},
    ident::{ObjectName, Protocol},
    model::{
        AddressType, Cluster, EndpointSpec, NodeFacts, ServiceKind, ServicePort, ServiceSpec,
        SlicePort, SliceSpec, TargetPort, TrafficPolicy,
    },
    select::SliceIndex,
};

const NODE: &str = "node1";

/// Tells `health` the maps hold `cluster`, as the agent does after a sync.
fn sync(health: &Health, cluster: &Cluster) {
    health.synced(cluster, &SliceIndex::build(cluster));
}
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A port free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn options(healthz: Option<u16>) -> HealthOptions {
    HealthOptions {
        healthz_addr: healthz.map(|p| SocketAddr::from((LOCALHOST, p))),
        service_ip: LOCALHOST.into(),
        timeout: Duration::from_mins(1),
        retry: Duration::from_millis(100),
    }
}

/// Status, headers (lowercase names) and body of an answer.
type Answer = (u16, Vec<(String, String)>, String);

/// A GET's answer, or the connect error.
fn get(port: u16, path: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect((LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Waits up to 5 s for `check`.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn name(n: &str) -> ObjectName {
    ObjectName {
        namespace: "default".into(),
        name: n.into(),
    }
}

fn lb_local(n: &str, hc_port: u16) -> ServiceSpec {
    ServiceSpec {
        name: name(n),
        kind: ServiceKind::LoadBalancer,
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
        ports: vec![ServicePort {
            name: String::new(),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
            node_port: Some(30080),
        }],
        external_policy: TrafficPolicy::Local,
        health_check_node_port: Some(hc_port),
        ..ServiceSpec::default()
    }
}

/// Service `n`'s slice with one ready endpoint per node named.
fn slice(n: &str, nodes: &[&str]) -> SliceSpec {
    SliceSpec {
        name: name(&format!("{n}-abc")),
        service: n.into(),
        address_type: AddressType::Ipv4,
        ports: vec![SlicePort {
            name: String::new(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        endpoints: (1..)
            .zip(nodes)
            .map(|(i, node)| EndpointSpec {
                addresses: vec![Ipv4Addr::new(10, 244, 0, i)],
                ready: true,
                serving: None,
                terminating: None,
                node_name: Some((*node).into()),
                zone: None,
                zone_hints: vec![],
                node_hints: vec![],
            })
            .collect(),
        mirrored: false,
    }
}

fn cluster(services: Vec<ServiceSpec>, slices: Vec<SliceSpec>) -> Cluster {
    Cluster {
        services: services
            .into_iter()
            .map(|s| (s.name.clone(), s.into()))
            .collect(),
        slices: slices
            .into_iter()
            .map(|s| (s.name.clone(), s.into()))
            .collect(),
        node: None,
    }
}

fn bound(health: &Health, service: &str) -> bool {
    matches!(
        health.listening().services.get(&name(service)),
        Some((_, Bind::Bound(_)))
    )
}

#[test]
fn a_health_check_node_port_follows_its_service_and_local_endpoints() {
    let port = free_port();
    let health = Health::start(options(None), NODE).unwrap();
    let web = lb_local("web", port);
    sync(
        &health,
        &cluster(
            vec![web.clone()],
            vec![slice("web", &[NODE, NODE, "node2"])],
        ),
    );
    eventually("the port to listen", || bound(&health, "web"));
    let (status, headers, body) = get(port, "/any/path").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"name\": \"web\""), "{body}");
    assert!(body.contains("\"localEndpoints\": 2,"), "{body}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(
        header(&headers, "x-load-balancing-endpoint-weight"),
        Some("2")
    );
    // The local endpoints move away: 503.
    sync(
        &health,
        &cluster(vec![web.clone()], vec![slice("web", &["node2"])]),
    );
    let (status, headers, body) = get(port, "/").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("\"localEndpoints\": 0,"), "{body}");
    assert_eq!(
        header(&headers, "x-load-balancing-endpoint-weight"),
        Some("0")
    );
    // The Service turns to Cluster: the port closes.
    let mut cluster_policy = web;
    cluster_policy.external_policy = TrafficPolicy::Cluster;
    sync(&health, &cluster(vec![cluster_policy], vec![]));
    eventually("the port to close", || get(port, "/").is_err());
    assert!(health.listening().services.is_empty());
}

#[test]
fn a_taken_port_is_retried_until_free_without_holding_up_the_others() {
    let (taken, other, healthz) = (free_port(), free_port(), free_port());
    let holder = TcpListener::bind((LOCALHOST, taken)).unwrap();
    let healthz_holder = TcpListener::bind((LOCALHOST, healthz)).unwrap();
    let health = Health::start(options(Some(healthz)), NODE).unwrap();
    sync(
        &health,
        &cluster(
            vec![lb_local("held", taken), lb_local("free", other)],
            vec![slice("held", &[NODE]), slice("free", &[NODE])],
        ),
    );
    eventually("the free port to listen", || bound(&health, "free"));
    assert_eq!(get(other, "/").unwrap().0, 200);
    eventually("both failures to be recorded", || {
        let listening = health.listening();
        matches!(&listening.services[&name("held")].1, Bind::Failed(e) if e.contains("in use"))
            && matches!(&listening.healthz, Some(Bind::Failed(e)) if e.contains("in use"))
    });
    // kube-proxy goes away: both come up.
    drop(holder);
    drop(healthz_holder);
    eventually("the freed port to listen", || bound(&health, "held"));
    eventually("healthz to listen", || {
        matches!(health.listening().healthz, Some(Bind::Bound(_)))
    });
    assert_eq!(get(taken, "/").unwrap().0, 200);
    assert_eq!(get(healthz, "/healthz").unwrap().0, 200);
}

#[test]
fn healthz_is_503_while_the_node_is_being_deleted_and_livez_ignores_it() {
    let port = free_port();
    let health = Health::start(options(Some(port)), NODE).unwrap();
    eventually("healthz to listen", || get(port, "/healthz").is_ok());
    let (status, headers, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "healthy while starting: {body}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    let mut leaving = cluster(vec![], vec![]);
    leaving.node = Some(NodeFacts {
        being_deleted: true,
        ..NodeFacts::default()
    });
    sync(&health, &leaving);
    let (status, _, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 503);
    assert!(
        body.contains(r#""nodeEligible":false,"healthy":true"#),
        "{body}"
    );
    let (status, _, body) = get(port, "/livez").unwrap();
    assert_eq!(status, 200);
    assert!(!body.contains("nodeEligible"), "{body}");
    assert_eq!(get(port, "/metrics").unwrap().0, 404);
    // The deletion is called off.
    leaving.node = Some(NodeFacts::default());
    sync(&health, &leaving);
    assert_eq!(get(port, "/healthz").unwrap().0, 200);
}

#[test]
fn changes_waiting_past_the_timeout_turn_everything_503() {
    let (healthz, service) = (free_port(), free_port());
    let health = Health::start(
        HealthOptions {
            timeout: Duration::from_millis(300),
            ..options(Some(healthz))
        },
        NODE,
    )
    .unwrap();
    let c = cluster(vec![lb_local("web", service)], vec![slice("web", &[NODE])]);
    sync(&health, &c);
    eventually("both to listen", || {
        bound(&health, "web") && get(healthz, "/healthz").is_ok()
    });
    health.queued(Instant::now());
    assert_eq!(get(healthz, "/healthz").unwrap().0, 200, "not late yet");
    std::thread::sleep(Duration::from_millis(400));
    for path in ["/healthz", "/livez"] {
        let (status, _, body) = get(healthz, path).unwrap();
        assert_eq!(status, 503, "{path}: {body}");
        assert!(body.contains(r#""healthy":false"#), "{body}");
    }
    let (status, _, body) = get(service, "/").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("\"serviceProxyHealthy\": false"), "{body}");
    // The sync lands.
    sync(&health, &c);
    assert_eq!(get(healthz, "/livez").unwrap().0, 200);
    assert_eq!(get(service, "/").unwrap().0, 200);
}
