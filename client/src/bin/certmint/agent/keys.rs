//! Workload keys and CSRs, made locally with rcgen.
//!
//! Invariants:
//! - Every enrollment and renewal gets a fresh key; a key is never reused
//!   across certificates (key rotation on every renewal).
//! - The CSR carries subjectAltNames only (DNS, IP, URI) and an empty
//!   subject: the server copies nothing else into the certificate anyway.
//! - The private key leaves this module only as a PKCS#8 PEM string, which
//!   is written to disk with mode 0600 and never logged.
//! - Key types and names are the SDK's [`KeyType`] and [`Identity`], parsed
//!   by the SDK's one rule; this module only adds what local generation
//!   needs (which types it can make, names as rcgen SANs).
//! - RSA is refused: rcgen cannot generate RSA keys with the ring backend,
//!   and shelling out to another tool for key material is not worth it.

use std::fmt;
use std::net::IpAddr;

use certmint::wire::{Identity, KeyType, UnknownKeyType};
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, KeyPair, SanType};

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not the wire name of a key type.
    #[error("{:?} is not a key type; use ec-p256, ec-p384 or ed25519, spelled exactly so", .0.0)]
    UnknownKeyType(#[from] UnknownKeyType),
    /// A key type the server knows but the local key generator cannot make.
    #[error("key type {0} cannot be generated locally (use ec-p256, ec-p384 or ed25519)")]
    NotGeneratable(KeyType),
    /// A name cannot be put into a CSR.
    #[error("{kind} name {name:?} is not valid: {reason}")]
    InvalidName {
        /// `dns`, `ip` or `uri`.
        kind: &'static str,
        /// The name as given.
        name: String,
        /// Why.
        reason: String,
    },
    /// No name at all: the server would refuse with `csr.no_names`.
    #[error(
        "no names to request: give at least one --dns, --ip or --uri (or [names] in agent.toml)"
    )]
    NoNames,
    /// rcgen failed to generate the key or sign the CSR.
    #[error("cannot make the key or CSR: {0}")]
    Generation(String),
}

/// The key type when none is configured.
pub const DEFAULT_KEY_TYPE: KeyType = KeyType::EcP256;

/// Parses a key type the way every certmint reader does (the SDK's
/// [`KeyType`] wire names exactly: `ec-p256`, `ec-p384`, `ed25519`, …) and
/// refuses the ones this agent cannot generate.
pub fn parse_key_type(text: &str) -> Result<KeyType, KeyError> {
    let key_type: KeyType = text.parse()?;
    generatable(key_type)
}

/// `key_type` itself when keys of that type can be made locally.
pub fn generatable(key_type: KeyType) -> Result<KeyType, KeyError> {
    signature_algorithm(key_type).map(|_| key_type)
}

fn signature_algorithm(key_type: KeyType) -> Result<&'static rcgen::SignatureAlgorithm, KeyError> {
    match key_type {
        KeyType::EcP256 => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcP384 => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Ed25519 => Ok(&rcgen::PKCS_ED25519),
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            Err(KeyError::NotGeneratable(key_type))
        }
    }
}

/// The names as rcgen SANs; checks that each can be encoded.
pub fn subject_alt_names(names: &Identity) -> Result<Vec<SanType>, KeyError> {
    if names.is_empty() {
        return Err(KeyError::NoNames);
    }
    let mut sans = Vec::new();
    for name in &names.dns {
        let ia5 = Ia5String::try_from(name.as_str()).map_err(|error| KeyError::InvalidName {
            kind: "dns",
            name: name.clone(),
            reason: error.to_string(),
        })?;
        sans.push(SanType::DnsName(ia5));
    }
    for address in &names.ip {
        let ip = address
            .parse::<IpAddr>()
            .map_err(|error| KeyError::InvalidName {
                kind: "ip",
                name: address.clone(),
                reason: error.to_string(),
            })?;
        sans.push(SanType::IpAddress(ip));
    }
    for name in &names.uri {
        let ia5 = Ia5String::try_from(name.as_str()).map_err(|error| KeyError::InvalidName {
            kind: "uri",
            name: name.clone(),
            reason: error.to_string(),
        })?;
        sans.push(SanType::URI(ia5));
    }
    Ok(sans)
}

/// A fresh key and the CSR for it.
#[derive(Clone)]
pub struct KeyAndCsr {
    /// PKCS#10 request, PEM.
    pub csr_pem: String,
    /// The private key, PKCS#8 PEM. Secret: never log it.
    pub key_pem: String,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Generates a fresh key of `key_type` and a CSR naming exactly `names`.
pub fn fresh_key_and_csr(key_type: KeyType, names: &Identity) -> Result<KeyAndCsr, KeyError> {
    let algorithm = signature_algorithm(key_type)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = subject_alt_names(names)?;
    // rcgen puts a default CN ("rcgen self signed cert") into the subject;
    // an empty subject is what the server expects with SAN-only requests.
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = KeyPair::generate_for(algorithm)
        .map_err(|error| KeyError::Generation(error.to_string()))?;
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|error| KeyError::Generation(error.to_string()))?;
    Ok(KeyAndCsr {
        csr_pem,
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_every_supported_key_type_makes_a_pkcs8_key_and_a_csr() {
        let names = Identity {
            dns: vec!["api.test.internal".into()],
            ip: vec!["10.0.0.7".into()],
            uri: vec!["spiffe://test/ns/a".into()],
        };
        for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Ed25519] {
            let made = fresh_key_and_csr(key_type, &names).unwrap();
            assert!(made.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            assert!(made
                .csr_pem
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
            use der::DecodePem as _;
            let request = x509_cert::request::CertReq::from_pem(made.csr_pem.as_bytes()).unwrap();
            assert!(request.info.subject.is_empty(), "SAN-only request");
        }
    }

    #[test]
    fn ok_the_cli_accepts_exactly_the_wire_names_it_can_generate() {
        for (text, key_type) in [
            ("ec-p256", KeyType::EcP256),
            ("ec-p384", KeyType::EcP384),
            ("ed25519", KeyType::Ed25519),
        ] {
            assert_eq!(parse_key_type(text).unwrap(), key_type);
        }
        assert_eq!(DEFAULT_KEY_TYPE.as_str(), "ec-p256");
    }

    #[test]
    fn ok_two_keys_are_never_the_same() {
        let names = Identity {
            dns: vec!["a.test".into()],
            ..Identity::default()
        };
        let one = fresh_key_and_csr(KeyType::EcP256, &names).unwrap();
        let two = fresh_key_and_csr(KeyType::EcP256, &names).unwrap();
        assert_ne!(one.key_pem, two.key_pem);
    }

    #[test]
    fn fail_rsa_unknown_types_bad_names_and_no_names() {
        for text in ["rsa", "dsa", "p256", ""] {
            assert!(matches!(
                parse_key_type(text),
                Err(KeyError::UnknownKeyType(_))
            ));
        }
        for text in ["rsa-2048", "rsa-3072", "rsa-4096"] {
            assert!(matches!(
                parse_key_type(text),
                Err(KeyError::NotGeneratable(_))
            ));
        }
        assert!(matches!(
            subject_alt_names(&Identity::default()),
            Err(KeyError::NoNames)
        ));
        let bad_ip = Identity {
            ip: vec!["10.0.0.300".into()],
            ..Identity::default()
        };
        assert!(matches!(
            subject_alt_names(&bad_ip),
            Err(KeyError::InvalidName { kind: "ip", .. })
        ));
        let non_ascii = Identity {
            dns: vec!["bücher.test".into()],
            ..Identity::default()
        };
        assert!(matches!(
            subject_alt_names(&non_ascii),
            Err(KeyError::InvalidName { kind: "dns", .. })
        ));
    }
}
