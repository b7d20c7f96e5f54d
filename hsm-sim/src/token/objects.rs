//! Objects and key generation: handles, creating, destroying, reading
//! and writing objects, finding them, and generating key pairs.

use std::sync::Arc;

use cryptoki_sys::*;
use openssl::pkey::{PKey, Private};
use zeroize::Zeroizing;

use crate::error::{Ckr, Result};
use crate::mechanisms::{self, KeySpec, Param};
use crate::object::{self, boolean, ulong, Template};
use crate::store::{self, StoredObject};

use super::{AttributeValue, FindOp, Login, Module, ObjectKey, SessionObject};

/// An object to store, with the PKCS#8 and opened form of its private key.
type NewObject = (
    StoredObject,
    Option<(Zeroizing<Vec<u8>>, Arc<PKey<Private>>)>,
);

impl Module {
    // ----- objects ---------------------------------------------------------

    fn handle_for(&mut self, key: ObjectKey) -> CK_OBJECT_HANDLE {
        if let Some(handle) = self.handle_of.get(&key) {
            return *handle;
        }
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, key.clone());
        self.handle_of.insert(key, handle);
        handle
    }

    /// Resolves an object handle in a session: the object must be on the
    /// session's token, exist, and be visible to the current login.
    pub(super) fn resolve(
        &mut self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
    ) -> Result<ObjectKey> {
        let (serial, _) = self.session_token(session)?;
        let key = self
            .handles
            .get(&handle)
            .cloned()
            .ok_or(Ckr::OBJECT_HANDLE_INVALID)?;
        if key.serial != serial {
            return Err(Ckr::OBJECT_HANDLE_INVALID);
        }
        let token = self.token(&serial)?;
        match token.object(&key.uid) {
            Some(object) if token.visible(object) => Ok(key),
            _ => Err(Ckr::OBJECT_HANDLE_INVALID),
        }
    }

    pub(super) fn object(&mut self, key: &ObjectKey) -> Result<&StoredObject> {
        self.token(&key.serial)?
            .object(&key.uid)
            .ok_or(Ckr::OBJECT_HANDLE_INVALID)
    }

    /// Checks the session may create or change an object with these
    /// `CKA_TOKEN` and `CKA_PRIVATE` values.
    fn check_write(
        &mut self,
        session: CK_SESSION_HANDLE,
        on_token: bool,
        private: bool,
    ) -> Result<()> {
        let (serial, rw) = self.session_token(session)?;
        if on_token && !rw {
            return Err(Ckr::SESSION_READ_ONLY);
        }
        if private && self.token(&serial)?.login != Login::User {
            return Err(Ckr::USER_NOT_LOGGED_IN);
        }
        Ok(())
    }

    fn new_uid() -> Result<String> {
        let mut bytes = [0u8; 8];
        mechanisms::random_bytes(&mut bytes)?;
        Ok(hex::encode(bytes))
    }

    /// Stores a new object (and, for private keys, its sealed secret) on the
    /// token or in the session, and returns its handle.
    fn insert(
        &mut self,
        session: CK_SESSION_HANDLE,
        objects: Vec<NewObject>,
    ) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let (serial, _) = self.session_token(session)?;
        let mut prepared = Vec::with_capacity(objects.len());
        for (mut object, secret) in objects {
            let uid = Module::new_uid()?;
            let on_token = object.flag(CKA_TOKEN);
            let mut key = None;
            if let Some((pkcs8, private)) = secret {
                if on_token {
                    let token = self.token(&serial)?;
                    let token_key = token.key.as_ref().ok_or(Ckr::USER_NOT_LOGGED_IN)?;
                    object.secret = Some(store::seal_object(token_key, &serial, &uid, &pkcs8)?);
                    token.keys.insert(uid.clone(), Arc::clone(&private));
                }
                key = Some(private);
            }
            prepared.push((uid, on_token, object, key));
        }
        let on_disk: Vec<(String, StoredObject)> = prepared
            .iter()
            .filter(|entry| entry.1)
            .map(|entry| (entry.0.clone(), entry.2.clone()))
            .collect();
        if !on_disk.is_empty() {
            self.modify(&serial, |record| {
                record.objects.extend(on_disk);
                Ok(())
            })?;
        }
        let token = self.token(&serial)?;
        let mut uids = Vec::with_capacity(prepared.len());
        for (uid, on_token, object, key) in prepared {
            if !on_token {
                token.session_objects.insert(
                    uid.clone(),
                    SessionObject {
                        owner: session,
                        object,
                        key,
                    },
                );
            }
            uids.push(uid);
        }
        Ok(uids
            .into_iter()
            .map(|uid| {
                self.handle_for(ObjectKey {
                    serial: serial.clone(),
                    uid,
                })
            })
            .collect())
    }

    /// `C_CreateObject`: certificates, public keys and data objects.
    /// Importing private or secret keys is not supported.
    pub fn create_object(
        &mut self,
        session: CK_SESSION_HANDLE,
        template: &Template,
    ) -> Result<CK_OBJECT_HANDLE> {
        let class = template.ulong(CKA_CLASS)?.ok_or(Ckr::TEMPLATE_INCOMPLETE)?;
        let mut object = object::defaults(class);
        match class {
            CKO_CERTIFICATE => {
                let certificate_type = template.ulong(CKA_CERTIFICATE_TYPE)?.unwrap_or(CKC_X_509);
                if certificate_type != CKC_X_509 {
                    return Err(Ckr::ATTRIBUTE_VALUE_INVALID);
                }
                if template.get(CKA_VALUE).is_none_or(<[u8]>::is_empty) {
                    return Err(Ckr::TEMPLATE_INCOMPLETE);
                }
                object::apply_template(&mut object, template, &[])?;
            }
            CKO_PUBLIC_KEY => {
                let key_type = template
                    .ulong(CKA_KEY_TYPE)?
                    .ok_or(Ckr::TEMPLATE_INCOMPLETE)?;
                object::apply_template(&mut object, template, &[])?;
                let public = mechanisms::public_key(key_type, |attribute| {
                    object.get(attribute).map(<[u8]>::to_vec)
                })
                .map_err(|_| Ckr::TEMPLATE_INCONSISTENT)?;
                if key_type == CKK_RSA {
                    object.set(CKA_MODULUS_BITS, ulong(CK_ULONG::from(public.bits())));
                }
            }
            CKO_DATA => object::apply_template(&mut object, template, &[])?,
            _ => return Err(Ckr::ATTRIBUTE_VALUE_INVALID),
        }
        self.check_write(session, object.flag(CKA_TOKEN), object.flag(CKA_PRIVATE))?;
        let handles = self.insert(session, vec![(object, None)])?;
        handles.first().copied().ok_or(Ckr::GENERAL_ERROR)
    }

    /// `C_DestroyObject`.
    pub fn destroy_object(
        &mut self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let key = self.resolve(session, handle)?;
        let object = self.object(&key)?;
        let on_token = object.flag(CKA_TOKEN);
        if object.get(CKA_DESTROYABLE).is_some() && !object.flag(CKA_DESTROYABLE) {
            return Err(Ckr::ACTION_PROHIBITED);
        }
        self.check_write(session, on_token, false)?;
        if on_token {
            self.modify(&key.serial, |record| {
                record.objects.remove(&key.uid);
                Ok(())
            })?;
        }
        let token = self.token(&key.serial)?;
        token.session_objects.remove(&key.uid);
        token.keys.remove(&key.uid);
        Ok(())
    }

    /// `C_GetAttributeValue`, one outcome per requested type.
    pub fn attribute_values(
        &mut self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttributeValue>> {
        let key = self.resolve(session, handle)?;
        let object = self.object(&key)?.clone();
        let is_private_key = object.class() == Some(CKO_PRIVATE_KEY);
        let mut values = Vec::with_capacity(types.len());
        for attribute in types {
            let value = if is_private_key && object::is_secret_component(*attribute) {
                if object.flag(CKA_SENSITIVE) || !object.flag(CKA_EXTRACTABLE) {
                    AttributeValue::Sensitive
                } else {
                    let private = self.private_key(&key)?;
                    match mechanisms::private_component(&private, *attribute) {
                        Some(bytes) => AttributeValue::Value(bytes),
                        None => AttributeValue::Invalid,
                    }
                }
            } else {
                match object.get(*attribute) {
                    Some(bytes) => AttributeValue::Value(bytes.to_vec()),
                    None => AttributeValue::Invalid,
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    /// `C_SetAttributeValue`: all changes or none.
    pub fn set_attribute_values(
        &mut self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
        template: &Template,
    ) -> Result<()> {
        let key = self.resolve(session, handle)?;
        let mut object = self.object(&key)?.clone();
        let on_token = object.flag(CKA_TOKEN);
        self.check_write(session, on_token, false)?;
        for (attribute, value) in template.validated()? {
            object::check_change(&object, attribute, &value)?;
            object.set(attribute, value);
        }
        if on_token {
            self.modify(&key.serial, |record| {
                let stored = record
                    .objects
                    .get_mut(&key.uid)
                    .ok_or(Ckr::OBJECT_HANDLE_INVALID)?;
                stored.attributes = object.attributes;
                Ok(())
            })
        } else {
            let token = self.token(&key.serial)?;
            let entry = token
                .session_objects
                .get_mut(&key.uid)
                .ok_or(Ckr::OBJECT_HANDLE_INVALID)?;
            entry.object.attributes = object.attributes;
            Ok(())
        }
    }

    /// `C_FindObjectsInit`: snapshots the matching visible objects.
    pub fn find_init(&mut self, session: CK_SESSION_HANDLE, template: &Template) -> Result<()> {
        let (serial, _) = self.session_token(session)?;
        if self.session(session)?.find.is_some() {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        let token = self.token(&serial)?;
        let uids: Vec<String> = token
            .record
            .objects
            .iter()
            .chain(
                token
                    .session_objects
                    .iter()
                    .map(|(uid, entry)| (uid, &entry.object)),
            )
            .filter(|(_, object)| token.visible(object) && object.matches(template))
            .map(|(uid, _)| uid.clone())
            .collect();
        let handles = uids
            .into_iter()
            .map(|uid| {
                self.handle_for(ObjectKey {
                    serial: serial.clone(),
                    uid,
                })
            })
            .collect();
        self.session_mut(session)?.find = Some(FindOp { handles, next: 0 });
        Ok(())
    }

    /// `C_FindObjects`: up to `max` more handles.
    pub fn find(
        &mut self,
        session: CK_SESSION_HANDLE,
        max: usize,
    ) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let find = self
            .session_mut(session)?
            .find
            .as_mut()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        let end = find.handles.len().min(find.next.saturating_add(max));
        let found = find
            .handles
            .get(find.next..end)
            .unwrap_or_default()
            .to_vec();
        find.next = end;
        Ok(found)
    }

    /// `C_FindObjectsFinal`.
    pub fn find_final(&mut self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.session_mut(session)?
            .find
            .take()
            .map(|_| ())
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)
    }

    // ----- keys --------------------------------------------------------------

    /// `C_GenerateKeyPair`: returns `(public, private)` handles.
    pub fn generate_key_pair(
        &mut self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        param: &Param,
        public_template: &Template,
        private_template: &Template,
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        self.session_token(session)?;
        if !matches!(param, Param::None)
            && !matches!(param, Param::Other(bytes) if bytes.is_empty())
        {
            return Err(Ckr::MECHANISM_PARAM_INVALID);
        }
        let spec = KeySpec::from_template(mechanism, public_template)?;
        // The token computes these; a template may not set them.
        let computed = [
            CKA_EC_POINT,
            CKA_MODULUS,
            CKA_VALUE,
            CKA_PRIVATE_EXPONENT,
            CKA_PRIME_1,
            CKA_PRIME_2,
            CKA_EXPONENT_1,
            CKA_EXPONENT_2,
            CKA_COEFFICIENT,
        ];
        let mut public = object::defaults(CKO_PUBLIC_KEY);
        public.set(CKA_KEY_TYPE, ulong(spec.key_type()));
        object::apply_template(&mut public, public_template, &computed)?;
        let mut private = object::defaults(CKO_PRIVATE_KEY);
        private.set(CKA_KEY_TYPE, ulong(spec.key_type()));
        object::apply_template(&mut private, private_template, &computed)?;
        if private.get(CKA_EC_PARAMS).is_some() || private.get(CKA_MODULUS_BITS).is_some() {
            return Err(Ckr::TEMPLATE_INCONSISTENT);
        }
        self.check_write(session, public.flag(CKA_TOKEN), public.flag(CKA_PRIVATE))?;
        self.check_write(session, private.flag(CKA_TOKEN), private.flag(CKA_PRIVATE))?;
        if private.flag(CKA_TOKEN) {
            // Sealing needs the token key, whatever CKA_PRIVATE says.
            let (serial, _) = self.session_token(session)?;
            if self.token(&serial)?.key.is_none() {
                return Err(Ckr::USER_NOT_LOGGED_IN);
            }
        }
        let generated = mechanisms::generate(&spec)?;
        for (attribute, value) in generated.public {
            public.set(attribute, value);
        }
        for (attribute, value) in generated.private {
            private.set(attribute, value);
        }
        for object in [&mut public, &mut private] {
            object.set(CKA_KEY_GEN_MECHANISM, ulong(mechanism));
        }
        let sensitive = private.flag(CKA_SENSITIVE);
        let extractable = private.flag(CKA_EXTRACTABLE);
        private.set(CKA_ALWAYS_SENSITIVE, boolean(sensitive));
        private.set(CKA_NEVER_EXTRACTABLE, boolean(!extractable));
        let handles = self.insert(
            session,
            vec![
                (public, None),
                (private, Some((generated.pkcs8, generated.key))),
            ],
        )?;
        match handles.as_slice() {
            [public, private] => Ok((*public, *private)),
            _ => Err(Ckr::GENERAL_ERROR),
        }
    }

    /// The private key of an object, opened from its sealed secret.
    pub(super) fn private_key(&mut self, key: &ObjectKey) -> Result<Arc<PKey<Private>>> {
        let token = self.token(&key.serial)?;
        if let Some(entry) = token.session_objects.get(&key.uid) {
            return entry.key.clone().ok_or(Ckr::KEY_TYPE_INCONSISTENT);
        }
        if let Some(private) = token.keys.get(&key.uid) {
            return Ok(Arc::clone(private));
        }
        let object = token
            .record
            .objects
            .get(&key.uid)
            .ok_or(Ckr::OBJECT_HANDLE_INVALID)?;
        let sealed = object.secret.as_ref().ok_or(Ckr::KEY_TYPE_INCONSISTENT)?;
        let token_key = token.key.as_ref().ok_or(Ckr::USER_NOT_LOGGED_IN)?;
        let pkcs8 = store::open_object(token_key, &key.serial, &key.uid, sealed)?;
        let private = Arc::new(mechanisms::load_private_key(&pkcs8)?);
        token.keys.insert(key.uid.clone(), Arc::clone(&private));
        Ok(private)
    }
}
