//! One workload's certificate life cycle, shared by `certmint enroll` and
//! `certmint agent`: decide whom to trust, look at what is on disk, enroll
//! with a token or renew over mutual TLS with a fresh key, check what the
//! server returned, and install it with [`OutputDir::install`].
//!
//! Invariants:
//! - Trust is never taken blindly: a CA bundle file, a root pinned by
//!   fingerprint on first contact, or (later) the `ca.pem` written then —
//!   and only if it holds the configured fingerprint. A `ca.pem` that does
//!   not is a trust failure, not a reason to pin again.
//! - Nothing is installed unless the new key matches the new leaf and the
//!   leaf chains to the trust anchors; so the files on disk are always a
//!   usable pair.
//! - Every enrollment and renewal uses a fresh key ([`keys::fresh_key_and_csr`]).
//! - The token, keys and PEMs never reach a log line or an error message.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration as StdDuration;

use certmint::client::trust::{
    certificates_from_pem, fingerprint, pem_block, time_within_validity,
};
use certmint::client::{Client, ClientIdentity, ClientOptions, Error as ClientError, TrustAnchors};
use certmint::wire::{CertificateBundle, EnrollRequest, Identity, KeyType, RenewRequest, REDACTED};
use certmint::{Duration, ProblemCode};
use der::{Decode as _, Encode as _};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::agent::keys::{self, KeyAndCsr, KeyError};
use crate::agent::output::{Generation, Meta, OutputDir, OutputError};
use crate::exit::Exit;

/// How the client trusts the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustSource {
    /// Pin the root by its SHA-256 fingerprint (`sha256:<hex>`, normalised).
    Fingerprint(String),
    /// Trust the certificates in this PEM file.
    Bundle(PathBuf),
}

/// A bootstrap token; `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a token read from a flag, a file or the environment.
    pub fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| Self(text.to_owned()))
    }

    /// Reads a token file (first non-empty content, trimmed).
    pub fn from_file(path: &std::path::Path) -> Result<Option<Self>, WorkloadError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::new(&text)),
            Err(error) => Err(WorkloadError::Usage(format!(
                "cannot read the token file {}: {error}",
                path.display()
            ))),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({REDACTED})")
    }
}

/// Why a step of the life cycle failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadError {
    /// The server refused, or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The output directory could not be read or written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A key or CSR could not be made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Local trust state contradicts the configuration.
    #[error("trust: {0}")]
    Trust(String),
    /// The server issued a certificate (spending a token use, or a
    /// renewal) that could not be written; `ready` holds it with its key,
    /// so the caller can write it again rather than ask for another.
    #[error("could not install the issued certificate {}: {source}", .ready.meta.serial)]
    NotInstalled {
        /// The checked generation, key included.
        ready: Box<ReadyGeneration>,
        /// Why writing it failed.
        source: OutputError,
    },
    /// The server returned a certificate this agent will not install.
    #[error("refusing the issued certificate: {0}")]
    BadIssue(String),
    /// Enrollment is needed but there is no token.
    #[error("no usable certificate in {0} and no bootstrap token to enroll with (give token_file, --token-file, --token or CERTMINT_TOKEN)")]
    NoToken(String),
    /// A setting is unusable.
    #[error("{0}")]
    Usage(String),
}

impl WorkloadError {
    /// Worth retrying later (the server or network, not a refusal).
    pub fn is_transient(&self) -> bool {
        matches!(self, WorkloadError::Client(error) if error.is_transient())
    }

    /// The problem code of a server refusal.
    pub fn code(&self) -> Option<&ProblemCode> {
        match self {
            WorkloadError::Client(error) => error.code(),
            _ => None,
        }
    }

    /// The documented exit for this failure when it is final.
    pub fn exit(&self) -> Exit {
        match self {
            WorkloadError::Client(error) => Exit::for_error(error),
            WorkloadError::Trust(_) => Exit::TrustFailure,
            WorkloadError::NoToken(_) => Exit::TokenRefused,
            WorkloadError::Usage(_) | WorkloadError::Key(_) => Exit::Usage,
            WorkloadError::Output(_)
            | WorkloadError::NotInstalled { .. }
            | WorkloadError::BadIssue(_) => Exit::Failure,
        }
    }
}

/// Everything needed to enroll or renew one workload.
#[derive(Clone, Debug)]
pub struct Workload {
    /// `https://host:port`.
    pub server: String,
    /// How the server is trusted.
    pub trust: TrustSource,
    /// Key type for new keys.
    pub key_type: KeyType,
    /// Requested lifetime.
    pub ttl: Option<Duration>,
    /// Names to request.
    pub names: Identity,
    /// Per-request timeout.
    pub request_timeout: StdDuration,
    /// Where the files go.
    pub output: OutputDir,
    /// The key and CSR of the enrollment in progress.
    pub pending_enrollment: PendingEnrollment,
}

/// The key and CSR of an enrollment that has not been answered yet, kept
/// across its retries: a retry after a lost response or a server crash must
/// ask for the same key, because that is how the server knows the retry
/// for the earlier try. It answers with the certificate it already issued
/// to that key, or, once the earlier try is reconciled, issues with the
/// token use given back. A new key each time would find the single-use
/// token spent (`token.used`).
///
/// Kept in memory and, owner-only, in the output directory
/// ([`OutputDir::save_pending_enrollment`], written before the request
/// leaves), so a restarted `enroll` or agent retries with the same key too.
/// Forgotten once the server answers with a certificate or a final
/// refusal; not used for another token or other names.
///
/// Clones share the pending key: they are the same workload.
#[derive(Clone, Default)]
pub struct PendingEnrollment {
    current: std::sync::Arc<std::sync::Mutex<Option<KeyForToken>>>,
}

/// A key and CSR, and what they were made for.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct KeyForToken {
    /// SHA-256 of the token, hex (the token itself is never stored here).
    token_sha256: String,
    /// The names the CSR asks for.
    names: Identity,
    /// The key (secret) and its CSR.
    csr_pem: String,
    key_pem: String,
}

impl KeyForToken {
    fn key(&self) -> KeyAndCsr {
        KeyAndCsr {
            csr_pem: self.csr_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    fn is_for(&self, token_sha256: &str, names: &Identity) -> bool {
        self.token_sha256 == token_sha256 && self.names.same_names(names)
    }
}

impl fmt::Debug for PendingEnrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key; whether one is pending is all a log needs.
        let pending = self.current.lock().is_ok_and(|current| current.is_some());
        f.debug_struct("PendingEnrollment")
            .field("pending", &pending)
            .finish()
    }
}

impl PendingEnrollment {
    /// The key and CSR to send with `token`: the pending ones (in memory,
    /// else in `output`) when they were made for this token and these
    /// names, else new ones, stored before they are returned.
    fn for_token(
        &self,
        token: &Token,
        key_type: KeyType,
        names: &Identity,
        output: &OutputDir,
    ) -> Result<KeyAndCsr, WorkloadError> {
        let token_sha256 = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            token.0.as_bytes(),
        ));
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pending) = current.as_ref().filter(|p| p.is_for(&token_sha256, names)) {
            return Ok(pending.key());
        }
        let stored = output
            .pending_enrollment()
            .and_then(|text| serde_json::from_str::<KeyForToken>(&text).ok())
            .filter(|stored| stored.is_for(&token_sha256, names));
        if let Some(stored) = stored {
            tracing::info!("retrying the unanswered enrollment with the same key");
            let key = stored.key();
            *current = Some(stored);
            return Ok(key);
        }
        let fresh = keys::fresh_key_and_csr(key_type, names)?;
        let record = KeyForToken {
            token_sha256,
            names: names.clone(),
            csr_pem: fresh.csr_pem.clone(),
            key_pem: fresh.key_pem.clone(),
        };
        let text = serde_json::to_string(&record).map_err(|error| {
            WorkloadError::Usage(format!("cannot record the pending enrollment: {error}"))
        })?;
        output.save_pending_enrollment(&text)?;
        *current = Some(record);
        Ok(fresh)
    }

    /// The server answered for good: the next enrollment starts afresh.
    fn forget(&self, output: &OutputDir) {
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        if let Err(error) = output.forget_pending_enrollment() {
            // Harmless: a later enrollment with this token finds its own
            // answer; one with another token ignores the record.
            tracing::warn!(%error, "cannot remove the pending enrollment record");
        }
    }
}

/// A connected client and the anchors it trusts.
#[derive(Clone, Debug)]
pub struct Session {
    /// Trusts exactly the anchors; presents no certificate.
    pub client: Client,
    /// The trust anchors.
    pub anchors: TrustAnchors,
}

/// A certificate in place and usable, with its metadata.
#[derive(Clone)]
pub struct Installed {
    /// Metadata (from `meta.json`, or read from the certificate).
    pub meta: Meta,
    /// Leaf then intermediates.
    pub cert_pem: String,
    /// The key (secret).
    pub key_pem: String,
}

impl fmt::Debug for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Installed")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// What is on disk.
#[derive(Debug)]
pub enum OnDisk {
    /// Nothing installed yet.
    Missing,
    /// Files exist but cannot be used (the reason, for the log).
    Unusable(String),
    /// Usable, but for other names than configured: enroll again.
    OtherNames(Installed),
    /// Usable now.
    Valid(Installed),
    /// Matching and chaining, but past `not_after`.
    Expired(Installed),
}

impl Workload {
    /// The connection settings of every request this workload sends.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            timeout: self.request_timeout,
        }
    }

    /// Decides whom to trust and returns a client. May contact the server
    /// (first contact with a pinned fingerprint), so it can fail transiently.
    pub async fn connect(&self) -> Result<Session, WorkloadError> {
        let anchors = match &self.trust {
            TrustSource::Bundle(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    WorkloadError::Usage(format!(
                        "cannot read the CA bundle {}: {error}",
                        path.display()
                    ))
                })?;
                TrustAnchors::from_pem(&text)?
            }
            TrustSource::Fingerprint(pinned) => match self.output.ca_pem()? {
                Some(ca_pem) => anchors_from_written_ca(&ca_pem, pinned)?,
                None => Client::pin_root(&self.server, pinned, &self.client_options()).await?,
            },
        };
        let client = Client::new(&self.server, anchors.clone(), None, self.client_options())?;
        Ok(Session { client, anchors })
    }

    /// Looks at the installed files against `anchors` at time `now`.
    pub fn inspect(&self, anchors: &TrustAnchors, now: OffsetDateTime) -> OnDisk {
        let current = match self.output.current() {
            Ok(Some(current)) => current,
            Ok(None) => return OnDisk::Missing,
            Err(error) => return OnDisk::Unusable(error.to_string()),
        };
        let checked = match check_pair(&current.cert_pem, &current.key_pem, anchors) {
            Ok(checked) => checked,
            Err(reason) => return OnDisk::Unusable(reason),
        };
        let meta = match current.meta {
            Some(meta) if meta.serial == checked.serial => meta,
            // meta.json missing or stale (e.g. files written by another
            // tool): fall back to the server's default hint, 2/3 of the life.
            _ => Meta {
                serial: checked.serial.clone(),
                not_before: checked.not_before,
                not_after: checked.not_after,
                renew_after: checked.not_before + (checked.not_after - checked.not_before) * 2 / 3,
                policy: String::new(),
                policy_version: 0,
                key_type: self.key_type,
                names: checked.names.clone(),
                received_at: checked.not_before,
            },
        };
        let installed = Installed {
            meta,
            cert_pem: current.cert_pem,
            key_pem: current.key_pem,
        };
        if !checked.names.same_names(&self.names) {
            OnDisk::OtherNames(installed)
        } else if now >= checked.not_after {
            OnDisk::Expired(installed)
        } else {
            OnDisk::Valid(installed)
        }
    }

    /// `POST /v1/enroll` with a new key, or with the key of this token's
    /// earlier try that got no answer ([`PendingEnrollment`]); installs and
    /// returns the result.
    pub async fn enroll(&self, session: &Session, token: &Token) -> Result<Meta, WorkloadError> {
        let attempt =
            self.pending_enrollment
                .for_token(token, self.key_type, &self.names, &self.output)?;
        let request = EnrollRequest {
            csr: attempt.csr_pem,
            token: token.0.clone(),
            ttl: self.ttl,
        };
        let answer = session.client.enroll(&request).await;
        match &answer {
            Err(error) if error.is_transient() => {}
            _ => self.pending_enrollment.forget(&self.output),
        }
        self.install(session, &attempt.key_pem, &self.names, &answer?)
    }

    /// `POST /v1/renew` as the holder of `current`, with a fresh key for
    /// the same names; installs and returns the result.
    pub async fn renew(
        &self,
        session: &Session,
        current: &Installed,
    ) -> Result<Meta, WorkloadError> {
        let identity = ClientIdentity::from_pem(&current.cert_pem, &current.key_pem)?;
        let holder = session.client.with_identity(&identity)?;
        // The server requires the CSR to name exactly the certificate's names.
        let fresh = keys::fresh_key_and_csr(self.key_type, &current.meta.names)?;
        let request = RenewRequest {
            csr: fresh.csr_pem,
            ttl: self.ttl,
        };
        let bundle = holder.renew(&request).await?;
        self.install(session, &fresh.key_pem, &current.meta.names, &bundle)
    }

    /// Checks the issued bundle against our key, anchors and the `requested`
    /// names, then installs it ([`WorkloadError::NotInstalled`] when only
    /// the writing failed).
    fn install(
        &self,
        session: &Session,
        key_pem: &str,
        requested: &Identity,
        bundle: &CertificateBundle,
    ) -> Result<Meta, WorkloadError> {
        let ready = self.check_issued(session, key_pem, requested, bundle)?;
        self.write(ready)
    }

    /// Writes a checked generation and makes it current. Synchronous on
    /// purpose: see [`OutputDir::install`].
    pub fn write(&self, ready: ReadyGeneration) -> Result<Meta, WorkloadError> {
        match self.output.install(&Generation {
            key_pem: &ready.key_pem,
            cert_pem: &ready.cert_pem,
            ca_pem: &ready.ca_pem,
            meta: &ready.meta,
        }) {
            Ok(_) => Ok(ready.meta),
            Err(source) => Err(WorkloadError::NotInstalled {
                ready: Box::new(ready),
                source,
            }),
        }
    }

    /// What the server issued, checked against our key, anchors and the
    /// `requested` names, ready to write.
    fn check_issued(
        &self,
        session: &Session,
        key_pem: &str,
        requested: &Identity,
        bundle: &CertificateBundle,
    ) -> Result<ReadyGeneration, WorkloadError> {
        let leaf = certificates_from_pem(&bundle.certificate_pem)?;
        let chain = certificates_from_pem(&bundle.chain_pem)?;
        if leaf.len() != 1 {
            return Err(WorkloadError::BadIssue(format!(
                "certificate_pem holds {} certificates, expected 1",
                leaf.len()
            )));
        }
        let mut intermediates = Vec::new();
        let mut roots = Vec::new();
        for der in chain {
            let parsed = x509_cert::Certificate::from_der(der.as_ref())
                .map_err(|error| WorkloadError::BadIssue(format!("chain_pem: {error}")))?;
            if parsed.tbs_certificate().subject() == parsed.tbs_certificate().issuer() {
                roots.push(der);
            } else {
                intermediates.push(der);
            }
        }
        let cert_pem: String = leaf
            .iter()
            .chain(&intermediates)
            .map(|der| pem_block("CERTIFICATE", der.as_ref()))
            .collect();
        let checked =
            check_pair(&cert_pem, key_pem, &session.anchors).map_err(WorkloadError::BadIssue)?;
        if !checked.names.same_names(requested) {
            // Installing it would make the next check see other names and
            // enroll again at once, spending a token use each time.
            return Err(WorkloadError::BadIssue(format!(
                "the certificate names {}, not the requested {}",
                checked.names.summary(),
                requested.summary()
            )));
        }
        if checked.serial != bundle.serial.to_ascii_lowercase() {
            return Err(WorkloadError::BadIssue(format!(
                "the certificate's serial {} is not the serial {} the server reported",
                checked.serial, bundle.serial
            )));
        }
        // ca.pem: the served roots we trust; else our anchors as they are.
        let trusted: Vec<&CertificateDer<'static>> = roots
            .iter()
            .filter(|root| session.anchors.certificates().contains(root))
            .collect();
        let ca_pem: String = if trusted.is_empty() {
            session.anchors.to_pem()
        } else {
            trusted
                .iter()
                .map(|der| pem_block("CERTIFICATE", der.as_ref()))
                .collect()
        };
        let meta = Meta {
            serial: checked.serial,
            not_before: bundle.not_before,
            not_after: bundle.not_after,
            renew_after: bundle.renew_after,
            policy: bundle.policy.clone(),
            policy_version: bundle.policy_version,
            key_type: self.key_type,
            names: checked.names,
            received_at: OffsetDateTime::now_utc(),
        };
        Ok(ReadyGeneration {
            key_pem: key_pem.to_owned(),
            cert_pem,
            ca_pem,
            meta,
        })
    }
}

/// An issued certificate that passed every check, with its key, not yet
/// written.
pub struct ReadyGeneration {
    /// Private key, PKCS#8 PEM (secret; never logged).
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
    /// What `meta.json` will say.
    pub meta: Meta,
}

impl fmt::Debug for ReadyGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyGeneration")
            .field("serial", &self.meta.serial)
            .field("key_pem", &REDACTED)
            .finish_non_exhaustive()
    }
}

/// Anchors from a `ca.pem` certmint wrote earlier, only if it holds the
/// configured root.
fn anchors_from_written_ca(ca_pem: &str, pinned: &str) -> Result<TrustAnchors, WorkloadError> {
    let certificates = certificates_from_pem(ca_pem).map_err(|error| {
        WorkloadError::Trust(format!("the written ca.pem is unreadable: {error}"))
    })?;
    let found: Vec<String> = certificates
        .iter()
        .map(|der| fingerprint(der.as_ref()))
        .collect();
    match certificates
        .into_iter()
        .find(|der| fingerprint(der.as_ref()) == pinned)
    {
        Some(root) => Ok(TrustAnchors::from_der(vec![root])),
        None => Err(WorkloadError::Trust(format!(
            "ca.pem in the output directory holds {} but the configured root fingerprint is {pinned}; \
             refusing to re-pin (remove ca.pem deliberately if the CA really changed)",
            if found.is_empty() { "no certificate".to_owned() } else { found.join(", ") }
        ))),
    }
}

/// Facts about a certificate file that passed [`check_pair`].
#[derive(Debug)]
struct Checked {
    serial: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    names: Identity,
}

/// The key matches the leaf and the leaf chains to `anchors` (checked at a
/// time inside its validity, so an expired certificate is reported as
/// expired by the caller, not as unusable).
fn check_pair(cert_pem: &str, key_pem: &str, anchors: &TrustAnchors) -> Result<Checked, String> {
    let identity =
        ClientIdentity::from_pem(cert_pem, key_pem).map_err(|error| error.to_string())?;
    let chain = certificates_from_pem(cert_pem).map_err(|error| error.to_string())?;
    let leaf_der = identity.leaf();
    let leaf = x509_cert::Certificate::from_der(leaf_der.as_ref())
        .map_err(|error| format!("the leaf certificate does not parse: {error}"))?;
    let tbs = leaf.tbs_certificate();
    let not_before = OffsetDateTime::from(tbs.validity().not_before.to_system_time());
    let not_after = OffsetDateTime::from(tbs.validity().not_after.to_system_time());
    let at = time_within_validity(&leaf, OffsetDateTime::now_utc());
    let trust_anchors: Vec<_> = anchors
        .certificates()
        .iter()
        .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
        .collect();
    let end_entity = webpki::EndEntityCert::try_from(leaf_der)
        .map_err(|error| format!("the leaf certificate is not usable: {error:?}"))?;
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &trust_anchors,
            &chain[1..],
            at,
            AnyUsage,
            None,
            None,
        )
        .map_err(|error| format!("the certificate does not chain to the trusted CA: {error:?}"))?;
    Ok(Checked {
        serial: hex::encode(tbs.serial_number().as_bytes()),
        not_before,
        not_after,
        names: names_of(&leaf)?,
    })
}

/// Accepts any extended key usage: the policy decides the usages, the
/// agent only checks that the certificate belongs to the CA.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for purpose in iter {
            purpose?;
        }
        Ok(())
    }
}

/// The DNS, IP and URI subjectAltNames of a certificate.
fn names_of(certificate: &x509_cert::Certificate) -> Result<Identity, String> {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;

    let mut names = Identity::default();
    let Some((_, san)) = certificate
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .map_err(|error| format!("subjectAltName does not parse: {error}"))?
    else {
        return Ok(names);
    };
    for name in san.0 {
        match name {
            GeneralName::DnsName(dns) => names.dns.push(dns.to_string()),
            GeneralName::UniformResourceIdentifier(uri) => names.uri.push(uri.to_string()),
            GeneralName::IpAddress(octets) => {
                let bytes = octets.as_bytes();
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(bytes).map(std::net::IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(bytes).map(std::net::IpAddr::from).ok(),
                    _ => None,
                };
                match ip {
                    Some(ip) => names.ip.push(ip.to_string()),
                    None => return Err(format!("an IP subjectAltName has {} bytes", bytes.len())),
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

/// SPKI fingerprint of the leaf in `cert_pem` (for log lines about key
/// rotation; public data).
pub fn key_fingerprint(cert_pem: &str) -> Option<String> {
    let chain = certificates_from_pem(cert_pem).ok()?;
    let leaf = x509_cert::Certificate::from_der(chain.first()?.as_ref()).ok()?;
    let spki = leaf
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .ok()?;
    Some(fingerprint(&spki))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Identity {
        Identity {
            dns: vec!["retry.test".into()],
            ..Identity::default()
        }
    }

    /// The key `pending` gives for `token` and `names`, as `enroll` asks.
    fn key_for(
        pending: &PendingEnrollment,
        token: &Token,
        names: &Identity,
        output: &OutputDir,
    ) -> KeyAndCsr {
        pending
            .for_token(token, KeyType::EcP256, names, output)
            .expect("a key")
    }

    fn output_dir() -> (tempfile::TempDir, OutputDir) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let output = OutputDir::open_or_create(&dir.path().join("out"), None).expect("out");
        (dir, output)
    }

    #[test]
    fn ok_retries_with_the_same_token_send_the_same_key_and_csr() {
        let (_dir, output) = output_dir();
        let pending = PendingEnrollment::default();
        let token = Token("header.claims.signature".into());
        let first = key_for(&pending, &token, &names(), &output);
        let retry = key_for(&pending, &token, &names(), &output);
        assert_eq!(first.csr_pem, retry.csr_pem);
        assert_eq!(first.key_pem, retry.key_pem);
        // A clone is the same workload: it retries with the same key too.
        let from_clone = key_for(&pending.clone(), &token, &names(), &output);
        assert_eq!(first.key_pem, from_clone.key_pem);
        // So does a restarted process, from the owner-only record.
        let restarted = key_for(&PendingEnrollment::default(), &token, &names(), &output);
        assert_eq!(first.key_pem, restarted.key_pem);
        let record = output.path("..pending-enrollment");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&record)
                .expect("the record")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&record).expect("the record");
        assert!(!text.contains(&token.0), "the token itself is not stored");
    }

    #[test]
    fn ok_another_token_other_names_or_an_answer_start_with_a_new_key() {
        let (_dir, output) = output_dir();
        let pending = PendingEnrollment::default();
        let token = Token("header.claims.signature".into());
        let first = key_for(&pending, &token, &names(), &output);
        let other_token = Token("header.other-claims.signature".into());
        let for_other = key_for(&pending, &other_token, &names(), &output);
        assert_ne!(first.key_pem, for_other.key_pem);
        let other_names = Identity {
            dns: vec!["elsewhere.test".into()],
            ..Identity::default()
        };
        let for_other_names = key_for(
            &PendingEnrollment::default(),
            &other_token,
            &other_names,
            &output,
        );
        assert_ne!(for_other.key_pem, for_other_names.key_pem);
        pending.forget(&output);
        assert!(output.pending_enrollment().is_none(), "the record is gone");
        let after_answer = key_for(&pending, &other_token, &other_names, &output);
        assert_ne!(for_other_names.key_pem, after_answer.key_pem);
        assert!(!format!("{pending:?}").contains("PRIVATE"), "{pending:?}");
    }

    /// A throwaway CA issuing one leaf for `names` (tests of the checks).
    fn ca_and_leaf(names: &[&str], validity_days: (i64, i64)) -> (String, String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test root");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let now = OffsetDateTime::now_utc();
        leaf_params.not_before = now + time::Duration::days(validity_days.0);
        leaf_params.not_after = now + time::Duration::days(validity_days.1);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        (
            ca.pem(),
            leaf.pem(),
            leaf_key.serialize_pem(),
            hex::encode(leaf.der()),
        )
    }

    #[test]
    fn ok_a_matching_chaining_pair_passes_and_reports_its_names() {
        let (ca, leaf, key, _) = ca_and_leaf(&["a.test", "10.1.2.3"], (-1, 1));
        let anchors = TrustAnchors::from_pem(&ca).unwrap();
        let checked = check_pair(&leaf, &key, &anchors).unwrap();
        assert_eq!(checked.names.dns, ["a.test"]);
        assert_eq!(checked.names.ip, ["10.1.2.3"]);
        assert!(checked.not_after > OffsetDateTime::now_utc());
    }

    #[test]
    fn fail_a_key_from_another_pair_or_another_ca() {
        let (ca, leaf, _, _) = ca_and_leaf(&["a.test"], (-1, 1));
        let (other_ca, _, other_key, _) = ca_and_leaf(&["a.test"], (-1, 1));
        let anchors = TrustAnchors::from_pem(&ca).unwrap();
        assert!(check_pair(&leaf, &other_key, &anchors).is_err());
        let (_, leaf2, key2, _) = ca_and_leaf(&["a.test"], (-1, 1));
        assert!(check_pair(&leaf2, &key2, &anchors).is_err(), "foreign CA");
        let _ = other_ca;
    }

    #[test]
    fn ok_an_expired_certificate_still_chains_so_it_can_be_told_apart() {
        let (ca, leaf, key, _) = ca_and_leaf(&["a.test"], (-3, -1));
        let anchors = TrustAnchors::from_pem(&ca).unwrap();
        let checked = check_pair(&leaf, &key, &anchors).unwrap();
        assert!(checked.not_after < OffsetDateTime::now_utc());
    }

    #[test]
    fn fail_a_written_ca_without_the_configured_root_is_not_re_pinned() {
        let (ca, _, _, _) = ca_and_leaf(&["a.test"], (-1, 1));
        let der = certificates_from_pem(&ca).unwrap().remove(0);
        let right = fingerprint(der.as_ref());
        assert!(anchors_from_written_ca(&ca, &right).is_ok());
        let wrong = format!("sha256:{}", "00".repeat(32));
        let error = anchors_from_written_ca(&ca, &wrong).unwrap_err();
        assert!(matches!(error, WorkloadError::Trust(_)));
        assert_eq!(error.exit(), Exit::TrustFailure);
    }

    #[test]
    fn ok_token_debug_is_redacted() {
        let token = Token::new(" eyJsecret \n").unwrap();
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        assert!(Token::new("  \n").is_none());
    }
}
