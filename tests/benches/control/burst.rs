//! The burst: 1,000 EndpointSlice updates (of as many Services) sent
//! within one second, one a millisecond, while packets run through the
//! agent's own XDP program (`BPF_PROG_TEST_RUN` on it, reading the maps the
//! agent is writing). Each update's change-to-map latency, and the time
//! from the last update sent to the last one in the map (the drain).

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{apiserver::TestApiServer, packet, procfs};
use lb_userspace::{
    datapath::{maps::Maps, XDP_PROGRAM},
    desired::{Frontend, Protocol},
};

/// Updates in a burst, sent one every [`PACE`].
pub const UPDATES: u32 = 1_000;
const PACE: Duration = Duration::from_millis(1);
/// At most this many packets run during a burst (a bound on the traffic).
const MAX_PACKETS: u64 = 500_000;
/// Packets run between pauses of 1 ms: at most 50,000 a second, so the
/// traffic does not take a whole core of two from the agent.
const PACKETS_PER_MS: u64 = 50;
/// The pause between the poller's sweeps of the map.
const SWEEP: Duration = Duration::from_micros(200);

/// What one burst measured.
pub struct Burst {
    /// Each update's change-to-map latency, in the order sent.
    pub latencies: Vec<Duration>,
    /// From the first update sent to the last.
    pub send: Duration,
    /// From the last update sent to the last one in the map.
    pub drain: Duration,
    /// Packets run through the XDP program meanwhile.
    pub packets: u64,
    /// Of those, the ones passed on rewritten to a backend of the Service.
    pub balanced: u64,
}

/// The ClusterIP of bench Service `i`.
pub fn service_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_1000 + i)
}

/// The first endpoint of Service `i` in backend range `range` (0: 10.250/15
/// for the first 13,107 Services, and on past 10.252 for more; 1: 10.252/15,
/// which only the burst's first 1,000 use). A backend address another
/// Service also has is fine: each Service's backends are its own.
pub fn endpoint_base(i: u32, range: u32) -> u32 {
    u32::from(Ipv4Addr::new(10, 250, 0, 0)) + range * (2 << 16) + i * 10
}

/// Runs one burst on Services `0..UPDATES`, moving each slice into backend
/// range `range`; `slice` gives the YAML of (service name, first endpoint).
pub fn run(
    server: &TestApiServer,
    maps: &Maps,
    pin_dir: &Path,
    agent: u32,
    range: u32,
    slice: fn(&str, u32) -> String,
) -> Burst {
    let keys: Vec<_> = (0..UPDATES)
        .map(|i| {
            Frontend {
                addr: service_ip(i),
                port: 80,
                proto: Protocol::Tcp,
            }
            .key()
        })
        .collect();
    let before: Vec<u32> = keys
        .iter()
        .map(|k| maps.services.get(k, 0).unwrap().table_offset)
        .collect();
    let texts: Vec<String> = (0..UPDATES)
        .map(|i| slice(&format!("s{i}"), endpoint_base(i, range)))
        .collect();
    // Nanoseconds after `start` each update was sent (0: not yet).
    let sent: Vec<AtomicU64> = (0..UPDATES).map(|_| AtomicU64::new(0)).collect();
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    std::thread::scope(|s| {
        let traffic = s.spawn(|| traffic(agent, &done));
        let poller = s.spawn(|| {
            // Maps are not Sync: the poller opens its own.
            let maps = Maps::from_pins(pin_dir).unwrap();
            let mut seen: Vec<Option<Duration>> = vec![None; keys.len()];
            let mut left = keys.len();
            while left > 0 {
                assert!(
                    start.elapsed() < Duration::from_mins(1),
                    "{left} burst updates never reached the map"
                );
                for (i, key) in keys.iter().enumerate() {
                    let at = sent[i].load(Ordering::Acquire);
                    if at == 0 || seen[i].is_some() {
                        continue;
                    }
                    if maps.services.get(key, 0).unwrap().table_offset != before[i] {
                        seen[i] = Some(start.elapsed().saturating_sub(Duration::from_nanos(at)));
                        left -= 1;
                    }
                }
                // A sweep at most every 0.2 ms: the poller must not take a core from the agent.
                std::thread::sleep(SWEEP);
            }
            let last_in = start.elapsed();
            done.store(true, Ordering::Release);
            (
                seen.into_iter().map(Option::unwrap).collect::<Vec<_>>(),
                last_in,
            )
        });
        let mut next = start;
        for (i, text) in texts.iter().enumerate() {
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let at = start.elapsed();
            server.apply(text).unwrap();
            sent[i].store(nanos(at), Ordering::Release);
            next += PACE;
        }
        let last_sent = Duration::from_nanos(sent[sent.len() - 1].load(Ordering::Acquire));
        let (latencies, last_in) = poller.join().unwrap();
        let (packets, balanced) = traffic.join().unwrap();
        Burst {
            latencies,
            send: last_sent,
            drain: last_in.saturating_sub(last_sent),
            packets,
            balanced,
        }
    })
}

/// Runs SYNs to the burst's Services through the agent's XDP program until
/// `done` (at most [`MAX_PACKETS`]): (packets, passed on to a backend).
fn traffic(agent: u32, done: &AtomicBool) -> (u64, u64) {
    let Some(program) = agent_xdp(agent) else {
        eprintln!("the agent's XDP program was not found: no traffic");
        return (0, 0);
    };
    let (mut packets, mut balanced) = (0u64, 0u64);
    let mut out = vec![0u8; 256];
    while !done.load(Ordering::Acquire) && packets < MAX_PACKETS {
        let i = u32::try_from(packets % u64::from(UPDATES)).unwrap();
        let sport = u16::try_from(1024 + packets % 60_000).unwrap();
        let src = Ipv4Addr::new(
            192,
            168,
            7,
            u8::try_from(packets / 60_000 % 250).unwrap() + 1,
        );
        let frame = packet::Packet::tcp(src, sport, service_ip(i), 80)
            .syn()
            .build();
        let (ret, len) = test_run(program.as_fd().as_raw_fd(), &frame, &mut out);
        packets += 1;
        if packets.is_multiple_of(PACKETS_PER_MS) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (dst, port) = packet::dst_of(&out[..len.max(38)]);
        let [a, b, ..] = dst.octets();
        if ret == packet::XDP_PASS && a == 10 && (250..=253).contains(&b) && port == 8080 {
            balanced += 1;
        }
    }
    (packets, balanced)
}

/// The agent's loaded XDP program (by name, among the programs it holds).
fn agent_xdp(agent: u32) -> Option<aya::programs::ProgramFd> {
    let held = procfs::prog_runs_of(agent);
    aya::programs::loaded_programs().flatten().find_map(|info| {
        (held.contains_key(&info.id()) && info.name_as_str() == Some(XDP_PROGRAM))
            .then(|| info.fd().ok())
            .flatten()
    })
}

/// `BPF_PROG_TEST_RUN` of `frame` once through program `fd`: (return code,
/// bytes of the frame after, written to `out`).
fn test_run(fd: i32, frame: &[u8], out: &mut [u8]) -> (u32, usize) {
    /// The `test` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut attr = Attr {
        prog_fd: u32::try_from(fd).unwrap(),
        data_size_in: u32::try_from(frame.len()).unwrap(),
        data_size_out: u32::try_from(out.len()).unwrap(),
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Attr::default()
    };
    // SAFETY: the attr points at `frame` and `out`, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<Attr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    (attr.retval, attr.data_size_out as usize)
}
