//! `certmint-bench renew`: renewal over mutual TLS, beside the bare
//! mutual-TLS handshake rate of the same server.
//!
//! A fleet of agents renews about once a day each, so every renewal arrives
//! on a new connection with a full handshake in which the agent presents its
//! current certificate. The handshake is then a fixed cost of every renewal,
//! and the server's TLS stack alone sets a ceiling on the renewal rate; this
//! command measures both in one run so the two numbers are comparable.
//!
//! Phases, one after the other so they never compete for the CPU (the
//! client runs on the same machine as the server and is reported too):
//! 1. setup, untimed: a policy that allows renewal, bootstrap tokens, and
//!    N + warm-up holders, each enrolled with its own P-256 key and name
//!    (`h<i>.bench.internal`), each with a renewal CSR for a fresh key and
//!    the same name generated in advance;
//! 2. bare handshakes: N full mutual-TLS handshakes at concurrency C, one
//!    per holder certificate, no HTTP request ([`crate::mtls::bare_handshake`]);
//! 3. renewals: N `POST /v1/renew` at concurrency C, each holder once, each
//!    on a new connection (no keep-alive, no session resumption), with the
//!    server's CPU time and its stage timings from `/metrics`.
//!
//! Invariants checked, or the run fails: every timed and warm-up job made
//! exactly one full handshake with a client certificate (see
//! [`crate::mtls::Counters`]); every renewal returned a new, distinct serial;
//! the bare handshakes all negotiated the same parameters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certmint::wire::{CertificateBundle, RenewRequest};
use reqwest::blocking::Client;
use reqwest::header::{CONNECTION, CONTENT_TYPE};
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use serde::Serialize;

use crate::load::{self, Job};
use crate::mtls::{self, Counters, Handshakes};
use crate::procstat::CpuClock;
use crate::{metrics, BoxError, CommonArgs, HttpReport};

/// Arguments of `certmint-bench renew`.
#[derive(clap::Args)]
pub struct RenewArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Threads enrolling the holders during setup (untimed); default:
    /// --concurrency, at most 8.
    #[arg(long)]
    setup_threads: Option<usize>,
}

/// One enrolled holder, ready to handshake and to renew.
struct Holder {
    /// Leaf + issuing chain and the key, as the agent presents them.
    key: Arc<CertifiedKey>,
    /// Serial of the certificate it presents.
    serial: String,
    /// `POST /v1/renew` body: a CSR for a fresh key with the same name.
    renewal_body: Vec<u8>,
}

#[derive(Debug, Serialize)]
struct Report {
    unix_time: u64,
    holders: usize,
    concurrency: usize,
    warmup_per_worker: usize,
    connections: &'static str,
    /// Distinct `version suite group` strings of the bare handshakes.
    negotiated: Vec<String>,
    handshake: HttpReport,
    handshake_counts: Handshakes,
    renewal: HttpReport,
    renewal_counts: Handshakes,
    renewal_stages: Vec<metrics::Stage>,
    /// SQLite: write transactions per durable COMMIT during the renewals.
    renewal_writes_per_commit: Option<f64>,
    /// Renewals per second over bare handshakes per second.
    renewal_over_handshake_rate: Option<f64>,
    /// Server CPU per renewal over server CPU per bare handshake.
    renewal_over_handshake_server_cpu: Option<f64>,
}

/// Runs every phase; `Ok(false)` when some timed job failed.
pub fn run(args: &RenewArgs) -> Result<bool, BoxError> {
    // reqwest is built without a default crypto provider; the clients here
    // all bring their own, but the admin client's builder may still look
    // for a process-wide one. An error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let common = &args.common;
    common.validate()?;
    let base = common.base_url();
    let admin_token = common.admin_token()?;
    let url = reqwest::Url::parse(&base).map_err(|e| format!("--server {base}: {e}"))?;
    let address = *url
        .socket_addrs(|| None)
        .map_err(|e| format!("--server {base}: {e}"))?
        .first()
        .ok_or_else(|| format!("--server {base}: no address"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("--server {base}: no host"))?;
    let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| format!("--server {base}: {e}"))?;
    let roots = mtls::roots(&common.root)?;
    let setup_threads = args
        .setup_threads
        .unwrap_or(common.concurrency.min(8))
        .max(1);
    let admin = Client::builder()
        .use_preconfigured_tls(crate::tls_config(&common.root)?)
        .pool_max_idle_per_host(setup_threads)
        .timeout(Duration::from_secs(120))
        .build()?;
    let cpu = CpuClock::new();

    // Setup, untimed. Holders 0..N are timed, N.. are the warm-up ones.
    let warm_count = common.warmup * common.concurrency;
    let total = common.requests + warm_count;
    let policy = crate::create_policy(&admin, &base, &admin_token, true)?;
    let tokens = crate::mint_tokens(&admin, &base, &admin_token, &policy, total)?;
    eprintln!(
        "setup: enrolling {total} holders with {setup_threads} thread(s) (P-256 keys; renewal CSRs for fresh keys)…"
    );
    let enroll_url = format!("{base}/v1/enroll");
    let mut holders = parallel(total, setup_threads, |i| {
        enroll_holder(&admin, &enroll_url, &tokens, i)
    })?;
    let warm_holders = holders.split_off(common.requests);
    let holder = |job: Job| -> Result<&Holder, String> {
        match job {
            Job::Warmup(i) => warm_holders.get(i),
            Job::Timed(i) => holders.get(i),
        }
        .ok_or_else(|| "job index out of range".to_owned())
    };

    // Bare handshakes.
    eprintln!(
        "bare mTLS handshakes: {} at concurrency {}…",
        common.requests, common.concurrency
    );
    let counters = Arc::new(Counters::default());
    let (handshake, outcome) = crate::measure(&cpu, common.server_pid, |on_start| {
        load::drive(&load::Engine {
            jobs: common.requests,
            warmup_per_worker: common.warmup,
            concurrency: common.concurrency,
            worker: &|| {
                let (config, slot) = mtls::worker_config(&roots, &counters)?;
                Ok((Arc::new(config), slot))
            },
            job: &|(config, slot), job| {
                slot.set(holder(job)?.key.clone());
                mtls::bare_handshake(config, address, &server_name).map(Some)
            },
            on_start,
        })
    })?;
    let handshake_counts = counters.snapshot();
    crate::report_failures("handshake", outcome.failures, &outcome.failure_samples);
    let mut all_ok = outcome.failures == 0;
    if all_ok {
        handshake_counts.expect_one_each(common.requests + warm_count)?;
    }
    let mut negotiated = outcome.ids;
    negotiated.sort_unstable();
    negotiated.dedup();
    if negotiated.len() > 1 {
        return Err(format!("handshakes negotiated different parameters: {negotiated:?}").into());
    }

    // Renewals.
    eprintln!(
        "renewals: {} at concurrency {}, one new connection each…",
        common.requests, common.concurrency
    );
    let renew_url = format!("{base}/v1/renew");
    let counters = Arc::new(Counters::default());
    let metrics_before = metrics::scrape(&admin, &base)?;
    let (renewal, outcome) = crate::measure(&cpu, common.server_pid, |on_start| {
        load::drive(&load::Engine {
            jobs: common.requests,
            warmup_per_worker: common.warmup,
            concurrency: common.concurrency,
            worker: &|| {
                let (config, slot) = mtls::worker_config(&roots, &counters)?;
                // No idle connections kept: each renewal dials anew.
                let client = Client::builder()
                    .use_preconfigured_tls(config)
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(120))
                    .build()?;
                Ok((client, slot))
            },
            job: &|(client, slot), job| {
                let holder = holder(job)?;
                slot.set(holder.key.clone());
                renew_once(client, &renew_url, holder).map(Some)
            },
            on_start,
        })
    })?;
    let metrics_after = metrics::scrape(&admin, &base)?;
    let renewal_counts = counters.snapshot();
    crate::report_failures("renewal", outcome.failures, &outcome.failure_samples);
    all_ok &= outcome.failures == 0;
    if outcome.failures == 0 {
        renewal_counts.expect_one_each(common.requests + warm_count)?;
    }
    let mut serials = outcome.ids;
    serials.sort_unstable();
    serials.dedup();
    if serials.len() != renewal.result.completed {
        return Err(format!(
            "{} renewals returned only {} distinct serials",
            renewal.result.completed,
            serials.len()
        )
        .into());
    }
    let renewal_stages = metrics::stages(
        &metrics_before,
        &metrics_after,
        renewal.result.completed + warm_count,
    );
    let renewal_writes_per_commit = metrics::writes_per_commit(&metrics_before, &metrics_after);

    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let report = Report {
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        holders: common.requests,
        concurrency: common.concurrency,
        warmup_per_worker: common.warmup,
        connections: "a new TCP connection and full TLS handshake (client certificate, no session resumption) per renewal and per bare handshake",
        negotiated,
        renewal_over_handshake_rate: ratio(
            renewal.result.per_second,
            handshake.result.per_second,
        ),
        renewal_over_handshake_server_cpu: renewal
            .server_cpu_ms_per_request
            .zip(handshake.server_cpu_ms_per_request)
            .and_then(|(r, h)| ratio(r, h)),
        handshake,
        handshake_counts,
        renewal,
        renewal_counts,
        renewal_stages,
        renewal_writes_per_commit,
    };
    if common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(all_ok)
}

/// Enrolls holder `i` and prepares its renewal.
fn enroll_holder(
    client: &Client,
    enroll_url: &str,
    tokens: &[String],
    i: usize,
) -> Result<Holder, BoxError> {
    let name = format!("h{i}.bench.internal");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::new(vec![name.clone()])?
        .serialize_request(&key)?
        .pem()?;
    let token = tokens
        .get(i / crate::MAX_TOKEN_USES)
        .ok_or("fewer tokens than holders")?;
    let body = serde_json::to_vec(&certmint::wire::EnrollRequest {
        csr,
        token: token.clone(),
        ttl: None,
    })?;
    let response = client
        .post(enroll_url)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()?;
    let status = response.status();
    let text = response.text()?;
    if status.as_u16() != 201 {
        return Err(format!("enrolling {name}: HTTP {status}: {text}").into());
    }
    let bundle: CertificateBundle = serde_json::from_str(&text)?;
    let chain = format!("{}{}", bundle.certificate_pem, bundle.chain_pem);
    let renewal_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let renewal_csr = rcgen::CertificateParams::new(vec![name])?
        .serialize_request(&renewal_key)?
        .pem()?;
    Ok(Holder {
        key: mtls::certified_key(&chain, key.serialize_der())?,
        serial: bundle.serial,
        renewal_body: serde_json::to_vec(&RenewRequest {
            csr: renewal_csr,
            ttl: None,
        })?,
    })
}

/// `POST /v1/renew` as `holder` on a new connection; returns the new serial.
fn renew_once(client: &Client, url: &str, holder: &Holder) -> Result<String, String> {
    let response = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        // Besides pool_max_idle_per_host(0): neither side keeps the
        // connection, exactly as an agent that renews once a day.
        .header(CONNECTION, "close")
        .body(holder.renewal_body.clone())
        .send()
        .map_err(|error| format!("request failed: {error}"))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .map_err(|error| format!("reading the response failed: {error}"))?;
    if status != 201 {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    let bundle: CertificateBundle =
        serde_json::from_slice(&body).map_err(|e| format!("bad 201 body: {e}"))?;
    if !bundle
        .certificate_pem
        .starts_with("-----BEGIN CERTIFICATE-----")
    {
        return Err("201 without a PEM certificate".into());
    }
    if bundle.serial == holder.serial {
        return Err(format!(
            "renewal returned the presented serial {}",
            bundle.serial
        ));
    }
    Ok(bundle.serial)
}

/// `f(0..count)` on `threads` threads, results in index order; the first
/// error stops the others and is returned.
fn parallel<T: Send>(
    count: usize,
    threads: usize,
    f: impl Fn(usize) -> Result<T, BoxError> + Sync,
) -> Result<Vec<T>, BoxError> {
    let next = AtomicUsize::new(0);
    let first_error = Mutex::new(None::<String>);
    let mut results: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        match f(i) {
                            Ok(value) => done.push((i, value)),
                            Err(error) => {
                                next.store(count, Ordering::Relaxed);
                                first_error
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .get_or_insert(error.to_string());
                                break;
                            }
                        }
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    if let Some(error) = first_error
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        return Err(error.into());
    }
    if results.len() != count {
        return Err(format!("setup: {} of {count} items done", results.len()).into());
    }
    results.sort_unstable_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, value)| value).collect())
}

fn print_table(report: &Report) {
    println!(
        "certmint-bench renew: {} holders, concurrency {}, {} warm-up job(s) per worker",
        report.holders, report.concurrency, report.warmup_per_worker
    );
    println!("connections: {}", report.connections);
    println!("negotiated: {}", report.negotiated.join("; "));
    println!();
    crate::print_http_rows(
        "ops/s",
        &[
            ("bare mTLS handshake", &report.handshake),
            ("POST /v1/renew (new conn.)", &report.renewal),
        ],
    );
    println!();
    let counts = |name: &str, c: &Handshakes| {
        println!(
            "{name}: {} full handshakes ({} TLS 1.3, {} TLS 1.2), {} client certificates sent (warm-up included)",
            c.full_handshakes, c.tls13, c.tls12, c.client_certificates
        );
    };
    counts("bare", &report.handshake_counts);
    counts("renewal", &report.renewal_counts);
    if let Some(ratio) = report.renewal_over_handshake_rate {
        println!("renewal / bare handshake throughput: {ratio:.2}");
    }
    if let Some(ratio) = report.renewal_over_handshake_server_cpu {
        println!("server CPU per renewal / per bare handshake: {ratio:.2}");
    }
    if !report.renewal_stages.is_empty() {
        println!();
        println!("certmint server stages during the renewals (from /metrics, warm-up included):");
        println!(
            "  {:<78} {:>6} {:>8} {:>10}",
            "stage", "count", "mean ms", "ms/renewal"
        );
        for stage in &report.renewal_stages {
            println!(
                "  {:<78} {:>6} {:>8.3} {:>10.3}",
                stage.stage, stage.count, stage.mean_ms, stage.per_enrollment_ms
            );
        }
        metrics::print_writes_per_commit(report.renewal_writes_per_commit);
    }
}
