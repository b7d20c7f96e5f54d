//! Everything PKCS#11: loading the module, sessions, CA key generation and
//! signing.
//!
//! # Job
//!
//! `hsm` turns a configured PKCS#11 module, token label and PIN into an
//! [`Hsm`] handle, and CA keys on that token into [`CaSigner`]s: a public
//! key (SPKI DER), a signature algorithm (AlgorithmIdentifier DER) and a
//! `sign` that returns X.509-ready signature values.
//!
//! ```text
//!  issuance ──CaSigner::sign(tbs)──▶ TokenSigner ──▶ SessionPool ──C_Sign──▶ token
//!  init     ──Hsm::generate_key_pair──────────────▶ SessionPool ──C_GenerateKeyPair
//!  /readyz  ──Hsm::ping──────────────────────────▶ SessionPool ──C_GetSessionInfo
//! ```
//!
//! # Invariants
//!
//! - **No cryptoki type escapes this module.** Public signatures use
//!   certmint types ([`HsmError`], [`FaultKind`], [`KeyType`]); the cryptoki
//!   error survives only as an opaque `#[source]`.
//! - **Private keys never leave the token.** They are generated on the
//!   token as `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`, and only ever named by
//!   handle in `C_Sign`. Nothing here reads private key material.
//! - **The PIN never appears in `Debug`, `Display` or logs**: it is a
//!   [`SecretString`] handed to `C_Login` and nowhere else.
//! - **One key, one label.** Key generation refuses a label that is taken,
//!   and lookups ask for two objects to detect ambiguity, so a label always
//!   names exactly one key.
//! - **Return codes are interpreted in one place**, the private `classify`
//!   in `error.rs`, which sorts them into [`FaultKind`]s.
//!
//! # Must never
//!
//! Hold a lock across `C_Sign`; reuse a session the token reported dead;
//! call `C_Finalize` while other handles may be in a call (every pool
//! operation holds the module's call guard, which `C_Finalize` waits for);
//! send `C_Login` again with a PIN the token refused.
//!
//! Every token, hsm-sim and SoftHSM2 alike, is loaded through the same code
//! path from a module path (style item 6, seam 1).

mod error;
mod keys;
mod session_pool;
mod signer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use certmint::wire::KeyType;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use secrecy::SecretString;

pub use error::{FaultKind, HsmError, Pkcs11Failure};
pub use signer::CaSigner;

use error::{login_error, DuringExt};
use keys::{Family, PublicKey, PUBLIC_KEY_ATTRIBUTES};
use session_pool::{Module, Retry, SessionPool};
use signer::{find_at_most, find_unique, TokenSigner};

/// Where the CA keys live and how to log in.
#[derive(Clone, Debug)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (`.so`), e.g. SoftHSM2's or hsm-sim's.
    pub module_path: PathBuf,
    /// Label of the token holding the CA keys.
    pub token_label: String,
    /// User PIN; redacted from `Debug`.
    pub pin: SecretString,
    /// How many sessions may sign in parallel (at least one is used).
    pub session_pool_size: usize,
}

/// A logged-in handle on one token. Cheap to clone; clones share the
/// session pool.
#[derive(Clone)]
pub struct Hsm {
    pool: Arc<SessionPool>,
    token_label: String,
}

const _: fn() = || {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Hsm>();
};

/// Reads the public key object `handle` (labelled `label`) from the token.
fn read_public_key(
    session: &Session,
    handle: ObjectHandle,
    label: &str,
) -> Result<PublicKey, HsmError> {
    let attributes = session
        .get_attributes(handle, &PUBLIC_KEY_ATTRIBUTES)
        .during("C_GetAttributeValue")?;
    PublicKey::from_attributes(label, &attributes)
}

/// Reads the protection attributes of the private key `handle`; attributes
/// the token does not report are taken as the unsafe value.
fn read_protection(session: &Session, handle: ObjectHandle) -> Result<KeyProtection, HsmError> {
    let attributes = session
        .get_attributes(
            handle,
            &[
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
            ],
        )
        .during("C_GetAttributeValue")?;
    let mut protection = KeyProtection {
        private: false,
        sensitive: false,
        extractable: true,
        always_sensitive: false,
        never_extractable: false,
    };
    for attribute in attributes {
        match attribute {
            Attribute::Private(value) => protection.private = value,
            Attribute::Sensitive(value) => protection.sensitive = value,
            Attribute::Extractable(value) => protection.extractable = value,
            Attribute::AlwaysSensitive(value) => protection.always_sensitive = value,
            Attribute::NeverExtractable(value) => protection.never_extractable = value,
            _ => {}
        }
    }
    Ok(protection)
}

/// Finalizes every PKCS#11 module the process loaded (`C_Finalize`). Call it
/// once, right before the process exits, after all work is done, so the
/// token library can release its sessions and state in order (PKCS#11
/// §5.4) rather than in whatever order exit-time destructors run.
pub fn finalize_all_modules() {
    session_pool::finalize_all();
}

/// The protection attributes of a private key, as the token reports them.
///
/// A CA key must show `private && sensitive && !extractable`;
/// `always_sensitive` and `never_extractable` additionally prove it was
/// generated that way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyProtection {
    /// `CKA_PRIVATE`: usable only after login. A key without it signs for
    /// anyone who can load the module, PIN or not.
    pub private: bool,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`.
    pub never_extractable: bool,
}

impl KeyProtection {
    /// The key signs only after login and cannot leave the token.
    pub fn stays_on_token(&self) -> bool {
        self.private && self.sensitive && !self.extractable
    }

    /// [`KeyProtection::stays_on_token`], and it never could leave: it was
    /// generated on the token that way.
    pub fn generated_on_token(&self) -> bool {
        self.stays_on_token() && self.always_sensitive && self.never_extractable
    }
}

impl Hsm {
    /// Loads the module (once per process), initializes it with OS
    /// locking, finds the token by label and logs in.
    ///
    /// A session is opened and logged in before returning, so a wrong PIN
    /// or a missing token fails here rather than on the first signature.
    pub fn open(config: &HsmConfig) -> Result<Hsm, HsmError> {
        let module = Module::load(&config.module_path)?;
        let pool = SessionPool::open(
            module,
            &config.token_label,
            config.pin.clone(),
            config.session_pool_size,
        )?;
        Ok(Hsm {
            pool: Arc::new(pool),
            token_label: config.token_label.clone(),
        })
    }

    /// The key types this token can both generate and sign with, probed
    /// from its mechanism list rather than assumed.
    ///
    /// Ed25519 needs `CKM_EC_EDWARDS_KEY_PAIR_GEN` and `CKM_EDDSA`; NIST
    /// curves need `CKM_EC_KEY_PAIR_GEN` and `CKM_ECDSA`; RSA needs
    /// `CKM_RSA_PKCS_KEY_PAIR_GEN` and `CKM_SHA256_RSA_PKCS`, and a modulus
    /// size within the key-pair mechanism's range when the token reports one
    /// in bits.
    pub fn supported_key_types(&self) -> Result<Vec<KeyType>, HsmError> {
        let slot = self.pool.slot()?;
        let pkcs11 = self.pool.module().pkcs11();
        let mechanisms = pkcs11
            .get_mechanism_list(slot)
            .during("C_GetMechanismList")?;
        let has = |mechanism: MechanismType| mechanisms.contains(&mechanism);

        let rsa_sizes =
            if has(MechanismType::RSA_PKCS_KEY_PAIR_GEN) && has(MechanismType::SHA256_RSA_PKCS) {
                let info = pkcs11
                    .get_mechanism_info(slot, MechanismType::RSA_PKCS_KEY_PAIR_GEN)
                    .during("C_GetMechanismInfo")?;
                // Some tokens report sizes in bytes; only trust a range in bits.
                if info.max_key_size() >= 1024 {
                    Some(info.min_key_size()..=info.max_key_size())
                } else {
                    Some(0..=usize::MAX)
                }
            } else {
                None
            };
        let ecdsa = has(MechanismType::ECC_KEY_PAIR_GEN) && has(MechanismType::ECDSA);
        let ed25519 = has(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN) && has(MechanismType::EDDSA);

        Ok(KeyType::ALL
            .into_iter()
            .filter(|key_type| match Family::of(*key_type) {
                Family::Ecdsa { .. } => ecdsa,
                Family::Ed25519 => ed25519,
                Family::Rsa { modulus_bits } => rsa_sizes
                    .as_ref()
                    .is_some_and(|sizes| sizes.contains(&modulus_bits)),
            })
            .collect())
    }

    /// Generates a CA key pair on the token and returns its signer.
    ///
    /// Refuses with [`HsmError::AlreadyExists`] if any object carries
    /// `label`, so running `init` twice never makes a second key. The
    /// private half is a sensitive, non-extractable, private token object
    /// allowed only to sign; both halves carry `label` and `key_id` (the
    /// caller draws it at random and records it first, so it can find the
    /// key again with [`Hsm::find_generated_key_pair`]). Not retried on a
    /// lost session: the key may already exist.
    pub fn generate_key_pair(
        &self,
        label: &str,
        key_type: KeyType,
        key_id: &[u8],
    ) -> Result<Arc<dyn CaSigner>, HsmError> {
        let mechanism = match Family::of(key_type) {
            Family::Ecdsa { .. } => Mechanism::EccKeyPairGen,
            Family::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
            Family::Rsa { .. } => Mechanism::RsaPkcsKeyPairGen,
        };
        let serialized = self.pool.module().serialize_key_generation();
        let (public_key, private_handle) = self.pool.run(Retry::Never, |session, generation| {
            let label_template = [Attribute::Label(label.as_bytes().to_vec())];
            if !find_at_most(session, &label_template, 1)?.is_empty() {
                return Err(HsmError::AlreadyExists {
                    label: label.to_owned(),
                });
            }
            let (public_template, private_template) =
                keys::key_pair_templates(key_type, label, key_id)?;
            let (public, private) = session
                .generate_key_pair(&mechanism, &public_template, &private_template)
                .during("C_GenerateKeyPair")
                .map_err(|error| match error.fault_kind() {
                    Some(FaultKind::Unsupported) => HsmError::UnsupportedKeyType { key_type },
                    _ => error,
                })?;
            let public_key = read_public_key(session, public, label)?;
            Ok((public_key, (generation, private)))
        })?;
        drop(serialized);
        if public_key.key_type != key_type {
            return Err(HsmError::UnusableKey {
                label: label.to_owned(),
                reason: "the token generated a different key type than asked",
            });
        }
        tracing::info!(
            hsm.key_label = label,
            hsm.key_type = %key_type,
            "hsm: generated CA key pair on the token"
        );
        Ok(Arc::new(TokenSigner::new(
            Arc::clone(&self.pool),
            label,
            key_id.to_vec(),
            public_key,
            Some(private_handle),
        )?))
    }

    /// The key pair labelled `label` with `CKA_ID` `key_id` that an earlier
    /// [`Hsm::generate_key_pair`] made, or `None` if the token holds no such
    /// private key. Used by an `init` that resumes after an interruption,
    /// so it takes the key only if it is what generation would have made: a
    /// `key_type` key whose private half was always sensitive and never
    /// extractable ([`HsmError::UnusableKey`] otherwise).
    pub fn find_generated_key_pair(
        &self,
        label: &str,
        key_id: &[u8],
        key_type: KeyType,
    ) -> Result<Option<Arc<dyn CaSigner>>, HsmError> {
        let found = self.pool.run(Retry::Once, |session, generation| {
            let private_template = [
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(key_id.to_vec()),
            ];
            let Some(private) = find_unique(session, &private_template, label)? else {
                return Ok(None);
            };
            if !read_protection(session, private)?.generated_on_token() {
                return Err(HsmError::UnusableKey {
                    label: label.to_owned(),
                    reason: "it was not generated private, sensitive and non-extractable",
                });
            }
            let public_template = [
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(key_id.to_vec()),
            ];
            let public = find_unique(session, &public_template, label)?.ok_or_else(|| {
                HsmError::PublicKeyNotFound {
                    label: label.to_owned(),
                }
            })?;
            let public_key = read_public_key(session, public, label)?;
            Ok(Some((public_key, (generation, private))))
        })?;
        let Some((public_key, private_handle)) = found else {
            return Ok(None);
        };
        if public_key.key_type != key_type {
            return Err(HsmError::UnusableKey {
                label: label.to_owned(),
                reason: "it is not of the key type asked for",
            });
        }
        Ok(Some(Arc::new(TokenSigner::new(
            Arc::clone(&self.pool),
            label,
            key_id.to_vec(),
            public_key,
            Some(private_handle),
        )?)))
    }

    /// The signer for the existing private key labelled `label`.
    ///
    /// The public key is read from the public key object with the same
    /// label and `CKA_ID`. [`HsmError::KeyNotFound`] if there is no such
    /// private key, [`HsmError::Ambiguous`] if there are several.
    pub fn signer(&self, label: &str) -> Result<Arc<dyn CaSigner>, HsmError> {
        let (key_id, public_key, private_handle) =
            self.pool.run(Retry::Once, |session, generation| {
                let private = find_private_key(session, label)?;
                let key_id = session
                    .get_attributes(private, &[AttributeType::Id])
                    .during("C_GetAttributeValue")?
                    .into_iter()
                    .find_map(|attribute| match attribute {
                        Attribute::Id(id) => Some(id),
                        _ => None,
                    })
                    .unwrap_or_default();
                let public_template = [
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(key_id.clone()),
                ];
                let public = find_unique(session, &public_template, label)?.ok_or_else(|| {
                    HsmError::PublicKeyNotFound {
                        label: label.to_owned(),
                    }
                })?;
                let public_key = read_public_key(session, public, label)?;
                Ok((key_id, public_key, (generation, private)))
            })?;
        Ok(Arc::new(TokenSigner::new(
            Arc::clone(&self.pool),
            label,
            key_id,
            public_key,
            Some(private_handle),
        )?))
    }

    /// Reads the protection attributes of the private key labelled `label`
    /// (`serve` checks them before it signs with the key). Attributes the
    /// token does not report are taken as the unsafe value.
    pub fn key_protection(&self, label: &str) -> Result<KeyProtection, HsmError> {
        self.pool.run(Retry::Once, |session, _| {
            read_protection(session, find_private_key(session, label)?)
        })
    }

    /// Cheap liveness check for `/readyz`: a pooled session answers
    /// `C_GetSessionInfo` and is logged in (logging in again if the login
    /// was lost, reopening the session if it is gone).
    pub fn ping(&self) -> Result<(), HsmError> {
        self.pool
            .run(Retry::Once, |session, _| self.pool.validate(session))
    }

    /// The label of the token this handle is logged in to.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("token_label", &self.token_label)
            .finish_non_exhaustive()
    }
}

/// Initializes the first slot whose token is not initialized yet: sets its
/// label and SO PIN (`C_InitToken`), then the user PIN (`C_InitPIN`).
///
/// Refuses with [`HsmError::AlreadyExists`] if a token already carries
/// `token_label` and has its user PIN, so `certmint-server init
/// --init-token` is safe to rerun. A token that carries the label but no
/// user PIN yet (an earlier run stopped between `C_InitToken` and
/// `C_InitPIN`) gets its user PIN now. [`HsmError::NoUninitializedToken`]
/// if every token is initialized.
pub fn init_token(
    module_path: &Path,
    token_label: &str,
    so_pin: &SecretString,
    user_pin: &SecretString,
) -> Result<(), HsmError> {
    let module = Module::load(module_path)?;
    match module.find_slot(token_label) {
        Err(HsmError::TokenNotFound { .. }) => {}
        Ok(slot) => {
            let info = module
                .pkcs11()
                .get_token_info(slot)
                .during("C_GetTokenInfo")?;
            if info.user_pin_initialized() {
                return Err(HsmError::AlreadyExists {
                    label: token_label.to_owned(),
                });
            }
            tracing::info!(
                hsm.token_label = token_label,
                "hsm: the token has no user PIN yet (an earlier init stopped); setting it"
            );
            return set_user_pin(&module, slot, token_label, so_pin, user_pin);
        }
        Err(HsmError::TokenAmbiguous { .. }) => {
            return Err(HsmError::AlreadyExists {
                label: token_label.to_owned(),
            })
        }
        Err(other) => return Err(other),
    }
    let pkcs11 = module.pkcs11();
    let mut free_slot = None;
    for slot in pkcs11.get_slots_with_token().during("C_GetSlotList")? {
        if !pkcs11
            .get_token_info(slot)
            .during("C_GetTokenInfo")?
            .token_initialized()
        {
            free_slot = Some(slot);
            break;
        }
    }
    let slot = free_slot.ok_or(HsmError::NoUninitializedToken)?;
    pkcs11
        .init_token(slot, so_pin, token_label)
        .during("C_InitToken")?;
    // SoftHSM2 moves a freshly initialized token to a new slot id, so look
    // it up again by label.
    let slot = module.find_slot(token_label)?;
    set_user_pin(&module, slot, token_label, so_pin, user_pin)?;
    tracing::info!(hsm.token_label = token_label, "hsm: initialized token");
    Ok(())
}

/// `C_InitPIN` as the security officer: sets the user PIN of the token in
/// `slot`.
fn set_user_pin(
    module: &Module,
    slot: cryptoki::slot::Slot,
    token_label: &str,
    so_pin: &SecretString,
    user_pin: &SecretString,
) -> Result<(), HsmError> {
    let session = module
        .pkcs11()
        .open_rw_session(slot)
        .during("C_OpenSession")?;
    session
        .login(UserType::So, Some(so_pin))
        .map_err(|error| login_error(token_label, error))?;
    session.init_pin(user_pin).during("C_InitPIN")?;
    // Closing the session (on drop) ends the SO login as well.
    let _ = session.logout();
    Ok(())
}

/// The one private key labelled `label`.
fn find_private_key(
    session: &cryptoki::session::Session,
    label: &str,
) -> Result<cryptoki::object::ObjectHandle, HsmError> {
    let template = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    find_unique(session, &template, label)?.ok_or_else(|| HsmError::KeyNotFound {
        label: label.to_owned(),
    })
}
