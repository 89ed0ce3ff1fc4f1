//! End to end: what the agent makes of its input and of its own life,
//! which depends on neither the CNI layout, nor node1's firewall, nor the
//! uplink hook: a manifest edit applies within a second and keeps an
//! established connection (as every pass of `tests/e2e.rs` checks again
//! across restarts), a bad manifest leaves the other Services served,
//! SIGTERM detaches and removes everything the agent created (at XDP
//! whatever `LB_TEST_UPLINK_HOOK` says), a SNAT pool inside the node's
//! ephemeral range is refused, and a datapath that cannot load ends the
//! start while the API server's lists are still awaited. Unlike `tests/e2e.rs`, run once, not on
//! every pass of the end-to-end matrix (see `E2E_TESTS` in xtask). Needs
//! root.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, ManifestDir, TEST_BED_XDP},
    apiserver::TestApiServer,
    cluster::{assert_spread, cluster, cluster_with},
    topology::ClusterTopology,
    traffic::{http_distribution, HttpClient},
};

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const EXTERNAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 20), 80);
const EDIT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 30), 80);
const DEADLINE: Duration = Duration::from_mins(1);

fn edit_service(endpoints: &[(&str, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: edit-service, namespace: default}\n\
         spec:\n  clusterIP: 10.96.0.30\n  ports: [{name: http, port: 80, protocol: TCP, targetPort: http}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: edit-service-1, namespace: default, labels: {kubernetes.io/service-name: edit-service}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n",
    );
    for (ip, node) in endpoints {
        let _ = writeln!(
            yaml,
            "  - {{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{ready: true}}}}"
        );
    }
    yaml
}

#[test]
fn manifest_edit_applies_within_one_second_and_keeps_established_connection() {
    let manifests = ManifestDir::new().unwrap();
    manifests
        .write(
            "edit.yaml",
            &edit_service(&[
                ("10.244.1.2", "node1"),
                ("10.244.1.3", "node1"),
                ("10.244.2.2", "node2"),
            ]),
        )
        .unwrap();
    let c = cluster(manifests);

    // A kept-alive connection pinned to a backend that survives the edit.
    let (mut conn, pinned) = (0..20)
        .find_map(|_| {
            let mut conn =
                HttpClient::connect(&c.topo.client, EDIT, Duration::from_secs(2)).ok()?;
            let who = conn.get().ok()?;
            (who != "pod1a").then_some((conn, who))
        })
        .expect("a connection to pod1b or pod2a within 20 tries");

    c.manifests
        .write(
            "edit.yaml",
            &edit_service(&[
                ("10.244.1.3", "node1"),
                ("10.244.2.2", "node2"),
                ("10.244.1.4", "node1"),
            ]),
        )
        .unwrap();
    let edited = Instant::now();
    // The established connection keeps working while the edit lands.
    while edited.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            conn.get().expect("kept-alive request during the edit"),
            pinned
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = http_distribution(&c.topo.client, EDIT, 100, DEADLINE);
    assert_eq!(
        counts.get("pod1a"),
        None,
        "the removed backend gets no new connections: {counts:?}"
    );
    assert!(
        counts.get("pod1c").copied().unwrap_or(0) >= 10,
        "the added backend gets some: {counts:?}"
    );
    assert_spread(&counts, &["pod1b", "pod2a", "pod1c"], 100, 0.10);
    for _ in 0..10 {
        assert_eq!(
            conn.get().expect("kept-alive request after the edit"),
            pinned
        );
    }
    let status = c.agent.status().unwrap();
    assert!(
        status.contains("default/edit-service 10.96.0.30:80/TCP -> 10.244.1.3:8080,10.244.1.4:8080,10.244.2.2:8080"),
        "status:\n{status}"
    );
}

#[test]
fn bad_manifest_keeps_other_services() {
    let mut c = cluster(ManifestDir::with_examples().unwrap());
    c.manifests
        .write(
            "broken.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x\n  bad: [",
        )
        .unwrap();
    c.manifests
        .write(
            "bad-ip.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad-ip, namespace: default}\nspec:\n  clusterIP: 10.96.0.999\n  ports: [{port: 80}]\n",
        )
        .unwrap();
    // An edit that breaks a file that served traffic keeps its last good objects.
    let web = c.manifests.read("web-service.yaml").unwrap();
    c.manifests
        .write(
            "web-service.yaml",
            &web.replace("10.244.1.4", "10.244.1.400"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(c.agent.is_running(), "the agent survives bad input");
    let log = c.agent.log();
    for needle in [
        "broken.yaml",
        "bad-ip.yaml",
        "Service default/bad-ip",
        "EndpointSlice default/web-service-abc12",
        "10.244.1.400",
    ] {
        assert!(log.contains(needle), "the log names {needle}:\n{log}");
    }
    let status = c.agent.status().unwrap();
    assert!(status.contains("default/web-service 10.96.0.10:80/TCP -> 10.244.1.2:8080,10.244.1.3:8080,10.244.1.4:8080,10.244.2.2:8080"), "{status}");
    assert!(
        status.contains("default/external-service 10.96.0.20:80/TCP"),
        "{status}"
    );
    let counts = http_distribution(&c.topo.client, WEB, 40, DEADLINE);
    assert_spread(&counts, &["pod1a", "pod1b", "pod1c", "pod2a"], 40, 0.02);
}

#[test]
fn sigterm_detaches_and_removes_what_the_agent_created() {
    // At XDP whatever LB_TEST_UPLINK_HOOK says: its detachment is checked.
    let mut c = cluster_with(ManifestDir::with_examples().unwrap(), &TEST_BED_XDP);
    let link = |ns: &lb_tests::netns::Netns, iface: &str| {
        String::from_utf8_lossy(&ns.exec(&["ip", "link", "show", iface]).unwrap().stdout)
            .into_owned()
    };
    let accept_local = |iface: &str| {
        String::from_utf8_lossy(
            &c.topo
                .node1
                .exec(&[
                    "sysctl",
                    "-n",
                    &format!("net.ipv4.conf.{iface}.accept_local"),
                ])
                .unwrap()
                .stdout,
        )
        .trim()
        .to_string()
    };
    assert!(
        link(&c.topo.node1, "eth0").contains("xdp"),
        "XDP attached while running"
    );
    assert_eq!(accept_local("eth0"), "1");
    let pod = &c.topo.pod("pod1a").ns;
    let before = http_distribution(pod, EXTERNAL, 4, Duration::from_secs(10));
    assert_eq!(
        before.get("error"),
        None,
        "TC translates pod traffic while running: {before:?}"
    );
    assert!(c.agent.stop(), "lb-agent exits 0 on SIGTERM");
    assert!(
        !link(&c.topo.node1, "eth0").contains("xdp"),
        "XDP detached on exit"
    );
    assert!(!c.agent.pin_dir().exists(), "pins removed on exit");
    assert_eq!(accept_local("eth0"), "0", "sysctl restored on exit");
    // With the programs gone the service address answers no more.
    let after = http_distribution(&c.topo.client, WEB, 1, Duration::from_secs(5));
    assert_eq!(after.get("error"), Some(&1), "XDP gone: {after:?}");
    let after = http_distribution(pod, EXTERNAL, 1, Duration::from_secs(5));
    assert_eq!(after.get("error"), Some(&1), "TC gone: {after:?}");
}

#[test]
fn an_agent_refuses_a_pool_inside_the_ephemeral_range() {
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let manifests = ManifestDir::with_examples().unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let mut agent = Agent::start_with(
        &topo.node1,
        &["--manifests", &dir, "--snat-port-range", "40000-40100"],
    )
    .expect("starting lb-agent");
    let err = agent
        .wait_ready(Duration::from_secs(30))
        .expect_err("the agent must refuse the pool");
    let text = format!("{err:#}");
    assert!(
        text.contains("net.ipv4.ip_local_port_range") && text.contains("--snat-port-range"),
        "{text}"
    );
}

#[test]
fn max_services_sizes_the_maps_and_refuses_frontends_beyond_it() {
    // The examples have three frontends: two fit, the third is refused by name.
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let manifests = ManifestDir::with_examples().unwrap();
    let agent = Agent::start_ready(&topo.node1, &manifests, &["--max-services", "2"])
        .expect("lb-agent ready with --max-services 2");
    let layout = lb_userspace::datapath::pins_dir(agent.pin_dir());
    let size = |map: &str| {
        lb_userspace::datapath::layout::pinned_shape(&layout.join(map))
            .unwrap()
            .max_entries
    };
    assert_eq!(size(lb_common::MAP_SERVICES), 2);
    assert_eq!(size(lb_common::MAP_SERVICE_LABELS), 2);
    assert_eq!(
        size(lb_common::MAP_INTERNAL_TABLES),
        3,
        "one slot per id, and id 0"
    );
    let log = agent.log();
    assert!(
        log.contains("more than 2 frontends: raise --max-services"),
        "{log}"
    );
    let status = agent.status().unwrap();
    let served = status.lines().filter(|l| l.contains(" -> ")).count();
    assert_eq!(served, 2, "{status}");
}

#[test]
fn a_datapath_that_cannot_load_ends_the_start_without_waiting_for_the_lists() {
    // The kube source lists while the programs load; an API server that
    // never answers (nothing listens at its address) must not hide a load
    // that failed (maps pinned outside bpffs) behind an endless wait.
    let topo = ClusterTopology::new().expect("building the namespace topology");
    let scratch = std::env::temp_dir().join(format!("lbt{}-nobpffs", std::process::id()));
    let kubeconfig = scratch.join("kubeconfig");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::write(
        &kubeconfig,
        TestApiServer::kubeconfig_text("http://127.0.0.1:9"),
    )
    .unwrap();
    let config = kubeconfig.to_string_lossy().into_owned();
    let started = Agent::start_pinned(
        &topo.node1,
        &[
            "--source",
            "kube",
            "--kubeconfig",
            &config,
            "--detach-on-exit",
        ],
        &scratch.join("pins"),
    );
    let mut agent = started.expect("starting lb-agent");
    let err = agent
        .wait_ready(Duration::from_secs(30))
        .expect_err("the agent must stop: its maps cannot be pinned");
    drop(agent);
    let _ = std::fs::remove_dir_all(&scratch);
    let text = format!("{err:#}");
    assert!(
        text.contains("exited") && text.contains("eBPF object"),
        "the agent exits naming the load: {text}"
    );
}
