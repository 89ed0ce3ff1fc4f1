//! CPU per request at a fixed offered rate: open-loop load well below
//! saturation, host-wide busy CPU time over the window (`/proc/stat`, all
//! CPUs: every namespace shares one kernel, so per-node CPU cannot be told
//! apart) divided by the requests answered, and the agent's BPF programs'
//! own run time per request (`BPF_ENABLE_STATS`).

use std::{collections::BTreeMap, net::SocketAddrV4, time::Duration};

use anyhow::Result;
use lb_tests::{
    cpu,
    paced::{fixed_rate, Kind},
    procfs::{self, ProgRuns},
};

use crate::modes::whole;

/// Kept-alive requests offered per second (about a sixteenth of direct's
/// saturated rate in BENCHMARKS.md: every mode sustains it on 2 cores).
pub(crate) const KEPT_ALIVE_RATE: u64 = 10_000;
/// New connections offered per second (about a fourteenth of direct's).
pub(crate) const NEW_CONNECTION_RATE: u64 = 2_000;
/// Clients sharing the schedule (each sends its share when due).
const WORKERS: usize = 8;
/// A window that answers less than this share of its offered requests is
/// flagged as short (its CPU figure is then not that of the offered rate).
pub(crate) const ACHIEVED_MIN: f64 = 0.95;
/// A window with less of the host idle than this (percent) is flagged.
pub(crate) const HOST_IDLE_MIN_PCT: u64 = 10;

/// One fixed-rate window of one mode.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Fixed {
    /// Requests offered per second.
    pub(crate) offered_per_s: u64,
    /// Requests answered per second over the window.
    pub(crate) achieved_per_s: u64,
    /// Requests that failed or timed out.
    pub(crate) errors: u64,
    /// Host-wide busy CPU per answered request, ns.
    pub(crate) cpu_ns_per_request: u64,
    /// CPU of the bench process (client and servers), the agent and the
    /// softirq threads per answered request, ns.
    pub(crate) own_cpu_ns_per_request: u64,
    /// Host idle share over the window, percent (near 0: the machine was
    /// saturated, by this load or by others', and the host figure is moot).
    pub(crate) host_idle_pct: u64,
    /// The agent's programs' run time per answered request, ns (our modes,
    /// with BPF statistics on).
    pub(crate) bpf_ns_per_request: Option<u64>,
    /// The agent's program runs per answered request, in hundredths.
    pub(crate) bpf_runs_per_request_x100: Option<u64>,
    /// p99 latency from when each request was due, µs.
    pub(crate) p99_us: u64,
}

impl Fixed {
    /// Whether the window fell short of its offered rate.
    pub(crate) fn short(&self) -> bool {
        #[allow(clippy::cast_precision_loss)] // rates far below 2^52
        let (achieved, offered) = (self.achieved_per_s as f64, self.offered_per_s as f64);
        achieved < ACHIEVED_MIN * offered
    }

    /// Whether the host had less than `HOST_IDLE_MIN_PCT` idle: its busy
    /// time then says nothing about this load.
    pub(crate) fn saturated(&self) -> bool {
        self.host_idle_pct < HOST_IDLE_MIN_PCT
    }
}

/// The windows of one mode.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FixedPair {
    /// Kept-alive requests to node1's pods.
    pub(crate) kept: Fixed,
    /// New connections (one request each) to node1's pods.
    pub(crate) conn: Fixed,
    /// Kept-alive requests to the pod on node2, forwarded by node1.
    pub(crate) remote: Fixed,
}

fn summed(progs: &BTreeMap<u32, ProgRuns>) -> (u64, u64) {
    progs
        .values()
        .fold((0, 0), |(t, n), p| (t + p.run_time_ns, n + p.run_cnt))
}

/// Offers `rate` requests per second of `kind` to `targets` for `window`,
/// reading host CPU (and the programs of `agent`, when given) around it.
pub(crate) async fn measure(
    targets: &[SocketAddrV4],
    kind: Kind,
    rate: u64,
    window: Duration,
    agent: Option<u32>,
) -> Result<Fixed> {
    let mut own: Vec<u32> = cpu::ksoftirqd_pids();
    own.push(std::process::id());
    own.extend(agent);
    let progs_before = agent.map(procfs::prog_runs_of);
    let own_before = cpu::processes_ticks(&own);
    let cpu_before = cpu::read()?;
    let load = fixed_rate(targets, kind, WORKERS, rate, window).await;
    let cpu_after = cpu::read()?;
    let own_after = cpu::processes_ticks(&own);
    let progs_after = agent.map(procfs::prog_runs_of);
    let busy = cpu::busy_between(&cpu_before, &cpu_after);
    let own_busy = cpu::ticks(own_after.saturating_sub(own_before));
    let all = cpu_after.total.saturating_sub(cpu_before.total).max(1);
    let idle = cpu_after.idle.saturating_sub(cpu_before.idle);
    let done = load.completed.max(1);
    let per = |total: u64| total / done;
    let bpf = progs_before.zip(progs_after).map(|(a, b)| {
        let (ta, na) = summed(&a);
        let (tb, nb) = summed(&b);
        (tb.saturating_sub(ta), nb.saturating_sub(na))
    });
    Ok(Fixed {
        offered_per_s: rate,
        achieved_per_s: whole(load.per_second()),
        errors: load.errors,
        cpu_ns_per_request: per(u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX)),
        own_cpu_ns_per_request: per(u64::try_from(own_busy.as_nanos()).unwrap_or(u64::MAX)),
        host_idle_pct: idle * 100 / all,
        bpf_ns_per_request: bpf.filter(|b| b.0 > 0).map(|b| per(b.0)),
        bpf_runs_per_request_x100: bpf.filter(|b| b.0 > 0).map(|b| per(b.1 * 100)),
        p99_us: u64::try_from(load.latency(99).as_micros()).unwrap_or(u64::MAX),
    })
}

/// The windows: kept-alive requests, then new connections, to `targets`;
/// then kept-alive requests to `remote` (the pod on node2, through node1).
pub(crate) async fn measure_pair(
    targets: &[SocketAddrV4],
    remote: SocketAddrV4,
    window: Duration,
    agent: Option<u32>,
) -> Result<FixedPair> {
    Ok(FixedPair {
        kept: {
            // For a profiler started by hand on this line (`perf record -a`
            // for less than the window), as the forwarded window's below.
            eprintln!("e2e: kept-alive window begins ({} s)", window.as_secs());
            measure(targets, Kind::KeptAlive, KEPT_ALIVE_RATE, window, agent).await?
        },
        conn: measure(
            targets,
            Kind::NewConnection,
            NEW_CONNECTION_RATE,
            window,
            agent,
        )
        .await?,
        remote: {
            eprintln!("e2e: forwarded window begins ({} s)", window.as_secs());
            measure(&[remote], Kind::KeptAlive, KEPT_ALIVE_RATE, window, agent).await?
        },
    })
}
