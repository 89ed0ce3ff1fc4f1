//! The agent's resident memory through a round, its peak kept per phase,
//! split into the agent's own memory and the BPF maps it has mmapped (the
//! Maglev slab's windows and the filter). `smaps` (the split) is read at
//! every phase switch; between, a thread reads `VmRSS` from `status` every
//! 20 ms (`LB_BENCH_SAMPLE_MS` sets the period, 0: at the switches only),
//! taking the mapped maps as at the last switch. Reading `smaps` every
//! 20 ms walks the agent's page tables under its mmap lock and was seen to
//! raise the 10,000-Service change p99 from under 1 ms to 12 ms.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use lb_tests::procfs::{self, RssSplit};

/// The phases of a round, in order.
pub const PHASES: [&str; 4] = ["ready", "churn", "burst", "relist"];

/// The sampling period: `LB_BENCH_SAMPLE_MS`, else 20 ms; `None` for 0.
fn every() -> Option<Duration> {
    let ms = std::env::var("LB_BENCH_SAMPLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Samples the agent's memory while a round runs.
pub struct Sampler {
    pid: u32,
    phase: AtomicUsize,
    /// The mapped maps' resident KiB at the last `smaps` read.
    mapped_kib: AtomicU64,
    stop: AtomicBool,
    peaks: Mutex<[RssSplit; PHASES.len()]>,
}

impl Sampler {
    /// A sampler of process `pid`, in phase "ready".
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            phase: AtomicUsize::new(0),
            mapped_kib: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            peaks: Mutex::new([RssSplit::default(); PHASES.len()]),
        }
    }

    /// Reads `smaps` into the current phase's peak.
    pub fn sample(&self) {
        if let Some(now) = procfs::rss_split_of(self.pid) {
            self.mapped_kib.store(now.bpf_maps_kib, Ordering::Release);
            self.fold(now);
        }
    }

    /// Reads `VmRSS` into the current phase's peak (cheap: no page walk).
    fn sample_rss(&self) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid));
        if let Some(total_kib) = status.ok().as_deref().and_then(procfs::rss_kib) {
            let bpf_maps_kib = self.mapped_kib.load(Ordering::Acquire).min(total_kib);
            self.fold(RssSplit {
                total_kib,
                bpf_maps_kib,
            });
        }
    }

    fn fold(&self, now: RssSplit) {
        let phase = self.phase.load(Ordering::Acquire);
        let mut peaks = self.peaks.lock().unwrap();
        peaks[phase] = peaks[phase].max(now);
    }

    /// Samples until [`Sampler::stop`] (run on its own thread).
    pub fn run(&self) {
        let Some(every) = every() else { return };
        while !self.stop.load(Ordering::Acquire) {
            self.sample_rss();
            std::thread::sleep(every);
        }
    }

    /// Moves on to `phase` (an index of [`PHASES`]), sampling at the switch.
    pub fn enter(&self, phase: usize) {
        self.sample();
        self.phase.store(phase, Ordering::Release);
        self.sample();
    }

    /// Ends the sampling without a last sample (a round that failed: the
    /// sampling thread must end for the failure to surface).
    pub fn halt(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Ends the sampling (after a last sample); returns the peak of each phase.
    pub fn stop(&self) -> [RssSplit; PHASES.len()] {
        self.sample();
        self.stop.store(true, Ordering::Release);
        *self.peaks.lock().unwrap()
    }
}

/// The phases' peaks as JSON: for each phase the resident set, the agent's
/// own part and the mmapped BPF maps, in KiB.
pub fn phases_json(peaks: &[RssSplit; PHASES.len()]) -> serde_json::Value {
    PHASES
        .iter()
        .zip(peaks)
        .map(|(name, p)| {
            (
                (*name).to_string(),
                serde_json::json!({"rss_kib": p.total_kib, "own_kib": p.own_kib(), "bpf_mapped_kib": p.bpf_maps_kib}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}
