//! `certmint enroll`: one-shot first enrollment, e.g. from a boot script.
//!
//! Makes a fresh key locally, enrolls with a bootstrap token, checks what
//! the server returned against the trust anchors, installs key, chain, CA
//! and metadata atomically into `--out`, runs the reload hooks and prints
//! one summary line on stdout. `certmint agent` uses the same code
//! ([`workload`](crate::agent::workload)) for the same steps.
//!
//! SIGTERM/SIGINT follow the rule of [`stop`](crate::agent::stop): while no request is in
//! flight (connecting, backing off) they stop the command at once with
//! [`Exit::Stopped`]. While the request is in flight the first one lets it
//! finish (at most `--timeout` +
//! [`STOP_GRACE_MARGIN`](stop::STOP_GRACE_MARGIN)), because the server may
//! already have consumed a single-use token: a certificate that arrives is
//! installed, the hooks run and the exit code is the one the command would
//! have had anyway; a failure is not retried. A second signal, or the end
//! of that grace, abandons the request at once ([`Exit::Stopped`]).

use std::path::PathBuf;
use std::time::Duration as StdDuration;

use certmint::wire::{Identity, KeyType};
use certmint::Duration;

use crate::agent::crl::CrlKeeper;
use crate::agent::hooks::{Hooks, ReloadSignal};
use crate::agent::keys;
use crate::agent::output::{FileGroup, OutputDir, CA_FILE, CERT_FILE, KEY_FILE};
use crate::agent::rfc3339;
use crate::agent::schedule::{self, Backoff};
use crate::agent::stop::{
    self, finish_in_flight, unless_stopped, InFlight, StopRequests, StopSignals,
};
use crate::agent::workload::{PendingEnrollment, Token, TrustSource, Workload, WorkloadError};
use crate::exit::Exit;
use crate::report;

/// `certmint enroll` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// certmint server URL (https://host:port).
    #[arg(long, env = "CERTMINT_SERVER")]
    server: String,
    /// Trust the CA root with this SHA-256 fingerprint (sha256:<hex>), checked on first contact.
    #[arg(
        long,
        env = "CERTMINT_ROOT_FINGERPRINT",
        required_unless_present = "ca_bundle",
        conflicts_with = "ca_bundle"
    )]
    root_fingerprint: Option<String>,
    /// Trust the CA certificates in this PEM file instead of pinning a fingerprint.
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
    /// The bootstrap token. Prefer --token-file or CERTMINT_TOKEN: arguments are visible in ps.
    #[arg(long, env = "CERTMINT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the bootstrap token from this file (wins over --token and CERTMINT_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// DNS name to request (repeatable).
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// IP address to request (repeatable).
    #[arg(long = "ip", value_name = "ADDRESS")]
    ip: Vec<String>,
    /// URI to request, e.g. a SPIFFE ID (repeatable).
    #[arg(long = "uri", value_name = "URI")]
    uri: Vec<String>,
    /// Key type, spelled exactly as the server does: ec-p256, ec-p384 or
    /// ed25519 (no aliases such as p256; RSA keys cannot be made locally).
    #[arg(long, default_value = "ec-p256", value_parser = keys::parse_key_type)]
    key_type: KeyType,
    /// Requested lifetime, e.g. 24h (the policy default when absent).
    #[arg(long)]
    ttl: Option<Duration>,
    /// Output directory (created 0700 when missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Let this group (name or gid) read the files: for a workload running
    /// as another user. Directories become 0750 and the key 0640, owned by
    /// the group; certmint must run as root or as a member of it.
    #[arg(long, value_name = "GROUP")]
    group: Option<FileGroup>,
    /// Keep retrying an unreachable server (or 5xx answers) for this long.
    #[arg(long, value_name = "DURATION")]
    retry_for: Option<Duration>,
    /// Per-request timeout.
    #[arg(long, default_value = "30s")]
    timeout: Duration,
    /// After writing, send this signal (HUP, USR1, …) to the pid in --reload-pid-file.
    #[arg(long, requires = "reload_pid_file")]
    reload_signal: Option<ReloadSignal>,
    /// Pid file of the process to signal.
    #[arg(long, requires = "reload_signal")]
    reload_pid_file: Option<PathBuf>,
    /// How long the reload command may run.
    #[arg(long, default_value = "30s")]
    reload_timeout: Duration,
    /// Reload command and its arguments, after `--` (run without a shell).
    #[arg(last = true, value_name = "COMMAND")]
    reload_command: Vec<String>,
}

/// Runs the command.
pub async fn run(args: Args) -> Exit {
    // First of all: until the handlers are in place a stop kills the
    // process outright, which is harmless only because nothing is sent yet.
    let mut stops = match StopSignals::new() {
        Ok(stops) => stops,
        Err(error) => {
            report::message(&format_args!("cannot install signal handlers: {error}"));
            return Exit::Failure;
        }
    };
    // Progress goes to the log; the failure the command ends with is
    // reported the way every one-shot command reports it.
    match enroll(args, &mut stops).await {
        Ok(Outcome::Enrolled) => Exit::Ok,
        Ok(Outcome::Stopped) => {
            report::message(&"stopped before a certificate was installed");
            Exit::Stopped
        }
        Err(error) => {
            match &error {
                WorkloadError::Client(client) => report::client_error(client),
                other => report::message(other),
            }
            error.exit()
        }
    }
}

/// How [`enroll`] ended, when it did not fail.
enum Outcome {
    /// The certificate is in place (even if a stop was asked for while the
    /// request was in flight).
    Enrolled,
    /// A stop request ended it before a certificate was installed.
    Stopped,
}

async fn enroll(args: Args, stops: &mut impl StopRequests) -> Result<Outcome, WorkloadError> {
    let token = match (&args.token_file, &args.token) {
        (Some(path), _) => Token::from_file(path)?,
        (None, Some(text)) => Token::new(text),
        (None, None) => None,
    }
    .ok_or_else(|| WorkloadError::NoToken(args.out.display().to_string()))?;
    let trust = match (&args.root_fingerprint, &args.ca_bundle) {
        (Some(fingerprint), _) => TrustSource::Fingerprint(
            certmint::client::trust::parse_fingerprint(fingerprint).ok_or_else(|| {
                WorkloadError::Usage(format!(
                    "--root-fingerprint {fingerprint:?} is not sha256:<64 hex digits>"
                ))
            })?,
        ),
        (None, Some(bundle)) => TrustSource::Bundle(bundle.clone()),
        (None, None) => {
            return Err(WorkloadError::Usage(
                "give --root-fingerprint or --ca-bundle".into(),
            ))
        }
    };
    let names = Identity {
        dns: args.dns,
        ip: args.ip,
        uri: args.uri,
    };
    keys::subject_alt_names(&names)?;
    let workload = Workload {
        server: args.server,
        trust,
        key_type: args.key_type,
        ttl: args.ttl,
        names,
        request_timeout: args.timeout.to_std(),
        output: OutputDir::open_or_create(&args.out, args.group)?,
        pending_enrollment: PendingEnrollment::default(),
    };
    let hooks = Hooks {
        command: (!args.reload_command.is_empty()).then_some(args.reload_command),
        timeout: args.reload_timeout.to_std(),
        signal: args.reload_signal.zip(args.reload_pid_file),
        turn: Default::default(),
    };
    let deadline = args
        .retry_for
        .map(|budget| tokio::time::Instant::now() + budget.to_std());
    let outcome = obtain(&workload, &hooks, &token, deadline, stops).await;
    if !matches!(outcome, Ok(Outcome::Enrolled)) {
        // Leave no empty directory behind that this command made; one that
        // existed, or that holds anything, stays.
        workload.output.remove_if_unused();
    }
    outcome
}

/// Enrolls `workload` with `token` (retrying transient failures until
/// `deadline`), installs the result and runs the hooks.
async fn obtain(
    workload: &Workload,
    hooks: &Hooks,
    token: &Token,
    deadline: Option<tokio::time::Instant>,
    stops: &mut impl StopRequests,
) -> Result<Outcome, WorkloadError> {
    let mut backoff = Backoff::new(StdDuration::from_secs(1), StdDuration::from_secs(30));
    let grace = stop::grace(workload.request_timeout);
    // Set when a stop came while the request was in flight: it was let
    // finish, and nothing is retried after it.
    let mut stopping = false;
    let meta = loop {
        // Connecting sends no token (first contact only fetches the CA
        // chain), so a stop need not wait for it.
        let result = match unless_stopped(workload.connect(), stops).await {
            Err(signal) => {
                tracing::info!("{signal}: stopping before the enrollment starts");
                return Ok(Outcome::Stopped);
            }
            Ok(Err(error)) => Err(error),
            Ok(Ok(session)) => {
                let request = workload.enroll(&session, token);
                match finish_in_flight(request, stops, grace, "enrollment").await {
                    InFlight::Done(result) => result,
                    InFlight::FinishedThenStop(result) => {
                        stopping = true;
                        result
                    }
                    InFlight::NotStarted | InFlight::Abandoned => return Ok(Outcome::Stopped),
                }
            }
        };
        match result {
            Ok(meta) => break meta,
            Err(error) if error.is_transient() && !stopping => {
                let delay = backoff.next_delay(schedule::random_unit());
                match deadline {
                    Some(deadline) if tokio::time::Instant::now() + delay < deadline => {
                        tracing::warn!("server unreachable, retrying in {delay:.1?}: {error}");
                        if let Err(signal) = unless_stopped(tokio::time::sleep(delay), stops).await
                        {
                            tracing::info!("{signal}: stopping instead of retrying");
                            return Ok(Outcome::Stopped);
                        }
                    }
                    _ => return Err(error),
                }
            }
            Err(error) => {
                if stopping && error.is_transient() {
                    tracing::warn!("the enrollment failed; stopping as asked, without retrying");
                }
                return Err(error);
            }
        }
    };
    tracing::info!(
        cert.serial = %meta.serial,
        cert.not_after = %meta.not_after,
        policy.name = %meta.policy,
        "enrolled"
    );
    // crl.pem first, as the agent does, so the one reload covers the
    // certificate and the CRLs its peers are checked against. A server
    // without CRLs (or unreachable now) only costs a warning: the agent
    // fetches them at its first refresh.
    CrlKeeper::new(
        workload.clone(),
        None,
        StdDuration::from_secs(60),
        hooks.clone(),
    )
    .update()
    .await;
    hooks.run(&workload.output, &meta.serial).await;
    println!(
        "enrolled serial={} not_after={} renew_after={} policy={} names={:?} cert={} key={} ca={}",
        meta.serial,
        rfc3339(meta.not_after),
        rfc3339(meta.renew_after),
        meta.policy,
        meta.names.summary(),
        workload.output.path(CERT_FILE).display(),
        workload.output.path(KEY_FILE).display(),
        workload.output.path(CA_FILE).display(),
    );
    if stopping {
        tracing::info!("stopping after the in-flight enrollment");
    }
    Ok(Outcome::Enrolled)
}
