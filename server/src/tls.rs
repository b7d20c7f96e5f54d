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
use time::OffsetDateTime;

use crate::error::ServiceError;
use crate::issuance::csr::VerifiedCsr;
use crate::issuance::Issuer;
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
/// certificate, then any intermediate CAs above it).
pub fn server_config(
    resolver: Arc<ServerCertificate>,
    root_der: &[u8],
    ca_certificates_der: &[Vec<u8>],
) -> Result<rustls::ServerConfig, ServiceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_der.to_vec()))
        .map_err(|error| ServiceError::from(TlsError::TrustAnchor(error.to_string())))?;
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|error| TlsError::ClientVerifier(error.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Configuration(error.to_string()))?
        .with_client_cert_verifier(Arc::new(HolderCertificateVerifier {
            inner,
            ca_certificates: ca_certificates_der
                .iter()
                .map(|der| CertificateDer::from(der.clone()))
                .collect(),
        }))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// webpki's client verifier, except that a certificate which is valid in
/// every respect but its expiry passes: its chain and signatures are checked
/// as of its own `notAfter`. The holder layer then refuses it with
/// `certificate.expired`, which tells an agent to enroll again rather than
/// leaving it to guess at a handshake alert.
#[derive(Debug)]
pub struct HolderCertificateVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// The CA's certificates below the root (issuing first), added to the
    /// client's intermediates, so that a client presenting only its leaf
    /// still verifies.
    ca_certificates: Vec<CertificateDer<'static>>,
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
        match self.inner.verify_client_cert(end_entity, &chain, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                not_after,
                ..
            })) => self.inner.verify_client_cert(end_entity, &chain, not_after),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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
