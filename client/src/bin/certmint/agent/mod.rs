//! `certmint agent`: keeps a valid certificate in place for one workload.
//!
//! On start it inspects the files (key matches certificate, chains to the
//! anchor, unexpired, names as configured). Valid: renewal is scheduled at
//! the server's `renew_after` plus jitter, never past 90 % of the lifetime,
//! and at once if that time has passed — so a restart never waits past
//! expiry. Missing or unusable: it enrolls with the bootstrap token.
//!
//! While the server is unreachable (transport errors, 5xx) it retries with
//! capped exponential backoff and jitter, forever in agent mode, and never
//! sleeps past the certificate's `not_after`. Final refusals stop it with
//! one log line and a documented exit code ([`Exit`]):
//! `certificate.revoked` → 5 (never re-enrolls); `certificate.expired`,
//! `renewal.chain_too_old`, `mtls.certificate_unknown` → one enrollment
//! with the token if there is one, else 8 (expired) or the code's exit;
//! `policy.*`/`renewal.*` → 6; `token.*` or no token → 4; trust → 7.
//!
//! `--once` ensures a valid certificate is in place (enroll if needed,
//! renew if past `renew_after`), runs the hooks if the files changed and
//! exits 0; transient failures are retried for `--retry-for`, then 3.
//!
//! Signals: SIGHUP renews now. SIGTERM/SIGINT follow the rule of
//! [`stop`], shared with `certmint enroll`: they stop the agent at once
//! while it waits or connects; during an enrollment or renewal they let
//! that request finish first ([`finish_in_flight`]), because the server may
//! already have consumed a single-use bootstrap token and dropping the
//! answer would leave the workload with neither a certificate nor a token.
//! The request gets at most `request_timeout` +
//! [`STOP_GRACE_MARGIN`](stop::STOP_GRACE_MARGIN); its result is installed
//! and the hooks run as usual, then the agent exits 0. A second SIGTERM or
//! SIGINT in the meantime abandons the request and stops at once. Files are
//! replaced atomically and synchronously, so no stop leaves half a
//! generation.
//!
//! Beside the renewal loop, a [`CrlKeeper`] keeps `crl.pem` current: at
//! start, every `[crl] refresh` (jittered), and right before the reload
//! hooks run for a new certificate, so one reload covers both; a change of
//! `crl.pem` alone runs the same reload hooks. `--once` refreshes it once
//! before exiting 0.
//!
//! The submodules are the workload's building blocks, which `certmint
//! enroll` uses too: [`config`] (`agent.toml`), [`crl`] (`crl.pem`), [`keys`] (fresh keys and
//! CSRs), [`workload`] (connect, enroll, renew, check and install),
//! [`output`] (the output directory and its generations), [`hooks`]
//! (reload command and signal), [`schedule`] (when to renew, backoff) and
//! [`stop`] (what SIGTERM/SIGINT may interrupt).

pub mod config;
pub mod crl;
pub mod hooks;
pub mod keys;
pub mod output;
pub mod schedule;
pub mod stop;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration as StdDuration;

use certmint::{Duration, ProblemCode};
use time::OffsetDateTime;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::exit::Exit;
use config::AgentConfig;
use crl::CrlKeeper;
use hooks::Hooks;
use output::{Meta, OutputDir, OutputError};
use schedule::Backoff;
use stop::{finish_in_flight, unless_stopped, InFlight, StopRequests as _, StopSignals};
use workload::{
    Installed, OnDisk, PendingEnrollment, ReadyGeneration, Session, Token, Workload, WorkloadError,
};

/// The longest single sleep: the agent wakes up at least this often to
/// look at the files and the clock again (suspend/resume, clock steps,
/// files replaced by someone else).
const MAX_SLEEP: StdDuration = StdDuration::from_secs(300);

/// `certmint agent` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent configuration file.
    #[arg(long, short = 'c', default_value = "/etc/certmint/agent.toml")]
    config: PathBuf,
    /// Ensure a valid certificate is in place, then exit 0 (for boot scripts).
    #[arg(long)]
    once: bool,
    /// With --once: how long to keep retrying an unreachable server before exiting 3.
    #[arg(long, default_value = "60s")]
    retry_for: Duration,
}

/// Runs the command.
pub async fn run(args: Args) -> Exit {
    let config = match AgentConfig::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("configuration: {error}");
            return Exit::Usage;
        }
    };
    let output = match OutputDir::open_or_create(&config.output_dir, config.group.clone()) {
        Ok(output) => output,
        Err(error) => {
            tracing::error!("output directory: {error}");
            return Exit::Failure;
        }
    };
    if let Err(error) = output.repair_links() {
        // The generation itself is intact; the next install retries.
        tracing::warn!("output directory: cannot repair the file links: {error}");
    }
    if let Err(error) = output.align_access() {
        // The next install writes a generation with the right access.
        tracing::warn!("output directory: cannot apply `group` to the files in place: {error}");
    }
    let signals = match Signals::new() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!("cannot install signal handlers: {error}");
            return Exit::Failure;
        }
    };
    let hooks = Hooks {
        command: config.reload.command.clone(),
        timeout: config.reload.timeout,
        signal: config.reload.signal.clone(),
        turn: Default::default(),
    };
    let hook_due = hooks_not_run_for_current(&output, &hooks);
    let mut agent = Agent {
        workload: Workload {
            server: config.server.clone(),
            trust: config.trust.clone(),
            key_type: config.key_type,
            ttl: config.ttl,
            names: config.names.clone(),
            request_timeout: config.request_timeout,
            output,
            pending_enrollment: PendingEnrollment::default(),
        },
        hooks,
        backoff: Backoff::new(config.backoff_initial, config.backoff_max),
        hook_backoff: Backoff::new(config.backoff_initial, config.backoff_max),
        hook_due,
        deadline: args
            .once
            .then(|| tokio::time::Instant::now() + args.retry_for.to_std()),
        once: args.once,
        jitter_for: None,
        announced: None,
        crl: None,
        config,
    };
    let keeper = std::sync::Arc::new(tokio::sync::Mutex::new(CrlKeeper::new(
        agent.workload.clone(),
        agent.config.crl.url.clone(),
        agent.config.crl.refresh,
        agent.hooks.clone(),
    )));
    agent.crl = Some(keeper.clone());
    let mut signals = signals;
    let exit = if args.once {
        let exit = agent.run(&mut signals).await;
        if exit == Exit::Ok {
            // One refresh before exiting, bounded like a request: a CRL
            // server that does not answer must not hold up a boot.
            let limit = agent.crl_limit();
            let refreshed = async { keeper.lock().await.refresh_once().await };
            if tokio::time::timeout(limit, refreshed).await.is_err() {
                tracing::warn!("the CRL refresh did not finish in {limit:?}; crl.pem is as it was");
            }
        }
        exit
    } else {
        // Runs beside the renewal loop and ends with it; a refresh writes
        // crl.pem synchronously, so stopping never leaves half a file.
        let crls = tokio::spawn(CrlKeeper::run(keeper));
        let exit = agent.run(&mut signals).await;
        crls.abort();
        exit
    };
    if exit != Exit::Ok {
        tracing::error!(exit.code = exit as u8, "certmint agent stopped");
    }
    exit
}

/// The serial of the certificate in place when its reload hooks are not
/// recorded as having succeeded: they failed, or the agent stopped (crash,
/// power loss, a restart) between writing the files and running them. The
/// workload may still serve the previous certificate, so they run again.
fn hooks_not_run_for_current(output: &OutputDir, hooks: &Hooks) -> Option<String> {
    if hooks.command.is_none() && hooks.signal.is_none() {
        return None;
    }
    let serial = output.current().ok().flatten()?.meta?.serial;
    if output.reloaded_serial().as_deref() == Some(serial.as_str()) {
        return None;
    }
    tracing::info!(
        cert.serial = %serial,
        "the reload hooks are not recorded as having run for the certificate in place; running them"
    );
    Some(serial)
}

/// What to do next.
enum Action {
    Enroll(String),
    Renew(Box<Installed>),
}

enum Wake {
    Timer,
    RenewNow,
    Stop,
}

struct Signals {
    stop: StopSignals,
    hup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            stop: StopSignals::new()?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

struct Agent {
    config: AgentConfig,
    workload: Workload,
    hooks: Hooks,
    backoff: Backoff,
    /// Retries of a failed reload hook, apart from the server's backoff.
    hook_backoff: Backoff,
    /// Serial of the installed certificate whose reload hook failed: run
    /// again with backoff, since the next renewal's hook would come only
    /// after this certificate's predecessor, which the workload still
    /// serves, has expired.
    hook_due: Option<String>,
    /// `--once`: give up on transient failures after this instant.
    deadline: Option<tokio::time::Instant>,
    once: bool,
    /// The jitter draw for the current serial: drawn once per certificate,
    /// so waking up early to re-check never moves the renewal time.
    jitter_for: Option<(String, f64)>,
    /// Serial whose schedule was last logged (one line per certificate).
    announced: Option<String>,
    /// Keeps crl.pem current; brought up to date before each hook run.
    crl: Option<crl::SharedCrlKeeper>,
}

impl Agent {
    async fn run(&mut self, signals: &mut Signals) -> Exit {
        let mut session: Option<Session> = None;
        // Set after a refusal that a fresh enrollment can cure; cleared
        // after that one enrollment attempt.
        let mut enroll_instead: Option<String> = None;
        let mut reenrolled = false;
        // A renewal asked for by SIGHUP stays due until it succeeds or is
        // refused, so a transient failure retries it instead of going back
        // to waiting for the schedule.
        let mut renew_now = false;
        // Whether a valid certificate is known to be in place: seen on disk
        // or just installed. With `--once`, a stop exits 0 only then.
        let mut in_place = false;
        // An issued certificate whose files could not be written (disk
        // full, I/O error): written again with backoff, never asked for
        // again, since the server has already spent a token use or a
        // renewal on it and the key exists only here.
        let mut not_installed: Option<Box<ReadyGeneration>> = None;
        loop {
            if let Some(ready) = not_installed.take() {
                if ready.meta.not_after <= OffsetDateTime::now_utc() {
                    tracing::error!(
                        cert.serial = %ready.meta.serial,
                        "the issued certificate expired before it could be written; dropping it"
                    );
                } else {
                    match self.workload.write(*ready) {
                        Ok(meta) => {
                            in_place = true;
                            renew_now = false;
                            reenrolled = false;
                            self.log_installed("installed after retrying", &meta);
                            self.installed(&meta, signals).await;
                            if self.once {
                                return Exit::Ok;
                            }
                        }
                        Err(WorkloadError::NotInstalled { ready, source }) => {
                            let waited =
                                self.wait_to_write_again(&ready, &source, in_place, signals);
                            if let Some(exit) = waited.await {
                                return exit;
                            }
                            not_installed = Some(ready);
                        }
                        Err(error) => return stop_for(&error),
                    }
                    continue;
                }
            }
            let current_session = match &session {
                Some(session) => session.clone(),
                None => {
                    // Connecting sends no token, so a stop need not wait for it.
                    let connected =
                        match unless_stopped(self.workload.connect(), &mut signals.stop).await {
                            Ok(connected) => connected,
                            Err(signal) => {
                                tracing::info!("{signal}: stopping");
                                return self.stopped(in_place);
                            }
                        };
                    match connected {
                        Ok(connected) => {
                            session = Some(connected.clone());
                            connected
                        }
                        Err(error) => {
                            match self.after_failure(error, None, in_place, signals).await {
                                Err(exit) => return exit,
                                Ok(Wake::Stop) => return self.stopped(in_place),
                                Ok(Wake::RenewNow) => {
                                    renew_now = true;
                                    continue;
                                }
                                Ok(Wake::Timer) => continue,
                            }
                        }
                    }
                }
            };
            let now = OffsetDateTime::now_utc();
            // Kept until the recovery enrollment gets an answer: a server
            // that is briefly unreachable must not turn it back into the
            // renewal that was refused.
            let recovering = enroll_instead.take();
            let on_disk = match recovering.clone() {
                Some(reason) => Err(reason),
                None => Ok(self.workload.inspect(&current_session.anchors, now)),
            };
            in_place = matches!(on_disk, Ok(OnDisk::Valid(_)));
            // A failed hook is retried only while its certificate is not
            // yet due for renewal (a renewal runs the hooks anyway), so a
            // hook that keeps failing never holds back a renewal.
            let retry_hook = match &on_disk {
                Ok(OnDisk::Valid(installed))
                    if self.hook_due.as_deref() == Some(installed.meta.serial.as_str()) =>
                {
                    if self.renewal_due(&installed.meta) {
                        // Due for renewal with the hooks still failing: try
                        // them once before each renewal attempt (paced by
                        // its backoff), so a server outage does not also
                        // keep the workload on the previous certificate.
                        self.reload(&installed.meta.serial).await;
                        false
                    } else {
                        true
                    }
                }
                _ => false,
            };
            let action = match on_disk {
                Err(reason) => Action::Enroll(reason),
                Ok(on_disk) => match on_disk {
                    OnDisk::Missing => Action::Enroll("no certificate yet".into()),
                    OnDisk::Unusable(reason) => {
                        Action::Enroll(format!("the files on disk are unusable: {reason}"))
                    }
                    OnDisk::OtherNames(installed) => Action::Enroll(format!(
                        "the certificate names {} but the configuration asks for {}",
                        installed.meta.names.summary(),
                        self.config.names.summary()
                    )),
                    OnDisk::Expired(installed) => {
                        if self.token().is_none() {
                            tracing::error!(
                                cert.serial = %installed.meta.serial,
                                cert.not_after = %rfc3339(installed.meta.not_after),
                                "the certificate has expired and there is no token to enroll again"
                            );
                            return Exit::CertificateExpired;
                        }
                        Action::Enroll(format!(
                            "the certificate expired at {}",
                            rfc3339(installed.meta.not_after)
                        ))
                    }
                    OnDisk::Valid(installed) if renew_now => Action::Renew(Box::new(installed)),
                    OnDisk::Valid(installed) if retry_hook && self.once => {
                        // `--once` (a boot-time unit that services start
                        // after) runs the hooks due from an earlier run once
                        // and exits 0 either way: never waits on them.
                        self.reload(&installed.meta.serial).await;
                        self.hook_due = None;
                        continue;
                    }
                    OnDisk::Valid(installed) if retry_hook => {
                        let wait = schedule::wait_until(now, self.renewal_time(&installed.meta));
                        let delay = self
                            .hook_backoff
                            .next_delay(schedule::random_unit())
                            .min(wait);
                        tracing::warn!(
                            cert.serial = %installed.meta.serial,
                            "running the reload hook again in {delay:.1?}"
                        );
                        match sleep(delay, signals).await {
                            Wake::Stop => return Exit::Ok,
                            Wake::RenewNow => renew_now = true,
                            Wake::Timer => self.reload(&installed.meta.serial).await,
                        }
                        continue;
                    }
                    OnDisk::Valid(installed) => {
                        match self.wait_for_renewal(&installed.meta, now, signals).await {
                            Wake::Stop => return Exit::Ok,
                            Wake::Timer if self.once => return Exit::Ok,
                            Wake::Timer if !self.renewal_due(&installed.meta) => continue,
                            Wake::Timer => Action::Renew(Box::new(installed)),
                            Wake::RenewNow => {
                                renew_now = true;
                                Action::Renew(Box::new(installed))
                            }
                        }
                    }
                },
            };
            let (not_after, what) = match &action {
                Action::Renew(installed) => (Some(installed.meta.not_after), "renewal"),
                Action::Enroll(_) => (None, "enrollment"),
            };
            let grace = stop::grace(self.workload.request_timeout);
            let request = self.act(&current_session, action);
            let (outcome, stopping) =
                match finish_in_flight(request, &mut signals.stop, grace, what).await {
                    InFlight::Done(outcome) => (outcome, false),
                    InFlight::FinishedThenStop(outcome) => (outcome, true),
                    InFlight::NotStarted | InFlight::Abandoned => return self.stopped(in_place),
                };
            match outcome {
                Ok(meta) => {
                    in_place = true;
                    renew_now = false;
                    // A later refusal of the same kind may be cured again.
                    reenrolled = false;
                    // Also when stopping: the new files are in place, and a
                    // workload that outlives the agent must load them; no
                    // later start would run the hook for this generation.
                    self.installed(&meta, signals).await;
                    if stopping {
                        tracing::info!("stopping after the in-flight {what}");
                        return Exit::Ok;
                    }
                    if self.once {
                        return Exit::Ok;
                    }
                }
                // Asked to stop: no retry and no re-enrollment; a final
                // refusal keeps its documented exit code.
                Err(WorkloadError::NotInstalled { ready, source }) if !stopping => {
                    tracing::error!(
                        cert.serial = %ready.meta.serial,
                        "the issued certificate could not be written; keeping it to write again: {source}"
                    );
                    let waited = self.wait_to_write_again(&ready, &source, in_place, signals);
                    if let Some(exit) = waited.await {
                        return exit;
                    }
                    not_installed = Some(ready);
                }
                Err(error) if stopping => {
                    if !error.is_transient() {
                        return stop_for(&error);
                    }
                    tracing::warn!(
                        "the {what} failed; stopping as asked, without retrying: {error}"
                    );
                    return self.stopped(in_place);
                }
                Err(error) => {
                    let cure = matches!(
                        error.code(),
                        Some(
                            ProblemCode::CertificateExpired
                                | ProblemCode::RenewalChainTooOld
                                | ProblemCode::MtlsCertificateUnknown
                        )
                    );
                    if cure && not_after.is_some() && !reenrolled && self.token().is_some() {
                        reenrolled = true;
                        enroll_instead = Some(format!("renewal refused: {error}"));
                        continue;
                    }
                    if error.is_transient() && recovering.is_some() {
                        enroll_instead = recovering;
                    }
                    match self
                        .after_failure(error, not_after, in_place, signals)
                        .await
                    {
                        Err(exit) => return exit,
                        Ok(Wake::Stop) => return self.stopped(in_place),
                        Ok(Wake::RenewNow) => renew_now = true,
                        Ok(Wake::Timer) => {}
                    }
                }
            }
        }
    }

    /// The exit after a stop: `--once` promises a valid certificate in
    /// place when it exits 0, so it exits [`Exit::Stopped`] unless one is
    /// (`in_place`); the long-running agent always exits 0 on a stop.
    fn stopped(&self, in_place: bool) -> Exit {
        stop_exit(self.once, in_place)
    }

    /// Enrolls or renews; logs the result on one line.
    async fn act(&self, session: &Session, action: Action) -> Result<Meta, WorkloadError> {
        match action {
            Action::Enroll(reason) => {
                let token = self.token().ok_or_else(|| {
                    WorkloadError::NoToken(self.config.output_dir.display().to_string())
                })?;
                tracing::info!("enrolling: {reason}");
                let meta = self.workload.enroll(session, &token).await?;
                self.log_installed("enrolled", &meta);
                Ok(meta)
            }
            Action::Renew(installed) => {
                let meta = self.workload.renew(session, &installed).await?;
                self.log_installed("renewed", &meta);
                Ok(meta)
            }
        }
    }

    /// Waits with backoff before writing `ready` again; `Some(exit)` when
    /// the agent stops instead (the certificate is then lost).
    async fn wait_to_write_again(
        &mut self,
        ready: &ReadyGeneration,
        source: &OutputError,
        in_place: bool,
        signals: &mut Signals,
    ) -> Option<Exit> {
        let what = format!(
            "could not write the issued certificate {}",
            ready.meta.serial
        );
        match self
            .retry_later(&what, source, Exit::Failure, None, signals)
            .await
        {
            Err(exit) => Some(exit),
            Ok(Wake::Stop) => Some(self.stopped(in_place)),
            Ok(_) => None,
        }
    }

    /// After a new generation is in place: backoff reset, reload hooks, and
    /// any SIGHUP that arrived meanwhile consumed (it asked for what just
    /// happened: no second renewal).
    async fn installed(&mut self, meta: &Meta, signals: &mut Signals) {
        self.backoff.reset();
        self.reload(&meta.serial).await;
        drain_renew_requests(signals).await;
    }

    /// Runs the reload hooks for `serial`; remembers a failure to retry.
    /// `crl.pem` is brought up to date first (a new chain may name another
    /// issuing CA), so the one reload covers it too.
    async fn reload(&mut self, serial: &str) {
        if let Some(keeper) = &self.crl {
            let limit = self.crl_limit();
            let updated = async {
                let mut keeper = keeper.lock().await;
                keeper.update().await;
                keeper.hooks_cover_crl_pem();
            };
            if tokio::time::timeout(limit, updated).await.is_err() {
                tracing::warn!("the CRL refresh did not finish in {limit:?}; reloading without it");
            }
        }
        if self.hooks.run(&self.workload.output, serial).await {
            self.hook_due = None;
            self.hook_backoff.reset();
        } else {
            self.hook_due = Some(serial.to_owned());
        }
    }

    /// How long a CRL refresh may hold up a hook run or an exit.
    fn crl_limit(&self) -> StdDuration {
        self.config.request_timeout + stop::STOP_GRACE_MARGIN
    }

    fn log_installed(&self, what: &str, meta: &Meta) {
        let key = self
            .workload
            .output
            .current()
            .ok()
            .flatten()
            .and_then(|current| workload::key_fingerprint(&current.cert_pem))
            .unwrap_or_default();
        tracing::info!(
            cert.serial = %meta.serial,
            cert.not_after = %rfc3339(meta.not_after),
            cert.renew_after = %rfc3339(meta.renew_after),
            key.spki_sha256 = %key,
            policy.name = %meta.policy,
            policy.version = meta.policy_version,
            "{what}"
        );
    }

    /// A transient failure: wait with backoff and say what woke us, or give
    /// up in `--once` mode past the deadline: exit 0 when a valid
    /// certificate is still `in_place` (what `--once` promises), else
    /// [`Exit::Unreachable`]. A final one: `Err(exit)`.
    async fn after_failure(
        &mut self,
        error: WorkloadError,
        not_after: Option<OffsetDateTime>,
        in_place: bool,
        signals: &mut Signals,
    ) -> Result<Wake, Exit> {
        if !error.is_transient() {
            return Err(stop_for(&error));
        }
        let give_up = if in_place {
            Exit::Ok
        } else {
            Exit::Unreachable
        };
        self.retry_later("server unreachable", &error, give_up, not_after, signals)
            .await
    }

    /// Waits with backoff before trying again after a transient failure
    /// (`what` failed, because of `cause`), or gives up in `--once` mode
    /// past the deadline with `give_up`.
    async fn retry_later(
        &mut self,
        what: &str,
        cause: &dyn std::fmt::Display,
        give_up: Exit,
        not_after: Option<OffsetDateTime>,
        signals: &mut Signals,
    ) -> Result<Wake, Exit> {
        let mut delay = self.backoff.next_delay(schedule::random_unit());
        if let Some(not_after) = not_after {
            delay = schedule::before_expiry(OffsetDateTime::now_utc(), not_after, delay);
        }
        if let Some(deadline) = self.deadline {
            if tokio::time::Instant::now() + delay >= deadline {
                if give_up == Exit::Ok {
                    tracing::warn!(
                        "{what} after the retry budget; the current certificate is valid and stays in place: {cause}"
                    );
                } else {
                    tracing::error!("{what} after the retry budget: {cause}");
                }
                return Err(give_up);
            }
        }
        tracing::warn!(
            retry.attempt = self.backoff.failures(),
            "{what}, retrying in {delay:.1?}: {cause}"
        );
        Ok(sleep(delay, signals).await)
    }

    /// True once the (jittered) renewal time of `meta` has come; in
    /// `--once` mode the server's own hint counts.
    fn renewal_due(&mut self, meta: &Meta) -> bool {
        OffsetDateTime::now_utc() >= self.renewal_time(meta)
    }

    fn renewal_time(&mut self, meta: &Meta) -> OffsetDateTime {
        if self.once {
            return meta.renew_after;
        }
        let unit = match &self.jitter_for {
            Some((serial, unit)) if *serial == meta.serial => *unit,
            _ => {
                let unit = schedule::random_unit();
                self.jitter_for = Some((meta.serial.clone(), unit));
                unit
            }
        };
        schedule::renewal_time(meta, self.config.jitter, unit)
    }

    /// Sleeps until the renewal time (at most [`MAX_SLEEP`] at a time);
    /// in `--once` mode returns at once with `Timer` if nothing is due.
    async fn wait_for_renewal(
        &mut self,
        meta: &Meta,
        now: OffsetDateTime,
        signals: &mut Signals,
    ) -> Wake {
        let at = self.renewal_time(meta);
        if self.once {
            return if now >= at {
                Wake::RenewNow
            } else {
                Wake::Timer
            };
        }
        if self.announced.as_deref() != Some(meta.serial.as_str()) {
            self.announced = Some(meta.serial.clone());
            tracing::info!(
                cert.serial = %meta.serial,
                cert.not_after = %rfc3339(meta.not_after),
                "certificate valid; renewal at {}",
                rfc3339(at)
            );
        }
        let wait = schedule::wait_until(now, at);
        if wait.is_zero() {
            return Wake::RenewNow;
        }
        sleep(wait.min(MAX_SLEEP), signals).await
    }

    /// The bootstrap token: `token_file`, else `CERTMINT_TOKEN`. Read when
    /// needed, so a token file may be removed once enrolled.
    fn token(&self) -> Option<Token> {
        if let Some(path) = &self.config.token_file {
            match Token::from_file(path) {
                Ok(Some(token)) => return Some(token),
                Ok(None) => {}
                Err(error) => tracing::debug!("{error}"),
            }
        }
        std::env::var("CERTMINT_TOKEN")
            .ok()
            .and_then(|text| Token::new(&text))
    }
}

/// See [`Agent::stopped`].
fn stop_exit(once: bool, in_place: bool) -> Exit {
    if once && !in_place {
        Exit::Stopped
    } else {
        Exit::Ok
    }
}

/// Logs a final failure on one line; the exit it leads to.
fn stop_for(error: &WorkloadError) -> Exit {
    // `problem.code` only for server refusals: never an empty field.
    let code = error.code().map(ProblemCode::as_str);
    tracing::error!(problem.code = code, "stopping: {error}");
    error.exit()
}

/// Consumes a SIGHUP that is already pending, without waiting; true if
/// there was one.
async fn drain_renew_requests(signals: &mut Signals) -> bool {
    let pending = matches!(
        tokio::time::timeout(StdDuration::ZERO, signals.hup.recv()).await,
        Ok(Some(()))
    );
    if pending {
        tracing::info!("SIGHUP during the renewal: already renewed");
    }
    pending
}

/// Sleeps for `duration` unless a signal comes first.
async fn sleep(duration: StdDuration, signals: &mut Signals) -> Wake {
    tokio::select! {
        () = tokio::time::sleep(duration) => Wake::Timer,
        signal = signals.stop.next() => {
            tracing::info!("{signal}: stopping");
            Wake::Stop
        }
        _ = signals.hup.recv() => {
            tracing::info!("SIGHUP: renewing now");
            Wake::RenewNow
        }
    }
}

/// RFC 3339 for summaries; falls back to the debug form if formatting fails.
pub fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_finds_only_a_pending_sighup() {
        let mut signals = Signals::new().expect("signal handlers");
        assert!(
            !drain_renew_requests(&mut signals).await,
            "nothing pending yet"
        );
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP)
            .expect("send SIGHUP to ourselves");
        tokio::time::sleep(StdDuration::from_millis(50)).await;
        assert!(
            drain_renew_requests(&mut signals).await,
            "the SIGHUP is pending"
        );
        assert!(!drain_renew_requests(&mut signals).await, "and consumed");
    }

    #[test]
    fn only_once_without_a_certificate_in_place_exits_stopped() {
        assert_eq!(stop_exit(true, false), Exit::Stopped);
        assert_eq!(stop_exit(true, true), Exit::Ok);
        assert_eq!(stop_exit(false, false), Exit::Ok);
        assert_eq!(stop_exit(false, true), Exit::Ok);
    }
}
