//! Control-path latency: from the API server sending an EndpointSlice change
//! to the kernel map holding it, over 1,000 changes, through the real agent
//! binary (`--source kube`) and the test API server on loopback. Reports p50
//! and p99. Run with `cargo xtask bench`.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::apiserver::TestApiServer;
use lb_userspace::{
    datapath::{maps::Maps, remove_pins},
    desired::{Frontend, Protocol},
};

const CHANGES: usize = 1000;

fn slice(ip: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: lat-1, namespace: default, labels: {{kubernetes.io/service-name: lat}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
         endpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n"
    )
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn main() {
    lb_tests::require_root();
    lb_tests::require_bpffs();
    let server = TestApiServer::start().expect("test API server");
    server
        .apply("apiVersion: v1\nkind: Service\nmetadata: {name: lat, namespace: default}\nspec: {clusterIP: 10.96.0.60, ports: [{name: http, port: 80}]}\n")
        .unwrap();
    server.apply(&slice("10.244.3.1")).unwrap();
    let tag = format!("lbt{}xbench", std::process::id());
    let kubeconfig = std::env::temp_dir().join(format!("{tag}-kubeconfig"));
    server.write_kubeconfig(&kubeconfig).unwrap();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
    let log = std::env::temp_dir().join(format!("{tag}-agent.log"));
    // No interface: the control path alone, in this namespace.
    let mut agent = Command::new(lb_tests::agent::agent_bin().unwrap())
        .args([
            "--log-level",
            "warn",
            "run",
            "--source",
            "kube",
            "--node-name",
            "bench",
            "--node-ip",
            "127.0.0.1",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--pin-dir")
        .arg(&pin_dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("lb-agent");
    let key = Frontend {
        addr: Ipv4Addr::new(10, 96, 0, 60),
        port: 80,
        proto: Protocol::Tcp,
    }
    .key();
    let started = Instant::now();
    let maps = loop {
        if let Ok(maps) = Maps::from_pins(&pin_dir) {
            if maps.services.get(&key, 0).is_ok() {
                break maps;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "agent not ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut latencies = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let before = maps.services.get(&key, 0).unwrap().table_offset;
        let ip = format!("10.244.{}.{}", 3 + (i + 1) / 250, (i + 1) % 250 + 1);
        let sent = Instant::now();
        server.apply(&slice(&ip)).unwrap();
        loop {
            if maps.services.get(&key, 0).unwrap().table_offset != before {
                latencies.push(sent.elapsed());
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "change {i} never reached the map"
            );
        }
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(i32::try_from(agent.id()).unwrap(), libc::SIGTERM);
    }
    let _ = agent.wait();
    remove_pins(&pin_dir);
    let _ = std::fs::remove_file(&kubeconfig);
    let _ = std::fs::remove_file(&log);
    latencies.sort();
    println!(
        "control path: EndpointSlice change at the API server -> kernel map, {CHANGES} changes"
    );
    println!(
        "  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        percentile(&latencies, 50).as_secs_f64() * 1e3,
        percentile(&latencies, 99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
}
