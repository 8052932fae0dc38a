//! Latency percentiles from microsecond samples, and rates.

use serde::Serialize;

/// Latency distribution, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples the figures are computed from.
    pub samples: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Summarises `samples` (microseconds); sorts them in place.
    pub fn from_micros(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
        let ms = |us: u32| f64::from(us) / 1000.0;
        Self {
            samples: samples.len(),
            p50_ms: ms(percentile(samples, 50.0)),
            p99_ms: ms(percentile(samples, 99.0)),
            p999_ms: ms(percentile(samples, 99.9)),
            max_ms: ms(samples[samples.len() - 1]),
            mean_ms: sum as f64 / samples.len() as f64 / 1000.0,
        }
    }
}

/// `count / secs`, or 0 when no time passed.
pub fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Nearest-rank percentile of sorted, non-empty `sorted`.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    // The epsilon keeps float error (99.9 / 100 * 1000 = 999.0000000000001) off the ceiling.
    let rank = (p / 100.0 * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 99.0), 990);
        assert_eq!(percentile(&v, 99.9), 999);
        assert_eq!(percentile(&v, 100.0), 1000);
        assert_eq!(percentile(&[7], 99.9), 7);
    }

    #[test]
    fn summarises_in_milliseconds() {
        let mut v = vec![3000, 1000, 2000];
        let l = Latency::from_micros(&mut v);
        assert_eq!(
            (l.samples, l.p50_ms, l.max_ms, l.mean_ms),
            (3, 2.0, 3.0, 2.0)
        );
        assert_eq!(Latency::from_micros(&mut []), Latency::default());
    }
}
