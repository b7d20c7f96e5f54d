//! `crl.pem`: the current CRLs of every CA the workload trusts, kept up to
//! date from the server and refused when they are not to be trusted.
//!
//! A refresh reads the server's CRL index (`GET /v1/crls`), and for each
//! shard of a trusted issuer whose CRL differs from the one held, fetches
//! it with `If-None-Match` (so only changed shards move). Every CRL
//! fetched is checked ([`check_crl`]) before it may replace the one held:
//! 1. it is a DER `CertificateList` (served as `application/pkix-crl`),
//!    re-encoding to the same bytes, so the signed bytes are the parsed ones;
//! 2. its authority key identifier names a trusted CA ([`trusted_cas`]: the
//!    issuing CAs on the verified path of the leaf in `cert.pem`, and the
//!    roots in `ca.pem`), its issuer is that CA's subject, the CA may sign
//!    CRLs (keyUsage), and its signature verifies with the CA's key
//!    (rustls-webpki's algorithms, ring's arithmetic);
//! 3. it carries a CRL number, no critical extension certmint does not
//!    know (a delta CRL among them), and its number is not lower than that
//!    of the CRL held for the same issuer and distribution point
//!    ([`CrlStore::offer`]).
//!
//! Invariants:
//! - A refused CRL never replaces the one held; the refusal is logged with
//!   its reason, and the previous `crl.pem` keeps being served. An
//!   unreachable server changes nothing.
//! - `crl.pem` is the held CRLs as `X509 CRL` PEM blocks, ordered by issuer
//!   key id then shard, replaced in one rename ([`OutputDir::replace_file`]);
//!   it is rewritten only when its content changes, and only then do the
//!   reload hooks run.
//! - No hand-written ASN.1: x509-cert parses, rustls-webpki verifies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use certmint::client::crl::{crl_etag, CrlClient, CrlFetch, CRL_CONTENT_TYPE};
use certmint::client::trust::{certificates_from_pem, fingerprint, pem_block};
use der::asn1::ObjectIdentifier;
use der::{Decode as _, Encode as _};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::crl::CrlReason;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber, KeyUsage, SubjectKeyIdentifier};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;

use crate::agent::hooks::Hooks;
use crate::agent::output::{OutputDir, OutputError, CA_FILE};
use crate::agent::schedule;
use crate::agent::workload::Workload;

/// The file name of the CRLs in the output directory.
pub const CRL_FILE: &str = "crl.pem";

/// Default time between two refreshes.
pub const DEFAULT_REFRESH: StdDuration = StdDuration::from_secs(60);
/// ± fraction of the refresh interval drawn at random for each wait, so a
/// fleet of agents started together does not poll in step.
const REFRESH_JITTER: f64 = 0.1;

/// id-ce-authorityKeyIdentifier.
const AUTHORITY_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
/// id-ce-cRLNumber.
const CRL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.20");
/// id-ce-issuingDistributionPoint. Named here, not taken from
/// `IssuingDistributionPoint`'s `AssociatedOid`: x509-cert 0.3.0 gives that
/// type the OID of subjectInfoAccess.
const ISSUING_DISTRIBUTION_POINT: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.28");
/// id-ce-cRLReasons (a CRL entry extension).
const REASON_CODE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.21");
/// CRL extensions certmint understands; a critical one not listed here
/// (deltaCRLIndicator, freshestCRL, …) makes the CRL unusable (RFC 5280
/// §5.2).
const KNOWN_CRL_EXTENSIONS: [ObjectIdentifier; 3] = [
    AUTHORITY_KEY_IDENTIFIER,
    CRL_NUMBER,
    ISSUING_DISTRIBUTION_POINT,
];

/// Why a CRL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlRefusal {
    /// Served with another media type than `application/pkix-crl`.
    #[error("served as {0:?}, not {CRL_CONTENT_TYPE}")]
    ContentType(Option<String>),
    /// Not a DER CertificateList.
    #[error("not a DER CRL: {0}")]
    Unparsable(String),
    /// No authority key identifier, so no way to pick the CA.
    #[error("the CRL has no authority key identifier")]
    NoAuthorityKeyId,
    /// The authority key identifier names no CA the workload trusts.
    #[error("signed by key {0}, which is not a CA this workload trusts")]
    UnknownIssuer(String),
    /// The issuer name is not the subject of the CA with that key.
    #[error("its issuer {crl_issuer} is not the subject {ca_subject} of the CA with its key id")]
    IssuerMismatch {
        /// The CRL's issuer.
        crl_issuer: String,
        /// The trusted CA's subject.
        ca_subject: String,
    },
    /// The CA's key usage does not include cRLSign.
    #[error("the CA {0} may not sign CRLs (keyUsage without cRLSign)")]
    NotCrlSigner(String),
    /// No signature algorithm certmint knows for this key.
    #[error("unsupported signature algorithm for the CA's key")]
    UnsupportedAlgorithm,
    /// The signature does not verify with the CA's key.
    #[error("its signature does not verify with the key of {0}")]
    BadSignature(String),
    /// No CRL number.
    #[error("the CRL has no CRL number")]
    NoNumber,
    /// A critical extension certmint does not process.
    #[error("unsupported critical extension {0}")]
    CriticalExtension(String),
    /// Not for the shard the index named.
    #[error("it is not the CRL the index lists for {0}")]
    NotListed(String),
    /// Older than the CRL held for the same issuer and distribution point.
    #[error("its CRL number {got} is lower than the {held} held")]
    NumberWentBack {
        /// The number held.
        held: String,
        /// The number offered.
        got: String,
    },
}

/// A CA whose CRLs are accepted.
#[derive(Clone, Debug)]
pub struct TrustedCa {
    /// Its subject.
    pub subject: Name,
    /// Lower-case hex of its subject key identifier (the CRL's AKI).
    pub key_id: String,
    spki: SubjectPublicKeyInfoOwned,
    crl_sign: bool,
}

impl TrustedCa {
    /// From a CA certificate; `None` without a subject key identifier
    /// (nothing a CRL could name it by).
    fn from_certificate(certificate: &Certificate) -> Option<Self> {
        let tbs = certificate.tbs_certificate();
        let (_, ski) = tbs.get_extension::<SubjectKeyIdentifier>().ok()??;
        let crl_sign = match tbs.get_extension::<KeyUsage>() {
            Ok(Some((_, usage))) => usage.crl_sign(),
            // No keyUsage: any use is allowed (RFC 5280 §4.2.1.3).
            Ok(None) => true,
            Err(_) => false,
        };
        Some(Self {
            subject: tbs.subject().clone(),
            key_id: hex::encode(ski.0.as_bytes()),
            spki: tbs.subject_public_key_info().clone(),
            crl_sign,
        })
    }
}

/// The CAs whose CRLs the workload takes: every root in `ca_pem`, and the
/// CA certificates of `cert_pem` (after the leaf) that lie on the leaf's
/// verified path to one of those roots. A leaf that does not verify
/// contributes no intermediate. Checked at a time inside the leaf's
/// validity, as the renewal check does: CRLs matter until it expires.
pub fn trusted_cas(cert_pem: Option<&str>, ca_pem: &str, now: OffsetDateTime) -> Vec<TrustedCa> {
    let roots = certificates_from_pem(ca_pem).unwrap_or_default();
    let mut cas: Vec<TrustedCa> = roots
        .iter()
        .filter_map(|der| Certificate::from_der(der.as_ref()).ok())
        .filter_map(|root| TrustedCa::from_certificate(&root))
        .collect();
    let chain = cert_pem
        .and_then(|pem| certificates_from_pem(pem).ok())
        .unwrap_or_default();
    if let Some(intermediates) = verified_intermediates(&chain, &roots, now) {
        cas.extend(
            intermediates
                .iter()
                .filter_map(|der| Certificate::from_der(der.as_ref()).ok())
                .filter_map(|ca| TrustedCa::from_certificate(&ca)),
        );
    }
    cas.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    cas.dedup_by(|a, b| a.key_id == b.key_id);
    cas
}

/// The intermediates of the path rustls-webpki builds from `chain[0]` to
/// `roots`; `None` when it does not verify.
fn verified_intermediates(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    now: OffsetDateTime,
) -> Option<Vec<CertificateDer<'static>>> {
    let (leaf_der, intermediates) = chain.split_first()?;
    let leaf = Certificate::from_der(leaf_der.as_ref()).ok()?;
    let at: UnixTime = certmint::client::trust::time_within_validity(&leaf, now);
    let end_entity = webpki::EndEntityCert::try_from(leaf_der).ok()?;
    let anchors: Vec<_> = roots
        .iter()
        .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok())
        .collect();
    let path = end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            at,
            AnyUsage,
            None,
            None,
        )
        .ok()?;
    Some(
        path.intermediate_certificates()
            .map(|cert| cert.der().into_owned())
            .collect(),
    )
}

/// Path building only; the leaf's usages are not this module's business.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _usages: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// A CRL that passed [`check_crl`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCrl {
    /// The DER, as signed.
    pub der: Vec<u8>,
    /// Lower-case hex of its authority key identifier.
    pub issuer_key_id: String,
    /// Its issuer (RFC 4514 form).
    pub issuer: String,
    /// The first URI of its Issuing Distribution Point, if it has one.
    pub url: Option<String>,
    /// The CRL number, big-endian without leading zeros.
    pub number: Vec<u8>,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate, if given.
    pub next_update: Option<OffsetDateTime>,
    /// The certificates it lists.
    pub revoked: Vec<RevokedEntry>,
}

/// One entry of a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedEntry {
    /// The serial, big-endian as encoded.
    pub serial: Vec<u8>,
    /// revocationDate.
    pub revoked_at: OffsetDateTime,
    /// The reasonCode, in RFC 5280's camelCase (`keyCompromise`); absent
    /// for unspecified.
    pub reason: Option<String>,
}

impl CheckedCrl {
    /// The CRL number in decimal.
    pub fn number_text(&self) -> String {
        number_text(&self.number)
    }

    /// The shard, read from the distribution point URL's last segment
    /// (`…/<shard>.crl`); 0 for a CRL without one.
    pub fn shard(&self) -> u32 {
        self.url
            .as_deref()
            .and_then(|url| url.rsplit('/').next())
            .and_then(|file| file.strip_suffix(".crl"))
            .and_then(|shard| shard.parse().ok())
            .unwrap_or(0)
    }

    /// The entry for `serial` (big-endian bytes), if it is listed.
    pub fn entry(&self, serial: &[u8]) -> Option<&RevokedEntry> {
        let serial = trim_zeros(serial);
        self.revoked
            .iter()
            .find(|entry| trim_zeros(&entry.serial) == serial)
    }

    /// True when `serial` (big-endian bytes) is listed.
    #[cfg(test)]
    pub fn lists(&self, serial: &[u8]) -> bool {
        self.entry(serial).is_some()
    }

    /// Where it is kept: one CRL per issuer and distribution point.
    fn slot(&self) -> (String, String) {
        (
            self.issuer_key_id.clone(),
            self.url.clone().unwrap_or_default(),
        )
    }
}

/// Checks a CRL against the trusted CAs (points 1 and 2 and the first half
/// of 3 of the module doc); the number rule is [`CrlStore::offer`]'s.
pub fn check_crl(der: &[u8], cas: &[TrustedCa]) -> Result<CheckedCrl, CrlRefusal> {
    let crl = <CertificateList>::from_der(der)
        .map_err(|error| CrlRefusal::Unparsable(error.to_string()))?;
    // The signature covers the bytes as served; x509-cert decodes DER
    // strictly, and equal re-encoding proves the parsed TBS is those bytes.
    let reencoded = crl
        .to_der()
        .map_err(|error| CrlRefusal::Unparsable(error.to_string()))?;
    if reencoded != der {
        return Err(CrlRefusal::Unparsable("not canonical DER".into()));
    }
    let tbs = &crl.tbs_cert_list;
    let extensions: &[Extension] = tbs.crl_extensions.as_deref().unwrap_or(&[]);
    let find = |oid: ObjectIdentifier| extensions.iter().find(|ext| ext.extn_id == oid);

    let aki = find(AUTHORITY_KEY_IDENTIFIER)
        .and_then(|ext| AuthorityKeyIdentifier::from_der(ext.extn_value.as_bytes()).ok())
        .and_then(|aki| aki.key_identifier)
        .ok_or(CrlRefusal::NoAuthorityKeyId)?;
    let issuer_key_id = hex::encode(aki.as_bytes());
    let ca = cas
        .iter()
        .find(|ca| ca.key_id == issuer_key_id)
        .ok_or_else(|| CrlRefusal::UnknownIssuer(issuer_key_id.clone()))?;
    if tbs.issuer != ca.subject {
        return Err(CrlRefusal::IssuerMismatch {
            crl_issuer: tbs.issuer.to_string(),
            ca_subject: ca.subject.to_string(),
        });
    }
    if !ca.crl_sign {
        return Err(CrlRefusal::NotCrlSigner(ca.subject.to_string()));
    }
    // RFC 5280 §5.1.1.2: the inner and outer algorithms must be the same.
    if tbs.signature != crl.signature_algorithm {
        return Err(CrlRefusal::BadSignature(ca.subject.to_string()));
    }
    let message = tbs
        .to_der()
        .map_err(|error| CrlRefusal::Unparsable(error.to_string()))?;
    let signature = crl
        .signature
        .as_bytes()
        .ok_or_else(|| CrlRefusal::BadSignature(ca.subject.to_string()))?;
    verify_signature(&ca.spki, &crl.signature_algorithm, &message, signature).map_err(
        |refusal| match refusal {
            Verify::Unsupported => CrlRefusal::UnsupportedAlgorithm,
            Verify::Bad => CrlRefusal::BadSignature(ca.subject.to_string()),
        },
    )?;

    if let Some(unknown) = extensions
        .iter()
        .find(|ext| ext.critical && !KNOWN_CRL_EXTENSIONS.contains(&ext.extn_id))
    {
        return Err(CrlRefusal::CriticalExtension(unknown.extn_id.to_string()));
    }
    let number = find(CRL_NUMBER)
        .and_then(|ext| CrlNumber::from_der(ext.extn_value.as_bytes()).ok())
        .ok_or(CrlRefusal::NoNumber)?;
    let url = match find(ISSUING_DISTRIBUTION_POINT) {
        None => None,
        Some(ext) => {
            let idp =
                IssuingDistributionPoint::from_der(ext.extn_value.as_bytes()).map_err(|error| {
                    CrlRefusal::Unparsable(format!("issuing distribution point: {error}"))
                })?;
            first_uri(&idp)
        }
    };
    let revoked = tbs
        .revoked_certificates
        .iter()
        .flatten()
        .map(|entry| RevokedEntry {
            serial: entry.serial_number.as_bytes().to_vec(),
            revoked_at: offset(entry.revocation_date),
            reason: entry
                .crl_entry_extensions
                .iter()
                .flatten()
                .find(|ext| ext.extn_id == REASON_CODE)
                .and_then(|ext| CrlReason::from_der(ext.extn_value.as_bytes()).ok())
                .map(reason_name),
        })
        .collect();
    Ok(CheckedCrl {
        der: der.to_vec(),
        issuer_key_id,
        issuer: tbs.issuer.to_string(),
        url,
        number: trim_zeros(number.0.as_bytes()).to_vec(),
        this_update: offset(tbs.this_update),
        next_update: tbs.next_update.map(offset),
        revoked,
    })
}

enum Verify {
    Unsupported,
    Bad,
}

/// Verifies with the rustls-webpki algorithm whose key and signature
/// algorithm identifiers are `spki`'s and `algorithm`'s (trying each that
/// matches, as webpki does for its own certificates).
fn verify_signature(
    spki: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Verify> {
    // rustls-pki-types identifiers are the AlgorithmIdentifier's contents,
    // without the SEQUENCE header.
    let contents = |identifier: &AlgorithmIdentifierOwned| -> Option<Vec<u8>> {
        let der = identifier.to_der().ok()?;
        Some(der::asn1::AnyRef::from_der(&der).ok()?.value().to_vec())
    };
    let (Some(key_id), Some(signature_id)) = (contents(&spki.algorithm), contents(algorithm))
    else {
        return Err(Verify::Unsupported);
    };
    let public_key = spki.subject_public_key.as_bytes().ok_or(Verify::Bad)?;
    let mut candidates = webpki::ALL_VERIFICATION_ALGS
        .iter()
        .filter(|alg| {
            alg.public_key_alg_id().as_ref() == key_id.as_slice()
                && alg.signature_alg_id().as_ref() == signature_id.as_slice()
        })
        .peekable();
    if candidates.peek().is_none() {
        return Err(Verify::Unsupported);
    }
    if candidates.any(|alg| alg.verify_signature(public_key, message, signature).is_ok()) {
        Ok(())
    } else {
        Err(Verify::Bad)
    }
}

fn first_uri(idp: &IssuingDistributionPoint) -> Option<String> {
    match idp.distribution_point.as_ref()? {
        DistributionPointName::FullName(names) => names.iter().find_map(|name| match name {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
            _ => None,
        }),
        DistributionPointName::NameRelativeToCRLIssuer(_) => None,
    }
}

fn reason_name(reason: CrlReason) -> String {
    match reason {
        CrlReason::Unspecified => "unspecified",
        CrlReason::KeyCompromise => "keyCompromise",
        CrlReason::CaCompromise => "cACompromise",
        CrlReason::AffiliationChanged => "affiliationChanged",
        CrlReason::Superseded => "superseded",
        CrlReason::CessationOfOperation => "cessationOfOperation",
        CrlReason::CertificateHold => "certificateHold",
        CrlReason::RemoveFromCRL => "removeFromCRL",
        CrlReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        CrlReason::AaCompromise => "aACompromise",
    }
    .to_owned()
}

fn offset(time: x509_cert::time::Time) -> OffsetDateTime {
    let seconds = i64::try_from(time.to_unix_duration().as_secs()).unwrap_or(i64::MAX);
    OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn trim_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Big-endian magnitudes compared as numbers.
fn compare_numbers(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (a, b) = (trim_zeros(a), trim_zeros(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Decimal text of a big-endian magnitude (hex beyond 128 bits).
fn number_text(bytes: &[u8]) -> String {
    let bytes = trim_zeros(bytes);
    if bytes.len() > 16 {
        return format!("0x{}", hex::encode(bytes));
    }
    let value = bytes
        .iter()
        .fold(0u128, |value, byte| (value << 8) | u128::from(*byte));
    value.to_string()
}

/// Every `X509 CRL` PEM block of `text`, DER; other blocks are skipped.
pub fn crls_from_pem(text: &str) -> Vec<Vec<u8>> {
    rustls_pemfile::read_all(&mut text.as_bytes())
        .filter_map(|item| match item {
            Ok(rustls_pemfile::Item::Crl(der)) => Some(der.as_ref().to_vec()),
            _ => None,
        })
        .collect()
}

/// The CRLs held, one per issuer and distribution point.
#[derive(Clone, Debug, Default)]
pub struct CrlStore {
    held: BTreeMap<(String, String), CheckedCrl>,
}

impl CrlStore {
    /// The CRLs of a `crl.pem` written earlier that still check against
    /// `cas` (one from a CA no longer trusted is dropped).
    pub fn from_pem(text: &str, cas: &[TrustedCa]) -> Self {
        let mut store = Self::default();
        for der in crls_from_pem(text) {
            match check_crl(&der, cas) {
                Ok(checked) => {
                    if let Err(refusal) = store.offer(checked) {
                        tracing::debug!("crl.pem: dropping a duplicate CRL: {refusal}");
                    }
                }
                Err(refusal) => {
                    tracing::info!("crl.pem: dropping a CRL no longer trusted: {refusal}")
                }
            }
        }
        store
    }

    /// Takes `checked` unless its number is lower than the one held for
    /// its issuer and distribution point; true when the store changed.
    pub fn offer(&mut self, checked: CheckedCrl) -> Result<bool, CrlRefusal> {
        let slot = checked.slot();
        if let Some(held) = self.held.get(&slot) {
            if compare_numbers(&checked.number, &held.number) == std::cmp::Ordering::Less {
                return Err(CrlRefusal::NumberWentBack {
                    held: held.number_text(),
                    got: checked.number_text(),
                });
            }
            if held.der == checked.der {
                return Ok(false);
            }
        }
        self.held.insert(slot, checked);
        Ok(true)
    }

    /// The CRL held for an issuer and distribution point.
    pub fn get(&self, issuer_key_id: &str, url: &str) -> Option<&CheckedCrl> {
        self.held.get(&(issuer_key_id.to_owned(), url.to_owned()))
    }

    /// Drops CRLs whose issuer is not among `cas`; true when any was.
    pub fn retain_issuers(&mut self, cas: &[TrustedCa]) -> bool {
        let before = self.held.len();
        self.held
            .retain(|(key_id, _), _| cas.iter().any(|ca| &ca.key_id == key_id));
        self.held.len() != before
    }

    /// The CRLs held, by issuer key id then shard.
    pub fn crls(&self) -> Vec<&CheckedCrl> {
        let mut crls: Vec<&CheckedCrl> = self.held.values().collect();
        crls.sort_by(|a, b| {
            a.issuer_key_id
                .cmp(&b.issuer_key_id)
                .then(a.shard().cmp(&b.shard()))
                .then(a.url.cmp(&b.url))
        });
        crls
    }

    /// The `crl.pem` text.
    pub fn to_pem(&self) -> String {
        self.crls()
            .into_iter()
            .map(|crl| pem_block("X509 CRL", &crl.der))
            .collect()
    }
}

/// What one refresh did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// CRLs taken.
    pub accepted: usize,
    /// CRLs refused (each logged with its reason).
    pub refused: usize,
}

/// Brings `store` up to date from `client`; refusals are logged and
/// counted, never fatal. Fails only when the index cannot be read.
pub async fn refresh(
    client: &CrlClient,
    cas: &[TrustedCa],
    store: &mut CrlStore,
) -> Result<Refreshed, certmint::client::Error> {
    let index = client.index().await?;
    let mut outcome = Refreshed::default();
    for summary in index.crls {
        if !cas.iter().any(|ca| ca.key_id == summary.issuer_key_id) {
            continue;
        }
        let held = store.get(&summary.issuer_key_id, &summary.url);
        if held.is_some_and(|held| fingerprint(&held.der) == summary.sha256) {
            continue;
        }
        let etag = held.map(|held| crl_etag(&held.der));
        let shard = format!("{} shard {}", summary.issuer_subject, summary.shard);
        let fetched = match client.fetch(&summary.path, etag.as_deref()).await {
            Ok(fetched) => fetched,
            Err(error) => {
                outcome.refused += 1;
                tracing::warn!(
                    crl.path = %summary.path,
                    "cannot fetch the CRL of {shard}; keeping the one held: {error}"
                );
                continue;
            }
        };
        let (der, content_type) = match fetched {
            CrlFetch::NotModified => continue,
            CrlFetch::Body {
                der, content_type, ..
            } => (der, content_type),
        };
        let taken = accept(&der, content_type.as_deref(), cas, &summary)
            .and_then(|checked| store.offer(checked));
        match taken {
            Ok(changed) => outcome.accepted += usize::from(changed),
            Err(refusal) => {
                outcome.refused += 1;
                tracing::warn!(
                    crl.path = %summary.path,
                    "refusing the CRL of {shard}; keeping the one held: {refusal}"
                );
            }
        }
    }
    Ok(outcome)
}

/// Checks a fetched body: media type, [`check_crl`], and that it is the
/// CRL the index listed (its issuer and distribution point).
fn accept(
    der: &[u8],
    content_type: Option<&str>,
    cas: &[TrustedCa],
    summary: &certmint::wire::CrlSummary,
) -> Result<CheckedCrl, CrlRefusal> {
    let media_type = content_type
        .and_then(|value| value.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|media| media.eq_ignore_ascii_case(CRL_CONTENT_TYPE)) {
        return Err(CrlRefusal::ContentType(content_type.map(str::to_owned)));
    }
    let checked = check_crl(der, cas)?;
    if checked.issuer_key_id != summary.issuer_key_id
        || checked.url.as_deref().is_some_and(|url| url != summary.url)
    {
        return Err(CrlRefusal::NotListed(summary.url.clone()));
    }
    Ok(checked)
}

/// Keeps `crl.pem` current for one agent: refreshes on an interval
/// ([`CrlKeeper::run`]) and right before the agent runs the reload hooks
/// for a new certificate ([`CrlKeeper::update`], so that one reload covers
/// both), and runs the hooks itself when only `crl.pem` changed.
pub struct CrlKeeper {
    workload: Workload,
    /// A CRL listener to read from instead of the HTTPS API.
    listener: Option<String>,
    interval: StdDuration,
    hooks: Hooks,
    store: Option<CrlStore>,
    /// `crl.pem` changed and no hook run has succeeded since: run them at
    /// the next refresh.
    hook_due: bool,
}

/// A keeper shared by the refresh task and the renewal loop.
pub type SharedCrlKeeper = Arc<tokio::sync::Mutex<CrlKeeper>>;

impl CrlKeeper {
    /// A keeper for `workload`'s output directory.
    pub fn new(
        workload: Workload,
        listener: Option<String>,
        interval: StdDuration,
        hooks: Hooks,
    ) -> Self {
        Self {
            workload,
            listener,
            interval,
            hooks,
            store: None,
            hook_due: false,
        }
    }

    /// Refreshes forever: now, then every interval (± 10 %).
    pub async fn run(keeper: SharedCrlKeeper) {
        loop {
            let interval = {
                let mut keeper = keeper.lock().await;
                keeper.refresh_once().await;
                keeper.interval
            };
            let unit = schedule::random_unit();
            let factor = 1.0 + REFRESH_JITTER * (2.0 * unit - 1.0);
            tokio::time::sleep(interval.mul_f64(factor)).await;
        }
    }

    /// One refresh ([`Self::update`]), then the reload hooks when
    /// `crl.pem` changed (or changed earlier and the hooks failed since).
    pub async fn refresh_once(&mut self) {
        self.update().await;
        if !self.hook_due {
            return;
        }
        let current = self.workload.output.current().ok().flatten();
        // meta.json may be missing (files written by another tool): the
        // leaf itself names its serial.
        let serial = current
            .as_ref()
            .and_then(|current| current.meta.as_ref().map(|meta| meta.serial.clone()))
            .or_else(|| {
                current
                    .as_ref()
                    .and_then(|current| leaf_serial(&current.cert_pem))
            })
            .unwrap_or_default();
        self.hook_due = !self.hooks.run(&self.workload.output, &serial).await;
    }

    /// The agent is about to run the reload hooks (a new certificate, or
    /// a retry): they load `crl.pem` as it is now, so a change already
    /// written needs no run of its own.
    pub fn hooks_cover_crl_pem(&mut self) {
        self.hook_due = false;
    }

    /// Reads what the workload trusts, fetches, checks, and writes
    /// `crl.pem` when its content changed (never an empty file where
    /// there was none: absent means "not fetched yet"). Nothing to do
    /// before the first certificate is in place. True when it wrote.
    pub async fn update(&mut self) -> bool {
        let output = &self.workload.output;
        let ca_pem = match output.ca_pem() {
            Ok(Some(ca_pem)) => ca_pem,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!("CRLs: cannot read {CA_FILE}: {error}");
                return false;
            }
        };
        let current = output.current().ok().flatten();
        let cas = trusted_cas(
            current.as_ref().map(|current| current.cert_pem.as_str()),
            &ca_pem,
            OffsetDateTime::now_utc(),
        );
        let store = self.store.get_or_insert_with(|| {
            let text = std::fs::read_to_string(output.path(CRL_FILE)).unwrap_or_default();
            CrlStore::from_pem(&text, &cas)
        });
        store.retain_issuers(&cas);
        let client = match &self.listener {
            Some(url) => CrlClient::plain_http(url, &self.workload.client_options()),
            None => self
                .workload
                .connect()
                .await
                .map(|session| session.client.crls())
                .map_err(|error| certmint::client::Error::Trust(error.to_string())),
        };
        let refreshed = match client {
            Ok(client) => refresh(&client, &cas, store).await,
            Err(error) => Err(error),
        };
        if let Err(error) = refreshed {
            tracing::warn!("cannot refresh the CRLs; keeping crl.pem as it is: {error}");
        }
        let text = store.to_pem();
        let on_disk = std::fs::read_to_string(output.path(CRL_FILE)).ok();
        if on_disk.as_deref() == Some(text.as_str()) || (on_disk.is_none() && text.is_empty()) {
            return false;
        }
        if let Err(error) = write_crl_file(output, &text) {
            tracing::warn!("cannot write {CRL_FILE}; retrying at the next refresh: {error}");
            return false;
        }
        let numbers: Vec<String> = store
            .crls()
            .iter()
            .map(|crl| format!("{}/{}#{}", crl.issuer, crl.shard(), crl.number_text()))
            .collect();
        tracing::info!(
            crl.count = numbers.len(),
            "crl.pem updated: {}",
            numbers.join(", ")
        );
        self.hook_due = true;
        true
    }
}

/// The serial of the first certificate of `cert_pem`, lower-case hex.
fn leaf_serial(cert_pem: &str) -> Option<String> {
    let leaf = certificates_from_pem(cert_pem).ok()?.into_iter().next()?;
    let leaf = Certificate::from_der(leaf.as_ref()).ok()?;
    Some(hex::encode(
        leaf.tbs_certificate().serial_number().as_bytes(),
    ))
}

/// Replaces `crl.pem` atomically (mode 0644, the output's group).
pub fn write_crl_file(output: &OutputDir, text: &str) -> Result<(), OutputError> {
    output.replace_file(CRL_FILE, text)
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        CrlDistributionPoint, CrlIssuingDistributionPoint, DnType, IsCa, KeyIdMethod, KeyPair,
        KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    use super::*;

    const URL: &str = "http://127.0.0.1:8080/crl/ab/0.crl";

    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
        params: CertificateParams,
        key_pem: String,
    }

    impl Ca {
        fn new(name: &str, usages: Vec<KeyUsagePurpose>) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = usages;
            let key = KeyPair::generate().unwrap();
            let key_pem = key.serialize_pem();
            Self {
                issuer: CertifiedIssuer::self_signed(params.clone(), key).unwrap(),
                params,
                key_pem,
            }
        }

        fn key_id(&self) -> Vec<u8> {
            hex::decode(&self.trusted()[0].key_id).unwrap()
        }

        fn root(name: &str) -> Self {
            Self::new(
                name,
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            )
        }

        fn trusted(&self) -> Vec<TrustedCa> {
            trusted_cas(None, &self.issuer.pem(), OffsetDateTime::now_utc())
        }

        fn crl(&self, number: u64, revoked: &[u64]) -> Vec<u8> {
            crl_by(&self.issuer, number, revoked, URL)
        }
    }

    fn crl_by(
        issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
        number: u64,
        revoked: &[u64],
        url: &str,
    ) -> Vec<u8> {
        crl_with_key_id(issuer, number, revoked, url, KeyIdMethod::Sha256)
    }

    /// A CRL whose authority key identifier comes from `key_id`.
    fn crl_with_key_id(
        issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
        number: u64,
        revoked: &[u64],
        url: &str,
        key_id: KeyIdMethod,
    ) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::hours(1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: Some(CrlIssuingDistributionPoint {
                distribution_point: CrlDistributionPoint {
                    uris: vec![url.to_owned()],
                },
                scope: Some(rcgen::CrlScope::UserCertsOnly),
            }),
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: now,
                    reason_code: (*serial == 0x0def)
                        .then_some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: key_id,
        }
        .signed_by(issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    #[test]
    fn ok_a_crl_of_a_trusted_root_checks() {
        let ca = Ca::root("Root");
        let checked = check_crl(&ca.crl(7, &[0x1234]), &ca.trusted()).unwrap();
        assert_eq!(checked.number_text(), "7");
        assert_eq!(checked.url.as_deref(), Some(URL));
        assert_eq!(checked.shard(), 0);
        assert!(checked.lists(&[0x12, 0x34]));
        assert!(checked.lists(&[0x00, 0x12, 0x34]));
        assert!(!checked.lists(&[0x12]));
        assert_eq!(checked.entry(&[0x12, 0x34]).unwrap().reason, None);
        let with_reason = check_crl(&ca.crl(8, &[0x0def]), &ca.trusted()).unwrap();
        assert_eq!(
            with_reason.entry(&[0x0d, 0xef]).unwrap().reason.as_deref(),
            Some("keyCompromise")
        );
    }

    #[test]
    fn fail_a_crl_of_another_key_with_the_same_name() {
        let trusted = Ca::root("Root");
        let impostor = Ca::root("Root");
        let error = check_crl(&impostor.crl(9, &[]), &trusted.trusted()).unwrap_err();
        assert!(matches!(error, CrlRefusal::UnknownIssuer(_)), "{error:?}");
    }

    #[test]
    fn fail_a_forged_signature_under_the_trusted_key_id() {
        // The impostor's CRL claims the trusted CA's key id and name: only
        // the signature check can catch it.
        let trusted = Ca::root("Root");
        let forged_issuer =
            rcgen::Issuer::new(trusted.params.clone(), KeyPair::generate().unwrap());
        let forged = crl_with_key_id(
            &forged_issuer,
            9,
            &[],
            URL,
            KeyIdMethod::PreSpecified(trusted.key_id()),
        );
        let error = check_crl(&forged, &trusted.trusted()).unwrap_err();
        assert!(matches!(error, CrlRefusal::BadSignature(_)), "{error:?}");
    }

    #[test]
    fn fail_garbage_and_truncated_crls() {
        let ca = Ca::root("Root");
        let cas = ca.trusted();
        let good = ca.crl(1, &[]);
        for bad in [
            b"not a crl".to_vec(),
            Vec::new(),
            good[..good.len() - 1].to_vec(),
        ] {
            assert!(
                matches!(check_crl(&bad, &cas), Err(CrlRefusal::Unparsable(_))),
                "{bad:?}"
            );
        }
        // A flipped byte inside the signed part: parses, does not verify.
        let mut flipped = good.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x01;
        assert!(check_crl(&flipped, &cas).is_err());
    }

    #[test]
    fn fail_a_ca_that_may_not_sign_crls() {
        let ca = Ca::new("Root", vec![KeyUsagePurpose::KeyCertSign]);
        // rcgen refuses to sign for such a CA; sign with a twin (same
        // name and key) that may.
        let mut params = ca.params.clone();
        params.key_usages = Vec::new();
        let twin = rcgen::Issuer::new(params, KeyPair::from_pem(&ca.key_pem).unwrap());
        let crl = crl_by(&twin, 1, &[], URL);
        let error = check_crl(&crl, &ca.trusted()).unwrap_err();
        assert!(matches!(error, CrlRefusal::NotCrlSigner(_)), "{error:?}");
    }

    #[test]
    fn fail_a_lower_number_keeps_the_crl_held() {
        let ca = Ca::root("Root");
        let cas = ca.trusted();
        let mut store = CrlStore::default();
        assert_eq!(
            store.offer(check_crl(&ca.crl(5, &[1]), &cas).unwrap()),
            Ok(true)
        );
        let older = check_crl(&ca.crl(4, &[]), &cas).unwrap();
        assert_eq!(
            store.offer(older),
            Err(CrlRefusal::NumberWentBack {
                held: "5".into(),
                got: "4".into()
            })
        );
        let held = store.crls();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].number_text(), "5");
        // Same number again: taken (a replica's copy of the same CRL).
        assert!(store
            .offer(check_crl(&ca.crl(5, &[1]), &cas).unwrap())
            .is_ok());
        assert_eq!(
            store.offer(check_crl(&ca.crl(6, &[]), &cas).unwrap()),
            Ok(true)
        );
        assert_eq!(store.crls()[0].number_text(), "6");
    }

    #[test]
    fn ok_numbers_compare_as_numbers() {
        use std::cmp::Ordering;
        assert_eq!(compare_numbers(&[0x01, 0x00], &[0xff]), Ordering::Greater);
        assert_eq!(compare_numbers(&[0x00, 0x05], &[0x05]), Ordering::Equal);
        assert_eq!(compare_numbers(&[], &[0x01]), Ordering::Less);
        assert_eq!(number_text(&[0x01, 0x00]), "256");
    }

    #[test]
    fn ok_pem_round_trip_orders_by_issuer_then_shard_and_drops_untrusted() {
        let a = Ca::root("A");
        let b = Ca::root("B");
        let mut cas = a.trusted();
        cas.extend(b.trusted());
        let mut store = CrlStore::default();
        let shard = |n: u32| format!("http://127.0.0.1:8080/crl/x/{n}.crl");
        for der in [
            crl_by(&a.issuer, 3, &[], &shard(10)),
            crl_by(&b.issuer, 1, &[], &shard(0)),
            crl_by(&a.issuer, 2, &[], &shard(2)),
        ] {
            store.offer(check_crl(&der, &cas).unwrap()).unwrap();
        }
        let order: Vec<(String, u32)> = store
            .crls()
            .iter()
            .map(|crl| (crl.issuer_key_id.clone(), crl.shard()))
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        let pem = store.to_pem();
        assert_eq!(pem.matches("-----BEGIN X509 CRL-----").count(), 3);
        assert_eq!(CrlStore::from_pem(&pem, &cas).to_pem(), pem);
        // Only A trusted now: B's CRL goes.
        let only_a = CrlStore::from_pem(&pem, &a.trusted());
        assert_eq!(only_a.crls().len(), 2);
        assert!(store.retain_issuers(&a.trusted()));
        assert_eq!(store.to_pem(), only_a.to_pem());
    }

    #[test]
    fn ok_the_issuing_ca_on_the_leaf_path_is_trusted_a_stray_one_is_not() {
        let root = Ca::root("Root");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Issuing");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuing =
            CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), &root.issuer).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["a.test".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuing)
            .unwrap();
        let stray = Ca::root("Stray");
        let cert_pem = format!("{}{}{}", leaf.pem(), issuing.pem(), stray.issuer.pem());
        let cas = trusted_cas(
            Some(&cert_pem),
            &root.issuer.pem(),
            OffsetDateTime::now_utc(),
        );
        assert_eq!(cas.len(), 2, "the root and the issuing CA");
        let crl = crl_by(&issuing, 1, &[42], URL);
        assert!(check_crl(&crl, &cas).unwrap().lists(&[42]));
        assert!(matches!(
            check_crl(&stray.crl(1, &[]), &cas),
            Err(CrlRefusal::UnknownIssuer(_))
        ));
        // Without the leaf's chain, only the root counts.
        let roots_only = trusted_cas(None, &root.issuer.pem(), OffsetDateTime::now_utc());
        assert!(matches!(
            check_crl(&crl, &roots_only),
            Err(CrlRefusal::UnknownIssuer(_))
        ));
    }

    #[test]
    fn fail_wrong_content_type_or_another_shard() {
        let ca = Ca::root("Root");
        let cas = ca.trusted();
        let der = ca.crl(1, &[]);
        let summary = certmint::wire::CrlSummary {
            issuer_key_id: cas[0].key_id.clone(),
            issuer_subject: "CN=Root".into(),
            shard: 0,
            scope: certmint::wire::CrlScope::UserCerts,
            number: 1,
            this_update: OffsetDateTime::now_utc(),
            next_update: OffsetDateTime::now_utc(),
            revoked: 0,
            path: "/crl/ab/0.crl".into(),
            url: URL.into(),
            sha256: fingerprint(&der),
        };
        assert!(accept(&der, Some("application/pkix-crl"), &cas, &summary).is_ok());
        assert!(accept(&der, Some("Application/PKIX-CRL; x=y"), &cas, &summary).is_ok());
        for content_type in [None, Some("text/html"), Some("application/json")] {
            assert!(
                matches!(
                    accept(&der, content_type, &cas, &summary),
                    Err(CrlRefusal::ContentType(_))
                ),
                "{content_type:?}"
            );
        }
        let other_shard = certmint::wire::CrlSummary {
            url: "http://127.0.0.1:8080/crl/ab/1.crl".into(),
            ..summary
        };
        assert!(matches!(
            accept(&der, Some(CRL_CONTENT_TYPE), &cas, &other_shard),
            Err(CrlRefusal::NotListed(_))
        ));
    }

    /// A loopback HTTP/1.1 server playing the CRL listener: serves an
    /// index and CRL bodies the test sets, answers `If-None-Match` with
    /// 304 as the real one does, and records the conditional headers.
    struct Listener {
        url: String,
        state: Arc<std::sync::Mutex<ListenerState>>,
    }

    #[derive(Default)]
    struct ListenerState {
        index: Vec<certmint::wire::CrlSummary>,
        bodies: BTreeMap<String, (String, Vec<u8>)>,
        conditional: Vec<(String, Option<String>)>,
    }

    impl Listener {
        fn start() -> Self {
            use std::io::{BufRead as _, Write as _};
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", socket.local_addr().unwrap());
            let state = Arc::new(std::sync::Mutex::new(ListenerState::default()));
            let shared = state.clone();
            std::thread::spawn(move || {
                for stream in socket.incoming() {
                    let Ok(mut stream) = stream else { return };
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).is_err() {
                        continue;
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
                    let mut if_none_match = None;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("if-none-match") {
                                if_none_match = Some(value.trim().to_owned());
                            }
                        }
                    }
                    let mut state = shared.lock().unwrap();
                    let (status, content_type, body) = if path == "/v1/crls" {
                        let index = certmint::wire::CrlIndex {
                            crls: state.index.clone(),
                        };
                        let json = serde_json::to_vec(&index).unwrap();
                        ("200 OK", "application/json".to_owned(), json)
                    } else if let Some((content_type, body)) = state.bodies.get(&path).cloned() {
                        state.conditional.push((path, if_none_match.clone()));
                        if if_none_match.as_deref() == Some(crl_etag(&body).as_str()) {
                            ("304 Not Modified", content_type, Vec::new())
                        } else {
                            ("200 OK", content_type, body)
                        }
                    } else {
                        ("404 Not Found", "text/plain".to_owned(), b"no".to_vec())
                    };
                    drop(state);
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                }
            });
            Self { url, state }
        }

        /// Lists `der` in the index as shard 0 of `ca`, and serves `body`
        /// (usually `der` itself) as `content_type` at its path.
        fn serve(&self, ca: &TrustedCa, der: &[u8], body: &[u8], content_type: &str) {
            let path = format!("/crl/{}/0.crl", ca.key_id);
            let now = OffsetDateTime::now_utc();
            let mut state = self.state.lock().unwrap();
            state.index = vec![certmint::wire::CrlSummary {
                issuer_key_id: ca.key_id.clone(),
                issuer_subject: ca.subject.to_string(),
                shard: 0,
                scope: certmint::wire::CrlScope::UserCerts,
                number: 0,
                this_update: now,
                next_update: now,
                revoked: 0,
                path: path.clone(),
                url: URL.into(),
                sha256: fingerprint(der),
            }];
            state
                .bodies
                .insert(path, (content_type.to_owned(), body.to_vec()));
        }

        fn conditional(&self) -> Vec<(String, Option<String>)> {
            std::mem::take(&mut self.state.lock().unwrap().conditional)
        }
    }

    fn keeper_for(ca: &Ca, listener: &Listener) -> (tempfile::TempDir, CrlKeeper) {
        use crate::agent::output::{Generation, Meta};
        let temp = tempfile::tempdir().unwrap();
        let output = OutputDir::open_or_create(&temp.path().join("out"), None).unwrap();
        let now = OffsetDateTime::now_utc();
        let meta = Meta {
            serial: "0abc".into(),
            not_before: now,
            not_after: now + time::Duration::hours(1),
            renew_after: now + time::Duration::minutes(40),
            policy: "p".into(),
            policy_version: 1,
            key_type: certmint::wire::KeyType::EcP256,
            names: certmint::wire::Identity::default(),
            received_at: now,
        };
        output
            .install(&Generation {
                key_pem: "key",
                cert_pem: "no leaf: only the root's CRLs count",
                ca_pem: &ca.issuer.pem(),
                meta: &meta,
            })
            .unwrap();
        let hook_log = temp.path().join("hook.log");
        let hooks = Hooks {
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "echo \"$CERTMINT_SERIAL $CERTMINT_CRL_FILE\" >> {}",
                    hook_log.display()
                ),
            ]),
            timeout: StdDuration::from_secs(10),
            signal: None,
            turn: Default::default(),
        };
        let workload = Workload {
            server: "https://unused.test:8443".into(),
            trust: crate::agent::workload::TrustSource::Fingerprint("unused".into()),
            key_type: certmint::wire::KeyType::EcP256,
            ttl: None,
            names: certmint::wire::Identity::default(),
            request_timeout: StdDuration::from_secs(5),
            output,
            pending_enrollment: Default::default(),
        };
        let keeper = CrlKeeper::new(workload, Some(listener.url.clone()), DEFAULT_REFRESH, hooks);
        (temp, keeper)
    }

    fn hook_runs(temp: &tempfile::TempDir) -> Vec<String> {
        std::fs::read_to_string(temp.path().join("hook.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn ok_keeper_writes_crl_pem_runs_hooks_once_and_keeps_the_last_good() {
        let ca = Ca::root("Root");
        let trusted = ca.trusted().remove(0);
        let listener = Listener::start();
        let (temp, mut keeper) = keeper_for(&ca, &listener);
        let crl_path = temp.path().join("out").join(CRL_FILE);

        let good = ca.crl(5, &[0x0abc]);
        listener.serve(&trusted, &good, &good, CRL_CONTENT_TYPE);
        keeper.refresh_once().await;
        let written = std::fs::read_to_string(&crl_path).unwrap();
        assert_eq!(crls_from_pem(&written), vec![good.clone()]);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&crl_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(
            hook_runs(&temp),
            vec![format!("0abc {}", crl_path.display())]
        );
        // First fetch: nothing held, so nothing to match.
        assert_eq!(
            listener.conditional(),
            vec![(format!("/crl/{}/0.crl", trusted.key_id), None)]
        );

        // Nothing changed: no fetch, no write, no hook.
        keeper.refresh_once().await;
        assert!(listener.conditional().is_empty());
        assert_eq!(hook_runs(&temp).len(), 1);

        // Hostile or broken answers, each listed as a new CRL: refused.
        let impostor = Ca::root("Root");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("another key", impostor.crl(9, &[]), CRL_CONTENT_TYPE),
            ("lower number", ca.crl(4, &[]), CRL_CONTENT_TYPE),
            ("garbage", b"<html>oops</html>".to_vec(), CRL_CONTENT_TYPE),
            ("wrong content type", ca.crl(6, &[]), "text/html"),
        ];
        for (case, body, content_type) in cases {
            listener.serve(&trusted, &body, &body, content_type);
            keeper.refresh_once().await;
            let conditional = listener.conditional();
            assert_eq!(conditional.len(), 1, "{case}: fetched once");
            assert_eq!(
                conditional[0].1.as_deref(),
                Some(crl_etag(&good).as_str()),
                "{case}: asked only if changed"
            );
            let kept = std::fs::read_to_string(&crl_path).unwrap();
            assert_eq!(kept, written, "{case}: the last good crl.pem stays");
            assert_eq!(hook_runs(&temp).len(), 1, "{case}: no hook");
        }

        // The index lists a newer CRL the listener does not serve yet (a
        // replica lagging behind): it answers 304 to the held ETag.
        let not_yet = ca.crl(8, &[]);
        listener.serve(&trusted, &not_yet, &good, CRL_CONTENT_TYPE);
        keeper.refresh_once().await;
        assert_eq!(listener.conditional().len(), 1);
        assert_eq!(std::fs::read_to_string(&crl_path).unwrap(), written);
        assert_eq!(hook_runs(&temp).len(), 1);

        // Unreachable: kept as well.
        let mut unreachable = keeper;
        unreachable.listener = Some("http://127.0.0.1:1".into());
        unreachable.refresh_once().await;
        assert_eq!(std::fs::read_to_string(&crl_path).unwrap(), written);

        // A newer CRL: taken, and the hooks run again.
        let mut keeper = unreachable;
        keeper.listener = Some(listener.url.clone());
        let newer = ca.crl(7, &[0x0abc, 0x0def]);
        listener.serve(&trusted, &newer, &newer, CRL_CONTENT_TYPE);
        keeper.refresh_once().await;
        let updated = std::fs::read_to_string(&crl_path).unwrap();
        assert_eq!(crls_from_pem(&updated), vec![newer]);
        assert_eq!(hook_runs(&temp).len(), 2);
    }

    #[tokio::test]
    async fn ok_a_restarted_keeper_still_refuses_a_lower_number() {
        let ca = Ca::root("Root");
        let trusted = ca.trusted().remove(0);
        let listener = Listener::start();
        let (temp, mut keeper) = keeper_for(&ca, &listener);
        let good = ca.crl(5, &[]);
        listener.serve(&trusted, &good, &good, CRL_CONTENT_TYPE);
        keeper.refresh_once().await;
        // A new keeper (an agent restart) reads the number from crl.pem.
        let mut restarted = CrlKeeper::new(
            keeper.workload.clone(),
            Some(listener.url.clone()),
            DEFAULT_REFRESH,
            keeper.hooks.clone(),
        );
        let older = ca.crl(3, &[]);
        listener.serve(&trusted, &older, &older, CRL_CONTENT_TYPE);
        restarted.refresh_once().await;
        let on_disk = std::fs::read_to_string(temp.path().join("out").join(CRL_FILE)).unwrap();
        assert_eq!(crls_from_pem(&on_disk), vec![good]);
        assert_eq!(hook_runs(&temp).len(), 1);
    }

    #[tokio::test]
    async fn ok_nothing_fetched_writes_no_crl_pem() {
        let ca = Ca::root("Root");
        let listener = Listener::start();
        let (temp, mut keeper) = keeper_for(&ca, &listener);
        keeper.listener = Some("http://127.0.0.1:1".into());
        keeper.refresh_once().await;
        assert!(!temp.path().join("out").join(CRL_FILE).exists());
        assert!(hook_runs(&temp).is_empty());
    }

    #[tokio::test]
    async fn ok_a_failed_hook_after_a_crl_change_runs_again_at_the_next_refresh() {
        let ca = Ca::root("Root");
        let trusted = ca.trusted().remove(0);
        let listener = Listener::start();
        let (temp, mut keeper) = keeper_for(&ca, &listener);
        let flag = temp.path().join("first-run-done");
        let log = temp.path().join("hook.log");
        keeper.hooks.command = Some(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "if [ -e {flag} ]; then echo ok >> {log}; else touch {flag}; exit 1; fi",
                flag = flag.display(),
                log = log.display()
            ),
        ]);
        let good = ca.crl(1, &[]);
        listener.serve(&trusted, &good, &good, CRL_CONTENT_TYPE);
        keeper.refresh_once().await;
        assert!(flag.exists(), "the hook ran and failed");
        assert!(hook_runs(&temp).is_empty());
        keeper.refresh_once().await;
        assert_eq!(hook_runs(&temp), vec!["ok".to_owned()]);
        keeper.refresh_once().await;
        assert_eq!(hook_runs(&temp).len(), 1, "once it succeeded, no more");
        // Hooks the agent runs for a new certificate cover a change too.
        let newer = ca.crl(2, &[]);
        listener.serve(&trusted, &newer, &newer, CRL_CONTENT_TYPE);
        assert!(keeper.update().await);
        keeper.hooks_cover_crl_pem();
        keeper.refresh_once().await;
        assert_eq!(hook_runs(&temp).len(), 1);
    }
}
