//! Latency samples, percentiles and the outcome of one load phase.

use std::time::Duration;

use serde::Serialize;

/// What one timed phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Requests completed successfully.
    pub completed: usize,
    /// Wall-clock time from the start barrier to the last response, seconds.
    pub elapsed_seconds: f64,
    /// Successful requests per second.
    pub per_second: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Slowest request, milliseconds.
    pub max_ms: f64,
    /// Every latency sample, sorted: what [`PhaseResult::merge`] pools.
    #[serde(skip)]
    pub latencies: Vec<Duration>,
}

impl PhaseResult {
    /// Summarises `latencies` (one per successful request) over `elapsed`.
    pub fn new(mut latencies: Vec<Duration>, elapsed: Duration) -> PhaseResult {
        latencies.sort_unstable();
        let seconds = elapsed.as_secs_f64();
        PhaseResult {
            completed: latencies.len(),
            elapsed_seconds: seconds,
            per_second: if seconds > 0.0 {
                latencies.len() as f64 / seconds
            } else {
                0.0
            },
            p50_ms: millis(percentile(&latencies, 50.0)),
            p99_ms: millis(percentile(&latencies, 99.0)),
            max_ms: millis(latencies.last().copied().unwrap_or_default()),
            latencies,
        }
    }

    /// One result for phases run one after another (rounds of the same
    /// load): their samples pooled, their wall-clock times added.
    pub fn merge<'a>(parts: impl IntoIterator<Item = &'a PhaseResult>) -> PhaseResult {
        let mut latencies = Vec::new();
        let mut seconds = 0.0;
        for part in parts {
            latencies.extend_from_slice(&part.latencies);
            seconds += part.elapsed_seconds;
        }
        PhaseResult::new(latencies, Duration::from_secs_f64(seconds))
    }
}

/// Median of `values` (the mean of the middle two for an even count);
/// `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Nearest-rank percentile of sorted samples (zero when there are none).
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&samples[..1], 99.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn merge_pools_samples_and_adds_elapsed_time() {
        let first = PhaseResult::new(
            (1..=50).map(Duration::from_millis).collect(),
            Duration::from_secs(1),
        );
        let second = PhaseResult::new(
            (51..=100).rev().map(Duration::from_millis).collect(),
            Duration::from_secs(3),
        );
        let merged = PhaseResult::merge([&first, &second]);
        assert_eq!(merged.completed, 100);
        assert!((merged.elapsed_seconds - 4.0).abs() < 1e-9);
        assert!((merged.per_second - 25.0).abs() < 1e-9);
        assert!((merged.p50_ms - 50.0).abs() < 1e-9);
        assert!((merged.p99_ms - 99.0).abs() < 1e-9);
        assert!((merged.max_ms - 100.0).abs() < 1e-9);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.3, 0.1, 0.2]), Some(0.2));
        assert_eq!(median(&[0.4, 0.1, 0.3, 0.2]), Some(0.25));
    }
}
