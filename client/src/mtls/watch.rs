//! The live state behind one configuration: the identity served, the
//! verifier peers are checked with, and how both follow their files.
//!
//! Invariants:
//! - Handshakes only read: [`Watched::identity`] and [`Watched::verifier`]
//!   clone an `Arc` under a read lock that a reload holds only to swap it.
//! - [`Watched::poll`] costs a handshake at most four `stat` calls, once
//!   per reload interval, and never waits: a detected change is loaded by
//!   one background thread at a time ([`Watched::reload`]).
//! - A change is installed whole or not at all, and each rejected change is
//!   reported once (a file is not read again until its stamp changes),
//!   except that a key that does not match its certificate is read again at
//!   the next check before it is reported: the agent replaces the two by
//!   two renames, and a reload may fall between them.
//! - CRLs once loaded are never dropped: a vanished or blank CRL file keeps
//!   the last ones in force.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::sign::CertifiedKey;

use super::files::{self, FileError, IdentityError, Stamp};
use super::hooks::SessionGeneration;
use super::{CrlExpiry, CrlRequirement, MtlsError, MtlsFiles, MtlsOptions};

/// What a verifier is built from.
#[derive(Clone, Debug, Default)]
pub(super) struct Trust {
    pub(super) roots: Vec<CertificateDer<'static>>,
    pub(super) crls: Vec<CertificateRevocationListDer<'static>>,
}

/// Builds the verifier of one side (client or server) from [`Trust`].
pub(super) type BuildVerifier<V> =
    fn(&Trust, &MtlsOptions, &Arc<CryptoProvider>) -> Result<Arc<V>, String>;

/// The live state of one configuration.
pub(super) struct Watched<V: ?Sized> {
    files: MtlsFiles,
    options: MtlsOptions,
    provider: Arc<CryptoProvider>,
    build: BuildVerifier<V>,
    identity: RwLock<Arc<CertifiedKey>>,
    verifier: RwLock<Arc<V>>,
    sessions: SessionGeneration,
    /// When the files may next be stat'ed.
    next_check: Mutex<Instant>,
    /// A background reload is running.
    reloading: AtomicBool,
    loader: Mutex<Loader>,
}

/// What the last reload saw, and the last good trust inputs.
#[derive(Debug)]
struct Loader {
    seen: Stamps,
    /// A key did not match its certificate, not yet reported: read both
    /// again at the next check.
    recheck_identity: bool,
    trust: Trust,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamps {
    certificate: Stamp,
    key: Stamp,
    ca: Stamp,
    crl: Stamp,
}

impl Stamps {
    fn of(files: &MtlsFiles) -> Self {
        Self {
            certificate: Stamp::of(Some(files.certificate())),
            key: Stamp::of(Some(files.key())),
            ca: Stamp::of(Some(files.ca())),
            crl: Stamp::of(files.crl()),
        }
    }
}

impl<V: ?Sized + Send + Sync + 'static> Watched<V> {
    /// Loads every file now; any problem is an error naming its file.
    pub(super) fn load(
        files: MtlsFiles,
        options: MtlsOptions,
        provider: Arc<CryptoProvider>,
        build: BuildVerifier<V>,
        sessions: SessionGeneration,
    ) -> Result<Arc<Self>, MtlsError> {
        let seen = Stamps::of(&files);
        let identity = load_identity_settled(&files, &provider)?;
        let roots = load_roots(files.ca())?;
        let crls = match load_crls(files.crl())? {
            Some(crls) if !crls.is_empty() => crls,
            _ if options.crl_requirement == CrlRequirement::Required => {
                return Err(MtlsError::CrlRequired {
                    path: files.crl().map(Path::to_path_buf),
                })
            }
            _ => {
                match files.crl() {
                    Some(path) => tracing::warn!(
                        file = %path.display(),
                        "no CRL loaded: peers are not checked for revocation until the CRL file holds one"
                    ),
                    None => tracing::info!(
                        "no CRL file configured: peers are not checked for revocation"
                    ),
                }
                Vec::new()
            }
        };
        warn_expired(&crls, files.crl(), &options);
        let trust = Trust { roots, crls };
        let verifier =
            build(&trust, &options, &provider).map_err(|reason| MtlsError::Verifier {
                ca: files.ca().to_path_buf(),
                crl: files.crl().map(Path::to_path_buf),
                reason,
            })?;
        Ok(Arc::new(Self {
            next_check: Mutex::new(Instant::now() + options.reload_interval),
            files,
            options,
            provider,
            build,
            identity: RwLock::new(Arc::new(identity)),
            verifier: RwLock::new(verifier),
            sessions,
            reloading: AtomicBool::new(false),
            loader: Mutex::new(Loader {
                seen,
                recheck_identity: false,
                trust,
            }),
        }))
    }

    /// The identity to present now.
    pub(super) fn identity(&self) -> Arc<CertifiedKey> {
        read(&self.identity)
    }

    /// The verifier to check a peer with now.
    pub(super) fn verifier(&self) -> Arc<V> {
        read(&self.verifier)
    }

    /// Called on each handshake: at most once per reload interval, stats
    /// the files, and when one changed starts a background reload.
    pub(super) fn poll(self: &Arc<Self>) {
        let now = Instant::now();
        {
            // Another handshake is checking right now: it will do.
            let Ok(mut next_check) = self.next_check.try_lock() else {
                return;
            };
            if now < *next_check {
                return;
            }
            *next_check = now + self.options.reload_interval;
        }
        if self.reloading.load(Ordering::Acquire) || !self.outdated() {
            return;
        }
        if self
            .reloading
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let watched = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("certmint-mtls-reload".into())
            .spawn(move || {
                let _done = ReloadDone(&watched.reloading);
                watched.reload();
            });
        if let Err(error) = spawned {
            // The stamps were not recorded, so the next check tries again.
            self.reloading.store(false, Ordering::Release);
            tracing::warn!(%error, "cannot start the TLS files reload; retrying at the next check");
        }
    }

    /// Whether a file changed since the last reload looked (or a mismatch
    /// waits for its second look). While a reload holds the lock it is
    /// looking already, so the answer is no.
    fn outdated(&self) -> bool {
        let Ok(loader) = self.loader.try_lock() else {
            return false;
        };
        loader.recheck_identity || loader.seen != Stamps::of(&self.files)
    }

    /// Loads what changed and installs what is good; warns once about the
    /// rest. Runs on the background thread (and directly in tests).
    pub(super) fn reload(&self) {
        let mut loader = self.loader.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Stamps::of(&self.files);
        let mut installed = false;

        if now.certificate != loader.seen.certificate
            || now.key != loader.seen.key
            || loader.recheck_identity
        {
            loader.recheck_identity = false;
            match load_identity(&self.files, &self.provider) {
                Ok(identity) => {
                    *write(&self.identity) = Arc::new(identity);
                    installed = true;
                    tracing::info!(
                        file = %self.files.certificate().display(),
                        "loaded the new certificate and key"
                    );
                }
                Err(MtlsError::KeyMismatch { .. })
                    if loader.seen.certificate != now.certificate || loader.seen.key != now.key =>
                {
                    // Possibly between the agent's two renames: look again
                    // at the next check before calling it a fault.
                    tracing::debug!("the key does not match the certificate yet; looking again at the next check");
                    loader.recheck_identity = true;
                }
                Err(error) => tracing::warn!(
                    %error,
                    "ignored a change to the certificate or key; still serving the previous ones"
                ),
            }
            loader.seen.certificate = now.certificate;
            loader.seen.key = now.key;
        }

        let mut candidate: Option<Trust> = None;
        if now.ca != loader.seen.ca {
            loader.seen.ca = now.ca;
            match load_roots(self.files.ca()) {
                Ok(roots) => {
                    candidate = Some(Trust {
                        roots,
                        crls: loader.trust.crls.clone(),
                    })
                }
                Err(error) => tracing::warn!(
                    %error,
                    "ignored a change to the trusted roots; still using the previous ones"
                ),
            }
        }
        if now.crl != loader.seen.crl {
            loader.seen.crl = now.crl;
            let had = loader.trust.crls.len();
            match load_crls(self.files.crl()) {
                Ok(Some(crls)) if !crls.is_empty() => {
                    warn_expired(&crls, self.files.crl(), &self.options);
                    let roots = candidate
                        .take()
                        .map_or_else(|| loader.trust.roots.clone(), |trust| trust.roots);
                    candidate = Some(Trust { roots, crls });
                }
                Ok(_) if had == 0 => {}
                Ok(found) => tracing::warn!(
                    file = %shown(self.files.crl()),
                    crl.count = had,
                    "the CRL file {}; keeping the CRLs loaded before in force",
                    if found.is_some() { "holds no CRL" } else { "is gone" }
                ),
                Err(error) => tracing::warn!(
                    %error,
                    crl.count = had,
                    "ignored a change to the CRL file; keeping the CRLs loaded before in force"
                ),
            }
        }
        if let Some(trust) = candidate {
            match (self.build)(&trust, &self.options, &self.provider) {
                Ok(verifier) => {
                    *write(&self.verifier) = verifier;
                    tracing::info!(
                        roots.count = trust.roots.len(),
                        crl.count = trust.crls.len(),
                        "loaded new trusted roots or CRLs"
                    );
                    loader.trust = trust;
                    installed = true;
                }
                Err(reason) => tracing::warn!(
                    file = %self.files.ca().display(),
                    %reason,
                    "cannot build a verifier from the new roots or CRLs; keeping the previous one"
                ),
            }
        }
        if installed {
            self.sessions.advance();
        }
    }

    #[cfg(test)]
    pub(super) fn is_reloading(&self) -> bool {
        self.reloading.load(Ordering::Acquire)
    }
}

impl<V: ?Sized> std::fmt::Debug for Watched<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("files", &self.files)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Clears the "reloading" flag however the reload ends.
struct ReloadDone<'a>(&'a AtomicBool);

impl Drop for ReloadDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The identity, retried once after a pause when the key does not match:
/// a program starting between the agent's two renames should not fail.
fn load_identity_settled(
    files: &MtlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, MtlsError> {
    match load_identity(files, provider) {
        Err(MtlsError::KeyMismatch { .. }) => {
            std::thread::sleep(Duration::from_millis(200));
            load_identity(files, provider)
        }
        other => other,
    }
}

fn load_identity(files: &MtlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, MtlsError> {
    let chain = files::read(files.certificate())
        .and_then(|bytes| Ok(files::certificates(&bytes)?))
        .map_err(|error| file_error(files.certificate(), error))?;
    let key = files::read(files.key())
        .and_then(|bytes| Ok(files::private_key(&bytes)?))
        .map_err(|error| file_error(files.key(), error))?;
    files::certified_key(chain, key, provider).map_err(|error| match error {
        IdentityError::Certificate(reason) => MtlsError::Invalid {
            path: files.certificate().to_path_buf(),
            reason,
        },
        IdentityError::Key(reason) => MtlsError::Invalid {
            path: files.key().to_path_buf(),
            reason,
        },
        IdentityError::Mismatch => MtlsError::KeyMismatch {
            certificate: files.certificate().to_path_buf(),
            key: files.key().to_path_buf(),
        },
    })
}

fn load_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, MtlsError> {
    files::read(path)
        .and_then(|bytes| Ok(files::roots(&bytes)?))
        .map_err(|error| file_error(path, error))
}

/// The CRLs, `None` when no file is configured or it does not exist.
fn load_crls(
    path: Option<&Path>,
) -> Result<Option<Vec<CertificateRevocationListDer<'static>>>, MtlsError> {
    let Some(path) = path else {
        return Ok(None);
    };
    match files::read(path) {
        Ok(bytes) => files::crls(&bytes)
            .map(Some)
            .map_err(|reason| MtlsError::Invalid {
                path: path.to_path_buf(),
                reason,
            }),
        Err(FileError::Read(error)) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(file_error(path, error)),
    }
}

fn warn_expired(
    crls: &[CertificateRevocationListDer<'static>],
    path: Option<&Path>,
    options: &MtlsOptions,
) {
    if options.crl_expiry != CrlExpiry::Enforce {
        return;
    }
    for (issuer, next_update) in files::expired_crls(crls, UnixTime::now()) {
        tracing::warn!(
            file = %shown(path),
            crl.issuer = %issuer,
            crl.next_update = %next_update,
            "a CRL is past its nextUpdate: the certificates it covers are refused until a current one is loaded"
        );
    }
}

fn file_error(path: &Path, error: FileError) -> MtlsError {
    let path = PathBuf::from(path);
    match error {
        FileError::Read(source) => MtlsError::Read { path, source },
        FileError::Invalid(reason) => MtlsError::Invalid { path, reason },
    }
}

fn shown(path: Option<&Path>) -> String {
    path.map_or_else(
        || "(none configured)".into(),
        |path| path.display().to_string(),
    )
}

/// The state is only ever replaced whole, so a lock poisoned by a panic
/// elsewhere still guards a consistent value.
fn read<T: ?Sized>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    Arc::clone(&lock.read().unwrap_or_else(PoisonError::into_inner))
}

fn write<T: ?Sized>(lock: &RwLock<Arc<T>>) -> std::sync::RwLockWriteGuard<'_, Arc<T>> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
