//! `certmint-bench crl`: what certificate revocation lists cost.
//!
//! - `crl sign`: enrolls N certificates of one shard (the server's own
//!   enrollment path, with many tokens in parallel), revokes them all over
//!   the admin API, and times the CRL that lists them: from the last
//!   revocation's commit (its 200) to the served CRL listing all N, then
//!   single revocations into that full shard (each after a random pause, so
//!   they land anywhere in the publisher's poll interval). Beside it, the
//!   server's encoder and signer on the same N entries in this process:
//!   encoding alone, the token's signature, and the whole `crl::sign`
//!   (encode, sign, verify), on the token when one is given and with a
//!   software P-256 key.
//! - `crl latency`: revocations arrive at a fixed rate (open loop, keep-alive
//!   clients); watchers poll every CRL the revoked certificates name with
//!   conditional GETs and note when each serial first appears; reports the
//!   revocation-to-served-CRL latency p50/p99/max.
//! - `crl sizes`: no server. DER sizes of the CRLs of a population of
//!   unexpired certificates of which some are revoked, built with the
//!   server's encoder (`certmint_server::revocation::crl`) and its sharding
//!   rule, signed with a software P-256 key, for several lifetimes and
//!   shardings; what a relying party downloads.
//!
//! Latencies are taken from the client's answer (the revocation's commit
//! precedes it) to the watcher's first response that lists the serial, so
//! they include up to one watcher poll interval; the table says which.
//! Nothing here is a test: it prints numbers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use certmint::wire::{CertificateBundle, KeyType, RevocationReason};
use certmint_server::hsm::{CaSigner, Hsm, HsmConfig, HsmError};
use certmint_server::revocation::crl::{self, CrlEntry, CrlScope, CrlTemplate};
use certmint_server::revocation::sharding;
use clap::Subcommand;
use der::asn1::{BitString, ObjectIdentifier};
use der::{Any, Decode as _, Encode as _};
use reqwest::blocking::Client;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::crl::CrlDistributionPoints;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::name::Name;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::stats::{self, PhaseResult};
use crate::{create_policy, enroll_bodies, load, make_csrs, mint_tokens, tls_config, BoxError};

/// id-ecPublicKey, secp256r1, ecdsa-with-SHA256.
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// `certmint-bench crl`.
#[derive(clap::Args)]
pub struct CrlArgs {
    #[command(subcommand)]
    command: CrlCommand,
}

#[derive(Subcommand)]
enum CrlCommand {
    /// Revoke N certificates of one shard (run the server with
    /// `crl.shards = 1`) and time the CRL that lists them all.
    Sign(SignArgs),
    /// Revocation-to-served-CRL latency while revocations arrive at a
    /// fixed rate.
    Latency(LatencyArgs),
    /// DER sizes of the CRLs of a large population (no server).
    Sizes(SizesArgs),
}

/// The server and the load shape.
#[derive(clap::Args)]
struct ServerArgs {
    /// certmint base URL, e.g. https://127.0.0.1:18443.
    #[arg(long)]
    server: String,
    /// The CA root certificate (PEM) the server's TLS chain ends in.
    #[arg(long)]
    root: PathBuf,
    /// File holding an admin JWT (`certmint-server admin-token`).
    #[arg(long)]
    admin_token_file: PathBuf,
    /// Concurrent workers for enrollment and bulk revocation.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// The server's log file, to count its "CRL signed" lines.
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SignArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Certificates revoked into the shard.
    #[arg(long, default_value_t = 10_000)]
    entries: usize,
    /// Single revocations timed into the full shard afterwards.
    #[arg(long, default_value_t = 10)]
    probes: usize,
    /// Repetitions of the in-process encode/sign timings.
    #[arg(long, default_value_t = 20)]
    repeat: usize,
    /// PKCS#11 module of the server's token, to time the signature on it
    /// (user PIN from $CERTMINT_HSM_PIN; SoftHSM2 also needs $SOFTHSM2_CONF).
    #[arg(long)]
    pkcs11_module: Option<PathBuf>,
    /// Token label.
    #[arg(long, default_value = "certmint")]
    token_label: String,
    /// Label of the issuing private key.
    #[arg(long, default_value = "certmint-issuing")]
    key_label: String,
    /// Name of the token in the report.
    #[arg(long, default_value = "token")]
    token_name: String,
}

#[derive(clap::Args)]
struct LatencyArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Revocations per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Seconds of revocations.
    #[arg(long, default_value_t = 30)]
    seconds: u32,
    /// Threads sending revocations (each its own keep-alive connection).
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Time between two conditional GETs of a watched CRL, milliseconds.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
}

#[derive(clap::Args)]
struct SizesArgs {
    /// Unexpired certificates.
    #[arg(long, default_value_t = 1_000_000)]
    certificates: usize,
    /// Of which revoked.
    #[arg(long, default_value_t = 10_000)]
    revoked: usize,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Runs the chosen `crl` mode; `Ok(false)` when some request failed.
pub fn run(args: &CrlArgs) -> Result<bool, BoxError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match &args.command {
        CrlCommand::Sign(args) => sign(args),
        CrlCommand::Latency(args) => latency(args),
        CrlCommand::Sizes(args) => sizes(args),
    }
}

// ---- the server side --------------------------------------------------------

/// A server, its admin token and a client factory.
struct Bench {
    base: String,
    admin_token: String,
    tls: Arc<rustls::ClientConfig>,
    admin: Client,
    concurrency: usize,
}

impl Bench {
    fn new(args: &ServerArgs) -> Result<Bench, BoxError> {
        if args.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        let tls = Arc::new(tls_config(&args.root)?);
        let admin_token = std::fs::read_to_string(&args.admin_token_file)
            .map_err(|e| format!("{}: {e}", args.admin_token_file.display()))?
            .trim()
            .to_owned();
        let bench = Bench {
            base: args.server.trim_end_matches('/').to_owned(),
            admin_token,
            admin: Client::new(),
            tls,
            concurrency: args.concurrency,
        };
        Ok(Bench {
            admin: bench.client()?,
            ..bench
        })
    }

    /// A client with one keep-alive connection to the server (plain HTTP
    /// for the CRL listener works with it too).
    fn client(&self) -> Result<Client, BoxError> {
        Ok(Client::builder()
            .use_preconfigured_tls((*self.tls).clone())
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(120))
            .build()?)
    }
}

/// One enrolled certificate: its serial and the CRL its distribution
/// point names.
#[derive(Clone, Debug)]
struct Enrolled {
    serial: String,
    crl_url: String,
}

/// Enrolls `count` certificates through `POST /v1/enroll` at the bench's
/// concurrency; returns them and the enrollment rate.
fn enroll(bench: &Bench, count: usize) -> Result<(Vec<Enrolled>, f64), BoxError> {
    let policy = create_policy(&bench.admin, &bench.base, &bench.admin_token, false)?;
    let tokens = mint_tokens(
        &bench.admin,
        &bench.base,
        &bench.admin_token,
        &policy,
        count,
    )?;
    eprintln!("generating {count} P-256 keys and CSRs…");
    let csrs = make_csrs("crl", count)?;
    let bodies = enroll_bodies(&csrs, &tokens)?;
    eprintln!(
        "enrolling {count} certificates at concurrency {}…",
        bench.concurrency
    );
    let url = format!("{}/v1/enroll", bench.base);
    let outcome = load::run(&load::Phase {
        url: &url,
        client: &|| bench.client(),
        bodies: &bodies,
        warmup: &[],
        concurrency: bench.concurrency,
        check: check_enrollment,
        on_start: &|| Ok(()),
    })?;
    if outcome.failures > 0 {
        return Err(format!(
            "{} enrollment(s) failed, e.g. {:?}",
            outcome.failures, outcome.failure_samples
        )
        .into());
    }
    let enrolled = outcome
        .ids
        .iter()
        .map(|id| {
            let (serial, crl_url) = id.split_once(' ').ok_or("serial and URL")?;
            Ok(Enrolled {
                serial: serial.to_owned(),
                crl_url: crl_url.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    eprintln!("  {:.0} enrollments/s", outcome.result.per_second);
    Ok((enrolled, outcome.result.per_second))
}

/// A 201 with a certificate: `"<serial> <CRL distribution point>"`.
fn check_enrollment(status: u16, body: &[u8]) -> Result<Option<String>, String> {
    if status != 201 {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    let bundle: CertificateBundle =
        serde_json::from_slice(body).map_err(|e| format!("bad 201 body: {e}"))?;
    let url = distribution_point(&bundle.certificate_pem)?;
    Ok(Some(format!("{} {url}", bundle.serial)))
}

/// The one CRL distribution point URL of a PEM certificate.
fn distribution_point(certificate_pem: &str) -> Result<String, String> {
    let (_, der) = der::pem::decode_vec(certificate_pem.as_bytes())
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let certificate =
        x509_cert::Certificate::from_der(&der).map_err(|e| format!("certificate DER: {e}"))?;
    let (_, points) = certificate
        .tbs_certificate()
        .get_extension::<CrlDistributionPoints>()
        .map_err(|e| format!("extensions: {e}"))?
        .ok_or("no CRL Distribution Points extension")?;
    points
        .0
        .iter()
        .filter_map(|point| match &point.distribution_point {
            Some(DistributionPointName::FullName(names)) => Some(names),
            _ => None,
        })
        .flatten()
        .find_map(|name| match name {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
            _ => None,
        })
        .ok_or_else(|| "no URI distribution point".to_owned())
}

/// Revokes every serial over the admin API at the bench's concurrency
/// (keep-alive connections); returns the phase and when the last answer
/// (so the last commit) was in.
fn revoke_all(bench: &Bench, serials: &[String]) -> Result<(PhaseResult, Instant), BoxError> {
    let outcome = load::drive(&load::Engine {
        jobs: serials.len(),
        warmup_per_worker: 0,
        concurrency: bench.concurrency,
        worker: &|| bench.client(),
        job: &|client: &mut Client, job| {
            let load::Job::Timed(index) = job else {
                return Err("no warm-up here".into());
            };
            let serial = serials.get(index).ok_or("job index out of range")?;
            revoke(client, bench, serial).map(|_| None)
        },
        on_start: &|| Ok(()),
    })?;
    let answered = Instant::now();
    if outcome.failures > 0 {
        return Err(format!(
            "{} revocation(s) failed, e.g. {:?}",
            outcome.failures, outcome.failure_samples
        )
        .into());
    }
    Ok((outcome.result, answered))
}

/// `POST /v1/admin/certificates/{serial}/revoke` (reason unspecified);
/// returns when its 200 was in.
fn revoke(client: &Client, bench: &Bench, serial: &str) -> Result<Instant, String> {
    let response = client
        .post(format!(
            "{}/v1/admin/certificates/{serial}/revoke",
            bench.base
        ))
        .bearer_auth(&bench.admin_token)
        .json(&json!({}))
        .send()
        .map_err(|e| format!("revoke {serial}: {e}"))?;
    let answered = Instant::now();
    let status = response.status().as_u16();
    if status != 200 {
        let text = response.text().unwrap_or_default();
        return Err(format!("revoke {serial}: HTTP {status}: {text}"));
    }
    Ok(answered)
}

/// One CRL URL, fetched with `If-None-Match`.
struct Watched {
    client: Client,
    url: String,
    etag: Option<String>,
    full_fetches: usize,
    not_modified: usize,
    bytes: usize,
}

impl Watched {
    fn new(client: Client, url: &str) -> Watched {
        Watched {
            client,
            url: url.to_owned(),
            etag: None,
            full_fetches: 0,
            not_modified: 0,
            bytes: 0,
        }
    }

    /// The CRL's DER when it changed since the last fetch.
    fn fetch(&mut self) -> Result<Option<Vec<u8>>, BoxError> {
        let mut request = self.client.get(&self.url);
        if let Some(etag) = &self.etag {
            request = request.header("if-none-match", etag);
        }
        let response = request.send()?;
        match response.status().as_u16() {
            304 => {
                self.not_modified += 1;
                Ok(None)
            }
            200 => {
                self.etag = response
                    .headers()
                    .get("etag")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                let der = response.bytes()?.to_vec();
                self.full_fetches += 1;
                self.bytes += der.len();
                Ok(Some(der))
            }
            status => Err(format!("GET {}: HTTP {status}", self.url).into()),
        }
    }
}

/// Normalised hex serials (lower case, no leading zeros) a DER CRL lists.
fn listed_serials(der: &[u8]) -> Result<Vec<String>, BoxError> {
    let crl: CertificateList = CertificateList::from_der(der)?;
    Ok(crl
        .tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .map(|entry| normalised(&hex::encode(entry.serial_number.as_bytes())))
        .collect())
}

fn normalised(serial: &str) -> String {
    serial.trim_start_matches('0').to_ascii_lowercase()
}

/// The server's publisher looks at the database once a second
/// (`CRL_POLL_INTERVAL` in the server's `commands.rs`): it sleeps that
/// long after each look.
const PUBLISHER_POLL: Duration = Duration::from_secs(1);

/// What the server's log says about the CRLs it signed during a phase.
#[derive(Debug, Clone, Serialize)]
struct Logged {
    /// "CRL signed" lines.
    signatures: usize,
    /// The most entries one of them listed.
    most_entries: u64,
    /// The publisher's own time per look that signed, from the gaps between
    /// consecutive looks' "CRL signed" lines minus [`PUBLISHER_POLL`] (the
    /// line comes after the CRL is recorded, so a gap is one sleep plus one
    /// look); only gaps of back-to-back signing looks count.
    look: Option<Spread>,
}

/// "CRL signed" lines of the server's (text) log after byte `offset`.
fn signatures_logged(log: Option<&PathBuf>, offset: u64) -> Option<Logged> {
    let text = std::fs::read(log?).ok()?;
    let start = usize::try_from(offset).ok()?.min(text.len());
    let text = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("CRL signed")).collect();
    let field = |line: &str, name: &str| -> Option<u64> {
        let after = line.split(name).nth(1)?;
        let digits: String = after
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let most_entries = lines
        .iter()
        .filter_map(|line| field(line, "crl.entries"))
        .max()
        .unwrap_or(0);
    let stamps: Vec<OffsetDateTime> = lines
        .iter()
        .filter_map(|line| {
            let stamp = line.split_whitespace().next()?;
            OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()
        })
        .collect();
    let looks: Vec<Duration> = stamps
        .windows(2)
        .filter_map(|pair| {
            let gap = Duration::try_from(pair[1] - pair[0]).ok()?;
            // Two lines of one look are microseconds apart; a look that
            // signed nothing in between makes a gap of two polls.
            let look = gap.checked_sub(PUBLISHER_POLL)?;
            (look < PUBLISHER_POLL / 2).then_some(look)
        })
        .collect();
    Some(Logged {
        signatures: lines.len(),
        most_entries,
        look: (!looks.is_empty()).then(|| Spread::of(looks)),
    })
}

fn print_logged(logged: Option<&Logged>) {
    let Some(logged) = logged else {
        return;
    };
    println!(
        "  server log: {} \"CRL signed\" lines, the largest with {} entries",
        logged.signatures, logged.most_entries
    );
    if let Some(look) = &logged.look {
        println!(
            "  publisher's look that signed, from its log ({} back-to-back looks): p50 {:.0} ms, max {:.0} ms",
            look.count, look.p50_ms, look.max_ms
        );
    }
}

fn log_len(log: Option<&PathBuf>) -> u64 {
    log.and_then(|path| std::fs::metadata(path).ok())
        .map_or(0, |meta| meta.len())
}

/// A random pause below `max`.
fn random_pause(max: Duration) -> Result<Duration, BoxError> {
    let mut bytes = [0u8; 4];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness")?;
    let fraction = f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX);
    Ok(max.mul_f64(fraction))
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Percentile summary of durations, milliseconds.
#[derive(Debug, Clone, Serialize)]
struct Spread {
    count: usize,
    min_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Spread {
    fn of(mut samples: Vec<Duration>) -> Spread {
        samples.sort_unstable();
        Spread {
            count: samples.len(),
            min_ms: millis(samples.first().copied().unwrap_or_default()),
            p50_ms: millis(stats::percentile(&samples, 50.0)),
            p99_ms: millis(stats::percentile(&samples, 99.0)),
            max_ms: millis(samples.last().copied().unwrap_or_default()),
        }
    }
}

// ---- crl sign ---------------------------------------------------------------

#[derive(Debug, Serialize)]
struct SignReport {
    entries: usize,
    enrollments_per_second: f64,
    revocations_per_second: f64,
    revocation_p50_ms: f64,
    revocation_p99_ms: f64,
    /// Last revocation's 200 → the served CRL lists all entries.
    last_commit_to_full_crl_ms: f64,
    /// DER size of that CRL.
    full_crl_bytes: usize,
    /// Single revocations into the full shard, each after a random pause.
    probe_latency: Spread,
    /// "CRL signed" lines during the bulk revocation and the probes, and
    /// the most entries one listed.
    signatures_logged: Option<Logged>,
    /// In this process, the server's encoder on the same entries.
    in_process: Vec<InProcess>,
}

/// The server's encoder and a signer on the full shard's entries.
#[derive(Debug, Serialize)]
struct InProcess {
    signer: String,
    /// `crl::prepare`: the TBSCertList DER.
    encode: Spread,
    /// The signer's signature over it.
    sign: Spread,
    /// `crl::sign`: encode, sign, assemble, verify.
    whole: Spread,
    crl_bytes: usize,
}

fn sign(args: &SignArgs) -> Result<bool, BoxError> {
    let bench = Bench::new(&args.server)?;
    let log = args.server.server_log.as_ref();
    let (enrolled, enroll_rate) = enroll(&bench, args.entries + args.probes)?;
    let urls: BTreeSet<&str> = enrolled.iter().map(|e| e.crl_url.as_str()).collect();
    let [url] = urls.iter().copied().collect::<Vec<_>>()[..] else {
        return Err(format!(
            "the certificates fall into {} shards ({urls:?}); run the server with crl.shards = 1",
            urls.len()
        )
        .into());
    };
    let (bulk, probes) = enrolled.split_at(args.entries);
    let bulk_serials: Vec<String> = bulk.iter().map(|e| e.serial.clone()).collect();
    let log_offset = log_len(log);
    eprintln!(
        "revoking {} certificates at concurrency {}…",
        args.entries, bench.concurrency
    );
    let (revocations, last_commit) = revoke_all(&bench, &bulk_serials)?;
    let mut watched = Watched::new(bench.client()?, url);
    let wanted: BTreeSet<String> = bulk_serials.iter().map(|s| normalised(s)).collect();
    let (full_at, full_der) = loop {
        if let Some(der) = watched.fetch()? {
            let listed: BTreeSet<String> = listed_serials(&der)?.into_iter().collect();
            if wanted.is_subset(&listed) {
                break (Instant::now(), der);
            }
        }
        if last_commit.elapsed() > Duration::from_secs(120) {
            return Err("the CRL did not list every revocation within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let last_commit_to_full = full_at.duration_since(last_commit);
    eprintln!(
        "  {:.0} revocations/s; the CRL listed all {} {:.0} ms after the last one",
        revocations.per_second,
        args.entries,
        millis(last_commit_to_full)
    );

    eprintln!(
        "timing {} single revocations into the full shard…",
        args.probes
    );
    let client = bench.client()?;
    let mut probe_latencies = Vec::new();
    for probe in probes {
        std::thread::sleep(random_pause(Duration::from_secs(1))?);
        let answered = revoke(&client, &bench, &probe.serial)?;
        let serial = normalised(&probe.serial);
        loop {
            if let Some(der) = watched.fetch()? {
                if listed_serials(&der)?.contains(&serial) {
                    probe_latencies.push(answered.elapsed());
                    break;
                }
            }
            if answered.elapsed() > Duration::from_secs(30) {
                return Err(format!("{serial} not listed within 30 s").into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let signatures = signatures_logged(log, log_offset);

    let chain = issuer_of(&bench)?;
    let entries: Vec<CrlEntry> = bulk_serials
        .iter()
        .map(|serial| {
            Ok(CrlEntry {
                serial: hex::decode(serial)?,
                revoked_at: OffsetDateTime::now_utc(),
                reason: RevocationReason::Unspecified,
                invalidity_date: None,
            })
        })
        .collect::<Result<_, BoxError>>()?;
    let template = CrlTemplate {
        issuer: chain.0,
        issuer_key_identifier: chain.1,
        number: 1,
        this_update: OffsetDateTime::now_utc(),
        next_update: OffsetDateTime::now_utc() + time::Duration::hours(24),
        distribution_point: Some(url.to_owned()),
        scope: CrlScope::UserCerts,
        entries,
    };
    let mut in_process = Vec::new();
    if let Some(module) = &args.pkcs11_module {
        let pin = std::env::var("CERTMINT_HSM_PIN")
            .map_err(|_| "--pkcs11-module needs the user PIN in $CERTMINT_HSM_PIN")?;
        let hsm = Hsm::open(&HsmConfig {
            module_path: module.clone(),
            token_label: args.token_label.clone(),
            pin: pin.into(),
            session_pool_size: 1,
        })?;
        let signer = hsm.signer(&args.key_label)?;
        in_process.push(time_encoder(
            &format!("{} ({})", args.token_name, args.key_label),
            &template,
            signer.as_ref(),
            args.repeat,
        )?);
    }
    in_process.push(time_encoder(
        "software P-256 (ring)",
        &template,
        &SoftwareP256::generate()?,
        args.repeat,
    )?);

    let report = SignReport {
        entries: args.entries,
        enrollments_per_second: enroll_rate,
        revocations_per_second: revocations.per_second,
        revocation_p50_ms: revocations.p50_ms,
        revocation_p99_ms: revocations.p99_ms,
        last_commit_to_full_crl_ms: millis(last_commit_to_full),
        full_crl_bytes: full_der.len(),
        probe_latency: Spread::of(probe_latencies),
        signatures_logged: signatures,
        in_process,
    };
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_sign(&report);
    }
    Ok(true)
}

/// The issuing CA's subject and key identifier, from `GET /v1/ca/chain.pem`.
fn issuer_of(bench: &Bench) -> Result<(Name, Vec<u8>), BoxError> {
    let pem = bench
        .admin
        .get(format!("{}/v1/ca/chain.pem", bench.base))
        .send()?
        .text()?;
    let end = "-----END CERTIFICATE-----";
    let first = pem.split_inclusive(end).next().ok_or("an empty chain")?;
    let (_, der) = der::pem::decode_vec(first.trim_start().as_bytes())?;
    let certificate = x509_cert::Certificate::from_der(&der)?;
    let key_id = crl::issuer_key_identifier(&certificate)?;
    Ok((certificate.tbs_certificate().subject().clone(), key_id))
}

/// `repeat` rounds of the encoder alone, the signature alone and the
/// whole `crl::sign`.
fn time_encoder(
    name: &str,
    template: &CrlTemplate,
    signer: &dyn CaSigner,
    repeat: usize,
) -> Result<InProcess, BoxError> {
    eprintln!(
        "timing the encoder and {name} on {} entries…",
        template.entries.len()
    );
    let (mut encode, mut sign, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    let mut crl_bytes = 0;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        let unsigned = crl::prepare(template, signer)?;
        encode.push(started.elapsed());
        let started = Instant::now();
        signer.sign(unsigned.tbs_der())?;
        sign.push(started.elapsed());
        let started = Instant::now();
        crl_bytes = crl::sign(template, signer)?.len();
        whole.push(started.elapsed());
    }
    Ok(InProcess {
        signer: name.to_owned(),
        encode: Spread::of(encode),
        sign: Spread::of(sign),
        whole: Spread::of(whole),
        crl_bytes,
    })
}

fn print_sign(report: &SignReport) {
    println!(
        "certmint-bench crl sign: {} revoked certificates in one shard",
        report.entries
    );
    println!(
        "  set-up: {:.0} enrollments/s; {:.0} revocations/s (p50 {:.2} ms, p99 {:.2} ms)",
        report.enrollments_per_second,
        report.revocations_per_second,
        report.revocation_p50_ms,
        report.revocation_p99_ms
    );
    println!(
        "  last revocation's 200 -> served CRL lists all {}: {:.0} ms ({} bytes DER)",
        report.entries, report.last_commit_to_full_crl_ms, report.full_crl_bytes
    );
    let p = &report.probe_latency;
    println!(
        "  one more revocation -> served CRL lists it ({} probes, random arrival in the 1 s poll): min {:.0}, p50 {:.0}, max {:.0} ms",
        p.count, p.min_ms, p.p50_ms, p.max_ms
    );
    print_logged(report.signatures_logged.as_ref());
    println!();
    println!(
        "  {:<34} {:>12} {:>12} {:>12} {:>12}",
        "in this process, same entries", "encode ms", "sign ms", "crl::sign ms", "CRL bytes"
    );
    for row in &report.in_process {
        println!(
            "  {:<34} {:>12.2} {:>12.2} {:>12.2} {:>12}",
            row.signer, row.encode.p50_ms, row.sign.p50_ms, row.whole.p50_ms, row.crl_bytes
        );
    }
    println!("  (medians; crl::sign = encode + sign + assemble + verify)");
}

// ---- crl latency ------------------------------------------------------------

#[derive(Debug, Serialize)]
struct LatencyReport {
    rate: u32,
    seconds: u32,
    revocations: usize,
    achieved_per_second: f64,
    request: Spread,
    /// The revocation's 200 → a watcher's first CRL listing it.
    visible: Spread,
    poll_ms: u64,
    watched_crls: usize,
    full_fetches: usize,
    not_modified: usize,
    bytes_fetched: usize,
    signatures_logged: Option<Logged>,
}

fn latency(args: &LatencyArgs) -> Result<bool, BoxError> {
    let bench = Bench::new(&args.server)?;
    let log = args.server.server_log.as_ref();
    let count = usize::try_from(args.rate * args.seconds)?;
    if count == 0 || args.senders == 0 {
        return Err("--rate, --seconds and --senders must be at least 1".into());
    }
    let (enrolled, _) = enroll(&bench, count)?;
    let urls: BTreeSet<String> = enrolled.iter().map(|e| e.crl_url.clone()).collect();
    let interval = Duration::from_secs(1) / args.rate;
    let poll = Duration::from_millis(args.poll_ms);
    let answered: Vec<Mutex<Option<(Instant, Duration)>>> =
        (0..count).map(|_| Mutex::new(None)).collect();
    let first_seen: Mutex<HashMap<String, Instant>> = Mutex::new(HashMap::new());
    let wanted: BTreeSet<String> = enrolled.iter().map(|e| normalised(&e.serial)).collect();
    let stop = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let log_offset = log_len(log);
    eprintln!(
        "revoking {count} certificates at {}/s from {} senders, watching {} CRL(s) every {} ms…",
        args.rate,
        args.senders,
        urls.len(),
        args.poll_ms
    );
    let started = Instant::now();
    let watchers = std::thread::scope(|scope| -> Result<Vec<Watched>, BoxError> {
        let watchers: Vec<_> = urls
            .iter()
            .map(|url| {
                let (stop, first_seen, wanted) = (&stop, &first_seen, &wanted);
                let mut watched = Watched::new(bench.client()?, url);
                Ok(scope.spawn(move || -> Result<Watched, String> {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(der) = watched.fetch().map_err(|e| e.to_string())? {
                            let now = Instant::now();
                            let listed = listed_serials(&der).map_err(|e| e.to_string())?;
                            let mut seen =
                                first_seen.lock().unwrap_or_else(PoisonError::into_inner);
                            for serial in listed.into_iter().filter(|s| wanted.contains(s)) {
                                seen.entry(serial).or_insert(now);
                            }
                        }
                        std::thread::sleep(poll);
                    }
                    Ok(watched)
                }))
            })
            .collect::<Result<_, BoxError>>()?;
        let senders: Vec<_> = (0..args.senders)
            .map(|_| {
                let (next, answered, failures, enrolled) = (&next, &answered, &failures, &enrolled);
                let client = bench.client();
                let bench = &bench;
                scope.spawn(move || {
                    let client = match client {
                        Ok(client) => client,
                        Err(error) => {
                            lock(failures).push(error.to_string());
                            return;
                        }
                    };
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(certificate) = enrolled.get(index) else {
                            return;
                        };
                        let due = started + interval * u32::try_from(index).unwrap_or(u32::MAX);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let sent = Instant::now();
                        match revoke(&client, bench, &certificate.serial) {
                            Ok(at) => *lock(&answered[index]) = Some((at, at - sent)),
                            Err(error) => lock(failures).push(error),
                        }
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.join().map_err(|_| "a sender panicked")?;
        }
        let sent_for = started.elapsed();
        eprintln!(
            "  sent for {:.1} s; waiting for the CRLs…",
            sent_for.as_secs_f64()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while lock(&first_seen).len() < wanted.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        watchers
            .into_iter()
            .map(|watcher| {
                watcher
                    .join()
                    .map_err(|_| BoxError::from("a watcher panicked"))?
                    .map_err(BoxError::from)
            })
            .collect()
    })?;
    let failures = failures
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let seen = first_seen
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let mut visible = Vec::new();
    let mut requests = Vec::new();
    let mut last_answer = started;
    let mut missing = 0;
    for (certificate, answer) in enrolled.iter().zip(&answered) {
        let Some((at, took)) = *lock(answer) else {
            continue;
        };
        last_answer = last_answer.max(at);
        requests.push(took);
        match seen.get(&normalised(&certificate.serial)) {
            // A watcher may read the CRL before the sender has read its 200.
            Some(first) => visible.push(first.saturating_duration_since(at)),
            None => missing += 1,
        }
    }
    let report = LatencyReport {
        rate: args.rate,
        seconds: args.seconds,
        revocations: requests.len(),
        achieved_per_second: requests.len() as f64
            / last_answer.duration_since(started).as_secs_f64().max(1e-9),
        request: Spread::of(requests),
        visible: Spread::of(visible),
        poll_ms: args.poll_ms,
        watched_crls: watchers.len(),
        full_fetches: watchers.iter().map(|w| w.full_fetches).sum(),
        not_modified: watchers.iter().map(|w| w.not_modified).sum(),
        bytes_fetched: watchers.iter().map(|w| w.bytes).sum(),
        signatures_logged: signatures_logged(log, log_offset),
    };
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_latency(&report);
    }
    if !failures.is_empty() || missing > 0 {
        eprintln!(
            "{} revocation(s) failed (e.g. {:?}); {missing} never appeared in a CRL",
            failures.len(),
            failures.first()
        );
        return Ok(false);
    }
    Ok(true)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn print_latency(report: &LatencyReport) {
    println!(
        "certmint-bench crl latency: {} revocations at {}/s for {} s (achieved {:.1}/s)",
        report.revocations, report.rate, report.seconds, report.achieved_per_second
    );
    println!(
        "  {:<44} {:>8} {:>8} {:>8} {:>8}",
        "", "min ms", "p50 ms", "p99 ms", "max ms"
    );
    for (name, spread) in [
        ("POST …/revoke (keep-alive)", &report.request),
        (
            "revocation's 200 -> listed in a served CRL",
            &report.visible,
        ),
    ] {
        println!(
            "  {:<44} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            name, spread.min_ms, spread.p50_ms, spread.p99_ms, spread.max_ms
        );
    }
    println!(
        "  watchers: {} CRL(s), conditional GET every {} ms: {} full fetches ({} bytes), {} x 304",
        report.watched_crls,
        report.poll_ms,
        report.full_fetches,
        report.bytes_fetched,
        report.not_modified
    );
    print_logged(report.signatures_logged.as_ref());
}

// ---- crl sizes --------------------------------------------------------------

/// A software P-256 CA key: sizes need real signatures, not a token.
struct SoftwareP256 {
    key_pair: EcdsaKeyPair,
    subject_public_key_info: Vec<u8>,
    signature_algorithm: Vec<u8>,
}

impl SoftwareP256 {
    fn generate() -> Result<SoftwareP256, BoxError> {
        let random = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &random)
            .map_err(|_| "P-256 key generation failed")?;
        let key_pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &random)
                .map_err(|_| "P-256 key loading failed")?;
        let spki = SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: ID_EC_PUBLIC_KEY,
                parameters: Some(Any::encode_from(&SECP256R1)?),
            },
            subject_public_key: BitString::from_bytes(
                ring::signature::KeyPair::public_key(&key_pair).as_ref(),
            )?,
        };
        let algorithm = AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA256,
            parameters: None,
        };
        Ok(SoftwareP256 {
            key_pair,
            subject_public_key_info: spki.to_der()?,
            signature_algorithm: algorithm.to_der()?,
        })
    }
}

impl CaSigner for SoftwareP256 {
    fn key_type(&self) -> KeyType {
        KeyType::EcP256
    }
    fn label(&self) -> &str {
        "software-p256"
    }
    fn subject_public_key_info(&self) -> &[u8] {
        &self.subject_public_key_info
    }
    fn signature_algorithm(&self) -> &[u8] {
        &self.signature_algorithm
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let signature = self
            .key_pair
            .sign(&SystemRandom::new(), message)
            .map_err(|_| HsmError::KeyNotFound {
                label: "software-p256".into(),
            })?;
        Ok(signature.as_ref().to_vec())
    }
}

/// One population and sharding.
struct Scenario {
    name: &'static str,
    /// Certificate lifetime; certificates are issued evenly over it, so
    /// the unexpired ones' notAfter spread evenly over the next lifetime.
    lifetime_seconds: i64,
    shards: u32,
    width_seconds: i64,
}

const HOUR: i64 = 3600;

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "24h certificates, 16 shards x 6h (default)",
        lifetime_seconds: 24 * HOUR,
        shards: 16,
        width_seconds: 6 * HOUR,
    },
    Scenario {
        name: "24h certificates, 16 shards x 90min",
        lifetime_seconds: 24 * HOUR,
        shards: 16,
        width_seconds: 90 * 60,
    },
    Scenario {
        name: "24h certificates, 1 shard",
        lifetime_seconds: 24 * HOUR,
        shards: 1,
        width_seconds: 6 * HOUR,
    },
    Scenario {
        name: "90d certificates, 16 shards x 6h (default)",
        lifetime_seconds: 90 * 24 * HOUR,
        shards: 16,
        width_seconds: 6 * HOUR,
    },
];

#[derive(Debug, Serialize)]
struct SizesReport {
    certificates: usize,
    revoked: usize,
    reasons: &'static str,
    bytes_per_entry: BTreeMap<&'static str, usize>,
    ca_crl_bytes: usize,
    scenarios: Vec<ScenarioReport>,
}

#[derive(Debug, Serialize)]
struct ScenarioReport {
    name: &'static str,
    /// Per shard: entries and DER bytes.
    shards: Vec<(usize, usize)>,
    total_der_bytes: usize,
    largest_der_bytes: usize,
    /// Every shard plus the root's CA-certificate CRL, as PEM: what the
    /// agent's crl.pem holds.
    crl_pem_bytes: usize,
    /// The CRL one certificate names, averaged over the revoked population
    /// (a relying party checking one peer downloads that one).
    one_certificate_der_bytes: f64,
}

/// Reason of the `k`-th revoked certificate: 60 % unspecified, 25 %
/// superseded, 10 % cessationOfOperation, 5 % keyCompromise with an
/// invalidityDate.
fn reason_of(k: usize) -> (RevocationReason, bool) {
    match k % 20 {
        0 => (RevocationReason::KeyCompromise, true),
        1..=5 => (RevocationReason::Superseded, false),
        6 | 7 => (RevocationReason::CessationOfOperation, false),
        _ => (RevocationReason::Unspecified, false),
    }
}

const REASONS: &str = "60 % unspecified (no reasonCode), 25 % superseded, 10 % cessationOfOperation, 5 % keyCompromise with invalidityDate";

fn sizes(args: &SizesArgs) -> Result<bool, BoxError> {
    if args.revoked == 0 || args.revoked > args.certificates {
        return Err("--revoked must lie between 1 and --certificates".into());
    }
    let signer = SoftwareP256::generate()?;
    let now = OffsetDateTime::now_utc().replace_nanosecond(0)?;
    let issuer: Name = "CN=certmint Issuing CA".parse()?;
    let root: Name = "CN=certmint Root CA".parse()?;
    let key_id = vec![0x5a; 20];
    let key_id_hex = hex::encode(&key_id);
    let base = "http://ca.example.org:8080";
    let template = |name: &Name, shard: u32, scope: CrlScope, entries| CrlTemplate {
        issuer: name.clone(),
        issuer_key_identifier: key_id.clone(),
        number: 1_000_000 + u64::from(shard),
        this_update: now,
        next_update: now + time::Duration::hours(24),
        // The root's CRL of CA certificates names no distribution point,
        // as the server signs it.
        distribution_point: (scope == CrlScope::UserCerts)
            .then(|| sharding::distribution_point(base, &key_id_hex, shard)),
        scope,
        entries,
    };
    let entry = |k: usize, lifetime: i64| -> Result<CrlEntry, BoxError> {
        let (reason, compromised) = reason_of(k);
        Ok(CrlEntry {
            serial: certmint_server::issuance::random_serial()?.to_vec(),
            revoked_at: now - time::Duration::seconds((k as i64 * 7919) % lifetime.max(1)),
            reason,
            invalidity_date: compromised.then(|| now - time::Duration::hours(30)),
        })
    };
    let size = |entries: Vec<CrlEntry>| -> Result<usize, BoxError> {
        Ok(crl::sign(&template(&issuer, 0, CrlScope::UserCerts, entries), &signer)?.len())
    };

    // What one entry of each kind adds, from a CRL of 1000 of that kind.
    let empty = size(Vec::new())?;
    let mut bytes_per_entry = BTreeMap::new();
    for (label, k) in [
        ("unspecified", 19),
        ("with reasonCode", 1),
        ("keyCompromise + invalidityDate", 0),
    ] {
        let entries = (0..1000)
            .map(|_| entry(k, 24 * HOUR))
            .collect::<Result<Vec<_>, _>>()?;
        bytes_per_entry.insert(label, (size(entries)? - empty) / 1000);
    }
    bytes_per_entry.insert("empty CRL", empty);
    let ca_crl = crl::sign(&template(&root, 0, CrlScope::CaCerts, Vec::new()), &signer)?;
    let pem_len = |der: &[u8]| -> Result<usize, BoxError> { Ok(crl::to_pem(der)?.len()) };

    let mut scenarios = Vec::new();
    for scenario in &SCENARIOS {
        eprintln!("building the CRLs of: {}…", scenario.name);
        let mut by_shard: Vec<Vec<CrlEntry>> = vec![Vec::new(); scenario.shards as usize];
        // The k-th revoked certificate is the (k * stride)-th of the
        // population, whose notAfter lies evenly over the next lifetime.
        let stride = args.certificates / args.revoked;
        for k in 0..args.revoked {
            let index = (k * stride) as i64;
            let not_after = now.unix_timestamp()
                + (index * scenario.lifetime_seconds + scenario.lifetime_seconds / 2)
                    / args.certificates as i64;
            let shard = sharding::shard_of(not_after, scenario.width_seconds, scenario.shards);
            by_shard[shard as usize].push(entry(k, scenario.lifetime_seconds)?);
        }
        let mut shards = Vec::new();
        let mut crl_pem_bytes = pem_len(&ca_crl)?;
        for (shard, entries) in by_shard.into_iter().enumerate() {
            let count = entries.len();
            let der = crl::sign(
                &template(&issuer, u32::try_from(shard)?, CrlScope::UserCerts, entries),
                &signer,
            )?;
            crl_pem_bytes += pem_len(&der)?;
            shards.push((count, der.len()));
        }
        let revoked = args.revoked as f64;
        scenarios.push(ScenarioReport {
            name: scenario.name,
            total_der_bytes: shards.iter().map(|(_, bytes)| bytes).sum(),
            largest_der_bytes: shards.iter().map(|(_, bytes)| *bytes).max().unwrap_or(0),
            crl_pem_bytes,
            one_certificate_der_bytes: shards
                .iter()
                .map(|(count, bytes)| *count as f64 / revoked * *bytes as f64)
                .sum(),
            shards,
        });
    }
    let report = SizesReport {
        certificates: args.certificates,
        revoked: args.revoked,
        reasons: REASONS,
        bytes_per_entry,
        ca_crl_bytes: ca_crl.len(),
        scenarios,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_sizes(&report);
    }
    Ok(true)
}

fn print_sizes(report: &SizesReport) {
    println!(
        "certmint-bench crl sizes: {} unexpired certificates, {} revoked; P-256 CA; 16-byte serials",
        report.certificates, report.revoked
    );
    println!("  reasons: {}", report.reasons);
    for (kind, bytes) in &report.bytes_per_entry {
        println!("  {kind}: {bytes} bytes");
    }
    println!(
        "  the root's CRL of CA certificates (empty): {} bytes",
        report.ca_crl_bytes
    );
    println!();
    println!(
        "  {:<46} {:>8} {:>11} {:>12} {:>12} {:>14} {:>12}",
        "", "shards", "entries", "largest B", "total B", "crl.pem B", "one cert B"
    );
    for scenario in &report.scenarios {
        let used = scenario
            .shards
            .iter()
            .filter(|(count, _)| *count > 0)
            .count();
        let most = scenario
            .shards
            .iter()
            .map(|(count, _)| *count)
            .max()
            .unwrap_or(0);
        println!(
            "  {:<46} {:>8} {:>11} {:>12} {:>12} {:>14} {:>12.0}",
            scenario.name,
            format!("{used}/{}", scenario.shards.len()),
            format!("<= {most}"),
            scenario.largest_der_bytes,
            scenario.total_der_bytes,
            scenario.crl_pem_bytes,
            scenario.one_certificate_der_bytes
        );
    }
    println!();
    println!("  per shard (entries / DER bytes):");
    for scenario in &report.scenarios {
        let cells: Vec<String> = scenario
            .shards
            .iter()
            .enumerate()
            .map(|(shard, (count, bytes))| format!("{shard}:{count}/{bytes}"))
            .collect();
        println!("  {}: {}", scenario.name, cells.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the server's text log writes them.
    fn signed(at: &str, entries: u64) -> String {
        format!(
            "{at}  INFO certmint_server::revocation::publisher: CRL signed crl.issuer=5a5a crl.shard=0 crl.number=7 crl.entries={entries}\n"
        )
    }

    #[test]
    fn the_log_gives_signatures_entries_and_look_times() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("server.log");
        let before = signed("2026-12-08T03:00:00.000000Z", 99_999);
        let log = [
            before.clone(),
            "2026-12-08T03:00:00.500000Z  INFO certmint_server::api: request\n".to_owned(),
            signed("2026-12-08T03:00:01.000000Z", 10),
            // Back to back: a look of 60 ms.
            signed("2026-12-08T03:00:02.060000Z", 20),
            // Same look, another shard: no gap counted.
            signed("2026-12-08T03:00:02.060100Z", 1),
            // A look that signed nothing in between: not counted.
            signed("2026-12-08T03:00:04.100000Z", 30),
            // Back to back again: 40 ms.
            signed("2026-12-08T03:00:05.140000Z", 25),
        ]
        .concat();
        std::fs::write(&path, log).expect("write the log");
        let logged = signatures_logged(Some(&path), before.len() as u64).expect("the log is read");
        assert_eq!(logged.signatures, 5, "lines before the offset do not count");
        assert_eq!(logged.most_entries, 30);
        let look = logged.look.expect("two back-to-back looks");
        assert_eq!(look.count, 2);
        assert!((look.min_ms - 40.0).abs() < 0.01, "{look:?}");
        assert!((look.max_ms - 60.0).abs() < 0.01, "{look:?}");
        assert!(signatures_logged(None, 0).is_none());
    }

    #[test]
    fn reasons_follow_the_stated_mix() {
        let reasons: Vec<_> = (0..20).map(reason_of).collect();
        let count = |reason| reasons.iter().filter(|(r, _)| *r == reason).count();
        assert_eq!(count(RevocationReason::Unspecified), 12);
        assert_eq!(count(RevocationReason::Superseded), 5);
        assert_eq!(count(RevocationReason::CessationOfOperation), 2);
        assert_eq!(count(RevocationReason::KeyCompromise), 1);
        assert!(reasons
            .iter()
            .all(|(reason, dated)| *dated == (*reason == RevocationReason::KeyCompromise)));
    }

    #[test]
    fn the_software_signer_signs_crls_the_encoder_accepts() {
        let signer = SoftwareP256::generate().expect("a key");
        let now = OffsetDateTime::now_utc();
        let template = CrlTemplate {
            issuer: "CN=test".parse().expect("a name"),
            issuer_key_identifier: vec![1; 20],
            number: 1,
            this_update: now,
            next_update: now + time::Duration::hours(1),
            distribution_point: Some("http://ca.test/crl/01/0.crl".into()),
            scope: CrlScope::UserCerts,
            entries: vec![CrlEntry {
                serial: vec![0x42; 16],
                revoked_at: now,
                reason: RevocationReason::Unspecified,
                invalidity_date: None,
            }],
        };
        // crl::sign verifies under the signer's SPKI before it returns.
        let der = crl::sign(&template, &signer).expect("signed and verified");
        assert_eq!(listed_serials(&der).expect("parses"), vec!["42".repeat(16)]);
    }
}
