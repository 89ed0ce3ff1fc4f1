//! Per-CPU counters: verdicts, events, per-service packets and bytes.

use lb_common::{Event, Family, ServiceStats, Verdict};

use crate::maps::{EVENTS, SERVICE_STATS, SERVICE_STATS_ARRAY, VERDICTS};

/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;

/// Adds one IPv4 packet to the counter of `verdict`.
#[inline(always)]
pub fn count(verdict: Verdict) {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict.slot(Family::Ipv4)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Adds one packet of `family` to the counter of `verdict`.
#[inline(always)]
pub fn count_in(family: Family, verdict: Verdict) {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict.slot(family)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Counts one IPv4 `event`.
#[inline(always)]
pub fn event(event: Event) {
    event_in(Family::Ipv4, event);
}

/// Counts one `event` of `family`.
#[inline(always)]
pub fn event_in(family: Family, event: Event) {
    if let Some(counter) = EVENTS.get_ptr_mut(event.slot(family)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Adds one packet of `len` bytes to the counters of Service port `service_id`.
#[inline(always)]
pub fn count_service(service_id: u32, len: u32) {
    // Low ids (every id on most machines) index the array: no hashing.
    let slot = SERVICE_STATS_ARRAY
        .get_ptr_mut(service_id)
        .or_else(|| SERVICE_STATS.get_ptr_mut(service_id));
    if let Some(stats) = slot {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += u64::from(len);
        }
        return;
    }
    let first = ServiceStats {
        packets: 1,
        bytes: u64::from(len),
    };
    // Losing a race with another CPU's first packet loses this one count.
    let _ = SERVICE_STATS.insert(service_id, first, BPF_NOEXIST);
}
