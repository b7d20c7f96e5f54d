//! Key templates and the DER that surrounds keys: EC domain parameters,
//! SubjectPublicKeyInfo, signature AlgorithmIdentifiers, and the ECDSA
//! `r||s` → `Ecdsa-Sig-Value` conversion.
//!
//! Every structure is built with `der`/`spki` types and `const-oid`
//! constants; this file contains no hand-written DER bytes. Nothing here
//! touches a session: these are pure functions over attribute values, so
//! they are unit-tested without a token.

use certmint::wire::KeyType;
use const_oid::db::{rfc5912, rfc8410};
use const_oid::ObjectIdentifier;
use cryptoki::object::{Attribute, AttributeType};
use der::asn1::{Any, BitString, OctetStringRef, PrintableStringRef, UintRef};
use der::{Decode, Encode, Sequence};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use super::error::{encoding, HsmError};

/// The RSA public exponent certmint generates: F4 = 65537, big-endian.
const RSA_PUBLIC_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];

/// The family a [`KeyType`] belongs to, which decides mechanisms and
/// encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    /// ECDSA over a NIST curve, with the curve's OID and field size.
    Ecdsa {
        /// `namedCurve` OID.
        curve: ObjectIdentifier,
        /// Byte length of one coordinate (and of `r` and of `s`).
        field_len: usize,
    },
    /// Ed25519 (pure EdDSA).
    Ed25519,
    /// RSA with a modulus of this many bits.
    Rsa {
        /// Modulus size.
        modulus_bits: usize,
    },
}

impl Family {
    pub(super) fn of(key_type: KeyType) -> Family {
        match key_type {
            KeyType::EcP256 => Family::Ecdsa {
                curve: rfc5912::SECP_256_R_1,
                field_len: 32,
            },
            KeyType::EcP384 => Family::Ecdsa {
                curve: rfc5912::SECP_384_R_1,
                field_len: 48,
            },
            KeyType::Ed25519 => Family::Ed25519,
            KeyType::Rsa2048 => Family::Rsa { modulus_bits: 2048 },
            KeyType::Rsa3072 => Family::Rsa { modulus_bits: 3072 },
            KeyType::Rsa4096 => Family::Rsa { modulus_bits: 4096 },
        }
    }
}

/// The public and private templates for `C_GenerateKeyPair`.
///
/// Both halves get the same `CKA_LABEL` and `CKA_ID` so either can be found
/// from the other. The private half is a token object that is sensitive,
/// never extractable, private (needs login to see) and may only sign.
pub(super) fn key_pair_templates(
    key_type: KeyType,
    label: &str,
    id: &[u8],
) -> Result<(Vec<Attribute>, Vec<Attribute>), HsmError> {
    let mut public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    match Family::of(key_type) {
        Family::Ecdsa { curve, .. } => public.push(Attribute::EcParams(
            curve.to_der().map_err(encoding("EC parameters"))?,
        )),
        Family::Ed25519 => public.push(Attribute::EcParams(
            rfc8410::ID_ED_25519
                .to_der()
                .map_err(encoding("Edwards curve parameters"))?,
        )),
        Family::Rsa { modulus_bits } => {
            public.push(Attribute::ModulusBits((modulus_bits as u64).into()));
            public.push(Attribute::PublicExponent(RSA_PUBLIC_EXPONENT.to_vec()));
        }
    }
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        // A CA key signs and does nothing else: no decryption, no key
        // unwrapping (SoftHSM2 defaults CKA_UNWRAP to true), no derivation.
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    Ok((public, private))
}

/// Attributes read from the public key object to rebuild its SPKI.
pub(super) const PUBLIC_KEY_ATTRIBUTES: [AttributeType; 5] = [
    AttributeType::KeyType,
    AttributeType::EcParams,
    AttributeType::EcPoint,
    AttributeType::Modulus,
    AttributeType::PublicExponent,
];

/// A public key as read from the token, already matched to a [`KeyType`].
pub(super) struct PublicKey {
    pub(super) key_type: KeyType,
    /// DER SubjectPublicKeyInfo.
    pub(super) subject_public_key_info: Vec<u8>,
}

impl PublicKey {
    /// Builds the SPKI from the attributes of a public key object (fetched
    /// with [`PUBLIC_KEY_ATTRIBUTES`]; unavailable ones are simply absent).
    pub(super) fn from_attributes(
        label: &str,
        attributes: &[Attribute],
    ) -> Result<PublicKey, HsmError> {
        let unusable = |reason| HsmError::UnusableKey {
            label: label.to_owned(),
            reason,
        };
        let mut token_key_type = None;
        let mut ec_params = None;
        let mut ec_point = None;
        let mut modulus = None;
        let mut public_exponent = None;
        for attribute in attributes {
            match attribute {
                Attribute::KeyType(kind) => token_key_type = Some(*kind),
                Attribute::EcParams(bytes) => ec_params = Some(bytes.as_slice()),
                Attribute::EcPoint(bytes) => ec_point = Some(bytes.as_slice()),
                Attribute::Modulus(bytes) => modulus = Some(bytes.as_slice()),
                Attribute::PublicExponent(bytes) => public_exponent = Some(bytes.as_slice()),
                _ => {}
            }
        }
        let token_key_type = token_key_type.ok_or_else(|| unusable("no CKA_KEY_TYPE"))?;

        if token_key_type == cryptoki::object::KeyType::RSA {
            let modulus = modulus.ok_or_else(|| unusable("RSA key without CKA_MODULUS"))?;
            let public_exponent =
                public_exponent.ok_or_else(|| unusable("RSA key without CKA_PUBLIC_EXPONENT"))?;
            let key_type = rsa_key_type(modulus)
                .ok_or_else(|| unusable("RSA modulus is not 2048, 3072 or 4096 bits"))?;
            return Ok(PublicKey {
                key_type,
                subject_public_key_info: rsa_subject_public_key_info(modulus, public_exponent)?,
            });
        }

        let ec_params = ec_params.ok_or_else(|| unusable("EC key without CKA_EC_PARAMS"))?;
        let ec_point = ec_point.ok_or_else(|| unusable("EC key without CKA_EC_POINT"))?;
        let key_type = if token_key_type == cryptoki::object::KeyType::EC {
            nist_curve_key_type(ec_params)
                .ok_or_else(|| unusable("EC curve is not P-256 or P-384"))?
        } else if token_key_type == cryptoki::object::KeyType::EC_EDWARDS {
            if !is_ed25519_params(ec_params) {
                return Err(unusable("Edwards curve is not Ed25519"));
            }
            KeyType::Ed25519
        } else {
            return Err(unusable("key type is neither RSA, EC nor EC_EDWARDS"));
        };
        let expected_len = match Family::of(key_type) {
            // Uncompressed point: 0x04 || x || y.
            Family::Ecdsa { field_len, .. } => 1 + 2 * field_len,
            Family::Ed25519 => 32,
            Family::Rsa { .. } => return Err(unusable("EC attributes on an RSA key type")),
        };
        let point = public_point(ec_point, expected_len)
            .ok_or_else(|| unusable("CKA_EC_POINT is not a point of the expected size"))?;
        Ok(PublicKey {
            key_type,
            subject_public_key_info: point_subject_public_key_info(key_type, point)?,
        })
    }
}

/// Maps DER `namedCurve` parameters to a NIST curve key type.
fn nist_curve_key_type(ec_params: &[u8]) -> Option<KeyType> {
    let curve = ObjectIdentifier::from_der(ec_params).ok()?;
    if curve == rfc5912::SECP_256_R_1 {
        Some(KeyType::EcP256)
    } else if curve == rfc5912::SECP_384_R_1 {
        Some(KeyType::EcP384)
    } else {
        None
    }
}

/// True for Edwards parameters naming Ed25519: the RFC 8410 OID, or the
/// PKCS#11 3.0 `PrintableString "edwards25519"` some tokens use.
fn is_ed25519_params(ec_params: &[u8]) -> bool {
    if let Ok(curve) = ObjectIdentifier::from_der(ec_params) {
        return curve == rfc8410::ID_ED_25519;
    }
    PrintableStringRef::from_der(ec_params)
        .map(|name| name.as_str() == "edwards25519")
        .unwrap_or(false)
}

/// Extracts the public point from `CKA_EC_POINT`.
///
/// The specification says the value is a DER OCTET STRING wrapping the
/// point (SoftHSM2 does this); some tokens return the raw point. Accept
/// either, and insist on the expected length so a raw point that happens to
/// parse as DER is not misread.
fn public_point(ec_point: &[u8], expected_len: usize) -> Option<&[u8]> {
    if let Ok(wrapped) = <&OctetStringRef>::from_der(ec_point) {
        if wrapped.as_bytes().len() == expected_len {
            return Some(wrapped.as_bytes());
        }
    }
    (ec_point.len() == expected_len).then_some(ec_point)
}

/// The RSA key type for a big-endian modulus, by its bit length.
fn rsa_key_type(modulus: &[u8]) -> Option<KeyType> {
    let significant = match modulus.iter().position(|byte| *byte != 0) {
        Some(first) => &modulus[first..],
        None => return None,
    };
    let bits = significant.len() * 8 - significant[0].leading_zeros() as usize;
    match bits {
        2048 => Some(KeyType::Rsa2048),
        3072 => Some(KeyType::Rsa3072),
        4096 => Some(KeyType::Rsa4096),
        _ => None,
    }
}

/// PKCS#1 `RSAPublicKey` (RFC 8017 appendix A.1.1).
#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// `Ecdsa-Sig-Value` (RFC 3279 section 2.2.3), the X.509 form of an ECDSA
/// signature.
#[derive(Sequence)]
struct EcdsaSignatureValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

fn rsa_subject_public_key_info(
    modulus: &[u8],
    public_exponent: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let context = "RSA SubjectPublicKeyInfo";
    let rsa_public_key = RsaPublicKey {
        modulus: UintRef::new(modulus).map_err(encoding(context))?,
        public_exponent: UintRef::new(public_exponent).map_err(encoding(context))?,
    }
    .to_der()
    .map_err(encoding(context))?;
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: rfc5912::RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        subject_public_key: BitString::from_bytes(&rsa_public_key).map_err(encoding(context))?,
    }
    .to_der()
    .map_err(encoding(context))
}

fn point_subject_public_key_info(key_type: KeyType, point: &[u8]) -> Result<Vec<u8>, HsmError> {
    let context = "EC SubjectPublicKeyInfo";
    let algorithm = match Family::of(key_type) {
        Family::Ecdsa { curve, .. } => AlgorithmIdentifierOwned {
            oid: rfc5912::ID_EC_PUBLIC_KEY,
            parameters: Some(Any::encode_from(&curve).map_err(encoding(context))?),
        },
        // RFC 8410 section 3: parameters MUST be absent.
        Family::Ed25519 => AlgorithmIdentifierOwned {
            oid: rfc8410::ID_ED_25519,
            parameters: None,
        },
        Family::Rsa { .. } => {
            return Err(HsmError::UnsupportedKeyType { key_type });
        }
    };
    SubjectPublicKeyInfoOwned {
        algorithm,
        subject_public_key: BitString::from_bytes(point).map_err(encoding(context))?,
    }
    .to_der()
    .map_err(encoding(context))
}

/// DER AlgorithmIdentifier of the X.509 signature a key of this type makes.
///
/// ECDSA (RFC 5758) and Ed25519 (RFC 8410) have absent parameters;
/// sha256WithRSAEncryption has NULL parameters (RFC 4055 section 5).
pub(super) fn signature_algorithm(key_type: KeyType) -> Result<Vec<u8>, HsmError> {
    let algorithm = match Family::of(key_type) {
        Family::Ecdsa { field_len: 32, .. } => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        Family::Ecdsa { .. } => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_384,
            parameters: None,
        },
        Family::Ed25519 => AlgorithmIdentifierOwned {
            oid: rfc8410::ID_ED_25519,
            parameters: None,
        },
        Family::Rsa { .. } => AlgorithmIdentifierOwned {
            oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
    };
    algorithm
        .to_der()
        .map_err(encoding("signature AlgorithmIdentifier"))
}

/// Converts a PKCS#11 ECDSA signature (`r || s`, each `field_len` bytes)
/// into a DER `Ecdsa-Sig-Value`. Returns `None` if the length is wrong.
pub(super) fn ecdsa_signature_to_der(
    raw: &[u8],
    field_len: usize,
) -> Option<Result<Vec<u8>, HsmError>> {
    if raw.len() != 2 * field_len {
        return None;
    }
    let (r, s) = raw.split_at(field_len);
    let context = "ECDSA signature";
    Some((|| {
        EcdsaSignatureValue {
            r: UintRef::new(r).map_err(encoding(context))?,
            s: UintRef::new(s).map_err(encoding(context))?,
        }
        .to_der()
        .map_err(encoding(context))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signature_to_der_pads_high_bit_and_strips_zeros() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading 0x00 in DER
        raw[31] = 1;
        raw[63] = 7; // s = 7, leading zeros stripped
        let der = ecdsa_signature_to_der(&raw, 32)
            .expect("length is right")
            .expect("encodes");
        let decoded = EcdsaSignatureValue::from_der(&der).expect("decodes");
        assert_eq!(decoded.r.as_bytes().len(), 32);
        assert_eq!(decoded.s.as_bytes(), &[7]);
        // SEQUENCE(0x30) len, INTEGER(0x02) 33 bytes with leading 0x00.
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
    }

    #[test]
    fn ecdsa_signature_to_der_refuses_wrong_length() {
        assert!(ecdsa_signature_to_der(&[1; 63], 32).is_none());
    }

    #[test]
    fn public_point_accepts_wrapped_and_raw() {
        let mut point = vec![0x04u8; 65];
        // 0x04 0x3f ...: the raw point also parses as a 63-byte DER OCTET
        // STRING, which must not be mistaken for the wrapped form.
        point[1] = 0x3f;
        let wrapped = OctetStringRef::new(&point)
            .expect("fits")
            .to_der()
            .expect("encodes");
        assert_eq!(public_point(&wrapped, 65), Some(point.as_slice()));
        assert_eq!(public_point(&point, 65), Some(point.as_slice()));
        assert_eq!(public_point(&point[..64], 65), None);
    }

    #[test]
    fn rsa_key_type_counts_bits() {
        let mut modulus = vec![0u8; 257];
        modulus[1] = 0x80; // leading zero byte then 2048 significant bits
        assert_eq!(rsa_key_type(&modulus), Some(KeyType::Rsa2048));
        modulus[1] = 0x40;
        assert_eq!(rsa_key_type(&modulus), None);
    }

    #[test]
    fn signature_algorithms_have_the_right_parameters() {
        for key_type in KeyType::ALL {
            let der = signature_algorithm(key_type).expect("encodes");
            let algorithm = AlgorithmIdentifierOwned::from_der(&der).expect("decodes");
            match Family::of(key_type) {
                Family::Rsa { .. } => {
                    assert_eq!(algorithm.oid, rfc5912::SHA_256_WITH_RSA_ENCRYPTION);
                    assert_eq!(algorithm.parameters, Some(Any::null()));
                }
                _ => assert_eq!(algorithm.parameters, None, "{key_type}"),
            }
        }
    }

    #[test]
    fn ed25519_params_accept_oid_and_printable_string() {
        let oid = rfc8410::ID_ED_25519.to_der().expect("encodes");
        assert!(is_ed25519_params(&oid));
        let name = PrintableStringRef::new("edwards25519")
            .expect("printable")
            .to_der()
            .expect("encodes");
        assert!(is_ed25519_params(&name));
        let p256 = rfc5912::SECP_256_R_1.to_der().expect("encodes");
        assert!(!is_ed25519_params(&p256));
    }
}
