//! IPv4 before and after the IPv6 data path, in one process (issue 16's
//! "IPv4 unchanged within noise"): the kernel object of the commit before
//! it (built by `cargo xtask bench`, given in `LB_BENCH_BASELINE_OBJECT`)
//! beside the current one, the same IPv4 frontends in both, and per round
//! each case measured before, after, after, before (see
//! [`lb_tests::before_after`] for the ratios and the noise).
//!
//! The current object loads as every packet bench's does ([`TestDatapath`]).
//! The old one cannot: the agent's loader carries its own object, expects
//! the IPv6 maps and the current pin layout, and writes an 80-byte
//! `NodeConfig` where the old object has 64 bytes. So this file holds a
//! thin loader for the bench only ([`Baseline`]): aya directly, no pins,
//! no attachment, the old object's `lb_xdp`, `xdp_parse` and `xdp_pass`,
//! and the few maps IPv4's cases read, written from the very plan the
//! current data path got (the IPv4 map layouts did not change), and the
//! current data path's own configuration truncated to the old layout.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, path::Path, time::Instant};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb_common::{
    Backend, InternalTable, ServiceEntry, ServiceKey, SlabEntry, MAP_BACKENDS, MAP_CONFIG,
    MAP_FILTER, MAP_INTERNAL_TABLES, MAP_MAGLEV, MAP_NODE_PORT_ADDRS, MAP_SERVICES,
    MAP_SERVICE_STATS_ARRAY, SLOTS_PER_SLAB_ENTRY,
};
use lb_tests::{
    before_after::{compare, node_config_before_ipv6, CaseRounds, NODE_CONFIG_BEFORE_IPV6_LEN},
    packet::{Packet, TestDatapath, XDP_PASS},
};
use lb_userspace::{
    datapath::{XDP_PARSE_PROGRAM, XDP_PASS_PROGRAM, XDP_PROGRAM},
    desired::{DesiredState, Protocol},
    plan::{MapOp, Planner},
};

use super::{call, service, vip, CLIENT, NODE};

/// Maglev slab slots of both data paths (as the hot-flow bench's).
const SLAB_SLOTS: u32 = 1 << 20;

/// The cases: name (as the hot-flow classes name them), program, and
/// whether the target judges it (the parse-only program is the same code
/// in both objects: a check of the method, not of IPv4's data path).
const CASES: [(&str, &str, bool); 4] = [
    ("established TCP", XDP_PROGRAM, true),
    ("new TCP flow", XDP_PROGRAM, true),
    ("non-service", XDP_PROGRAM, true),
    ("parse-only (xdp_parse)", XDP_PARSE_PROGRAM, false),
];

/// The old kernel object, loaded by hand (see the module comment).
struct Baseline {
    ebpf: Ebpf,
}

impl Baseline {
    /// Loads `object`'s IPv4 XDP programs and writes `ops` (a plan's IPv4
    /// operations) and `config` into its maps.
    fn load(object: &Path, config: &lb_common::NodeConfig, ops: &[MapOp]) -> Self {
        let stats_array_len = lb_common::service_stats_array_len(
            u32::try_from(aya::util::nr_cpus().expect("possible CPUs")).unwrap_or(u32::MAX),
            lb_common::MAX_SERVICES,
        );
        let mut ebpf = EbpfLoader::new()
            // The sizes the current loader gives these (the old object's
            // defaults for the rest are the current loader's too).
            .map_max_entries(MAP_MAGLEV, SLAB_SLOTS.div_ceil(SLOTS_PER_SLAB_ENTRY))
            .map_max_entries(MAP_SERVICE_STATS_ARRAY, stats_array_len)
            .load_file(object)
            .unwrap_or_else(|e| panic!("loading the baseline object {}: {e:?}", object.display()));
        assert!(
            ebpf.map(lb_common::maps6::MAP_XDP6_PROGS).is_none(),
            "{} has IPv6's prog array: not an object from before the IPv6 data path",
            object.display()
        );
        for name in [XDP_PROGRAM, XDP_PARSE_PROGRAM, XDP_PASS_PROGRAM] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("the baseline object has no program {name}"))
                .try_into()
                .expect("an XDP program");
            prog.load()
                .unwrap_or_else(|e| panic!("the verifier refused the baseline's {name}: {e:?}"));
        }
        let mut baseline = Self { ebpf };
        baseline.write(config, ops);
        baseline
    }

    fn map(&mut self, name: &str) -> &mut aya::maps::Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("the baseline object has no map {name}"))
    }

    /// Writes the configuration and the plan's operations.
    fn write(&mut self, config: &lb_common::NodeConfig, ops: &[MapOp]) {
        let mut cfg: Array<&mut MapData, [u8; NODE_CONFIG_BEFORE_IPV6_LEN]> =
            Array::try_from(self.map(MAP_CONFIG)).expect("CONFIG of the old layout");
        cfg.set(0, node_config_before_ipv6(config), 0)
            .expect("writing CONFIG");
        for op in ops {
            match op {
                MapOp::SetBackend(id, backend) => {
                    let mut m: Array<&mut MapData, Backend> =
                        Array::try_from(self.map(MAP_BACKENDS)).unwrap();
                    m.set(*id, backend, 0).expect("writing a backend");
                }
                MapOp::SetTable { offset, slots } => {
                    // Read-modify-write of the entries the table spans
                    // (two slots an entry); the kernel only reads them.
                    let mut m: Array<&mut MapData, SlabEntry> =
                        Array::try_from(self.map(MAP_MAGLEV)).unwrap();
                    for (slot, id) in (*offset..).zip(slots) {
                        let index = slot / SLOTS_PER_SLAB_ENTRY;
                        let mut entry = m.get(&index, 0).expect("reading the slab");
                        entry[(slot % SLOTS_PER_SLAB_ENTRY) as usize] = *id;
                        m.set(index, entry, 0).expect("writing the slab");
                    }
                }
                MapOp::SetService(key, entry) => {
                    let mut m: HashMap<&mut MapData, ServiceKey, ServiceEntry> =
                        HashMap::try_from(self.map(MAP_SERVICES)).unwrap();
                    m.insert(key, entry, 0).expect("writing a service");
                }
                MapOp::SetFilterWord(index, bits) => {
                    let mut m: Array<&mut MapData, u64> =
                        Array::try_from(self.map(MAP_FILTER)).unwrap();
                    m.set(*index, bits, 0).expect("writing the filter");
                }
                MapOp::SetInternalTable(id, table) => {
                    let mut m: Array<&mut MapData, InternalTable> =
                        Array::try_from(self.map(MAP_INTERNAL_TABLES)).unwrap();
                    m.set(*id, table, 0).expect("writing an internal table");
                }
                MapOp::SetNodePortAddr(addr) => {
                    let mut m: HashMap<&mut MapData, u32, u32> =
                        HashMap::try_from(self.map(MAP_NODE_PORT_ADDRS)).unwrap();
                    m.insert(u32::from_ne_bytes(addr.octets()), 1, 0)
                        .expect("writing a node-port address");
                }
                // Names for status output only; no program reads them.
                MapOp::SetLabel(..) => {}
                other => panic!("the baseline loader writes a fresh IPv4 plan only, not {other:?}"),
            }
        }
    }

    fn program(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .expect("loaded above")
            .try_into()
            .expect("an XDP program")
    }
}

/// One object under test: its programs and the frames of its flows.
trait Object {
    fn xdp(&self, name: &str) -> &Xdp;
}

impl Object for Baseline {
    fn xdp(&self, name: &str) -> &Xdp {
        self.program(name)
    }
}

impl Object for TestDatapath {
    fn xdp(&self, name: &str) -> &Xdp {
        self.program(name).try_into().expect("an XDP program")
    }
}

/// The median ns of `calls` calls of case `case` on `object`; new flows
/// take their sources from `next` (each object its own sequence, so both
/// fill their conntrack alike).
fn measure_case(
    object: &dyn Object,
    case: usize,
    calls: usize,
    frames: &Frames,
    next: &mut u32,
) -> u64 {
    let prog = object.xdp(CASES[case].1);
    let mut out = vec![0u8; 512];
    let mut ns: Vec<u64> = (0..calls)
        .map(|_| {
            let frame = match case {
                1 => {
                    *next += 1;
                    Packet::tcp(Ipv4Addr::from(0x0b00_0000 + *next), 40000, vip(0), 80)
                        .syn()
                        .build()
                }
                2 => frames.non_service.clone(),
                _ => frames.established.clone(),
            };
            call(prog, &frame, &mut out)
        })
        .collect();
    ns.sort_unstable();
    ns[ns.len() / 2]
}

/// The frames replayed.
struct Frames {
    established: Vec<u8>,
    non_service: Vec<u8>,
}

/// Sets up the same established flow in `object`; its translated frame.
fn establish(object: &dyn Object, syn: &[u8]) -> Vec<u8> {
    let (result, out) = lb_tests::packet::run(object.xdp(XDP_PROGRAM), syn);
    assert_eq!(result, XDP_PASS, "the SYN is translated and passed");
    out
}

/// Both objects loaded and programmed alike, the same flow established in
/// each: the old one by the thin loader from the very plan and
/// configuration the current one got.
fn load_pair(object: &Path, syn: &[u8]) -> (Baseline, TestDatapath) {
    // The current data path, as the hot-flow bench's 1 service x 10
    // backends, written from one plan that the old object gets too.
    let mut after = TestDatapath::load_with("bba", NODE, SLAB_SLOTS);
    let state: DesiredState = [
        service(vip(0), 80, Protocol::Tcp, 10, 0, true),
        service(vip(0), 53, Protocol::Udp, 10, 0, true),
        service(vip(0), 81, Protocol::Tcp, 1, 0x00f0_0000, false),
    ]
    .into_iter()
    .collect::<BTreeMap<_, _>>();
    let mut planner = Planner::new(after.slab_slots(), std::time::Duration::ZERO);
    let (plan, errors) = planner.plan(&state, Instant::now());
    assert!(errors.is_empty(), "plan errors: {errors:?}");
    after
        .datapath_mut()
        .maps
        .apply(&plan.ops)
        .expect("writing the plan");
    let config = after
        .datapath_mut()
        .maps
        .config
        .get(&0, 0)
        .expect("reading CONFIG");
    let before = Baseline::load(object, &config, &plan.ops);
    // The thin loader programmed the old object as the agent did the new:
    // the same SYN comes out the same (same backend, same rewrite).
    assert_eq!(
        establish(&before, syn),
        establish(&after, syn),
        "the old and new objects translate the same SYN alike"
    );
    (before, after)
}

/// Measures IPv4 before and after; the JSON and Markdown of it. Both
/// objects are loaded afresh for every round: where the kernel places a
/// program's machine code moves its cost by several percent (the same
/// `xdp_parse` has measured 43 and 48 ns in the two objects of one load),
/// so a single load would judge one placement. Over fresh loads the round
/// ratios spread by it, and their median is not one placement's.
pub fn measure(quick: bool) -> (serde_json::Value, String) {
    let (object, commit) = baseline_object();
    let (rounds, calls) = if quick { (5, 4_000) } else { (10, 20_000) };
    let syn = Packet::tcp(CLIENT, 40000, vip(0), 80).syn().build();
    let frames = Frames {
        established: Packet::tcp(CLIENT, 40000, vip(0), 80).ack().build(),
        non_service: Packet::tcp(CLIENT, 40000, Ipv4Addr::new(10, 0, 0, 1), 443)
            .ack()
            .build(),
    };
    let mut cases: Vec<CaseRounds> = vec![CaseRounds::default(); CASES.len()];
    let mut previous: Option<(Baseline, TestDatapath)> = None;
    for _ in 0..rounds {
        // Loaded while the previous round's are still held: new places.
        let (before, after) = load_pair(&object, &syn);
        drop(previous.take());
        let (mut next_before, mut next_after) = (0u32, 0u32);
        for (case, r) in cases.iter_mut().enumerate() {
            let before_run = |next: &mut u32| measure_case(&before, case, calls, &frames, next);
            r.before_a.push(before_run(&mut next_before));
            let after_run = |next: &mut u32| measure_case(&after, case, calls, &frames, next);
            r.after_a.push(after_run(&mut next_after));
            r.after_b.push(after_run(&mut next_after));
            r.before_b.push(before_run(&mut next_before));
        }
        previous = Some((before, after));
    }
    report(&commit, &cases, rounds, calls)
}

/// The baseline object and its commit, from `cargo xtask bench`.
fn baseline_object() -> (std::path::PathBuf, String) {
    let object = std::env::var_os("LB_BENCH_BASELINE_OBJECT").unwrap_or_else(|| {
        panic!(
            "LB_BENCH_BASELINE_OBJECT is unset: the packet bench compares IPv4 with the kernel \
             object before the IPv6 data path, which `cargo xtask bench` builds and names there"
        )
    });
    let commit = std::env::var("LB_BENCH_BASELINE_COMMIT").unwrap_or_else(|_| "unknown".into());
    (object.into(), commit)
}

/// The Markdown table and JSON of the rounds.
fn report(
    commit: &str,
    cases: &[CaseRounds],
    rounds: usize,
    calls: usize,
) -> (serde_json::Value, String) {
    let short = commit.get(..7).unwrap_or(commit);
    let mut md = format!(
        "IPv4 before and after the IPv6 data path (issue 16): the kernel object of {short} (the \
         commit before 004a4a9, its keys' padding written as the current object writes it \
         (64ae2fd took a byte-loop `memset` out of every flow key after IPv6 came), loaded by the \
         bench's own minimal loader) beside the current one, both with the hot-flow bench's 1 \
         service x 10 local backends written from one plan, through `lb_xdp`; {calls} calls per \
         measurement; {rounds} rounds, both objects loaded afresh for each (where the kernel \
         places the machine code moves the cost by several percent), each measuring every case \
         before, after, after, before. after/before: median of the per-round ratios of the pair \
         means (lowest-highest round); noise: the largest difference between the two \
         measurements of one object in one round, at least 1 ns of the before figure (the kernel \
         reports whole nanoseconds). That noise leaves out where each load placed the code, which \
         the fresh loads spread over the rounds instead: parse-only, the same code in both \
         objects, shows by its rounds how far. The target judges the three `lb_xdp` cases; \
         parse-only is a check of the method.\n\n\
         | case | before ns | after ns | after/before (rounds) | noise | within noise |\n\
         |---|---:|---:|---:|---:|---|\n"
    );
    let mut json = serde_json::Map::new();
    for ((name, _, judged), r) in CASES.iter().zip(cases) {
        let c = compare(r).expect("rounds");
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.0} | {:.3}x ({:.3}-{:.3}) | ±{:.1}% | {}{} |",
            c.before_ns,
            c.after_ns,
            c.ratio,
            c.low,
            c.high,
            c.noise * 100.0,
            if c.within_noise() { "yes" } else { "no" },
            if *judged { "" } else { " (not judged)" },
        );
        json.insert(
            (*name).to_string(),
            serde_json::json!({
                "judged": judged,
                "before_a_ns": r.before_a, "after_a_ns": r.after_a,
                "after_b_ns": r.after_b, "before_b_ns": r.before_b,
                "before_ns": c.before_ns, "after_ns": c.after_ns,
                "ratio": c.ratio, "low": c.low, "high": c.high,
                "round_ratios": c.round_ratios, "noise": c.noise,
            }),
        );
    }
    (
        serde_json::json!({"baseline_commit": commit, "calls_per_measurement": calls,
            "rounds": rounds, "cases": json}),
        md,
    )
}
