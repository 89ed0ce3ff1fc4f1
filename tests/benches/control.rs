//! Control-path latency: from the API server sending an EndpointSlice change
//! to the kernel map holding it, over 1,000 changes, through the real agent
//! binary (`--source kube`) and the test API server on loopback. Reports p50
//! and p99. Run with `cargo xtask bench`.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    apiserver::TestApiServer,
    procfs,
    stats::{figure, percentile},
};
use lb_userspace::{
    datapath::{cleanup, maps::Maps},
    desired::{Frontend, Protocol},
};

const CHANGES: usize = 1000;
/// Cold starts per size (each from no pins): the median is reported.
const COLD_ROUNDS: usize = 5;

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

/// The EndpointSlice of service number `i`: ten ready endpoints.
fn slice_yaml(service: &str, i: u32) -> String {
    let base = u32::from(Ipv4Addr::new(10, 250, 0, 0)) + i * 10;
    let endpoints: Vec<String> = (0..10)
        .map(|k| {
            format!(
                "{{addresses: [\"{}\"], conditions: {{ready: true}}}}",
                Ipv4Addr::from(base + k)
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// Reads the agent's stdout until it says it is ready: the first full sync
/// wrote every service.
fn wait_ready(agent: &mut std::process::Child, log: &Path) {
    let mut stdout = std::io::BufReader::new(agent.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    while !line.contains("lb-agent ready") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(
            n > 0,
            "agent exited before ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// Stops the agent and removes its pins, kubeconfig and (unless
/// `LB_BENCH_KEEP_LOG`) its log.
fn stop_agent(mut agent: std::process::Child, pin_dir: &Path, log: &Path, kubeconfig: &Path) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(i32::try_from(agent.id()).unwrap(), libc::SIGTERM);
    }
    let _ = agent.wait();
    cleanup(pin_dir);
    let _ = std::fs::remove_file(kubeconfig);
    if std::env::var_os("LB_BENCH_KEEP_LOG").is_some() {
        eprintln!("agent log kept at {}", log.display());
    } else {
        let _ = std::fs::remove_file(log);
    }
}

/// The p99 (ms) of each of `blocks` consecutive blocks of `latencies`
/// (in the order measured): one figure per round for the per-round verdicts.
fn block_p99s_ms(latencies: &[Duration], blocks: usize) -> Vec<f64> {
    latencies
        .chunks(latencies.len().div_ceil(blocks.max(1)).max(1))
        .map(|block| {
            let mut block = block.to_vec();
            block.sort();
            percentile(&block, 99).as_secs_f64() * 1e3
        })
        .collect()
}

/// With `extra` other services programmed, times the cold start in
/// `rounds` and then `changes` slice changes of one service; returns a
/// Markdown table row and a JSON record.
fn measure(extra: u32, rounds: usize, changes: usize) -> (String, serde_json::Value) {
    let server = TestApiServer::start().expect("test API server");
    for i in 0..extra {
        let ip = Ipv4Addr::from(0x0a60_1000 + i);
        server.apply(&service_yaml(&format!("s{i}"), ip)).unwrap();
        server.apply(&slice_yaml(&format!("s{i}"), i)).unwrap();
    }
    server
        .apply(&service_yaml("lat", Ipv4Addr::new(10, 96, 0, 60)))
        .unwrap();
    server.apply(&slice("10.244.3.1")).unwrap();
    // Cold start in rounds, each agent from no pins; the last one stays
    // for the change latencies.
    let mut colds_us = Vec::with_capacity(rounds);
    let mut peaks_kib = Vec::with_capacity(rounds);
    let mut started = None;
    for round in 0..rounds {
        let tag = format!("lbt{}xbench{extra}r{round}", std::process::id());
        let cold = Instant::now();
        let (mut agent, pin_dir, log, kubeconfig) = start_agent(&server, &tag);
        wait_ready(&mut agent, &log);
        colds_us.push(u64::try_from(cold.elapsed().as_micros()).unwrap_or(u64::MAX));
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap();
        peaks_kib.push(procfs::peak_rss_kib(&status).expect("VmHWM"));
        if round + 1 < rounds {
            stop_agent(agent, &pin_dir, &log, &kubeconfig);
        } else {
            started = Some((agent, pin_dir, log, kubeconfig, status));
        }
    }
    let (agent, pin_dir, log, kubeconfig, status) = started.expect("at least one round");
    let cold = figure(&colds_us);
    let peak_rss_kib = peaks_kib.iter().copied().max().unwrap_or(0);
    let heap_kib = procfs::anon_rss_kib(&status).expect("RssAnon");
    let maps_bytes = procfs::maps_memlock_of(agent.id());
    let key = Frontend {
        addr: Ipv4Addr::new(10, 96, 0, 60),
        port: 80,
        proto: Protocol::Tcp,
    }
    .key();
    let maps = Maps::from_pins(&pin_dir).unwrap();
    let programmed = maps.services.keys().count();
    assert_eq!(
        programmed,
        extra as usize + 1,
        "every service programmed at ready: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
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
    stop_agent(agent, &pin_dir, &log, &kubeconfig);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p99_rounds_ms = block_p99s_ms(&latencies, rounds);
    latencies.sort();
    #[allow(clippy::cast_precision_loss)] // microseconds far below 2^52
    let us_ms = |us: u64| us as f64 / 1e3;
    let (p50, p99, max) = (
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        latencies[latencies.len() - 1],
    );
    #[allow(clippy::cast_precision_loss)] // memory sizes far below 2^52
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let row = format!(
        "| {} | {:.1} ({:.1}-{:.1}) | {:.0} | {:.0} | {:.0} | {changes} | {:.2} | {:.2} | {:.2} |",
        extra + 1,
        us_ms(cold.median),
        us_ms(cold.low),
        us_ms(cold.high),
        mib(peak_rss_kib * 1024),
        mib(heap_kib * 1024),
        mib(maps_bytes),
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!("{row}");
    let json = serde_json::json!({
        "services": extra + 1, "endpoints_per_other_service": 10, "cold_start_ms": us_ms(cold.median),
        "cold_start_rounds_ms": colds_us.iter().map(|&us| us_ms(us)).collect::<Vec<_>>(),
        "agent_peak_rss_kib": peak_rss_kib, "agent_heap_at_ready_kib": heap_kib, "maps_memlock_bytes": maps_bytes, "changes": changes,
        "p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max),
        "p99_rounds_ms": p99_rounds_ms, "agent_peak_rss_rounds_kib": peaks_kib,
    });
    (row, json)
}

fn main() {
    lb_tests::require_root();
    lb_tests::require_bpffs();
    let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
    let header = format!("Control path, through the real agent (`--source kube`, release build) and the test API \
                  server: cold start until the agent is ready with every Service programmed (the other \
                  Services have 10 endpoints each; median and spread of {COLD_ROUNDS} cold starts, one with \
                  `--quick`), its peak RSS (the highest of the cold starts; it includes the \
                  memory-mapped Maglev slab, kernel map memory) and its heap at ready (`RssAnon`), and its maps' kernel \
                  memory; then an EndpointSlice change at the API server -> the kernel map holding it (the \
                  JSON also gives the p99 of each of as many consecutive blocks of the changes as there \
                  were cold starts, and each cold start's peak RSS, for the per-round verdicts).\n\n\
                  | services programmed | cold start to ready (ms) | agent peak RSS (MiB) | agent heap at ready (MiB) | map memory (MiB) | changes | p50 (ms) | p99 (ms) | max (ms) |\n\
                  |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    print!("{header}");
    let rounds = if quick { 1 } else { COLD_ROUNDS };
    let (small, small_json) = measure(0, rounds, if quick { 200 } else { CHANGES });
    let (mid, mid_json) = measure(999, rounds, if quick { 50 } else { 200 });
    let (large, large_json) = measure(9_999, rounds, if quick { 50 } else { 200 });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("control.md"),
        lb_tests::bench_run::stamped_text(&format!("{header}{small}\n{mid}\n{large}\n")),
    )
    .unwrap();
    std::fs::write(
        dir.join("control.json"),
        serde_json::to_string_pretty(&lb_tests::bench_run::stamped(
            serde_json::json!({"sizes": [small_json, mid_json, large_json]}),
        ))
        .unwrap(),
    )
    .unwrap();
}
