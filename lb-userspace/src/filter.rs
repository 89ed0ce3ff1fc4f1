//! The pass-through filter's contents (`lb_common::MAP_FILTER`): which bits
//! the applied frontends and their backends need, and the word writes that
//! move the map from what it holds to that, in two phases around a plan so
//! a bit is set before its frontend or backend is written and cleared only
//! after it is gone, and a grace period later: a reply of a removed backend
//! already on its way, whose reverse-NAT entry still exists, is still
//! looked up and translated instead of passing with the pod's address.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use lb_common::FILTER_WORDS;

use crate::{
    applied::AppliedFrontend,
    desired::{AddrFamily, FilterSeed, Protocol},
};

/// The filter bits one applied frontend needs: its own (a node port's on
/// each of its node-port addresses), and one per backend of its Service
/// port (selected or draining: both still send replies).
pub fn bits_of<S: AddrFamily>(applied: &AppliedFrontend<S>) -> impl Iterator<Item = u32> + '_ {
    frontend_bits::<S>(applied.frontend, &applied.node_port_addrs).chain(backend_bits(
        applied.backends.keys(),
        S::proto(&applied.frontend),
    ))
}

/// A frontend's own filter bits: its address, or a node port's node-port
/// addresses (an exact frontend lists none).
pub fn frontend_bits<S: AddrFamily>(
    frontend: S::Frontend,
    node_port_addrs: &[S::Ip],
) -> impl Iterator<Item = u32> + '_ {
    let (port, proto) = (S::frontend_port(&frontend), S::proto(&frontend));
    let exact =
        S::frontend_ip(&frontend).map(|ip| S::filter_bit(FilterSeed::Frontend, ip, port, proto));
    let node_port = node_port_addrs
        .iter()
        .map(move |a| S::filter_bit(FilterSeed::Frontend, *a, port, proto));
    exact.into_iter().chain(node_port)
}

/// The filter bits of backends at `addrs` serving `proto`.
pub fn backend_bits<'a, S: AddrFamily>(
    addrs: impl IntoIterator<Item = &'a S> + 'a,
    proto: Protocol,
) -> impl Iterator<Item = u32> + 'a {
    addrs
        .into_iter()
        .map(move |addr| S::filter_bit(FilterSeed::Backend, addr.ip_of(), addr.port_of(), proto))
}

/// Word writes of one plan: `before` goes ahead of every other operation
/// (it only sets bits), `after` behind them (it clears the bits no longer needed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterWrites {
    /// (word index, value) written first.
    pub before: Vec<(u32, u64)>,
    /// (word index, value) written last.
    pub after: Vec<(u32, u64)>,
}

/// How many applied frontends and backends need each bit, the words that
/// makes, and the words the map holds.
#[derive(Debug)]
pub struct FilterBits {
    counts: HashMap<u32, u32>,
    wanted: Vec<u64>,
    written: Vec<u64>,
    dirty: BTreeSet<u32>,
    /// How long a bit stays set after nothing needs it any more.
    grace: Duration,
    /// Bits nothing needs, since when.
    retiring: HashMap<u32, Instant>,
}

impl Default for FilterBits {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl FilterBits {
    /// Bits for a map that holds `written` (its words, in order; missing
    /// ones are zero) and nothing applied yet.
    #[must_use]
    pub fn new(mut written: Vec<u64>) -> Self {
        written.resize(FILTER_WORDS as usize, 0);
        Self {
            counts: HashMap::new(),
            wanted: vec![0; FILTER_WORDS as usize],
            written,
            dirty: BTreeSet::new(),
            grace: Duration::ZERO,
            retiring: HashMap::new(),
        }
    }

    /// The same, keeping bits set for `grace` after nothing needs them.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Counts the bits of `bits` as needed once more.
    pub fn add(&mut self, bits: impl IntoIterator<Item = u32>) {
        for bit in bits {
            let count = self.counts.entry(bit).or_insert(0);
            *count += 1;
            if *count == 1 && self.retiring.remove(&bit).is_none() {
                self.wanted[(bit / 64) as usize] |= 1 << (bit % 64);
                self.dirty.insert(bit / 64);
            }
        }
    }

    /// Counts the bits of `bits` as needed once less, now.
    pub fn remove(&mut self, bits: impl IntoIterator<Item = u32>) {
        self.remove_at(bits, Instant::now());
    }

    /// Counts the bits of `bits` as needed once less at `now`: a bit no
    /// longer needed is cleared by the first writes after the grace.
    pub fn remove_at(&mut self, bits: impl IntoIterator<Item = u32>, now: Instant) {
        for bit in bits {
            let Some(count) = self.counts.get_mut(&bit) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&bit);
                self.retiring.insert(bit, now);
            }
        }
    }

    /// The writes that bring the map to the counted bits, now.
    pub fn writes(&mut self) -> FilterWrites {
        self.writes_at(Instant::now())
    }

    /// The writes that bring the map to the counted bits at `now` (bits
    /// retired at least the grace ago cleared); they count as written once
    /// returned.
    pub fn writes_at(&mut self, now: Instant) -> FilterWrites {
        let grace = self.grace;
        let expired: Vec<u32> = self
            .retiring
            .iter()
            .filter(|(_, &since)| now.saturating_duration_since(since) >= grace)
            .map(|(&bit, _)| bit)
            .collect();
        for bit in expired {
            self.retiring.remove(&bit);
            self.wanted[(bit / 64) as usize] &= !(1 << (bit % 64));
            self.dirty.insert(bit / 64);
        }
        let mut out = FilterWrites::default();
        for index in std::mem::take(&mut self.dirty) {
            let (held, wanted) = (self.written[index as usize], self.wanted[index as usize]);
            let first = held | wanted;
            if first != held {
                out.before.push((index, first));
            }
            if wanted != first {
                out.after.push((index, wanted));
            }
            self.written[index as usize] = wanted;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::{Ipv4Addr, SocketAddrV4},
    };

    use lb_common::ServiceEntry;

    use super::*;
    use crate::{
        applied::AppliedBackend,
        desired::{Frontend, ObjectName, Protocol},
    };

    fn applied(last: u8, backends: &[u8]) -> AppliedFrontend {
        AppliedFrontend {
            source_ranges: Vec::new(),
            internal: None,
            node_port_addrs: Vec::new(),
            frontend: Frontend {
                addr: Ipv4Addr::new(10, 96, 0, last),
                port: 80,
                proto: Protocol::Tcp,
            },
            service: ObjectName {
                namespace: "default".into(),
                name: "web".into(),
            },
            port_name: None,
            entry: ServiceEntry::default(),
            backends: backends
                .iter()
                .map(|&b| {
                    (
                        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, b), 8080),
                        AppliedBackend {
                            id: u32::from(b),
                            aliases: Vec::new(),
                            local: true,
                            for_cluster: true,
                            for_local: true,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn is_set(words: &[u64], bit: u32) -> bool {
        words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// The map after applying `writes` in order.
    fn apply(words: &mut [u64], writes: &FilterWrites) {
        for &(index, word) in writes.before.iter().chain(&writes.after) {
            words[index as usize] = word;
        }
    }

    /// IPv4 bits as the code of `47e691a` computes them: the kernel looks
    /// them up with the same function, and an agent adopts the words an
    /// earlier one wrote, so they must never move.
    #[test]
    fn ipv4_bits_are_golden() {
        let tcp = |a, b, c, d, port| Frontend {
            addr: Ipv4Addr::new(a, b, c, d),
            port,
            proto: Protocol::Tcp,
        };
        let dns = Frontend {
            proto: Protocol::Udp,
            ..tcp(10, 96, 0, 10, 53)
        };
        let node_port_addrs = [
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 1, 11),
        ];
        let frontends: Vec<u32> = [
            frontend_bits::<SocketAddrV4>(tcp(10, 96, 0, 1, 443), &[]).collect::<Vec<_>>(),
            frontend_bits::<SocketAddrV4>(dns, &[]).collect(),
            frontend_bits::<SocketAddrV4>(tcp(192, 0, 2, 10, 80), &[]).collect(),
            frontend_bits::<SocketAddrV4>(
                Frontend::node_port(30_080, Protocol::Tcp),
                &node_port_addrs,
            )
            .collect(),
        ]
        .concat();
        assert_eq!(
            frontends,
            [556_152, 1_624_394, 1_202_092, 1_351_981, 297_597],
            "frontends"
        );
        let pods = [
            SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 8080),
            SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 3), 8080),
            SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 5), 53),
        ];
        let backends: Vec<u32> = backend_bits(&pods, Protocol::Tcp)
            .chain(backend_bits(&pods[2..], Protocol::Udp))
            .collect();
        assert_eq!(backends, [526_946, 1_569_713, 834_044, 383_614], "backends");
    }

    #[test]
    fn a_bit_nothing_needs_stays_set_for_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(2);
        let mut bits = FilterBits::new(Vec::new()).with_grace(grace);
        let mut map = vec![0u64; FILTER_WORDS as usize];
        let a = applied(1, &[2, 3]);
        bits.add(bits_of(&a));
        apply(&mut map, &bits.writes_at(t0));
        // Backend .3 leaves: its bit stays while a reply may be on its way.
        let b = applied(1, &[2]);
        bits.remove_at(bits_of(&a), t0);
        bits.add(bits_of(&b));
        apply(&mut map, &bits.writes_at(t0));
        let gone = bits_of(&a).last().unwrap();
        assert!(is_set(&map, gone), "cleared before the grace");
        apply(&mut map, &bits.writes_at(t0 + Duration::from_secs(1)));
        assert!(is_set(&map, gone));
        apply(&mut map, &bits.writes_at(t0 + grace));
        assert!(!is_set(&map, gone), "cleared after the grace");
        for bit in bits_of(&b) {
            assert!(is_set(&map, bit));
        }
        // Needed again within the grace: never cleared.
        bits.remove_at(bits_of(&b), t0 + grace);
        bits.add(bits_of(&b));
        apply(&mut map, &bits.writes_at(t0 + grace * 3));
        for bit in bits_of(&b) {
            assert!(is_set(&map, bit));
        }
    }

    #[test]
    fn bits_are_set_before_and_cleared_after_and_shared_bits_stay() {
        let mut bits = FilterBits::default();
        let mut map = vec![0u64; FILTER_WORDS as usize];
        let a = applied(1, &[2, 3]);
        let b = applied(2, &[3]); // shares backend 10.244.1.3:8080 with a
        bits.add(bits_of(&a));
        bits.add(bits_of(&b));
        let first = bits.writes();
        assert!(first.after.is_empty(), "nothing to clear on the first sync");
        apply(&mut map, &first);
        for bit in bits_of(&a).chain(bits_of(&b)) {
            assert!(is_set(&map, bit));
        }
        assert_eq!(bits_of(&a).count(), 3);

        bits.remove(bits_of(&a));
        let second = bits.writes();
        assert!(second.before.is_empty(), "removing sets nothing");
        apply(&mut map, &second);
        for bit in bits_of(&b) {
            assert!(is_set(&map, bit), "b's bits, the shared one too, stay");
        }
        let a_own = bits_of(&a).next().unwrap();
        assert!(!is_set(&map, a_own), "a's frontend bit is cleared");
        assert_eq!(
            bits.writes(),
            FilterWrites::default(),
            "nothing left to write"
        );
    }

    #[test]
    fn a_word_that_gains_and_loses_bits_gains_first() {
        let mut bits = FilterBits::default();
        bits.add([5]);
        let _ = bits.writes();
        bits.remove([5]);
        bits.add([6]);
        let writes = bits.writes();
        assert_eq!(
            writes.before,
            vec![(0, 0b110_0000)],
            "both bits while changing"
        );
        assert_eq!(writes.after, vec![(0, 0b100_0000)]);
    }

    #[test]
    fn adopted_words_are_rewritten_only_where_bits_are_missing() {
        let a = applied(1, &[2]);
        let mut full = FilterBits::default();
        full.add(bits_of(&a));
        let mut map = vec![0u64; FILTER_WORDS as usize];
        apply(&mut map, &full.writes());
        let mut adopted = FilterBits::new(map.clone());
        adopted.add(bits_of(&a));
        assert_eq!(
            adopted.writes(),
            FilterWrites::default(),
            "the pins hold them"
        );

        let mut fresh = FilterBits::new(Vec::new());
        fresh.add(bits_of(&a));
        let writes = fresh.writes();
        assert!(!writes.before.is_empty(), "an empty map gets every bit");
        let mut empty = vec![0u64; FILTER_WORDS as usize];
        apply(&mut empty, &writes);
        assert_eq!(empty, map);
    }
}
