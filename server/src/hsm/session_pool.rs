//! Loaded PKCS#11 modules and the pool of logged-in sessions.
//!
//! A `cryptoki::session::Session` is `Send` but not `Sync`, so concurrent
//! signing needs one session per in-flight operation. The pool keeps up to
//! `capacity` sessions and lends each to one caller at a time. A session
//! idle for a while, or lent for work that must not be retried (key
//! generation), is validated with `C_GetSessionInfo` first (logging in
//! again if the login state was lost); a recently used one is lent as is,
//! saving a round trip per signature on a network HSM. A session the token
//! reports gone is thrown away and the operation is retried once on a
//! fresh one. While the token stays unreachable, attempts to reopen a
//! session back off exponentially (100 ms to 5 s) and requests in between
//! fail at once with [`HsmError::Reconnecting`] (503 at the API). The
//! pool's lock is held only to take or give back a session, never across a
//! `C_*` call that does crypto. A PIN the token refuses is tried once, then
//! never again ([`HsmError::LoginSuspended`]): retrying it would lock the
//! token.
//!
//! Modules are loaded once per path per process ([`Module::load`]): a
//! PKCS#11 library has one global state, so two `Hsm` handles on the same
//! module must share it, and must share the knowledge that it was
//! reinitialized. That is the *generation*: it goes up each time the module
//! is reinitialized after a loss, and a session opened under an older
//! generation is never used (nor closed) again, because the token may have
//! handed out its handle number to a new session.
//!
//! Pooled sessions are opened with cryptoki's "no drop" variant so that
//! dropping a dead session never sends `C_CloseSession` for a handle that
//! may now belong to someone else; live sessions are closed explicitly when
//! the pool is dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;

use super::error::{login_error, DuringExt, HsmError, Pkcs11Failure};

/// How long a caller waits for a pooled session before giving up with a
/// transient error (the API turns it into 503 + `Retry-After`).
const SESSION_WAIT: Duration = Duration::from_secs(30);

/// A pooled session idle for longer than this is checked with
/// `C_GetSessionInfo` (and logged in again if needed) before it is lent out.
const VALIDATE_AFTER_IDLE: Duration = Duration::from_secs(5);

/// First wait after a failed attempt to reopen a session on a lost token.
const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How long [`finalize_all`] waits for PKCS#11 calls in flight (a renewal
/// thread, a request whose client went away) before it gives up on
/// `C_Finalize` and leaves the module to process exit.
const FINALIZE_WAIT: Duration = Duration::from_secs(5);

/// Every module this process has loaded, by path. Entries live as long as
/// the process: unloading a PKCS#11 library that other handles may still
/// use is never safe.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();

/// Calls `C_Finalize` on every module this process loaded, once no call is
/// in flight on it. For the very end of a process only: every handle, pool
/// and signer stops working ([`HsmError::Finalized`]).
pub(super) fn finalize_all() {
    let Some(registry) = MODULES.get() else {
        return;
    };
    for module in lock(registry).values() {
        module.finalize_when_idle(FINALIZE_WAIT);
    }
}

/// A loaded and initialized PKCS#11 module.
pub(super) struct Module {
    pkcs11: Pkcs11,
    /// Held for reading by every pool operation across its `C_*` calls and
    /// for writing by [`Module::finalize_when_idle`], so `C_Finalize` never
    /// runs under a call in flight (PKCS#11 §5.4 leaves that undefined;
    /// SoftHSM2 frees the objects the call is using). `true` once
    /// finalized.
    calls: RwLock<bool>,
    /// The current generation; the mutex also serializes reinitialization.
    generation: Mutex<u64>,
    /// Held across "is the label free?" + `C_GenerateKeyPair`; see
    /// [`Module::serialize_key_generation`].
    key_generation: Mutex<()>,
}

impl Module {
    /// Loads and initializes the module at `path`, or returns the instance
    /// this process already has.
    pub(super) fn load(path: &Path) -> Result<Arc<Module>, HsmError> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let registry = MODULES.get_or_init(Mutex::default);
        let mut modules = lock(registry);
        if let Some(module) = modules.get(&key) {
            return Ok(Arc::clone(module));
        }
        let module_load = |source| HsmError::ModuleLoad {
            path: path.to_path_buf(),
            source: Pkcs11Failure::new(source),
        };
        let pkcs11 = Pkcs11::new(path).map_err(module_load)?;
        initialize(&pkcs11).map_err(module_load)?;
        let module = Arc::new(Module {
            pkcs11,
            calls: RwLock::new(false),
            generation: Mutex::new(0),
            key_generation: Mutex::new(()),
        });
        modules.insert(key, Arc::clone(&module));
        Ok(module)
    }

    pub(super) fn pkcs11(&self) -> &Pkcs11 {
        &self.pkcs11
    }

    /// Marks a span of `C_*` calls: while the guard lives the module is not
    /// finalized. [`HsmError::Finalized`] once it has been.
    fn enter(&self) -> Result<RwLockReadGuard<'_, bool>, HsmError> {
        let guard = self.calls.read().unwrap_or_else(PoisonError::into_inner);
        if *guard {
            return Err(HsmError::Finalized);
        }
        Ok(guard)
    }

    /// `C_Finalize`, once every call in flight has returned, waiting at most
    /// `wait`. Returns whether the module was finalized; if a call is still
    /// running after `wait` (a hung network HSM), the module is left alone,
    /// since finalizing under it is worse than not finalizing at all.
    pub(super) fn finalize_when_idle(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut finalized = loop {
            match self.calls.try_write() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => break poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    tracing::warn!(
                        waited_ms = wait.as_millis(),
                        "hsm: a PKCS#11 call is still running; leaving C_Finalize to process exit"
                    );
                    return false;
                }
            }
        };
        if *finalized {
            return true;
        }
        *finalized = true;
        if let Err(error) = self.pkcs11.clone().finalize() {
            tracing::debug!(error = %error, "hsm: C_Finalize at exit failed");
        }
        true
    }

    /// Serializes key generation within the process.
    ///
    /// Two reasons: it makes the label check and the generation one step
    /// for every handle in this process (another process can still race;
    /// the lookups' ambiguity check catches that afterwards), and SoftHSM2's
    /// file object store fails concurrent object creation with
    /// `CKR_GENERAL_ERROR` (SoftHSMv2 issue #573). Key generation is a rare
    /// ceremony, so the lock costs nothing; signing is not serialized.
    pub(super) fn serialize_key_generation(&self) -> MutexGuard<'_, ()> {
        lock(&self.key_generation)
    }

    /// The current generation (see the module doc).
    pub(super) fn generation(&self) -> u64 {
        *lock(&self.generation)
    }

    /// Calls `C_Initialize` again after the module reported it was not
    /// initialized (or the device went away), and starts a new generation.
    /// Does nothing if another caller already did so since `observed`.
    fn reinitialize(&self, observed: u64) -> Result<(), HsmError> {
        let mut generation = lock(&self.generation);
        if *generation != observed {
            return Ok(());
        }
        initialize(&self.pkcs11).during("C_Initialize")?;
        *generation += 1;
        tracing::warn!(
            hsm.generation = *generation,
            "hsm: PKCS#11 module reinitialized"
        );
        Ok(())
    }

    /// The slot holding the token labelled `token_label`.
    pub(super) fn find_slot(&self, token_label: &str) -> Result<Slot, HsmError> {
        let slots = self.pkcs11.get_slots_with_token().during("C_GetSlotList")?;
        let mut found = None;
        for slot in slots {
            let info = self.pkcs11.get_token_info(slot).during("C_GetTokenInfo")?;
            if info.token_initialized() && trim_padding(info.label()) == token_label {
                if found.is_some() {
                    return Err(HsmError::TokenAmbiguous {
                        label: token_label.to_owned(),
                    });
                }
                found = Some(slot);
            }
        }
        found.ok_or_else(|| HsmError::TokenNotFound {
            label: token_label.to_owned(),
        })
    }
}

/// Whether a failed operation is retried once on a fresh session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retry {
    /// Retry once: the operation is idempotent (sign, find, read).
    Once,
    /// Never retry: the operation may have taken effect (key generation).
    Never,
}

/// A bounded pool of logged-in read/write sessions on one token.
pub(super) struct SessionPool {
    module: Arc<Module>,
    token_label: String,
    pin: SecretString,
    /// Held across `C_Login`. Serializing logins means a wrong PIN costs
    /// the token exactly one failed attempt, not one per session.
    login: Mutex<()>,
    /// Set (under `login`) once the token refused the PIN (see
    /// [`HsmError::LoginSuspended`]); read without a lock on every
    /// operation, which is the signing hot path.
    login_refused: AtomicBool,
    /// Test seam: how many `C_Login` calls the pool has sent.
    #[cfg(test)]
    login_attempts: std::sync::atomic::AtomicUsize,
    capacity: usize,
    state: Mutex<PoolState>,
    /// Test seam: faults injected before the Nth operation.
    #[cfg(test)]
    faults: Mutex<FaultPlan>,
    /// Signalled whenever a session is returned or a pool slot frees up.
    returned: Condvar,
}

struct PoolState {
    idle: Vec<PooledSession>,
    /// Sessions counted against `capacity`: idle plus lent out.
    open: usize,
    slot: Slot,
    /// The module generation `slot` and `idle` belong to.
    generation: u64,
    /// Set while the token is unreachable: no attempt to reopen a session
    /// before `retry_at`.
    outage: Option<Outage>,
}

/// Capped exponential backoff between attempts to reach a lost token.
#[derive(Clone, Copy, Debug)]
struct Outage {
    failures: u32,
    retry_at: Instant,
}

impl Outage {
    /// The outage after one more failed attempt at `now`.
    fn after_failure(previous: Option<Outage>, now: Instant) -> Outage {
        let failures = previous.map_or(1, |outage| outage.failures.saturating_add(1));
        let exponent = failures.saturating_sub(1).min(16);
        let delay = RECONNECT_INITIAL
            .saturating_mul(1 << exponent)
            .min(RECONNECT_MAX);
        Outage {
            failures,
            retry_at: now + delay,
        }
    }
}

/// When [`SessionPool::acquire`] checks an idle session before lending it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Always (`C_GetSessionInfo`, and a login if it was lost).
    Always,
    /// Only if it has been idle for [`VALIDATE_AFTER_IDLE`]; the caller
    /// retries once on a fresh session if it turns out dead.
    IfIdle,
}

struct PooledSession {
    session: Session,
    generation: u64,
    /// When the session last completed an operation (or was opened).
    last_used: Instant,
}

impl SessionPool {
    /// Creates the pool for the token labelled `token_label`, and opens one
    /// session right away so a wrong PIN or missing token fails at start.
    pub(super) fn open(
        module: Arc<Module>,
        token_label: &str,
        pin: SecretString,
        capacity: usize,
    ) -> Result<SessionPool, HsmError> {
        let generation = module.generation();
        let slot = module.find_slot(token_label)?;
        let pool = SessionPool {
            module,
            token_label: token_label.to_owned(),
            pin,
            login: Mutex::new(()),
            login_refused: AtomicBool::new(false),
            #[cfg(test)]
            login_attempts: std::sync::atomic::AtomicUsize::new(0),
            capacity: capacity.max(1),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
                slot,
                generation,
                outage: None,
            }),
            returned: Condvar::new(),
            #[cfg(test)]
            faults: Mutex::default(),
        };
        drop(pool.acquire(Check::Always)?);
        Ok(pool)
    }

    pub(super) fn module(&self) -> &Module {
        &self.module
    }

    /// The slot of the token, as of the current generation.
    pub(super) fn slot(&self) -> Result<Slot, HsmError> {
        let _calls = self.module.enter()?;
        let mut state = self.lock_state();
        self.refresh_generation(&mut state)?;
        Ok(state.slot)
    }

    /// Runs `work` on a validated, logged-in session.
    ///
    /// `work` receives the session and the module generation it belongs
    /// to (for caching object handles). If it fails because the session,
    /// login or device went away and `retry` allows, the session is
    /// dropped and `work` runs once more on a fresh one.
    pub(super) fn run<T>(
        &self,
        retry: Retry,
        work: impl Fn(&Session, u64) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        // Work that may not be retried (key generation) gets a session
        // checked just now; retriable work skips the check on a session
        // that worked recently.
        let check = match retry {
            Retry::Never => Check::Always,
            Retry::Once => Check::IfIdle,
        };
        let _calls = self.module.enter()?;
        // Not even a session is touched while the PIN is known to be wrong.
        if self.login_refused.load(Ordering::Acquire) {
            return Err(self.login_suspended());
        }
        let mut lease = self.acquire(check)?;
        match self.attempt(&lease, &work) {
            Err(error) if error.is_session_fault() && retry == Retry::Once => {
                tracing::warn!(error = %error, "hsm: session lost, retrying once on a fresh session");
                lease.discard_after(&error);
                drop(lease);
                let mut lease = self.acquire(Check::Always)?;
                let result = self.attempt(&lease, &work);
                if let Err(error) = &result {
                    lease.discard_after(error);
                }
                result
            }
            result => {
                if let Err(error) = &result {
                    lease.discard_after(error);
                }
                result
            }
        }
    }

    /// One try of `work` on a leased session; in tests, a planned fault
    /// replaces the call (style item 6: fail the Nth call with a chosen
    /// return code, as Boulder's `MockCtx` does).
    fn attempt<T>(
        &self,
        lease: &Lease<'_>,
        work: &impl Fn(&Session, u64) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        #[cfg(test)]
        if let Some(return_value) = lock(&self.faults).next_fault() {
            return Err(super::error::device_error(
                "injected fault",
                CryptokiError::Pkcs11(return_value, cryptoki::context::Function::Sign),
            ));
        }
        work(lease.session(), lease.generation())
    }

    /// Takes a validated session from the pool, opening one if the pool is
    /// below capacity, waiting up to [`SESSION_WAIT`] otherwise.
    fn acquire(&self, check: Check) -> Result<Lease<'_>, HsmError> {
        let deadline = Instant::now() + SESSION_WAIT;
        let mut reinitialized = false;
        let mut state = self.lock_state();
        loop {
            if let Some(outage) = state.outage {
                let now = Instant::now();
                if now < outage.retry_at {
                    return Err(HsmError::Reconnecting {
                        retry_in: outage.retry_at - now,
                    });
                }
            }
            if let Err(error) = self.refresh_generation(&mut state) {
                self.note_reconnect_failure(&mut state, &error);
                return Err(error);
            }
            if let Some(pooled) = state.idle.pop() {
                drop(state);
                // A session that worked moments ago is used as is: a dead
                // one fails its first call with a session fault, and `run`
                // retries once on a fresh session. Skipping the check saves
                // a round trip per signature on a network HSM.
                if check == Check::IfIdle && pooled.last_used.elapsed() < VALIDATE_AFTER_IDLE {
                    return Ok(Lease::new(self, pooled));
                }
                match self.validate(&pooled.session) {
                    Ok(()) => return Ok(Lease::new(self, pooled)),
                    Err(error) => {
                        // A session that failed only its login is alive:
                        // keep it, since a dropped one is never closed.
                        self.give_back(pooled, !error.is_session_fault());
                        if !error.is_session_fault() {
                            return Err(error);
                        }
                        tracing::debug!(error = %error, "hsm: dropping a dead pooled session");
                    }
                }
                state = self.lock_state();
                continue;
            }
            if state.open < self.capacity {
                state.open += 1;
                let (slot, generation) = (state.slot, state.generation);
                drop(state);
                match self.open_logged_in(slot) {
                    Ok(session) => {
                        let mut relocked = self.lock_state();
                        if let Some(outage) = relocked.outage.take() {
                            tracing::info!(
                                hsm.failed_attempts = outage.failures,
                                "hsm: token reachable again"
                            );
                        }
                        drop(relocked);
                        return Ok(Lease::new(
                            self,
                            PooledSession {
                                session,
                                generation,
                                last_used: Instant::now(),
                            },
                        ));
                    }
                    Err(error) => {
                        let mut relocked = self.lock_state();
                        relocked.open -= 1;
                        self.returned.notify_one();
                        if !error.is_session_fault() || reinitialized {
                            self.note_reconnect_failure(&mut relocked, &error);
                            return Err(error);
                        }
                        drop(relocked);
                        reinitialized = true;
                        tracing::warn!(error = %error, "hsm: cannot open a session, reinitializing the module");
                        if let Err(error) = self.module.reinitialize(generation) {
                            self.note_reconnect_failure(&mut self.lock_state(), &error);
                            return Err(error);
                        }
                    }
                }
                state = self.lock_state();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HsmError::SessionPoolTimeout {
                    waited: SESSION_WAIT,
                });
            }
            state = self
                .returned
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// After a failed attempt to reach the token: a device fault starts
    /// (or extends) the outage backoff; other errors leave it alone.
    fn note_reconnect_failure(&self, state: &mut PoolState, error: &HsmError) {
        if !error.is_session_fault() {
            return;
        }
        let outage = Outage::after_failure(state.outage, Instant::now());
        if state.outage.is_none() {
            tracing::warn!(error = %error, "hsm: token unreachable; retrying with backoff");
        }
        state.outage = Some(outage);
    }

    /// Forgets idle sessions of an older module generation and looks the
    /// token's slot up again (slot ids may change across reinitialization).
    /// A token that was found at start and is missing now is a device
    /// fault ([`HsmError::TokenAbsent`]), not a configuration error.
    fn refresh_generation(&self, state: &mut PoolState) -> Result<(), HsmError> {
        let current = self.module.generation();
        if current == state.generation {
            return Ok(());
        }
        state.slot = self
            .module
            .find_slot(&self.token_label)
            .map_err(|error| match error {
                HsmError::TokenNotFound { label } => HsmError::TokenAbsent { label },
                other => other,
            })?;
        // Dropping a "no drop" session does not call C_CloseSession.
        state.open -= state.idle.len();
        state.idle.clear();
        state.generation = current;
        self.returned.notify_all();
        Ok(())
    }

    /// Checks the session is alive, and logs in if the login was lost.
    pub(super) fn validate(&self, session: &Session) -> Result<(), HsmError> {
        let info = session.get_session_info().during("C_GetSessionInfo")?;
        match info.session_state() {
            SessionState::RoUser | SessionState::RwUser => Ok(()),
            _ => self.login(session),
        }
    }

    fn open_logged_in(&self, slot: Slot) -> Result<Session, HsmError> {
        let session = self
            .module
            .pkcs11
            .open_rw_session_no_drop(slot)
            .during("C_OpenSession")?;
        match self.login(&session) {
            Ok(()) => Ok(session),
            Err(error) => {
                // The handle is ours and valid: close it rather than leak it.
                let _ = session.close();
                Err(error)
            }
        }
    }

    fn login_suspended(&self) -> HsmError {
        HsmError::LoginSuspended {
            token_label: self.token_label.clone(),
        }
    }

    /// `C_Login` as the user. Login state is per token and application, so
    /// "already logged in" (by another session) is success. Refusals that
    /// are not device faults are PIN problems and become [`HsmError::Login`]
    /// once, then [`HsmError::LoginSuspended`] without another `C_Login`.
    fn login(&self, session: &Session) -> Result<(), HsmError> {
        let _one_login_at_a_time = lock(&self.login);
        if self.login_refused.load(Ordering::Acquire) {
            return Err(self.login_suspended());
        }
        #[cfg(test)]
        self.login_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(error) => {
                let error = login_error(&self.token_label, error);
                if refuses_the_pin(&error) {
                    self.login_refused.store(true, Ordering::Release);
                    tracing::error!(
                        hsm.token_label = %self.token_label,
                        error = %error,
                        "hsm: the token refused the PIN; no further login will be tried with it (fix the PIN and restart)"
                    );
                }
                Err(error)
            }
        }
    }

    /// Returns a lent session to the pool (`keep`), or forgets it.
    fn give_back(&self, mut pooled: PooledSession, keep: bool) {
        let mut state = self.lock_state();
        if keep && pooled.generation == state.generation {
            pooled.last_used = Instant::now();
            state.idle.push(pooled);
        } else {
            // Not closed: its handle may already belong to another session.
            state.open -= 1;
            drop(pooled);
        }
        self.returned.notify_one();
    }

    fn lock_state(&self) -> MutexGuard<'_, PoolState> {
        lock(&self.state)
    }

    /// Test hook: fails the operation attempts numbered in `faults`
    /// (1-based, counted from now) with the given return codes.
    #[cfg(test)]
    pub(super) fn inject_faults(&self, faults: Vec<(usize, RvError)>) {
        *lock(&self.faults) = FaultPlan {
            attempts: 0,
            faults,
        };
    }

    /// Test hook: `C_Login` calls sent so far.
    #[cfg(test)]
    pub(super) fn login_attempts(&self) -> usize {
        self.login_attempts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Test hook: ends the application's login behind the pool's back
    /// (`C_Logout` on a session of its own), as a token-side session
    /// timeout would; the pooled sessions stay open but log out.
    #[cfg(test)]
    pub(super) fn log_out_behind_the_pool(&self) {
        let session = self
            .module
            .pkcs11
            .open_ro_session(self.lock_state().slot)
            .expect("open a session to log out");
        session.logout().expect("C_Logout");
    }

    /// Test hook: undoes [`Module::finalize_when_idle`]'s refusal of new
    /// calls, so the pool's recovery path can reinitialize the module.
    #[cfg(test)]
    pub(super) fn allow_calls_after_finalize(&self) {
        *self
            .module
            .calls
            .write()
            .unwrap_or_else(PoisonError::into_inner) = false;
    }

    /// Test hook: sessions counted against the capacity right now.
    #[cfg(test)]
    pub(super) fn open_sessions(&self) -> usize {
        self.lock_state().open
    }

    /// Test hook: finalizes the module behind every pool's back, as a
    /// device reset would, so all sessions and the login disappear.
    #[cfg(test)]
    pub(super) fn finalize_module_behind_the_pool(&self) {
        let _ = self.module.pkcs11.clone().finalize();
    }
}

impl Drop for SessionPool {
    fn drop(&mut self) {
        let current = self.module.generation();
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for pooled in state.idle.drain(..) {
            if pooled.generation == current {
                let _ = pooled.session.close();
            }
        }
    }
}

/// Which operation attempts fail, and how (tests only).
#[cfg(test)]
#[derive(Default)]
pub(super) struct FaultPlan {
    attempts: usize,
    faults: Vec<(usize, RvError)>,
}

#[cfg(test)]
impl FaultPlan {
    fn next_fault(&mut self) -> Option<RvError> {
        self.attempts += 1;
        let attempt = self.attempts;
        self.faults
            .iter()
            .find(|(nth, _)| *nth == attempt)
            .map(|(_, return_value)| *return_value)
    }
}

/// A session lent out by the pool; going out of scope gives it back.
struct Lease<'pool> {
    pool: &'pool SessionPool,
    /// Invariant: `Some` from construction until `drop`.
    pooled: Option<PooledSession>,
    keep: bool,
}

impl<'pool> Lease<'pool> {
    fn new(pool: &'pool SessionPool, pooled: PooledSession) -> Self {
        Lease {
            pool,
            pooled: Some(pooled),
            keep: true,
        }
    }

    fn session(&self) -> &Session {
        // Local invariant: `pooled` is only taken in `drop`.
        &self.pooled.as_ref().expect("lease holds a session").session
    }

    fn generation(&self) -> u64 {
        self.pooled.as_ref().map_or(0, |pooled| pooled.generation)
    }

    /// Marks the session for discarding if `error` says it is dead. A lost
    /// login keeps the session: validation logs in again on next use.
    fn discard_after(&mut self, error: &HsmError) {
        if error.is_session_fault() && error.return_value() != Some(RvError::UserNotLoggedIn) {
            self.keep = false;
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(pooled) = self.pooled.take() {
            self.pool.give_back(pooled, self.keep);
        }
    }
}

/// Whether a failed login means the token refused this PIN, the one case in
/// which trying it again can only count towards locking the token. Other
/// refusals (a vendor code during failover, an operation still active) are
/// reported but not remembered.
fn refuses_the_pin(error: &HsmError) -> bool {
    matches!(
        error.return_value(),
        Some(
            RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinExpired
                | RvError::PinLocked
                | RvError::UserPinNotInitialized
        )
    ) && matches!(error, HsmError::Login { .. })
}

/// `C_Initialize` with OS locking (certmint calls the module from many
/// threads); "already initialized" by another handle in this process is fine.
fn initialize(pkcs11: &Pkcs11) -> Result<(), CryptokiError> {
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Token labels are blank-padded to 32 bytes on the wire.
pub(super) fn trim_padding(label: &str) -> &str {
    label.trim_end_matches([' ', '\0'])
}

/// Locks a mutex, ignoring poisoning: every critical section in this module
/// leaves the state consistent before anything that could panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_reconnect_backoff_doubles_up_to_its_cap() {
        let start = Instant::now();
        let mut outage = None;
        let mut delays = Vec::new();
        for _ in 0..10 {
            let next = Outage::after_failure(outage, start);
            delays.push(next.retry_at - start);
            outage = Some(next);
        }
        assert_eq!(delays[0], RECONNECT_INITIAL);
        assert_eq!(delays[1], RECONNECT_INITIAL * 2);
        assert_eq!(delays[2], RECONNECT_INITIAL * 4);
        assert!(delays.windows(2).all(|pair| pair[1] >= pair[0]));
        assert_eq!(delays[9], RECONNECT_MAX);
        assert_eq!(outage.map(|outage| outage.failures), Some(10));
    }

    #[test]
    fn only_pin_refusals_are_remembered() {
        let refusal = |return_value| {
            login_error(
                "token",
                CryptokiError::Pkcs11(return_value, cryptoki::context::Function::Login),
            )
        };
        for pin_refusal in [
            RvError::PinIncorrect,
            RvError::PinLocked,
            RvError::PinExpired,
        ] {
            assert!(refuses_the_pin(&refusal(pin_refusal)), "{pin_refusal:?}");
        }
        for other in [
            RvError::OperationActive,
            RvError::UserAnotherAlreadyLoggedIn,
            RvError::DeviceError,
        ] {
            assert!(!refuses_the_pin(&refusal(other)), "{other:?}");
        }
    }

    #[test]
    fn ok_reconnect_backoff_never_overflows() {
        let start = Instant::now();
        let outage = Outage {
            failures: u32::MAX,
            retry_at: start,
        };
        let next = Outage::after_failure(Some(outage), start);
        assert_eq!(next.retry_at - start, RECONNECT_MAX);
        assert_eq!(next.failures, u32::MAX);
    }
}
