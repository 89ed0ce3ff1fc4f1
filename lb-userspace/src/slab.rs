//! Allocation of Maglev tables in the shared slab: first-fit ranges, and a
//! quarantine so freed slots are not rewritten while packets may still read them.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

/// Free and quarantined ranges of the slab.
#[derive(Debug)]
pub struct SlabAllocator {
    /// Free ranges: offset -> length, non-adjacent (coalesced).
    free: BTreeMap<u32, u32>,
    /// Freed ranges waiting for the grace period: (freed at, offset, length).
    quarantine: Vec<(Instant, u32, u32)>,
    /// Ranges freed by the plan under way: not reusable before it is
    /// settled (its trailing operations may still touch them).
    unsettled: Vec<(Instant, u32, u32)>,
    grace: Duration,
    total: u32,
}

impl SlabAllocator {
    /// A slab of `total` free slots whose freed ranges wait `grace` before reuse.
    #[must_use]
    pub fn new(total: u32, grace: Duration) -> Self {
        let mut free = BTreeMap::new();
        if total > 0 {
            free.insert(0, total);
        }
        Self {
            free,
            quarantine: Vec::new(),
            unsettled: Vec::new(),
            grace,
            total,
        }
    }

    /// Size of the slab.
    #[must_use]
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Slots free for allocation now (quarantined ones excluded).
    #[must_use]
    pub fn free_slots(&self) -> u64 {
        self.free.values().map(|&l| u64::from(l)).sum()
    }

    /// Reserves `len` contiguous slots; returns their offset.
    pub fn alloc(&mut self, len: u32, now: Instant) -> Option<u32> {
        self.reclaim(now);
        let (&offset, &free_len) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&offset);
        if free_len > len {
            self.free.insert(offset + len, free_len - len);
        }
        Some(offset)
    }

    /// Marks a range as used (adopting an earlier agent's table); false if it is not free.
    pub fn reserve(&mut self, offset: u32, len: u32) -> bool {
        if len == 0 {
            return true;
        }
        let Some((&start, &free_len)) = self.free.range(..=offset).next_back() else {
            return false;
        };
        if u64::from(offset) + u64::from(len) > u64::from(start) + u64::from(free_len) {
            return false;
        }
        self.free.remove(&start);
        if offset > start {
            self.free.insert(start, offset - start);
        }
        let end = offset + len;
        if end < start + free_len {
            self.free.insert(end, start + free_len - end);
        }
        true
    }

    /// Returns a range; it becomes allocatable once the plan that frees it
    /// is settled ([`SlabAllocator::settle`]) and the grace period has passed.
    pub fn free(&mut self, offset: u32, len: u32, now: Instant) {
        if len > 0 {
            self.unsettled.push((now, offset, len));
        }
    }

    /// Ends a plan: what it freed starts its grace period (never reused
    /// within the plan that freed it, even with no grace).
    pub fn settle(&mut self) {
        self.quarantine.append(&mut self.unsettled);
    }

    /// Moves ranges whose grace period has passed back to the free list.
    pub fn reclaim(&mut self, now: Instant) {
        let grace = self.grace;
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .quarantine
            .drain(..)
            .partition(|(at, _, _)| now.saturating_duration_since(*at) >= grace);
        self.quarantine = waiting;
        for (_, offset, len) in ready {
            self.insert_free(offset, len);
        }
    }

    fn insert_free(&mut self, mut offset: u32, mut len: u32) {
        if let Some((&prev, &prev_len)) = self.free.range(..offset).next_back() {
            if prev + prev_len == offset {
                self.free.remove(&prev);
                offset = prev;
                len += prev_len;
            }
        }
        if let Some(&next_len) = self.free.get(&(offset + len)) {
            self.free.remove(&(offset + len));
            len += next_len;
        }
        self.free.insert(offset, len);
    }
}

/// Ids from a range, with the same quarantine as the slab.
#[derive(Debug)]
pub struct IdAllocator {
    next: u32,
    end: u32,
    free: Vec<u32>,
    /// Ids waiting out their grace, oldest first (plans settle in time
    /// order; one out of order would only be released late, never early).
    quarantine: VecDeque<(Instant, u32)>,
    /// Ids freed by the plan under way (see [`SlabAllocator::settle`]).
    unsettled: Vec<(Instant, u32)>,
    grace: Duration,
}

impl IdAllocator {
    /// Ids `first..end`, reused `grace` after being freed.
    #[must_use]
    pub fn new(first: u32, end: u32, grace: Duration) -> Self {
        Self {
            next: first,
            end,
            free: Vec::new(),
            quarantine: VecDeque::new(),
            unsettled: Vec::new(),
            grace,
        }
    }

    /// A fresh or reclaimed id. Releases the ids whose grace has passed
    /// from the front of the quarantine only: constant work per id, where a
    /// scan of the whole quarantine per call made a burst of updates
    /// quadratic (61% of the agent's CPU in the control bench's burst).
    pub fn alloc(&mut self, now: Instant) -> Option<u32> {
        while let Some(&(freed, id)) = self.quarantine.front() {
            if now.saturating_duration_since(freed) < self.grace {
                break;
            }
            self.quarantine.pop_front();
            self.free.push(id);
        }
        if let Some(id) = self.free.pop() {
            return Some(id);
        }
        if self.next < self.end {
            self.next += 1;
            return Some(self.next - 1);
        }
        None
    }

    /// Marks an id as used (adopting an earlier agent's); false if it is not free.
    pub fn reserve(&mut self, id: u32) -> bool {
        if id >= self.end {
            return false;
        }
        if let Some(pos) = self.free.iter().position(|&f| f == id) {
            self.free.swap_remove(pos);
            return true;
        }
        if id >= self.next {
            // Ids between next and this one become free.
            self.free.extend(self.next..id);
            self.next = id + 1;
            return true;
        }
        false
    }

    /// Returns an id for reuse once its plan is settled and the grace period has passed.
    pub fn free(&mut self, id: u32, now: Instant) {
        self.unsettled.push((now, id));
    }

    /// Ends a plan: what it freed starts its grace period.
    pub fn settle(&mut self) {
        self.quarantine.extend(self.unsettled.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_first_fit_and_coalesces() {
        let now = Instant::now();
        let mut slab = SlabAllocator::new(100, Duration::ZERO);
        assert_eq!(slab.alloc(30, now), Some(0));
        assert_eq!(slab.alloc(30, now), Some(30));
        assert_eq!(slab.alloc(30, now), Some(60));
        assert_eq!(slab.alloc(30, now), None, "only 10 slots left");
        slab.free(0, 30, now);
        slab.free(30, 30, now);
        assert_eq!(
            slab.alloc(50, now),
            None,
            "not within the plan that freed them"
        );
        slab.settle();
        assert_eq!(slab.alloc(50, now), Some(0), "adjacent ranges coalesce");
        assert_eq!(slab.free_slots(), 20);
    }

    #[test]
    fn freed_ranges_wait_for_the_grace_period() {
        let t0 = Instant::now();
        let mut slab = SlabAllocator::new(10, Duration::from_secs(2));
        assert_eq!(slab.alloc(10, t0), Some(0));
        slab.free(0, 10, t0);
        slab.settle();
        assert_eq!(slab.alloc(10, t0 + Duration::from_secs(1)), None);
        assert_eq!(slab.alloc(10, t0 + Duration::from_secs(2)), Some(0));
    }

    #[test]
    fn reserving_adopted_ranges_and_ids() {
        let now = Instant::now();
        let mut slab = SlabAllocator::new(100, Duration::ZERO);
        assert!(slab.reserve(10, 20));
        assert!(!slab.reserve(15, 5), "already used");
        assert_eq!(slab.alloc(10, now), Some(0));
        assert_eq!(slab.alloc(5, now), Some(30));
        let mut ids = IdAllocator::new(1, 100, Duration::ZERO);
        assert!(ids.reserve(5));
        assert!(!ids.reserve(5));
        let got: Vec<u32> = (0..5).map(|_| ids.alloc(now).unwrap()).collect();
        assert!(!got.contains(&5), "{got:?}");
    }

    #[test]
    fn ids_are_reused_only_after_grace() {
        let t0 = Instant::now();
        let mut ids = IdAllocator::new(1, 3, Duration::from_secs(2));
        assert_eq!(ids.alloc(t0), Some(1));
        assert_eq!(ids.alloc(t0), Some(2));
        ids.free(1, t0);
        assert_eq!(
            ids.alloc(t0 + Duration::from_secs(2)),
            None,
            "not before its plan is settled"
        );
        ids.settle();
        assert_eq!(ids.alloc(t0), None, "id 1 is quarantined, 3 is the end");
        assert_eq!(ids.alloc(t0 + Duration::from_secs(2)), Some(1));
    }

    #[test]
    fn quarantined_ids_are_released_oldest_first_and_never_early() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut ids = IdAllocator::new(1, 5, s(2));
        for _ in 1..5 {
            ids.alloc(t0).unwrap();
        }
        ids.free(1, t0);
        ids.settle();
        ids.free(2, t0 + s(1));
        ids.settle();
        // Out of order (an earlier time settled later): released late.
        ids.free(3, t0);
        ids.settle();
        assert_eq!(ids.alloc(t0 + s(1)), None, "none has waited 2 s");
        assert_eq!(ids.alloc(t0 + s(2)), Some(1));
        assert_eq!(
            ids.alloc(t0 + s(2)),
            None,
            "2 waits until t0 + 3 s, 3 behind it"
        );
        assert_eq!(ids.alloc(t0 + s(3)), Some(3));
        assert_eq!(ids.alloc(t0 + s(3)), Some(2));
        assert_eq!(ids.alloc(t0 + s(9)), None);
    }
}
