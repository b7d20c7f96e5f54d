//! Server-side stage timings from certmint's Prometheus `/metrics`.
//!
//! Histogram `_sum` and `_count` series are read before and after a phase;
//! the deltas tell where the server spent its time per enrollment
//! (C_Sign on the token, each database operation, the whole request).

use std::collections::BTreeMap;

use reqwest::blocking::Client;
use serde::Serialize;

use crate::BoxError;

/// `series -> value` for every `_sum`, `_count` and `_total` line.
pub type Snapshot = BTreeMap<String, f64>;

/// Reads `/metrics`.
pub fn scrape(client: &Client, base_url: &str) -> Result<Snapshot, BoxError> {
    let response = client.get(format!("{base_url}/metrics")).send()?;
    if !response.status().is_success() {
        return Err(format!("GET /metrics: HTTP {}", response.status()).into());
    }
    let text = response.text()?;
    let mut snapshot = Snapshot::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if name.ends_with("_sum") || name.ends_with("_count") || name.ends_with("_total") {
            if let Ok(value) = value.parse::<f64>() {
                snapshot.insert(series.to_owned(), value);
            }
        }
    }
    Ok(snapshot)
}

/// Server time spent in one instrumented stage during a phase.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// Histogram series without the `_sum` suffix, labels included.
    pub stage: String,
    /// Observations during the phase.
    pub count: f64,
    /// Mean duration of one observation, milliseconds.
    pub mean_ms: f64,
    /// Total duration divided by the enrollments of the phase, milliseconds.
    pub per_enrollment_ms: f64,
}

/// Stage deltas between two snapshots, for `enrollments` enrollments.
pub fn stages(before: &Snapshot, after: &Snapshot, enrollments: usize) -> Vec<Stage> {
    let mut stages = Vec::new();
    for (series, sum_after) in after {
        let (name, labels) = split_series(series);
        let Some(base) = name.strip_suffix("_sum") else {
            continue;
        };
        let count_series = format!("{base}_count{labels}");
        let count = after.get(&count_series).copied().unwrap_or(0.0)
            - before.get(&count_series).copied().unwrap_or(0.0);
        let sum = sum_after - before.get(series).copied().unwrap_or(0.0);
        if count <= 0.0 {
            continue;
        }
        stages.push(Stage {
            stage: format!("{}{labels}", base.trim_start_matches("certmint_")),
            count,
            mean_ms: sum / count * 1000.0,
            per_enrollment_ms: sum / enrollments.max(1) as f64 * 1000.0,
        });
    }
    stages.sort_by(|a, b| b.per_enrollment_ms.total_cmp(&a.per_enrollment_ms));
    stages
}

/// SQLite only: write transactions per durable COMMIT of the server's
/// group-commit writer during a phase (`None` on PostgreSQL, or when
/// nothing was written).
pub fn writes_per_commit(before: &Snapshot, after: &Snapshot) -> Option<f64> {
    let delta =
        |series: &str| Some(after.get(series)? - before.get(series).copied().unwrap_or(0.0));
    let writes = delta("certmint_db_group_commit_writes_total")?;
    let batches = delta("certmint_db_group_commit_batches_total")?;
    (batches > 0.0).then(|| writes / batches)
}

/// Prints the group-commit line under a stage table.
pub fn print_writes_per_commit(writes_per_commit: Option<f64>) {
    if let Some(writes) = writes_per_commit {
        println!("  SQLite group commit: {writes:.2} write transactions per durable COMMIT");
    }
}

/// `name{labels}` -> (`name`, `{labels}`).
fn split_series(series: &str) -> (&str, &str) {
    series.split_at(series.find('{').unwrap_or(series.len()))
}
