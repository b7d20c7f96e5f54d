//! `certmint-bench`: enrollment throughput and latency of a running
//! certmint server, beside the token's raw `C_Sign` rate for the same key
//! and (optionally) cfssl's plain `/api/v1/cfssl/sign` on the same machine.
//!
//! Not a test: it prints numbers. `tests/bench/run.sh` sets everything up
//! from a clean state; `docs/BENCHMARK.md` records how and what was measured.
//!
//! Phases, run one after the other so they never compete for the CPU:
//! 1. raw `C_Sign` on the issuing key (if `--pkcs11-module` is given);
//! 2. N enrollments over HTTPS at concurrency C (one keep-alive connection
//!    per worker, as a fleet of agents would hold), with the server's CPU
//!    time and its own stage timings from `/metrics`;
//! 3. N cfssl signs at the same concurrency (if `--cfssl-url` is given).
//!
//! With `--rounds R`, phases 2 and 3 alternate R times, each round on its
//! own N/R CSRs; the report pools the rounds and adds each round's ratio and
//! the median ratio, which one slow moment of a shared machine barely moves.
//!
//! All CSRs (distinct keys and names) are generated before any timing.
//!
//! `renew` (module [`renew`]) measures renewal over mutual TLS beside the
//! bare mutual-TLS handshake rate of the same server; `crl` (module
//! [`crl`]) what revocation lists cost: signing, latency and size.

mod crl;
mod csign;
mod load;
mod metrics;
mod mtls;
mod procstat;
mod renew;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certmint::wire::{CertificateBundle, EnrollRequest, MintedToken};
use clap::{Parser, Subcommand};
use reqwest::blocking::Client;
use serde::Serialize;
use serde_json::json;

use crate::procstat::CpuClock;
use crate::stats::PhaseResult;

/// Error type of this program: every failure ends it with a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest `max_uses` the server accepts for one bootstrap token.
const MAX_TOKEN_USES: usize = 10_000;

#[derive(Parser)]
#[command(
    name = "certmint-bench",
    about = "Benchmark certmint enrollment (against the token's raw C_Sign rate and cfssl) renewal over mutual TLS (against the bare handshake rate), and CRLs (signing, latency, sizes)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll N certificates at concurrency C and report throughput and latency.
    Enroll(EnrollArgs),
    /// Renew N enrolled holders at concurrency C, each over a new mutual-TLS
    /// connection, and measure N bare mutual-TLS handshakes beside it.
    Renew(renew::RenewArgs),
    /// CRLs: signing a 10 000-entry shard, revocation-to-CRL latency under
    /// a steady revocation rate, and CRL sizes of a large population.
    Crl(crl::CrlArgs),
    /// Test support: sign standard input with an Ed25519 key on a token
    /// (CKM_EDDSA) and print the signature, base64url (or, with
    /// --public-key, print the raw public key). The end-to-end tests forge
    /// tokens signed by the server's HSM-held token key with it.
    #[command(hide = true)]
    SignEd25519(SignEd25519Args),
}

#[derive(clap::Args)]
struct SignEd25519Args {
    /// PKCS#11 module; the user PIN comes from $CERTMINT_HSM_PIN.
    #[arg(long)]
    pkcs11_module: PathBuf,
    /// Token label.
    #[arg(long)]
    token_label: String,
    /// Label of the Ed25519 private key.
    #[arg(long)]
    key_label: String,
    /// Print the key's raw 32-byte public key instead of signing.
    #[arg(long)]
    public_key: bool,
}

fn sign_ed25519(args: &SignEd25519Args) -> Result<bool, BoxError> {
    use base64::Engine as _;
    use std::io::Read as _;
    let pin = std::env::var("CERTMINT_HSM_PIN").map_err(|_| "set $CERTMINT_HSM_PIN")?;
    let key = csign::TokenKey {
        module: &args.pkcs11_module,
        token_label: &args.token_label,
        key_label: &args.key_label,
        pin,
    };
    let output = if args.public_key {
        csign::ed25519_public_key(&key)?
    } else {
        let mut message = Vec::new();
        std::io::stdin().read_to_end(&mut message)?;
        csign::sign_ed25519(&key, &message)?
    };
    println!(
        "{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(output)
    );
    Ok(true)
}

/// What every subcommand needs: the server, an admin, the load shape.
#[derive(clap::Args)]
struct CommonArgs {
    /// certmint base URL, e.g. https://127.0.0.1:8443.
    #[arg(long)]
    server: String,
    /// The CA root certificate (PEM) the server's TLS chain ends in.
    #[arg(long)]
    root: PathBuf,
    /// File holding an admin JWT (`certmint-server admin-token`).
    #[arg(long)]
    admin_token_file: PathBuf,
    /// Timed operations (enrollments; for `renew`: holders, renewals and
    /// handshakes).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent workers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Untimed warm-up operations per worker, before the clock starts.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// PID of the certmint server, to report its CPU time per operation.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl CommonArgs {
    fn validate(&self) -> Result<(), BoxError> {
        if self.requests == 0 || self.concurrency == 0 {
            return Err("--requests and --concurrency must be at least 1".into());
        }
        Ok(())
    }

    fn base_url(&self) -> String {
        self.server.trim_end_matches('/').to_owned()
    }

    fn admin_token(&self) -> Result<String, BoxError> {
        Ok(std::fs::read_to_string(&self.admin_token_file)
            .map_err(|e| format!("{}: {e}", self.admin_token_file.display()))?
            .trim()
            .to_owned())
    }
}

#[derive(clap::Args)]
struct EnrollArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// PKCS#11 module, to measure the raw C_Sign rate of the issuing key.
    /// The user PIN comes from $CERTMINT_HSM_PIN; SoftHSM2 also needs
    /// $SOFTHSM2_CONF, as for the server.
    #[arg(long)]
    pkcs11_module: Option<PathBuf>,
    /// Token label.
    #[arg(long, default_value = "certmint")]
    token_label: String,
    /// Label of the issuing private key.
    #[arg(long, default_value = "certmint-issuing")]
    key_label: String,
    /// Timed raw signatures.
    #[arg(long, default_value_t = 4000)]
    sign_count: usize,
    /// Signing threads (one session each); default: --concurrency.
    #[arg(long)]
    sign_threads: Option<usize>,
    /// cfssl base URL (`cfssl serve`), e.g. http://127.0.0.1:8888.
    #[arg(long)]
    cfssl_url: Option<String>,
    /// PID of `cfssl serve`, to report its CPU time per signature.
    #[arg(long)]
    cfssl_pid: Option<u32>,
    /// PEM root that signed cfssl's TLS certificate, for an https
    /// --cfssl-url (cfssl serve -tls-cert/-tls-key).
    #[arg(long)]
    cfssl_root: Option<PathBuf>,
    /// How cfssl was set up, named in the report (e.g. "plain HTTP, no
    /// database").
    #[arg(long, default_value = "plain HTTP, no database")]
    cfssl_setup: String,
    /// Split the timed requests into R rounds, each running certmint then
    /// cfssl on its own slice of CSRs; the report adds per-round ratios and
    /// their median.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// One HTTP phase in the report.
#[derive(Debug, Clone, Serialize)]
struct HttpReport {
    #[serde(flatten)]
    result: PhaseResult,
    failures: usize,
    /// Server CPU (user + system) per successful request, milliseconds.
    server_cpu_ms_per_request: Option<f64>,
    /// Server CPU time over wall time: cores kept busy.
    server_cores_busy: Option<f64>,
    /// This program's CPU per request (TLS, JSON): it shares the machine.
    client_cpu_ms_per_request: f64,
    /// The server's CPU time over the phase, what [`HttpReport::merge`] adds.
    #[serde(skip)]
    server_used: Option<Duration>,
    /// This program's CPU time over the phase.
    #[serde(skip)]
    client_used: Duration,
}

impl HttpReport {
    fn new(
        result: PhaseResult,
        failures: usize,
        server_used: Option<Duration>,
        client_used: Duration,
    ) -> HttpReport {
        let per_request =
            |used: Duration| used.as_secs_f64() * 1000.0 / result.completed.max(1) as f64;
        HttpReport {
            failures,
            server_cpu_ms_per_request: server_used.map(per_request),
            server_cores_busy: server_used
                .map(|used| used.as_secs_f64() / result.elapsed_seconds.max(1e-9)),
            client_cpu_ms_per_request: per_request(client_used),
            server_used,
            client_used,
            result,
        }
    }

    /// The rounds of one phase as if they had run as one: samples pooled,
    /// wall-clock and CPU times added.
    fn merge(rounds: &[HttpReport]) -> HttpReport {
        let server_used = rounds
            .iter()
            .map(|round| round.server_used)
            .sum::<Option<Duration>>();
        HttpReport::new(
            PhaseResult::merge(rounds.iter().map(|round| &round.result)),
            rounds.iter().map(|round| round.failures).sum(),
            server_used,
            rounds.iter().map(|round| round.client_used).sum(),
        )
    }
}

/// One round of `enroll`: certmint's slice of the load, then cfssl's.
#[derive(Debug, Serialize)]
struct RoundReport {
    certmint_per_second: f64,
    cfssl_per_second: Option<f64>,
    certmint_over_cfssl: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    unix_time: u64,
    requests: usize,
    concurrency: usize,
    warmup_per_worker: usize,
    connections: &'static str,
    certmint: HttpReport,
    certmint_stages: Vec<metrics::Stage>,
    /// SQLite: write transactions per durable COMMIT during the timed phase.
    certmint_writes_per_commit: Option<f64>,
    raw_c_sign: Option<csign::SignResult>,
    cfssl: Option<HttpReport>,
    /// How the cfssl reference was set up (`--cfssl-setup`).
    cfssl_setup: Option<String>,
    /// Throughput ratio over all rounds together.
    certmint_over_cfssl: Option<f64>,
    /// Each round's throughputs and ratio.
    rounds: Vec<RoundReport>,
    /// Median of the rounds' ratios: the figure least moved by one slow
    /// moment of the machine.
    median_round_ratio: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Enroll(args) => enroll(&args),
        Command::Renew(args) => renew::run(&args),
        Command::Crl(args) => crl::run(&args),
        Command::SignEd25519(args) => sign_ed25519(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("certmint-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every phase; `Ok(false)` when some request failed.
fn enroll(args: &EnrollArgs) -> Result<bool, BoxError> {
    // reqwest is built with `rustls-tls-manual-roots-no-provider`: clients
    // built without a preconfigured TLS config (the cfssl one) need a
    // process-wide provider. An error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let common = &args.common;
    common.validate()?;
    let base = common.base_url();
    let admin_token = common.admin_token()?;
    let tls = Arc::new(tls_config(&common.root)?);
    let certmint_client = {
        let tls = tls.clone();
        move || -> Result<Client, BoxError> {
            Ok(Client::builder()
                .use_preconfigured_tls((*tls).clone())
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(120))
                .build()?)
        }
    };
    let admin = certmint_client()?;
    let cpu = CpuClock::new();

    // Setup: policy, tokens, CSRs. Nothing here is timed. Each round warms
    // up its own connections, with enrollments of its own (tokens are used
    // up by them).
    let rounds = args.rounds.clamp(1, common.requests);
    let warm_count = common.warmup * common.concurrency;
    let policy = create_policy(&admin, &base, &admin_token, false)?;
    let warm_tokens = mint_tokens(&admin, &base, &admin_token, &policy, warm_count * rounds)?;
    let tokens = mint_tokens(&admin, &base, &admin_token, &policy, common.requests)?;
    eprintln!(
        "generating {} P-256 keys and CSRs…",
        common.requests + warm_count * rounds
    );
    let warm_csrs = make_csrs("warm", warm_count * rounds)?;
    let csrs = make_csrs("w", common.requests)?;
    let warm_bodies = enroll_bodies(&warm_csrs, &warm_tokens)?;
    let bodies = enroll_bodies(&csrs, &tokens)?;
    let cfssl_warm_bodies = cfssl_bodies(&warm_csrs);
    let cfssl_timed_bodies = cfssl_bodies(&csrs);

    // Phase 1: the token's raw signing rate.
    let raw_c_sign = match &args.pkcs11_module {
        None => None,
        Some(module) => {
            let pin = std::env::var("CERTMINT_HSM_PIN")
                .map_err(|_| "--pkcs11-module needs the user PIN in $CERTMINT_HSM_PIN")?;
            eprintln!("measuring raw C_Sign…");
            Some(csign::measure(&csign::SignSettings {
                module,
                token_label: &args.token_label,
                key_label: &args.key_label,
                pin,
                signatures: args.sign_count,
                threads: args.sign_threads.unwrap_or(common.concurrency),
            })?)
        }
    };

    // Phases 2 and 3, round after round: certmint enrollments, then cfssl
    // signs, on the same slice of CSRs. Alternating them spreads slow
    // moments of a shared machine over both, instead of over one.
    let slice = common.requests.div_ceil(rounds);
    let cfssl_url = args
        .cfssl_url
        .as_ref()
        .map(|url| format!("{}/api/v1/cfssl/sign", url.trim_end_matches('/')));
    let cfssl_tls = match &args.cfssl_root {
        Some(root) => Some(Arc::new(tls_config(root)?)),
        None => None,
    };
    let cfssl_client = || -> Result<Client, BoxError> {
        let builder = Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(120));
        let builder = match &cfssl_tls {
            Some(tls) => builder.use_preconfigured_tls((**tls).clone()),
            None => builder,
        };
        Ok(builder.build()?)
    };
    let enroll_url = format!("{base}/v1/enroll");
    let metrics_before = metrics::scrape(&admin, &base)?;
    let mut certmint_rounds = Vec::new();
    let mut cfssl_rounds = Vec::new();
    let mut serials = Vec::new();
    let mut all_ok = true;
    for (round, range) in (0..common.requests)
        .step_by(slice)
        .map(|start| start..(start + slice).min(common.requests))
        .enumerate()
    {
        let warm = round * warm_count..(round + 1) * warm_count;
        let of_rounds = if rounds > 1 {
            format!(" (round {} of {rounds})", round + 1)
        } else {
            String::new()
        };
        eprintln!(
            "certmint: {} enrollments at concurrency {}{of_rounds}…",
            range.len(),
            common.concurrency
        );
        let (certmint, outcome) = run_phase(
            &cpu,
            common.server_pid,
            &load::Phase {
                url: &enroll_url,
                client: &certmint_client,
                bodies: &bodies[range.clone()],
                warmup: &warm_bodies[warm.clone()],
                concurrency: common.concurrency,
                check: check_enrollment,
                on_start: &|| Ok(()),
            },
        )?;
        report_failures("certmint", outcome.failures, &outcome.failure_samples);
        all_ok &= outcome.failures == 0;
        serials.extend(outcome.ids);
        certmint_rounds.push(certmint);

        if let Some(url) = &cfssl_url {
            eprintln!(
                "cfssl: {} signs at concurrency {}{of_rounds}…",
                range.len(),
                common.concurrency
            );
            let (report, outcome) = run_phase(
                &cpu,
                args.cfssl_pid,
                &load::Phase {
                    url,
                    client: &cfssl_client,
                    bodies: &cfssl_timed_bodies[range],
                    warmup: &cfssl_warm_bodies[warm],
                    concurrency: common.concurrency,
                    check: check_cfssl,
                    on_start: &|| Ok(()),
                },
            )?;
            report_failures("cfssl", outcome.failures, &outcome.failure_samples);
            all_ok &= outcome.failures == 0;
            cfssl_rounds.push(report);
        }
    }
    let metrics_after = metrics::scrape(&admin, &base)?;

    let certmint = HttpReport::merge(&certmint_rounds);
    let enrolled = serials.len();
    serials.sort_unstable();
    serials.dedup();
    if serials.len() != enrolled {
        return Err(format!(
            "{enrolled} enrollments returned only {} distinct serials",
            serials.len()
        )
        .into());
    }
    let certmint_stages = metrics::stages(
        &metrics_before,
        &metrics_after,
        certmint.result.completed + warm_count * rounds,
    );
    let certmint_writes_per_commit = metrics::writes_per_commit(&metrics_before, &metrics_after);
    let cfssl = (!cfssl_rounds.is_empty()).then(|| HttpReport::merge(&cfssl_rounds));
    let ratio = |certmint: f64, cfssl: f64| (cfssl > 0.0).then(|| certmint / cfssl);
    let certmint_over_cfssl = cfssl
        .as_ref()
        .and_then(|cfssl| ratio(certmint.result.per_second, cfssl.result.per_second));
    let round_reports: Vec<RoundReport> = certmint_rounds
        .iter()
        .enumerate()
        .map(|(round, certmint)| {
            let cfssl = cfssl_rounds.get(round).map(|cfssl| cfssl.result.per_second);
            RoundReport {
                certmint_per_second: certmint.result.per_second,
                cfssl_per_second: cfssl,
                certmint_over_cfssl: cfssl
                    .and_then(|cfssl| ratio(certmint.result.per_second, cfssl)),
            }
        })
        .collect();
    let median_round_ratio = stats::median(
        &round_reports
            .iter()
            .filter_map(|round| round.certmint_over_cfssl)
            .collect::<Vec<_>>(),
    );
    let report = Report {
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        requests: common.requests,
        concurrency: common.concurrency,
        warmup_per_worker: common.warmup,
        connections: "one keep-alive connection per worker, reused for every request (TLS handshake only in warm-up)",
        certmint,
        certmint_stages,
        certmint_writes_per_commit,
        raw_c_sign,
        cfssl_setup: cfssl.as_ref().map(|_| args.cfssl_setup.clone()),
        cfssl,
        certmint_over_cfssl,
        rounds: round_reports,
        median_round_ratio,
    };
    if common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(all_ok)
}

/// Runs one HTTP phase with CPU accounting around the timed part.
fn run_phase(
    cpu: &CpuClock,
    server_pid: Option<u32>,
    phase: &load::Phase<'_>,
) -> Result<(HttpReport, load::Outcome), BoxError> {
    measure(cpu, server_pid, |on_start| {
        load::run(&load::Phase {
            on_start: &|| {
                on_start()?;
                (phase.on_start)()
            },
            ..*phase
        })
    })
}

/// The `on_start` hook [`measure`] hands to the phase it runs.
type OnStart<'a> = &'a (dyn Fn() -> Result<(), BoxError> + Sync);

/// Runs a phase through `drive`, which must call the hook it is given when
/// its clock starts; reads the server's and this program's CPU time there
/// and again after the phase, and reports both per successful operation.
fn measure(
    cpu: &CpuClock,
    server_pid: Option<u32>,
    drive: impl FnOnce(OnStart<'_>) -> Result<load::Outcome, BoxError>,
) -> Result<(HttpReport, load::Outcome), BoxError> {
    let server_pid = server_pid.map(|pid| pid.to_string());
    let before = std::sync::Mutex::new(None);
    let on_start = || -> Result<(), BoxError> {
        let server = server_pid
            .as_deref()
            .map(|pid| cpu.cpu_time(pid))
            .transpose()?;
        let client = cpu.cpu_time("self")?;
        *before
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((server, client));
        Ok(())
    };
    let outcome = drive(&on_start)?;
    let (server_before, client_before) = before
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .ok_or("the phase never started")?;
    let client_after = cpu.cpu_time("self")?;
    let server_used = match (&server_pid, server_before) {
        (Some(pid), Some(before)) => Some(cpu.cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    Ok((
        HttpReport::new(
            outcome.result.clone(),
            outcome.failures,
            server_used,
            client_after.saturating_sub(client_before),
        ),
        outcome,
    ))
}

fn report_failures(what: &str, failures: usize, samples: &[String]) {
    if failures > 0 {
        eprintln!("{what}: {failures} request(s) failed, e.g.:");
        for sample in samples {
            eprintln!("  {sample}");
        }
    }
}

/// rustls client config trusting only `root` (HTTP/1.1, ring provider).
fn tls_config(root: &std::path::Path) -> Result<rustls::ClientConfig, BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(mtls::roots(root)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn admin_post(
    client: &Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> Result<String, BoxError> {
    let response = client.post(url).bearer_auth(token).json(body).send()?;
    let status = response.status();
    let text = response.text()?;
    if status.as_u16() != 201 {
        return Err(format!("POST {url}: HTTP {status}: {text}").into());
    }
    Ok(text)
}

/// A fresh policy allowing `*.bench.internal`, P-256, 24h; with
/// `renewal`, holders may renew over mutual TLS (chains up to 90 days).
fn create_policy(
    client: &Client,
    base: &str,
    token: &str,
    renewal: bool,
) -> Result<String, BoxError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = format!("bench-{stamp}-{}", std::process::id());
    let mut spec = json!({
        "name": name,
        "description": "certmint-bench",
        "allowed": {"dns": ["*.bench.internal"]},
        "key_types": ["ec-p256"],
        "ttl": {"default": "24h", "max": "24h"},
        "extended_key_usage": ["client_auth"],
    });
    if renewal {
        spec["renewal"] = json!({"allowed": true, "max_chain_age": "90d"});
    }
    admin_post(client, &format!("{base}/v1/admin/policies"), token, &spec)?;
    Ok(name)
}

/// Multi-use bootstrap tokens covering `uses` enrollments (each token at
/// most [`MAX_TOKEN_USES`]); every use is the same atomic conditional
/// update a single-use token gets.
fn mint_tokens(
    client: &Client,
    base: &str,
    admin_token: &str,
    policy: &str,
    uses: usize,
) -> Result<Vec<String>, BoxError> {
    let mut tokens = Vec::new();
    let mut left = uses;
    while left > 0 {
        let max_uses = left.min(MAX_TOKEN_USES);
        let text = admin_post(
            client,
            &format!("{base}/v1/admin/tokens"),
            admin_token,
            &json!({
                "policy": policy,
                "identity": {"dns": ["*.bench.internal"]},
                "ttl": "1h",
                "max_uses": max_uses,
            }),
        )?;
        let minted: MintedToken = serde_json::from_str(&text)?;
        tokens.push(minted.token);
        left -= max_uses;
    }
    Ok(tokens)
}

/// `count` PEM CSRs for `<prefix><i>.bench.internal`, each with its own key.
fn make_csrs(prefix: &str, count: usize) -> Result<Vec<String>, BoxError> {
    (0..count)
        .map(|i| -> Result<String, BoxError> {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let params =
                rcgen::CertificateParams::new(vec![format!("{prefix}{i}.bench.internal")])?;
            Ok(params.serialize_request(&key)?.pem()?)
        })
        .collect()
}

/// Enrollment bodies; CSR `i` uses token `i / MAX_TOKEN_USES`.
fn enroll_bodies(csrs: &[String], tokens: &[String]) -> Result<Vec<Vec<u8>>, BoxError> {
    csrs.iter()
        .enumerate()
        .map(|(i, csr)| -> Result<Vec<u8>, BoxError> {
            let token = tokens
                .get(i / MAX_TOKEN_USES)
                .ok_or("fewer tokens than enrollments")?;
            Ok(serde_json::to_vec(&EnrollRequest {
                csr: csr.clone(),
                token: token.clone(),
                ttl: None,
            })?)
        })
        .collect()
}

fn cfssl_bodies(csrs: &[String]) -> Vec<Vec<u8>> {
    csrs.iter()
        .map(|csr| {
            json!({ "certificate_request": csr })
                .to_string()
                .into_bytes()
        })
        .collect()
}

fn check_enrollment(status: u16, body: &[u8]) -> Result<Option<String>, String> {
    if status != 201 {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    let bundle: CertificateBundle =
        serde_json::from_slice(body).map_err(|e| format!("bad 201 body: {e}"))?;
    if !bundle
        .certificate_pem
        .starts_with("-----BEGIN CERTIFICATE-----")
    {
        return Err("201 without a PEM certificate".into());
    }
    Ok(Some(bundle.serial))
}

#[derive(serde::Deserialize)]
struct CfsslResponse {
    success: bool,
    #[serde(default)]
    result: Option<CfsslResult>,
}

#[derive(serde::Deserialize)]
struct CfsslResult {
    certificate: String,
}

fn check_cfssl(status: u16, body: &[u8]) -> Result<Option<String>, String> {
    let snippet = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if status != 200 {
        return Err(format!("HTTP {status}: {}", snippet()));
    }
    let response: CfsslResponse =
        serde_json::from_slice(body).map_err(|e| format!("bad cfssl body: {e}"))?;
    match response.result {
        Some(result)
            if response.success && result.certificate.starts_with("-----BEGIN CERTIFICATE") =>
        {
            Ok(None)
        }
        _ => Err(format!("cfssl did not sign: {}", snippet())),
    }
}

/// Width of the first column of the result tables.
const NAME_WIDTH: usize = 30;

/// The result table of HTTP phases: a header naming the rate `unit`, then
/// one row per phase. Shared by `enroll` and `renew`.
fn print_http_rows(unit: &str, rows: &[(&str, &HttpReport)]) {
    let opt = |value: Option<f64>, digits: usize| {
        value.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
    };
    println!(
        "{:<NAME_WIDTH$} {:>9} {:>9} {:>9} {:>9} {:>12} {:>11} {:>11}",
        "", unit, "p50 ms", "p99 ms", "max ms", "srv CPU ms", "srv cores", "cli CPU ms"
    );
    for (name, r) in rows {
        println!(
            "{:<NAME_WIDTH$} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>11} {:>11.3}",
            name,
            r.result.per_second,
            r.result.p50_ms,
            r.result.p99_ms,
            r.result.max_ms,
            opt(r.server_cpu_ms_per_request, 3),
            opt(r.server_cores_busy, 2),
            r.client_cpu_ms_per_request
        );
    }
}

fn print_table(report: &Report) {
    println!(
        "certmint-bench: {} requests, concurrency {}, {} warm-up request(s) per worker",
        report.requests, report.concurrency, report.warmup_per_worker
    );
    println!("connections: {}", report.connections);
    println!();
    let mut rows = vec![("certmint POST /v1/enroll", &report.certmint)];
    if let Some(cfssl) = &report.cfssl {
        rows.push(("cfssl /api/v1/cfssl/sign", cfssl));
    }
    print_http_rows("req/s", &rows);
    if let Some(sign) = &report.raw_c_sign {
        println!(
            "{:<NAME_WIDTH$} {:>9.1} {:>9.2} {:>9.2} {:>9.2}   ({} sessions)",
            "raw C_Sign (issuing key)",
            sign.result.per_second,
            sign.result.p50_ms,
            sign.result.p99_ms,
            sign.result.max_ms,
            sign.threads
        );
    }
    if let Some(setup) = &report.cfssl_setup {
        println!("cfssl: {setup}");
    }
    println!();
    if let Some(ratio) = report.certmint_over_cfssl {
        println!("certmint / cfssl throughput: {ratio:.2}");
    }
    if report.rounds.len() > 1 {
        for (n, round) in report.rounds.iter().enumerate() {
            let cfssl = round
                .cfssl_per_second
                .map_or_else(|| "-".to_owned(), |rate| format!("{rate:.1}"));
            let ratio = round
                .certmint_over_cfssl
                .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}"));
            println!(
                "  round {}: certmint {:.1}/s, cfssl {cfssl}/s, ratio {ratio}",
                n + 1,
                round.certmint_per_second
            );
        }
        if let Some(median) = report.median_round_ratio {
            println!(
                "certmint / cfssl, median of {} rounds: {median:.2}",
                report.rounds.len()
            );
        }
    }
    if let Some(sign) = &report.raw_c_sign {
        if sign.result.per_second > 0.0 {
            println!(
                "certmint / raw C_Sign throughput: {:.2}",
                report.certmint.result.per_second / sign.result.per_second
            );
        }
    }
    if !report.certmint_stages.is_empty() {
        println!();
        println!("certmint server stages (from /metrics, warm-up included):");
        println!(
            "  {:<78} {:>6} {:>8} {:>13}",
            "stage", "count", "mean ms", "ms/enrollment"
        );
        for stage in &report.certmint_stages {
            println!(
                "  {:<78} {:>6} {:>8.3} {:>13.3}",
                stage.stage, stage.count, stage.mean_ms, stage.per_enrollment_ms
            );
        }
        metrics::print_writes_per_commit(report.certmint_writes_per_commit);
    }
}
