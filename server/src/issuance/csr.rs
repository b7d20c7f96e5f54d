//! PKCS#10 requests: parse, prove possession, extract the requested names.
//!
//! Invariant: a [`VerifiedCsr`] exists only for a request whose
//! self-signature verified with its own key. Only the public key and the
//! subjectAltName entries are taken from it; every other requested
//! extension (basicConstraints, keyUsage, …) is ignored, so a CSR asking for
//! `CA:TRUE` still gets a leaf.

use std::net::IpAddr;

use certmint::wire::{Identity, KeyType};
use const_oid::db::{rfc5280, rfc5912};
use der::{Decode as _, DecodePem as _, Encode as _};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::Extensions;
use x509_cert::request::CertReq;

use super::algorithms::{self, AlgorithmError};
use crate::policy::{IssuanceRequest, RequestedNames};

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// Not a PEM/DER PKCS#10 request.
    #[error("CSR does not parse: {0}")]
    Malformed(String),
    /// Proof of possession failed.
    #[error("CSR signature does not verify with its own public key")]
    BadSignature,
    /// Key algorithm unsupported.
    #[error("{0}")]
    UnsupportedKey(String),
    /// Key too weak.
    #[error("RSA key of {bits} bits is too weak (minimum 2048)")]
    WeakKey {
        /// Modulus length.
        bits: usize,
    },
    /// Signature algorithm unsupported.
    #[error("{0}")]
    UnsupportedSignatureAlgorithm(String),
    /// No subjectAltName entries.
    #[error("CSR requests no names: put DNS names, IP addresses or URIs in subjectAltName")]
    NoNames,
}

impl From<AlgorithmError> for CsrError {
    fn from(error: AlgorithmError) -> Self {
        match error {
            AlgorithmError::UnsupportedKey(what) => CsrError::UnsupportedKey(what),
            AlgorithmError::WeakKey { bits } => CsrError::WeakKey { bits },
            AlgorithmError::UnsupportedSignatureAlgorithm(what) => {
                CsrError::UnsupportedSignatureAlgorithm(what)
            }
            AlgorithmError::BadSignature => CsrError::BadSignature,
        }
    }
}

/// A CSR whose proof of possession has been checked.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// The subject's public key.
    pub subject_public_key_info: SubjectPublicKeyInfoOwned,
    /// Its key type.
    pub key_type: KeyType,
    /// Names requested in subjectAltName, as written (policy normalises).
    pub names: RequestedNames,
    /// SHA-256 of the DER SubjectPublicKeyInfo, hex.
    pub subject_key_sha256: String,
}

impl VerifiedCsr {
    /// A request made by the server itself for a key it generated, so there
    /// is no CSR to verify (its own TLS certificate).
    pub fn for_own_key(
        subject_public_key_info: SubjectPublicKeyInfoOwned,
        names: RequestedNames,
    ) -> Result<VerifiedCsr, CsrError> {
        let key_type = algorithms::key_type(&subject_public_key_info)?;
        Ok(VerifiedCsr {
            subject_key_sha256: spki_sha256(&subject_public_key_info)?,
            subject_public_key_info,
            key_type,
            names,
        })
    }

    /// What a policy evaluates for this CSR: its names and key type, with
    /// the requested lifetime and the token's identity, if any.
    pub fn issuance_request<'a>(
        &'a self,
        ttl: Option<u64>,
        token_identity: Option<&'a Identity>,
    ) -> IssuanceRequest<'a> {
        IssuanceRequest {
            names: &self.names,
            key_type: self.key_type,
            ttl,
            token_identity,
        }
    }
}

/// Parses a PEM (or bare base64 DER) CSR and verifies its self-signature.
pub fn verify(text: &str) -> Result<VerifiedCsr, CsrError> {
    let request = decode(text)?;
    let subject_public_key_info = request.info.public_key.clone();
    // Key first: a weak key must be reported as weak, not as a bad signature.
    let key_type = algorithms::key_type(&subject_public_key_info)?;
    let info_der = request
        .info
        .to_der()
        .map_err(|error| CsrError::Malformed(format!("request info re-encoding: {error}")))?;
    let signature = request
        .signature
        .as_bytes()
        .ok_or_else(|| CsrError::Malformed("signature is not whole bytes".into()))?;
    algorithms::verify_signature(
        &subject_public_key_info,
        &request.algorithm,
        &info_der,
        signature,
    )?;
    let names = requested_names(&request)?;
    if names.dns.is_empty() && names.ip.is_empty() && names.uri.is_empty() {
        return Err(CsrError::NoNames);
    }
    Ok(VerifiedCsr {
        subject_key_sha256: spki_sha256(&subject_public_key_info)?,
        subject_public_key_info,
        key_type,
        names,
    })
}

/// SHA-256 of the DER SubjectPublicKeyInfo, hex: the key's fingerprint in
/// the inventory.
fn spki_sha256(subject_public_key_info: &SubjectPublicKeyInfoOwned) -> Result<String, CsrError> {
    let der = subject_public_key_info
        .to_der()
        .map_err(|error| CsrError::Malformed(format!("public key re-encoding: {error}")))?;
    Ok(hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &der,
    )))
}

fn decode(text: &str) -> Result<CertReq, CsrError> {
    let trimmed = text.trim();
    if trimmed.starts_with("-----BEGIN") {
        return CertReq::from_pem(trimmed.as_bytes())
            .map_err(|error| CsrError::Malformed(format!("PEM CSR: {error}")));
    }
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
        .map_err(|_| CsrError::Malformed("expected a PEM CERTIFICATE REQUEST".into()))?;
    CertReq::from_der(&der).map_err(|error| CsrError::Malformed(format!("DER CSR: {error}")))
}

fn requested_names(request: &CertReq) -> Result<RequestedNames, CsrError> {
    let mut names = RequestedNames::default();
    for attribute in request.info.attributes.iter() {
        if attribute.oid != rfc5912::ID_EXTENSION_REQ {
            continue;
        }
        for value in attribute.values.iter() {
            let extensions: Extensions = value
                .decode_as()
                .map_err(|error| CsrError::Malformed(format!("extensionRequest: {error}")))?;
            for extension in extensions
                .iter()
                .filter(|extension| extension.extn_id == rfc5280::ID_CE_SUBJECT_ALT_NAME)
            {
                let alt_names = SubjectAltName::from_der(extension.extn_value.as_bytes())
                    .map_err(|error| CsrError::Malformed(format!("subjectAltName: {error}")))?;
                for name in alt_names.0 {
                    push_name(&mut names, name)?;
                }
            }
        }
    }
    Ok(names)
}

fn push_name(names: &mut RequestedNames, name: GeneralName) -> Result<(), CsrError> {
    match name {
        GeneralName::DnsName(dns) => names.dns.push(dns.to_string()),
        GeneralName::UniformResourceIdentifier(uri) => names.uri.push(uri.to_string()),
        GeneralName::IpAddress(octets) => {
            let bytes = octets.as_bytes();
            let address = match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(bytes).map_err(|_| bad_ip())?),
                16 => IpAddr::from(<[u8; 16]>::try_from(bytes).map_err(|_| bad_ip())?),
                _ => return Err(bad_ip()),
            };
            names.ip.push(address);
        }
        other => {
            return Err(CsrError::Malformed(format!(
                "subjectAltName entry {} is not supported (use DNS, IP or URI)",
                general_name_kind(&other)
            )))
        }
    }
    Ok(())
}

fn bad_ip() -> CsrError {
    CsrError::Malformed("subjectAltName IP address is neither 4 nor 16 bytes".into())
}

fn general_name_kind(name: &GeneralName) -> &'static str {
    match name {
        GeneralName::OtherName(_) => "otherName",
        GeneralName::Rfc822Name(_) => "rfc822Name",
        GeneralName::DirectoryName(_) => "directoryName",
        GeneralName::EdiPartyName(_) => "ediPartyName",
        GeneralName::RegisteredId(_) => "registeredID",
        GeneralName::DnsName(_) => "dNSName",
        GeneralName::IpAddress(_) => "iPAddress",
        GeneralName::UniformResourceIdentifier(_) => "uniformResourceIdentifier",
    }
}
