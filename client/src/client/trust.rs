//! Whom the client trusts, and how it proves who it is.
//!
//! Invariants:
//! - Nothing is sent to a server whose certificate does not chain to a
//!   trust anchor the operator named: either a CA bundle file, or a root
//!   pinned by its SHA-256 fingerprint. There is no "trust on first use".
//! - Pinning works in two steps, like `step ca bootstrap`: read
//!   `/v1/ca/chain.pem` over a connection whose certificate is not yet
//!   checked (the request carries no secret), accept the root only if its
//!   fingerprint matches, then make every later connection verify the server
//!   against that root.
//! - A client identity (for mutual TLS) is a key and the chain it belongs to;
//!   the pairing is checked before it is used.

use std::sync::Arc;

use ring::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::Error;

/// `sha256:<hex>` of a certificate's DER, the form the directory publishes.
pub fn fingerprint(der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(digest::digest(&digest::SHA256, der).as_ref())
    )
}

/// Normalises an operator-typed fingerprint: `sha256:` prefix optional,
/// colons and case ignored. Returns `None` unless it is 32 bytes of hex.
pub fn parse_fingerprint(text: &str) -> Option<String> {
    let text = text.trim();
    let hex_part = text
        .strip_prefix("sha256:")
        .or_else(|| text.strip_prefix("SHA256:"))
        .unwrap_or(text);
    let cleaned: String = hex_part
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (cleaned.len() == 64 && cleaned.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("sha256:{cleaned}"))
}

/// Every certificate in a PEM text, in order. Other PEM blocks are skipped.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Error::Trust(format!("unreadable PEM certificate: {error}")))
}

/// The first private key in a PEM text (PKCS#8, SEC1 or PKCS#1).
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|error| Error::Identity(format!("unreadable PEM private key: {error}")))?
        .ok_or_else(|| Error::Identity("no private key in the key file".into()))
}

/// The roots a client accepts the server's certificate from.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustAnchors {
    /// Trusts every certificate in a PEM bundle (for `--ca-bundle`).
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let roots = certificates_from_pem(pem)?;
        if roots.is_empty() {
            return Err(Error::Trust("the CA bundle holds no certificate".into()));
        }
        Ok(Self { roots })
    }

    /// Trusts exactly these DER certificates.
    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> Self {
        Self { roots }
    }

    /// The anchors, DER.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The anchors as one PEM text (what the agent writes to `ca.pem`).
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|der| pem_block("CERTIFICATE", der.as_ref()))
            .collect()
    }

    pub(crate) fn root_store(&self) -> Result<RootCertStore, Error> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone()).map_err(|error| {
                Error::Trust(format!(
                    "a CA certificate is not a usable trust anchor: {error}"
                ))
            })?;
        }
        Ok(store)
    }
}

/// A key and certificate chain presented to the server for mutual TLS.
#[derive(Debug)]
pub struct ClientIdentity {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClientIdentity {
    /// From PEM texts: the certificate file (leaf first, then intermediates)
    /// and the private key file. Fails when the key does not match the leaf.
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let chain = certificates_from_pem(certificate_pem)?;
        if chain.is_empty() {
            return Err(Error::Identity(
                "the certificate file holds no certificate".into(),
            ));
        }
        let key = private_key_from_pem(key_pem)?;
        let identity = Self { chain, key };
        // rustls checks the pairing when the config is built; do it now so a
        // mismatch is reported as such, not as a handshake failure later.
        identity.certified_key()?;
        Ok(identity)
    }

    /// The leaf certificate, DER.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    fn certified_key(&self) -> Result<rustls::sign::CertifiedKey, Error> {
        let provider = provider();
        rustls::sign::CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider)
            .map_err(|error| Error::Identity(format!("key and certificate do not match: {error}")))
    }
}

pub(crate) fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A rustls client config that verifies the server against `anchors` and,
/// when given, presents `identity`.
pub(crate) fn client_config(
    anchors: &TrustAnchors,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, Error> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Trust(format!("TLS versions: {error}")))?
        .with_root_certificates(anchors.root_store()?);
    let config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|error| Error::Identity(format!("client certificate: {error}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A config for the one pinning request: the server's certificate is not
/// checked (the root is not known yet), its handshake signature is.
pub(crate) fn pinning_config() -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(provider());
    let verifier = Arc::new(UncheckedServerCertificate {
        provider: provider.clone(),
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Trust(format!("TLS versions: {error}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Picks the root from a served chain by its pinned fingerprint.
pub(crate) fn select_pinned_root(
    chain_pem: &str,
    pinned: &str,
) -> Result<CertificateDer<'static>, Error> {
    let certificates = certificates_from_pem(chain_pem)?;
    // The chain is issuing certificate, intermediates, root: the root the
    // operator should compare with is the last one.
    let got = certificates.last().map_or_else(
        || "absent (an empty chain)".to_owned(),
        |root| fingerprint(root.as_ref()),
    );
    certificates
        .into_iter()
        .find(|der| fingerprint(der.as_ref()) == pinned)
        .ok_or_else(|| Error::RootFingerprintMismatch {
            expected: pinned.to_owned(),
            got,
        })
}

/// Accepts any server certificate. Used for exactly one request, whose
/// answer is then checked against the pinned fingerprint.
#[derive(Debug)]
struct UncheckedServerCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for UncheckedServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `now`, moved into `leaf`'s validity window when it lies outside: the
/// time at which to check a chain whose expiry is judged separately. A leaf
/// whose notBefore comes after its notAfter (malformed, never issued by
/// certmint) gets its notBefore rather than a panic.
pub fn time_within_validity(leaf: &x509_cert::Certificate, now: time::OffsetDateTime) -> UnixTime {
    let validity = leaf.tbs_certificate().validity();
    let not_before = validity.not_before.to_unix_duration();
    let not_after = validity.not_after.to_unix_duration().max(not_before);
    let now = std::time::Duration::from_secs(u64::try_from(now.unix_timestamp()).unwrap_or(0));
    UnixTime::since_unix_epoch(now.clamp(not_before, not_after))
}

/// One PEM block with 64-column base64 lines.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf_valid(
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> x509_cert::Certificate {
        use x509_cert::der::Decode as _;
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).expect("params");
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).expect("self-signed");
        x509_cert::Certificate::from_der(cert.der()).expect("parses")
    }

    #[test]
    fn time_within_validity_clamps_and_survives_an_inverted_window() {
        use time::macros::datetime;
        let unix = |at: time::OffsetDateTime| {
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.unix_timestamp() as u64))
        };
        let (start, end) = (
            datetime!(2026-01-01 00:00 UTC),
            datetime!(2026-02-01 00:00 UTC),
        );
        let leaf = leaf_valid(start, end);
        let inside = datetime!(2026-01-15 00:00 UTC);
        assert_eq!(time_within_validity(&leaf, inside), unix(inside));
        assert_eq!(
            time_within_validity(&leaf, datetime!(2025-06-01 00:00 UTC)),
            unix(start)
        );
        assert_eq!(
            time_within_validity(&leaf, datetime!(2027-06-01 00:00 UTC)),
            unix(end)
        );
        // notBefore after notAfter: `clamp` would panic on the raw window.
        let inverted = leaf_valid(end, start);
        assert_eq!(time_within_validity(&inverted, inside), unix(end));
    }

    #[test]
    fn ok_fingerprint_forms_normalise() {
        let hex = "AB".repeat(32);
        let expected = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse_fingerprint(&hex), Some(expected.clone()));
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hex}")),
            Some(expected.clone())
        );
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons), Some(expected));
    }

    #[test]
    fn refuses_short_or_non_hex_fingerprints() {
        assert_eq!(parse_fingerprint("sha256:abcd"), None);
        assert_eq!(parse_fingerprint(&"zz".repeat(32)), None);
        assert_eq!(parse_fingerprint(""), None);
    }

    #[test]
    fn refuses_a_chain_without_the_pinned_root() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["root.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = cert.pem();
        let right = fingerprint(cert.der());
        assert_eq!(
            select_pinned_root(&pem, &right).unwrap().as_ref(),
            cert.der().as_ref()
        );
        let wrong = format!("sha256:{}", "00".repeat(32));
        let error = select_pinned_root(&pem, &wrong).unwrap_err();
        assert!(
            matches!(&error, Error::RootFingerprintMismatch { expected, got }
                if *expected == wrong && *got == right),
            "{error:?}"
        );
        // Says what did not match, with both sides.
        let text = error.to_string();
        assert!(text.starts_with("root fingerprint mismatch: "), "{text}");
        assert!(text.contains(&wrong) && text.contains(&right), "{text}");
    }
}
