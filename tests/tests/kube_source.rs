//! The Kubernetes source against the test API server: the real kube client
//! over HTTP on loopback, list/watch, bookmarks, dropped connections, `410
//! Gone` relists and an unreachable server; the watch's scope (labels) and
//! paging in `scope`, Events about Services in `events`, a dual-stack
//! Service and its two slices in `dual_stack`. No root needed.

#[path = "kube_source/dual_stack.rs"]
mod dual_stack;
#[path = "kube_source/events.rs"]
mod events;
#[path = "kube_source/scope.rs"]
mod scope;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_tests::apiserver::TestApiServer;
use lb_userspace::{
    desired::NodeInfo,
    reconcile::Reconciler,
    select,
    source::{kube::KubeSource, Source},
};

const WAIT: Duration = Duration::from_secs(10);

fn service(name: &str, ip: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: http}}]}}\n")
}

fn slice(service: &str, ips: &[&str]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| {
            format!("{{addresses: [\"{ip}\"], conditions: {{ready: true}}, nodeName: node1}}")
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// The source and a reconciler fed by it, change by change.
struct Fixture {
    source: KubeSource,
    reconciler: Reconciler,
    /// The source's client, for what else the agent sends (Events).
    client: kube::Client,
}

/// "service frontend -> backends" lines of the desired state, reconciled
/// incrementally from what the source reports as changed.
fn state(fx: &mut Fixture) -> Vec<String> {
    let (cluster, changes) = fx.source.snapshot();
    let _ = fx.reconciler.reconcile(cluster, &changes, Instant::now());
    // The incremental state must equal a full recompute of the same model.
    let (full, _) = select::desired_state(cluster, &node1());
    assert_eq!(
        fx.reconciler.desired(),
        &full,
        "incremental and full disagree"
    );
    let mut lines: Vec<String> = fx
        .reconciler
        .desired()
        .iter()
        .map(|(f, d)| {
            let b: Vec<String> = d.backends.keys().map(ToString::to_string).collect();
            format!("{} {f} -> {}", d.service, b.join(","))
        })
        .collect();
    lines.sort();
    lines
}

fn node1() -> NodeInfo {
    NodeInfo {
        name: "node1".into(),
        ..NodeInfo::default()
    }
}

async fn until(source: &mut Fixture, expected: &[&str]) {
    let started = Instant::now();
    loop {
        let now = state(source);
        if now == expected {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "after {WAIT:?} the state is {now:#?}, expected {expected:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn run<F: Future<Output = ()>>(server: &TestApiServer, test: impl FnOnce(Fixture) -> F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = kube::Config::new(server.url().parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let (changed, _rx) = tokio::sync::mpsc::unbounded_channel();
        let source = KubeSource::start(&client, &changed, "node1");
        tokio::time::timeout(WAIT, source.wait_until_ready())
            .await
            .expect("initial list within the deadline")
            .unwrap();
        // All watches (Services, EndpointSlices, Nodes) streaming before the test acts.
        let started = Instant::now();
        while server.open_watches() < 3 {
            assert!(
                started.elapsed() < WAIT,
                "watches not opened: {:#?}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fixture = Fixture {
            source,
            reconciler: Reconciler::new(node1(), 1 << 20),
            client,
        };
        tokio::time::timeout(Duration::from_mins(1), test(fixture))
            .await
            .expect("test within a minute");
    });
}

const WEB: &str = "default/web 10.96.0.10:80/TCP -> 10.244.1.2:8080,10.244.1.3:8080";

#[test]
fn initial_sync_then_add_update_delete() {
    let server = Arc::new(TestApiServer::start().unwrap());
    server.apply(&service("web", "10.96.0.10")).unwrap();
    server
        .apply(&slice("web", &["10.244.1.2", "10.244.1.3"]))
        .unwrap();
    run(&server.clone(), |mut source| async move {
        until(&mut source, &[WEB]).await;
        server.apply(&service("db", "10.96.0.11")).unwrap();
        server.apply(&slice("db", &["10.244.1.9"])).unwrap();
        until(
            &mut source,
            &["default/db 10.96.0.11:80/TCP -> 10.244.1.9:8080", WEB],
        )
        .await;
        server
            .apply(&slice("db", &["10.244.1.8", "10.244.1.9"]))
            .unwrap();
        until(
            &mut source,
            &[
                "default/db 10.96.0.11:80/TCP -> 10.244.1.8:8080,10.244.1.9:8080",
                WEB,
            ],
        )
        .await;
        assert!(server.delete("Service", "default", "db"));
        until(&mut source, &[WEB]).await;
    });
}

#[test]
fn a_slice_before_its_service_is_picked_up_when_the_service_comes() {
    let server = Arc::new(TestApiServer::start().unwrap());
    server
        .apply(&slice("web", &["10.244.1.2", "10.244.1.3"]))
        .unwrap();
    run(&server.clone(), |mut source| async move {
        until(&mut source, &[]).await;
        server.apply(&service("web", "10.96.0.10")).unwrap();
        until(&mut source, &[WEB]).await;
    });
}

/// A server holding "web" (two endpoints) and "old" (none).
fn with_web_and_old() -> Arc<TestApiServer> {
    let server = Arc::new(TestApiServer::start().unwrap());
    server.apply(&service("web", "10.96.0.10")).unwrap();
    server
        .apply(&slice("web", &["10.244.1.2", "10.244.1.3"]))
        .unwrap();
    server.apply(&service("old", "10.96.0.12")).unwrap();
    server
}

#[test]
fn relist_after_410_removes_what_vanished_and_keeps_the_rest() {
    let server = with_web_and_old();
    run(&server.clone(), |mut source| async move {
        until(&mut source, &["default/old 10.96.0.12:80/TCP -> ", WEB]).await;
        let lists = server.lists();
        // While the watches are down, "old" is deleted and "new" created, and
        // the history is compacted: resuming gets 410 Gone and must relist.
        server.set_down(true);
        assert!(server.delete("Service", "default", "old"));
        server.apply(&service("new", "10.96.0.13")).unwrap();
        server.compact();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            state(&mut source),
            ["default/old 10.96.0.12:80/TCP -> ", WEB],
            "unreachable: last known state"
        );
        server.set_down(false);
        until(&mut source, &["default/new 10.96.0.13:80/TCP -> ", WEB]).await;
        assert!(server.lists() > lists, "the watcher relisted");
    });
}

/// A watch the server ends with an ERROR event of `410 Gone` (too old
/// resource version): the watcher relists, and changes made meanwhile
/// (a deletion) reach the model.
#[test]
fn a_watch_ended_by_410_gone_relists() {
    let server = with_web_and_old();
    run(&server.clone(), |mut source| async move {
        until(&mut source, &["default/old 10.96.0.12:80/TCP -> ", WEB]).await;
        let lists = server.lists();
        server.expire_watches();
        assert!(server.delete("Service", "default", "old"));
        until(&mut source, &[WEB]).await;
        // Each watch relists after the watcher's backoff.
        let started = Instant::now();
        while server.lists() < lists + 3 {
            assert!(
                started.elapsed() < WAIT,
                "every kind relisted: {:#?}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn dropped_connections_resume_from_the_last_bookmark_without_relisting() {
    let server = Arc::new(TestApiServer::start().unwrap());
    server.apply(&service("web", "10.96.0.10")).unwrap();
    server
        .apply(&slice("web", &["10.244.1.2", "10.244.1.3"]))
        .unwrap();
    run(&server.clone(), |mut source| async move {
        until(&mut source, &[WEB]).await;
        // Unrelated history moves on; a bookmark tells the watcher where it is.
        server.apply(&service("db", "10.96.0.11")).unwrap();
        assert!(server.delete("Service", "default", "db"));
        server.bookmark();
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.compact();
        let lists = server.lists();
        server.drop_watches();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.apply(&slice("web", &["10.244.1.3"])).unwrap();
        until(
            &mut source,
            &["default/web 10.96.0.10:80/TCP -> 10.244.1.3:8080"],
        )
        .await;
        assert_eq!(
            server.lists(),
            lists,
            "resumed from the bookmark: no relist: {:#?}",
            server.log()
        );
    });
}

#[test]
fn a_malformed_object_is_skipped_and_picked_up_once_fixed() {
    let server = Arc::new(TestApiServer::start().unwrap());
    server.apply(&service("web", "10.96.0.10")).unwrap();
    server
        .apply(&slice("web", &["10.244.1.2", "10.244.1.3"]))
        .unwrap();
    server.apply(&service("bad", "10.96.0.300")).unwrap();
    run(&server.clone(), |mut source| async move {
        until(&mut source, &[WEB]).await;
        server.apply(&service("bad", "10.96.0.30")).unwrap();
        until(&mut source, &["default/bad 10.96.0.30:80/TCP -> ", WEB]).await;
        // Broken again: the last valid version stays.
        server.apply(&service("bad", "10.96.0.301")).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        until(&mut source, &["default/bad 10.96.0.30:80/TCP -> ", WEB]).await;
    });
}

#[test]
fn the_own_node_object_gives_zone_and_node_port_addresses() {
    let server = Arc::new(TestApiServer::start().unwrap());
    let node = |name: &str, ip: &str, zone: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{topology.kubernetes.io/zone: {zone}}}}}\n\
             status: {{addresses: [{{type: InternalIP, address: {ip}}}, {{type: Hostname, address: {name}}}]}}\n"
        )
    };
    server
        .apply(&node("node1", "192.168.50.11", "zone-a"))
        .unwrap();
    server
        .apply(&node("node2", "192.168.50.12", "zone-b"))
        .unwrap();
    server
        .apply(
            "apiVersion: v1\nkind: Service\nmetadata: {name: np, namespace: default}\n\
             spec: {type: NodePort, clusterIP: 10.96.0.50, ports: [{name: http, port: 80, nodePort: 30080, targetPort: http}]}\n",
        )
        .unwrap();
    server.apply(&slice("np", &["10.244.1.2"])).unwrap();
    run(&server.clone(), |mut source| async move {
        let started = Instant::now();
        loop {
            let cluster = source.source.snapshot().0.clone();
            if let Some(facts) = &cluster.node {
                assert_eq!(facts.zone.as_deref(), Some("zone-a"));
                assert_eq!(
                    facts.addresses,
                    [std::net::Ipv4Addr::new(192, 168, 50, 11)],
                    "only its own node"
                );
                let node = NodeInfo {
                    name: "node1".into(),
                    ..NodeInfo::default()
                }
                .merged(cluster.node.as_ref());
                let (desired, _) = select::desired_state(&cluster, &node);
                let frontends: Vec<String> = desired.keys().map(ToString::to_string).collect();
                assert_eq!(frontends, ["*:30080/TCP", "10.96.0.50:80/TCP"]);
                let node_port = desired.values().find(|f| !f.node_port_addrs.is_empty());
                assert_eq!(
                    node_port.map(|f| f.node_port_addrs.clone()),
                    Some(vec![std::net::Ipv4Addr::new(192, 168, 50, 11)]),
                    "served on the Node's address"
                );
                break;
            }
            assert!(started.elapsed() < WAIT, "no Node facts");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
