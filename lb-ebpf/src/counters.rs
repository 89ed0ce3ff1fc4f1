//! Per-CPU verdict counters.

use lb_common::Verdict;

use crate::maps::VERDICTS;

/// Adds one packet to the counter of `verdict`.
#[inline(always)]
pub fn count(verdict: Verdict) {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}
