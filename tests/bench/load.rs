//! The closed-loop load generator shared by every timed phase.
//!
//! C worker threads, each with its own state (for HTTP phases its own
//! client, so its own keep-alive connection, as a fleet of agents would
//! hold), pull job indices from a shared counter until all N are done.
//! Workers build their state and run their warm-up jobs before a barrier;
//! the clock starts when all are ready and stops after the last job, so
//! neither client construction nor warm-up is ever timed.
//!
//! Invariants: each timed index in `0..jobs` runs exactly once (unless a
//! worker failed to set up, in which case the phase is an error and no
//! numbers are reported); a latency is recorded only for a job that
//! succeeded; failures are counted, never retried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::header::CONTENT_TYPE;

use crate::stats::PhaseResult;
use crate::BoxError;

/// Checks one response; returns an identifier (e.g. a serial) to collect.
pub type Check = fn(status: u16, body: &[u8]) -> Result<Option<String>, String>;

/// Runs one job on a worker's state; `Ok` carries an identifier to collect.
pub type JobFn<'a, W> = &'a (dyn Fn(&mut W, Job) -> Result<Option<String>, String> + Sync);

/// Which job a worker is asked to run.
#[derive(Debug, Clone, Copy)]
pub enum Job {
    /// Untimed warm-up job, numbered `worker * warmup_per_worker + k`.
    Warmup(usize),
    /// Timed job `i` of `0..jobs`.
    Timed(usize),
}

/// One closed-loop phase over worker state `W` (built on the worker's own
/// thread, so `W` need not be `Send`).
pub struct Engine<'a, W> {
    /// Timed jobs.
    pub jobs: usize,
    /// Untimed jobs each worker runs before the barrier.
    pub warmup_per_worker: usize,
    /// Number of worker threads.
    pub concurrency: usize,
    /// Builds one worker's state.
    pub worker: &'a (dyn Fn() -> Result<W, BoxError> + Sync),
    /// Runs one job.
    pub job: JobFn<'a, W>,
    /// Called once all workers are warmed up, right as the clock starts
    /// (e.g. to read CPU counters).
    pub on_start: &'a (dyn Fn() -> Result<(), BoxError> + Sync),
}

/// One HTTP phase: where to POST what, and how to check the answers.
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
    /// Identifiers returned by the jobs.
    pub ids: Vec<String>,
    /// Failed timed jobs.
    pub failures: usize,
    /// Up to five failure messages.
    pub failure_samples: Vec<String>,
}

/// POSTs `body` as JSON with `client` and checks the answer.
pub fn post(
    client: &Client,
    url: &str,
    body: &[u8],
    check: Check,
) -> Result<Option<String>, String> {
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

/// Runs an HTTP `phase` (POST each body) and waits for every worker.
pub fn run(phase: &Phase<'_>) -> Result<Outcome, BoxError> {
    let concurrency = phase.concurrency.max(1);
    let per_worker_warmup = phase.warmup.len() / concurrency;
    drive(&Engine {
        jobs: phase.bodies.len(),
        warmup_per_worker: per_worker_warmup,
        concurrency,
        worker: phase.client,
        job: &|client: &mut Client, job| {
            let body = match job {
                Job::Warmup(i) => phase.warmup.get(i),
                Job::Timed(i) => phase.bodies.get(i),
            }
            .ok_or("job index out of range")?;
            post(client, phase.url, body, phase.check)
        },
        on_start: phase.on_start,
    })
}

/// Runs `engine` and waits for every worker.
pub fn drive<W>(engine: &Engine<'_, W>) -> Result<Outcome, BoxError> {
    let concurrency = engine.concurrency.max(1);
    let barrier = Barrier::new(concurrency + 1);
    let next = AtomicUsize::new(0);
    let shared = Mutex::new(Shared::default());
    let setup_errors = Mutex::new(Vec::<String>::new());

    let (started, start_error) = std::thread::scope(|scope| {
        for worker in 0..concurrency {
            let (barrier, next, shared, setup_errors) = (&barrier, &next, &shared, &setup_errors);
            scope.spawn(move || {
                let mut state = match (engine.worker)() {
                    Ok(state) => state,
                    Err(error) => {
                        lock(setup_errors).push(format!("worker setup: {error}"));
                        barrier.wait();
                        return;
                    }
                };
                for k in 0..engine.warmup_per_worker {
                    let job = Job::Warmup(worker * engine.warmup_per_worker + k);
                    if let Err(error) = (engine.job)(&mut state, job) {
                        lock(setup_errors).push(format!("warm-up: {error}"));
                        barrier.wait();
                        return;
                    }
                }
                barrier.wait();
                let mut local = Shared::default();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= engine.jobs {
                        break;
                    }
                    let started = Instant::now();
                    let result = (engine.job)(&mut state, Job::Timed(index));
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
            (engine.on_start)().err()
        } else {
            None
        };
        if start_error.is_some() || !lock(&setup_errors).is_empty() {
            next.store(engine.jobs, Ordering::Relaxed);
        }
        // The scope joins every worker before it returns, so the clock is
        // read after the last job.
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
