//! The closed-loop load generator shared by the certmint and cfssl phases.
//!
//! C worker threads, each with its own HTTP client (so its own keep-alive
//! connection, as a fleet of agents would hold), pull request bodies from a
//! shared counter until all N are sent. Workers warm up (and open their
//! connection) before a barrier; the clock starts when all are ready.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::header::CONTENT_TYPE;

use crate::stats::PhaseResult;
use crate::BoxError;

/// Checks one response; returns an identifier (e.g. a serial) to collect.
pub type Check = fn(status: u16, body: &[u8]) -> Result<Option<String>, String>;

/// One load phase: where to send what, and how to check the answers.
pub struct Phase<'a> {
    /// Full URL to POST to.
    pub url: &'a str,
    /// Builds one worker's client.
    pub client: &'a (dyn Fn() -> Result<Client, BoxError> + Sync),
    /// JSON bodies of the timed requests.
    pub bodies: &'a [Vec<u8>],
    /// JSON bodies of the warm-up requests, split evenly between workers.
    pub warmup: &'a [Vec<u8>],
    /// Number of worker threads.
    pub concurrency: usize,
    /// Response check.
    pub check: Check,
    /// Called once all workers are warmed up, right before the clock starts
    /// (e.g. to read CPU counters).
    pub on_start: &'a (dyn Fn() -> Result<(), BoxError> + Sync),
}

/// What a phase produced.
pub struct Outcome {
    /// Throughput and latency.
    pub result: PhaseResult,
    /// Identifiers returned by `check`.
    pub ids: Vec<String>,
    /// Failed timed requests, with the first few reasons.
    pub failures: usize,
    /// Up to five failure messages.
    pub failure_samples: Vec<String>,
}

fn post(client: &Client, url: &str, body: &[u8], check: Check) -> Result<Option<String>, String> {
    let response = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send()
        .map_err(|error| format!("request failed: {error}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .map_err(|error| format!("reading the response failed: {error}"))?;
    check(status, &bytes)
}

#[derive(Default)]
struct Shared {
    latencies: Vec<Duration>,
    ids: Vec<String>,
    failures: usize,
    failure_samples: Vec<String>,
}

impl Shared {
    fn fail(&mut self, message: String) {
        self.failures += 1;
        if self.failure_samples.len() < 5 {
            self.failure_samples.push(message);
        }
    }
}

/// Runs `phase` and waits for every worker.
pub fn run(phase: &Phase<'_>) -> Result<Outcome, BoxError> {
    let concurrency = phase.concurrency.max(1);
    let barrier = Barrier::new(concurrency + 1);
    let next = AtomicUsize::new(0);
    let shared = Mutex::new(Shared::default());
    let setup_errors = Mutex::new(Vec::<String>::new());
    let per_worker_warmup = phase.warmup.len() / concurrency;

    let (started, start_error) = std::thread::scope(|scope| {
        for worker in 0..concurrency {
            let (barrier, next, shared, setup_errors) = (&barrier, &next, &shared, &setup_errors);
            scope.spawn(move || {
                let warm =
                    &phase.warmup[worker * per_worker_warmup..(worker + 1) * per_worker_warmup];
                let client = match (phase.client)() {
                    Ok(client) => client,
                    Err(error) => {
                        lock(setup_errors).push(format!("client: {error}"));
                        barrier.wait();
                        return;
                    }
                };
                for body in warm {
                    if let Err(error) = post(&client, phase.url, body, phase.check) {
                        lock(setup_errors).push(format!("warm-up: {error}"));
                        barrier.wait();
                        return;
                    }
                }
                barrier.wait();
                let mut local = Shared::default();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = phase.bodies.get(index) else {
                        break;
                    };
                    let started = Instant::now();
                    let result = post(&client, phase.url, body, phase.check);
                    let latency = started.elapsed();
                    match result {
                        Ok(id) => {
                            local.latencies.push(latency);
                            local.ids.extend(id);
                        }
                        Err(error) => local.fail(error),
                    }
                }
                let mut all = lock(shared);
                all.latencies.append(&mut local.latencies);
                all.ids.append(&mut local.ids);
                all.failures += local.failures;
                for sample in local.failure_samples {
                    if all.failure_samples.len() < 5 {
                        all.failure_samples.push(sample);
                    }
                }
            });
        }
        barrier.wait();
        let started = Instant::now();
        // Workers that failed to set up have already given up; if any did,
        // stop the others at once by exhausting the counter.
        let start_error = if lock(&setup_errors).is_empty() {
            (phase.on_start)().err()
        } else {
            None
        };
        if start_error.is_some() || !lock(&setup_errors).is_empty() {
            next.store(phase.bodies.len(), Ordering::Relaxed);
        }
        // The scope joins every worker before it returns, so the clock is
        // read after the last response.
        (started, start_error)
    });
    let elapsed = started.elapsed();
    if let Some(error) = start_error {
        return Err(error);
    }
    let setup_errors = setup_errors
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(first) = setup_errors.first() {
        return Err(format!(
            "{} worker(s) failed before timing: {first}",
            setup_errors.len()
        )
        .into());
    }
    let shared = shared.into_inner().unwrap_or_else(PoisonError::into_inner);
    Ok(Outcome {
        result: PhaseResult::new(shared.latencies, elapsed),
        ids: shared.ids,
        failures: shared.failures,
        failure_samples: shared.failure_samples,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
