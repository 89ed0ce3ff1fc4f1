//! A Service port's source ranges in its family's source-range map, keyed
//! by its service id. New ranges are written before the service entry that
//! may turn them on (`SERVICE_F_SOURCE_RANGES`), and ranges it no longer has
//! are removed after the entry that stops using them, so a packet never
//! meets a flagged entry without its ranges.

use super::{FamilyOps, Ops};

/// Queues the writes that turn `old` (sorted) into `new` (sorted) for
/// service id `service_id`.
pub(super) fn update<S: FamilyOps>(
    service_id: u32,
    old: &[S::Range],
    new: &[S::Range],
    ops: &mut Ops,
) {
    for range in new {
        if old.binary_search(range).is_err() {
            ops.backends.push(S::set_source_range(service_id, *range));
        }
    }
    for range in old {
        if new.binary_search(range).is_err() {
            ops.deletes.push(S::delete_source_range(service_id, *range));
        }
    }
}

/// How many ranges a family's map holds after `old` becomes `new`, or why not.
pub(super) fn count_after(used: usize, old: usize, new: usize) -> Result<usize, String> {
    let after = used - old + new;
    if after > lb_common::SOURCE_RANGES_MAX_ENTRIES as usize {
        Err(format!(
            "more than {} source ranges in all",
            lb_common::SOURCE_RANGES_MAX_ENTRIES
        ))
    } else {
        Ok(after)
    }
}
