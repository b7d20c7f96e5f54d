//! The server's TLS: its own HTTPS identity, and how it checks the client
//! certificates holders present for renewal.
//!
//! - The server certificate is one it issues to itself from its CA through
//!   the normal recorded pipeline, held in a rustls resolver and replaced
//!   in-process before it expires. Its private key is generated in memory at
//!   start and at every renewal and never written to disk; it is not a CA key.
//! - Client certificates are optional (enrollment needs none). When one is
//!   presented it must chain to this CA's root and its key must sign the
//!   handshake; an *expired* one is let through ([`HolderCertificateVerifier`])
//!   so that `/v1/renew` can answer `certificate.expired` instead of a bare
//!   handshake failure. The inventory, not the handshake, decides what a
//!   presented certificate may do (`crate::issuance::holder`).
//! - Every client certificate the verifier refuses is logged once, at WARN,
//!   and counted in `certmint_tls_handshake_failures_total{reason}`
//!   ([`HandshakeFailure`]). The line describes the presented certificate
//!   (subject, SANs, issuer, serial, notAfter, SHA-256): any client can
//!   present any bytes, so each field is length-bounded and goes through the
//!   log formatter's escaping; nothing of a key is ever logged.
//! - Handshake failures that are not about a client certificate (no shared
//!   version or cipher suite, bytes that are not TLS) happen inside the TLS
//!   acceptor, which drops its error without a hook: they are not counted.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use certmint::wire::{AllowedNames, PolicySpec, RenewalRules, TtlBounds};
use const_oid::db::rfc5912;
use der::asn1::BitString;
use der::{Any, Decode as _};
use prometheus_client::metrics::gauge::Gauge;
use ring::signature::KeyPair as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerifier as _};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use crate::error::ServiceError;
use crate::issuance::csr::VerifiedCsr;
use crate::issuance::Issuer;
use crate::metrics::TlsHandshakeFailures;
pub use crate::policy::SERVER_POLICY_NAME;
use crate::policy::{CompiledPolicy, RequestedNames};

/// Why the server's TLS could not be set up. Operator-facing: it stops
/// `serve`, or a renewal of the server certificate, with the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls does not accept the CA root as a trust anchor.
    #[error("the CA root is not a usable trust anchor: {0}")]
    TrustAnchor(String),
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    ClientVerifier(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Configuration(String),
    /// The server's own certificate fails the check its clients will make.
    #[error("the server's own certificate would be refused by its clients: {0}")]
    RefusedByClients(String),
    /// The server certificate or its key could not be built or loaded.
    #[error("server certificate: {0}")]
    ServerCertificate(String),
}

/// Holds the current server certificate for rustls.
#[derive(Debug)]
pub struct ServerCertificate {
    current: RwLock<Arc<CertifiedKey>>,
    /// The current certificate's notAfter, unix seconds: readiness reads it,
    /// and it is the `/metrics` gauge itself, so the two cannot disagree.
    not_after: Gauge,
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|guard| guard.clone())
    }
}

impl ServerCertificate {
    /// Wraps a first certificate; `not_after` is the metrics gauge that
    /// will hold the served certificate's expiry.
    pub fn new(issued: IssuedServerCertificate, not_after: Gauge) -> Arc<Self> {
        not_after.set(issued.not_after.unix_timestamp());
        Arc::new(Self {
            current: RwLock::new(Arc::new(issued.key)),
            not_after,
        })
    }

    /// Swaps in a renewed certificate; new handshakes use it at once.
    pub fn replace(&self, issued: IssuedServerCertificate) {
        if let Ok(mut guard) = self.current.write() {
            *guard = Arc::new(issued.key);
            self.not_after.set(issued.not_after.unix_timestamp());
        }
    }

    /// The served certificate's notAfter.
    pub fn not_after(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.not_after.get())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// The server's rustls configuration: TLS 1.2/1.3, HTTP/1.1, the
/// self-issued certificate from `resolver`, optional client certificates
/// chaining to `root_der` through `ca_certificates_der` (the issuing
/// certificate, then any intermediate CAs above it); refused client
/// certificates are counted in `failures`.
pub fn server_config(
    resolver: Arc<ServerCertificate>,
    root_der: &[u8],
    ca_certificates_der: &[Vec<u8>],
    failures: TlsHandshakeFailures,
) -> Result<rustls::ServerConfig, ServiceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = HolderCertificateVerifier::new(root_der, ca_certificates_der, failures)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Configuration(error.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// webpki's client verifier, except that a certificate which is valid in
/// every respect but its expiry passes: its chain and signatures are checked
/// as of its own `notAfter`. The holder layer then refuses it with
/// `certificate.expired`, which tells an agent to enroll again rather than
/// leaving it to guess at a handshake alert.
///
/// Every refusal (of the chain, or of the handshake signature made with the
/// certificate's key) is logged and counted ([`HandshakeFailure`]) before
/// rustls turns it into an alert, which is all the client sees.
#[derive(Debug)]
pub struct HolderCertificateVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// The CA's certificates below the root (issuing first), added to the
    /// client's intermediates, so that a client presenting only its leaf
    /// still verifies.
    ca_certificates: Vec<CertificateDer<'static>>,
    failures: TlsHandshakeFailures,
}

impl HolderCertificateVerifier {
    /// A verifier for client certificates chaining to `root_der`, through
    /// `ca_certificates_der` if the client leaves them out.
    pub fn new(
        root_der: &[u8],
        ca_certificates_der: &[Vec<u8>],
        failures: TlsHandshakeFailures,
    ) -> Result<Self, ServiceError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(root_der.to_vec()))
            .map_err(|error| ServiceError::from(TlsError::TrustAnchor(error.to_string())))?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|error| TlsError::ClientVerifier(error.to_string()))?;
        Ok(Self {
            inner,
            ca_certificates: ca_certificates_der
                .iter()
                .map(|der| CertificateDer::from(der.clone()))
                .collect(),
            failures,
        })
    }

    /// Logs and counts one refused certificate, then hands the error back.
    fn refused(
        &self,
        certificate: &CertificateDer<'_>,
        reason: HandshakeFailure,
        error: rustls::Error,
    ) -> rustls::Error {
        self.failures.inc(reason);
        let presented = PresentedCertificate::describe(certificate.as_ref());
        tracing::warn!(
            tls.reason = reason.label(),
            cert.subject = presented.subject.as_deref(),
            cert.sans = presented.sans.as_deref(),
            cert.issuer = presented.issuer.as_deref(),
            cert.serial = presented.serial.as_deref(),
            cert.not_after = presented.not_after.as_deref(),
            cert.sha256 = presented.sha256.as_str(),
            // Bounded too: webpki's context lists what the certificate
            // presents (every EKU, say), and the client chose that.
            error = bounded(&error.to_string()).as_str(),
            "client certificate refused in the TLS handshake"
        );
        error
    }
}

impl ClientCertVerifier for HolderCertificateVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain: Vec<CertificateDer<'_>> = intermediates.to_vec();
        for ca in &self.ca_certificates {
            if !chain.iter().any(|der| der.as_ref() == ca.as_ref()) {
                chain.push(ca.clone());
            }
        }
        let verdict = match self.inner.verify_client_cert(end_entity, &chain, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                not_after,
                ..
            })) => self.inner.verify_client_cert(end_entity, &chain, not_after),
            other => other,
        };
        verdict.map_err(|error| {
            self.refused(end_entity, HandshakeFailure::of_certificate(&error), error)
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, cert, dss)
            .map_err(|error| self.refused(cert, HandshakeFailure::BadHandshakeSignature, error))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .map_err(|error| self.refused(cert, HandshakeFailure::BadHandshakeSignature, error))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why the server refused a client certificate in the TLS handshake: the
/// `reason` label of `certmint_tls_handshake_failures_total` and the
/// `tls.reason` log field. The labels are stable (dashboards and alerts
/// name them): new reasons are appended, none is renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The chain leads to no trust anchor of this CA (`unknown_issuer`).
    UnknownIssuer,
    /// A signature in the chain does not verify (`bad_signature`).
    BadSignature,
    /// The handshake signature was not made with the certificate's key
    /// (`bad_handshake_signature`): the client does not hold it.
    BadHandshakeSignature,
    /// A certificate's notBefore is in the future (`not_valid_yet`).
    NotValidYet,
    /// A certificate of the chain had already expired at the leaf's own
    /// notAfter (`expired`); an expired leaf alone is let through.
    Expired,
    /// The leaf's extended key usage does not allow clientAuth (`wrong_eku`).
    WrongEku,
    /// A certificate of the chain is revoked (`revoked`).
    Revoked,
    /// Revocation could not be decided: no or an expired CRL
    /// (`revocation_unknown`).
    RevocationUnknown,
    /// A signature algorithm the server does not support
    /// (`unsupported_signature_algorithm`).
    UnsupportedSignatureAlgorithm,
    /// Bytes that are not a DER certificate (`malformed`).
    Malformed,
    /// Anything else (`other`): name or path-length constraints, a CA
    /// certificate presented as a leaf, an unsupported critical extension;
    /// the log line's `error` says which.
    Other,
}

impl HandshakeFailure {
    /// Every reason, for exporting each series from the start.
    pub const ALL: [Self; 11] = [
        Self::UnknownIssuer,
        Self::BadSignature,
        Self::BadHandshakeSignature,
        Self::NotValidYet,
        Self::Expired,
        Self::WrongEku,
        Self::Revoked,
        Self::RevocationUnknown,
        Self::UnsupportedSignatureAlgorithm,
        Self::Malformed,
        Self::Other,
    ];

    /// The stable lower_snake name.
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownIssuer => "unknown_issuer",
            Self::BadSignature => "bad_signature",
            Self::BadHandshakeSignature => "bad_handshake_signature",
            Self::NotValidYet => "not_valid_yet",
            Self::Expired => "expired",
            Self::WrongEku => "wrong_eku",
            Self::Revoked => "revoked",
            Self::RevocationUnknown => "revocation_unknown",
            Self::UnsupportedSignatureAlgorithm => "unsupported_signature_algorithm",
            Self::Malformed => "malformed",
            Self::Other => "other",
        }
    }

    /// The reason of a chain verification error, as rustls reports
    /// webpki's verdict.
    fn of_certificate(error: &rustls::Error) -> Self {
        let rustls::Error::InvalidCertificate(error) = error else {
            return match error {
                rustls::Error::InvalidCertRevocationList(_) => Self::RevocationUnknown,
                _ => Self::Other,
            };
        };
        match error {
            CertificateError::UnknownIssuer => Self::UnknownIssuer,
            CertificateError::BadSignature => Self::BadSignature,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Self::NotValidYet
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Self::Expired,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Self::WrongEku
            }
            CertificateError::Revoked => Self::Revoked,
            CertificateError::UnknownRevocationStatus
            | CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => Self::RevocationUnknown,
            #[expect(
                deprecated,
                reason = "webpki's context-free algorithm errors still arrive as this variant"
            )]
            CertificateError::UnsupportedSignatureAlgorithm => Self::UnsupportedSignatureAlgorithm,
            CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                Self::UnsupportedSignatureAlgorithm
            }
            CertificateError::BadEncoding => Self::Malformed,
            _ => Self::Other,
        }
    }
}

/// Longest value of one log field describing a presented certificate, in
/// characters: the certificate is the client's, of any size.
const LOG_FIELD_CHARS: usize = 200;

/// SANs listed in the log line; the rest are counted.
const LOG_SANS: usize = 4;

/// What the log line says about a presented certificate. Only the fields
/// of a certificate that parses are set; the SHA-256 always is.
#[derive(Debug, Default, PartialEq, Eq)]
struct PresentedCertificate {
    subject: Option<String>,
    /// `dns:…`, `ip:…`, `uri:…`, `email:…`, or the kind of any other name,
    /// comma-separated, at most [`LOG_SANS`] then `+N more`.
    sans: Option<String>,
    issuer: Option<String>,
    /// Lower-case hex, as the inventory records serials.
    serial: Option<String>,
    /// RFC 3339.
    not_after: Option<String>,
    /// `sha256:<hex>` of the presented DER: finds the certificate when
    /// nothing else parses.
    sha256: String,
}

impl PresentedCertificate {
    fn describe(der: &[u8]) -> Self {
        let sha256 = format!(
            "sha256:{}",
            hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
        );
        let Ok(certificate) = x509_cert::Certificate::from_der(der) else {
            return Self {
                sha256,
                ..Self::default()
            };
        };
        let tbs = certificate.tbs_certificate();
        let not_after = tbs.validity().not_after.to_unix_duration();
        Self {
            subject: Some(bounded(&tbs.subject().to_string())),
            sans: match tbs.get_extension::<SubjectAltName>() {
                Ok(Some((_, names))) => Some(bounded(&san_list(&names.0))),
                Ok(None) => None,
                Err(_) => Some("(malformed)".into()),
            },
            issuer: Some(bounded(&tbs.issuer().to_string())),
            serial: Some(bounded(&hex::encode(tbs.serial_number().as_bytes()))),
            not_after: i64::try_from(not_after.as_secs())
                .ok()
                .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok())
                .and_then(|time| time.format(&Rfc3339).ok()),
            sha256,
        }
    }
}

fn san_list(names: &[GeneralName]) -> String {
    let mut listed: Vec<String> = names
        .iter()
        .take(LOG_SANS)
        .map(|name| match name {
            GeneralName::DnsName(dns) => format!("dns:{dns}"),
            GeneralName::IpAddress(octets) => match <[u8; 4]>::try_from(octets.as_bytes()) {
                Ok(v4) => format!("ip:{}", IpAddr::from(v4)),
                Err(_) => match <[u8; 16]>::try_from(octets.as_bytes()) {
                    Ok(v6) => format!("ip:{}", IpAddr::from(v6)),
                    Err(_) => format!("ip:0x{}", hex::encode(octets.as_bytes())),
                },
            },
            GeneralName::UniformResourceIdentifier(uri) => format!("uri:{uri}"),
            GeneralName::Rfc822Name(email) => format!("email:{email}"),
            GeneralName::DirectoryName(_) => "directoryName".into(),
            GeneralName::OtherName(_) => "otherName".into(),
            GeneralName::EdiPartyName(_) => "ediPartyName".into(),
            GeneralName::RegisteredId(_) => "registeredID".into(),
        })
        .collect();
    if names.len() > LOG_SANS {
        listed.push(format!("+{} more", names.len() - LOG_SANS));
    }
    listed.join(", ")
}

/// `text` cut to [`LOG_FIELD_CHARS`] characters, marked with `…` when cut.
fn bounded(text: &str) -> String {
    let mut chars = text.chars();
    let mut kept: String = chars.by_ref().take(LOG_FIELD_CHARS).collect();
    if chars.next().is_some() {
        kept.push('…');
    }
    kept
}

/// A freshly issued server certificate and when to renew it.
pub struct IssuedServerCertificate {
    /// For rustls.
    pub key: CertifiedKey,
    /// The server's renewal time.
    pub renew_after: OffsetDateTime,
    /// When it expires.
    pub not_after: OffsetDateTime,
    /// Serial, for logs.
    pub serial: String,
}

/// Issues a new server certificate for `names` (DNS names or IP addresses)
/// and checks it as its clients will; a certificate that fails the check
/// (or cannot be served for another reason) is revoked
/// (cessationOfOperation) and never served. `public_host`, the host of
/// `server.public_url`, is checked too, with a warning only.
pub fn issue(
    issuer: &Issuer,
    names: &[String],
    public_host: Option<&str>,
    ttl_seconds: u64,
) -> Result<IssuedServerCertificate, ServiceError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .map_err(|_| crate::random::EntropyError)?;
    let key_pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .map_err(|_| internal("generated key does not load"))?;
    let subject_public_key_info = p256_spki(key_pair.public_key().as_ref())?;
    let mut requested = RequestedNames::default();
    for name in names {
        match name.parse::<IpAddr>() {
            Ok(ip) => requested.ip.push(ip),
            Err(_) => requested.dns.push(name.to_ascii_lowercase()),
        }
    }
    let request = VerifiedCsr::for_own_key(subject_public_key_info, requested)?;
    let bundle = issuer.issue_internal(request, &server_policy(ttl_seconds)?, ttl_seconds)?;
    // From here the certificate is issued and recorded: if it cannot be
    // served, it is revoked rather than left live in the inventory.
    let servable = (|| {
        let mut chain = vec![pem_to_der(&bundle.certificate_pem)?];
        for block in split_pem(&bundle.chain_pem) {
            chain.push(pem_to_der(&block)?);
        }
        let clients = ClientView::of(&chain)?;
        for name in names {
            clients.accept(name)?;
        }
        if let Some(host) = public_host {
            // Only a warning: server.public_url is the tokens' issuer and
            // audience, and may name a TCP load balancer's address; agents
            // connect to their own server_url.
            if let Err(refusal) = clients.accept(host) {
                tracing::warn!(
                    "the host of server.public_url ({host}) is not in the server certificate (server.names); agents that connect to it will refuse the handshake: {refusal}"
                );
            }
        }
        let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec()));
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&private_key)
            .map_err(|error| internal(&format!("rustls refused the key: {error}")))?;
        Ok::<_, ServiceError>(CertifiedKey::new(
            chain.into_iter().map(CertificateDer::from).collect(),
            signing_key,
        ))
    })();
    let key = match servable {
        Ok(key) => key,
        Err(refusal) => {
            if let Err(error) = issuer.withdraw_internal(&bundle.serial) {
                tracing::warn!(cert.serial = %bundle.serial, error = %error,
                    "could not revoke the server certificate that cannot be served");
            }
            return Err(refusal);
        }
    };
    Ok(IssuedServerCertificate {
        key,
        renew_after: bundle.renew_after,
        not_after: bundle.not_after,
        serial: bundle.serial,
    })
}

/// The server's own chain (leaf first, root last) as its clients will see
/// it, through rustls' webpki verifier: serverAuth, every link and
/// constraint up to the root. A chain that would fail there (an expired
/// intermediate, nameConstraints that leave out the server's names, a
/// restrictive EKU) stops `serve` at start with the reason, instead of
/// failing every client's handshake with a bare alert.
struct ClientView<'a> {
    verifier: Arc<rustls::client::WebPkiServerVerifier>,
    leaf: CertificateDer<'a>,
    intermediates: Vec<CertificateDer<'a>>,
}

impl<'a> ClientView<'a> {
    fn of(chain: &'a [Vec<u8>]) -> Result<Self, ServiceError> {
        let (Some(leaf), Some(root)) = (chain.first(), chain.last()) else {
            return Err(internal("the server certificate chain is empty"));
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(root.clone()))
            .map_err(|error| refused(format!("the root is not a usable trust anchor: {error}")))?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| refused(error.to_string()))?;
        Ok(ClientView {
            verifier,
            leaf: CertificateDer::from(leaf.as_slice()),
            intermediates: chain[1..chain.len().saturating_sub(1)]
                .iter()
                .map(|der| CertificateDer::from(der.as_slice()))
                .collect(),
        })
    }

    /// Whether a client connecting to `name` accepts the chain. A wildcard
    /// name is checked with a made-up name it covers.
    fn accept(&self, name: &str) -> Result<(), ServiceError> {
        let probe = match name.strip_prefix("*.") {
            Some(parent) => format!("certmint-self-check.{parent}"),
            None => name.to_owned(),
        };
        let server_name = rustls_pki_types::ServerName::try_from(probe.as_str())
            .map_err(|error| refused(format!("{name:?} is not a server name: {error}")))?;
        self.verifier
            .verify_server_cert(
                &self.leaf,
                &self.intermediates,
                &server_name,
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|error| refused(format!("for {name}: {error}")))
    }
}

fn refused(what: String) -> ServiceError {
    TlsError::RefusedByClients(what).into()
}

/// The built-in policy the server's own certificates are recorded under.
/// It is never evaluated (the names come from the config, not a client);
/// it supplies the EKU and the name recorded in the inventory.
fn server_policy(ttl_seconds: u64) -> Result<CompiledPolicy, ServiceError> {
    let ttl = certmint::Duration::from_seconds(ttl_seconds)
        .ok_or_else(|| internal("server certificate lifetime must be positive"))?;
    let spec = PolicySpec {
        name: SERVER_POLICY_NAME.into(),
        description: "the server's own HTTPS certificate".into(),
        allowed: AllowedNames {
            dns: vec!["certmint.invalid".into()],
            ..AllowedNames::default()
        },
        key_types: vec!["ec-p256".into()],
        ttl: TtlBounds {
            default: ttl,
            max: ttl,
        },
        extended_key_usage: vec!["server_auth".into()],
        renewal: RenewalRules::default(),
        allow_wildcard_certificates: false,
        enabled: true,
    };
    Ok(CompiledPolicy::compile(&spec, 0)?)
}

fn p256_spki(point: &[u8]) -> Result<SubjectPublicKeyInfoOwned, ServiceError> {
    let parameters =
        Any::encode_from(&rfc5912::SECP_256_R_1).map_err(|_| internal("curve encoding"))?;
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: rfc5912::ID_EC_PUBLIC_KEY,
            parameters: Some(parameters),
        },
        subject_public_key: BitString::from_bytes(point).map_err(|_| internal("point encoding"))?,
    })
}

fn split_pem(text: &str) -> Vec<String> {
    let marker = "-----END CERTIFICATE-----";
    text.split_inclusive(marker)
        .map(str::trim)
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----"))
        .map(str::to_owned)
        .collect()
}

fn pem_to_der(text: &str) -> Result<Vec<u8>, ServiceError> {
    let (_, der) =
        der::pem::decode_vec(text.trim().as_bytes()).map_err(|_| internal("PEM decoding"))?;
    // Parse once so a broken chain fails here, not in a handshake.
    x509_cert::Certificate::from_der(&der).map_err(|_| internal("certificate decoding"))?;
    Ok(der)
}

fn internal(what: &str) -> ServiceError {
    TlsError::ServerCertificate(what.to_owned()).into()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    use serde_json::Value;

    use super::*;
    use crate::metrics::Metrics;

    struct TestCa {
        issuer: rcgen::Issuer<'static, KeyPair>,
        der: Vec<u8>,
    }

    fn test_ca(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key).expect("CA certificate");
        TestCa {
            der: certificate.der().to_vec(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A clientAuth leaf for `a.example` and 10.0.0.1 valid from an hour ago
    /// for an hour, as `edit` changes it.
    fn leaf(ca: &TestCa, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("10.0.0.1".parse().expect("an address")));
        params
            .distinguished_name
            .push(DnType::CommonName, "workload a");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(vec![0x0a, 0xbc, 0xde].into());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::hours(1);
        edit(&mut params);
        params
            .signed_by(&key, &ca.issuer)
            .expect("leaf certificate")
            .der()
            .to_vec()
    }

    fn verifier(ca: &TestCa, metrics: &Metrics) -> HolderCertificateVerifier {
        HolderCertificateVerifier::new(&ca.der, &[], metrics.tls_handshake_failures())
            .expect("verifier")
    }

    fn verify(verifier: &HolderCertificateVerifier, der: &[u8]) -> Result<(), rustls::Error> {
        verifier
            .verify_client_cert(&CertificateDer::from(der), &[], UnixTime::now())
            .map(|_| ())
    }

    /// The counter's value for `reason`.
    fn count(metrics: &Metrics, reason: HandshakeFailure) -> u64 {
        let prefix = format!(
            "certmint_tls_handshake_failures_total{{reason=\"{}\"}} ",
            reason.label()
        );
        let text = metrics.render();
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
    }

    /// Every reason's count.
    fn counts(metrics: &Metrics) -> Vec<(HandshakeFailure, u64)> {
        HandshakeFailure::ALL
            .into_iter()
            .map(|reason| (reason, count(metrics, reason)))
            .collect()
    }

    /// A log sink for a test-local subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
        }
    }

    /// Runs `body` with the server's JSON log format going to a buffer.
    fn json_log_of(body: impl FnOnce()) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(subscriber, body);
        captured.text()
    }

    /// Runs `body` with the server's text log format going to a buffer.
    fn text_log_of(body: impl FnOnce()) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, body);
        captured.text()
    }

    /// Verifies `der` once, expecting a refusal; returns it with the counts
    /// that changed and the one JSON log line.
    fn refusal_of(ca: &TestCa, der: &[u8]) -> (rustls::Error, Vec<(HandshakeFailure, u64)>, Value) {
        let metrics = Metrics::new();
        let verifier = verifier(ca, &metrics);
        let mut outcome = None;
        let log = json_log_of(|| outcome = Some(verify(&verifier, der)));
        let error = match outcome {
            Some(Err(error)) => error,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let changed = counts(&metrics)
            .into_iter()
            .filter(|(_, count)| *count != 0)
            .collect();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "one log line per refusal: {log}");
        let line: Value = serde_json::from_str(lines[0]).expect("a JSON log line");
        (error, changed, line)
    }

    #[test]
    fn ok_labels_are_distinct_lower_snake_case() {
        let labels: Vec<&str> = HandshakeFailure::ALL.iter().map(|r| r.label()).collect();
        for label in &labels {
            assert!(
                !label.is_empty() && label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{label}"
            );
        }
        let mut unique = labels.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
    }

    #[test]
    fn ok_rustls_errors_map_to_their_reasons() {
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_000));
        let cases: Vec<(rustls::Error, HandshakeFailure)> = vec![
            (
                CertificateError::UnknownIssuer.into(),
                HandshakeFailure::UnknownIssuer,
            ),
            (
                CertificateError::BadSignature.into(),
                HandshakeFailure::BadSignature,
            ),
            (
                CertificateError::NotValidYet.into(),
                HandshakeFailure::NotValidYet,
            ),
            (
                CertificateError::NotValidYetContext {
                    time,
                    not_before: time,
                }
                .into(),
                HandshakeFailure::NotValidYet,
            ),
            (CertificateError::Expired.into(), HandshakeFailure::Expired),
            (
                CertificateError::ExpiredContext {
                    time,
                    not_after: time,
                }
                .into(),
                HandshakeFailure::Expired,
            ),
            (
                CertificateError::InvalidPurpose.into(),
                HandshakeFailure::WrongEku,
            ),
            (
                CertificateError::InvalidPurposeContext {
                    required: rustls::ExtendedKeyPurpose::ClientAuth,
                    presented: vec![rustls::ExtendedKeyPurpose::ServerAuth],
                }
                .into(),
                HandshakeFailure::WrongEku,
            ),
            (CertificateError::Revoked.into(), HandshakeFailure::Revoked),
            (
                CertificateError::UnknownRevocationStatus.into(),
                HandshakeFailure::RevocationUnknown,
            ),
            (
                CertificateError::ExpiredRevocationList.into(),
                HandshakeFailure::RevocationUnknown,
            ),
            (
                rustls::CertRevocationListError::BadSignature.into(),
                HandshakeFailure::RevocationUnknown,
            ),
            (
                CertificateError::UnsupportedSignatureAlgorithmContext {
                    signature_algorithm_id: vec![1],
                    supported_algorithms: vec![],
                }
                .into(),
                HandshakeFailure::UnsupportedSignatureAlgorithm,
            ),
            (
                CertificateError::BadEncoding.into(),
                HandshakeFailure::Malformed,
            ),
            (
                CertificateError::UnhandledCriticalExtension.into(),
                HandshakeFailure::Other,
            ),
            (
                CertificateError::ApplicationVerificationFailure.into(),
                HandshakeFailure::Other,
            ),
            (rustls::Error::General("x".into()), HandshakeFailure::Other),
        ];
        for (error, reason) in cases {
            assert_eq!(
                HandshakeFailure::of_certificate(&error),
                reason,
                "{error:?}"
            );
        }
    }

    #[test]
    fn fail_a_leaf_of_another_ca_is_an_unknown_issuer_logged_with_its_fields() {
        let trusted = test_ca("trusted root");
        let stranger = test_ca("stranger root");
        let der = leaf(&stranger, |_| {});
        let (error, changed, line) = refusal_of(&trusted, &der);
        assert_eq!(
            error,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        assert_eq!(changed, vec![(HandshakeFailure::UnknownIssuer, 1)]);
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["tls.reason"], "unknown_issuer", "{line}");
        assert_eq!(line["cert.subject"], "CN=workload a", "{line}");
        assert_eq!(line["cert.issuer"], "CN=stranger root", "{line}");
        assert_eq!(line["cert.sans"], "dns:a.example, ip:10.0.0.1", "{line}");
        assert_eq!(line["cert.serial"], "0abcde", "{line}");
        let expected_sha256 = format!(
            "sha256:{}",
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &der))
        );
        assert_eq!(line["cert.sha256"], expected_sha256.as_str(), "{line}");
        let not_after = line["cert.not_after"].as_str().expect("cert.not_after");
        OffsetDateTime::parse(not_after, &Rfc3339).expect("RFC 3339 notAfter");
        assert!(
            line["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{line}"
        );
    }

    #[test]
    fn fail_a_changed_signature_byte_is_a_bad_signature() {
        let ca = test_ca("root");
        let mut der = leaf(&ca, |_| {});
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let (_, changed, line) = refusal_of(&ca, &der);
        assert_eq!(changed, vec![(HandshakeFailure::BadSignature, 1)]);
        // Still a parseable certificate: its fields are logged.
        assert_eq!(line["cert.subject"], "CN=workload a", "{line}");
    }

    #[test]
    fn fail_a_server_auth_only_leaf_is_a_wrong_eku() {
        let ca = test_ca("root");
        let der = leaf(&ca, |params| {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        let (_, changed, line) = refusal_of(&ca, &der);
        assert_eq!(changed, vec![(HandshakeFailure::WrongEku, 1)]);
        assert_eq!(line["tls.reason"], "wrong_eku", "{line}");
    }

    #[test]
    fn fail_a_leaf_valid_from_tomorrow_is_not_valid_yet() {
        let ca = test_ca("root");
        let der = leaf(&ca, |params| {
            let now = OffsetDateTime::now_utc();
            params.not_before = now + time::Duration::days(1);
            params.not_after = now + time::Duration::days(2);
        });
        let (_, changed, _) = refusal_of(&ca, &der);
        assert_eq!(changed, vec![(HandshakeFailure::NotValidYet, 1)]);
    }

    #[test]
    fn fail_the_ca_certificate_as_a_leaf_is_other_with_the_error_logged() {
        let ca = test_ca("root");
        let (_, changed, line) = refusal_of(&ca, &ca.der);
        assert_eq!(changed, vec![(HandshakeFailure::Other, 1)]);
        assert!(
            line["error"]
                .as_str()
                .is_some_and(|error| error.contains("CaUsedAsEndEntity")),
            "{line}"
        );
    }

    #[test]
    fn fail_garbage_is_malformed_and_logged_by_its_digest_only() {
        let ca = test_ca("root");
        let garbage = b"\x30\x03not a certificate".to_vec();
        let (_, changed, line) = refusal_of(&ca, &garbage);
        assert_eq!(changed, vec![(HandshakeFailure::Malformed, 1)]);
        assert!(line["cert.sha256"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")));
        for absent in [
            "cert.subject",
            "cert.sans",
            "cert.issuer",
            "cert.serial",
            "cert.not_after",
        ] {
            assert!(line.get(absent).is_none(), "{absent} in {line}");
        }
    }

    #[test]
    fn ok_an_expired_leaf_passes_uncounted_and_unlogged() {
        let ca = test_ca("root");
        let der = leaf(&ca, |params| {
            let now = OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(2);
            params.not_after = now - time::Duration::days(1);
        });
        let metrics = Metrics::new();
        let verifier = verifier(&ca, &metrics);
        let mut outcome = None;
        let log = json_log_of(|| outcome = Some(verify(&verifier, &der)));
        assert!(matches!(outcome, Some(Ok(()))), "{outcome:?}");
        assert!(counts(&metrics).iter().all(|(_, count)| *count == 0));
        assert_eq!(log, "");
    }

    #[test]
    fn ok_a_hostile_subject_stays_on_one_text_log_line() {
        let trusted = test_ca("trusted root");
        let stranger = test_ca("stranger root");
        let der = leaf(&stranger, |params| {
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(
                DnType::CommonName,
                "x\n2026-01-01T00:00:00Z  INFO certmint_server: forged",
            );
        });
        let metrics = Metrics::new();
        let verifier = verifier(&trusted, &metrics);
        let log = text_log_of(|| {
            let _ = verify(&verifier, &der);
        });
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains("WARN"), "{log}");
        assert!(log.contains("tls.reason=\"unknown_issuer\""), "{log}");
    }

    #[test]
    fn ok_long_fields_and_many_sans_are_bounded() {
        let ca = test_ca("root");
        let long = "l".repeat(1_000);
        let der = leaf(&ca, |params| {
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, long.as_str());
            params.subject_alt_names = (0..10)
                .map(|n| SanType::DnsName(format!("n{n}.example").try_into().expect("a name")))
                .collect();
        });
        let presented = PresentedCertificate::describe(&der);
        let subject = presented.subject.expect("subject");
        assert_eq!(subject.chars().count(), LOG_FIELD_CHARS + 1, "{subject}");
        assert!(subject.ends_with('…'), "{subject}");
        assert_eq!(
            presented.sans.as_deref(),
            Some("dns:n0.example, dns:n1.example, dns:n2.example, dns:n3.example, +6 more")
        );
    }

    #[test]
    fn ok_a_long_error_context_is_bounded_in_the_log() {
        // webpki's wrong-EKU error lists every EKU the certificate has.
        let ca = test_ca("root");
        let der = leaf(&ca, |params| {
            params.extended_key_usages = (0..100)
                .map(|n| ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 99_999, n]))
                .collect();
        });
        let (_, changed, line) = refusal_of(&ca, &der);
        assert_eq!(changed, vec![(HandshakeFailure::WrongEku, 1)]);
        let error = line["error"].as_str().expect("error");
        assert_eq!(error.chars().count(), LOG_FIELD_CHARS + 1, "{error}");
    }

    #[test]
    fn ok_a_short_field_is_kept_whole() {
        assert_eq!(bounded("CN=a"), "CN=a");
        let exact = "e".repeat(LOG_FIELD_CHARS);
        assert_eq!(bounded(&exact), exact);
    }

    #[test]
    fn ok_other_san_kinds_are_named_and_ipv6_printed() {
        let ca = test_ca("root");
        let der = leaf(&ca, |params| {
            params.subject_alt_names = vec![
                SanType::URI("spiffe://example/w".try_into().expect("a URI")),
                SanType::Rfc822Name("ops@example.com".try_into().expect("an address")),
                SanType::IpAddress("2001:db8::1".parse().expect("an address")),
            ];
        });
        let presented = PresentedCertificate::describe(&der);
        assert_eq!(
            presented.sans.as_deref(),
            Some("uri:spiffe://example/w, email:ops@example.com, ip:2001:db8::1")
        );
    }
}
