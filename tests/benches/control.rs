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

use lb_tests::{apiserver::TestApiServer, stats::percentile};
use lb_userspace::{
    datapath::{cleanup, maps::Maps},
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

/// Starts the agent on `server`; returns it, its pin dir and log path.
fn start_agent(
    server: &TestApiServer,
    tag: &str,
) -> (std::process::Child, PathBuf, PathBuf, PathBuf) {
    let kubeconfig = std::env::temp_dir().join(format!("{tag}-kubeconfig"));
    server.write_kubeconfig(&kubeconfig).unwrap();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
    let log = std::env::temp_dir().join(format!("{tag}-agent.log"));
    // No interface: the control path alone, in this namespace.
    let agent = Command::new(lb_tests::agent::agent_bin().unwrap())
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
    (agent, pin_dir, log, kubeconfig)
}

fn service_yaml(name: &str, ip: Ipv4Addr) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n")
}

fn slice_yaml(service: &str, ip: &str) -> String {
    slice(ip)
        .replace("name: lat-1", &format!("name: {service}-1"))
        .replace("service-name: lat", &format!("service-name: {service}"))
}

/// With `extra` other services programmed, times `changes` slice changes of
/// one service; returns a Markdown table row and a JSON record.
fn measure(extra: u32, changes: usize) -> (String, serde_json::Value) {
    let server = TestApiServer::start().expect("test API server");
    for i in 0..extra {
        let ip = Ipv4Addr::from(0x0a60_1000 + i);
        server.apply(&service_yaml(&format!("s{i}"), ip)).unwrap();
        server
            .apply(&slice_yaml(
                &format!("s{i}"),
                &format!("10.250.{}.{}", i / 250, i % 250 + 1),
            ))
            .unwrap();
    }
    server
        .apply(&service_yaml("lat", Ipv4Addr::new(10, 96, 0, 60)))
        .unwrap();
    server.apply(&slice("10.244.3.1")).unwrap();
    let tag = format!("lbt{}xbench{extra}", std::process::id());
    let cold = Instant::now();
    let (mut agent, pin_dir, log, kubeconfig) = start_agent(&server, &tag);
    let key = Frontend {
        addr: Ipv4Addr::new(10, 96, 0, 60),
        port: 80,
        proto: Protocol::Tcp,
    }
    .key();
    let maps = loop {
        if let Ok(maps) = Maps::from_pins(&pin_dir) {
            if maps.services.get(&key, 0).is_ok() {
                break maps;
            }
        }
        assert!(
            cold.elapsed() < Duration::from_mins(2),
            "agent not ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let cold = cold.elapsed();
    let mut latencies = Vec::with_capacity(changes);
    for i in 0..changes {
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
    cleanup(&pin_dir);
    let _ = std::fs::remove_file(&kubeconfig);
    if std::env::var_os("LB_BENCH_KEEP_LOG").is_some() {
        eprintln!("agent log kept at {}", log.display());
    } else {
        let _ = std::fs::remove_file(&log);
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p99, max) = (
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        latencies[latencies.len() - 1],
    );
    let row = format!(
        "| {} | {:.1} | {changes} | {:.2} | {:.2} | {:.2} |",
        extra + 1,
        ms(cold),
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!("{row}");
    let json = serde_json::json!({
        "services": extra + 1, "cold_start_ms": ms(cold), "changes": changes,
        "p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max),
    });
    (row, json)
}

fn main() {
    lb_tests::require_root();
    lb_tests::require_bpffs();
    let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
    let header = "Control path: an EndpointSlice change at the test API server -> the kernel map holding it, \
                  through the real agent (`--source kube`, release build).\n\n\
                  | services programmed | cold start to programmed (ms) | changes | p50 (ms) | p99 (ms) | max (ms) |\n\
                  |---:|---:|---:|---:|---:|---:|\n";
    print!("{header}");
    let (small, small_json) = measure(0, if quick { 200 } else { CHANGES });
    let (large, large_json) = measure(9_999, if quick { 50 } else { 200 });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("control.md"),
        format!("{header}{small}\n{large}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("control.json"),
        serde_json::to_string_pretty(&serde_json::json!([small_json, large_json])).unwrap(),
    )
    .unwrap();
}
