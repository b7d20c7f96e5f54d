//! Operations: the sign, verify and digest state machines of a session,
//! and random numbers.

use std::sync::Arc;

use cryptoki_sys::*;
use openssl::pkey::{PKey, Private};
use zeroize::Zeroizing;

use crate::error::{Ckr, Result};
use crate::mechanisms::{self, Digest, Param, Scheme};

use super::{Module, ObjectKey};

/// An active sign (`K` = private key) or verify (`K` = public key)
/// operation: the scheme, the key, and the data passed to `C_*Update`.
pub(super) struct KeyedOp<K> {
    scheme: Scheme,
    key: K,
    data: Zeroizing<Vec<u8>>,
    /// Set by the first `C_*Update`: from then on only `C_*Final` may end it.
    multi_part: bool,
}

impl<K> KeyedOp<K> {
    fn new(scheme: Scheme, key: K) -> Self {
        Self {
            scheme,
            key,
            data: Zeroizing::new(Vec::new()),
            multi_part: false,
        }
    }

    /// Takes the operation for a single-part call (`C_Sign`, `C_Verify`),
    /// which ends it whatever the outcome.
    fn take_single_part(slot: &mut Option<Self>) -> Result<Self> {
        let op = slot.take().ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        if op.multi_part {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        Ok(op)
    }

    /// Takes the operation for `C_*Final`.
    fn take_final(slot: &mut Option<Self>) -> Result<Self> {
        slot.take().ok_or(Ckr::OPERATION_NOT_INITIALIZED)
    }

    /// `C_*Update`: appends `part`; a scheme that cannot hash incrementally
    /// ends the operation with `CKR_FUNCTION_NOT_SUPPORTED`.
    fn update(slot: &mut Option<Self>, part: &[u8]) -> Result<()> {
        let op = slot.as_mut().ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        if !op.scheme.multi_part() {
            *slot = None;
            return Err(Ckr::FUNCTION_NOT_SUPPORTED);
        }
        op.multi_part = true;
        op.data.extend_from_slice(part);
        Ok(())
    }
}

pub(super) type SignOp = KeyedOp<Arc<PKey<Private>>>;
pub(super) type VerifyOp = KeyedOp<PKey<openssl::pkey::Public>>;

pub(super) struct DigestOp {
    digest: Digest,
    data: Vec<u8>,
    multi_part: bool,
}

impl Module {
    // ----- sign ----------------------------------------------------------------

    /// The key object of a sign or verify initialisation: `handle` names
    /// an object of `class` that allows `usage`, and `mechanism` fits its
    /// key type. `slot_busy` says whether that operation is already active.
    fn operation_key(
        &mut self,
        session: CK_SESSION_HANDLE,
        slot_busy: bool,
        handle: CK_OBJECT_HANDLE,
        (class, usage): (CK_OBJECT_CLASS, CK_ATTRIBUTE_TYPE),
        (mechanism, param): (CK_MECHANISM_TYPE, &Param),
    ) -> Result<(ObjectKey, CK_KEY_TYPE, Scheme)> {
        if slot_busy {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        let key = self
            .resolve(session, handle)
            .map_err(|_| Ckr::KEY_HANDLE_INVALID)?;
        let object = self.object(&key)?;
        if object.class() != Some(class) {
            return Err(Ckr::KEY_TYPE_INCONSISTENT);
        }
        if !object.flag(usage) {
            return Err(Ckr::KEY_FUNCTION_NOT_PERMITTED);
        }
        let key_type = object
            .number(CKA_KEY_TYPE)
            .ok_or(Ckr::KEY_TYPE_INCONSISTENT)?;
        let scheme = Scheme::resolve(mechanism, param, key_type)?;
        Ok((key, key_type, scheme))
    }

    /// `C_SignInit`.
    pub fn sign_init(
        &mut self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        param: &Param,
        handle: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let busy = self.session(session)?.sign.is_some();
        let (key, _, scheme) = self.operation_key(
            session,
            busy,
            handle,
            (CKO_PRIVATE_KEY, CKA_SIGN),
            (mechanism, param),
        )?;
        let private = self.private_key(&key)?;
        self.session_mut(session)?.sign = Some(KeyedOp::new(scheme, private));
        Ok(())
    }

    /// The signature length of the active sign operation (for size
    /// queries; the operation stays active).
    pub fn sign_len(&mut self, session: CK_SESSION_HANDLE) -> Result<usize> {
        let op = self
            .session(session)?
            .sign
            .as_ref()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        mechanisms::signature_len(&op.key)
    }

    /// `C_Sign`: signs `data` and ends the operation, whatever the outcome.
    pub fn sign(&mut self, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<Vec<u8>> {
        let op = SignOp::take_single_part(&mut self.session_mut(session)?.sign)?;
        mechanisms::sign(op.scheme, &op.key, data)
    }

    /// `C_SignUpdate`.
    pub fn sign_update(&mut self, session: CK_SESSION_HANDLE, part: &[u8]) -> Result<()> {
        SignOp::update(&mut self.session_mut(session)?.sign, part)
    }

    /// `C_SignFinal`: signs everything passed to `C_SignUpdate`.
    pub fn sign_final(&mut self, session: CK_SESSION_HANDLE) -> Result<Vec<u8>> {
        let op = SignOp::take_final(&mut self.session_mut(session)?.sign)?;
        mechanisms::sign(op.scheme, &op.key, &op.data)
    }

    // ----- verify --------------------------------------------------------------

    /// `C_VerifyInit`.
    pub fn verify_init(
        &mut self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        param: &Param,
        handle: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let busy = self.session(session)?.verify.is_some();
        let (key, key_type, scheme) = self.operation_key(
            session,
            busy,
            handle,
            (CKO_PUBLIC_KEY, CKA_VERIFY),
            (mechanism, param),
        )?;
        let object = self.object(&key)?;
        let public = mechanisms::public_key(key_type, |attribute| {
            object.get(attribute).map(<[u8]>::to_vec)
        })?;
        self.session_mut(session)?.verify = Some(KeyedOp::new(scheme, public));
        Ok(())
    }

    /// `C_Verify`: ends the operation.
    pub fn verify(
        &mut self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        let op = VerifyOp::take_single_part(&mut self.session_mut(session)?.verify)?;
        mechanisms::verify(op.scheme, &op.key, data, signature)
    }

    /// `C_VerifyUpdate`.
    pub fn verify_update(&mut self, session: CK_SESSION_HANDLE, part: &[u8]) -> Result<()> {
        VerifyOp::update(&mut self.session_mut(session)?.verify, part)
    }

    /// `C_VerifyFinal`.
    pub fn verify_final(&mut self, session: CK_SESSION_HANDLE, signature: &[u8]) -> Result<()> {
        let op = VerifyOp::take_final(&mut self.session_mut(session)?.verify)?;
        mechanisms::verify(op.scheme, &op.key, &op.data, signature)
    }

    // ----- digest ----------------------------------------------------------------

    /// `C_DigestInit`.
    pub fn digest_init(
        &mut self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        param: &Param,
    ) -> Result<()> {
        let session = self.session_mut(session)?;
        if session.digest.is_some() {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        let digest = Digest::of_mechanism(mechanism).ok_or(Ckr::MECHANISM_INVALID)?;
        if !matches!(param, Param::None)
            && !matches!(param, Param::Other(bytes) if bytes.is_empty())
        {
            return Err(Ckr::MECHANISM_PARAM_INVALID);
        }
        session.digest = Some(DigestOp {
            digest,
            data: Vec::new(),
            multi_part: false,
        });
        Ok(())
    }

    /// The digest length of the active digest operation.
    pub fn digest_len(&mut self, session: CK_SESSION_HANDLE) -> Result<usize> {
        let op = self
            .session(session)?
            .digest
            .as_ref()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        Ok(op.digest.output_len())
    }

    /// `C_Digest`: ends the operation.
    pub fn digest(&mut self, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<Vec<u8>> {
        let op = self
            .session_mut(session)?
            .digest
            .take()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        if op.multi_part {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        op.digest.hash(data)
    }

    /// `C_DigestUpdate`.
    pub fn digest_update(&mut self, session: CK_SESSION_HANDLE, part: &[u8]) -> Result<()> {
        let op = self
            .session_mut(session)?
            .digest
            .as_mut()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        op.multi_part = true;
        op.data.extend_from_slice(part);
        Ok(())
    }

    /// `C_DigestFinal`.
    pub fn digest_final(&mut self, session: CK_SESSION_HANDLE) -> Result<Vec<u8>> {
        let op = self
            .session_mut(session)?
            .digest
            .take()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        op.digest.hash(&op.data)
    }

    // ----- random ------------------------------------------------------------------

    /// `C_GenerateRandom`.
    pub fn generate_random(&mut self, session: CK_SESSION_HANDLE, buffer: &mut [u8]) -> Result<()> {
        self.session(session)?;
        mechanisms::random_bytes(buffer)
    }

    /// Checks a session for `C_SeedRandom` (the seeding itself is in ffi).
    pub fn check_session(&mut self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.session(session).map(|_| ())
    }
}
