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
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber, CrlReason, SubjectKeyIdentifier};
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
    /// certificates' CRL Distribution Point.
    pub distribution_point: String,
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
    use der::referenced::OwnedToRef as _;
    let tbs = issuer.tbs_certificate();
    let identifier = match tbs
        .get_extension::<SubjectKeyIdentifier>()
        .map_err(encoding("subjectKeyIdentifier"))?
    {
        Some((_, identifier)) => identifier.0,
        None => profile::key_identifier(tbs.subject_public_key_info().owned_to_ref())
            .map_err(encoding("key identifier"))?,
    };
    Ok(identifier.as_bytes().to_vec())
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
        let date = GeneralizedTime::from_date_time(to_date_time(invalidity_date, "invalidityDate")?);
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
    let url = Ia5String::new(&template.distribution_point).map_err(|_| {
        CrlError::Template(format!(
            "distribution point {:?} is not an ASCII URI",
            template.distribution_point
        ))
    })?;
    if template.distribution_point.is_empty() {
        return Err(CrlError::Template("empty distribution point URL".into()));
    }
    let idp = IssuingDistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(url),
        ])),
        only_contains_user_certs: template.scope == CrlScope::UserCerts,
        only_contains_ca_certs: template.scope == CrlScope::CaCerts,
        only_some_reasons: None,
        indirect_crl: false,
        only_contains_attribute_certs: false,
    };
    Ok(vec![
        extension(
            rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &authority,
            "authorityKeyIdentifier",
        )?,
        extension(rfc5280::ID_CE_CRL_NUMBER, false, &number, "cRLNumber")?,
        // RFC 5280 §5.2.5: the IDP is critical. Its OID is set here, not
        // taken from `IssuingDistributionPoint`'s AssociatedOid, which in
        // x509-cert 0.3.0 is subjectInfoAccess.
        extension(
            rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT,
            true,
            &idp,
            "issuingDistributionPoint",
        )?,
    ])
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
