//! The control bench's table headers: what each size and the burst measure.

use crate::{agent, burst, CHANGES, LARGE, LARGE_ROUNDS, WATCH_PAGE};

/// The header of the sizes' table, for `rounds` rounds a size (`quick`: no 100,000).
pub fn header(rounds: usize, quick: bool) -> String {
    let large = if quick {
        String::new()
    } else {
        format!(
            " ({LARGE_ROUNDS} at 100,000 Services: 1,000,000 endpoints, the agent given room for them: `{}`)",
            agent::capacity(LARGE + 1).join(" ")
        )
    };
    format!("Control path, through the real agent (`--source kube`, release build) and the test API \
                  server, which pages lists: the agent's watcher lists in pages of {WATCH_PAGE} (kube-rs' default). \
                  {rounds} round(s) a size{large}, each: a cold start until the agent is ready with every Service \
                  programmed (the other Services have 10 endpoints each; median and spread), {CHANGES} \
                  EndpointSlice changes one after another (API server send -> the kernel map holding it; \
                  p50/p99/max over every round, the JSON has each round's p99), a burst (below), then a relist \
                  forced by ending every watch with `410 Gone` (until a change made after it is in the map). \
                  Memory: peak RSS (`VmHWM`, everything), and through every phase (ready, changes, burst, after \
                  the relist; `smaps` at each switch, `VmRSS` every 20 ms between): the agent's own peak (without the mmapped \
                  BPF maps: Maglev slab windows and filter), the mmapped maps' resident peak, the kernel memory of \
                  all its maps (`memlock`, slab whole) and own + maps. The JSON has each phase's peaks.\n\n\
                  | services programmed | cold start to ready (ms) | peak RSS (MiB) | own peak, no maps (MiB) | mmapped maps (MiB) | map memory (MiB) | own + maps (MiB) | changes | p50 (ms) | p99 (ms) | max (ms) | relist (ms) |\n\
                  |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
}

/// The header of the burst table (`quick`: at 10,000 Services only).
pub fn burst_header(quick: bool) -> String {
    let burst_large = if quick { "" } else { " and 100,000" };
    format!("\nBurst, at 10,000 Services{burst_large}: {} EndpointSlice updates of as many Services sent one a millisecond (within 1 s), \
                  while SYNs to those Services run through the agent's own XDP program (`BPF_PROG_TEST_RUN` on it, \
                  one at a time, 50 then a 1 ms pause (under 50,000/s), each checked to pass rewritten to a backend): each \
                  update's send -> map latency, and the drain (last update sent -> last one in the map). \
                  The poller sweeps the pending Services' map entries every 0.2 ms, so a latency includes up to a sweep and a pause.\n\n\
                  | services programmed | updates | sent in (ms) | p50 (ms) | p99 (ms) | max (ms) | drain (ms) | packets | to a backend |\n\
                  |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n", burst::UPDATES)
}
