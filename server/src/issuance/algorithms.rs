//! Key and signature algorithms certmint accepts, and signature checks.
//!
//! One table maps (signature algorithm, key) to a `ring` verifier; the same
//! function checks a CSR's proof of possession and, after signing, the CA's
//! own signature on a new certificate. Nothing here implements cryptography:
//! `ring` does the arithmetic, `der`/`spki` do the parsing.

use certmint::wire::KeyType;
use const_oid::db::{rfc5912, rfc8410};
use der::asn1::UintRef;
use der::{Decode as _, Sequence};
use ring::signature::{self as ring_sig, VerificationAlgorithm};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};

/// Why a key or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AlgorithmError {
    /// The key algorithm or curve is not one certmint issues for.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// RSA below 2048 bits.
    #[error("RSA key of {bits} bits is too weak (minimum 2048)")]
    WeakKey {
        /// Modulus length.
        bits: usize,
    },
    /// The signature algorithm is unknown or does not fit the key.
    #[error("unsupported signature algorithm {0}")]
    UnsupportedSignatureAlgorithm(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// PKCS#1 RSAPublicKey (RFC 8017 §A.1.1), only to measure the modulus.
#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    #[allow(dead_code)]
    public_exponent: UintRef<'a>,
}

/// Classifies a subject public key.
pub fn key_type(spki: &SubjectPublicKeyInfoOwned) -> Result<KeyType, AlgorithmError> {
    let algorithm = spki.algorithm.oid;
    if algorithm == rfc5912::ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|parameters| parameters.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| AlgorithmError::UnsupportedKey("EC key without a named curve".into()))?;
        return match curve {
            rfc5912::SECP_256_R_1 => Ok(KeyType::EcP256),
            rfc5912::SECP_384_R_1 => Ok(KeyType::EcP384),
            other => Err(AlgorithmError::UnsupportedKey(format!("EC curve {other}"))),
        };
    }
    // The key is copied into the certificate as the CSR encodes it, so its
    // parameters must be the ones RFC 8410 and RFC 3279 prescribe: OpenSSL
    // refuses an Ed25519 key with parameters, and linters flag both.
    if algorithm == rfc8410::ID_ED_25519 {
        if spki.algorithm.parameters.is_some() {
            return Err(AlgorithmError::UnsupportedKey(
                "Ed25519 key with algorithm parameters (RFC 8410: they must be absent)".into(),
            ));
        }
        return Ok(KeyType::Ed25519);
    }
    if algorithm == rfc5912::RSA_ENCRYPTION {
        let null_parameters = spki
            .algorithm
            .parameters
            .as_ref()
            .is_some_and(|parameters| parameters.is_null());
        if !null_parameters {
            return Err(AlgorithmError::UnsupportedKey(
                "RSA key whose algorithm parameters are not NULL (RFC 3279)".into(),
            ));
        }
        let key_bytes = spki.subject_public_key.as_bytes().ok_or_else(|| {
            AlgorithmError::UnsupportedKey("RSA key bits are not whole bytes".into())
        })?;
        let key = RsaPublicKey::from_der(key_bytes)
            .map_err(|_| AlgorithmError::UnsupportedKey("RSA public key does not parse".into()))?;
        let modulus = key.modulus.as_bytes();
        let bits = modulus.len() * 8 - modulus.first().map_or(8, |b| b.leading_zeros() as usize);
        return match bits {
            0..2048 => Err(AlgorithmError::WeakKey { bits }),
            2048 => Ok(KeyType::Rsa2048),
            3072 => Ok(KeyType::Rsa3072),
            4096 => Ok(KeyType::Rsa4096),
            other => Err(AlgorithmError::UnsupportedKey(format!(
                "RSA modulus of {other} bits (use 2048, 3072 or 4096)"
            ))),
        };
    }
    Err(AlgorithmError::UnsupportedKey(format!(
        "key algorithm {algorithm}"
    )))
}

/// Verifies `signature` over `message` with the key in `spki`, using the
/// signature algorithm named by `algorithm`.
pub fn verify_signature(
    spki: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), AlgorithmError> {
    let key_type = key_type(spki)?;
    let verifier = verifier_for(key_type, algorithm)?;
    let public_key = spki
        .subject_public_key
        .as_bytes()
        .ok_or(AlgorithmError::BadSignature)?;
    ring_sig::UnparsedPublicKey::new(verifier, public_key)
        .verify(message, signature)
        .map_err(|_| AlgorithmError::BadSignature)
}

fn verifier_for(
    key_type: KeyType,
    algorithm: &AlgorithmIdentifierOwned,
) -> Result<&'static dyn VerificationAlgorithm, AlgorithmError> {
    let oid = algorithm.oid;
    let unsupported =
        || AlgorithmError::UnsupportedSignatureAlgorithm(format!("{oid} with a {key_type} key"));
    let verifier: &'static dyn VerificationAlgorithm = match (key_type, oid) {
        (KeyType::EcP256, rfc5912::ECDSA_WITH_SHA_256) => &ring_sig::ECDSA_P256_SHA256_ASN1,
        (KeyType::EcP256, rfc5912::ECDSA_WITH_SHA_384) => &ring_sig::ECDSA_P256_SHA384_ASN1,
        (KeyType::EcP384, rfc5912::ECDSA_WITH_SHA_256) => &ring_sig::ECDSA_P384_SHA256_ASN1,
        (KeyType::EcP384, rfc5912::ECDSA_WITH_SHA_384) => &ring_sig::ECDSA_P384_SHA384_ASN1,
        (KeyType::Ed25519, rfc8410::ID_ED_25519) => &ring_sig::ED25519,
        (
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096,
            rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
        ) => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        (
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096,
            rfc5912::SHA_384_WITH_RSA_ENCRYPTION,
        ) => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        (
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096,
            rfc5912::SHA_512_WITH_RSA_ENCRYPTION,
        ) => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        _ => return Err(unsupported()),
    };
    // ECDSA and RSA PKCS#1 identifiers must have absent or NULL parameters;
    // Ed25519 must have none. Anything else is a malformed identifier.
    let parameters_ok = match &algorithm.parameters {
        None => true,
        Some(any) => any.is_null() && !matches!(key_type, KeyType::Ed25519),
    };
    if !parameters_ok {
        return Err(unsupported());
    }
    Ok(verifier)
}

#[cfg(test)]
mod tests {
    use der::asn1::{Any, BitString};
    use der::Encode as _;

    use super::*;

    fn spki(
        oid: ObjectIdentifier,
        parameters: Option<Any>,
        key: &[u8],
    ) -> SubjectPublicKeyInfoOwned {
        SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned { oid, parameters },
            subject_public_key: BitString::from_bytes(key).expect("bits"),
        }
    }

    fn rsa_2048_key() -> Vec<u8> {
        let modulus = [0xc5_u8; 256];
        RsaPublicKey {
            modulus: UintRef::new(&modulus).expect("modulus"),
            public_exponent: UintRef::new(&[0x01, 0x00, 0x01]).expect("exponent"),
        }
        .to_der()
        .expect("encodes")
    }

    #[test]
    fn key_parameters_must_be_the_prescribed_ones() {
        let ed25519 = [7_u8; 32];
        assert_eq!(
            key_type(&spki(rfc8410::ID_ED_25519, None, &ed25519)),
            Ok(KeyType::Ed25519)
        );
        assert!(matches!(
            key_type(&spki(rfc8410::ID_ED_25519, Some(Any::null()), &ed25519)),
            Err(AlgorithmError::UnsupportedKey(_))
        ));
        let rsa = rsa_2048_key();
        assert_eq!(
            key_type(&spki(rfc5912::RSA_ENCRYPTION, Some(Any::null()), &rsa)),
            Ok(KeyType::Rsa2048)
        );
        assert!(matches!(
            key_type(&spki(rfc5912::RSA_ENCRYPTION, None, &rsa)),
            Err(AlgorithmError::UnsupportedKey(_))
        ));
        let not_null = Any::encode_from(&rfc5912::SECP_256_R_1).expect("oid");
        assert!(matches!(
            key_type(&spki(rfc5912::RSA_ENCRYPTION, Some(not_null), &rsa)),
            Err(AlgorithmError::UnsupportedKey(_))
        ));
    }
}
