//! The benchmarks' statistics: medians, round summaries, percentiles, ratios.

use std::time::Duration;

/// The median of `samples` (the upper one of an even count). Panics when empty.
#[must_use]
pub fn median(mut samples: Vec<u64>) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// A measurement repeated in rounds: the median of the round medians and
/// the smallest and largest round median (the spread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Figure {
    /// Median of the round medians.
    pub median: u64,
    /// Smallest round median.
    pub low: u64,
    /// Largest round median.
    pub high: u64,
}

/// Summarises the round medians of one measurement. Panics when empty.
#[must_use]
pub fn figure(rounds: &[u64]) -> Figure {
    Figure {
        median: median(rounds.to_vec()),
        low: *rounds.iter().min().expect("at least one round"),
        high: *rounds.iter().max().expect("at least one round"),
    }
}

/// The `p`-th percentile (nearest rank, 0-100) of sorted durations. Panics when empty.
#[must_use]
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// `a / b`, with `b` of zero read as one.
#[must_use]
#[allow(clippy::cast_precision_loss)] // ns figures far below 2^52
pub fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

/// Ratios of measurements paired by round (`a[i] / b[i]`, measured close
/// in time, so a shared machine's drift cancels): their median and the
/// lowest and highest. `None` when no round has both.
#[must_use]
pub fn paired_ratio(a: &[u64], b: &[u64]) -> Option<(f64, f64, f64)> {
    let mut ratios: Vec<f64> = a.iter().zip(b).map(|(&x, &y)| ratio(x, y)).collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some((
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
    ))
}

/// The noise between two measurements of one configuration, paired by
/// round: each round's relative difference `|b[i] / a[i] - 1|`, and their
/// median and largest. `None` when no round has both.
#[must_use]
pub fn spread(a: &[u64], b: &[u64]) -> Option<(Vec<f64>, f64, f64)> {
    let diffs: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (ratio(y, x) - 1.0).abs())
        .collect();
    let mut sorted = diffs.clone();
    sorted.sort_by(f64::total_cmp);
    let (median, max) = (*sorted.get(sorted.len() / 2)?, *sorted.last()?);
    Some((diffs, median, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![5, 1, 3]), 3);
        assert_eq!(
            median(vec![4, 1, 3, 2]),
            3,
            "the upper middle of an even count"
        );
        assert_eq!(median(vec![7]), 7);
    }

    #[test]
    fn figure_gives_median_and_spread_of_rounds() {
        assert_eq!(
            figure(&[250, 260, 251, 249, 300]),
            Figure {
                median: 251,
                low: 249,
                high: 300
            }
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50), Duration::from_millis(51));
        assert_eq!(percentile(&sorted, 99), Duration::from_millis(100));
        assert_eq!(
            percentile(&sorted, 100),
            Duration::from_millis(100),
            "clamped to the last"
        );
        assert_eq!(percentile(&sorted[..1], 99), Duration::from_millis(1));
    }

    #[test]
    fn paired_ratios_follow_each_round_not_the_medians() {
        // The machine halves its speed in round 2: each round's ratio is 0.9.
        let ours = [90, 45, 90];
        let base = [100, 50, 100];
        let (median, low, high) = paired_ratio(&ours, &base).unwrap();
        assert!(
            (median - 0.9).abs() < 1e-9 && (low - 0.9).abs() < 1e-9 && (high - 0.9).abs() < 1e-9
        );
        // Here the ratio of the medians (60 / 100) is not any round's ratio:
        // the rounds' ratios are 0.5, 1.0 and 1.2.
        let (median, low, high) = paired_ratio(&[50, 100, 60], &[100, 100, 50]).unwrap();
        assert!(
            (median - 1.0).abs() < 1e-9 && (low - 0.5).abs() < 1e-9 && (high - 1.2).abs() < 1e-9,
            "{median} {low} {high}"
        );
        assert_eq!(paired_ratio(&[], &[1]), None);
    }

    #[test]
    fn ratio_guards_against_a_zero_baseline() {
        assert!((ratio(250, 100) - 2.5).abs() < 1e-9);
        assert!((ratio(5, 0) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn spread_is_the_relative_difference_of_each_pair() {
        let (diffs, median, max) = spread(&[100, 200, 100], &[110, 190, 100]).unwrap();
        assert_eq!(diffs.len(), 3);
        assert!((diffs[0] - 0.1).abs() < 1e-9 && (diffs[1] - 0.05).abs() < 1e-9);
        assert!((median - 0.05).abs() < 1e-9 && (max - 0.1).abs() < 1e-9);
        assert_eq!(spread(&[], &[]), None);
    }
}
