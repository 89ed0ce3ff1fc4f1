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
use objects::{seeded, slice, slice_yaml_at};

#[path = "control/agent.rs"]
mod agent;
#[path = "control/burst.rs"]
mod burst;
#[path = "control/memory.rs"]
mod memory;
#[path = "control/objects.rs"]
mod objects;
#[path = "control/text.rs"]
mod text;

/// Changes one by one in a round.
const CHANGES: usize = 1000;
/// Rounds per size (each from a cold start, no pins).
const ROUNDS: usize = 5;
/// The largest size's other Services (100,000 programmed, 1,000,000
/// endpoints: issue 15's scale), measured in the full run only.
const LARGE: u32 = 99_999;
/// Rounds at [`LARGE`] (about 40 s each here, after 17 s seeding the API server).
const LARGE_ROUNDS: usize = 3;

/// Waits until service `key`'s table moves from `before`: how long after
/// `sent` (at most `limit`).
fn until_moved(
    maps: &Maps,
    key: lb_common::ServiceKey,
    before: u32,
    sent: Instant,
    limit: Duration,
) -> Duration {
    loop {
        if maps.services.get(&key, 0).unwrap().table_offset != before {
            return sent.elapsed();
        }
        assert!(
            sent.elapsed() < limit,
            "a change never reached the map within {limit:?}"
        );
    }
}

/// How long a change may take to reach the map: 30 s.
const CHANGE_LIMIT: Duration = Duration::from_secs(30);

/// How long a relist of `services` Services may take: 30 s and 1 s per
/// 1,000 (at 100,000 the agent lists 1,000,000 endpoints again, as long as
/// a cold start).
fn relist_limit(services: u32) -> Duration {
    CHANGE_LIMIT + Duration::from_millis(u64::from(services))
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
    let (mut agent, pin_dir, log, kubeconfig) =
        start_agent(server, &tag, &agent::capacity(extra + 1));
    // A round that fails stops its agent and removes its pins.
    let _failed = agent::OnFailure::new(agent.id(), &pin_dir, &kubeconfig);
    wait_ready(&mut agent, &log);
    let cold_us = u64::try_from(cold.elapsed().as_micros()).unwrap_or(u64::MAX);
    eprintln!(
        "control: {} services, round {round}: ready in {:.2} s",
        extra + 1,
        cold.elapsed().as_secs_f64()
    );
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
            latencies.push(until_moved(&maps, key, before, sent, CHANGE_LIMIT));
        }
        sampler.enter(2);
        let burst = (extra >= burst::UPDATES).then(|| {
            // For a profiler started by hand on this line.
            eprintln!(
                "control: burst begins at {} services, agent pid {}",
                extra + 1,
                agent.id()
            );
            let range = u32::try_from(round % 2).unwrap() ^ 1;
            let burst = burst::run(server, &maps, &pin_dir, agent.id(), range, slice_yaml_at);
            eprintln!("control: burst ends");
            burst
        });
        // The relist: every watch ended by 410 Gone; done when a change
        // made after it is in the map (the slices were listed again).
        sampler.enter(3);
        let lists = server.lists();
        let before = maps.services.get(&key, 0).unwrap().table_offset;
        let sent = Instant::now();
        server.expire_watches();
        server.apply(&slice(&next_ip())).unwrap();
        let relist = until_moved(&maps, key, before, sent, relist_limit(extra + 1));
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
    eprintln!(
        "control: {} services, round {round}: change p99 {:.2} ms, burst p99 {}, relist {:.2} s, own peak {:.0} MiB, VmHWM {:.0} MiB",
        extra + 1,
        ms(spread(&latencies).1),
        burst
            .as_ref()
            .map_or("-".into(), |b| format!("{:.2} ms", ms(spread(&b.latencies).1))),
        relist.as_secs_f64(),
        mib(peaks.iter().map(|p| p.own_kib()).max().unwrap_or(0)),
        mib(hwm_kib)
    );
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
    let began = Instant::now();
    let server = seeded(extra);
    let seeded = began.elapsed();
    let runs: Vec<Round> = (0..rounds)
        .map(|r| round(&server, extra, r, changes))
        .collect();
    eprintln!(
        "control: {} services, {rounds} round(s): seeded in {:.1} s, {:.1} s in all",
        extra + 1,
        seeded.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
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
        "services": extra + 1, "rounds": rounds, "endpoints_per_other_service": 10, "watch_page_size": WATCH_PAGE,
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

/// Whether to measure `services`: `LB_CONTROL_SIZES` (comma-separated
/// Service counts) picks sizes for a look by hand, not a run to report.
fn only(services: u32) -> bool {
    std::env::var("LB_CONTROL_SIZES").map_or(true, |list| {
        list.split(',').any(|s| s.trim().parse() == Ok(services))
    })
}

fn main() {
    lb_tests::require_root();
    lb_tests::require_bpffs();
    let quick = std::env::var_os("LB_BENCH_QUICK").is_some();
    let rounds = if quick { 1 } else { ROUNDS };
    // The quick run stops at 10,000 Services (it must end within 10 minutes).
    let sizes: Vec<(u32, usize)> = [0, 999, 9_999]
        .map(|extra| (extra, rounds))
        .into_iter()
        .chain((!quick).then_some((LARGE, LARGE_ROUNDS)))
        .filter(|&(extra, _)| only(extra + 1))
        .collect();
    let header = text::header(rounds, quick);
    print!("{header}");
    let sizes: Vec<_> = sizes
        .into_iter()
        .map(|(extra, rounds)| measure(extra, rounds, CHANGES))
        .collect();
    let burst_header = text::burst_header(quick);
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
