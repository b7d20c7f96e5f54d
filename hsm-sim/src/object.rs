//! Objects and their attributes: the value encoding of the C ABI, the
//! attribute types this module knows, defaults per object class, and
//! templates.
//!
//! Values are kept exactly as the C ABI carries them: `CK_BBOOL` as one byte
//! (0 or 1), `CK_ULONG` as eight native-endian bytes, everything else as
//! bytes. The secret part of a private key is never an attribute: it lives
//! sealed in [`StoredObject::secret`], so no attribute read can reveal it.

use cryptoki_sys::*;

use crate::error::{Ckr, Result};
use crate::store::{Hex, StoredObject};

/// How an attribute's value is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `CK_BBOOL`.
    Bool,
    /// `CK_ULONG` (also `CK_OBJECT_CLASS`, `CK_KEY_TYPE`, …).
    Ulong,
    /// A byte or character string, or a DER value.
    Bytes,
}

/// The encoding of attribute type `kind`, or `None` if this module does not
/// know the attribute (`CKR_ATTRIBUTE_TYPE_INVALID`).
pub fn kind_of(attribute: CK_ATTRIBUTE_TYPE) -> Option<Kind> {
    Some(match attribute {
        CKA_TOKEN
        | CKA_PRIVATE
        | CKA_TRUSTED
        | CKA_SENSITIVE
        | CKA_ENCRYPT
        | CKA_DECRYPT
        | CKA_WRAP
        | CKA_UNWRAP
        | CKA_SIGN
        | CKA_SIGN_RECOVER
        | CKA_VERIFY
        | CKA_VERIFY_RECOVER
        | CKA_DERIVE
        | CKA_EXTRACTABLE
        | CKA_LOCAL
        | CKA_NEVER_EXTRACTABLE
        | CKA_ALWAYS_SENSITIVE
        | CKA_MODIFIABLE
        | CKA_COPYABLE
        | CKA_DESTROYABLE
        | CKA_ALWAYS_AUTHENTICATE
        | CKA_WRAP_WITH_TRUSTED => Kind::Bool,
        CKA_CLASS
        | CKA_CERTIFICATE_TYPE
        | CKA_CERTIFICATE_CATEGORY
        | CKA_KEY_TYPE
        | CKA_MODULUS_BITS
        | CKA_KEY_GEN_MECHANISM
        | CKA_VALUE_LEN
        | CKA_JAVA_MIDP_SECURITY_DOMAIN
        | CKA_NAME_HASH_ALGORITHM => Kind::Ulong,
        CKA_LABEL
        | CKA_APPLICATION
        | CKA_VALUE
        | CKA_OBJECT_ID
        | CKA_ISSUER
        | CKA_SERIAL_NUMBER
        | CKA_AC_ISSUER
        | CKA_OWNER
        | CKA_ATTR_TYPES
        | CKA_CHECK_VALUE
        | CKA_URL
        | CKA_HASH_OF_SUBJECT_PUBLIC_KEY
        | CKA_HASH_OF_ISSUER_PUBLIC_KEY
        | CKA_SUBJECT
        | CKA_ID
        | CKA_START_DATE
        | CKA_END_DATE
        | CKA_MODULUS
        | CKA_PUBLIC_EXPONENT
        | CKA_PRIVATE_EXPONENT
        | CKA_PRIME_1
        | CKA_PRIME_2
        | CKA_EXPONENT_1
        | CKA_EXPONENT_2
        | CKA_COEFFICIENT
        | CKA_PUBLIC_KEY_INFO
        | CKA_EC_PARAMS
        | CKA_EC_POINT
        | CKA_ALLOWED_MECHANISMS => Kind::Bytes,
        _ => return None,
    })
}

/// Attribute types that hold private key material. A private key object
/// never has them as attributes; reading one is `CKR_ATTRIBUTE_SENSITIVE`.
pub fn is_secret_component(attribute: CK_ATTRIBUTE_TYPE) -> bool {
    matches!(
        attribute,
        CKA_VALUE
            | CKA_PRIVATE_EXPONENT
            | CKA_PRIME_1
            | CKA_PRIME_2
            | CKA_EXPONENT_1
            | CKA_EXPONENT_2
            | CKA_COEFFICIENT
    )
}

/// Encodes a `CK_ULONG`.
pub fn ulong(value: CK_ULONG) -> Vec<u8> {
    value.to_ne_bytes().to_vec()
}

/// Encodes a `CK_BBOOL`.
pub fn boolean(value: bool) -> Vec<u8> {
    vec![u8::from(value)]
}

/// Decodes a `CK_ULONG`.
pub fn read_ulong(bytes: &[u8]) -> Option<CK_ULONG> {
    Some(CK_ULONG::from_ne_bytes(bytes.try_into().ok()?))
}

/// An attribute list passed in by the application, already copied out of
/// its memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template(pub Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>);

impl Template {
    /// The value of `attribute`, if present (the last one wins).
    pub fn get(&self, attribute: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(kind, _)| *kind == attribute)
            .map(|(_, value)| value.as_slice())
    }

    /// A boolean attribute; `CKR_ATTRIBUTE_VALUE_INVALID` if malformed.
    pub fn boolean(&self, attribute: CK_ATTRIBUTE_TYPE) -> Result<Option<bool>> {
        self.get(attribute)
            .map(|value| match value {
                [byte] => Ok(*byte != 0),
                _ => Err(Ckr::ATTRIBUTE_VALUE_INVALID),
            })
            .transpose()
    }

    /// A `CK_ULONG` attribute; `CKR_ATTRIBUTE_VALUE_INVALID` if malformed.
    pub fn ulong(&self, attribute: CK_ATTRIBUTE_TYPE) -> Result<Option<CK_ULONG>> {
        self.get(attribute)
            .map(|value| read_ulong(value).ok_or(Ckr::ATTRIBUTE_VALUE_INVALID))
            .transpose()
    }

    /// Checks every entry is a known attribute with a well-formed value,
    /// and returns the entries normalised (booleans as 0 or 1).
    pub fn validated(&self) -> Result<Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>> {
        self.0
            .iter()
            .map(|(attribute, value)| match kind_of(*attribute) {
                None => Err(Ckr::ATTRIBUTE_TYPE_INVALID),
                Some(Kind::Bool) => match value.as_slice() {
                    [byte] => Ok((*attribute, boolean(*byte != 0))),
                    _ => Err(Ckr::ATTRIBUTE_VALUE_INVALID),
                },
                Some(Kind::Ulong) if value.len() != std::mem::size_of::<CK_ULONG>() => {
                    Err(Ckr::ATTRIBUTE_VALUE_INVALID)
                }
                Some(_) => Ok((*attribute, value.clone())),
            })
            .collect()
    }
}

impl StoredObject {
    /// The value of `attribute`.
    pub fn get(&self, attribute: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.attributes
            .get(&attribute)
            .map(|value| value.0.as_slice())
    }

    /// Sets `attribute`.
    pub fn set(&mut self, attribute: CK_ATTRIBUTE_TYPE, value: Vec<u8>) {
        self.attributes.insert(attribute, Hex(value));
    }

    /// A boolean attribute, `false` when absent.
    pub fn flag(&self, attribute: CK_ATTRIBUTE_TYPE) -> bool {
        matches!(self.get(attribute), Some([byte]) if *byte != 0)
    }

    /// A `CK_ULONG` attribute.
    pub fn number(&self, attribute: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        self.get(attribute).and_then(read_ulong)
    }

    /// `CKA_CLASS`.
    pub fn class(&self) -> Option<CK_OBJECT_CLASS> {
        self.number(CKA_CLASS)
    }

    /// Whether every attribute of `template` has exactly this value here.
    pub fn matches(&self, template: &Template) -> bool {
        template
            .0
            .iter()
            .all(|(attribute, wanted)| match self.get(*attribute) {
                Some(value) if kind_of(*attribute) == Some(Kind::Bool) => {
                    matches!((value, wanted.as_slice()), ([a], [b]) if (*a != 0) == (*b != 0))
                }
                Some(value) => value == wanted.as_slice(),
                None => false,
            })
    }
}

/// The attributes every object of `class` starts with, before its template
/// is applied (PKCS#11 v2.40 section 4 defaults).
pub fn defaults(class: CK_OBJECT_CLASS) -> StoredObject {
    let mut object = StoredObject::default();
    object.set(CKA_CLASS, ulong(class));
    object.set(CKA_TOKEN, boolean(false));
    object.set(CKA_PRIVATE, boolean(class == CKO_PRIVATE_KEY));
    object.set(CKA_MODIFIABLE, boolean(true));
    object.set(CKA_COPYABLE, boolean(true));
    object.set(CKA_DESTROYABLE, boolean(true));
    object.set(CKA_LABEL, Vec::new());
    match class {
        CKO_PUBLIC_KEY | CKO_PRIVATE_KEY => {
            object.set(CKA_ID, Vec::new());
            object.set(CKA_START_DATE, Vec::new());
            object.set(CKA_END_DATE, Vec::new());
            object.set(CKA_DERIVE, boolean(false));
            object.set(CKA_LOCAL, boolean(false));
            object.set(CKA_KEY_GEN_MECHANISM, ulong(CK_UNAVAILABLE_INFORMATION));
            object.set(CKA_SUBJECT, Vec::new());
            if class == CKO_PUBLIC_KEY {
                object.set(CKA_ENCRYPT, boolean(false));
                object.set(CKA_VERIFY, boolean(true));
                object.set(CKA_VERIFY_RECOVER, boolean(false));
                object.set(CKA_WRAP, boolean(false));
                object.set(CKA_TRUSTED, boolean(false));
            } else {
                object.set(CKA_SENSITIVE, boolean(true));
                object.set(CKA_DECRYPT, boolean(false));
                object.set(CKA_SIGN, boolean(true));
                object.set(CKA_SIGN_RECOVER, boolean(false));
                object.set(CKA_UNWRAP, boolean(false));
                object.set(CKA_EXTRACTABLE, boolean(false));
                object.set(CKA_WRAP_WITH_TRUSTED, boolean(false));
                object.set(CKA_ALWAYS_AUTHENTICATE, boolean(false));
            }
        }
        CKO_CERTIFICATE => {
            object.set(CKA_CERTIFICATE_TYPE, ulong(CKC_X_509));
            object.set(CKA_TRUSTED, boolean(false));
            object.set(CKA_CERTIFICATE_CATEGORY, ulong(0));
            object.set(CKA_START_DATE, Vec::new());
            object.set(CKA_END_DATE, Vec::new());
            object.set(CKA_SUBJECT, Vec::new());
            object.set(CKA_ID, Vec::new());
            object.set(CKA_ISSUER, Vec::new());
            object.set(CKA_SERIAL_NUMBER, Vec::new());
            object.set(CKA_URL, Vec::new());
            object.set(CKA_HASH_OF_SUBJECT_PUBLIC_KEY, Vec::new());
            object.set(CKA_HASH_OF_ISSUER_PUBLIC_KEY, Vec::new());
            object.set(CKA_JAVA_MIDP_SECURITY_DOMAIN, ulong(0));
        }
        CKO_DATA => {
            object.set(CKA_APPLICATION, Vec::new());
            object.set(CKA_OBJECT_ID, Vec::new());
            object.set(CKA_VALUE, Vec::new());
        }
        _ => {}
    }
    object
}

/// Attributes only the token sets; a template naming them is refused with
/// `CKR_ATTRIBUTE_READ_ONLY`.
pub fn is_token_set(attribute: CK_ATTRIBUTE_TYPE) -> bool {
    matches!(
        attribute,
        CKA_LOCAL | CKA_ALWAYS_SENSITIVE | CKA_NEVER_EXTRACTABLE | CKA_KEY_GEN_MECHANISM
    )
}

/// Applies a creation template on top of `object`'s defaults: refuses
/// token-set attributes and attributes `refused` lists, and fills in the
/// rest.
pub fn apply_template(
    object: &mut StoredObject,
    template: &Template,
    refused: &[CK_ATTRIBUTE_TYPE],
) -> Result<()> {
    for (attribute, value) in template.validated()? {
        if is_token_set(attribute) || refused.contains(&attribute) {
            return Err(Ckr::ATTRIBUTE_READ_ONLY);
        }
        if (attribute == CKA_CLASS || attribute == CKA_KEY_TYPE)
            && object
                .get(attribute)
                .is_some_and(|current| current != value.as_slice())
        {
            return Err(Ckr::TEMPLATE_INCONSISTENT);
        }
        object.set(attribute, value);
    }
    Ok(())
}

/// Checks a `C_SetAttributeValue` change against the rules of PKCS#11
/// v2.40 section 4.4: which attributes may change, and in which direction.
pub fn check_change(
    object: &StoredObject,
    attribute: CK_ATTRIBUTE_TYPE,
    value: &[u8],
) -> Result<()> {
    if !object.flag(CKA_MODIFIABLE) {
        return Err(Ckr::ACTION_PROHIBITED);
    }
    match attribute {
        CKA_LABEL | CKA_ID | CKA_SUBJECT | CKA_START_DATE | CKA_END_DATE | CKA_APPLICATION
        | CKA_DERIVE | CKA_ENCRYPT | CKA_DECRYPT | CKA_SIGN | CKA_VERIFY | CKA_WRAP
        | CKA_UNWRAP | CKA_SIGN_RECOVER | CKA_VERIFY_RECOVER | CKA_ISSUER | CKA_SERIAL_NUMBER
        | CKA_URL => Ok(()),
        // One-way switches: a key can become more protected, never less.
        CKA_SENSITIVE if value == [1] => Ok(()),
        CKA_EXTRACTABLE if value == [0] => Ok(()),
        CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE if value == [0] => Ok(()),
        CKA_VALUE if object.class() == Some(CKO_DATA) => Ok(()),
        _ if kind_of(attribute).is_none() => Err(Ckr::ATTRIBUTE_TYPE_INVALID),
        _ => Err(Ckr::ATTRIBUTE_READ_ONLY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_matches_compares_bools_by_truth() {
        let object = defaults(CKO_PRIVATE_KEY);
        let template = Template(vec![
            (CKA_SIGN, vec![7]),
            (CKA_CLASS, ulong(CKO_PRIVATE_KEY)),
        ]);
        assert!(object.matches(&template));
        let other = Template(vec![(CKA_LABEL, b"x".to_vec())]);
        assert!(!object.matches(&other));
    }

    #[test]
    fn fail_template_with_token_set_or_unknown_attribute() {
        let mut object = defaults(CKO_PRIVATE_KEY);
        let local = Template(vec![(CKA_LOCAL, boolean(true))]);
        assert_eq!(
            apply_template(&mut object, &local, &[]),
            Err(Ckr::ATTRIBUTE_READ_ONLY)
        );
        let unknown = Template(vec![(0x8000_1234, vec![])]);
        assert_eq!(
            apply_template(&mut object, &unknown, &[]),
            Err(Ckr::ATTRIBUTE_TYPE_INVALID)
        );
        let short = Template(vec![(CKA_CLASS, vec![1, 2])]);
        assert_eq!(
            apply_template(&mut object, &short, &[]),
            Err(Ckr::ATTRIBUTE_VALUE_INVALID)
        );
    }

    #[test]
    fn ok_sensitive_only_switches_on() {
        let object = defaults(CKO_PRIVATE_KEY);
        assert_eq!(check_change(&object, CKA_SENSITIVE, &[1]), Ok(()));
        assert_eq!(
            check_change(&object, CKA_SENSITIVE, &[0]),
            Err(Ckr::ATTRIBUTE_READ_ONLY)
        );
        assert_eq!(
            check_change(&object, CKA_EXTRACTABLE, &[1]),
            Err(Ckr::ATTRIBUTE_READ_ONLY)
        );
        assert_eq!(check_change(&object, CKA_LABEL, b"new"), Ok(()));
        assert_eq!(
            check_change(&object, CKA_KEY_TYPE, &ulong(CKK_RSA)),
            Err(Ckr::ATTRIBUTE_READ_ONLY)
        );
    }
}
