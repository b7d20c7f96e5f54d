//! [`CaSigner`], what the rest of the server sees of a CA key, and its
//! implementation over a token key.
//!
//! The signer holds the key's public half (as SPKI DER) and the label and
//! `CKA_ID` of its private half; the private key itself is only ever named
//! by handle in `C_Sign`. Messages are hashed on the host for ECDSA (raw
//! `CKM_ECDSA` works on every token) and the token's `r || s` is converted
//! to the X.509 `Ecdsa-Sig-Value` here, so callers get signatures they can
//! put straight into a certificate.

use std::sync::{Arc, Mutex, PoisonError};

use certmint::wire::KeyType;
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::error::{device_error, DuringExt, HsmError};
use super::keys::{self, Family};
use super::session_pool::{Retry, SessionPool};

/// A CA signing key, as the rest of the server sees it.
///
/// Object safe, `Send + Sync`: one signer is shared by every request.
pub trait CaSigner: Send + Sync {
    /// The key's type.
    fn key_type(&self) -> KeyType;

    /// The key's `CKA_LABEL` on the token.
    fn label(&self) -> &str;

    /// DER SubjectPublicKeyInfo of the key.
    fn subject_public_key_info(&self) -> &[u8];

    /// DER AlgorithmIdentifier of the X.509 signature this signer produces
    /// (P-256 → ecdsa-with-SHA256, P-384 → ecdsa-with-SHA384, RSA →
    /// sha256WithRSAEncryption with NULL parameters, Ed25519 → id-Ed25519
    /// with absent parameters).
    fn signature_algorithm(&self) -> &[u8];

    /// Signs `message` (e.g. TBSCertificate DER) and returns an X.509-ready
    /// signature value: DER `Ecdsa-Sig-Value` for ECDSA, PKCS#1 v1.5 bytes
    /// for RSA, 64 bytes for Ed25519.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError>;
}

/// A [`CaSigner`] whose private key lives on a PKCS#11 token.
pub(super) struct TokenSigner {
    pool: Arc<SessionPool>,
    label: String,
    key_id: Vec<u8>,
    key_type: KeyType,
    subject_public_key_info: Vec<u8>,
    signature_algorithm: Vec<u8>,
    /// The private key's handle and the module generation it is valid in.
    /// Handles are per process and may change when the module is
    /// reinitialized, so a handle from another generation is looked up again.
    cached_handle: Mutex<Option<(u64, ObjectHandle)>>,
}

const _: fn() = || {
    fn implements_ca_signer<T: CaSigner>() {}
    implements_ca_signer::<TokenSigner>();
};

impl TokenSigner {
    pub(super) fn new(
        pool: Arc<SessionPool>,
        label: &str,
        key_id: Vec<u8>,
        public_key: keys::PublicKey,
        private_handle: Option<(u64, ObjectHandle)>,
    ) -> Result<TokenSigner, HsmError> {
        Ok(TokenSigner {
            pool,
            label: label.to_owned(),
            key_id,
            key_type: public_key.key_type,
            subject_public_key_info: public_key.subject_public_key_info,
            signature_algorithm: keys::signature_algorithm(public_key.key_type)?,
            cached_handle: Mutex::new(private_handle),
        })
    }

    /// The private key handle for `generation`, from the cache unless
    /// `refresh` asks for a new lookup (after a stale-handle error).
    fn private_key_handle(
        &self,
        session: &Session,
        generation: u64,
        refresh: bool,
    ) -> Result<ObjectHandle, HsmError> {
        if !refresh {
            let cached = *self
                .cached_handle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((cached_generation, handle)) = cached {
                if cached_generation == generation {
                    return Ok(handle);
                }
            }
        }
        let template = [
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(self.label.as_bytes().to_vec()),
            Attribute::Id(self.key_id.clone()),
        ];
        let handle = match find_unique(session, &template, &self.label)? {
            Some(handle) => handle,
            // Private objects are invisible to a session that lost its
            // login (a token-side timeout, another part of the process
            // logging out), so a lost login looks like a missing key: log
            // in again if so, and look once more.
            None => {
                self.pool.validate(session)?;
                find_unique(session, &template, &self.label)?.ok_or_else(|| {
                    HsmError::KeyNotFound {
                        label: self.label.clone(),
                    }
                })?
            }
        };
        *self
            .cached_handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((generation, handle));
        Ok(handle)
    }
}

impl CaSigner for TokenSigner {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn label(&self) -> &str {
        &self.label
    }

    fn subject_public_key_info(&self) -> &[u8] {
        &self.subject_public_key_info
    }

    fn signature_algorithm(&self) -> &[u8] {
        &self.signature_algorithm
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let family = Family::of(self.key_type);
        let digest;
        let (mechanism, input) = match family {
            Family::Ecdsa { field_len, .. } => {
                let algorithm = if field_len == 32 {
                    &ring::digest::SHA256
                } else {
                    &ring::digest::SHA384
                };
                digest = ring::digest::digest(algorithm, message);
                (Mechanism::Ecdsa, digest.as_ref())
            }
            Family::Rsa { .. } => (Mechanism::Sha256RsaPkcs, message),
            Family::Ed25519 => (
                Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                message,
            ),
        };

        let raw = self.pool.run(Retry::Once, |session, generation| {
            let handle = self.private_key_handle(session, generation, false)?;
            match session.sign(&mechanism, handle, input) {
                // The handle went stale (key re-created, module reloaded):
                // look the key up once more before giving up.
                Err(CryptokiError::Pkcs11(
                    RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                    _,
                )) => {
                    let handle = self.private_key_handle(session, generation, true)?;
                    session.sign(&mechanism, handle, input).during("C_Sign")
                }
                result => result.map_err(|error| device_error("C_Sign", error)),
            }
        })?;

        let malformed = || HsmError::MalformedSignature {
            label: self.label.clone(),
            length: raw.len(),
        };
        match family {
            Family::Ecdsa { field_len, .. } => {
                keys::ecdsa_signature_to_der(&raw, field_len).unwrap_or_else(|| Err(malformed()))
            }
            Family::Ed25519 if raw.len() != 64 => Err(malformed()),
            Family::Ed25519 | Family::Rsa { .. } => Ok(raw),
        }
    }
}

/// Finds the one object matching `template`: `None` if there is none,
/// [`HsmError::Ambiguous`] if there are several. Asks the token for two
/// objects, which is enough to tell.
pub(super) fn find_unique(
    session: &Session,
    template: &[Attribute],
    label: &str,
) -> Result<Option<ObjectHandle>, HsmError> {
    let found = find_at_most(session, template, 2)?;
    match found.as_slice() {
        [] => Ok(None),
        [handle] => Ok(Some(*handle)),
        _ => Err(HsmError::Ambiguous {
            label: label.to_owned(),
        }),
    }
}

/// Up to `limit` objects matching `template`.
pub(super) fn find_at_most(
    session: &Session,
    template: &[Attribute],
    limit: usize,
) -> Result<Vec<ObjectHandle>, HsmError> {
    let cache_size =
        std::num::NonZeroUsize::new(limit.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
    session
        .iter_objects_with_cache_size(template, cache_size)
        .during("C_FindObjectsInit")?
        .take(limit)
        .collect::<Result<Vec<_>, _>>()
        .during("C_FindObjects")
}
