//! The CRL encoder: an RFC 5280 §5 v2 CRL built field by field from
//! `x509-cert`/`der` types and signed on the HSM.
//!
//! # Job
//!
//! [`prepare`] turns a [`CrlTemplate`] into the DER of a `TBSCertList`;
//! the HSM signs exactly those bytes ([`crate::hsm::CaSigner::sign`]);
//! [`UnsignedCrl::assemble`] wraps them into a `CertificateList`; [`verify`]
//! checks the result as a relying party would. [`sign`] does all four.
//!
//! `x509-cert`'s own `CrlBuilder` is not used: it copies the issuer
//! certificate's authorityKeyIdentifier into the CRL, where RFC 5280 §5.2.1
//! wants the issuer's own key identifier, and it puts the Issuing
//! Distribution Point under the subjectInfoAccess OID.
//!
//! # Invariants
//!
//! - **Same template, same bytes.** Entries are sorted by serial (as
//!   integers), extensions come in a fixed order, times are whole seconds.
//! - Version is v2; the `signature` field is the signer's algorithm, and
//!   the outer `signatureAlgorithm` is the same value.
//! - Times: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280
//!   §5.1.2.4); invalidityDate is always GeneralizedTime (§5.3.2).
//! - `revokedCertificates` is absent, not an empty SEQUENCE, when nothing
//!   is revoked (§5.1.2.6).
//! - CRL extensions, in order: authorityKeyIdentifier (keyIdentifier only,
//!   the issuer's SKI), cRLNumber, and a critical issuingDistributionPoint
//!   with one URI and exactly one of onlyContainsUserCerts /
//!   onlyContainsCACerts.
//! - Entry extensions: reasonCode only when the reason is not
//!   `unspecified` (§5.3.1 SHOULD), then invalidityDate when known.
//! - A serial appears at most once; a template that lists one twice is
//!   refused rather than silently merged.
//! - [`sign`] returns nothing that did not verify under the signer's key
//!   and re-encode to exactly the TBS that was signed.

use std::cmp::Ordering;

use certmint::wire::RevocationReason;
use const_oid::db::rfc5280;
use der::asn1::{BitString, GeneralizedTime, Ia5String, OctetString};
use der::{DateTime, Decode as _, Encode};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use time::OffsetDateTime;
use x509_cert::certificate::Certificate;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber, CrlReason};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;
use x509_cert::Version;

use crate::hsm::{CaSigner, HsmError};
use crate::issuance::{algorithms, profile};

pub use certmint::wire::CrlScope;

/// PEM label of a CRL (RFC 7468 §5).
const PEM_LABEL: &str = "X509 CRL";

/// Building, signing or checking a CRL failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// DER encoding or decoding of `what` failed.
    #[error("CRL encoding ({what}): {source}")]
    Encoding {
        /// The part being encoded or decoded.
        what: &'static str,
        /// What `der` reported.
        #[source]
        source: der::Error,
    },
    /// The template cannot become a valid CRL; a bug or a bad stored value.
    #[error("CRL template: {0}")]
    Template(String),
    /// The HSM did not sign.
    #[error("CRL signing: {0}")]
    Hsm(#[from] HsmError),
    /// The CRL does not check out: bad signature, or it does not say what
    /// was signed.
    #[error("CRL check failed: {0}")]
    Verification(String),
}

fn encoding(what: &'static str) -> impl FnOnce(der::Error) -> CrlError {
    move |source| CrlError::Encoding { what, source }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// Serial number, big-endian unsigned bytes (leading zeros allowed).
    pub serial: Vec<u8>,
    /// revocationDate: when the server revoked it.
    pub revoked_at: OffsetDateTime,
    /// reasonCode; `unspecified` is not encoded.
    pub reason: RevocationReason,
    /// invalidityDate: when the key is known or suspected to have been
    /// compromised, when known.
    pub invalidity_date: Option<OffsetDateTime>,
}

/// Everything that decides a CRL's contents.
#[derive(Debug, Clone)]
pub struct CrlTemplate {
    /// The issuer certificate's subject, copied as is.
    pub issuer: Name,
    /// The issuer's subjectKeyIdentifier ([`issuer_key_identifier`]): the
    /// CRL's authorityKeyIdentifier.
    pub issuer_key_identifier: Vec<u8>,
    /// cRLNumber.
    pub number: u64,
    /// thisUpdate (sub-second part dropped).
    pub this_update: OffsetDateTime,
    /// nextUpdate (sub-second part dropped); must be after `this_update`.
    pub next_update: OffsetDateTime,
    /// The distribution point URL: the IDP's fullName, equal to the
    /// certificates' CRL Distribution Point. None only for a root's CRL of
    /// the CA certificates it signed, which name no distribution point:
    /// that CRL then has no Issuing Distribution Point at all (a complete
    /// CRL of everything the root signed, which is only CA certificates).
    /// An IDP without a name is refused by rustls-webpki
    /// (`UnsupportedCrlIssuingDistributionPoint`), and one with a name is
    /// refused by OpenSSL for a certificate that names none ("different
    /// CRL scope"); no IDP is accepted by both.
    pub distribution_point: Option<String>,
    /// Which certificates this CRL covers.
    pub scope: CrlScope,
    /// Revoked certificates, any order.
    pub entries: Vec<CrlEntry>,
}

/// A TBSCertList ready for the HSM: its DER and the structure it encodes.
pub struct UnsignedCrl {
    tbs: TbsCertList,
    tbs_der: Vec<u8>,
}

impl std::fmt::Debug for UnsignedCrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsignedCrl")
            .field("tbs_der_len", &self.tbs_der.len())
            .finish_non_exhaustive()
    }
}

impl UnsignedCrl {
    /// DER of the TBSCertList: the bytes to sign.
    pub fn tbs_der(&self) -> &[u8] {
        &self.tbs_der
    }

    /// Wraps the signature over [`Self::tbs_der`] into the DER
    /// CertificateList. Does not check the signature; [`verify`] does.
    pub fn assemble(self, signature: &[u8]) -> Result<Vec<u8>, CrlError> {
        let list = CertificateList {
            signature_algorithm: self.tbs.signature.clone(),
            tbs_cert_list: self.tbs,
            signature: BitString::from_bytes(signature).map_err(encoding("signature"))?,
        };
        list.to_der().map_err(encoding("CertificateList"))
    }
}

/// Builds the TBSCertList of `template`, to be signed by `signer`.
pub fn prepare(template: &CrlTemplate, signer: &dyn CaSigner) -> Result<UnsignedCrl, CrlError> {
    let this_update = to_date_time(template.this_update, "thisUpdate")?;
    let next_update = to_date_time(template.next_update, "nextUpdate")?;
    if next_update <= this_update {
        return Err(CrlError::Template(format!(
            "nextUpdate {next_update} is not after thisUpdate {this_update}"
        )));
    }
    if template.issuer_key_identifier.is_empty() {
        return Err(CrlError::Template("empty issuer key identifier".into()));
    }
    let signature = AlgorithmIdentifierOwned::from_der(signer.signature_algorithm())
        .map_err(encoding("signer's signature algorithm"))?;
    let revoked = revoked_certificates(&template.entries)?;
    let tbs = TbsCertList {
        version: Version::V2,
        signature,
        issuer: template.issuer.clone(),
        this_update: Time::from(this_update),
        next_update: Some(Time::from(next_update)),
        // Absent, not an empty SEQUENCE, when nothing is revoked
        // (RFC 5280 §5.1.2.6).
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: Some(crl_extensions(template)?),
    };
    let tbs_der = tbs.to_der().map_err(encoding("TBSCertList"))?;
    Ok(UnsignedCrl { tbs, tbs_der })
}

/// Prepares, signs on the HSM, assembles and verifies: the DER CRL.
///
/// The check uses the signer's own public key, so a CRL that comes back
/// has a signature any holder of the issuer certificate can verify.
pub fn sign(template: &CrlTemplate, signer: &dyn CaSigner) -> Result<Vec<u8>, CrlError> {
    let unsigned = prepare(template, signer)?;
    let tbs_der = unsigned.tbs_der.clone();
    let signature = signer.sign(&tbs_der)?;
    let crl_der = unsigned.assemble(&signature)?;
    let list = verify(&crl_der, signer.subject_public_key_info())?;
    let signed_tbs = list
        .tbs_cert_list
        .to_der()
        .map_err(encoding("TBSCertList"))?;
    if signed_tbs != tbs_der {
        return Err(CrlError::Verification(
            "the CRL's TBSCertList differs from the one signed".into(),
        ));
    }
    Ok(crl_der)
}

/// Parses `crl_der` and checks it as a relying party would: strict DER, v2,
/// the inner and outer signature algorithms agree, and the signature
/// verifies under `issuer_spki_der` (DER SubjectPublicKeyInfo). Returns
/// the parsed CRL.
pub fn verify(crl_der: &[u8], issuer_spki_der: &[u8]) -> Result<CertificateList, CrlError> {
    let fail = |what: String| CrlError::Verification(what);
    let list = CertificateList::from_der(crl_der).map_err(encoding("CertificateList"))?;
    // `der` decodes strict DER, so the re-encoding is the signed TBS; a
    // mismatch of the whole would mean bytes the decoder skipped.
    if list.to_der().map_err(encoding("CertificateList"))? != crl_der {
        return Err(fail("the CRL is not in canonical DER".into()));
    }
    let tbs = &list.tbs_cert_list;
    if tbs.version != Version::V2 {
        return Err(fail(format!("version {:?}, not v2", tbs.version)));
    }
    if tbs.signature != list.signature_algorithm {
        return Err(fail(
            "signatureAlgorithm differs from the TBSCertList's signature field".into(),
        ));
    }
    let issuer_key = SubjectPublicKeyInfoOwned::from_der(issuer_spki_der)
        .map_err(encoding("issuer SubjectPublicKeyInfo"))?;
    let tbs_der = tbs.to_der().map_err(encoding("TBSCertList"))?;
    let signature = list
        .signature
        .as_bytes()
        .ok_or_else(|| fail("signature is not whole bytes".into()))?;
    algorithms::verify_signature(&issuer_key, &list.signature_algorithm, &tbs_der, signature)
        .map_err(|error| fail(format!("issuer signature: {error}")))?;
    Ok(list)
}

/// The key identifier a CRL of `issuer` must carry in its AKI (RFC 5280
/// §5.2.1): the issuer certificate's own subjectKeyIdentifier, else the one
/// certmint derives from its key (what its leaves' AKI carries too).
pub fn issuer_key_identifier(issuer: &Certificate) -> Result<Vec<u8>, CrlError> {
    profile::issuer_key_identifier(issuer)
        .map(|identifier| identifier.as_bytes().to_vec())
        .map_err(|error| CrlError::Template(error.to_string()))
}

/// `-----BEGIN X509 CRL-----` PEM of a DER CRL (RFC 7468 §5).
pub fn to_pem(crl_der: &[u8]) -> Result<String, CrlError> {
    der::pem::encode_string(PEM_LABEL, der::pem::LineEnding::LF, crl_der).map_err(|error| {
        CrlError::Encoding {
            what: "PEM",
            source: error.into(),
        }
    })
}

/// Whole seconds since 1970 as a `der` date; RFC 5280 times carry no
/// fractions, and a certmint CRL never describes anything before 1970.
fn to_date_time(at: OffsetDateTime, what: &str) -> Result<DateTime, CrlError> {
    let seconds = u64::try_from(at.unix_timestamp())
        .map_err(|_| CrlError::Template(format!("{what} {at} is before 1970")))?;
    DateTime::from_unix_duration(std::time::Duration::from_secs(seconds))
        .map_err(|_| CrlError::Template(format!("{what} {at} cannot be encoded")))
}

/// The entries as `RevokedCert`s in serial order; refuses duplicates.
fn revoked_certificates(entries: &[CrlEntry]) -> Result<Vec<RevokedCert>, CrlError> {
    let mut sorted: Vec<(&[u8], &CrlEntry)> = entries
        .iter()
        .map(|entry| (significant_bytes(&entry.serial), entry))
        .collect();
    sorted.sort_unstable_by(|(a, _), (b, _)| compare_serials(a, b));
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(CrlError::Template(format!(
            "serial {} is listed twice",
            hex::encode(pair[0].0)
        )));
    }
    sorted
        .into_iter()
        .map(|(serial, entry)| revoked_certificate(serial, entry))
        .collect()
}

/// The serial without leading zero bytes: its magnitude.
fn significant_bytes(serial: &[u8]) -> &[u8] {
    let start = serial
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(serial.len());
    &serial[start..]
}

/// Orders unsigned big-endian magnitudes (no leading zeros) as integers.
fn compare_serials(a: &[u8], b: &[u8]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn revoked_certificate(serial: &[u8], entry: &CrlEntry) -> Result<RevokedCert, CrlError> {
    if serial.is_empty() {
        // RFC 5280 §4.1.2.2: serials are positive; certmint never issues 0.
        return Err(CrlError::Template("serial number zero or empty".into()));
    }
    let serial_number = SerialNumber::new(serial).map_err(|_| {
        CrlError::Template(format!(
            "serial {} is longer than 20 octets",
            hex::encode(serial)
        ))
    })?;
    let mut extensions = Vec::with_capacity(2);
    if let Some(reason) = crl_reason(entry.reason) {
        extensions.push(extension(
            rfc5280::ID_CE_CRL_REASONS,
            false,
            &reason,
            "reasonCode",
        )?);
    }
    if let Some(invalidity_date) = entry.invalidity_date {
        let date =
            GeneralizedTime::from_date_time(to_date_time(invalidity_date, "invalidityDate")?);
        extensions.push(extension(
            rfc5280::ID_CE_INVALIDITY_DATE,
            false,
            &date,
            "invalidityDate",
        )?);
    }
    Ok(RevokedCert {
        serial_number,
        revocation_date: Time::from(to_date_time(entry.revoked_at, "revocationDate")?),
        crl_entry_extensions: (!extensions.is_empty()).then_some(extensions),
    })
}

/// The reasonCode to encode; `None` for unspecified, which RFC 5280 §5.3.1
/// says SHOULD be left out.
fn crl_reason(reason: RevocationReason) -> Option<CrlReason> {
    match reason {
        RevocationReason::Unspecified => None,
        RevocationReason::KeyCompromise => Some(CrlReason::KeyCompromise),
        RevocationReason::CaCompromise => Some(CrlReason::CaCompromise),
        RevocationReason::AffiliationChanged => Some(CrlReason::AffiliationChanged),
        RevocationReason::Superseded => Some(CrlReason::Superseded),
        RevocationReason::CessationOfOperation => Some(CrlReason::CessationOfOperation),
        RevocationReason::PrivilegeWithdrawn => Some(CrlReason::PrivilegeWithdrawn),
    }
}

/// AKI, cRLNumber, IDP, in that order.
fn crl_extensions(template: &CrlTemplate) -> Result<Vec<Extension>, CrlError> {
    let authority = AuthorityKeyIdentifier {
        key_identifier: Some(
            OctetString::new(template.issuer_key_identifier.as_slice())
                .map_err(encoding("key identifier"))?,
        ),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    let number = CrlNumber::try_from(template.number).map_err(encoding("cRLNumber"))?;
    let mut extensions = vec![
        extension(
            rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &authority,
            "authorityKeyIdentifier",
        )?,
        extension(rfc5280::ID_CE_CRL_NUMBER, false, &number, "cRLNumber")?,
    ];
    let Some(url) = &template.distribution_point else {
        if template.scope == CrlScope::UserCerts {
            return Err(CrlError::Template(
                "a CRL of leaf certificates needs its distribution point".into(),
            ));
        }
        // A complete CRL of everything the issuer signed: see
        // `CrlTemplate::distribution_point`.
        return Ok(extensions);
    };
    if url.is_empty() {
        return Err(CrlError::Template("empty distribution point URL".into()));
    }
    let uri = Ia5String::new(url).map_err(|_| {
        CrlError::Template(format!("distribution point {url:?} is not an ASCII URI"))
    })?;
    let idp = IssuingDistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(uri),
        ])),
        only_contains_user_certs: template.scope == CrlScope::UserCerts,
        only_contains_ca_certs: template.scope == CrlScope::CaCerts,
        only_some_reasons: None,
        indirect_crl: false,
        only_contains_attribute_certs: false,
    };
    // RFC 5280 §5.2.5: the IDP is critical. Its OID is set here, not taken
    // from `IssuingDistributionPoint`'s AssociatedOid, which in x509-cert
    // 0.3.0 is subjectInfoAccess.
    extensions.push(extension(
        rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT,
        true,
        &idp,
        "issuingDistributionPoint",
    )?);
    Ok(extensions)
}

fn extension(
    extn_id: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
    what: &'static str,
) -> Result<Extension, CrlError> {
    let der = value.to_der().map_err(encoding(what))?;
    Ok(Extension {
        extn_id,
        critical,
        extn_value: OctetString::new(der).map_err(encoding(what))?,
    })
}

#[cfg(test)]
mod tests {
    //! Every test builds a CRL, parses it back with `x509-cert` and checks
    //! fields; OpenSSL and pkilint give independent opinions. Signers: a
    //! software P-256 key (ring) for most tests, hsm-sim's token keys for
    //! [`ok_crls_signed_on_hsm_sim_verify`], in a process of its own.

    use std::path::Path;
    use std::process::Command;
    use std::str::FromStr as _;
    use std::sync::Arc;

    use certmint::wire::KeyType;
    use const_oid::db::rfc5912;
    use der::asn1::{Any, Uint};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
    use time::macros::datetime;
    use time::Duration;

    use super::*;
    use crate::issuance::profile::{prepare_ca, CaTemplate};
    use x509_cert::ext::pkix::SubjectKeyIdentifier;

    const URL: &str = "http://127.0.0.1:8080/crl/00112233/3.crl";

    /// A P-256 key in memory, shaped like an HSM key.
    struct SoftwareSigner {
        key_pair: EcdsaKeyPair,
        subject_public_key_info: Vec<u8>,
        signature_algorithm: Vec<u8>,
    }

    impl SoftwareSigner {
        fn generate() -> SoftwareSigner {
            let random = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &random)
                .expect("generate P-256");
            let key_pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &random)
                    .expect("load P-256");
            let spki = SubjectPublicKeyInfoOwned {
                algorithm: AlgorithmIdentifierOwned {
                    oid: rfc5912::ID_EC_PUBLIC_KEY,
                    parameters: Some(Any::encode_from(&rfc5912::SECP_256_R_1).expect("curve")),
                },
                subject_public_key: BitString::from_bytes(key_pair.public_key().as_ref())
                    .expect("key bits"),
            };
            let algorithm = AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            };
            SoftwareSigner {
                key_pair,
                subject_public_key_info: spki.to_der().expect("SPKI"),
                signature_algorithm: algorithm.to_der().expect("algorithm"),
            }
        }
    }

    impl CaSigner for SoftwareSigner {
        fn key_type(&self) -> KeyType {
            KeyType::EcP256
        }
        fn label(&self) -> &str {
            "software-p256"
        }
        fn subject_public_key_info(&self) -> &[u8] {
            &self.subject_public_key_info
        }
        fn signature_algorithm(&self) -> &[u8] {
            &self.signature_algorithm
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
            let signature = self
                .key_pair
                .sign(&SystemRandom::new(), message)
                .map_err(|_| HsmError::KeyNotFound {
                    label: "software-p256".into(),
                })?;
            Ok(signature.as_ref().to_vec())
        }
    }

    /// Claims one key and signs with another, like a token that picked the
    /// wrong object.
    struct WrongKeySigner {
        claimed: SoftwareSigner,
        used: SoftwareSigner,
    }

    impl CaSigner for WrongKeySigner {
        fn key_type(&self) -> KeyType {
            KeyType::EcP256
        }
        fn label(&self) -> &str {
            "wrong-key"
        }
        fn subject_public_key_info(&self) -> &[u8] {
            self.claimed.subject_public_key_info()
        }
        fn signature_algorithm(&self) -> &[u8] {
            self.claimed.signature_algorithm()
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
            self.used.sign(message)
        }
    }

    /// A signer whose token lost its key.
    struct FailingSigner(SoftwareSigner);

    impl CaSigner for FailingSigner {
        fn key_type(&self) -> KeyType {
            KeyType::EcP256
        }
        fn label(&self) -> &str {
            "gone"
        }
        fn subject_public_key_info(&self) -> &[u8] {
            self.0.subject_public_key_info()
        }
        fn signature_algorithm(&self) -> &[u8] {
            self.0.signature_algorithm()
        }
        fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, HsmError> {
            Err(HsmError::KeyNotFound {
                label: "gone".into(),
            })
        }
    }

    /// A signer and the self-signed CA certificate of its key, made by the
    /// server's own CA profile (so it has SKI and keyUsage cRLSign).
    struct Issuer {
        signer: Arc<dyn CaSigner>,
        certificate: Certificate,
    }

    impl Issuer {
        fn software() -> Issuer {
            Issuer::new(
                Arc::new(SoftwareSigner::generate()),
                "CN=certmint CRL Test CA",
            )
        }

        fn new(signer: Arc<dyn CaSigner>, subject: &str) -> Issuer {
            let subject = Name::from_str(subject).expect("subject");
            let key = SubjectPublicKeyInfoOwned::from_der(signer.subject_public_key_info())
                .expect("signer SPKI");
            let template = CaTemplate {
                serial: [0x11; 16],
                subject: subject.clone(),
                issuer: subject,
                subject_public_key_info: key.clone(),
                issuer_public_key_info: key,
                path_length: 0,
                not_before: datetime!(2026-01-01 00:00 UTC),
                not_after: datetime!(2036-01-01 00:00 UTC),
            };
            let unsigned = prepare_ca(&template, signer.as_ref()).expect("CA TBS");
            let signature = signer.sign(unsigned.tbs_der()).expect("sign CA");
            let certificate = unsigned.assemble(&signature).expect("CA certificate");
            Issuer {
                signer,
                certificate,
            }
        }

        fn template(&self, scope: CrlScope, entries: Vec<CrlEntry>) -> CrlTemplate {
            CrlTemplate {
                issuer: self.certificate.tbs_certificate().subject().clone(),
                issuer_key_identifier: issuer_key_identifier(&self.certificate)
                    .expect("issuer key identifier"),
                number: 42,
                this_update: datetime!(2026-12-08 02:00:00.75 UTC),
                next_update: datetime!(2026-12-08 14:00 UTC),
                distribution_point: Some(URL.into()),
                scope,
                entries,
            }
        }

        fn spki_der(&self) -> Vec<u8> {
            self.certificate
                .tbs_certificate()
                .subject_public_key_info()
                .to_der()
                .expect("issuer SPKI")
        }

        fn pem(&self) -> String {
            der::pem::encode_string(
                "CERTIFICATE",
                der::pem::LineEnding::LF,
                &self.certificate.to_der().expect("certificate DER"),
            )
            .expect("PEM")
        }

        /// The issuer certificate's SKI, read here independently of
        /// [`issuer_key_identifier`].
        fn ski(&self) -> Vec<u8> {
            let (_, ski) = self
                .certificate
                .tbs_certificate()
                .get_extension::<SubjectKeyIdentifier>()
                .expect("SKI decodes")
                .expect("the CA profile writes an SKI");
            ski.0.as_bytes().to_vec()
        }
    }

    fn entry(serial: &[u8], reason: RevocationReason) -> CrlEntry {
        CrlEntry {
            serial: serial.to_vec(),
            revoked_at: datetime!(2026-12-07 10:00:00.5 UTC),
            reason,
            invalidity_date: None,
        }
    }

    /// One entry per reason, the key compromise one with an invalidity date.
    fn every_reason() -> Vec<CrlEntry> {
        RevocationReason::ALL
            .iter()
            .enumerate()
            .map(|(index, reason)| {
                let mut entry = entry(&[0x40, 0, 0, index as u8 + 1], *reason);
                if *reason == RevocationReason::KeyCompromise {
                    entry.invalidity_date = Some(datetime!(2026-12-01 08:30:00.9 UTC));
                }
                entry
            })
            .collect()
    }

    fn extension_of(extensions: &[Extension], oid: ObjectIdentifier) -> &Extension {
        extensions
            .iter()
            .find(|extension| extension.extn_id == oid)
            .unwrap_or_else(|| panic!("extension {oid} missing"))
    }

    fn utc(at: OffsetDateTime) -> Time {
        Time::UtcTime(der::asn1::UtcTime::from_unix_duration(unix(at)).expect("UTCTime"))
    }

    fn unix(at: OffsetDateTime) -> std::time::Duration {
        std::time::Duration::from_secs(at.unix_timestamp() as u64)
    }

    /// Checks the CRL-level fields and extensions against `template`.
    fn check_crl(list: &CertificateList, template: &CrlTemplate, signer: &dyn CaSigner) {
        let tbs = &list.tbs_cert_list;
        assert_eq!(tbs.version, Version::V2);
        let algorithm =
            AlgorithmIdentifierOwned::from_der(signer.signature_algorithm()).expect("algorithm");
        assert_eq!(tbs.signature, algorithm);
        assert_eq!(list.signature_algorithm, algorithm);
        assert_eq!(tbs.issuer, template.issuer);
        // Whole seconds: the .75 of the template is dropped.
        assert_eq!(
            tbs.this_update.to_unix_duration(),
            unix(template.this_update)
        );
        assert_eq!(
            tbs.next_update.map(|time| time.to_unix_duration()),
            Some(unix(template.next_update))
        );

        let extensions = tbs.crl_extensions.as_ref().expect("CRL extensions");
        let oids: Vec<ObjectIdentifier> = extensions.iter().map(|e| e.extn_id).collect();
        let mut expected = vec![
            ObjectIdentifier::new_unwrap("2.5.29.35"),
            ObjectIdentifier::new_unwrap("2.5.29.20"),
        ];
        if template.distribution_point.is_some() {
            expected.push(ObjectIdentifier::new_unwrap("2.5.29.28"));
        }
        assert_eq!(oids, expected);

        let aki = extension_of(extensions, rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER);
        assert!(!aki.critical);
        let aki = AuthorityKeyIdentifier::from_der(aki.extn_value.as_bytes()).expect("AKI");
        assert_eq!(
            aki.key_identifier.as_ref().map(OctetString::as_bytes),
            Some(template.issuer_key_identifier.as_slice())
        );
        assert!(aki.authority_cert_issuer.is_none());
        assert!(aki.authority_cert_serial_number.is_none());

        let number = extension_of(extensions, rfc5280::ID_CE_CRL_NUMBER);
        assert!(!number.critical);
        let number = Uint::from_der(number.extn_value.as_bytes()).expect("cRLNumber INTEGER");
        assert_eq!(
            number,
            Uint::try_from(template.number).expect("expected number")
        );

        if template.distribution_point.is_none() {
            return;
        }
        let idp = extension_of(extensions, rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT);
        assert!(idp.critical, "RFC 5280 §5.2.5: the IDP is critical");
        let idp = IssuingDistributionPoint::from_der(idp.extn_value.as_bytes()).expect("IDP");
        match (&idp.distribution_point, &template.distribution_point) {
            (Some(DistributionPointName::FullName(names)), Some(url)) => assert_eq!(
                names.as_slice(),
                [GeneralName::UniformResourceIdentifier(
                    Ia5String::new(url).expect("URL")
                )]
            ),
            (None, None) => {}
            (found, wanted) => panic!("IDP distribution point {found:?}, wanted {wanted:?}"),
        }
        assert_eq!(
            idp.only_contains_user_certs,
            template.scope == CrlScope::UserCerts
        );
        assert_eq!(
            idp.only_contains_ca_certs,
            template.scope == CrlScope::CaCerts
        );
        assert!(idp.only_some_reasons.is_none());
        assert!(!idp.indirect_crl);
        assert!(!idp.only_contains_attribute_certs);
    }

    fn revoked(list: &CertificateList) -> &[RevokedCert] {
        list.tbs_cert_list
            .revoked_certificates
            .as_deref()
            .unwrap_or_default()
    }

    #[test]
    fn ok_user_crl_says_what_the_template_says() {
        let issuer = Issuer::software();
        let template = issuer.template(CrlScope::UserCerts, every_reason());
        let crl = sign(&template, issuer.signer.as_ref()).expect("sign");
        let list = verify(&crl, &issuer.spki_der()).expect("verifies under the issuer key");
        check_crl(&list, &template, issuer.signer.as_ref());
        assert_eq!(template.issuer_key_identifier, issuer.ski());

        let entries = revoked(&list);
        assert_eq!(entries.len(), RevocationReason::ALL.len());
        for (entry, reason) in entries.iter().zip(RevocationReason::ALL) {
            assert_eq!(
                entry.revocation_date,
                utc(datetime!(2026-12-07 10:00:00 UTC))
            );
            let extensions = entry.crl_entry_extensions.as_deref().unwrap_or_default();
            let reason_code = extensions
                .iter()
                .find(|e| e.extn_id == ObjectIdentifier::new_unwrap("2.5.29.21"));
            match reason {
                RevocationReason::Unspecified => assert!(
                    reason_code.is_none(),
                    "unspecified must not be encoded: {extensions:?}"
                ),
                _ => {
                    let reason_code = reason_code.expect("reasonCode");
                    assert!(!reason_code.critical);
                    let code =
                        CrlReason::from_der(reason_code.extn_value.as_bytes()).expect("CRLReason");
                    assert_eq!(code as u32, u32::from(reason.code()), "{reason:?}");
                }
            }
            let invalidity = extensions
                .iter()
                .find(|e| e.extn_id == ObjectIdentifier::new_unwrap("2.5.29.24"));
            if reason == RevocationReason::KeyCompromise {
                let invalidity = invalidity.expect("invalidityDate");
                assert!(!invalidity.critical);
                // GeneralizedTime even before 2050 (RFC 5280 §5.3.2).
                let date = GeneralizedTime::from_der(invalidity.extn_value.as_bytes())
                    .expect("invalidityDate is a GeneralizedTime");
                assert_eq!(
                    date.to_unix_duration(),
                    unix(datetime!(2026-12-01 08:30 UTC))
                );
                assert_eq!(extensions.len(), 2, "reasonCode then invalidityDate");
                assert_eq!(extensions[0].extn_id, rfc5280::ID_CE_CRL_REASONS);
            } else {
                assert!(invalidity.is_none(), "{reason:?}: {extensions:?}");
            }
        }
    }

    #[test]
    fn ok_ca_crl_has_only_contains_ca_certs() {
        let issuer = Issuer::software();
        let template = issuer.template(
            CrlScope::CaCerts,
            vec![entry(&[0x21; 16], RevocationReason::CaCompromise)],
        );
        let crl = sign(&template, issuer.signer.as_ref()).expect("sign");
        let list = verify(&crl, &issuer.spki_der()).expect("verifies");
        check_crl(&list, &template, issuer.signer.as_ref());
        assert_eq!(revoked(&list).len(), 1);
    }

    /// A root's CRL of the CA certificates it signed, which name no
    /// distribution point: no IDP at all, so both rustls-webpki (which
    /// refuses an IDP without a name) and OpenSSL (which refuses an IDP
    /// name for a certificate without one) take it; a leaf CRL without a
    /// URL is refused.
    #[test]
    fn ok_root_crl_without_distribution_point_has_no_idp() {
        let issuer = Issuer::software();
        let mut template = issuer.template(
            CrlScope::CaCerts,
            vec![entry(&[0x21; 16], RevocationReason::CaCompromise)],
        );
        template.distribution_point = None;
        let crl = sign(&template, issuer.signer.as_ref()).expect("sign");
        let list = verify(&crl, &issuer.spki_der()).expect("verifies");
        check_crl(&list, &template, issuer.signer.as_ref());
        webpki::OwnedCertRevocationList::from_der(&crl)
            .expect("rustls-webpki loads a root CRL without an IDP");
        let mut leaf_template = issuer.template(CrlScope::UserCerts, Vec::new());
        leaf_template.distribution_point = None;
        assert!(matches!(
            prepare(&leaf_template, issuer.signer.as_ref()),
            Err(CrlError::Template(_))
        ));
    }

    #[test]
    fn ok_empty_crl_has_no_revoked_certificates_field() {
        let issuer = Issuer::software();
        let template = issuer.template(CrlScope::UserCerts, Vec::new());
        let unsigned = prepare(&template, issuer.signer.as_ref()).expect("prepare");
        // An empty SEQUENCE would decode as Some(empty); absent is None.
        let tbs = <TbsCertList>::from_der(unsigned.tbs_der()).expect("TBS decodes");
        assert_eq!(tbs.revoked_certificates, None);
        assert!(
            !unsigned
                .tbs_der()
                .windows(2)
                .any(|pair| pair == [0x30, 0x00]),
            "no empty SEQUENCE anywhere in the TBS"
        );
        let crl = sign(&template, issuer.signer.as_ref()).expect("sign");
        check_crl(
            &verify(&crl, &issuer.spki_der()).expect("verifies"),
            &template,
            issuer.signer.as_ref(),
        );
    }

    #[test]
    fn ok_entries_without_extensions_have_no_extensions_field() {
        let issuer = Issuer::software();
        let template = issuer.template(
            CrlScope::UserCerts,
            vec![entry(&[0x05], RevocationReason::Unspecified)],
        );
        let unsigned = prepare(&template, issuer.signer.as_ref()).expect("prepare");
        let tbs = <TbsCertList>::from_der(unsigned.tbs_der()).expect("TBS decodes");
        let entries = tbs.revoked_certificates.expect("one entry");
        assert_eq!(entries[0].crl_entry_extensions, None);
        assert_eq!(entries[0].serial_number.as_bytes(), [0x05]);
    }

    #[test]
    fn ok_utc_time_through_2049_generalized_time_from_2050() {
        let issuer = Issuer::software();
        let mut template = issuer.template(
            CrlScope::UserCerts,
            vec![CrlEntry {
                revoked_at: datetime!(2050-01-01 00:00 UTC),
                ..entry(&[0x01], RevocationReason::Superseded)
            }],
        );
        template.this_update = datetime!(2049-12-31 23:59:59 UTC);
        template.next_update = datetime!(2050-01-01 00:00 UTC);
        let crl = sign(&template, issuer.signer.as_ref()).expect("sign");
        let list = verify(&crl, &issuer.spki_der()).expect("verifies");
        let tbs = &list.tbs_cert_list;
        assert!(
            matches!(tbs.this_update, Time::UtcTime(_)),
            "{:?}",
            tbs.this_update
        );
        assert!(
            matches!(tbs.next_update, Some(Time::GeneralTime(_))),
            "{:?}",
            tbs.next_update
        );
        assert!(matches!(
            revoked(&list)[0].revocation_date,
            Time::GeneralTime(_)
        ));
    }

    #[test]
    fn ok_same_template_gives_the_same_tbs_in_serial_order() {
        let issuer = Issuer::software();
        // As integers: 5 (written with a leading zero) < 0x7f < 0x0100 < 0x40000001.
        let serials: [&[u8]; 4] = [&[0x40, 0, 0, 1], &[0x01, 0x00], &[0x00, 0x05], &[0x7f]];
        let entries: Vec<CrlEntry> = serials
            .iter()
            .map(|serial| entry(serial, RevocationReason::Superseded))
            .collect();
        let mut reversed = entries.clone();
        reversed.reverse();
        let signer = issuer.signer.as_ref();
        let forward = prepare(&issuer.template(CrlScope::UserCerts, entries), signer)
            .expect("prepare forward");
        let backward = prepare(&issuer.template(CrlScope::UserCerts, reversed), signer)
            .expect("prepare backward");
        assert_eq!(forward.tbs_der(), backward.tbs_der());
        let tbs = <TbsCertList>::from_der(forward.tbs_der()).expect("decodes");
        let order: Vec<Vec<u8>> = tbs
            .revoked_certificates
            .expect("entries")
            .iter()
            .map(|entry| entry.serial_number.as_bytes().to_vec())
            .collect();
        assert_eq!(
            order,
            [
                vec![0x05],
                vec![0x7f],
                vec![0x01, 0x00],
                vec![0x40, 0, 0, 1]
            ]
        );
    }

    #[test]
    fn ok_large_crl_number_is_a_positive_integer() {
        let issuer = Issuer::software();
        let mut template = issuer.template(CrlScope::UserCerts, Vec::new());
        template.number = u64::MAX;
        let crl = sign(&template, issuer.signer.as_ref()).expect("sign");
        // check_crl compares with Uint, which is unsigned: a 0x00 pad byte
        // keeps the top bit from making it negative.
        check_crl(
            &verify(&crl, &issuer.spki_der()).expect("verifies"),
            &template,
            issuer.signer.as_ref(),
        );
        let expected = [
            0x02, 0x09, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert!(crl.windows(expected.len()).any(|window| window == expected));
    }

    #[test]
    fn fail_serial_listed_twice() {
        let issuer = Issuer::software();
        let template = issuer.template(
            CrlScope::UserCerts,
            vec![
                entry(&[0x00, 0x07], RevocationReason::Superseded),
                entry(&[0x07], RevocationReason::KeyCompromise),
            ],
        );
        let error = prepare(&template, issuer.signer.as_ref()).expect_err("duplicate");
        assert!(
            matches!(&error, CrlError::Template(message) if message.contains("07")),
            "{error}"
        );
    }

    #[test]
    fn fail_zero_or_overlong_serial() {
        let issuer = Issuer::software();
        for serial in [&[][..], &[0x00, 0x00], &[0x80; 20]] {
            let template = issuer.template(
                CrlScope::UserCerts,
                vec![entry(serial, RevocationReason::Superseded)],
            );
            let error = prepare(&template, issuer.signer.as_ref()).expect_err("bad serial");
            assert!(
                matches!(error, CrlError::Template(_)),
                "{serial:?}: {error}"
            );
        }
    }

    #[test]
    fn fail_next_update_not_after_this_update() {
        let issuer = Issuer::software();
        let mut template = issuer.template(CrlScope::UserCerts, Vec::new());
        // Equal once the fraction is dropped.
        template.next_update = template.this_update + Duration::milliseconds(100);
        let error = prepare(&template, issuer.signer.as_ref()).expect_err("not after");
        assert!(matches!(error, CrlError::Template(_)), "{error}");
    }

    #[test]
    fn fail_dates_before_1970() {
        let issuer = Issuer::software();
        let before = datetime!(1969-12-31 23:59:59 UTC);
        let template = issuer.template(
            CrlScope::UserCerts,
            vec![CrlEntry {
                invalidity_date: Some(before),
                ..entry(&[0x01], RevocationReason::KeyCompromise)
            }],
        );
        let error = prepare(&template, issuer.signer.as_ref()).expect_err("1969");
        assert!(
            matches!(&error, CrlError::Template(message) if message.contains("invalidityDate")),
            "{error}"
        );
        let mut template = issuer.template(CrlScope::UserCerts, Vec::new());
        template.this_update = before;
        assert!(matches!(
            prepare(&template, issuer.signer.as_ref()),
            Err(CrlError::Template(_))
        ));
    }

    #[test]
    fn fail_bad_distribution_point_or_key_identifier() {
        let issuer = Issuer::software();
        let mut template = issuer.template(CrlScope::UserCerts, Vec::new());
        template.distribution_point = Some("http://ex\u{e4}mple.test/1.crl".into());
        assert!(matches!(
            prepare(&template, issuer.signer.as_ref()),
            Err(CrlError::Template(_))
        ));
        template.distribution_point = Some(String::new());
        assert!(matches!(
            prepare(&template, issuer.signer.as_ref()),
            Err(CrlError::Template(_))
        ));
        let mut template = issuer.template(CrlScope::UserCerts, Vec::new());
        template.issuer_key_identifier.clear();
        assert!(matches!(
            prepare(&template, issuer.signer.as_ref()),
            Err(CrlError::Template(_))
        ));
    }

    #[test]
    fn fail_signature_by_another_key_is_caught_after_signing() {
        let signer = WrongKeySigner {
            claimed: SoftwareSigner::generate(),
            used: SoftwareSigner::generate(),
        };
        let issuer = Issuer::software();
        let template = issuer.template(CrlScope::UserCerts, every_reason());
        let error = sign(&template, &signer).expect_err("wrong key");
        assert!(matches!(error, CrlError::Verification(_)), "{error}");
    }

    #[test]
    fn fail_hsm_error_is_passed_on() {
        let signer = FailingSigner(SoftwareSigner::generate());
        let issuer = Issuer::software();
        let template = issuer.template(CrlScope::UserCerts, Vec::new());
        let error = sign(&template, &signer).expect_err("no key");
        assert!(
            matches!(error, CrlError::Hsm(HsmError::KeyNotFound { .. })),
            "{error}"
        );
    }

    #[test]
    fn fail_verify_rejects_other_keys_and_altered_bytes() {
        let issuer = Issuer::software();
        let other = Issuer::software();
        let template = issuer.template(CrlScope::UserCerts, every_reason());
        let crl = sign(&template, issuer.signer.as_ref()).expect("sign");
        assert!(matches!(
            verify(&crl, &other.spki_der()),
            Err(CrlError::Verification(_))
        ));
        // Flip a bit inside the CRL number's value (it sits in the TBS).
        let number = [0x02, 0x01, 42];
        let at = crl
            .windows(number.len())
            .position(|window| window == number)
            .expect("cRLNumber 42 in the DER");
        let mut altered = crl.clone();
        altered[at + 2] ^= 1;
        assert!(matches!(
            verify(&altered, &issuer.spki_der()),
            Err(CrlError::Verification(_))
        ));
        let mut trailing = crl.clone();
        trailing.push(0);
        assert!(verify(&trailing, &issuer.spki_der()).is_err());
    }

    #[test]
    fn fail_verify_rejects_mismatched_algorithms_and_v1() {
        let issuer = Issuer::software();
        let template = issuer.template(CrlScope::UserCerts, every_reason());
        let crl = sign(&template, issuer.signer.as_ref()).expect("sign");
        let good = <CertificateList>::from_der(&crl).expect("parses");

        let mut outer = good.clone();
        outer.signature_algorithm.oid = rfc5912::ECDSA_WITH_SHA_384;
        let outer = outer.to_der().expect("DER");
        let error = verify(&outer, &issuer.spki_der()).expect_err("algorithms differ");
        assert!(
            matches!(&error, CrlError::Verification(message) if message.contains("signatureAlgorithm")),
            "{error}"
        );

        // Re-signed, so only the version is wrong.
        let mut v1 = good.tbs_cert_list.clone();
        v1.version = Version::V1;
        let tbs_der = v1.to_der().expect("TBS");
        let signature = issuer.signer.sign(&tbs_der).expect("sign");
        let v1 = UnsignedCrl { tbs: v1, tbs_der }
            .assemble(&signature)
            .expect("assemble");
        let error = verify(&v1, &issuer.spki_der()).expect_err("v1");
        assert!(
            matches!(&error, CrlError::Verification(message) if message.contains("v2")),
            "{error}"
        );
    }

    #[test]
    fn ok_issuer_key_identifier_prefers_the_ski_and_derives_it_otherwise() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![0xab; 8]);
        let with_ski = params.self_signed(&key).expect("CA certificate");
        let with_ski = Certificate::from_der(with_ski.der()).expect("parses");
        assert_eq!(
            issuer_key_identifier(&with_ski).expect("SKI"),
            vec![0xab; 8]
        );

        // rcgen writes no SKI for a non-CA certificate.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::NoCa;
        let without_ski = params.self_signed(&key).expect("certificate");
        let without_ski = Certificate::from_der(without_ski.der()).expect("parses");
        assert!(without_ski
            .tbs_certificate()
            .get_extension::<SubjectKeyIdentifier>()
            .expect("extensions decode")
            .is_none());
        let key_bits = without_ski
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes();
        let digest = ring::digest::digest(&ring::digest::SHA256, key_bits);
        assert_eq!(
            issuer_key_identifier(&without_ski).expect("derived"),
            digest.as_ref()[..20].to_vec()
        );
    }

    #[test]
    fn ok_pem_round_trips() {
        let issuer = Issuer::software();
        let crl = sign(
            &issuer.template(CrlScope::UserCerts, Vec::new()),
            issuer.signer.as_ref(),
        )
        .expect("sign");
        let pem = to_pem(&crl).expect("PEM");
        assert!(pem.starts_with("-----BEGIN X509 CRL-----\n"), "{pem}");
        assert!(pem.ends_with("-----END X509 CRL-----\n"), "{pem}");
        let (label, der) = der::pem::decode_vec(pem.as_bytes()).expect("decodes");
        assert_eq!((label, der), ("X509 CRL", crl));
    }

    #[test]
    fn ok_ten_thousand_entries_encode_and_verify() {
        let issuer = Issuer::software();
        let entries: Vec<CrlEntry> = (0..10_000_u32)
            .rev()
            .map(|index| {
                let mut serial = [0x5a_u8; 16];
                serial[12..].copy_from_slice(&index.to_be_bytes());
                let reason = RevocationReason::ALL[index as usize % RevocationReason::ALL.len()];
                CrlEntry {
                    invalidity_date: (reason == RevocationReason::KeyCompromise)
                        .then_some(datetime!(2026-12-01 00:00 UTC)),
                    ..entry(&serial, reason)
                }
            })
            .collect();
        let template = issuer.template(CrlScope::UserCerts, entries);
        let crl = sign(&template, issuer.signer.as_ref()).expect("sign");
        let list = verify(&crl, &issuer.spki_der()).expect("verifies");
        let entries = revoked(&list);
        assert_eq!(entries.len(), 10_000);
        assert!(entries
            .windows(2)
            .all(|pair| pair[0].serial_number < pair[1].serial_number));
        openssl_accepts(&crl, &issuer, CrlScope::UserCerts);
    }

    // ---- OpenSSL -----------------------------------------------------

    /// `openssl crl` prints the CRL and verifies it against the issuer
    /// certificate.
    fn openssl_accepts(crl: &[u8], issuer: &Issuer, scope: CrlScope) -> String {
        let dir = tempfile::tempdir().expect("temporary directory");
        let crl_path = dir.path().join("crl.der");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&crl_path, crl).expect("write CRL");
        std::fs::write(&ca_path, issuer.pem()).expect("write CA");
        let text = run_openssl(
            &["crl", "-inform", "DER", "-noout", "-text", "-in"],
            &crl_path,
        );
        assert!(
            text.contains("X509v3 Issuing Distribution Point: critical"),
            "{text}"
        );
        assert!(text.contains(URL), "{text}");
        let only = match scope {
            CrlScope::UserCerts => "Only User Certificates",
            CrlScope::CaCerts => "Only CA Certificates",
        };
        assert!(text.contains(only), "{text}");
        assert!(text.contains("X509v3 CRL Number:"), "{text}");
        assert!(text.contains("X509v3 Authority Key Identifier:"), "{text}");
        let ski = issuer
            .ski()
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        assert!(text.contains(&ski), "AKI {ski} in {text}");

        let mut args = vec!["crl", "-inform", "DER", "-noout", "-verify", "-CAfile"];
        let ca = ca_path.to_str().expect("UTF-8 path");
        args.push(ca);
        args.push("-in");
        let verified = run_openssl(&args, &crl_path);
        assert!(verified.contains("verify OK"), "{verified}");
        text
    }

    /// Runs openssl with `args` then `path`; stdout and stderr together.
    fn run_openssl(args: &[&str], path: &Path) -> String {
        let output = Command::new("openssl")
            .args(args)
            .arg(path)
            .output()
            .expect("openssl runs (it is part of the test environment)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "openssl {args:?}: {text}");
        text
    }

    #[test]
    fn ok_openssl_reads_and_verifies_both_scopes() {
        let issuer = Issuer::software();
        for scope in [CrlScope::UserCerts, CrlScope::CaCerts] {
            let empty = sign(&issuer.template(scope, Vec::new()), issuer.signer.as_ref())
                .expect("sign empty");
            let text = openssl_accepts(&empty, &issuer, scope);
            assert!(text.contains("No Revoked Certificates."), "{text}");

            let full = sign(
                &issuer.template(scope, every_reason()),
                issuer.signer.as_ref(),
            )
            .expect("sign with entries");
            let text = openssl_accepts(&full, &issuer, scope);
            for reason in [
                "Key Compromise",
                "CA Compromise",
                "Affiliation Changed",
                "Superseded",
                "Cessation Of Operation",
                "Privilege Withdrawn",
            ] {
                assert!(text.contains(reason), "{reason} in {text}");
            }
            assert!(!text.contains("Unspecified"), "{text}");
            assert!(text.contains("Invalidity Date:"), "{text}");
            assert!(text.contains("Dec  1 08:30:00 2026 GMT"), "{text}");
            assert!(text.contains("Revoked Certificates:"), "{text}");
        }
    }

    // ---- pkilint -----------------------------------------------------

    /// One pkilint finding: severity, code, message.
    type Finding = (String, String, String);

    /// Whether pkilint's `lint_crl` is to be run: it is on PATH, or
    /// `CERTMINT_REQUIRE_PKILINT=1` makes its absence a failure.
    fn pkilint_available() -> bool {
        let required = std::env::var("CERTMINT_REQUIRE_PKILINT").as_deref() == Ok("1");
        let available = Command::new("lint_crl")
            .arg("--help")
            .output()
            .is_ok_and(|output| output.status.success());
        assert!(
            available || !required,
            "CERTMINT_REQUIRE_PKILINT=1 but lint_crl is not on PATH (pip install pkilint)"
        );
        if !available {
            eprintln!(
                "\n*** SKIPPED: pkilint's lint_crl is not on PATH; the CRLs were NOT linted. \
                 `pip install pkilint` and set CERTMINT_REQUIRE_PKILINT=1 to require it. ***\n"
            );
        }
        available
    }

    /// Every finding pkilint's RFC 5280 (PKIX) profile has on `crl`, at any
    /// severity; printed as well.
    fn pkilint(crl: &[u8], scope: CrlScope, name: &str) -> Vec<Finding> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("crl.der");
        std::fs::write(&path, crl).expect("write CRL");
        // An ARL is a CRL of CA certificates (RFC 5280 §5).
        let kind = match scope {
            CrlScope::UserCerts => "CRL",
            CrlScope::CaCerts => "ARL",
        };
        let output = Command::new("lint_crl")
            .args(["lint", "-t", kind, "-p", "PKIX", "-s", "ALL", "-f", "JSON"])
            .args(["--document-format", "DER"])
            .arg(&path)
            .output()
            .expect("lint_crl runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // A CRL pkilint cannot even decode gives no JSON, only stderr.
        let report: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|_| panic!("{name}: lint_crl gave no report: {stdout}{stderr}"));
        let mut findings = Vec::new();
        for result in report["results"].as_array().expect("results array") {
            for finding in result["finding_descriptions"].as_array().expect("findings") {
                findings.push((
                    finding["severity"].as_str().unwrap_or("?").to_owned(),
                    finding["code"].as_str().unwrap_or("?").to_owned(),
                    format!(
                        "{} @ {}",
                        finding["message"].as_str().unwrap_or(""),
                        result["node_path"].as_str().unwrap_or("?")
                    ),
                ));
            }
        }
        eprintln!(
            "pkilint {kind} PKIX, {name}: {} validations, findings {findings:#?}",
            report["results"].as_array().map_or(0, Vec::len)
        );
        findings
    }

    fn errors(findings: &[Finding]) -> Vec<&Finding> {
        findings
            .iter()
            .filter(|(severity, _, _)| severity == "ERROR" || severity == "FATAL")
            .collect()
    }

    /// Both scopes, with and without entries: no ERROR or FATAL finding.
    /// Skipped, loudly, when `lint_crl` is not installed, unless
    /// `CERTMINT_REQUIRE_PKILINT=1`.
    #[test]
    fn ok_pkilint_finds_no_errors() {
        if !pkilint_available() {
            return;
        }
        let issuer = Issuer::software();
        for scope in [CrlScope::UserCerts, CrlScope::CaCerts] {
            for (name, entries) in [("empty", Vec::new()), ("entries", every_reason())] {
                let crl =
                    sign(&issuer.template(scope, entries), issuer.signer.as_ref()).expect("sign");
                let findings = pkilint(&crl, scope, &format!("{scope:?} {name}"));
                let errors = errors(&findings);
                assert!(errors.is_empty(), "{scope:?} {name}: {errors:#?}");
            }
        }
        // The root's CRL as the publisher signs it: no IDP.
        for (name, entries) in [("empty", Vec::new()), ("entries", every_reason())] {
            let mut template = issuer.template(CrlScope::CaCerts, entries);
            template.distribution_point = None;
            let crl = sign(&template, issuer.signer.as_ref()).expect("sign");
            let findings = pkilint(&crl, CrlScope::CaCerts, &format!("root CRL {name}"));
            let errors = errors(&findings);
            assert!(errors.is_empty(), "root CRL {name}: {errors:#?}");
        }
    }

    /// The harness above notices errors: a CRL without an
    /// authorityKeyIdentifier (RFC 5280 §5.2.1 MUST) gets an ERROR.
    #[test]
    fn fail_pkilint_flags_a_crl_without_aki() {
        if !pkilint_available() {
            return;
        }
        let issuer = Issuer::software();
        let template = issuer.template(CrlScope::UserCerts, every_reason());
        let mut unsigned = prepare(&template, issuer.signer.as_ref()).expect("prepare");
        let extensions = unsigned.tbs.crl_extensions.as_mut().expect("extensions");
        assert_eq!(
            extensions[0].extn_id,
            rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER
        );
        extensions.remove(0);
        unsigned.tbs_der = unsigned.tbs.to_der().expect("TBS");
        let signature = issuer.signer.sign(&unsigned.tbs_der).expect("sign");
        let crl = unsigned.assemble(&signature).expect("assemble");
        let findings = pkilint(&crl, CrlScope::UserCerts, "no AKI");
        assert!(!errors(&findings).is_empty(), "{findings:#?}");
    }

    // ---- hsm-sim -----------------------------------------------------

    /// Set in the child process this test starts: the token directory.
    const HSM_CHILD_ENV: &str = "CERTMINT_CRL_TEST_TOKEN_DIR";
    const HSM_TEST_NAME: &str = "revocation::crl::tests::ok_crls_signed_on_hsm_sim_verify";

    /// CRLs signed by token keys of every type hsm-sim offers verify, parse
    /// back and satisfy OpenSSL.
    ///
    /// A PKCS#11 module has one state per process, set at `C_Initialize`
    /// from the environment, and the `hsm` tests in this binary own it. So
    /// this test runs itself again in a new process with a token directory
    /// of its own and does the signing there.
    #[test]
    fn ok_crls_signed_on_hsm_sim_verify() {
        match std::env::var_os(HSM_CHILD_ENV) {
            Some(token_dir) => sign_on_hsm_sim(Path::new(&token_dir)),
            None => {
                let token_dir = tempfile::tempdir().expect("token directory");
                let exe = std::env::current_exe().expect("test executable");
                let output = Command::new(exe)
                    .args([HSM_TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
                    .env(HSM_CHILD_ENV, token_dir.path())
                    .env("HSM_SIM_DIR", token_dir.path().join("hsm-sim"))
                    .env_remove("HSM_SIM_CONFIG")
                    .output()
                    .expect("run the test in a child process");
                let stdout = String::from_utf8_lossy(&output.stdout);
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
                // Proof that the child ran this test rather than nothing.
                assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
                assert!(stderr.contains("hsm-sim signed CRLs:"), "{stderr}");
                eprintln!("{stderr}");
            }
        }
    }

    fn sign_on_hsm_sim(token_dir: &Path) {
        use secrecy::SecretString;

        use crate::hsm::{init_token, Hsm, HsmConfig};

        let module_path = hsm_sim_module();
        std::fs::create_dir_all(token_dir.join("hsm-sim")).expect("hsm-sim directory");
        let pin = SecretString::from("crl-user-pin");
        init_token(
            &module_path,
            "crl-test",
            &SecretString::from("crl-so-pin"),
            &pin,
        )
        .expect("init_token");
        let hsm = Hsm::open(&HsmConfig {
            module_path,
            token_label: "crl-test".into(),
            pin,
            session_pool_size: 1,
        })
        .expect("open hsm-sim");
        let supported = hsm.supported_key_types().expect("mechanisms");
        let mut signed = Vec::new();
        for key_type in [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Rsa2048,
            KeyType::Ed25519,
        ] {
            if !supported.contains(&key_type) {
                assert_ne!(key_type, KeyType::EcP256, "hsm-sim always has P-256");
                eprintln!("note: hsm-sim offers no {key_type}; not tested");
                continue;
            }
            let label = format!("crl-{key_type}");
            let signer = hsm
                .generate_key_pair(&label, key_type, b"crl-test")
                .expect("generate key");
            let issuer = Issuer::new(signer, &format!("CN=certmint CRL {key_type} CA"));
            for scope in [CrlScope::UserCerts, CrlScope::CaCerts] {
                let template = issuer.template(scope, every_reason());
                let crl = sign(&template, issuer.signer.as_ref()).expect("sign on the token");
                let list = verify(&crl, &issuer.spki_der()).expect("verifies");
                check_crl(&list, &template, issuer.signer.as_ref());
                assert_eq!(revoked(&list).len(), RevocationReason::ALL.len());
                openssl_accepts(&crl, &issuer, scope);
            }
            signed.push(key_type.to_string());
        }
        eprintln!("hsm-sim signed CRLs: {}", signed.join(", "));
    }

    /// hsm-sim's module built with this workspace, above this executable.
    fn hsm_sim_module() -> std::path::PathBuf {
        let exe = std::env::current_exe().expect("the test executable's path");
        exe.ancestors()
            .skip(1)
            .map(|dir| dir.join("libhsm_sim.so"))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "libhsm_sim.so not found above {}: run `cargo build --workspace`",
                    exe.display()
                )
            })
    }
}
