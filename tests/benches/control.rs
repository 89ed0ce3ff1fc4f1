//! Control-path latency: from the API server sending an EndpointSlice change
//! to the kernel map holding it, over 1,000 changes a round and a burst of
//! 1,000 in a second while packets run, through the real agent binary
//! (`--source kube`) and the test API server on loopback (paged lists, a
//! relist forced by `410 Gone`); cold start, and memory through every phase.
//! Run with `cargo xtask bench`.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use agent::{start_agent, stop_agent, wait_ready};
use lb_tests::{
    apiserver::TestApiServer,
    procfs,
    stats::{figure, percentile},
};
use lb_userspace::{
    datapath::maps::Maps,
    desired::{Frontend, Protocol},
};

#[path = "control/agent.rs"]
mod agent;
#[path = "control/burst.rs"]
mod burst;
#[path = "control/memory.rs"]
mod memory;

/// Changes one by one in a round.
const CHANGES: usize = 1000;
/// Rounds per size (each from a cold start, no pins).
const ROUNDS: usize = 5;

fn slice(ip: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: lat-1, namespace: default, labels: {{kubernetes.io/service-name: lat}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
         endpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n"
    )
}

fn service_yaml(name: &str, ip: Ipv4Addr) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n")
}

/// The EndpointSlice of service number `i`: ten ready endpoints.
fn slice_yaml(service: &str, i: u32) -> String {
    slice_yaml_at(service, burst::endpoint_base(i, 0))
}

/// The EndpointSlice of `service`: ten ready endpoints from `base` on.
fn slice_yaml_at(service: &str, base: u32) -> String {
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

/// Waits until service `key`'s table moves from `before`: how long after `sent`.
fn until_moved(maps: &Maps, key: lb_common::ServiceKey, before: u32, sent: Instant) -> Duration {
    loop {
        if maps.services.get(&key, 0).unwrap().table_offset != before {
            return sent.elapsed();
        }
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "a change never reached the map"
        );
    }
}

/// Halts a sampler when dropped (also while a failed round unwinds).
struct Halt<'a>(&'a memory::Sampler);

impl Drop for Halt<'_> {
    fn drop(&mut self) {
        self.0.halt();
    }
}

/// What one round measured (after its cold start).
struct Round {
    cold_us: u64,
    /// `VmHWM` at the end of the round, KiB.
    hwm_kib: u64,
    peaks: [procfs::RssSplit; memory::PHASES.len()],
    maps_bytes: u64,
    latencies: Vec<Duration>,
    burst: Option<burst::Burst>,
    relist: Duration,
}

/// One round on `server` (holding `extra` other Services): a cold start,
/// `changes` slice changes one by one, a burst (with 1,000 other Services
/// or more), a relist forced by `410 Gone`; the agent's memory sampled
/// throughout.
fn round(server: &TestApiServer, extra: u32, round: usize, changes: usize) -> Round {
    let tag = format!("lbt{}xbench{extra}r{round}", std::process::id());
    let cold = Instant::now();
    let (mut agent, pin_dir, log, kubeconfig) = start_agent(server, &tag);
    wait_ready(&mut agent, &log);
    let cold_us = u64::try_from(cold.elapsed().as_micros()).unwrap_or(u64::MAX);
    let sampler = memory::Sampler::new(agent.id());
    sampler.sample();
    let key = Frontend {
        addr: Ipv4Addr::new(10, 96, 0, 60),
        port: 80,
        proto: Protocol::Tcp,
    }
    .key();
    let maps = Maps::from_pins(&pin_dir).unwrap();
    assert_eq!(
        maps.services.keys().count(),
        extra as usize + 1,
        "every service programmed at ready: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut latencies = Vec::with_capacity(changes);
    let mut next_ip = {
        // Each round takes `changes` addresses and one more for the relist:
        // a round starting where the last one's relist left the slice would
        // change nothing, and wait for a move that never comes.
        let mut n = round * (changes + 1);
        move || {
            n += 1;
            format!("10.244.{}.{}", 3 + n / 250 % 200, n % 250 + 1)
        }
    };
    let (burst, relist, peaks) = std::thread::scope(|s| {
        s.spawn(|| sampler.run());
        // A round that panics halts the sampler, or the scope would wait for it forever.
        let _halt = Halt(&sampler);
        sampler.enter(1);
        for _ in 0..changes {
            let before = maps.services.get(&key, 0).unwrap().table_offset;
            let sent = Instant::now();
            server.apply(&slice(&next_ip())).unwrap();
            latencies.push(until_moved(&maps, key, before, sent));
        }
        sampler.enter(2);
        let burst = (extra >= burst::UPDATES).then(|| {
            let range = u32::try_from(round % 2).unwrap() ^ 1;
            burst::run(server, &maps, &pin_dir, agent.id(), range, slice_yaml_at)
        });
        // The relist: every watch ended by 410 Gone; done when a change
        // made after it is in the map (the slices were listed again).
        sampler.enter(3);
        let lists = server.lists();
        let before = maps.services.get(&key, 0).unwrap().table_offset;
        let sent = Instant::now();
        server.expire_watches();
        server.apply(&slice(&next_ip())).unwrap();
        let relist = until_moved(&maps, key, before, sent);
        // The other kinds relist too, each after the watcher's backoff.
        while server.lists() < lists + 3 {
            assert!(
                sent.elapsed() < Duration::from_mins(1),
                "every kind relisted"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        (burst, relist, sampler.stop())
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap();
    let hwm_kib = procfs::peak_rss_kib(&status).expect("VmHWM");
    let maps_bytes = procfs::maps_memlock_of(agent.id());
    drop(maps);
    stop_agent(agent, &pin_dir, &log, &kubeconfig);
    Round {
        cold_us,
        hwm_kib,
        peaks,
        maps_bytes,
        latencies,
        burst,
        relist,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[allow(clippy::cast_precision_loss)] // KiB far below 2^52
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// p50, p99 and max of `latencies` (any order).
fn spread(latencies: &[Duration]) -> (Duration, Duration, Duration) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    (
        percentile(&sorted, 50),
        percentile(&sorted, 99),
        sorted[sorted.len() - 1],
    )
}

/// With `extra` other services programmed, runs `rounds` rounds of
/// `changes` changes each; returns the Markdown table rows (the size, its
/// burst) and a JSON record.
fn measure(extra: u32, rounds: usize, changes: usize) -> (String, String, serde_json::Value) {
    let server = TestApiServer::start().expect("test API server");
    for i in 0..extra {
        server
            .apply(&service_yaml(&format!("s{i}"), burst::service_ip(i)))
            .unwrap();
        server.apply(&slice_yaml(&format!("s{i}"), i)).unwrap();
    }
    server
        .apply(&service_yaml("lat", Ipv4Addr::new(10, 96, 0, 60)))
        .unwrap();
    server.apply(&slice("10.244.3.1")).unwrap();
    let runs: Vec<Round> = (0..rounds)
        .map(|r| round(&server, extra, r, changes))
        .collect();
    let colds_us: Vec<u64> = runs.iter().map(|r| r.cold_us).collect();
    let cold = figure(&colds_us);
    #[allow(clippy::cast_precision_loss)] // microseconds far below 2^52
    let us_ms = |us: u64| us as f64 / 1e3;
    let all: Vec<Duration> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
    let (p50, p99, max) = spread(&all);
    let p99_rounds_ms: Vec<f64> = runs.iter().map(|r| ms(spread(&r.latencies).1)).collect();
    // Memory: the peak of each phase over the rounds; the own peak over all phases.
    let mut peaks = [procfs::RssSplit::default(); memory::PHASES.len()];
    for r in &runs {
        for (p, q) in peaks.iter_mut().zip(&r.peaks) {
            *p = p.max(*q);
        }
    }
    let own_rounds_kib: Vec<u64> = runs
        .iter()
        .map(|r| r.peaks.iter().map(|p| p.own_kib()).max().unwrap_or(0))
        .collect();
    let own_kib = own_rounds_kib.iter().copied().max().unwrap_or(0);
    let mapped_kib = peaks.iter().map(|p| p.bpf_maps_kib).max().unwrap_or(0);
    let hwm_kib = runs.iter().map(|r| r.hwm_kib).max().unwrap_or(0);
    let maps_bytes = runs.iter().map(|r| r.maps_bytes).max().unwrap_or(0);
    let maps_kib = maps_bytes / 1024;
    let relist_rounds_ms: Vec<f64> = runs.iter().map(|r| ms(r.relist)).collect();
    let relist_ms = median_f64(&relist_rounds_ms);
    let row = format!(
        "| {} | {:.1} ({:.1}-{:.1}) | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {relist_ms:.0} |",
        extra + 1,
        us_ms(cold.median),
        us_ms(cold.low),
        us_ms(cold.high),
        mib(hwm_kib),
        mib(own_kib),
        mib(mapped_kib),
        mib(maps_kib),
        mib(own_kib + maps_kib),
        all.len(),
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!("{row}");
    let mut json = serde_json::json!({
        "services": extra + 1, "endpoints_per_other_service": 10, "watch_page_size": WATCH_PAGE,
        "cold_start_ms": us_ms(cold.median),
        "cold_start_rounds_ms": colds_us.iter().map(|&us| us_ms(us)).collect::<Vec<_>>(),
        "agent_peak_rss_kib": hwm_kib, "agent_peak_rss_rounds_kib": runs.iter().map(|r| r.hwm_kib).collect::<Vec<_>>(),
        "agent_own_peak_kib": own_kib, "agent_own_peak_rounds_kib": own_rounds_kib,
        "bpf_mapped_peak_kib": mapped_kib, "maps_memlock_bytes": maps_bytes,
        "own_plus_maps_kib": own_kib + maps_kib, "rss_phases": memory::phases_json(&peaks),
        "changes": all.len(), "changes_per_round": changes,
        "p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max), "p99_rounds_ms": p99_rounds_ms,
        "relist_ms": relist_ms, "relist_rounds_ms": relist_rounds_ms,
    });
    let bursts: Vec<&burst::Burst> = runs.iter().filter_map(|r| r.burst.as_ref()).collect();
    let mut burst_row = String::new();
    if !bursts.is_empty() {
        let all: Vec<Duration> = bursts.iter().flat_map(|b| b.latencies.clone()).collect();
        let (p50, p99, max) = spread(&all);
        let drains: Vec<f64> = bursts.iter().map(|b| ms(b.drain)).collect();
        let sends: Vec<f64> = bursts.iter().map(|b| ms(b.send)).collect();
        let packets: u64 = bursts.iter().map(|b| b.packets).sum();
        let balanced: u64 = bursts.iter().map(|b| b.balanced).sum();
        burst_row = format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {packets} | {balanced} |",
            extra + 1,
            all.len(),
            median_f64(&sends),
            ms(p50),
            ms(p99),
            ms(max),
            median_f64(&drains),
        );
        json["burst"] = serde_json::json!({
            "updates": burst::UPDATES, "updates_total": all.len(), "send_ms": median_f64(&sends),
            "send_rounds_ms": sends, "p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max),
            "p99_rounds_ms": bursts.iter().map(|b| ms(spread(&b.latencies).1)).collect::<Vec<_>>(),
            "drain_ms": median_f64(&drains), "drain_rounds_ms": drains,
            "packets": packets, "packets_to_a_backend": balanced,
        });
    }
    (row, burst_row, json)
}

fn median_f64(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// kube-rs' watcher lists in pages of this many (its default, which the
/// agent keeps); the test API server pages when asked.
const WATCH_PAGE: u32 = 500;

fn main() {
    lb_tests::require_root();
    lb_tests::require_bpffs();
    let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
    let rounds = if quick { 1 } else { ROUNDS };
    let header = format!("Control path, through the real agent (`--source kube`, release build) and the test API \
                  server, which pages lists: the agent's watcher lists in pages of {WATCH_PAGE} (kube-rs' default). \
                  {rounds} round(s) a size, each: a cold start until the agent is ready with every Service \
                  programmed (the other Services have 10 endpoints each; median and spread), {CHANGES} \
                  EndpointSlice changes one after another (API server send -> the kernel map holding it; \
                  p50/p99/max over every round, the JSON has each round's p99), a burst (below), then a relist \
                  forced by ending every watch with `410 Gone` (until a change made after it is in the map). \
                  Memory: peak RSS (`VmHWM`, everything), and through every phase (ready, changes, burst, after \
                  the relist; `smaps` at each switch, `VmRSS` every 20 ms between): the agent's own peak (without the mmapped \
                  BPF maps: Maglev slab windows and filter), the mmapped maps' resident peak, the kernel memory of \
                  all its maps (`memlock`, slab whole) and own + maps. The JSON has each phase's peaks.\n\n\
                  | services programmed | cold start to ready (ms) | peak RSS (MiB) | own peak, no maps (MiB) | mmapped maps (MiB) | map memory (MiB) | own + maps (MiB) | changes | p50 (ms) | p99 (ms) | max (ms) | relist (ms) |\n\
                  |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    print!("{header}");
    let sizes = [0, 999, 9_999].map(|extra| measure(extra, rounds, CHANGES));
    let burst_header = format!("\nBurst, at 10,000 Services: {} EndpointSlice updates of as many Services sent one a millisecond (within 1 s), \
                  while SYNs to those Services run through the agent's own XDP program (`BPF_PROG_TEST_RUN` on it, \
                  one at a time, 50 then a 1 ms pause (under 50,000/s), each checked to pass rewritten to a backend): each \
                  update's send -> map latency, and the drain (last update sent -> last one in the map). \
                  The poller sweeps the pending Services' map entries every 0.2 ms, so a latency includes up to a sweep and a pause.\n\n\
                  | services programmed | updates | sent in (ms) | p50 (ms) | p99 (ms) | max (ms) | drain (ms) | packets | to a backend |\n\
                  |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n", burst::UPDATES);
    print!("{burst_header}");
    let mut md = header;
    for (row, _, _) in &sizes {
        md.push_str(row);
        md.push('\n');
    }
    md.push_str(&burst_header);
    for (_, burst_row, _) in &sizes {
        if !burst_row.is_empty() {
            println!("{burst_row}");
            md.push_str(burst_row);
            md.push('\n');
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("control.md"),
        lb_tests::bench_run::stamped_text(&md),
    )
    .unwrap();
    let sizes: Vec<serde_json::Value> = sizes.into_iter().map(|(_, _, j)| j).collect();
    std::fs::write(
        dir.join("control.json"),
        serde_json::to_string_pretty(&lb_tests::bench_run::stamped(
            serde_json::json!({"sizes": sizes}),
        ))
        .unwrap(),
    )
    .unwrap();
}
