//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table of
//! one frontend, computed from its backends' names.

use std::{
    fmt,
    io::{Cursor, Write},
    net::{SocketAddrV4, SocketAddrV6},
};

/// A backend a Maglev table can hold, named by the bytes its preferences hash.
pub trait Member: Copy + Ord + Send + Sync {
    /// Writes the member's name into `out`; returns its length.
    fn name(&self, out: &mut [u8; 64]) -> usize;
}

impl Member for SocketAddrV4 {
    /// `a.b.c.d:port`, what `to_string` gives.
    fn name(&self, out: &mut [u8; 64]) -> usize {
        write_name(out, format_args!("{self}"))
    }
}

impl Member for SocketAddrV6 {
    /// `[addr]:port`: the scope id and flow label do not name a backend.
    fn name(&self, out: &mut [u8; 64]) -> usize {
        write_name(out, format_args!("[{}]:{}", self.ip(), self.port()))
    }
}

/// Writes `args` into `out`; returns the length. Avoids an allocation per
/// backend.
fn write_name(out: &mut [u8; 64], args: fmt::Arguments<'_>) -> usize {
    let mut cursor = Cursor::new(&mut out[..]);
    cursor
        .write_fmt(args)
        .expect("a socket address's name fits 64 bytes");
    usize::try_from(cursor.position()).expect("at most 64")
}

/// Table sizes (primes, roughly doubling). A frontend's table keeps its size
/// while the backend count changes within a factor of about 8, because a new
/// size moves almost every flow (`slot = hash % size`), while Maglev at a
/// fixed size moves only the flows of the backends that left or joined.
pub const TABLE_SIZES: [u32; 10] = [
    251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071,
];
/// Slots per backend a new table aims for (the paper's M ≥ 100·N).
pub const TARGET_SLOTS_PER_BACKEND: u32 = 100;
/// Fewest slots per backend a table may keep before it is resized: each
/// backend then owns within 1/50 (2 %) of an equal share.
pub const MIN_SLOTS_PER_BACKEND: u32 = 50;
/// Most slots per backend a table may keep before it is shrunk.
pub const MAX_SLOTS_PER_BACKEND: u32 = 800;

/// Table size for `backend_count` backends, given the frontend's current size:
/// the current size while it stays within [`MIN_SLOTS_PER_BACKEND`,
/// `MAX_SLOTS_PER_BACKEND`] slots per backend, else the smallest of
/// [`TABLE_SIZES`] with at least [`TARGET_SLOTS_PER_BACKEND`] per backend
/// (the largest for more than 1,310 backends). 0 for no backends.
#[must_use]
pub fn table_size_for(backend_count: usize, current: u32) -> u32 {
    if backend_count == 0 {
        return 0;
    }
    let n = u64::try_from(backend_count).unwrap_or(u64::MAX);
    let largest = TABLE_SIZES[TABLE_SIZES.len() - 1];
    let keep = current != 0
        && (u64::from(current) >= n * u64::from(MIN_SLOTS_PER_BACKEND) || current == largest)
        && u64::from(current) <= n * u64::from(MAX_SLOTS_PER_BACKEND);
    if keep {
        return current;
    }
    let want = n * u64::from(TARGET_SLOTS_PER_BACKEND);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&size| u64::from(size) >= want)
        .unwrap_or(largest)
}

/// 64-bit FNV-1a of `bytes` starting from `seed`, then a murmur-style finalizer.
fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A backend's preference list (the paper's permutation): slot `offset`,
/// then steps of `skip`, modulo the table size, walked one step at a time.
#[derive(Clone, Copy, Debug)]
struct Preference {
    /// The next slot this backend would take.
    slot: u64,
    /// Step between preferences, in 1..size.
    skip: u64,
}

impl Preference {
    fn new(backend: &impl Member, size: u64) -> Self {
        let mut name = [0u8; 64];
        let len = backend.name(&mut name);
        let name = &name[..len];
        Self {
            slot: hash64(name, 0x5bd1_e995) % size,
            skip: hash64(name, 0x2545_f491_4f6c_dd1d) % (size - 1) + 1,
        }
    }

    /// Moves to the next preference: `(offset + j * skip) % size` for the
    /// next `j`, by one addition (both terms are below `size`).
    fn advance(&mut self, size: u64) {
        self.slot += self.skip;
        if self.slot >= size {
            self.slot -= size;
        }
    }
}

/// The Maglev table of `size` slots (prime) for `backends`: each slot holds an
/// index into `backends`. The result depends only on the backends' names,
/// not on their order.
#[must_use]
pub fn build_table<M: Member>(backends: &[M], size: u32) -> Vec<u32> {
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    let m = u64::from(size);
    // Slots are below `size`, a u32, so they index the table exactly.
    let at = |slot: u64| usize::try_from(slot).expect("slot below a u32 size");
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| backends[i]);
    let mut prefs: Vec<(Preference, u32)> = order
        .iter()
        .map(|&i| {
            let index = u32::try_from(i).expect("backend index fits u32");
            (Preference::new(&backends[i], m), index)
        })
        .collect();
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (pref, index) in &mut prefs {
            while table[at(pref.slot)] != u32::MAX {
                pref.advance(m);
            }
            table[at(pref.slot)] = *index;
            pref.advance(m);
            filled += 1;
            if filled == table.len() {
                break 'fill;
            }
        }
    }
    table
}

/// Slots below which [`build_tables`] builds on the calling thread alone
/// (a thread costs more than a few small tables).
const PARALLEL_SLOTS: u64 = 1 << 16;

/// [`build_table`] of each `(backends, size)` job, in order, built on up to
/// `threads` threads when the jobs are large enough to pay for them.
#[must_use]
pub fn build_tables<M: Member>(jobs: &[(Vec<M>, u32)], threads: usize) -> Vec<Vec<u32>> {
    let slots: u64 = jobs.iter().map(|(_, size)| u64::from(*size)).sum();
    let threads = threads.clamp(1, jobs.len().max(1));
    if threads == 1 || slots < PARALLEL_SLOTS {
        return jobs.iter().map(|(b, size)| build_table(b, *size)).collect();
    }
    // Contiguous runs of about equal slots, one per thread, joined in order.
    let per_thread = slots.div_ceil(threads as u64);
    let mut runs: Vec<&[(Vec<M>, u32)]> = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for (i, (_, size)) in jobs.iter().enumerate() {
        acc += u64::from(*size);
        if acc >= per_thread {
            runs.push(&jobs[start..=i]);
            (start, acc) = (i + 1, 0);
        }
    }
    if start < jobs.len() {
        runs.push(&jobs[start..]);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|run| {
                scope.spawn(move || {
                    run.iter()
                        .map(|(b, size)| build_table(b, *size))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Largest relative deviation of a backend's slot count from `size / n`.
#[must_use]
pub fn max_share_deviation(table: &[u32], backend_count: usize) -> f64 {
    let mut counts = vec![0usize; backend_count];
    for &i in table {
        counts[i as usize] += 1;
    }
    #[allow(clippy::cast_precision_loss)]
    let ideal = table.len() as f64 / backend_count as f64;
    #[allow(clippy::cast_precision_loss)]
    counts
        .iter()
        .map(|&c| (c as f64 - ideal).abs() / ideal)
        .fold(0.0, f64::max)
}

/// Of the flows that were not on backend `changed`, the fraction that moves to
/// another backend when `changed` leaves (`add == false`) or joins a set, with
/// the table size chosen as the planner would.
#[must_use]
pub fn disruption<M: Member>(backends: &[M], changed: M, add: bool) -> f64 {
    let before: Vec<M> = backends.to_vec();
    let mut after = before.clone();
    if add {
        after.push(changed);
    } else {
        after.retain(|&b| b != changed);
    }
    let before_size = table_size_for(before.len(), 0);
    let after_size = table_size_for(after.len(), before_size);
    let t0 = build_table(&before, before_size);
    let t1 = build_table(&after, after_size);
    let (mut moved, mut kept) = (0u64, 0u64);
    for hash in (0..1_000_000u32).map(|i| i.wrapping_mul(0x9e37_79b1)) {
        let b0 = before[t0[(hash % before_size) as usize] as usize];
        let b1 = after[t1[(hash % after_size) as usize] as usize];
        if b0 == changed || b1 == changed {
            continue;
        }
        kept += 1;
        if b0 != b1 {
            moved += 1;
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let fraction = moved as f64 / kept.max(1) as f64;
    fraction
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn backends(n: usize) -> Vec<SocketAddrV4> {
        (0..n)
            .map(|i| {
                let i = u32::try_from(i).unwrap();
                SocketAddrV4::new(Ipv4Addr::from(0x0af4_0000 + i), 8080)
            })
            .collect()
    }

    #[test]
    fn sizes_are_prime_and_sticky() {
        for size in TABLE_SIZES {
            assert!((2..size)
                .take_while(|d| d * d <= size)
                .all(|d| size % d != 0));
        }
        assert_eq!(table_size_for(0, 0), 0);
        assert_eq!(table_size_for(1, 0), 251);
        assert_eq!(table_size_for(10, 0), 1_021);
        assert_eq!(table_size_for(9, 1_021), 1_021, "one fewer keeps the size");
        assert_eq!(table_size_for(11, 1_021), 1_021, "one more keeps the size");
        assert_eq!(
            table_size_for(30, 1_021),
            4_093,
            "below 50 slots each it grows"
        );
        assert_eq!(table_size_for(2, 1_021), 1_021);
        assert_eq!(
            table_size_for(1, 4_093),
            251,
            "above 800 slots each it shrinks"
        );
        assert_eq!(table_size_for(5_000, 0), 131_071);
    }

    #[test]
    fn every_backend_gets_an_equal_share() {
        for n in [1, 2, 3, 10, 100, 1_000] {
            let b = backends(n);
            let table = build_table(&b, table_size_for(n, 0));
            let deviation = max_share_deviation(&table, n);
            println!(
                "maglev balance: {n} backends, {} slots, max deviation {:.2}%",
                table.len(),
                deviation * 100.0
            );
            assert!(deviation <= 0.02, "{n} backends: deviation {deviation}");
        }
    }

    /// The table as the paper writes it: backend `k`'s `j`-th preference is
    /// `(offset + j * skip) % size`, with a multiplication and a division,
    /// each backend named by `to_string`.
    pub(super) fn reference_table<M: Member + fmt::Display>(backends: &[M], size: u32) -> Vec<u32> {
        let m = u64::from(size);
        let at = |slot: u64| usize::try_from(slot).unwrap();
        let mut order: Vec<usize> = (0..backends.len()).collect();
        order.sort_by_key(|&i| backends[i]);
        let prefs: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let name = backends[i].to_string();
                let offset = hash64(name.as_bytes(), 0x5bd1_e995) % m;
                let skip = hash64(name.as_bytes(), 0x2545_f491_4f6c_dd1d) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; order.len()];
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0;
        while filled < table.len() {
            for (k, &i) in order.iter().enumerate() {
                let (offset, skip) = prefs[k];
                let mut slot = (offset + next[k] * skip) % m;
                while table[at(slot)] != u32::MAX {
                    next[k] += 1;
                    slot = (offset + next[k] * skip) % m;
                }
                table[at(slot)] = u32::try_from(i).unwrap();
                next[k] += 1;
                filled += 1;
                if filled == table.len() {
                    break;
                }
            }
        }
        table
    }

    #[test]
    fn table_is_the_papers_permutation_walk() {
        for (n, size) in [
            (1, 251),
            (3, 251),
            (10, 1_021),
            (37, 4_093),
            (1_000, 131_071),
        ] {
            let b = backends(n);
            assert_eq!(
                build_table(&b, size),
                reference_table(&b, size),
                "{n} backends"
            );
        }
        assert_eq!(build_table(&odd(), 509), reference_table(&odd(), 509));
    }

    /// Two backends at the edges of the name format: the longest name
    /// (21 bytes) and a short one.
    fn odd() -> [SocketAddrV4; 2] {
        [
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 65_535),
            SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 1),
        ]
    }

    /// 64-bit FNV-1a of the slots, each as four little-endian bytes.
    fn digest(table: &[u32]) -> u64 {
        table
            .iter()
            .flat_map(|slot| slot.to_le_bytes())
            .fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
    }

    /// IPv4 tables as the code of `47e691a` built them, so that making the
    /// module generic (or any later change) cannot move an IPv4 flow.
    #[test]
    fn ipv4_tables_are_golden() {
        let three = build_table(&backends(3), 251);
        assert_eq!(
            three[..12],
            [1, 2, 2, 0, 2, 0, 0, 2, 2, 1, 1, 0],
            "the first slots of 3 backends/251"
        );
        let digests = [
            digest(&three),
            digest(&build_table(&backends(10), 1_021)),
            digest(&build_table(&odd(), 509)),
            digest(&build_table(&backends(1_000), 131_071)),
        ];
        assert_eq!(
            digests,
            [
                0xd5f1_c873_a289_d1a7,
                0x2fc1_c423_1acd_34f5,
                0x7c47_5431_f490_0844,
                0x4fb2_b10a_69ad_4906,
            ],
            "{digests:#018x?}"
        );
    }

    #[test]
    fn table_ignores_backend_order() {
        let mut b = backends(7);
        let t = build_table(&b, 509);
        let names: Vec<_> = t.iter().map(|&i| b[i as usize]).collect();
        b.reverse();
        let t2 = build_table(&b, 509);
        let names2: Vec<_> = t2.iter().map(|&i| b[i as usize]).collect();
        assert_eq!(names, names2);
    }

    #[test]
    fn removing_or_adding_one_backend_moves_few_other_flows() {
        for n in [10, 100] {
            let b = backends(n);
            let removed = disruption(&b, b[n / 2], false);
            let added = disruption(
                &b,
                SocketAddrV4::new(Ipv4Addr::new(10, 245, 0, 1), 8080),
                true,
            );
            println!(
                "maglev disruption: {n} backends, remove one: {:.2}% of other flows move; add one: {:.2}%",
                removed * 100.0,
                added * 100.0
            );
            assert!(removed < 0.05, "remove from {n}: {removed}");
            assert!(added < 0.05, "add to {n}: {added}");
        }
    }

    #[test]
    fn tables_built_on_threads_are_the_tables_built_one_by_one() {
        let jobs: Vec<(Vec<SocketAddrV4>, u32)> = (0..300u32)
            .map(|i| {
                let backends = (0..=(i % 12))
                    .map(|b| SocketAddrV4::new(Ipv4Addr::from(0x0af0_0000 + i * 16 + b), 8080))
                    .collect::<Vec<_>>();
                let size = table_size_for(backends.len(), 0);
                (backends, size)
            })
            .collect();
        let one_by_one: Vec<Vec<u32>> = jobs.iter().map(|(b, s)| build_table(b, *s)).collect();
        assert!(jobs.iter().map(|(_, s)| u64::from(*s)).sum::<u64>() >= PARALLEL_SLOTS);
        for threads in [1, 2, 3, 8] {
            assert_eq!(
                build_tables(&jobs, threads),
                one_by_one,
                "{threads} threads"
            );
        }
        assert!(build_tables::<SocketAddrV4>(&[], 4).is_empty());
    }
}

#[cfg(test)]
mod tests_v6;
