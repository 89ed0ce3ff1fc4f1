//! IPv4's per-packet cost before and after the IPv6 data path (issue 16's
//! "IPv4 unchanged within noise"): the arithmetic of the packet bench's
//! comparison (`tests/benches/packet/before_after.rs`) and of its target,
//! and the one map value whose layout the IPv6 work changed.
//!
//! Each round measures each case four times, in the order before, after,
//! after, before (ABBA: a drift of the machine that is linear in time hits
//! both objects alike). A round's ratio is the sum of its two "after"
//! medians over the sum of its two "before" medians. The noise is what two
//! measurements of one object in one round differ by (before vs before,
//! after vs after): the largest such difference over the rounds, and at
//! least the resolution of the figures (the kernel reports whole
//! nanoseconds, so a median is a whole number: 1 ns of the before median,
//! which two same-object medians in a quiet round can show as 0).

use lb_common::NodeConfig;

/// One case's per-round medians (ns), in the order a round takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaseRounds {
    /// Before (the old object), first of the round.
    pub before_a: Vec<u64>,
    /// After (the current object), second.
    pub after_a: Vec<u64>,
    /// After again, third.
    pub after_b: Vec<u64>,
    /// Before again, last.
    pub before_b: Vec<u64>,
}

/// One case compared.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Median over the rounds of the round's mean "before" (ns).
    pub before_ns: f64,
    /// Median over the rounds of the round's mean "after" (ns).
    pub after_ns: f64,
    /// Each round's after/before.
    pub round_ratios: Vec<f64>,
    /// Median of [`Comparison::round_ratios`].
    pub ratio: f64,
    /// Lowest round ratio.
    pub low: f64,
    /// Highest round ratio.
    pub high: f64,
    /// Largest `|b/a - 1|` of the same-object pairs of any round, at
    /// least 1 ns of [`Comparison::before_ns`] (the figures' resolution).
    pub noise: f64,
}

impl Comparison {
    /// Whether after/before lies within the noise of 1.
    #[must_use]
    pub fn within_noise(&self) -> bool {
        self.excess(self.ratio) <= 0.0
    }

    /// How far `ratio` lies from 1 beyond the noise (zero or less: within).
    #[must_use]
    pub fn excess(&self, ratio: f64) -> f64 {
        (ratio - 1.0).abs() - self.noise
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

#[allow(clippy::cast_precision_loss)] // ns figures far below 2^52
fn f(x: u64) -> f64 {
    x as f64
}

/// The comparison of one case's rounds; `None` without a complete round.
#[must_use]
pub fn compare(r: &CaseRounds) -> Option<Comparison> {
    let n = r
        .before_a
        .len()
        .min(r.after_a.len())
        .min(r.after_b.len())
        .min(r.before_b.len());
    if n == 0 {
        return None;
    }
    let rounds = 0..n;
    let before: Vec<f64> = rounds
        .clone()
        .map(|i| f64::midpoint(f(r.before_a[i]), f(r.before_b[i])))
        .collect();
    let after: Vec<f64> = rounds
        .clone()
        .map(|i| f64::midpoint(f(r.after_a[i]), f(r.after_b[i])))
        .collect();
    let round_ratios: Vec<f64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a / b.max(1.0))
        .collect();
    let same = |a: u64, b: u64| (f(b) / f(a).max(1.0) - 1.0).abs();
    let noise = rounds
        .flat_map(|i| {
            [
                same(r.before_a[i], r.before_b[i]),
                same(r.after_a[i], r.after_b[i]),
            ]
        })
        .fold(0.0, f64::max);
    let before_ns = median(before)?;
    Some(Comparison {
        before_ns,
        after_ns: median(after)?,
        ratio: median(round_ratios.clone())?,
        low: round_ratios.iter().copied().fold(f64::INFINITY, f64::min),
        high: round_ratios
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max),
        round_ratios,
        noise: noise.max(1.0 / before_ns.max(1.0)),
    })
}

/// Bytes of `NodeConfig` before the IPv6 data path (pin layouts up to v7).
pub const NODE_CONFIG_BEFORE_IPV6_LEN: usize = 64;

/// `config` as the objects before the IPv6 data path read it: the same
/// fields in the same places, without `node_addr6` (appended at byte 64).
#[must_use]
pub fn node_config_before_ipv6(config: &NodeConfig) -> [u8; NODE_CONFIG_BEFORE_IPV6_LEN] {
    let mut bytes = Vec::with_capacity(NODE_CONFIG_BEFORE_IPV6_LEN);
    bytes.extend_from_slice(&config.node_addr.to_ne_bytes());
    bytes.extend_from_slice(&config.flags.to_ne_bytes());
    bytes.extend_from_slice(&config.snat_port_min.to_ne_bytes());
    bytes.extend_from_slice(&config.snat_port_max.to_ne_bytes());
    bytes.extend_from_slice(&config.overlay_ifindex.to_ne_bytes());
    for word in config.hash_key {
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    for timeout in config.timeouts {
        bytes.extend_from_slice(&timeout.to_ne_bytes());
    }
    bytes
        .try_into()
        .expect("NodeConfig before IPv6 is 64 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(before_a: &[u64], after_a: &[u64], after_b: &[u64], before_b: &[u64]) -> CaseRounds {
        CaseRounds {
            before_a: before_a.to_vec(),
            after_a: after_a.to_vec(),
            after_b: after_b.to_vec(),
            before_b: before_b.to_vec(),
        }
    }

    #[test]
    fn ratio_is_the_median_of_round_ratios_of_pair_means() {
        let c = compare(&rounds(
            &[100, 100, 200],
            &[110, 100, 190],
            &[110, 100, 210],
            &[100, 100, 200],
        ))
        .unwrap();
        let want = [1.1, 1.0, 1.0];
        assert!(c
            .round_ratios
            .iter()
            .zip(want)
            .all(|(r, w)| (r - w).abs() < 1e-12));
        assert!((c.ratio - 1.0).abs() < 1e-12);
        assert!((c.low - 1.0).abs() < 1e-12 && (c.high - 1.1).abs() < 1e-12);
        assert!((c.before_ns - 100.0).abs() < 1e-12);
        // The after pair of the last round differs by 210/190 - 1.
        assert!((c.noise - (210.0 / 190.0 - 1.0)).abs() < 1e-12);
    }

    #[test]
    fn within_noise_is_two_sided_and_bounded_by_same_object_spread() {
        // Before pairs differ by 2%: a 1% change is within, a 5% one is not,
        // either way.
        let base = [100, 100, 100];
        let again = [102, 102, 102];
        let within = compare(&rounds(&base, &[101; 3], &[101; 3], &again)).unwrap();
        assert!(within.within_noise(), "{within:?}");
        let slower = compare(&rounds(&base, &[106; 3], &[106; 3], &again)).unwrap();
        assert!(!slower.within_noise(), "{slower:?}");
        let faster = compare(&rounds(&base, &[96; 3], &[96; 3], &again)).unwrap();
        assert!(!faster.within_noise(), "{faster:?}");
        assert!(faster.excess(faster.ratio) > 0.0);
    }

    #[test]
    fn the_noise_is_at_least_one_nanosecond_of_the_before_median() {
        // Same-object pairs equal (a quiet machine, whole-ns medians): 44
        // against 45 ns is the figures' resolution, not a change.
        let c = compare(&rounds(&[44; 3], &[45; 3], &[45; 3], &[44; 3])).unwrap();
        assert!((c.noise - 1.0 / 44.0).abs() < 1e-12, "{c:?}");
        assert!(c.within_noise(), "{c:?}");
        let c = compare(&rounds(&[44; 3], &[46; 3], &[46; 3], &[44; 3])).unwrap();
        assert!(!c.within_noise(), "{c:?}");
    }

    #[test]
    fn no_complete_round_no_comparison() {
        assert_eq!(compare(&rounds(&[1], &[1], &[], &[1])), None);
    }

    #[test]
    fn config_before_ipv6_is_the_current_layout_without_node_addr6() {
        let config = NodeConfig {
            node_addr: 0x0b32_a8c0,
            flags: 1,
            snat_port_min: 32_768,
            snat_port_max: 60_999,
            overlay_ifindex: 7,
            hash_key: [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210],
            timeouts: [30, 60, 86_400, 3_600, 10, 60, 10, 120],
            node_addr6: [1, 2, 3, 4],
        };
        let old = node_config_before_ipv6(&config);
        // SAFETY: NodeConfig is repr(C), without padding (lb-common tests
        // it), so its bytes are all initialized.
        let now: &[u8] = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&config).cast::<u8>(),
                size_of::<NodeConfig>(),
            )
        };
        assert_eq!(&now[..NODE_CONFIG_BEFORE_IPV6_LEN], &old[..]);
        assert_eq!(
            core::mem::offset_of!(NodeConfig, node_addr6),
            NODE_CONFIG_BEFORE_IPV6_LEN
        );
    }
}
