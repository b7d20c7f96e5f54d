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
use der::{Decode as _, Encode as _, Reader as _};
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
    let csr_der = decode(text)?;
    let request = CertReq::from_der(&csr_der)
        .map_err(|error| CsrError::Malformed(format!("CSR: {error}")))?;
    let subject_public_key_info = request.info.public_key.clone();
    // Key first: a weak key must be reported as weak, not as a bad signature.
    let key_type = algorithms::key_type(&subject_public_key_info)?;
    let info_der = signed_info(&csr_der)?;
    let signature = request
        .signature
        .as_bytes()
        .ok_or_else(|| CsrError::Malformed("signature is not whole bytes".into()))?;
    algorithms::verify_signature(
        &subject_public_key_info,
        &request.algorithm,
        info_der,
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

/// The CSR's DER, from PEM (`CERTIFICATE REQUEST`) or bare base64.
fn decode(text: &str) -> Result<Vec<u8>, CsrError> {
    let trimmed = text.trim();
    if trimmed.starts_with("-----BEGIN") {
        let (label, der) = der::pem::decode_vec(trimmed.as_bytes())
            .map_err(|error| CsrError::Malformed(format!("PEM CSR: {error}")))?;
        if label != "CERTIFICATE REQUEST" {
            return Err(CsrError::Malformed(format!(
                "PEM CSR: the block is a {label:?}, not a CERTIFICATE REQUEST"
            )));
        }
        return Ok(der);
    }
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
        .map_err(|_| CsrError::Malformed("expected a PEM CERTIFICATE REQUEST".into()))
}

/// The certificationRequestInfo exactly as the client encoded and signed it,
/// borrowed from the CSR. Re-encoding the decoded structure is not the
/// same: the decoder puts the elements of a SET OF (attributes, multi-valued
/// RDNs) in DER order, so a CSR whose signer left them unsorted would fail
/// its own signature check.
fn signed_info(csr_der: &[u8]) -> Result<&[u8], CsrError> {
    let malformed = |error: der::Error| CsrError::Malformed(format!("CSR structure: {error}"));
    let outer = der::asn1::AnyRef::from_der(csr_der).map_err(malformed)?;
    der::SliceReader::new(outer.value())
        .and_then(|mut fields| fields.tlv_bytes())
        .map_err(malformed)
}

/// Most subjectAltName entries a CSR may ask for (Let's Encrypt's limit): a
/// workload certificate names a handful, and thousands would make every
/// refusal (one per name) and every certificate that large.
pub const MAX_NAMES: usize = 100;

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
    let count = names.dns.len() + names.ip.len() + names.uri.len();
    if count > MAX_NAMES {
        return Err(CsrError::Malformed(format!(
            "the CSR asks for {count} subject alternative names; at most {MAX_NAMES} are allowed"
        )));
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

#[cfg(test)]
mod tests {
    use der::asn1::{Any, AnyRef, BitString, SetOfVec};
    use der::pem::LineEnding;
    use der::{Tag, TagNumber};
    use rcgen::SigningKey as _;
    use x509_cert::attr::Attribute;

    use super::*;

    fn csr_naming(dns_count: usize, ips: &[&str]) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let dns: Vec<String> = (0..dns_count).map(|n| format!("w{n}.test")).collect();
        let mut params = rcgen::CertificateParams::new(dns).expect("params");
        for ip in ips {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(ip.parse().expect("an address")));
        }
        params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .expect("csr")
    }

    #[test]
    fn ok_up_to_max_names() {
        let verified = verify(&csr_naming(MAX_NAMES - 1, &["10.0.0.1"])).expect("100 names");
        assert_eq!(
            verified.names.dns.len() + verified.names.ip.len(),
            MAX_NAMES
        );
    }

    #[test]
    fn fail_more_than_max_names() {
        match verify(&csr_naming(MAX_NAMES, &["10.0.0.1"])) {
            Err(CsrError::Malformed(detail)) => {
                assert!(detail.contains("101 subject alternative names"), "{detail}")
            }
            other => panic!("101 names accepted: {other:?}"),
        }
    }

    /// A CSR for `a.test` whose attributes (extensionRequest and a
    /// challengePassword) are encoded out of DER order and signed that way,
    /// as some signers do; with the info bytes that were signed.
    fn csr_with_unsorted_attributes() -> (String, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let base = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .expect("params")
            .serialize_request(&key)
            .expect("csr");
        let request = CertReq::from_der(base.der()).expect("rcgen CSR decodes");
        let extension_request = request
            .info
            .attributes
            .iter()
            .next()
            .expect("extensionRequest")
            .to_der()
            .expect("encodes");
        let challenge = Attribute {
            oid: const_oid::db::rfc2985::PKCS_9_AT_CHALLENGE_PASSWORD,
            values: SetOfVec::try_from(vec![
                Any::new(Tag::Utf8String, b"pw".to_vec()).expect("value")
            ])
            .expect("set"),
        }
        .to_der()
        .expect("encodes");
        let mut attributes = [extension_request, challenge];
        attributes.sort();
        attributes.reverse();
        let attributes = AnyRef::new(
            Tag::ContextSpecific {
                constructed: true,
                number: TagNumber(0),
            },
            &attributes.concat(),
        )
        .expect("[0]")
        .to_der()
        .expect("encodes");
        let info_fields = [
            request.info.version.to_der().expect("version"),
            request.info.subject.to_der().expect("subject"),
            request.info.public_key.to_der().expect("key"),
            attributes,
        ]
        .concat();
        let info = AnyRef::new(Tag::Sequence, &info_fields)
            .expect("info")
            .to_der()
            .expect("encodes");
        let signature = key.sign(&info).expect("sign");
        let csr_fields = [
            info.clone(),
            request.algorithm.to_der().expect("algorithm"),
            BitString::from_bytes(&signature)
                .expect("bits")
                .to_der()
                .expect("encodes"),
        ]
        .concat();
        let csr = AnyRef::new(Tag::Sequence, &csr_fields)
            .expect("csr")
            .to_der()
            .expect("encodes");
        let pem =
            der::pem::encode_string("CERTIFICATE REQUEST", LineEnding::LF, &csr).expect("pem");
        (pem, info)
    }

    #[test]
    fn ok_signature_is_checked_over_the_bytes_the_client_signed() {
        let (pem, signed) = csr_with_unsorted_attributes();
        let reencoded = CertReq::from_der(&der::pem::decode_vec(pem.as_bytes()).expect("pem").1)
            .expect("decodes")
            .info
            .to_der()
            .expect("re-encodes");
        assert_ne!(reencoded, signed, "the decoder sorts the attributes");
        let verified = verify(&pem).expect("a correctly signed CSR verifies");
        assert_eq!(verified.names.dns, ["a.test"]);
        assert_eq!(verified.key_type, KeyType::EcP256);
    }

    #[test]
    fn fail_a_changed_signed_byte_is_a_bad_signature() {
        let (pem, signed) = csr_with_unsorted_attributes();
        let (_, mut der) = der::pem::decode_vec(pem.as_bytes()).expect("pem");
        // Flip a byte of the challengePassword value inside the signed info.
        let at = der
            .windows(2)
            .position(|window| window == b"pw")
            .expect("challenge password bytes");
        der[at] = b'P';
        assert!(der.len() > signed.len());
        let tampered =
            der::pem::encode_string("CERTIFICATE REQUEST", LineEnding::LF, &der).expect("pem");
        assert!(matches!(verify(&tampered), Err(CsrError::BadSignature)));
    }

    #[test]
    fn fail_a_pem_block_of_another_kind() {
        let (pem, _) = csr_with_unsorted_attributes();
        let certificate = pem.replace("CERTIFICATE REQUEST", "CERTIFICATE");
        assert!(matches!(verify(&certificate), Err(CsrError::Malformed(_))));
    }
}
