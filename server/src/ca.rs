//! CA lifecycle: create the root and issuing keys on the token and their
//! certificates at `init`, or an issuing key and its CSR for an external
//! root, install an externally signed chain, and load the CA at start.
//!
//! Invariants: `init` never destroys anything. If the database already holds
//! a CA, it stops; if a key label already exists on the token, it stops
//! (the operator decides, not us), unless the key is one this database
//! reserved for an `init` that was interrupted: every key is reserved
//! (label and a random `CKA_ID`, durably) before it is generated, so a rerun
//! recognises its own keys and finishes the job. Private keys are generated
//! on the token and used only through [`CaSigner`].

use std::str::FromStr as _;
use std::sync::Arc;

use certmint::wire::KeyType;
use const_oid::db::rfc5280::{ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH};
use der::asn1::BitString;
use der::{Decode as _, DecodePem as _, Encode as _};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use time::OffsetDateTime;
use x509_cert::certificate::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, Version as RequestVersion};

use crate::error::ServiceError;
use crate::hsm::{CaSigner, Hsm, KeyProtection};
use crate::issuance::profile::{self, CaTemplate};
use crate::issuance::{algorithms, certificate_not_after, pem, random_serial, IssuingCa};
use crate::store::{CaState, Store};

/// Why a CA could not be created, imported or loaded. Every message tells
/// the operator what to do next; none carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// `ca.key_type` names a type CA keys may not have.
    #[error("ca.key_type: {reason}")]
    KeyTypeNotForCa {
        /// Which type, and the allowed ones.
        reason: String,
    },
    /// `tokens.signing_key = "hsm"` on a token without Ed25519.
    #[error("the token cannot make Ed25519 keys for signing tokens; set tokens.signing_key = \"file\" in the config and run init again")]
    NoEd25519ForTokens,
    /// The token cannot make keys of the configured type.
    #[error("the token cannot make {key_type} keys; choose another ca.key_type")]
    KeyTypeUnsupported {
        /// The configured type.
        key_type: KeyType,
    },
    /// An interrupted `init` generated the key as another type.
    #[error("an earlier init that did not finish generated key {label:?} as a {key_type} key; set ca.key_type = \"{key_type}\" in the config to finish it")]
    ReservedForOtherKeyType {
        /// The key label.
        label: String,
        /// The type it was generated as.
        key_type: KeyType,
    },
    /// `ca import-chain` without a pending external-root CA.
    #[error("no pending CA: run `init --external-root` first")]
    NoPendingCa,
    /// The imported chain is not PEM certificates.
    #[error("chain does not parse: {reason}")]
    ChainUnparsable {
        /// The parser's words.
        reason: String,
    },
    /// More certificates than a verifier accepts.
    #[error("the chain has {length} certificates; at most {MAX_CHAIN_LENGTH} are accepted")]
    ChainTooLong {
        /// How many were given.
        length: usize,
    },
    /// Fewer than the issuing certificate and its root.
    #[error("the chain needs the issuing certificate and its root")]
    ChainTooShort,
    /// The first certificate is not for the token's issuing key.
    #[error("the first certificate does not carry this CA's issuing key")]
    ForeignIssuingKey,
    /// The same certificate appears twice.
    #[error("the chain holds {subject} twice")]
    DuplicateInChain {
        /// Its subject.
        subject: String,
    },
    /// A root in the middle of the chain.
    #[error("{subject} is self-signed, so it can only be the last certificate (the root)")]
    SelfSignedIntermediate {
        /// Its subject.
        subject: String,
    },
    /// A certificate relying parties would not accept as a CA here.
    #[error("{subject} cannot be a CA certificate in this chain: {why}")]
    NotUsableAsCa {
        /// Its subject.
        subject: String,
        /// Which check it fails.
        why: String,
    },
    /// A certificate is followed by one that is not its issuer.
    #[error("{subject} names its issuer {issuer}, but the next certificate is {next}")]
    IssuerNameMismatch {
        /// The certificate.
        subject: String,
        /// The issuer it names.
        issuer: String,
        /// The certificate that follows it.
        next: String,
    },
    /// A signature in the chain does not verify.
    #[error("{subject} is not signed by {issuer}: {reason}")]
    NotSignedBy {
        /// The certificate.
        subject: String,
        /// The certificate that should have signed it.
        issuer: String,
        /// Why verification failed.
        reason: String,
    },
    /// `serve` before `init`.
    #[error("no CA in the database: run `certmint-server init`")]
    NotInitialized,
    /// `serve` before `ca import-chain` in external-root mode.
    #[error("the CA awaits its externally signed chain: run `certmint-server ca import-chain`")]
    AwaitingChain,
    /// The token's key and the recorded certificate disagree.
    #[error("the token's issuing key does not match the issuing certificate in the database")]
    IssuingKeyMismatch,
    /// The issuing key could be read out of the token, or used without the PIN.
    #[error("the issuing key {label:?} can leave the token or sign without a login (CKA_PRIVATE={}, CKA_SENSITIVE={}, CKA_EXTRACTABLE={}); certmint signs only with keys that stay on the token and need the PIN", protection.private, protection.sensitive, protection.extractable)]
    KeyCanLeaveToken {
        /// The key label.
        label: String,
        /// What the token reports.
        protection: KeyProtection,
    },
    /// A CA lifetime past the end of the calendar.
    #[error("CA lifetime of {seconds}s is out of range")]
    LifetimeOutOfRange {
        /// The configured lifetime.
        seconds: i64,
    },
}

/// What `init` should create.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Name prefix: subjects become `CN=<name> Root CA` / `CN=<name> Issuing CA`.
    pub name: String,
    /// Key type of both keys.
    pub key_type: KeyType,
    /// Root key label.
    pub root_key_label: String,
    /// Issuing key label.
    pub issuing_key_label: String,
    /// Root lifetime in seconds.
    pub root_validity_seconds: i64,
    /// Issuing lifetime in seconds.
    pub issuing_validity_seconds: i64,
}

/// What `init` did.
#[derive(Debug)]
pub enum InitOutcome {
    /// Root and issuing CA created.
    Created {
        /// `sha256:<hex>` of the root certificate.
        root_fingerprint: String,
    },
    /// An issuing key and its CSR: have it signed, then `ca import-chain`.
    AwaitingExternalRoot {
        /// The CSR, PEM.
        csr_pem: String,
    },
    /// A CA already exists; nothing was touched.
    AlreadyInitialized {
        /// Fingerprint of the existing root, when installed.
        root_fingerprint: Option<String>,
    },
}

/// Key types a CA key may have. `rsa-2048` is left out on purpose: CA keys
/// live for years (3650 days for the root by default), past 2030, when
/// NIST SP 800-57 retires 112-bit strength. Leaf policies may still allow it.
pub const CA_KEY_TYPES: [KeyType; 5] = [
    KeyType::EcP256,
    KeyType::EcP384,
    KeyType::Rsa3072,
    KeyType::Rsa4096,
    KeyType::Ed25519,
];

/// `--key-type` / `ca.key_type`: one of [`CA_KEY_TYPES`].
pub fn parse_ca_key_type(text: &str) -> Result<KeyType, String> {
    KeyType::parse(text)
        .filter(|key_type| CA_KEY_TYPES.contains(key_type))
        .ok_or_else(|| {
            let allowed: Vec<&str> = CA_KEY_TYPES.iter().map(|k| k.as_str()).collect();
            format!(
                "{text:?} is not a CA key type; expected one of {}",
                allowed.join(", ")
            )
        })
}

fn require_ca_key_type(key_type: KeyType) -> Result<(), ServiceError> {
    if CA_KEY_TYPES.contains(&key_type) {
        return Ok(());
    }
    let reason = parse_ca_key_type(key_type.as_str())
        .err()
        .unwrap_or_default();
    Err(CaError::KeyTypeNotForCa { reason }.into())
}

/// Creates a root and an issuing CA on the token.
pub fn initialize(
    hsm: &Hsm,
    store: &Store,
    options: &CaOptions,
    now: OffsetDateTime,
) -> Result<InitOutcome, ServiceError> {
    if let Some(existing) = store.ca_state()? {
        return Ok(InitOutcome::AlreadyInitialized {
            root_fingerprint: existing.root().map(fingerprint),
        });
    }
    require_ca_key_type(options.key_type)?;
    let root_key = reserved_key(hsm, store, &options.root_key_label, options.key_type, now)?;
    let issuing_key = issuing_key(hsm, store, options, now)?;
    let root_subject = subject(&format!("{} Root CA", options.name))?;
    let root_spki = spki_of(root_key.as_ref())?;
    let root = sign_ca(
        &CaTemplate {
            serial: random_serial()?,
            subject: root_subject.clone(),
            issuer: root_subject.clone(),
            subject_public_key_info: root_spki.clone(),
            issuer_public_key_info: root_spki.clone(),
            path_length: 1,
            not_before: now - time::Duration::minutes(5),
            not_after: after(now, options.root_validity_seconds)?,
        },
        root_key.as_ref(),
    )?;
    let issuing = sign_ca(
        &CaTemplate {
            serial: random_serial()?,
            subject: subject(&format!("{} Issuing CA", options.name))?,
            issuer: root_subject,
            subject_public_key_info: spki_of(issuing_key.as_ref())?,
            issuer_public_key_info: root_spki,
            path_length: 0,
            not_before: now - time::Duration::minutes(5),
            not_after: after(
                now,
                options
                    .issuing_validity_seconds
                    .min(options.root_validity_seconds),
            )?,
        },
        root_key.as_ref(),
    )?;
    store.save_ca_state(
        &CaState {
            root_der: root.clone(),
            issuing_der: Some(issuing),
            intermediates_der: Vec::new(),
            root_key_label: Some(options.root_key_label.clone()),
            issuing_key_label: options.issuing_key_label.clone(),
            issuing_key_type: options.key_type,
            pending_csr_der: None,
        },
        "system:init",
        now,
    )?;
    Ok(InitOutcome::Created {
        root_fingerprint: fingerprint(&root),
    })
}

/// Creates only the issuing key and returns its CSR, for an external root.
pub fn initialize_for_external_root(
    hsm: &Hsm,
    store: &Store,
    options: &CaOptions,
    now: OffsetDateTime,
) -> Result<InitOutcome, ServiceError> {
    if let Some(existing) = store.ca_state()? {
        if let (None, Some(csr)) = (existing.root(), &existing.pending_csr_der) {
            return Ok(InitOutcome::AwaitingExternalRoot {
                csr_pem: pem("CERTIFICATE REQUEST", csr)?,
            });
        }
        return Ok(InitOutcome::AlreadyInitialized {
            root_fingerprint: existing.root().map(fingerprint),
        });
    }
    require_ca_key_type(options.key_type)?;
    let issuing_key = issuing_key(hsm, store, options, now)?;
    let info = CertReqInfo {
        version: RequestVersion::V1,
        subject: subject(&format!("{} Issuing CA", options.name))?,
        public_key: spki_of(issuing_key.as_ref())?,
        attributes: Default::default(),
    };
    let info_der = info.to_der().map_err(encoding)?;
    let signature = issuing_key.sign(&info_der)?;
    let request = CertReq {
        info,
        algorithm: AlgorithmIdentifierOwned::from_der(issuing_key.signature_algorithm())
            .map_err(encoding)?,
        signature: BitString::from_bytes(&signature).map_err(encoding)?,
    };
    let csr_der = request.to_der().map_err(encoding)?;
    store.save_ca_state(
        &CaState {
            root_der: Vec::new(),
            issuing_der: None,
            intermediates_der: Vec::new(),
            root_key_label: None,
            issuing_key_label: options.issuing_key_label.clone(),
            issuing_key_type: options.key_type,
            pending_csr_der: Some(csr_der.clone()),
        },
        "system:init",
        now,
    )?;
    Ok(InitOutcome::AwaitingExternalRoot {
        csr_pem: pem("CERTIFICATE REQUEST", &csr_der)?,
    })
}

/// The issuing CA's key, reserved like every CA key.
fn issuing_key(
    hsm: &Hsm,
    store: &Store,
    options: &CaOptions,
    now: OffsetDateTime,
) -> Result<Arc<dyn CaSigner>, ServiceError> {
    reserved_key(
        hsm,
        store,
        &options.issuing_key_label,
        options.key_type,
        now,
    )
}

/// The Ed25519 key labelled `label` that signs bootstrap and admin tokens
/// (`tokens.signing_key = "hsm"`): generated on the token the first time,
/// found again under its reservation on every later `init`. `init` calls
/// [`require_ed25519_for_tokens`] first, before it makes any CA key.
pub fn token_signing_key(
    hsm: &Hsm,
    store: &Store,
    label: &str,
    now: OffsetDateTime,
) -> Result<Arc<dyn CaSigner>, ServiceError> {
    reserved_key(hsm, store, label, KeyType::Ed25519, now)
}

/// Refuses a token that cannot make the Ed25519 token-signing key, with
/// the way out.
pub fn require_ed25519_for_tokens(hsm: &Hsm) -> Result<(), ServiceError> {
    if hsm.supported_key_types()?.contains(&KeyType::Ed25519) {
        return Ok(());
    }
    Err(CaError::NoEd25519ForTokens.into())
}

/// The CA key labelled `label`: the one an earlier, interrupted `init`
/// generated under this database's reservation, or a new one.
///
/// The reservation (label, random `CKA_ID`) is committed before
/// `C_GenerateKeyPair`, so at whatever instant an `init` dies, the next one
/// can tell its own key from anybody else's: same label and `CKA_ID` is
/// ours, same label and another id is not (and generation refuses it).
fn reserved_key(
    hsm: &Hsm,
    store: &Store,
    label: &str,
    key_type: KeyType,
    now: OffsetDateTime,
) -> Result<Arc<dyn CaSigner>, ServiceError> {
    // Asked first, so a type the token cannot make is never reserved.
    if !hsm.supported_key_types()?.contains(&key_type) {
        return Err(CaError::KeyTypeUnsupported { key_type }.into());
    }
    let mut key_id = [0u8; 16];
    crate::random::fill(&mut key_id)?;
    let reservation = store.reserve_ca_key(label, key_type, &key_id, now)?;
    let generated =
        hsm.find_generated_key_pair(label, &reservation.key_id, reservation.key_type)?;
    if let Some(found) = generated {
        if reservation.key_type != key_type {
            return Err(CaError::ReservedForOtherKeyType {
                label: label.to_owned(),
                key_type: reservation.key_type,
            }
            .into());
        }
        // Found on every later `init` (the token-signing key is looked up
        // each time), and after an interrupted one: say only what is known.
        tracing::info!(
            hsm.key_label = label,
            "init: using the key generated earlier under this database's reservation"
        );
        return Ok(found);
    }
    // Nothing was generated under the reservation: it follows the type
    // asked for now (an earlier run may have asked for one that failed).
    if reservation.key_type != key_type {
        store.retype_ca_key_reservation(label, key_type)?;
    }
    Ok(hsm.generate_key_pair(label, key_type, &reservation.key_id)?)
}

/// Most certificates `import-chain` takes: the issuing certificate, up to
/// five intermediate CAs, the root. rustls-webpki refuses paths with more
/// than six CA certificates below the trust anchor (the issuing one
/// included), so a longer chain would fail every handshake.
const MAX_CHAIN_LENGTH: usize = 7;

/// Installs an externally signed chain (PEM: the issuing certificate, then
/// any intermediate CAs, each followed by its issuer, then the root). The
/// issuing certificate must carry the token's issuing key, every link must
/// verify and every CA certificate must allow the path below it. The
/// intermediates are served in `chain.pem` and in every bundle, so clients
/// can build the path to the root they pin.
pub fn import_chain(
    hsm: &Hsm,
    store: &Store,
    chain_pem: &str,
    now: OffsetDateTime,
) -> Result<String, ServiceError> {
    let state = store.ca_state()?.ok_or(CaError::NoPendingCa)?;
    let chain = Certificate::load_pem_chain(chain_pem.as_bytes()).map_err(|error| {
        CaError::ChainUnparsable {
            reason: error.to_string(),
        }
    })?;
    let (issuing, intermediates, root) = match chain.as_slice() {
        [issuing, intermediates @ .., root] if chain.len() <= MAX_CHAIN_LENGTH => {
            (issuing, intermediates, root)
        }
        [_, _, ..] => {
            return Err(CaError::ChainTooLong {
                length: chain.len(),
            }
            .into())
        }
        _ => return Err(CaError::ChainTooShort.into()),
    };
    let signer = hsm.signer(&state.issuing_key_label)?;
    if issuing.tbs_certificate().subject_public_key_info() != &spki_of(signer.as_ref())? {
        return Err(CaError::ForeignIssuingKey.into());
    }
    for (position, certificate) in intermediates.iter().enumerate() {
        let tbs = certificate.tbs_certificate();
        if chain[..=position].contains(certificate) {
            return Err(CaError::DuplicateInChain {
                subject: tbs.subject().to_string(),
            }
            .into());
        }
        // A self-signed certificate ends a path; one in the middle is a
        // root in the wrong place, which clients would not build through.
        if tbs.subject() == tbs.issuer() && verify_issued_by(certificate, certificate).is_ok() {
            return Err(CaError::SelfSignedIntermediate {
                subject: tbs.subject().to_string(),
            }
            .into());
        }
    }
    for (below, certificate) in chain.iter().enumerate() {
        check_ca_certificate(certificate, below, now)?;
    }
    for pair in chain.windows(2) {
        verify_issued_by(&pair[0], &pair[1])?;
    }
    verify_issued_by(root, root)?;
    let root_der = root.to_der().map_err(encoding)?;
    let intermediates_der = intermediates
        .iter()
        .map(|certificate| certificate.to_der().map_err(encoding))
        .collect::<Result<Vec<_>, _>>()?;
    let issuing_der = issuing.to_der().map_err(encoding)?;
    store.complete_ca_import(
        &root_der,
        &intermediates_der,
        &issuing_der,
        "system:import-chain",
        now,
    )?;
    Ok(fingerprint(&root_der))
}

/// What a relying party checks of every CA certificate in the chain, so that
/// a chain which would make every issued certificate fail path validation
/// is refused at import rather than discovered by clients: CA:TRUE, a path
/// length that allows the `below` CA certificates under it (0 for the
/// issuing certificate), keyCertSign when keyUsage is present, and a
/// validity that covers `now`.
fn check_ca_certificate(
    certificate: &Certificate,
    below: usize,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let tbs = certificate.tbs_certificate();
    let refuse = |why: String| {
        ServiceError::from(CaError::NotUsableAsCa {
            subject: tbs.subject().to_string(),
            why,
        })
    };
    let basic = tbs
        .get_extension::<BasicConstraints>()
        .map_err(|error| refuse(format!("basicConstraints does not decode: {error}")))?
        .map(|(_, basic)| basic);
    match basic {
        Some(basic) if basic.ca => {
            if let Some(limit) = basic.path_len_constraint {
                if usize::from(limit) < below {
                    return Err(refuse(format!(
                        "its pathLenConstraint {limit} allows fewer than the {below} CA certificate(s) below it"
                    )));
                }
            }
        }
        _ => return Err(refuse("it is not a CA (basicConstraints CA:TRUE)".into())),
    }
    let key_usage = tbs
        .get_extension::<KeyUsage>()
        .map_err(|error| refuse(format!("keyUsage does not decode: {error}")))?;
    if let Some((_, key_usage)) = key_usage {
        if !key_usage.key_cert_sign() {
            return Err(refuse("its keyUsage lacks keyCertSign".into()));
        }
    }
    // Verifiers (webpki among them) apply a CA certificate's EKU to the
    // whole path below it: certmint issues client certificates and its own
    // server certificate through this chain, so it must name both.
    // anyExtendedKeyUsage is not enough: webpki matches exact purposes.
    let extended_key_usage = tbs
        .get_extension::<ExtendedKeyUsage>()
        .map_err(|error| refuse(format!("extendedKeyUsage does not decode: {error}")))?;
    if let Some((_, ExtendedKeyUsage(purposes))) = extended_key_usage {
        if !(purposes.contains(&ID_KP_SERVER_AUTH) && purposes.contains(&ID_KP_CLIENT_AUTH)) {
            return Err(refuse(
                "its extendedKeyUsage does not name both serverAuth and clientAuth, which the certificates below it need".into(),
            ));
        }
    }
    let not_before = OffsetDateTime::from(tbs.validity().not_before.to_system_time());
    let not_after = certificate_not_after(certificate)?;
    if now < not_before || now > not_after {
        return Err(refuse(format!(
            "it is valid from {not_before} to {not_after}, not now"
        )));
    }
    Ok(())
}

fn verify_issued_by(child: &Certificate, parent: &Certificate) -> Result<(), ServiceError> {
    if child.tbs_certificate().issuer() != parent.tbs_certificate().subject() {
        return Err(CaError::IssuerNameMismatch {
            subject: child.tbs_certificate().subject().to_string(),
            issuer: child.tbs_certificate().issuer().to_string(),
            next: parent.tbs_certificate().subject().to_string(),
        }
        .into());
    }
    let tbs = child.tbs_certificate().to_der().map_err(encoding)?;
    let signature = child
        .signature()
        .as_bytes()
        .ok_or_else(|| encoding("signature bits"))?;
    algorithms::verify_signature(
        parent.tbs_certificate().subject_public_key_info(),
        child.signature_algorithm(),
        &tbs,
        signature,
    )
    .map_err(|error| {
        CaError::NotSignedBy {
            subject: child.tbs_certificate().subject().to_string(),
            issuer: parent.tbs_certificate().subject().to_string(),
            reason: error.to_string(),
        }
        .into()
    })
}

/// The loaded CA: issuing signer, issuing certificate, and the root.
pub struct LoadedCa {
    /// For issuance.
    pub issuing: IssuingCa,
    /// Root certificate DER.
    pub root_der: Vec<u8>,
    /// CA certificates between the issuing certificate and the root, DER,
    /// the issuing certificate's issuer first (empty for a CA `init` made).
    pub intermediates_der: Vec<Vec<u8>>,
    /// Issuing key type.
    pub key_type: KeyType,
}

/// Loads the CA from the store and the token.
pub fn load(hsm: &Hsm, store: &Store) -> Result<LoadedCa, ServiceError> {
    let state = store.ca_state()?.ok_or(CaError::NotInitialized)?;
    let (Some(root_der), Some(issuing_der)) = (state.root().map(<[u8]>::to_vec), state.issuing_der)
    else {
        return Err(CaError::AwaitingChain.into());
    };
    let signer: Arc<dyn CaSigner> = hsm.signer(&state.issuing_key_label)?;
    check_key_protection(
        &state.issuing_key_label,
        hsm.key_protection(&state.issuing_key_label)?,
    )?;
    let certificate = Certificate::from_der(&issuing_der).map_err(encoding)?;
    let key_id = hex::encode(profile::issuer_key_identifier(&certificate)?.as_bytes());
    if certificate.tbs_certificate().subject_public_key_info() != &spki_of(signer.as_ref())? {
        return Err(CaError::IssuingKeyMismatch.into());
    }
    // Leaf's issuer first, root last (RFC 8446 §4.4.2 order), so clients
    // that pin the root can build the path from what they are sent.
    let mut chain_pem = pem("CERTIFICATE", &issuing_der)?;
    let mut path_not_after = certificate_not_after(&certificate)?;
    for der in state.intermediates_der.iter().chain([&root_der]) {
        chain_pem.push_str(&pem("CERTIFICATE", der)?);
        let above = Certificate::from_der(der).map_err(encoding)?;
        path_not_after = path_not_after.min(certificate_not_after(&above)?);
    }
    Ok(LoadedCa {
        issuing: IssuingCa {
            signer,
            certificate,
            key_id,
            chain_pem,
            path_not_after,
        },
        root_der,
        intermediates_der: state.intermediates_der,
        key_type: state.issuing_key_type,
    })
}

/// Refuses to sign with a key the token would let out: `init` generates CA
/// keys sensitive and non-extractable, so anything else on the label means
/// the key was replaced or imported carelessly. A key that is protected now
/// but was not always (imported, then locked down) is accepted with a
/// warning: it may exist outside the token.
fn check_key_protection(label: &str, protection: KeyProtection) -> Result<(), ServiceError> {
    if !protection.stays_on_token() {
        return Err(CaError::KeyCanLeaveToken {
            label: label.to_owned(),
            protection,
        }
        .into());
    }
    if !protection.generated_on_token() {
        tracing::warn!(
            hsm.key_label = label,
            always_sensitive = protection.always_sensitive,
            never_extractable = protection.never_extractable,
            "the issuing key was not generated on the token as non-extractable; a copy may exist outside it"
        );
    }
    Ok(())
}

/// `sha256:<hex>` of DER bytes: how clients pin the root.
pub fn fingerprint(der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
    )
}

/// `now + seconds`, refusing lifetimes past the end of the calendar.
fn after(now: OffsetDateTime, seconds: i64) -> Result<OffsetDateTime, ServiceError> {
    now.checked_add(time::Duration::seconds(seconds))
        .ok_or_else(|| CaError::LifetimeOutOfRange { seconds }.into())
}

fn sign_ca(template: &CaTemplate, signer: &dyn CaSigner) -> Result<Vec<u8>, ServiceError> {
    let unsigned = profile::prepare_ca(template, signer)?;
    let signature = signer.sign(unsigned.tbs_der())?;
    let certificate = unsigned.assemble(&signature)?;
    profile::to_der(&certificate).map_err(Into::into)
}

fn spki_of(signer: &dyn CaSigner) -> Result<SubjectPublicKeyInfoOwned, ServiceError> {
    SubjectPublicKeyInfoOwned::from_der(signer.subject_public_key_info()).map_err(encoding)
}

fn subject(common_name: &str) -> Result<Name, ServiceError> {
    let escaped = common_name
        .replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('+', "\\+");
    Name::from_str(&format!("CN={escaped}")).map_err(encoding)
}

fn encoding(error: impl std::fmt::Display) -> ServiceError {
    ServiceError::Profile(profile::ProfileError::Encoding(error.to_string()))
}

/// Parses a PEM certificate (for `ca import-chain` inputs and tests).
pub fn parse_pem_certificate(text: &str) -> Result<Certificate, ServiceError> {
    Certificate::from_pem(text.as_bytes()).map_err(encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATED_ON_TOKEN: KeyProtection = KeyProtection {
        private: true,
        sensitive: true,
        extractable: false,
        always_sensitive: true,
        never_extractable: true,
    };

    #[test]
    fn ok_every_documented_ca_key_type_parses() {
        for text in ["ec-p256", "ec-p384", "rsa-3072", "rsa-4096", "ed25519"] {
            let key_type = parse_ca_key_type(text).expect("a CA key type");
            assert_eq!(key_type.as_str(), text);
            require_ca_key_type(key_type).expect("allowed at init");
        }
    }

    #[test]
    fn fail_rsa_2048_and_unknown_types_are_not_ca_key_types() {
        for text in ["rsa-2048", "rsa-1024", "p256", ""] {
            let reason = parse_ca_key_type(text).expect_err(text);
            assert!(
                reason.contains("expected one of ec-p256, ec-p384, rsa-3072, rsa-4096, ed25519"),
                "{reason}"
            );
        }
        // A config file can still name it: init refuses before reserving a CA
        // key, after finding no CA (a rerun beside an existing CA still passes).
        match require_ca_key_type(KeyType::Rsa2048) {
            Err(ServiceError::Ca(CaError::KeyTypeNotForCa { reason })) => {
                assert!(reason.starts_with("\"rsa-2048\""), "{reason}")
            }
            other => panic!("rsa-2048 accepted for a CA key: {other:?}"),
        }
    }

    #[test]
    fn ok_key_generated_on_the_token_is_used() {
        check_key_protection("issuing", GENERATED_ON_TOKEN).expect("a CA key");
        let locked_down_later = KeyProtection {
            always_sensitive: false,
            never_extractable: false,
            ..GENERATED_ON_TOKEN
        };
        check_key_protection("issuing", locked_down_later).expect("accepted with a warning");
    }

    #[test]
    fn fail_key_that_can_leave_the_token_is_refused() {
        for protection in [
            KeyProtection {
                extractable: true,
                ..GENERATED_ON_TOKEN
            },
            KeyProtection {
                sensitive: false,
                ..GENERATED_ON_TOKEN
            },
        ] {
            let error = check_key_protection("issuing", protection).expect_err("refused");
            assert!(error.to_string().contains("can leave the token"), "{error}");
        }
        let public_object = KeyProtection {
            private: false,
            ..GENERATED_ON_TOKEN
        };
        let error = check_key_protection("issuing", public_object).expect_err("refused");
        assert!(error.to_string().contains("CKA_PRIVATE=false"), "{error}");
    }
}
