//! What the two families' sides of the planner share: the Maglev slab (a
//! table's slots are backend ids of its own family), the backend id space
//! (`BACKENDS` and `BACKENDS6` are indexed alike, so an id names one
//! backend of one family), the Service port ids (labels, counters, the
//! pods' tables and affinity are keyed by them), and the pass-through filter.

use std::time::{Duration, Instant};

use super::Capacity;
use crate::{
    filter::FilterBits,
    slab::{IdAllocator, SlabAllocator},
};

/// The allocators and filter both families' plans draw from.
#[derive(Debug)]
pub(super) struct Shared {
    /// The Maglev slab's ranges.
    pub slab: SlabAllocator,
    /// Ids of the backends arrays (both families').
    pub backend_ids: IdAllocator,
    /// Service port ids (both families').
    pub service_ids: IdAllocator,
    /// The pass-through filter's bits (both families').
    pub filter: FilterBits,
    /// Entries of each backends array.
    pub backend_capacity: u32,
    /// Frontends of each services map, and Service port ids.
    pub service_capacity: u32,
}

impl Shared {
    /// For empty maps of the sizes `capacity` gives; freed slots and ids
    /// wait `grace`.
    pub fn new(capacity: Capacity, grace: Duration) -> Self {
        let Capacity {
            slab_slots,
            backend_slots,
            service_slots,
        } = capacity;
        Self {
            slab: SlabAllocator::new(slab_slots, grace),
            backend_ids: IdAllocator::new(1, backend_slots, grace),
            service_ids: IdAllocator::new(1, service_slots.saturating_add(1), grace),
            filter: FilterBits::default().with_grace(grace),
            backend_capacity: backend_slots,
            service_capacity: service_slots,
        }
    }

    /// `size` free contiguous slab slots (none for an empty table).
    pub fn reserve_slots(&mut self, size: u32, now: Instant) -> Result<u32, String> {
        if size == 0 {
            return Ok(0);
        }
        self.slab.alloc(size, now).ok_or_else(|| {
            format!(
                "the Maglev slab has no {size} free contiguous slots ({} free of {}): raise --maglev-slab-slots",
                self.slab.free_slots(),
                self.slab.total()
            )
        })
    }

    /// Frees a table's slots (after the grace).
    pub fn free_slots(&mut self, offset: u32, size: u32, now: Instant) {
        if size > 0 {
            self.slab.free(offset, size, now);
        }
    }

    /// Ends a plan: what it freed is cleared by its own trailing
    /// operations, so it is reusable only by later plans.
    pub fn settle(&mut self) {
        self.slab.settle();
        self.backend_ids.settle();
        self.service_ids.settle();
    }
}
