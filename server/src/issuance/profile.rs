//! The certificate profile: exactly which fields and extensions certmint
//! puts in leaf and CA certificates (DESIGN.md "Certificates issued").
//!
//! Certificates are built with `x509-cert`'s builder driven by our own
//! [`BuilderProfile`]s, so every extension comes from the policy and the
//! verified request and nothing from the CSR. The builder needs a "signer"
//! only for its public key and algorithm identifier; [`HsmKeyIdentity`]
//! supplies those from the HSM key. Signing itself happens later, on the
//! HSM, over the exact TBS bytes recorded in the database.

use std::net::IpAddr;
use std::str::FromStr as _;

use certmint::wire::KeyType;
use const_oid::db::rfc5280;
use der::asn1::{BitString, Ia5String, OctetString};
use der::{Decode as _, Encode as _};
use spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef,
};
use time::OffsetDateTime;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder as _, CertificateBuilder};
use x509_cert::certificate::{Certificate, TbsCertificate};
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::crl::CrlDistributionPoints;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension as _};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::hsm::CaSigner;
use crate::policy::ExtendedKeyUsage as PolicyEku;

/// Building a certificate failed; always a bug or a bad stored value, never
/// a client error (requests are validated before they get here).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// DER encoding or decoding failed.
    #[error("certificate encoding: {0}")]
    Encoding(String),
    /// A name could not be put into a certificate.
    #[error("name {name:?} cannot be encoded: {reason}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
}

fn encoding(error: impl std::fmt::Display) -> ProfileError {
    ProfileError::Encoding(error.to_string())
}

/// The names a leaf certificate will carry, already checked by policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeafNames {
    /// DNS names, lower-case.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ip: Vec<IpAddr>,
    /// URIs.
    pub uri: Vec<String>,
}

/// Everything that decides a leaf's contents.
#[derive(Debug, Clone)]
pub struct LeafTemplate {
    /// 16 random bytes, top bit cleared (positive).
    pub serial: [u8; 16],
    /// Subject key from the verified CSR.
    pub subject_public_key_info: SubjectPublicKeyInfoOwned,
    /// Subject key type (decides keyUsage).
    pub key_type: KeyType,
    /// Names from the verified request.
    pub names: LeafNames,
    /// EKUs from the policy.
    pub extended_key_usages: Vec<PolicyEku>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// URL of the CRL that will list it if it is revoked (its CRL
    /// Distribution Points extension).
    pub crl_distribution_point: String,
}

/// A CA certificate to build (root or intermediate).
#[derive(Debug, Clone)]
pub struct CaTemplate {
    /// Serial bytes.
    pub serial: [u8; 16],
    /// Subject, e.g. `CN=certmint Root CA`.
    pub subject: Name,
    /// Issuer name (equal to subject for a root).
    pub issuer: Name,
    /// The CA's public key.
    pub subject_public_key_info: SubjectPublicKeyInfoOwned,
    /// The issuer's public key (equal to the subject's for a root).
    pub issuer_public_key_info: SubjectPublicKeyInfoOwned,
    /// `pathLenConstraint`: 1 for a root above one intermediate, 0 for the intermediate.
    pub path_length: u8,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// A TBS certificate ready for the HSM: its DER, and the builder that turns a
/// signature over exactly that DER into a certificate.
pub struct UnsignedCertificate {
    tbs_der: Vec<u8>,
    builder: Box<dyn FnOnce(BitString) -> Result<Certificate, ProfileError> + Send>,
}

impl std::fmt::Debug for UnsignedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsignedCertificate")
            .field("tbs_der_len", &self.tbs_der.len())
            .finish_non_exhaustive()
    }
}

impl UnsignedCertificate {
    /// DER of the TBSCertificate: what gets recorded and then signed.
    pub fn tbs_der(&self) -> &[u8] {
        &self.tbs_der
    }

    /// Attaches the HSM's signature.
    pub fn assemble(self, signature: &[u8]) -> Result<Certificate, ProfileError> {
        let bits = BitString::from_bytes(signature).map_err(encoding)?;
        (self.builder)(bits)
    }
}

/// Builds the TBS of a leaf issued by `issuer` (the issuing CA certificate)
/// and signed later by `signer`.
pub fn prepare_leaf(
    template: &LeafTemplate,
    issuer: &Certificate,
    signer: &dyn CaSigner,
) -> Result<UnsignedCertificate, ProfileError> {
    let subject = leaf_subject(&template.names)?;
    let profile = LeafProfile {
        authority_key_identifier: issuer_key_identifier(issuer)?,
        issuer: issuer.tbs_certificate().subject().clone(),
        subject_is_empty: subject.is_empty(),
        subject,
        template: template.clone(),
    };
    prepare(
        profile,
        &template.serial,
        template.not_before,
        template.not_after,
        template.subject_public_key_info.clone(),
        signer,
    )
}

/// Builds the TBS of a root or intermediate CA certificate.
pub fn prepare_ca(
    template: &CaTemplate,
    signer: &dyn CaSigner,
) -> Result<UnsignedCertificate, ProfileError> {
    let profile = CaProfile {
        template: template.clone(),
    };
    prepare(
        profile,
        &template.serial,
        template.not_before,
        template.not_after,
        template.subject_public_key_info.clone(),
        signer,
    )
}

fn prepare<P: BuilderProfile + Send + 'static>(
    profile: P,
    serial: &[u8; 16],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    subject_public_key_info: SubjectPublicKeyInfoOwned,
    signer: &dyn CaSigner,
) -> Result<UnsignedCertificate, ProfileError> {
    let validity = Validity::new(to_time(not_before)?, to_time(not_after)?);
    let serial = SerialNumber::new(serial).map_err(encoding)?;
    let identity = HsmKeyIdentity::from_signer(signer)?;
    let mut builder = CertificateBuilder::new(profile, serial, validity, subject_public_key_info)
        .map_err(encoding)?;
    let tbs_der = builder.finalize(&identity).map_err(encoding)?;
    Ok(UnsignedCertificate {
        tbs_der,
        builder: Box::new(move |signature| {
            builder.assemble(signature, &identity).map_err(encoding)
        }),
    })
}

fn to_time(at: OffsetDateTime) -> Result<Time, ProfileError> {
    Time::try_from(std::time::SystemTime::from(at)).map_err(encoding)
}

/// CN is the first DNS name when there is one that fits (for tools that
/// still read CN); otherwise the subject is empty and SAN becomes critical.
fn leaf_subject(names: &LeafNames) -> Result<Name, ProfileError> {
    match names.dns.first() {
        Some(first) if first.len() <= 64 => {
            Name::from_str(&format!("CN={first}")).map_err(|error| ProfileError::Name {
                name: first.clone(),
                reason: error.to_string(),
            })
        }
        _ => Ok(Name::default()),
    }
}

struct LeafProfile {
    /// The issuing certificate's own subjectKeyIdentifier.
    authority_key_identifier: OctetString,
    issuer: Name,
    subject: Name,
    subject_is_empty: bool,
    template: LeafTemplate,
}

impl BuilderProfile for LeafProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        subject_key: SubjectPublicKeyInfoRef<'_>,
        _issuer_key: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let subject = tbs.subject();
        let mut extensions = Vec::with_capacity(6);
        let basic_constraints = BasicConstraints {
            ca: false,
            path_len_constraint: None,
        };
        extensions.push(basic_constraints.to_extension(subject, &extensions)?);
        let usages = match self.template.key_type {
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment
            }
            KeyType::EcP256 | KeyType::EcP384 | KeyType::Ed25519 => {
                KeyUsages::DigitalSignature.into()
            }
        };
        extensions.push(KeyUsage(usages).to_extension(subject, &extensions)?);
        let ekus = self
            .template
            .extended_key_usages
            .iter()
            .map(|eku| match eku {
                PolicyEku::ClientAuth => rfc5280::ID_KP_CLIENT_AUTH,
                PolicyEku::ServerAuth => rfc5280::ID_KP_SERVER_AUTH,
            })
            .collect();
        extensions.push(ExtendedKeyUsage(ekus).to_extension(subject, &extensions)?);
        let alt_names = general_names(&self.template.names)?;
        let mut san = SubjectAltName(alt_names).to_extension(subject, &extensions)?;
        // RFC 5280 §4.2.1.6: critical when the subject is empty.
        san.critical = self.subject_is_empty;
        extensions.push(san);
        extensions.push(subject_key_identifier(subject_key)?.to_extension(subject, &extensions)?);
        let authority = AuthorityKeyIdentifier {
            key_identifier: Some(self.authority_key_identifier.clone()),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        };
        extensions.push(authority.to_extension(subject, &extensions)?);
        extensions.push(
            crl_distribution_points(&self.template.crl_distribution_point)?
                .to_extension(subject, &extensions)?,
        );
        Ok(extensions)
    }
}

/// One distribution point with one URI (RFC 5280 §4.2.1.13): no reasons,
/// no cRLIssuer, so the CRL there covers every reason and is signed by the
/// certificate's issuer.
fn crl_distribution_points(url: &str) -> der::Result<CrlDistributionPoints> {
    let uri = Ia5String::new(url)?;
    Ok(CrlDistributionPoints(vec![DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(uri),
        ])),
        reasons: None,
        crl_issuer: None,
    }]))
}

/// The key identifier a child of `issuer` must name in its AKI: the
/// issuer's own subjectKeyIdentifier when it has one (an externally signed
/// issuing certificate may use any method to derive it, RFC 5280 §4.2.1.2),
/// else ours, derived from its key.
pub fn issuer_key_identifier(issuer: &Certificate) -> Result<OctetString, ProfileError> {
    use der::referenced::OwnedToRef as _;
    let tbs = issuer.tbs_certificate();
    match tbs
        .get_extension::<SubjectKeyIdentifier>()
        .map_err(encoding)?
    {
        Some((_, identifier)) => Ok(identifier.0),
        None => key_identifier(tbs.subject_public_key_info().owned_to_ref()).map_err(encoding),
    }
}

struct CaProfile {
    template: CaTemplate,
}

impl BuilderProfile for CaProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.template.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.template.subject.clone()
    }

    fn build_extensions(
        &self,
        subject_key: SubjectPublicKeyInfoRef<'_>,
        _signer_key: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let subject = tbs.subject();
        let mut extensions = Vec::with_capacity(4);
        let mut basic_constraints = BasicConstraints {
            ca: true,
            path_len_constraint: Some(self.template.path_length),
        }
        .to_extension(subject, &extensions)?;
        basic_constraints.critical = true;
        extensions.push(basic_constraints);
        let usages = KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature;
        extensions.push(KeyUsage(usages).to_extension(subject, &extensions)?);
        extensions.push(subject_key_identifier(subject_key)?.to_extension(subject, &extensions)?);
        let issuer_key = self.template.issuer_public_key_info.owned_to_ref_spki();
        extensions.push(authority_key_identifier(issuer_key)?.to_extension(subject, &extensions)?);
        Ok(extensions)
    }
}

trait OwnedSpkiExt {
    fn owned_to_ref_spki(&self) -> SubjectPublicKeyInfoRef<'_>;
}

impl OwnedSpkiExt for SubjectPublicKeyInfoOwned {
    fn owned_to_ref_spki(&self) -> SubjectPublicKeyInfoRef<'_> {
        use der::referenced::OwnedToRef as _;
        self.owned_to_ref()
    }
}

fn general_names(names: &LeafNames) -> der::Result<Vec<GeneralName>> {
    let mut general = Vec::with_capacity(names.dns.len() + names.ip.len() + names.uri.len());
    for dns in &names.dns {
        general.push(GeneralName::DnsName(Ia5String::new(dns)?));
    }
    for ip in &names.ip {
        general.push(GeneralName::from(*ip));
    }
    for uri in &names.uri {
        general.push(GeneralName::UniformResourceIdentifier(Ia5String::new(uri)?));
    }
    Ok(general)
}

/// Key identifier per RFC 7093 §2 method 1: the leftmost 160 bits of the
/// SHA-256 of the subjectPublicKey bits.
pub fn key_identifier(key: SubjectPublicKeyInfoRef<'_>) -> der::Result<OctetString> {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.subject_public_key.raw_bytes());
    OctetString::new(&digest.as_ref()[..20])
}

fn subject_key_identifier(key: SubjectPublicKeyInfoRef<'_>) -> der::Result<SubjectKeyIdentifier> {
    Ok(SubjectKeyIdentifier(key_identifier(key)?))
}

fn authority_key_identifier(
    key: SubjectPublicKeyInfoRef<'_>,
) -> der::Result<AuthorityKeyIdentifier> {
    Ok(AuthorityKeyIdentifier {
        key_identifier: Some(key_identifier(key)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    })
}

/// Public half of an HSM key, in the shape `x509-cert`'s builder asks of a
/// signer. It never signs: the builder only reads the key and algorithm.
#[derive(Clone)]
struct HsmKeyIdentity {
    public_key: SpkiDocument,
    signature_algorithm: AlgorithmIdentifierOwned,
}

#[derive(Clone)]
struct SpkiDocument(Vec<u8>);

impl EncodePublicKey for SpkiDocument {
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        Ok(der::Document::try_from(self.0.as_slice())?)
    }
}

impl HsmKeyIdentity {
    fn from_signer(signer: &dyn CaSigner) -> Result<Self, ProfileError> {
        Ok(Self {
            public_key: SpkiDocument(signer.subject_public_key_info().to_vec()),
            signature_algorithm: AlgorithmIdentifierOwned::from_der(signer.signature_algorithm())
                .map_err(encoding)?,
        })
    }
}

impl signature::Keypair for HsmKeyIdentity {
    type VerifyingKey = SpkiDocument;

    fn verifying_key(&self) -> Self::VerifyingKey {
        self.public_key.clone()
    }
}

impl DynSignatureAlgorithmIdentifier for HsmKeyIdentity {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.signature_algorithm.clone())
    }
}

/// Encodes a certificate as DER.
pub fn to_der(certificate: &Certificate) -> Result<Vec<u8>, ProfileError> {
    certificate.to_der().map_err(encoding)
}
