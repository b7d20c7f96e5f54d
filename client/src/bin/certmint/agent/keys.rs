//! Workload keys and CSRs, made locally with rcgen.
//!
//! Invariants:
//! - Every enrollment and renewal gets a fresh key; a key is never reused
//!   across certificates (key rotation on every renewal).
//! - The CSR carries subjectAltNames only (DNS, IP, URI) and an empty
//!   subject: the server copies nothing else into the certificate anyway.
//! - The private key leaves this module only as a PKCS#8 PEM string, which
//!   is written to disk with mode 0600 and never logged.
//! - RSA is refused: rcgen cannot generate RSA keys with the ring backend,
//!   and shelling out to another tool for key material is not worth it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use certmint::wire::canonical_uri;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, KeyPair, SanType};
use serde::{Deserialize, Serialize};

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key type is unknown or not supported by the local key generator.
    #[error("key type {0:?} is not supported (use ec-p256, ec-p384 or ed25519; rsa keys cannot be generated locally)")]
    UnsupportedKeyType(String),
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

/// Key types the agent can generate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256 (the default).
    #[default]
    EcP256,
    /// ECDSA P-384 with SHA-384.
    EcP384,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    /// The wire name (as in a policy's `key_types`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Ed25519 => "ed25519",
        }
    }

    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

impl FromStr for KeyType {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "ec-p256" | "p256" | "ecdsa-p256" => Ok(KeyType::EcP256),
            "ec-p384" | "p384" | "ecdsa-p384" => Ok(KeyType::EcP384),
            "ed25519" => Ok(KeyType::Ed25519),
            _ => Err(KeyError::UnsupportedKeyType(text.to_owned())),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for KeyType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The subjectAltNames a workload asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Names {
    /// DNS names.
    #[serde(default)]
    pub dns: Vec<String>,
    /// IP addresses.
    #[serde(default)]
    pub ip: Vec<String>,
    /// URIs (e.g. SPIFFE IDs).
    #[serde(default)]
    pub uri: Vec<String>,
}

impl Names {
    /// The names as rcgen SANs; checks that each can be encoded.
    pub fn to_sans(&self) -> Result<Vec<SanType>, KeyError> {
        if self.dns.is_empty() && self.ip.is_empty() && self.uri.is_empty() {
            return Err(KeyError::NoNames);
        }
        let mut sans = Vec::new();
        for name in &self.dns {
            let ia5 =
                Ia5String::try_from(name.as_str()).map_err(|error| KeyError::InvalidName {
                    kind: "dns",
                    name: name.clone(),
                    reason: error.to_string(),
                })?;
            sans.push(SanType::DnsName(ia5));
        }
        for address in &self.ip {
            let ip = address
                .parse::<IpAddr>()
                .map_err(|error| KeyError::InvalidName {
                    kind: "ip",
                    name: address.clone(),
                    reason: error.to_string(),
                })?;
            sans.push(SanType::IpAddress(ip));
        }
        for name in &self.uri {
            let ia5 =
                Ia5String::try_from(name.as_str()).map_err(|error| KeyError::InvalidName {
                    kind: "uri",
                    name: name.clone(),
                    reason: error.to_string(),
                })?;
            sans.push(SanType::URI(ia5));
        }
        Ok(sans)
    }

    /// True when `other` names the same set: DNS case-insensitively, IPs by
    /// value, URIs as the server records them (scheme and host
    /// case-insensitively, the port by value, the path exactly); order and
    /// duplicates do not matter.
    pub fn same_set(&self, other: &Names) -> bool {
        self.canonical() == other.canonical()
    }

    fn canonical(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut dns: Vec<String> = self.dns.iter().map(|n| n.to_ascii_lowercase()).collect();
        let mut ip: Vec<String> = self
            .ip
            .iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_or_else(|_| a.clone(), |ip| ip.to_string())
            })
            .collect();
        let mut uri: Vec<String> = self.uri.iter().map(|u| canonical_uri(u)).collect();
        for list in [&mut dns, &mut ip, &mut uri] {
            list.sort();
            list.dedup();
        }
        (dns, ip, uri)
    }

    /// A short human list for log lines: `dns:a,b ip:c`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (kind, list) in [("dns", &self.dns), ("ip", &self.ip), ("uri", &self.uri)] {
            if !list.is_empty() {
                parts.push(format!("{kind}:{}", list.join(",")));
            }
        }
        parts.join(" ")
    }
}

/// A fresh key and the CSR for it.
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
pub fn fresh_key_and_csr(key_type: KeyType, names: &Names) -> Result<KeyAndCsr, KeyError> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = names.to_sans()?;
    // rcgen puts a default CN ("rcgen self signed cert") into the subject;
    // an empty subject is what the server expects with SAN-only requests.
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = KeyPair::generate_for(key_type.algorithm())
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
        let names = Names {
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
    fn ok_two_keys_are_never_the_same() {
        let names = Names {
            dns: vec!["a.test".into()],
            ..Names::default()
        };
        let one = fresh_key_and_csr(KeyType::EcP256, &names).unwrap();
        let two = fresh_key_and_csr(KeyType::EcP256, &names).unwrap();
        assert_ne!(one.key_pem, two.key_pem);
    }

    #[test]
    fn fail_rsa_unknown_types_bad_names_and_no_names() {
        for text in ["rsa-2048", "rsa", "dsa", ""] {
            assert!(matches!(
                text.parse::<KeyType>(),
                Err(KeyError::UnsupportedKeyType(_))
            ));
        }
        assert!(matches!(Names::default().to_sans(), Err(KeyError::NoNames)));
        let bad_ip = Names {
            ip: vec!["10.0.0.300".into()],
            ..Names::default()
        };
        assert!(matches!(
            bad_ip.to_sans(),
            Err(KeyError::InvalidName { kind: "ip", .. })
        ));
        let non_ascii = Names {
            dns: vec!["bücher.test".into()],
            ..Names::default()
        };
        assert!(matches!(
            non_ascii.to_sans(),
            Err(KeyError::InvalidName { kind: "dns", .. })
        ));
    }

    #[test]
    fn ok_same_set_ignores_case_order_and_ip_spelling() {
        let one = Names {
            dns: vec!["B.test".into(), "a.test".into()],
            ip: vec!["::1".into()],
            uri: vec![],
        };
        let two = Names {
            dns: vec!["a.test".into(), "b.test".into()],
            ip: vec!["0:0:0:0:0:0:0:1".into()],
            uri: vec![],
        };
        assert!(one.same_set(&two));
        let three = Names {
            dns: vec!["a.test".into()],
            ..Names::default()
        };
        assert!(!one.same_set(&three));
    }

    #[test]
    fn ok_same_set_compares_uris_as_the_server_records_them() {
        let configured = Names {
            uri: vec![
                "SPIFFE://Prod.Example.ORG/ns/Payments/sa/api".into(),
                "https://API.example.com:0443/v1".into(),
            ],
            ..Names::default()
        };
        let issued = Names {
            uri: vec![
                "spiffe://prod.example.org/ns/Payments/sa/api".into(),
                "https://api.example.com:443/v1".into(),
            ],
            ..Names::default()
        };
        assert!(configured.same_set(&issued));
        let other_path = Names {
            uri: vec![
                "spiffe://prod.example.org/ns/payments/sa/api".into(),
                "https://api.example.com:443/v1".into(),
            ],
            ..Names::default()
        };
        assert!(!configured.same_set(&other_path), "paths compare exactly");
    }
}
