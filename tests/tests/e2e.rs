//! End to end: the built agent in node1 of a namespace cluster, real TCP and
//! UDP traffic from a client and from pods. (What depends on neither the
//! CNI layout, nor the firewall, nor the uplink hook runs once:
//! `tests/e2e_agent.rs`.) Needs root.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{test_bed_hook, Agent, ManifestDir, PinDirGuard, TEST_BED_XDP},
    cluster::{assert_spread, cluster, cluster_with, Cluster},
    topology::ClusterTopology,
    traffic::{http_distribution, udp_distribution, HttpClient, PodServers},
};

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const WEB_DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
const EXTERNAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 20), 80);
const DEADLINE: Duration = Duration::from_mins(1);

#[test]
fn balances_tcp_and_udp_over_all_four_backends() {
    let c = cluster(ManifestDir::with_examples().unwrap());
    let status = c.agent.status().unwrap();
    assert!(
        status.contains("default/web-service 10.96.0.10:80/TCP -> 10.244.1.2:8080,10.244.1.3:8080,10.244.1.4:8080,10.244.2.2:8080"),
        "status:\n{status}"
    );
    assert_uplink_hook(&c, test_bed_hook().contains(&"tc"));
    let all = ["pod1a", "pod1b", "pod1c", "pod2a"];
    let tcp = http_distribution(&c.topo.client, WEB, 200, DEADLINE);
    assert_spread(&tcp, &all, 200, 0.10);
    // udp_distribution counts replies from any other source as "wrong-source".
    let udp = udp_distribution(&c.topo.client, WEB_DNS, 100, DEADLINE);
    assert_spread(&udp, &all, 100, 0.05);
}

/// The same traffic with the uplink program at TC ingress instead of XDP:
/// local and remote (source translated) backends, TCP and UDP.
#[test]
fn balances_over_all_four_backends_with_the_uplink_hook_at_tc() {
    let c = cluster_with(
        ManifestDir::with_examples().unwrap(),
        &["--uplink-hook", "tc"],
    );
    assert_uplink_hook(&c, true);
    let all = ["pod1a", "pod1b", "pod1c", "pod2a"];
    let tcp = http_distribution(&c.topo.client, WEB, 200, DEADLINE);
    assert_spread(&tcp, &all, 200, 0.10);
    let udp = udp_distribution(&c.topo.client, WEB_DNS, 100, DEADLINE);
    assert_spread(&udp, &all, 100, 0.05);
}

/// The uplink's program is at TC ingress (`tc`: no XDP program on the
/// link, its TC link pinned, no XDP link pinned), else at XDP.
fn assert_uplink_hook(c: &Cluster, tc: bool) {
    let link = c
        .topo
        .node1
        .exec(&["ip", "-d", "link", "show", "eth0"])
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert_eq!(link.contains("xdp"), !tc, "XDP on the uplink: {link}");
    let pins = std::fs::read_dir(
        c.agent
            .pin_dir()
            .join(lb_userspace::datapath::PIN_LAYOUT)
            .join("links"),
    )
    .unwrap()
    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
    .collect::<Vec<_>>();
    assert_eq!(pins.contains(&"tcup-eth0".to_string()), tc, "{pins:?}");
    assert_eq!(pins.contains(&"xdp-eth0".to_string()), !tc, "{pins:?}");
}

#[test]
fn pod_reaches_cluster_ip() {
    let c = cluster(ManifestDir::with_examples().unwrap());
    let from = &c.topo.pod("pod1a").ns;
    let counts = http_distribution(from, EXTERNAL, 50, DEADLINE);
    assert_spread(&counts, &["pod1b", "pod2a"], 50, 0.10);
    // And a pod reaching a service that may send it to itself (hairpin).
    let web = http_distribution(from, WEB, 60, DEADLINE);
    assert_spread(&web, &["pod1a", "pod1b", "pod1c", "pod2a"], 60, 0.02);
}

/// GET `path` from the agent's metrics port on node1's loopback.
fn scrape(c: &Cluster, path: &str) -> (String, String) {
    lb_tests::traffic::scrape(&c.topo.node1, 9960, path).unwrap()
}

/// IPv4 packets translated toward a backend.
const TRANSLATED: &str = "lb_packets_total{verdict=\"translated\",family=\"ipv4\"}";
/// IPv4 replies translated back.
const REVERSED: &str = "lb_packets_total{verdict=\"reversed\",family=\"ipv4\"}";

fn counter(metrics: &str, series: &str) -> u64 {
    let value = lb_tests::traffic::metric(metrics, series)
        .unwrap_or_else(|| panic!("{series} missing from:\n{metrics}"));
    // Counters and gauges of whole packets, bytes and entries.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = value as u64;
    whole
}

#[test]
fn metrics_follow_real_traffic_and_probes_answer() {
    let topo = ClusterTopology::new().unwrap();
    let servers = PodServers::start(&topo).unwrap();
    let manifests = ManifestDir::with_examples().unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let mut agent = Agent::start_with(
        &topo.node1,
        &[
            "--manifests",
            &dir,
            "--metrics-addr",
            "127.0.0.1:9960",
            "--ct-gc-interval",
            "1",
        ],
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let c = Cluster {
        agent,
        manifests,
        servers,
        topo,
    };
    assert!(scrape(&c, "/healthz").0.contains("200"));
    assert!(scrape(&c, "/readyz").0.contains("200"));
    let (status, before) = scrape(&c, "/metrics");
    assert!(status.contains("200"), "{status}");
    let translated = counter(&before, TRANSLATED);
    let reversed = counter(&before, REVERSED);
    assert!(counter(&before, "lb_syncs_total") >= 1);
    assert_eq!(counter(&before, "lb_frontends"), 3);
    let counts = http_distribution(&c.topo.client, WEB, 20, DEADLINE);
    assert_eq!(counts.values().sum::<usize>(), 20);
    let (_, after) = scrape(&c, "/metrics");
    // Each HTTP exchange is at least 5 client packets and 4 replies translated.
    assert!(
        counter(&after, TRANSLATED) >= translated + 20 * 5,
        "{after}"
    );
    assert!(counter(&after, REVERSED) >= reversed + 20 * 4, "{after}");
    let web =
        "lb_service_packets_total{service=\"default/web-service\",port=\"http\",family=\"ipv4\"}";
    assert!(
        counter(&after, web) >= 20 * 5,
        "per-service packets: {after}"
    );
    let bytes =
        "lb_service_bytes_total{service=\"default/web-service\",port=\"http\",family=\"ipv4\"}";
    assert!(
        counter(&after, bytes) >= counter(&after, web) * 54,
        "per-service bytes: {after}"
    );

    // lb-agent conntrack lists those flows; only the remote backend's are SNATed.
    let flows = c.agent.conntrack().unwrap();
    let to_web: Vec<_> = flows
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["service"] == "10.96.0.10:80" && f["protocol"] == "TCP")
        .collect();
    assert!(to_web.len() >= 20, "{flows:#}");
    for f in to_web {
        assert!(
            f["client"].as_str().unwrap().starts_with("192.168.50.10:"),
            "{f}"
        );
        let remote = f["backend"] == "10.244.2.2:8080";
        assert_eq!(
            f["snat"].is_string(),
            remote,
            "SNAT exactly for the remote backend: {f}"
        );
    }
    // The flow series count the maps as of the collector's last sweep.
    let last = lb_tests::traffic::scrape_after_sweep(&c.topo.node1, 9960, Duration::from_secs(10))
        .unwrap();
    let all_flows = flows.as_array().unwrap();
    let snat = all_flows.iter().filter(|f| f["snat"].is_string()).count();
    assert!(counter(&last, "lb_conntrack_entries") >= all_flows.len() as u64);
    assert!(counter(&last, "lb_snat_flows") >= snat as u64);
    assert!(
        counter(&last, "lb_conntrack_created_total") >= counter(&last, "lb_conntrack_entries"),
        "every live entry was created"
    );
    assert_eq!(
        counter(&last, "lb_conntrack_evictions_total"),
        0,
        "nothing evicted far below capacity"
    );
    assert!(counter(&last, "lb_source_lists_total") >= 1);
    assert_eq!(counter(&last, "lb_rejected_objects_total"), 0);
}

#[test]
fn a_killed_agent_leaves_traffic_flowing_and_its_successor_takes_over() {
    kill_and_restart(
        "restart",
        |_| {},
        false,
        &[],
        &[],
        "adopted the pinned maps",
    );
}

/// A restart that moves the uplink program from XDP to TC ingress: the
/// successor attaches its TC program, then detaches the XDP one (and its
/// hand-off program).
#[test]
fn a_restart_can_move_the_uplink_program_from_xdp_to_tc() {
    kill_and_restart(
        "hookswitch",
        |_| {},
        false,
        &TEST_BED_XDP,
        &["--uplink-hook", "tc"],
        "detached the other uplink hook",
    );
}

/// Like a restart, but the successor is an upgrade whose pin layout is the
/// next one: it finds the previous layout's pins (v5, made here from the
/// current ones: each frontend a Service port of its own, labelled without
/// the port), carries their maps over, merges each Service port's
/// frontends in its first sync, and moves the links to its programs after
/// it. The long-lived connection through SNAT keeps its backend and port.
/// (The hand-overs from v4 and v3, whose flows v3 converts, are checked
/// packet by packet in `tests/pins.rs`.)
#[test]
fn an_upgrade_to_a_new_pin_layout_hands_over_without_dropping_traffic() {
    assert_eq!(lb_userspace::datapath::PIN_LAYOUT, "v8");
    kill_and_restart(
        "upgrade",
        |pin_dir| lb_tests::legacy::make_v5(pin_dir).unwrap(),
        true,
        &[],
        &[],
        "hand-over from the earlier layout finished",
    );
}

/// Like the upgrade, when the upgrade's first successor died in its
/// hand-over with each link pinned in both layouts (see
/// `legacy::make_v5_mid_handover`): the next one takes the links over and
/// removes the earlier layout's pins without detaching the links they
/// share with its own.
#[test]
fn an_upgrade_interrupted_in_its_hand_over_finishes_it_without_dropping_traffic() {
    assert_eq!(lb_userspace::datapath::PIN_LAYOUT, "v8");
    kill_and_restart(
        "upgrade-mid",
        |pin_dir| lb_tests::legacy::make_v5_mid_handover(pin_dir).unwrap(),
        true,
        &[],
        &[],
        "hand-over from the earlier layout finished",
    );
}

/// The successor's first sync rewrote nothing that was right; after an
/// `upgrade` from v5, it merged Service ports.
fn assert_first_sync(log: &str, upgrade: bool) {
    let first_sync = log
        .lines()
        .find(|l| l.contains("synced"))
        .unwrap_or_default();
    let ops: usize = first_sync
        .split(" ops=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ops in {first_sync}"));
    if upgrade {
        // v5 gave each frontend a Service port of its own: the first sync
        // merges them (entries, labels, aliases), writing something.
        assert!(
            ops > 0,
            "the upgrade merges the Service ports: {first_sync}"
        );
    } else {
        assert_eq!(
            ops, 0,
            "the takeover rewrites nothing that is right: {first_sync}"
        );
    }
}

/// The successor pinned its links: the uplink's of its hook (`tc_uplink`:
/// TC, else XDP and its hand-off), none of the other hook, the uplink's
/// egress and the pods' (ingress and egress).
fn assert_successor_links(topo: &ClusterTopology, pin_dir: &std::path::Path, tc_uplink: bool) {
    let (uplinks, gone): (&[&str], &[&str]) = if tc_uplink {
        (&["tcup-eth0"], &["xdp-eth0", "tcupho-eth0"])
    } else {
        (&["xdp-eth0", "tcupho-eth0"], &["tcup-eth0"])
    };
    let links = pin_dir
        .join(lb_userspace::datapath::PIN_LAYOUT)
        .join("links");
    for link in uplinks.iter().copied().chain([
        "tcupegress-eth0",
        "tc-vpod1a",
        "tc-vpod1b",
        "tc-vpod1c",
        "tcegress-vpod1a",
        "tcegress-vpod1b",
        "tcegress-vpod1c",
    ]) {
        assert!(
            links.join(link).exists(),
            "{link} is pinned by the successor"
        );
    }
    for link in gone {
        assert!(!links.join(link).exists(), "{link} is not pinned");
    }
    let link = topo
        .node1
        .exec(&["ip", "-d", "link", "show", "eth0"])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&link.stdout).contains("xdp"),
        !tc_uplink,
        "XDP is on the uplink exactly when it is the uplink hook"
    );
}

/// New connections the prober must have opened through the successor.
const PROBES_AFTER_READY: u32 = 20;

/// A flag shared with the prober thread.
type Flag = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// Successes counted by the prober thread as they happen.
type Count = std::sync::Arc<std::sync::atomic::AtomicU32>;

/// Opens a new connection to the web service every 20 ms (for at most two
/// minutes) until told to stop, except while paused; the thread returns
/// its failures. Returns the stop flag, a flag the prober sets while paused
/// with no connection under way, the running count of successes, and the
/// thread.
fn probe_continuously(
    topo: &ClusterTopology,
    pause: &Flag,
) -> (Flag, Flag, Count, std::thread::JoinHandle<Vec<String>>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let idle = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok: Count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let prober = {
        let stop = stop.clone();
        let idle = idle.clone();
        let pause = pause.clone();
        let ok = ok.clone();
        let client = topo.client.name().to_string();
        std::thread::spawn(move || {
            let ns = lb_tests::netns::Netns::existing(&client);
            let mut failed = Vec::new();
            let started = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_mins(2)
            {
                if pause.load(std::sync::atomic::Ordering::SeqCst) {
                    idle.store(true, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                idle.store(false, std::sync::atomic::Ordering::SeqCst);
                match lb_tests::traffic::http_get(&ns, WEB, Duration::from_secs(2)) {
                    Ok(_) => {
                        ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(e) => failed.push(format!("{:?}: {e}", started.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            failed
        })
    };
    (stop, idle, ok, prober)
}

/// Stops the prober once it has opened [`PROBES_AFTER_READY`] connections
/// more than `ok_at_ready` (waiting for its successes rather than assuming
/// a rate: a slow host opens fewer in the same time); fails unless it did,
/// and on any failed connection.
fn stop_probing(
    ok: &Count,
    ok_at_ready: u32,
    stop: &Flag,
    prober: std::thread::JoinHandle<Vec<String>>,
) {
    let since = std::time::Instant::now();
    while ok.load(std::sync::atomic::Ordering::SeqCst) < ok_at_ready + PROBES_AFTER_READY
        && since.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let failed = prober.join().unwrap();
    let ok = ok.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        ok >= ok_at_ready + PROBES_AFTER_READY && failed.is_empty(),
        "continuous new connections: {ok} ok ({ok_at_ready} before the successor was ready), \
         failed: {failed:?}"
    );
}

/// Waits until `agent`'s maps send new connections to the web service's
/// HTTP port to `backends` (as `lb-agent status` lists them: sorted,
/// comma-separated); fails when that takes more than `bound`.
fn until_web_serves(agent: &Agent, backends: &str, bound: Duration) {
    let line = format!("default/web-service {WEB}/TCP -> {backends}\n");
    let started = std::time::Instant::now();
    loop {
        let status = agent.status().unwrap();
        if status.contains(&line) {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "not serving {backends} after {bound:?}:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `args`, with the test bed's hook ([`test_bed_hook`]) first unless they
/// choose the uplink hook.
fn hook_or_test_bed<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = Vec::new();
    if !args.iter().any(|a| a.starts_with("--uplink-hook")) {
        all.extend_from_slice(test_bed_hook());
    }
    all.extend_from_slice(args);
    all
}

/// Starts an agent (with `first_hook`, else the test bed's hook), opens a
/// long-lived connection through SNAT and keeps opening
/// new ones, kills the agent, runs `between` on the pins, starts a successor
/// with `successor_args` more (whose log must say `expected_log`; the test
/// bed's hook unless they choose) and edits
/// an endpoint: nothing fails. With `simulated` (the pins of an earlier
/// layout made out of this one's), new connections pause from `between`
/// until the successor is ready: the programs left running keep writing to
/// the maps `between` replaced, so flows opened meanwhile are in no pinned
/// map, unlike with a real earlier agent, whose programs use its own pins.
fn kill_and_restart(
    tag: &str,
    between: fn(&std::path::Path),
    simulated: bool,
    first_hook: &[&str],
    successor_args: &[&str],
    expected_log: &str,
) {
    let topo = ClusterTopology::new().unwrap();
    let _servers = PodServers::start(&topo).unwrap();
    let manifests = ManifestDir::with_examples().unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/lbt{}x{tag}", std::process::id()));
    // Whatever fails below, the pins go (the agents' own cleanup needs them alive).
    let _pins = PinDirGuard(pin_dir.clone());
    let mut first_args = vec!["--manifests", dir.as_str()];
    first_args.extend_from_slice(first_hook);
    let first_args = hook_or_test_bed(&first_args);
    let mut first = Agent::start_pinned(&topo.node1, &first_args, &pin_dir).unwrap();
    first.cleanup_on_drop = false;
    first.wait_ready(Duration::from_secs(30)).unwrap();

    // A long-lived connection through SNAT (the remote backend), whose state lives in the maps.
    let mut conn = (0..40)
        .find_map(|_| {
            let mut c = HttpClient::connect(&topo.client, WEB, Duration::from_secs(2)).ok()?;
            (c.get().ok()? == "pod2a").then_some(c)
        })
        .expect("a connection to pod2a");

    // New connections, continuously, through the crash, the restart and the edit.
    let pause = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop, idle, ok, prober) = probe_continuously(&topo, &pause);

    first.kill();
    assert!(pin_dir.exists(), "a crash leaves the pins");
    for _ in 0..5 {
        assert_eq!(
            conn.get().unwrap(),
            "pod2a",
            "the established connection survives the crash"
        );
    }
    let counts = http_distribution(&topo.client, WEB, 20, DEADLINE);
    assert_eq!(
        counts.values().sum::<usize>(),
        20,
        "new connections succeed with no agent: {counts:?}"
    );
    assert_eq!(counts.get("error"), None, "{counts:?}");
    if simulated {
        pause.store(true, std::sync::atomic::Ordering::SeqCst);
        // A connection under way finishes first (2 s timeout at most, and
        // slack for a host whose cores other test passes share).
        let paused = std::time::Instant::now();
        while !idle.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                paused.elapsed() < Duration::from_secs(4),
                "the prober did not pause"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    between(&pin_dir);

    // The successor adopts the pins: the connection keeps working, then an edit applies.
    let args = vec!["--manifests", &dir, "--detach-on-exit"];
    let args = hook_or_test_bed(&[args.as_slice(), successor_args].concat());
    let mut second = Agent::start_pinned(&topo.node1, &args, &pin_dir).unwrap();
    second.wait_ready(Duration::from_secs(30)).unwrap();
    let ok_at_ready = ok.load(std::sync::atomic::Ordering::SeqCst);
    pause.store(false, std::sync::atomic::Ordering::SeqCst);
    let log = second.log();
    assert!(log.contains(expected_log), "{log}");
    let layouts: Vec<_> = std::fs::read_dir(&pin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        layouts,
        [lb_userspace::datapath::PIN_LAYOUT],
        "one layout remains"
    );
    assert_successor_links(&topo, &pin_dir, args.contains(&"tc"));
    assert_first_sync(&log, expected_log.contains("hand-over"));
    assert_eq!(
        conn.get().unwrap(),
        "pod2a",
        "still the same backend after the takeover"
    );
    // The edit: pod1c turns not ready. It takes no new connections, while a
    // connection that was opening to it when the edit landed carries on (a
    // removed endpoint, by contrast, loses its flows by design).
    let web = manifests.read("web-service.yaml").unwrap();
    let edited = web.replace(
        "  - addresses: [\"10.244.1.4\"]\n    conditions: {ready: true}",
        "  - addresses: [\"10.244.1.4\"]\n    conditions: {ready: false}",
    );
    assert_ne!(edited, web, "the example lists pod1c as ready");
    manifests.write("web-service.yaml", &edited).unwrap();
    until_web_serves(
        &second,
        "10.244.1.2:8080,10.244.1.3:8080,10.244.2.2:8080",
        // A liveness bound (passes share the two cores), not a speed figure.
        Duration::from_secs(5),
    );
    let counts = http_distribution(&topo.client, WEB, 40, DEADLINE);
    assert_eq!(
        counts.get("pod1c"),
        None,
        "the edit applies after the restart: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), 40);
    assert_eq!(conn.get().unwrap(), "pod2a");
    stop_probing(&ok, ok_at_ready, &stop, prober);
    assert!(second.stop(), "clean exit");
    assert!(!pin_dir.exists(), "--detach-on-exit removes the pins");
}
