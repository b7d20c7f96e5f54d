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
        }
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
}
