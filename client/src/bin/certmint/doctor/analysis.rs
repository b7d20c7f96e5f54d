//! What can be said about a certificate chain without the network: does
//! it reach a root of ours (and if not, which link is missing), is it in
//! its validity period, does it carry a name, which usages does it allow,
//! is any of it revoked, and does it belong to the CAs a server asked for.
//!
//! Each question is a pure function from parsed certificates, CRLs and a
//! time to a typed finding; `connect` and `listen` turn findings into
//! checks of their own layers (our identity, the server, a client).
//!
//! Invariants: no I/O and no clock reads (the caller passes the time);
//! every verification is rustls-webpki's, the one a peer runs, and every
//! parse is x509-cert's (no hand-written ASN.1); each question is asked in
//! isolation (the chain at a time inside the leaf's validity, dates on
//! their own), so one defect is reported by its own layer, not as a
//! confusing error of another.

use certmint::client::trust::time_within_validity;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use time::OffsetDateTime;
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyPurposeIdIter, KeyUsage,
    OwnedCertRevocationList, RevocationCheckDepth, RevocationOptionsBuilder, RevocationReason,
    UnknownStatusPolicy,
};
use x509_cert::crl::CertificateList;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode as _, Encode as _};
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::Certificate;

/// id-kp-serverAuth (RFC 5280 §4.2.1.12).
const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
/// id-kp-clientAuth.
const CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// A certificate as both DER (for webpki) and parsed (for names and dates).
#[derive(Clone, Debug)]
pub struct Cert {
    /// The DER, as sent on the wire.
    pub der: CertificateDer<'static>,
    /// The parsed certificate.
    pub x509: Certificate,
}

impl Cert {
    /// Parses `der`.
    pub fn from_der(der: CertificateDer<'static>) -> Result<Cert, String> {
        let x509 = Certificate::from_der(der.as_ref())
            .map_err(|error| format!("not a valid X.509 certificate: {error}"))?;
        Ok(Cert { der, x509 })
    }

    /// The subject, RFC 4514 text.
    pub fn subject(&self) -> String {
        name_text(self.x509.tbs_certificate().subject())
    }

    /// The issuer, RFC 4514 text.
    pub fn issuer(&self) -> String {
        name_text(self.x509.tbs_certificate().issuer())
    }

    /// The serial as certmint writes it: the DER integer's bytes in hex.
    pub fn serial(&self) -> String {
        hex::encode(self.x509.tbs_certificate().serial_number().as_bytes())
    }

    /// notBefore and notAfter, Unix seconds.
    pub fn validity(&self) -> (i64, i64) {
        let validity = self.x509.tbs_certificate().validity();
        (unix(validity.not_before), unix(validity.not_after))
    }

    fn subject_der(&self) -> Option<Vec<u8>> {
        self.x509.tbs_certificate().subject().to_der().ok()
    }

    fn issuer_der(&self) -> Option<Vec<u8>> {
        self.x509.tbs_certificate().issuer().to_der().ok()
    }

    fn self_issued(&self) -> bool {
        self.x509.tbs_certificate().subject() == self.x509.tbs_certificate().issuer()
    }
}

/// A CRL as DER (for webpki) and its dates (for staleness).
#[derive(Debug)]
pub struct Crl {
    /// The DER, for rustls's own client verifier (`--listen`).
    pub der: CertificateRevocationListDer<'static>,
    /// webpki's parse, used for the revocation check itself.
    pub list: OwnedCertRevocationList,
    /// The issuer, RFC 4514 text.
    pub issuer: String,
    /// nextUpdate, Unix seconds, when present.
    pub next_update: Option<i64>,
}

impl Crl {
    /// Parses one DER CRL.
    pub fn from_der(der: &CertificateRevocationListDer<'_>) -> Result<Crl, String> {
        let list = OwnedCertRevocationList::from_der(der.as_ref())
            .map_err(|error| format!("not a usable CRL: {error}"))?;
        let parsed = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der.as_ref())
            .map_err(|error| format!("not a valid CRL: {error}"))?;
        Ok(Crl {
            der: CertificateRevocationListDer::from(der.as_ref().to_vec()),
            list,
            issuer: name_text(&parsed.tbs_cert_list.issuer),
            next_update: parsed.tbs_cert_list.next_update.map(unix),
        })
    }
}

/// RFC 4514 text of a name; `(empty)` for an empty one.
pub fn name_text(name: &Name) -> String {
    let text = name.to_string();
    if text.is_empty() {
        "(empty name)".to_owned()
    } else {
        text
    }
}

// Times as `status` prints them, so the two commands read alike.
pub(crate) use crate::status::inspect::{human, rfc3339, unix};

/// How a chain relates to the trust anchors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainFinding {
    /// It verifies: leaf, `intermediates` sent, up to `root`.
    Verified {
        /// How many intermediates were used.
        intermediates: usize,
        /// The root reached.
        root: String,
    },
    /// No certificate at all.
    Empty,
    /// The leaf's issuer was not sent and is not a root of ours.
    MissingIntermediate {
        /// The leaf's issuer, the certificate that should have been sent.
        issuer: String,
        /// How many certificates were sent (leaf included).
        sent: usize,
    },
    /// The chain climbs to a CA our roots do not contain.
    UnknownCa {
        /// The top certificate of the chain as sent.
        top: String,
        /// Its issuer: the CA that would have to be in the CA file.
        issuer: String,
        /// Our roots, to name what we do trust.
        trusted: Vec<String>,
    },
    /// A root of ours has the issuer's name but not its key.
    WrongCaKey {
        /// The name shared by the issuer and our root.
        issuer: String,
    },
    /// Any other defect, with webpki's word for it.
    Invalid(String),
}

/// Accepts every extended key usage: [`chain`] checks the path only.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _usages: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

fn anchors(roots: &[Cert]) -> Vec<rustls::pki_types::TrustAnchor<'_>> {
    // A CA file entry webpki cannot use as an anchor simply trusts nothing;
    // the chain check then says which root is missing.
    roots
        .iter()
        .filter_map(|root| webpki::anchor_from_trusted_cert(&root.der).ok())
        .collect()
}

fn verify_path(
    chain: &[Cert],
    roots: &[Cert],
    at: UnixTime,
    usage: impl webpki::ExtendedKeyUsageValidator,
    crls: Option<&[&CertRevocationList<'_>]>,
) -> Result<usize, webpki::Error> {
    let Some(leaf) = chain.first() else {
        return Err(webpki::Error::BadDer);
    };
    let end_entity = EndEntityCert::try_from(&leaf.der)?;
    let intermediates: Vec<CertificateDer<'_>> =
        chain[1..].iter().map(|cert| cert.der.clone()).collect();
    let anchors = anchors(roots);
    let revocation = match crls {
        Some(crls) => match RevocationOptionsBuilder::new(crls) {
            Ok(builder) => Some(
                builder
                    .with_depth(RevocationCheckDepth::Chain)
                    // Issuers without a CRL in the file are reported by
                    // `revocation` itself; stale CRLs too (as a warning).
                    .with_status_policy(UnknownStatusPolicy::Allow)
                    .with_expiration_policy(ExpirationPolicy::Ignore)
                    .build(),
            ),
            Err(_) => None,
        },
        None => None,
    };
    let path = end_entity.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        at,
        usage,
        revocation,
        None,
    )?;
    Ok(path.intermediate_certificates().count())
}

/// The time to check a chain at: `now`, moved inside the leaf's validity,
/// so expiry is the dates layer's finding, not the chain's.
pub fn chain_time(chain: &[Cert], now: OffsetDateTime) -> UnixTime {
    match chain.first() {
        Some(leaf) => time_within_validity(&leaf.x509, now),
        None => UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now.unix_timestamp()).unwrap_or(0),
        )),
    }
}

/// Does `chain` (leaf first, then what was sent with it) reach `roots`?
pub fn chain(chain: &[Cert], roots: &[Cert], at: UnixTime) -> ChainFinding {
    let Some(leaf) = chain.first() else {
        return ChainFinding::Empty;
    };
    match verify_path(chain, roots, at, AnyUsage, None) {
        Ok(intermediates) => {
            let top = chain
                .get(intermediates)
                .map_or_else(|| leaf.issuer(), Cert::issuer);
            ChainFinding::Verified {
                intermediates,
                root: top,
            }
        }
        Err(webpki::Error::UnknownIssuer) => unknown_issuer(leaf, chain, roots),
        Err(webpki::Error::InvalidSignatureForPublicKey) => ChainFinding::WrongCaKey {
            issuer: top_of(leaf, chain).issuer(),
        },
        Err(webpki::Error::CaUsedAsEndEntity) => ChainFinding::Invalid(
            "the leaf is a CA certificate, not an end-entity certificate".to_owned(),
        ),
        Err(other) => ChainFinding::Invalid(format!("{other:?}")),
    }
}

/// The certificate the chain climbs to: from `leaf` (the first of
/// `chain`), each step is a sent certificate whose subject is the current
/// one's issuer, each used once (so a loop of certificates ends).
fn top_of<'a>(leaf: &'a Cert, chain: &'a [Cert]) -> &'a Cert {
    let mut current = leaf;
    let mut used: Vec<bool> = chain.iter().map(|cert| std::ptr::eq(cert, leaf)).collect();
    loop {
        if current.self_issued() {
            return current;
        }
        let issuer = current.issuer_der();
        let next = chain.iter().enumerate().find(|(index, cert)| {
            !used[*index] && issuer.is_some() && cert.subject_der() == issuer
        });
        match next {
            Some((index, cert)) => {
                used[index] = true;
                current = cert;
            }
            None => return current,
        }
    }
}

fn unknown_issuer(leaf: &Cert, chain: &[Cert], roots: &[Cert]) -> ChainFinding {
    let top = top_of(leaf, chain);
    let issuer = top.issuer_der();
    if issuer.is_some() && roots.iter().any(|root| root.subject_der() == issuer) {
        // The name is trusted, the signature is not: another CA's key.
        return ChainFinding::WrongCaKey {
            issuer: top.issuer(),
        };
    }
    let trusted = roots.iter().map(Cert::subject).collect();
    if std::ptr::eq(top, leaf) && !top.self_issued() {
        return ChainFinding::MissingIntermediate {
            issuer: top.issuer(),
            sent: chain.len(),
        };
    }
    ChainFinding::UnknownCa {
        top: top.subject(),
        issuer: top.issuer(),
        trusted,
    }
}

/// A certificate's validity against the clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatesFinding {
    /// The leaf (and every certificate sent with it) is valid now.
    Valid {
        /// The leaf's notBefore.
        not_before: i64,
        /// The leaf's notAfter.
        not_after: i64,
        /// Seconds until the leaf expires.
        left: i64,
    },
    /// `subject` expired `ago` seconds ago.
    Expired {
        /// Which certificate.
        subject: String,
        /// The leaf (true) or a CA sent with it.
        leaf: bool,
        /// Seconds since notAfter.
        ago: i64,
        /// Its notAfter.
        not_after: i64,
    },
    /// `subject` becomes valid in `ahead` seconds.
    NotYetValid {
        /// Which certificate.
        subject: String,
        /// The leaf (true) or a CA sent with it.
        leaf: bool,
        /// Seconds until notBefore.
        ahead: i64,
        /// Its notBefore.
        not_before: i64,
    },
}

/// Validity of every certificate in `chain` at `now` (Unix seconds), the
/// leaf first.
pub fn dates(chain: &[Cert], now: i64) -> Option<DatesFinding> {
    let leaf = chain.first()?;
    for (index, cert) in chain.iter().enumerate() {
        let (not_before, not_after) = cert.validity();
        if now > not_after {
            return Some(DatesFinding::Expired {
                subject: cert.subject(),
                leaf: index == 0,
                ago: now - not_after,
                not_after,
            });
        }
        if now < not_before {
            return Some(DatesFinding::NotYetValid {
                subject: cert.subject(),
                leaf: index == 0,
                ahead: not_before - now,
                not_before,
            });
        }
    }
    let (not_before, not_after) = leaf.validity();
    Some(DatesFinding::Valid {
        not_before,
        not_after,
        left: not_after - now,
    })
}

/// The subjectAltNames of a certificate, `dns: a, b; ip: c; uri: d`.
pub fn san_text(cert: &Cert) -> String {
    let names = match cert
        .x509
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
    {
        Ok(Some((_, names))) => names.0,
        Ok(None) => return "no subjectAltName".to_owned(),
        Err(error) => return format!("a subjectAltName that does not parse ({error})"),
    };
    let parts = crate::status::inspect::san_parts(&names);
    if parts.is_empty() {
        "an empty subjectAltName".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Is `leaf` valid for `name` (DNS name or IP address, as TLS checks it)?
pub fn name_matches(leaf: &Cert, name: &ServerName<'_>) -> bool {
    EndEntityCert::try_from(&leaf.der)
        .and_then(|end_entity| end_entity.verify_is_valid_for_subject_name(name))
        .is_ok()
}

/// Which side of TLS a certificate must be able to play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A TLS client: clientAuth.
    Client,
    /// A TLS server: serverAuth.
    Server,
}

/// The usages a leaf declares, as text (`clientAuth, serverAuth`).
pub fn eku_text(leaf: &Cert) -> String {
    match leaf
        .x509
        .tbs_certificate()
        .get_extension::<ExtendedKeyUsage>()
    {
        Ok(None) => "no extendedKeyUsage (any usage)".to_owned(),
        Ok(Some((_, usages))) => usages
            .0
            .iter()
            .map(|oid| match *oid {
                CLIENT_AUTH => "clientAuth".to_owned(),
                SERVER_AUTH => "serverAuth".to_owned(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(error) => format!("an extendedKeyUsage that does not parse ({error})"),
    }
}

/// May the chain be used for `purpose`? With a verified chain the verifier
/// a peer runs answers (it also checks the CAs' usages); otherwise what
/// the leaf declares (no extension means any usage).
pub fn eku_allows(
    chain: &[Cert],
    roots: &[Cert],
    at: UnixTime,
    chain_verified: bool,
    purpose: Purpose,
) -> bool {
    if chain_verified {
        let usage = match purpose {
            Purpose::Client => KeyUsage::client_auth(),
            Purpose::Server => KeyUsage::server_auth(),
        };
        return verify_path(chain, roots, at, usage, None).is_ok();
    }
    let Some(leaf) = chain.first() else {
        return false;
    };
    let wanted = match purpose {
        Purpose::Client => CLIENT_AUTH,
        Purpose::Server => SERVER_AUTH,
    };
    match leaf
        .x509
        .tbs_certificate()
        .get_extension::<ExtendedKeyUsage>()
    {
        Ok(None) => true,
        Ok(Some((_, usages))) => usages.0.contains(&wanted),
        Err(_) => false,
    }
}

/// A chain against the CRLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevocationFinding {
    /// No CRL was given.
    NoCrls,
    /// The chain does not verify, so a CRL cannot be matched to its issuer.
    ChainUnverified,
    /// Not revoked according to the CRLs of these issuers.
    NotRevoked {
        /// Issuers whose CRL covered the leaf.
        checked: Vec<String>,
        /// Why the answer may be out of date (stale CRL, no CRL for an issuer).
        doubts: Vec<String>,
    },
    /// `subject` (serial `serial`) is listed.
    Revoked {
        /// The leaf (true) or a CA of the chain.
        leaf: bool,
        /// Which certificate.
        subject: String,
        /// Its serial, hex.
        serial: String,
        /// When the CA revoked it (unknown when webpki found the
        /// revocation but the entry could not be read back).
        revoked_at: Option<i64>,
        /// The CRL's reason, when given.
        reason: Option<String>,
    },
    /// A CRL of the chain's issuer is unusable (a bad signature, say).
    Unusable(String),
}

/// Checks `chain` (verified against `roots`) against `crls` at `now`.
pub fn revocation(
    chain: &[Cert],
    roots: &[Cert],
    crls: &[Crl],
    now: OffsetDateTime,
) -> RevocationFinding {
    if crls.is_empty() {
        return RevocationFinding::NoCrls;
    }
    let Some(leaf) = chain.first() else {
        return RevocationFinding::ChainUnverified;
    };
    let at = chain_time(chain, now);
    if verify_path(chain, roots, at, AnyUsage, None).is_err() {
        return RevocationFinding::ChainUnverified;
    }
    let lists: Vec<CertRevocationList<'_>> = crls
        .iter()
        .map(|crl| CertRevocationList::Owned(crl.list.clone()))
        .collect();
    let references: Vec<&CertRevocationList<'_>> = lists.iter().collect();
    match verify_path(chain, roots, at, AnyUsage, Some(&references)) {
        Ok(_) => {}
        Err(webpki::Error::CertRevoked) => {
            if let Some(found) = revoked_entry(chain, &lists) {
                return found;
            }
            return RevocationFinding::Revoked {
                leaf: true,
                subject: leaf.subject(),
                serial: leaf.serial(),
                revoked_at: None,
                reason: None,
            };
        }
        Err(other) => return RevocationFinding::Unusable(format!("{other:?}")),
    }
    let leaf_issuer = EndEntityCert::try_from(&leaf.der)
        .map(|end_entity| end_entity.issuer().to_vec())
        .unwrap_or_default();
    let mut checked = Vec::new();
    let mut doubts = Vec::new();
    for (crl, list) in crls.iter().zip(&lists) {
        if list.issuer() == leaf_issuer.as_slice() {
            checked.push(crl.issuer.clone());
            if let Some(next_update) = crl.next_update {
                if now.unix_timestamp() > next_update {
                    doubts.push(format!(
                        "the CRL of {} is stale: its nextUpdate was {} ago ({})",
                        crl.issuer,
                        human(now.unix_timestamp() - next_update),
                        rfc3339(next_update)
                    ));
                }
            }
        }
    }
    if checked.is_empty() {
        doubts.push(format!(
            "no CRL of {} among the {} given: its revocation status is unknown",
            leaf.issuer(),
            crls.len()
        ));
    }
    RevocationFinding::NotRevoked { checked, doubts }
}

/// Which certificate of `chain` the CRLs list, and the entry's details.
fn revoked_entry(chain: &[Cert], lists: &[CertRevocationList<'_>]) -> Option<RevocationFinding> {
    for (index, cert) in chain.iter().enumerate() {
        let Ok(parsed) = webpki::EndEntityCert::try_from(&cert.der) else {
            continue;
        };
        for list in lists {
            if list.issuer() != parsed.issuer() {
                continue;
            }
            if let Ok(Some(entry)) = list.find_serial(parsed.serial()) {
                return Some(RevocationFinding::Revoked {
                    leaf: index == 0,
                    subject: cert.subject(),
                    serial: cert.serial(),
                    revoked_at: i64::try_from(entry.revocation_date.as_secs()).ok(),
                    reason: entry.reason_code.map(reason_text),
                });
            }
        }
    }
    None
}

fn reason_text(reason: RevocationReason) -> String {
    match reason {
        RevocationReason::Unspecified => "unspecified",
        RevocationReason::KeyCompromise => "keyCompromise",
        RevocationReason::CaCompromise => "cACompromise",
        RevocationReason::AffiliationChanged => "affiliationChanged",
        RevocationReason::Superseded => "superseded",
        RevocationReason::CessationOfOperation => "cessationOfOperation",
        RevocationReason::CertificateHold => "certificateHold",
        RevocationReason::RemoveFromCrl => "removeFromCRL",
        RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        RevocationReason::AaCompromise => "aACompromise",
    }
    .to_owned()
}

/// The CAs a server named in its CertificateRequest, and whether ours is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedCas {
    /// The names, RFC 4514 text (undecodable ones as hex).
    pub names: Vec<String>,
    /// `None` when the server named no CA (it accepts any, as far as the
    /// request says); otherwise whether our chain or roots include one.
    pub ours_included: Option<bool>,
}

/// Decodes the certificate_authorities a server sent and matches them
/// against every CA name our chain passes through.
pub fn accepted_cas(hints: &[Vec<u8>], chain: &[Cert]) -> AcceptedCas {
    let names = hints
        .iter()
        .map(|hint| {
            Name::from_der(hint).map_or_else(
                |_| format!("<{}>", hex::encode(hint)),
                |name| name_text(&name),
            )
        })
        .collect();
    if hints.is_empty() {
        return AcceptedCas {
            names,
            ours_included: None,
        };
    }
    // The CAs our certificate passes through: every issuer in our chain
    // (the last one is the root it reaches) and every CA we send. Our CA
    // file's other roots do not count: they vouch for servers, not for us.
    let ours: Vec<Vec<u8>> = chain
        .iter()
        .filter_map(Cert::issuer_der)
        .chain(chain.iter().skip(1).filter_map(Cert::subject_der))
        .collect();
    AcceptedCas {
        names,
        ours_included: Some(hints.iter().any(|hint| ours.contains(hint))),
    }
}

#[cfg(test)]
pub mod testing {
    //! A small rcgen PKI for the unit tests of every doctor module.

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams,
        ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, RevokedCertParams,
        SerialNumber,
    };
    use time::Duration;

    use super::*;

    /// A CA that can issue leaves and CRLs.
    pub struct Ca {
        pub cert: Cert,
        pub issuer: Issuer<'static, KeyPair>,
    }

    pub fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.not_before = now() - Duration::days(30);
        params.not_after = now() + Duration::days(365);
        params
    }

    fn der_cert(cert: &rcgen::Certificate) -> Cert {
        Cert::from_der(cert.der().clone()).unwrap()
    }

    /// A self-signed root.
    pub fn root(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert: der_cert(&cert),
            issuer: Issuer::new(params, key),
        }
    }

    impl Ca {
        /// An intermediate under this CA.
        pub fn intermediate(&self, name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let params = ca_params(name);
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Ca {
                cert: der_cert(&cert),
                issuer: Issuer::new(params, key),
            }
        }

        /// A leaf for `dns` with `eku`, changed by `edit`; its key's PEM.
        pub fn leaf(
            &self,
            dns: &str,
            eku: &[ExtendedKeyUsagePurpose],
            edit: impl FnOnce(&mut CertificateParams),
        ) -> (Cert, String) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![dns.to_owned()]).unwrap();
            params.extended_key_usages = eku.to_vec();
            params.not_before = now() - Duration::hours(1);
            params.not_after = now() + Duration::hours(23);
            params.serial_number = Some(SerialNumber::from_slice(&[0x11, 0x22, 0x33]));
            edit(&mut params);
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (der_cert(&cert), key.serialize_pem())
        }

        /// A CRL listing `serials`.
        pub fn crl(&self, serials: &[&[u8]], next_update: OffsetDateTime) -> Crl {
            let params = CertificateRevocationListParams {
                this_update: now() - Duration::hours(1),
                next_update,
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: serials
                    .iter()
                    .map(|serial| RevokedCertParams {
                        serial_number: SerialNumber::from_slice(serial),
                        revocation_time: now() - Duration::minutes(30),
                        reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            };
            let crl = params.signed_by(&self.issuer).unwrap();
            Crl::from_der(crl.der()).unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    use time::Duration;

    use super::testing::*;
    use super::*;

    #[test]
    fn ok_full_chain_verifies() {
        let root = root("r");
        let intermediate = root.intermediate("i");
        let (leaf, _) = intermediate.leaf("a.test", &[ServerAuth], |_| {});
        let chain = [leaf, intermediate.cert.clone()];
        let finding = super::chain(
            &chain,
            std::slice::from_ref(&root.cert),
            chain_time(&chain, now()),
        );
        assert_eq!(
            finding,
            ChainFinding::Verified {
                intermediates: 1,
                root: "CN=r".into()
            }
        );
    }

    #[test]
    fn fail_leaf_without_its_intermediate_is_a_missing_link() {
        let root = root("r");
        let intermediate = root.intermediate("i");
        let (leaf, _) = intermediate.leaf("a.test", &[ServerAuth], |_| {});
        let chain = [leaf];
        let finding = super::chain(
            &chain,
            std::slice::from_ref(&root.cert),
            chain_time(&chain, now()),
        );
        assert_eq!(
            finding,
            ChainFinding::MissingIntermediate {
                issuer: "CN=i".into(),
                sent: 1
            }
        );
    }

    #[test]
    fn fail_chain_of_another_pki_names_the_unknown_ca() {
        let ours = root("ours");
        let theirs = root("theirs");
        let intermediate = theirs.intermediate("their issuing");
        let (leaf, _) = intermediate.leaf("a.test", &[ServerAuth], |_| {});
        let chain = [leaf, intermediate.cert.clone()];
        let finding = super::chain(
            &chain,
            std::slice::from_ref(&ours.cert),
            chain_time(&chain, now()),
        );
        assert_eq!(
            finding,
            ChainFinding::UnknownCa {
                top: "CN=their issuing".into(),
                issuer: "CN=theirs".into(),
                trusted: vec!["CN=ours".into()],
            }
        );
    }

    #[test]
    fn fail_same_name_other_key_is_a_wrong_ca_key() {
        let ours = root("r");
        let impostor = root("r");
        let (leaf, _) = impostor.leaf("a.test", &[ServerAuth], |_| {});
        let chain = [leaf];
        let finding = super::chain(
            &chain,
            std::slice::from_ref(&ours.cert),
            chain_time(&chain, now()),
        );
        assert_eq!(
            finding,
            ChainFinding::WrongCaKey {
                issuer: "CN=r".into()
            }
        );
    }

    #[test]
    fn fail_dates_say_by_how_much() {
        let root = root("r");
        let (expired, _) = root.leaf("a.test", &[ServerAuth], |params| {
            params.not_before = now() - Duration::days(2);
            params.not_after = now() - Duration::hours(3);
        });
        let at = now().unix_timestamp();
        match dates(&[expired], at) {
            Some(DatesFinding::Expired { leaf, ago, .. }) => {
                assert!(leaf);
                assert!((10_790..=10_810).contains(&ago), "{ago}");
            }
            other => panic!("{other:?}"),
        }
        let (future, _) = root.leaf("a.test", &[ServerAuth], |params| {
            params.not_before = now() + Duration::seconds(600);
        });
        assert!(matches!(
            dates(&[future], at),
            Some(DatesFinding::NotYetValid {
                leaf: true,
                ahead: 590..=610,
                ..
            })
        ));
    }

    #[test]
    fn ok_names_and_usages() {
        let root = root("r");
        let (leaf, _) = root.leaf("a.test", &[ServerAuth], |_| {});
        let asked = ServerName::try_from("a.test").unwrap();
        assert!(name_matches(&leaf, &asked));
        assert!(!name_matches(
            &leaf,
            &ServerName::try_from("b.test").unwrap()
        ));
        assert_eq!(san_text(&leaf), "dns: a.test");
        assert_eq!(eku_text(&leaf), "serverAuth");
        let chain = [leaf];
        let roots = [root.cert.clone()];
        let at = chain_time(&chain, now());
        assert!(eku_allows(&chain, &roots, at, true, Purpose::Server));
        assert!(!eku_allows(&chain, &roots, at, true, Purpose::Client));
        assert!(!eku_allows(&chain, &roots, at, false, Purpose::Client));
    }

    #[test]
    fn fail_revoked_leaf_is_found_with_its_reason() {
        let root = root("r");
        let (leaf, _) = root.leaf("a.test", &[ClientAuth], |_| {});
        let crl = root.crl(&[&[0x11, 0x22, 0x33]], now() + Duration::days(1));
        let finding = revocation(&[leaf], std::slice::from_ref(&root.cert), &[crl], now());
        match finding {
            RevocationFinding::Revoked {
                leaf,
                serial,
                reason,
                ..
            } => {
                assert!(leaf);
                assert_eq!(serial, "112233");
                assert_eq!(reason.as_deref(), Some("keyCompromise"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn warn_stale_or_missing_crl_is_a_doubt_not_a_revocation() {
        let root = root("r");
        let other = root_named_other();
        let (leaf, _) = root.leaf("a.test", &[ClientAuth], |_| {});
        let stale = root.crl(&[&[0x99]], now() - Duration::minutes(5));
        match revocation(
            std::slice::from_ref(&leaf),
            std::slice::from_ref(&root.cert),
            &[stale],
            now(),
        ) {
            RevocationFinding::NotRevoked { checked, doubts } => {
                assert_eq!(checked, vec!["CN=r".to_owned()]);
                assert!(doubts[0].contains("stale"), "{doubts:?}");
            }
            finding => panic!("{finding:?}"),
        }
        let foreign = other.crl(&[&[0x11, 0x22, 0x33]], now() + Duration::days(1));
        match revocation(
            std::slice::from_ref(&leaf),
            std::slice::from_ref(&root.cert),
            &[foreign],
            now(),
        ) {
            RevocationFinding::NotRevoked { checked, doubts } => {
                assert!(checked.is_empty());
                assert!(doubts[0].contains("no CRL of CN=r"), "{doubts:?}");
            }
            finding => panic!("{finding:?}"),
        }
        assert_eq!(
            revocation(&[leaf], std::slice::from_ref(&root.cert), &[], now()),
            RevocationFinding::NoCrls
        );
    }

    fn root_named_other() -> Ca {
        root("other")
    }

    #[test]
    fn ok_accepted_cas_match_any_ca_of_our_chain() {
        let root = root("r");
        let intermediate = root.intermediate("i");
        let other = root_named_other();
        let (leaf, _) = intermediate.leaf("a.test", &[ClientAuth], |_| {});
        let chain = [leaf, intermediate.cert.clone()];
        let subject = |ca: &Ca| ca.cert.x509.tbs_certificate().subject().to_der().unwrap();

        let by_root = accepted_cas(&[subject(&root)], &chain);
        assert_eq!(by_root.names, vec!["CN=r".to_owned()]);
        assert_eq!(by_root.ours_included, Some(true));
        let by_intermediate = accepted_cas(&[subject(&intermediate)], &chain);
        assert_eq!(by_intermediate.ours_included, Some(true));
        let foreign = accepted_cas(&[subject(&other)], &chain);
        assert_eq!(foreign.ours_included, Some(false));
        assert_eq!(accepted_cas(&[], &chain).ours_included, None);
    }
}
