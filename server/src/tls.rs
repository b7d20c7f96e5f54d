//! The server's own HTTPS identity: a certificate it issues to itself from
//! its CA through the normal recorded pipeline, held in a rustls resolver
//! and replaced in-process before it expires.
//!
//! Invariant: the TLS private key is generated in memory at start and at
//! every renewal and never written to disk; it is not a CA key.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use certmint::wire::{AllowedNames, PolicySpec, RenewalRules, TtlBounds};
use const_oid::db::rfc5912;
use der::asn1::BitString;
use der::{Any, Decode as _};
use ring::signature::KeyPair as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use time::OffsetDateTime;

use crate::error::ServiceError;
use crate::issuance::csr::VerifiedCsr;
use crate::issuance::Issuer;
use crate::policy::{CompiledPolicy, RequestedNames};

/// Name recorded as the "policy" of the server's own certificates.
pub const SERVER_POLICY_NAME: &str = "certmint-server-tls";

/// Holds the current server certificate for rustls.
#[derive(Debug)]
pub struct ServerCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|guard| guard.clone())
    }
}

impl ServerCertificate {
    /// Wraps a first certificate.
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Swaps in a renewed certificate; new handshakes use it at once.
    pub fn replace(&self, key: CertifiedKey) {
        if let Ok(mut guard) = self.current.write() {
            *guard = Arc::new(key);
        }
    }
}

/// A freshly issued server certificate and when to renew it.
pub struct IssuedServerCertificate {
    /// For rustls.
    pub key: CertifiedKey,
    /// The server's renewal time.
    pub renew_after: OffsetDateTime,
    /// Serial, for logs.
    pub serial: String,
}

/// Issues a new server certificate for `names` (DNS names or IP addresses).
pub fn issue(
    issuer: &Issuer,
    names: &[String],
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
    let mut chain = vec![pem_to_der(&bundle.certificate_pem)?];
    for block in split_pem(&bundle.chain_pem) {
        chain.push(pem_to_der(&block)?);
    }
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec()));
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&private_key)
        .map_err(|error| internal(&format!("rustls refused the key: {error}")))?;
    Ok(IssuedServerCertificate {
        key: CertifiedKey::new(
            chain.into_iter().map(CertificateDer::from).collect(),
            signing_key,
        ),
        renew_after: bundle.renew_after,
        serial: bundle.serial,
    })
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
    ServiceError::Setup(format!("server certificate: {what}"))
}
