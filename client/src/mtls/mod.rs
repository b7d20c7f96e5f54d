//! rustls configurations for a workload's own mutual TLS, fed by the files
//! `certmint agent` keeps current: they follow renewals, trust-bundle
//! changes and new CRLs without a restart, and refuse revoked peers.
//!
//! Design overview:
//!
//! ```text
//!   cert.pem key.pem ca.pem crl.pem      (written by the agent, by rename)
//!        │       │      │      │
//!        └── files: read + parse, one file at a time, typed errors
//!                        │
//!                watch::Watched: last good identity + verifier, stamps
//!              (stat at most once per reload_interval; rebuild on a
//!               background thread; swap an Arc on success)
//!                        │
//!   hooks: ResolvesServerCert / ResolvesClientCert, delegating
//!          ClientCertVerifier / ServerCertVerifier, session caches
//!                        │
//!       server_config() → Arc<rustls::ServerConfig>   (client certs required)
//!       client_config() → Arc<rustls::ClientConfig>
//! ```
//!
//! Invariants:
//! - A handshake reads the current state through an `Arc` and never waits
//!   for a reload: at most it stats the four files, once per
//!   [`MtlsOptions::reload_interval`]; reading and parsing run on a
//!   short-lived background thread.
//! - Only a complete, consistent change is installed. A file that does not
//!   parse, a key that does not belong to its certificate, a CRL file that
//!   vanished or lost every CRL: the last good state stays and one warning
//!   is logged. Once CRLs are in force they stay in force.
//! - By default no session is resumed, so every connection is checked
//!   against the CRLs of its moment. With resumption enabled, every
//!   installed change empties the session caches (best effort: see
//!   [`SessionResumption::Enabled`]).
//! - No private key material reaches an error or a log line.

mod files;
mod hooks;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

pub use files::InvalidFile;
use hooks::{
    ReloadingClientCert, ReloadingClientVerifier, ReloadingServerCert, ReloadingServerVerifier,
    SessionGeneration,
};
use watch::{Trust, Watched};

/// The agent's name for the certificate file (leaf, then its chain).
pub const CERTIFICATE_FILE: &str = "cert.pem";
/// The agent's name for the private key file.
pub const KEY_FILE: &str = "key.pem";
/// The agent's name for the trusted roots.
pub const CA_FILE: &str = "ca.pem";
/// The agent's name for the CRLs of every trusted issuer.
pub const CRL_FILE: &str = "crl.pem";

/// Where a workload's identity, trust anchors and CRLs live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtlsFiles {
    certificate: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    crl: Option<PathBuf>,
}

impl MtlsFiles {
    /// The files `certmint agent` writes into its output directory:
    /// `cert.pem`, `key.pem`, `ca.pem` and `crl.pem` (which may be absent).
    pub fn from_agent_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Self {
            certificate: dir.join(CERTIFICATE_FILE),
            key: dir.join(KEY_FILE),
            ca: dir.join(CA_FILE),
            crl: Some(dir.join(CRL_FILE)),
        }
    }

    /// Explicit paths: the certificate (PEM, leaf first, then its chain),
    /// its private key (PEM: PKCS#8, SEC1 or PKCS#1), the trusted roots
    /// (PEM) and, optionally, the CRLs (PEM `X509 CRL` blocks).
    pub fn from_paths(
        certificate: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: impl Into<PathBuf>,
        crl: Option<PathBuf>,
    ) -> Self {
        Self {
            certificate: certificate.into(),
            key: key.into(),
            ca: ca.into(),
            crl,
        }
    }

    /// The certificate file.
    pub fn certificate(&self) -> &Path {
        &self.certificate
    }

    /// The private key file.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// The trusted roots file.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The CRL file, when one is configured.
    pub fn crl(&self) -> Option<&Path> {
        self.crl.as_deref()
    }
}

/// How the configurations check peers and follow the files. The defaults
/// are those of nginx and Envoy with a CRL configured, so a fleet behaves
/// the same whichever of them terminates a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MtlsOptions {
    /// How often, at most, the files' metadata (inode, length, mtime) is
    /// checked for a change; the check runs on a handshake. Default 1 s.
    pub reload_interval: Duration,
    /// Which certificates of a peer's chain are checked against the CRLs.
    /// Default [`RevocationDepth::EndEntity`]: with an external root, no
    /// CRL of this CA's own certificate is in `crl.pem`, and `Chain` would
    /// refuse every peer.
    pub revocation_depth: RevocationDepth,
    /// What to do with a certificate no loaded CRL covers, while CRLs are
    /// loaded. Default [`UnknownStatus::Refuse`].
    pub unknown_status: UnknownStatus,
    /// Whether a CRL past its nextUpdate still counts. Default
    /// [`CrlExpiry::Enforce`].
    pub crl_expiry: CrlExpiry,
    /// Whether a CRL file must be present when the configuration is built.
    /// Default [`CrlRequirement::Optional`].
    pub crl_requirement: CrlRequirement,
    /// Whether TLS sessions may be resumed. Default
    /// [`SessionResumption::Disabled`].
    pub session_resumption: SessionResumption,
    /// ALPN protocols to offer (client) or accept (server), most preferred
    /// first. Default none.
    pub alpn_protocols: Vec<Vec<u8>>,
}

impl Default for MtlsOptions {
    fn default() -> Self {
        Self {
            reload_interval: Duration::from_secs(1),
            revocation_depth: RevocationDepth::EndEntity,
            unknown_status: UnknownStatus::Refuse,
            crl_expiry: CrlExpiry::Enforce,
            crl_requirement: CrlRequirement::Optional,
            session_resumption: SessionResumption::Disabled,
            alpn_protocols: Vec::new(),
        }
    }
}

/// Which certificates of a peer's chain are checked against the CRLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationDepth {
    /// The peer's certificate and every CA certificate above it (not the
    /// trust anchor): a revoked intermediate CA is refused too. Its CRL is
    /// the root's, which the agent writes into `crl.pem` with the others.
    Chain,
    /// The peer's certificate only.
    EndEntity,
}

/// What to do with a certificate none of the loaded CRLs covers (no CRL of
/// its issuer, or none for its distribution point), while at least one CRL
/// is loaded. Without any CRL there is no revocation check at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownStatus {
    /// Refuse it: its revocation status cannot be known.
    Refuse,
    /// Accept it as not revoked.
    Allow,
}

/// Whether a CRL past its nextUpdate still counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrlExpiry {
    /// A certificate whose CRL is past its nextUpdate is refused: its issuer
    /// may have revoked it since, and the file is not being kept current.
    Enforce,
    /// An expired CRL is used as it is.
    Ignore,
}

/// Whether the CRL file must be present when a configuration is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrlRequirement {
    /// Absent: no revocation check until it appears (with a warning at
    /// build time). Once loaded, CRLs are never dropped.
    Optional,
    /// Building fails unless the CRL file is present and holds a CRL.
    Required,
}

/// Whether TLS sessions may be resumed. A resumed handshake checks no
/// certificate: the peer's was checked when the session began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionResumption {
    /// Every connection is a full handshake, checked against the CRLs and
    /// roots of that moment.
    Disabled,
    /// Sessions are cached and resumed (saving a signature per connection).
    /// Every installed change empties the caches, but a session that was
    /// being resumed while a change was loading can go on being resumed
    /// (each resumption hands out new tickets) under the state it began in.
    Enabled,
}

/// Why a configuration could not be built. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MtlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its contents are not usable.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: InvalidFile,
    },
    /// The private key is not the one the certificate was issued for.
    #[error(
        "the private key in {} does not belong to the certificate in {}",
        key.display(),
        certificate.display()
    )]
    KeyMismatch {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// [`CrlRequirement::Required`], and there is no CRL to load.
    #[error("{}", crl_required(path.as_deref()))]
    CrlRequired {
        /// The configured CRL file, if any.
        path: Option<PathBuf>,
    },
    /// rustls refused to build a verifier from the roots and CRLs.
    #[error("cannot build the certificate verifier from {} and {}: {reason}", ca.display(), crl.as_deref().map_or_else(|| "no CRL file".into(), |path| path.display().to_string()))]
    Verifier {
        /// The roots file.
        ca: PathBuf,
        /// The CRL file.
        crl: Option<PathBuf>,
        /// rustls' reason.
        reason: String,
    },
    /// rustls refused the configuration itself.
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}

/// A server configuration that requires client certificates chaining to
/// `ca.pem` and not revoked by `crl.pem`, and serves `cert.pem`/`key.pem`;
/// all four follow their files. Fails when the files are not usable now.
pub fn server_config(
    files: &MtlsFiles,
    options: MtlsOptions,
) -> Result<Arc<rustls::ServerConfig>, MtlsError> {
    let provider = provider();
    let alpn_protocols = options.alpn_protocols.clone();
    let resumption = options.session_resumption;
    let sessions = SessionGeneration::default();
    let watched = Watched::load(
        files.clone(),
        options,
        provider.clone(),
        client_verifier,
        sessions.clone(),
    )?;
    let poll = watched.clone();
    let session_storage = sessions.server_store(Arc::new(move || poll.poll()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(MtlsError::Tls)?
        .with_client_cert_verifier(Arc::new(ReloadingClientVerifier::new(watched.clone())))
        .with_cert_resolver(Arc::new(ReloadingServerCert::new(watched)));
    match resumption {
        SessionResumption::Disabled => {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        SessionResumption::Enabled => config.session_storage = session_storage,
    }
    config.alpn_protocols = alpn_protocols;
    Ok(Arc::new(config))
}

/// A client configuration that presents `cert.pem`/`key.pem` and verifies
/// servers against `ca.pem` and `crl.pem` (the server name is the one given
/// to each connection); all four follow their files. Fails when the files
/// are not usable now.
pub fn client_config(
    files: &MtlsFiles,
    options: MtlsOptions,
) -> Result<Arc<rustls::ClientConfig>, MtlsError> {
    let provider = provider();
    let alpn_protocols = options.alpn_protocols.clone();
    let resumption = options.session_resumption;
    let sessions = SessionGeneration::default();
    let watched = Watched::load(
        files.clone(),
        options,
        provider.clone(),
        server_verifier,
        sessions.clone(),
    )?;
    let poll = watched.clone();
    let session_store = sessions.client_store(Arc::new(move || poll.poll()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(MtlsError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReloadingServerVerifier::new(watched.clone())))
        .with_client_cert_resolver(Arc::new(ReloadingClientCert::new(watched)));
    config.resumption = match resumption {
        SessionResumption::Disabled => rustls::client::Resumption::disabled(),
        SessionResumption::Enabled => rustls::client::Resumption::store(session_store),
    };
    config.alpn_protocols = alpn_protocols;
    Ok(Arc::new(config))
}

fn crl_required(path: Option<&Path>) -> String {
    match path {
        Some(path) => format!(
            "a CRL is required, but {} is absent or holds no CRL",
            path.display()
        ),
        None => "a CRL is required, but no CRL file is configured".into(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(trust: &Trust) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for root in &trust.roots {
        roots.add(root.clone()).map_err(|error| error.to_string())?;
    }
    Ok(Arc::new(roots))
}

/// The server side's verifier for `trust`, configured by `options`.
fn client_verifier(
    trust: &Trust,
    options: &MtlsOptions,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(root_store(trust)?, provider.clone())
            // The hints would describe the roots of the moment this verifier
            // was built, but rustls borrows them from the long-lived delegating
            // verifier; no hints lets a client send its certificate regardless.
            .clear_root_hint_subjects()
            .with_crls(trust.crls.iter().cloned());
    if options.revocation_depth == RevocationDepth::EndEntity {
        builder = builder.only_check_end_entity_revocation();
    }
    if options.unknown_status == UnknownStatus::Allow {
        builder = builder.allow_unknown_revocation_status();
    }
    if options.crl_expiry == CrlExpiry::Enforce {
        builder = builder.enforce_revocation_expiration();
    }
    builder.build().map_err(|error| error.to_string())
}

/// The client side's verifier for `trust`, configured by `options`.
fn server_verifier(
    trust: &Trust,
    options: &MtlsOptions,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut builder =
        WebPkiServerVerifier::builder_with_provider(root_store(trust)?, provider.clone())
            .with_crls(trust.crls.iter().cloned());
    if options.revocation_depth == RevocationDepth::EndEntity {
        builder = builder.only_check_end_entity_revocation();
    }
    if options.unknown_status == UnknownStatus::Allow {
        builder = builder.allow_unknown_revocation_status();
    }
    if options.crl_expiry == CrlExpiry::Enforce {
        builder = builder.enforce_revocation_expiration();
    }
    builder.build().map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests;
