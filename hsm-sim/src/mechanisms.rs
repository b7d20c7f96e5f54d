//! Mechanisms: key pair generation, signatures, verification, digests and
//! randomness, all computed by the system libcrypto through the `openssl`
//! crate.
//!
//! Why OpenSSL rather than RustCrypto or ring: one family covers every
//! primitive the module needs (EC P-256/P-384, Ed25519, RSA 2048–4096 key
//! generation, PKCS#1 v1.5 and PSS, SHA-1/SHA-2, PBKDF2, AES-GCM, a CSPRNG);
//! ring cannot generate RSA keys, and pure-Rust RSA key generation in an
//! unoptimised debug build takes far too long for test suites that make
//! RSA-4096 CA keys. The C library is optimised whatever the Cargo profile,
//! and the workspace already links it (pq-sys). Nothing here implements a
//! primitive itself.
//!
//! This module knows nothing of sessions or objects: it maps mechanism
//! numbers and parameters to operations and runs them.

use std::borrow::Cow;
use std::sync::Arc;

use cryptoki_sys::*;
use der::asn1::{ObjectIdentifier, OctetString, OctetStringRef, PrintableStringRef};
use der::{Decode, Encode};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint, PointConversionForm};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::md::{Md, MdRef};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::{Padding, Rsa};
use openssl::sign::RsaPssSaltlen;
use openssl::sign::{Signer, Verifier};
use zeroize::Zeroizing;

use crate::error::{Ckr, Result};
use crate::object::{boolean, ulong, Template};

const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Smallest and largest RSA modulus generated, in bits.
pub const RSA_BITS: (CK_ULONG, CK_ULONG) = (2048, 4096);
/// Smallest and largest EC field, in bits.
const EC_BITS: (CK_ULONG, CK_ULONG) = (256, 384);

/// Fills `buffer` from the CSPRNG.
pub fn random_bytes(buffer: &mut [u8]) -> Result<()> {
    openssl::rand::rand_bytes(buffer).map_err(|_| Ckr::GENERAL_ERROR)
}

/// A uniform number in `[0, 1)` from the CSPRNG (0 if it fails).
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if random_bytes(&mut bytes).is_err() {
        return 0.0;
    }
    (u64::from_ne_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Every mechanism of the module: `(type, min key size, max key size, flags)`.
pub fn mechanism_list() -> Vec<(CK_MECHANISM_TYPE, CK_ULONG, CK_ULONG, CK_FLAGS)> {
    let ec_flags = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
    let sign = CKF_SIGN | CKF_VERIFY;
    let mut list = vec![
        (
            CKM_EC_KEY_PAIR_GEN,
            EC_BITS.0,
            EC_BITS.1,
            CKF_GENERATE_KEY_PAIR | ec_flags,
        ),
        (CKM_EC_EDWARDS_KEY_PAIR_GEN, 256, 256, CKF_GENERATE_KEY_PAIR),
        (CKM_EDDSA, 256, 256, sign),
        (
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            RSA_BITS.0,
            RSA_BITS.1,
            CKF_GENERATE_KEY_PAIR,
        ),
    ];
    for mechanism in [
        CKM_ECDSA,
        CKM_ECDSA_SHA1,
        CKM_ECDSA_SHA224,
        CKM_ECDSA_SHA256,
        CKM_ECDSA_SHA384,
        CKM_ECDSA_SHA512,
    ] {
        list.push((mechanism, EC_BITS.0, EC_BITS.1, sign | ec_flags));
    }
    for mechanism in [
        CKM_RSA_PKCS,
        CKM_SHA1_RSA_PKCS,
        CKM_SHA224_RSA_PKCS,
        CKM_SHA256_RSA_PKCS,
        CKM_SHA384_RSA_PKCS,
        CKM_SHA512_RSA_PKCS,
        CKM_RSA_PKCS_PSS,
        CKM_SHA1_RSA_PKCS_PSS,
        CKM_SHA224_RSA_PKCS_PSS,
        CKM_SHA256_RSA_PKCS_PSS,
        CKM_SHA384_RSA_PKCS_PSS,
        CKM_SHA512_RSA_PKCS_PSS,
    ] {
        list.push((mechanism, RSA_BITS.0, RSA_BITS.1, sign));
    }
    for mechanism in [CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512] {
        list.push((mechanism, 0, 0, CKF_DIGEST));
    }
    list
}

/// A hash function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    /// SHA-1 (for compatibility only).
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Digest {
    /// The digest of a `CKM_SHA*` digest mechanism.
    pub fn of_mechanism(mechanism: CK_MECHANISM_TYPE) -> Option<Digest> {
        Some(match mechanism {
            CKM_SHA_1 => Digest::Sha1,
            CKM_SHA224 => Digest::Sha224,
            CKM_SHA256 => Digest::Sha256,
            CKM_SHA384 => Digest::Sha384,
            CKM_SHA512 => Digest::Sha512,
            _ => return None,
        })
    }

    fn of_mgf(mgf: CK_RSA_PKCS_MGF_TYPE) -> Option<Digest> {
        Some(match mgf {
            CKG_MGF1_SHA1 => Digest::Sha1,
            CKG_MGF1_SHA224 => Digest::Sha224,
            CKG_MGF1_SHA256 => Digest::Sha256,
            CKG_MGF1_SHA384 => Digest::Sha384,
            CKG_MGF1_SHA512 => Digest::Sha512,
            _ => return None,
        })
    }

    fn message_digest(self) -> MessageDigest {
        match self {
            Digest::Sha1 => MessageDigest::sha1(),
            Digest::Sha224 => MessageDigest::sha224(),
            Digest::Sha256 => MessageDigest::sha256(),
            Digest::Sha384 => MessageDigest::sha384(),
            Digest::Sha512 => MessageDigest::sha512(),
        }
    }

    fn md(self) -> &'static MdRef {
        match self {
            Digest::Sha1 => Md::sha1(),
            Digest::Sha224 => Md::sha224(),
            Digest::Sha256 => Md::sha256(),
            Digest::Sha384 => Md::sha384(),
            Digest::Sha512 => Md::sha512(),
        }
    }

    /// Output length in bytes.
    pub fn output_len(self) -> usize {
        self.message_digest().size()
    }

    /// Hashes `data`.
    pub fn hash(self, data: &[u8]) -> Result<Vec<u8>> {
        openssl::hash::hash(self.message_digest(), data)
            .map(|digest| digest.to_vec())
            .map_err(|_| Ckr::GENERAL_ERROR)
    }
}

/// A mechanism parameter, copied out of the application's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Param {
    /// No parameter (`pParameter` null or `ulParameterLen` 0).
    #[default]
    None,
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss {
        /// `hashAlg`.
        hash: CK_MECHANISM_TYPE,
        /// `mgf`.
        mgf: CK_RSA_PKCS_MGF_TYPE,
        /// `sLen`.
        salt_len: CK_ULONG,
    },
    /// `CK_EDDSA_PARAMS`.
    Eddsa {
        /// `phFlag`.
        prehash: bool,
        /// The context data.
        context: Vec<u8>,
    },
    /// Any other parameter, as bytes.
    Other(Vec<u8>),
}

/// A signature scheme, resolved from a mechanism and a key type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// ECDSA; `prehash` hashes the data first, `None` signs it as a hash.
    Ecdsa {
        /// The hash applied to the data, for `CKM_ECDSA_SHA*`.
        prehash: Option<Digest>,
    },
    /// RSA PKCS#1 v1.5; `None` signs a caller-built `DigestInfo`.
    RsaPkcs {
        /// The hash applied to the data, for `CKM_SHA*_RSA_PKCS`.
        prehash: Option<Digest>,
    },
    /// RSA-PSS.
    RsaPss {
        /// Whether the data is hashed first (`CKM_SHA*_RSA_PKCS_PSS`).
        prehash: bool,
        /// The PSS hash.
        hash: Digest,
        /// The MGF1 hash.
        mgf: Digest,
        /// Salt length in bytes.
        salt_len: usize,
    },
    /// Pure Ed25519.
    Eddsa,
}

impl Scheme {
    /// Resolves `mechanism` with `param` for a key of `key_type`.
    pub fn resolve(
        mechanism: CK_MECHANISM_TYPE,
        param: &Param,
        key_type: CK_KEY_TYPE,
    ) -> Result<Scheme> {
        let no_param = matches!(param, Param::None)
            || matches!(param, Param::Other(bytes) if bytes.is_empty());
        let (scheme, wanted_key) = match mechanism {
            CKM_ECDSA => (Scheme::Ecdsa { prehash: None }, CKK_EC),
            CKM_ECDSA_SHA1 => (
                Scheme::Ecdsa {
                    prehash: Some(Digest::Sha1),
                },
                CKK_EC,
            ),
            CKM_ECDSA_SHA224 => (
                Scheme::Ecdsa {
                    prehash: Some(Digest::Sha224),
                },
                CKK_EC,
            ),
            CKM_ECDSA_SHA256 => (
                Scheme::Ecdsa {
                    prehash: Some(Digest::Sha256),
                },
                CKK_EC,
            ),
            CKM_ECDSA_SHA384 => (
                Scheme::Ecdsa {
                    prehash: Some(Digest::Sha384),
                },
                CKK_EC,
            ),
            CKM_ECDSA_SHA512 => (
                Scheme::Ecdsa {
                    prehash: Some(Digest::Sha512),
                },
                CKK_EC,
            ),
            CKM_RSA_PKCS => (Scheme::RsaPkcs { prehash: None }, CKK_RSA),
            CKM_SHA1_RSA_PKCS => (
                Scheme::RsaPkcs {
                    prehash: Some(Digest::Sha1),
                },
                CKK_RSA,
            ),
            CKM_SHA224_RSA_PKCS => (
                Scheme::RsaPkcs {
                    prehash: Some(Digest::Sha224),
                },
                CKK_RSA,
            ),
            CKM_SHA256_RSA_PKCS => (
                Scheme::RsaPkcs {
                    prehash: Some(Digest::Sha256),
                },
                CKK_RSA,
            ),
            CKM_SHA384_RSA_PKCS => (
                Scheme::RsaPkcs {
                    prehash: Some(Digest::Sha384),
                },
                CKK_RSA,
            ),
            CKM_SHA512_RSA_PKCS => (
                Scheme::RsaPkcs {
                    prehash: Some(Digest::Sha512),
                },
                CKK_RSA,
            ),
            mechanism if is_pss(mechanism) => {
                let Param::Pss {
                    hash,
                    mgf,
                    salt_len,
                } = param
                else {
                    return Err(Ckr::MECHANISM_PARAM_INVALID);
                };
                let hash_digest =
                    Digest::of_mechanism(*hash).ok_or(Ckr::MECHANISM_PARAM_INVALID)?;
                let fixed = match mechanism {
                    CKM_SHA1_RSA_PKCS_PSS => Some(CKM_SHA_1),
                    CKM_SHA224_RSA_PKCS_PSS => Some(CKM_SHA224),
                    CKM_SHA256_RSA_PKCS_PSS => Some(CKM_SHA256),
                    CKM_SHA384_RSA_PKCS_PSS => Some(CKM_SHA384),
                    CKM_SHA512_RSA_PKCS_PSS => Some(CKM_SHA512),
                    _ => None,
                };
                if fixed.is_some_and(|fixed| fixed != *hash) {
                    return Err(Ckr::MECHANISM_PARAM_INVALID);
                }
                let scheme = Scheme::RsaPss {
                    prehash: fixed.is_some(),
                    hash: hash_digest,
                    mgf: Digest::of_mgf(*mgf).ok_or(Ckr::MECHANISM_PARAM_INVALID)?,
                    salt_len: usize::try_from(*salt_len)
                        .map_err(|_| Ckr::MECHANISM_PARAM_INVALID)?,
                };
                if key_type != CKK_RSA {
                    return Err(Ckr::KEY_TYPE_INCONSISTENT);
                }
                return Ok(scheme);
            }
            CKM_EDDSA => {
                match param {
                    Param::Eddsa {
                        prehash: false,
                        context,
                    } if context.is_empty() => {}
                    _ if no_param => {}
                    _ => return Err(Ckr::MECHANISM_PARAM_INVALID),
                }
                if key_type != CKK_EC_EDWARDS {
                    return Err(Ckr::KEY_TYPE_INCONSISTENT);
                }
                return Ok(Scheme::Eddsa);
            }
            _ => return Err(Ckr::MECHANISM_INVALID),
        };
        if !no_param {
            return Err(Ckr::MECHANISM_PARAM_INVALID);
        }
        if key_type != wanted_key {
            return Err(Ckr::KEY_TYPE_INCONSISTENT);
        }
        Ok(scheme)
    }

    /// Whether the data may arrive in several parts (`C_SignUpdate`).
    pub fn multi_part(self) -> bool {
        match self {
            Scheme::Ecdsa { prehash } | Scheme::RsaPkcs { prehash } => prehash.is_some(),
            Scheme::RsaPss { prehash, .. } => prehash,
            Scheme::Eddsa => false,
        }
    }
}

/// The length of a signature by `key` (its maximum, for RSA its exact size).
pub fn signature_len<T: openssl::pkey::HasPublic>(key: &PKey<T>) -> Result<usize> {
    match key.id() {
        Id::EC => {
            let ec = key.ec_key().map_err(|_| Ckr::GENERAL_ERROR)?;
            let bits = ec.group().order_bits();
            Ok(2 * (bits as usize).div_ceil(8))
        }
        Id::ED25519 => Ok(64),
        _ => Ok(key.size()),
    }
}

/// True for the RSA-PSS mechanisms, which take `CK_RSA_PKCS_PSS_PARAMS`.
pub fn is_pss(mechanism: CK_MECHANISM_TYPE) -> bool {
    matches!(
        mechanism,
        CKM_RSA_PKCS_PSS
            | CKM_SHA1_RSA_PKCS_PSS
            | CKM_SHA224_RSA_PKCS_PSS
            | CKM_SHA256_RSA_PKCS_PSS
            | CKM_SHA384_RSA_PKCS_PSS
            | CKM_SHA512_RSA_PKCS_PSS
    )
}

/// What ECDSA signs or verifies: `data` itself (`CKM_ECDSA`, a digest the
/// caller computed) or its hash (`CKM_ECDSA_SHA*`).
fn ecdsa_input(prehash: Option<Digest>, data: &[u8]) -> Result<Cow<'_, [u8]>> {
    Ok(match prehash {
        Some(digest) => Cow::Owned(digest.hash(data)?),
        None => Cow::Borrowed(data),
    })
}

/// The PSS salt length as OpenSSL takes it.
/// RSA-PSS over a digest the caller computed: the parameters of `context`,
/// already initialised to sign or to verify.
fn set_pss_digest_parameters<T>(
    context: &mut PkeyCtx<T>,
    hash: Digest,
    mgf: Digest,
    salt: RsaPssSaltlen,
) -> Result<()> {
    let failed = |_| Ckr::FUNCTION_FAILED;
    context
        .set_rsa_padding(Padding::PKCS1_PSS)
        .map_err(failed)?;
    context.set_signature_md(hash.md()).map_err(failed)?;
    context.set_rsa_mgf1_md(mgf.md()).map_err(failed)?;
    context.set_rsa_pss_saltlen(salt).map_err(failed)
}

fn pss_salt(salt_len: usize) -> Result<RsaPssSaltlen> {
    i32::try_from(salt_len)
        .map(RsaPssSaltlen::custom)
        .map_err(|_| Ckr::MECHANISM_PARAM_INVALID)
}

/// Signs `data` with `key`.
pub fn sign(scheme: Scheme, key: &PKey<Private>, data: &[u8]) -> Result<Vec<u8>> {
    let failed = |_| Ckr::FUNCTION_FAILED;
    match scheme {
        Scheme::Ecdsa { prehash } => {
            let input = ecdsa_input(prehash, data)?;
            if input.is_empty() {
                return Err(Ckr::DATA_LEN_RANGE);
            }
            let ec = key.ec_key().map_err(|_| Ckr::KEY_TYPE_INCONSISTENT)?;
            let half = signature_len(key)? / 2;
            let half_i32 = i32::try_from(half).map_err(|_| Ckr::GENERAL_ERROR)?;
            let signature = EcdsaSig::sign(&input, &ec).map_err(failed)?;
            let mut out = signature.r().to_vec_padded(half_i32).map_err(failed)?;
            out.extend(signature.s().to_vec_padded(half_i32).map_err(failed)?);
            Ok(out)
        }
        Scheme::RsaPkcs { prehash: None } => {
            if data.len() + 11 > key.size() {
                return Err(Ckr::DATA_LEN_RANGE);
            }
            let mut context = PkeyCtx::new(key).map_err(failed)?;
            context.sign_init().map_err(failed)?;
            context.set_rsa_padding(Padding::PKCS1).map_err(failed)?;
            let mut out = Vec::new();
            context.sign_to_vec(data, &mut out).map_err(failed)?;
            Ok(out)
        }
        Scheme::RsaPkcs {
            prehash: Some(digest),
        } => {
            let mut signer = Signer::new(digest.message_digest(), key).map_err(failed)?;
            signer.set_rsa_padding(Padding::PKCS1).map_err(failed)?;
            signer.sign_oneshot_to_vec(data).map_err(failed)
        }
        Scheme::RsaPss {
            prehash,
            hash,
            mgf,
            salt_len,
        } => {
            let salt = pss_salt(salt_len)?;
            if salt_len + hash.output_len() + 2 > key.size() {
                return Err(Ckr::MECHANISM_PARAM_INVALID);
            }
            if prehash {
                let mut signer = Signer::new(hash.message_digest(), key).map_err(failed)?;
                signer.set_rsa_padding(Padding::PKCS1_PSS).map_err(failed)?;
                signer
                    .set_rsa_mgf1_md(mgf.message_digest())
                    .map_err(failed)?;
                signer.set_rsa_pss_saltlen(salt).map_err(failed)?;
                signer.sign_oneshot_to_vec(data).map_err(failed)
            } else {
                if data.len() != hash.output_len() {
                    return Err(Ckr::DATA_LEN_RANGE);
                }
                let mut context = PkeyCtx::new(key).map_err(failed)?;
                context.sign_init().map_err(failed)?;
                set_pss_digest_parameters(&mut context, hash, mgf, salt)?;
                let mut out = Vec::new();
                context.sign_to_vec(data, &mut out).map_err(failed)?;
                Ok(out)
            }
        }
        Scheme::Eddsa => {
            let mut signer = Signer::new_without_digest(key).map_err(failed)?;
            signer.sign_oneshot_to_vec(data).map_err(failed)
        }
    }
}

/// Verifies `signature` over `data` with `key`: `CKR_SIGNATURE_INVALID` or
/// `CKR_SIGNATURE_LEN_RANGE` when it does not hold.
pub fn verify(scheme: Scheme, key: &PKey<Public>, data: &[u8], signature: &[u8]) -> Result<()> {
    let failed = |_| Ckr::FUNCTION_FAILED;
    let expected_len = signature_len(key)?;
    if signature.len() != expected_len {
        return Err(Ckr::SIGNATURE_LEN_RANGE);
    }
    let valid = match scheme {
        Scheme::Ecdsa { prehash } => {
            let input = ecdsa_input(prehash, data)?;
            let ec = key.ec_key().map_err(|_| Ckr::KEY_TYPE_INCONSISTENT)?;
            let (r, s) = signature.split_at(expected_len / 2);
            let r = BigNum::from_slice(r).map_err(failed)?;
            let s = BigNum::from_slice(s).map_err(failed)?;
            let signature = EcdsaSig::from_private_components(r, s).map_err(failed)?;
            signature.verify(&input, &ec).unwrap_or(false)
        }
        Scheme::RsaPkcs { prehash: None } => {
            let mut context = PkeyCtx::new(key).map_err(failed)?;
            context.verify_init().map_err(failed)?;
            context.set_rsa_padding(Padding::PKCS1).map_err(failed)?;
            context.verify(data, signature).unwrap_or(false)
        }
        Scheme::RsaPkcs {
            prehash: Some(digest),
        } => {
            let mut verifier = Verifier::new(digest.message_digest(), key).map_err(failed)?;
            verifier.set_rsa_padding(Padding::PKCS1).map_err(failed)?;
            verifier.verify_oneshot(signature, data).unwrap_or(false)
        }
        Scheme::RsaPss {
            prehash,
            hash,
            mgf,
            salt_len,
        } => {
            let salt = pss_salt(salt_len)?;
            if prehash {
                let mut verifier = Verifier::new(hash.message_digest(), key).map_err(failed)?;
                verifier
                    .set_rsa_padding(Padding::PKCS1_PSS)
                    .map_err(failed)?;
                verifier
                    .set_rsa_mgf1_md(mgf.message_digest())
                    .map_err(failed)?;
                verifier.set_rsa_pss_saltlen(salt).map_err(failed)?;
                verifier.verify_oneshot(signature, data).unwrap_or(false)
            } else {
                let mut context = PkeyCtx::new(key).map_err(failed)?;
                context.verify_init().map_err(failed)?;
                set_pss_digest_parameters(&mut context, hash, mgf, salt)?;
                context.verify(data, signature).unwrap_or(false)
            }
        }
        Scheme::Eddsa => {
            let mut verifier = Verifier::new_without_digest(key).map_err(failed)?;
            verifier.verify_oneshot(signature, data).unwrap_or(false)
        }
    };
    if valid {
        Ok(())
    } else {
        Err(Ckr::SIGNATURE_INVALID)
    }
}

/// A NIST curve this module generates keys on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// P-256.
    P256,
    /// P-384.
    P384,
}

impl Curve {
    fn nid(self) -> Nid {
        match self {
            Curve::P256 => Nid::X9_62_PRIME256V1,
            Curve::P384 => Nid::SECP384R1,
        }
    }
}

/// What `C_GenerateKeyPair` was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySpec {
    /// EC on a NIST curve; `params` is `CKA_EC_PARAMS` as given.
    Ec {
        /// The curve.
        curve: Curve,
        /// `CKA_EC_PARAMS`, kept as the application gave it.
        params: Vec<u8>,
    },
    /// Ed25519; `params` is `CKA_EC_PARAMS` as given.
    Ed25519 {
        /// `CKA_EC_PARAMS`: the OID or the printable string.
        params: Vec<u8>,
    },
    /// RSA.
    Rsa {
        /// Modulus size.
        bits: u32,
        /// Public exponent, big-endian.
        exponent: Vec<u8>,
    },
}

impl KeySpec {
    /// Reads the key specification from the public key template.
    pub fn from_template(mechanism: CK_MECHANISM_TYPE, public: &Template) -> Result<KeySpec> {
        match mechanism {
            CKM_EC_KEY_PAIR_GEN => {
                let params = public
                    .get(CKA_EC_PARAMS)
                    .ok_or(Ckr::TEMPLATE_INCOMPLETE)?
                    .to_vec();
                let oid = <ObjectIdentifier>::from_der(&params)
                    .map_err(|_| Ckr::DOMAIN_PARAMS_INVALID)?;
                let curve = if oid == OID_P256 {
                    Curve::P256
                } else if oid == OID_P384 {
                    Curve::P384
                } else {
                    return Err(Ckr::CURVE_NOT_SUPPORTED);
                };
                Ok(KeySpec::Ec { curve, params })
            }
            CKM_EC_EDWARDS_KEY_PAIR_GEN => {
                let params = public
                    .get(CKA_EC_PARAMS)
                    .ok_or(Ckr::TEMPLATE_INCOMPLETE)?
                    .to_vec();
                if is_ed25519_params(&params) {
                    Ok(KeySpec::Ed25519 { params })
                } else if <ObjectIdentifier>::from_der(&params).is_ok()
                    || PrintableStringRef::from_der(&params).is_ok()
                {
                    Err(Ckr::CURVE_NOT_SUPPORTED)
                } else {
                    Err(Ckr::DOMAIN_PARAMS_INVALID)
                }
            }
            CKM_RSA_PKCS_KEY_PAIR_GEN => {
                let bits = public
                    .ulong(CKA_MODULUS_BITS)?
                    .ok_or(Ckr::TEMPLATE_INCOMPLETE)?;
                if !(RSA_BITS.0..=RSA_BITS.1).contains(&bits) {
                    return Err(Ckr::KEY_SIZE_RANGE);
                }
                let exponent = public
                    .get(CKA_PUBLIC_EXPONENT)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_else(|| vec![0x01, 0x00, 0x01]);
                let significant: Vec<u8> = exponent
                    .iter()
                    .copied()
                    .skip_while(|byte| *byte == 0)
                    .collect();
                let odd = significant.last().is_some_and(|byte| byte & 1 == 1);
                if !odd || significant.len() > 8 || significant == [1] {
                    return Err(Ckr::ATTRIBUTE_VALUE_INVALID);
                }
                Ok(KeySpec::Rsa {
                    bits: u32::try_from(bits).map_err(|_| Ckr::KEY_SIZE_RANGE)?,
                    exponent: significant,
                })
            }
            _ => Err(Ckr::MECHANISM_INVALID),
        }
    }

    /// `CKA_KEY_TYPE` of the pair.
    pub fn key_type(&self) -> CK_KEY_TYPE {
        match self {
            KeySpec::Ec { .. } => CKK_EC,
            KeySpec::Ed25519 { .. } => CKK_EC_EDWARDS,
            KeySpec::Rsa { .. } => CKK_RSA,
        }
    }
}

/// True for Ed25519 `CKA_EC_PARAMS`: the RFC 8410 OID or the PKCS#11 3.0
/// printable string `"edwards25519"`.
pub fn is_ed25519_params(params: &[u8]) -> bool {
    if let Ok(oid) = <ObjectIdentifier>::from_der(params) {
        return oid == OID_ED25519;
    }
    PrintableStringRef::from_der(params).is_ok_and(|name| name.as_str() == "edwards25519")
}

/// A freshly generated key pair.
pub struct Generated {
    /// Attributes that describe the public half (both objects get the
    /// parameters; only the public key gets the point).
    pub public: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>,
    /// Public information also kept on the private key object.
    pub private: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>,
    /// PKCS#8 DER of the private key, to be sealed.
    pub pkcs8: Zeroizing<Vec<u8>>,
    /// The private key, ready to sign.
    pub key: Arc<PKey<Private>>,
}

/// Generates a key pair.
pub fn generate(spec: &KeySpec) -> Result<Generated> {
    let failed = |_| Ckr::FUNCTION_FAILED;
    let (key, public, private) = match spec {
        KeySpec::Ec { curve, params } => {
            let group = EcGroup::from_curve_name(curve.nid()).map_err(failed)?;
            let ec = EcKey::generate(&group).map_err(failed)?;
            let mut context = BigNumContext::new().map_err(failed)?;
            let point = ec
                .public_key()
                .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut context)
                .map_err(failed)?;
            let key = PKey::from_ec_key(ec).map_err(failed)?;
            (
                key,
                vec![
                    (CKA_EC_PARAMS, params.clone()),
                    (CKA_EC_POINT, wrap_point(point)?),
                ],
                vec![(CKA_EC_PARAMS, params.clone())],
            )
        }
        KeySpec::Ed25519 { params } => {
            let key = PKey::generate_ed25519().map_err(failed)?;
            let point = key.raw_public_key().map_err(failed)?;
            (
                key,
                vec![
                    (CKA_EC_PARAMS, params.clone()),
                    (CKA_EC_POINT, wrap_point(point)?),
                ],
                vec![(CKA_EC_PARAMS, params.clone())],
            )
        }
        KeySpec::Rsa { bits, exponent } => {
            let exponent = BigNum::from_slice(exponent).map_err(failed)?;
            let rsa = Rsa::generate_with_e(*bits, &exponent).map_err(failed)?;
            let modulus = rsa.n().to_vec();
            let public_exponent = rsa.e().to_vec();
            let key = PKey::from_rsa(rsa).map_err(failed)?;
            (
                key,
                vec![
                    (CKA_MODULUS, modulus.clone()),
                    (CKA_MODULUS_BITS, ulong(CK_ULONG::from(*bits))),
                    (CKA_PUBLIC_EXPONENT, public_exponent.clone()),
                ],
                vec![
                    (CKA_MODULUS, modulus),
                    (CKA_PUBLIC_EXPONENT, public_exponent),
                ],
            )
        }
    };
    let pkcs8 = Zeroizing::new(key.private_key_to_pkcs8().map_err(failed)?);
    let mut public = public;
    public.push((CKA_KEY_TYPE, ulong(spec.key_type())));
    let mut private = private;
    private.push((CKA_KEY_TYPE, ulong(spec.key_type())));
    private.push((CKA_LOCAL, boolean(true)));
    public.push((CKA_LOCAL, boolean(true)));
    Ok(Generated {
        public,
        private,
        pkcs8,
        key: Arc::new(key),
    })
}

/// `CKA_EC_POINT`: the point wrapped in a DER OCTET STRING, as SoftHSM2
/// returns it.
fn wrap_point(point: Vec<u8>) -> Result<Vec<u8>> {
    OctetString::new(point)
        .and_then(|octets| octets.to_der())
        .map_err(|_| Ckr::GENERAL_ERROR)
}

/// Parses a sealed private key back.
pub fn load_private_key(pkcs8: &[u8]) -> Result<PKey<Private>> {
    PKey::private_key_from_pkcs8(pkcs8).map_err(|_| Ckr::GENERAL_ERROR)
}

/// A private key component, for the `C_GetAttributeValue` of a key that is
/// neither sensitive nor non-extractable (the caller checks that):
/// `CKA_VALUE` for EC (the scalar) and Ed25519 (the seed), the CRT parts for
/// RSA. `None` if the key type has no such component.
pub fn private_component(key: &PKey<Private>, attribute: CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>> {
    match key.id() {
        Id::EC if attribute == CKA_VALUE => Some(key.ec_key().ok()?.private_key().to_vec()),
        Id::ED25519 if attribute == CKA_VALUE => key.raw_private_key().ok(),
        Id::RSA => {
            let rsa = key.rsa().ok()?;
            let number = match attribute {
                CKA_PRIVATE_EXPONENT => rsa.d(),
                CKA_PRIME_1 => rsa.p()?,
                CKA_PRIME_2 => rsa.q()?,
                CKA_EXPONENT_1 => rsa.dmp1()?,
                CKA_EXPONENT_2 => rsa.dmq1()?,
                CKA_COEFFICIENT => rsa.iqmp()?,
                _ => return None,
            };
            Some(number.to_vec())
        }
        _ => None,
    }
}

/// Builds a public key from a public key object's attributes.
pub fn public_key(
    key_type: CK_KEY_TYPE,
    attribute: impl Fn(CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>>,
) -> Result<PKey<Public>> {
    let inconsistent = |_| Ckr::KEY_TYPE_INCONSISTENT;
    match key_type {
        CKK_EC => {
            let params = attribute(CKA_EC_PARAMS).ok_or(Ckr::KEY_TYPE_INCONSISTENT)?;
            let oid =
                <ObjectIdentifier>::from_der(&params).map_err(|_| Ckr::DOMAIN_PARAMS_INVALID)?;
            let curve = if oid == OID_P256 {
                Curve::P256
            } else if oid == OID_P384 {
                Curve::P384
            } else {
                return Err(Ckr::CURVE_NOT_SUPPORTED);
            };
            let point = unwrap_point(&attribute(CKA_EC_POINT).ok_or(Ckr::KEY_TYPE_INCONSISTENT)?);
            let group = EcGroup::from_curve_name(curve.nid()).map_err(inconsistent)?;
            let mut context = BigNumContext::new().map_err(inconsistent)?;
            let point = EcPoint::from_bytes(&group, &point, &mut context).map_err(inconsistent)?;
            let ec = EcKey::from_public_key(&group, &point).map_err(inconsistent)?;
            PKey::from_ec_key(ec).map_err(inconsistent)
        }
        CKK_EC_EDWARDS => {
            let point = unwrap_point(&attribute(CKA_EC_POINT).ok_or(Ckr::KEY_TYPE_INCONSISTENT)?);
            PKey::public_key_from_raw_bytes(&point, Id::ED25519).map_err(inconsistent)
        }
        CKK_RSA => {
            let modulus = attribute(CKA_MODULUS).ok_or(Ckr::KEY_TYPE_INCONSISTENT)?;
            let exponent = attribute(CKA_PUBLIC_EXPONENT).ok_or(Ckr::KEY_TYPE_INCONSISTENT)?;
            let rsa = Rsa::from_public_components(
                BigNum::from_slice(&modulus).map_err(inconsistent)?,
                BigNum::from_slice(&exponent).map_err(inconsistent)?,
            )
            .map_err(inconsistent)?;
            PKey::from_rsa(rsa).map_err(inconsistent)
        }
        _ => Err(Ckr::KEY_TYPE_INCONSISTENT),
    }
}

/// Accepts `CKA_EC_POINT` wrapped in an OCTET STRING or raw.
fn unwrap_point(value: &[u8]) -> Vec<u8> {
    match <&OctetStringRef>::from_der(value) {
        Ok(octets) => octets.as_bytes().to_vec(),
        Err(_) => value.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate_and_check(spec: KeySpec, schemes: &[Scheme]) {
        let generated = generate(&spec).expect("generates");
        let key_type = spec.key_type();
        let public = public_key(key_type, |wanted| {
            generated
                .public
                .iter()
                .find(|(attribute, _)| *attribute == wanted)
                .map(|(_, value)| value.clone())
        })
        .expect("public key");
        let reloaded = load_private_key(&generated.pkcs8).expect("reloads");
        for scheme in schemes {
            let data: Vec<u8> = match scheme {
                Scheme::RsaPss {
                    prehash: false,
                    hash,
                    ..
                } => hash.hash(b"tbs").expect("hash"),
                Scheme::Ecdsa { prehash: None } => Digest::Sha256.hash(b"tbs").expect("hash"),
                _ => b"tbs".to_vec(),
            };
            let signature = sign(*scheme, &reloaded, &data).expect("signs");
            assert_eq!(
                signature.len(),
                signature_len(&reloaded).expect("len"),
                "{scheme:?}"
            );
            verify(*scheme, &public, &data, &signature).expect("verifies");
            let mut bad = signature.clone();
            bad[5] ^= 1;
            assert_eq!(
                verify(*scheme, &public, &data, &bad),
                Err(Ckr::SIGNATURE_INVALID),
                "{scheme:?}"
            );
        }
    }

    #[test]
    fn ok_ec_keys_sign_and_verify() {
        let params = OID_P384.to_der().expect("der");
        generate_and_check(
            KeySpec::Ec {
                curve: Curve::P384,
                params,
            },
            &[
                Scheme::Ecdsa { prehash: None },
                Scheme::Ecdsa {
                    prehash: Some(Digest::Sha384),
                },
            ],
        );
    }

    #[test]
    fn ok_ed25519_keys_sign_and_verify() {
        let params = PrintableStringRef::new("edwards25519")
            .expect("printable")
            .to_der()
            .expect("der");
        let spec = KeySpec::from_template(
            CKM_EC_EDWARDS_KEY_PAIR_GEN,
            &Template(vec![(CKA_EC_PARAMS, params)]),
        )
        .expect("spec");
        generate_and_check(spec, &[Scheme::Eddsa]);
    }

    #[test]
    fn ok_rsa_keys_sign_and_verify() {
        let spec = KeySpec::from_template(
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            &Template(vec![(CKA_MODULUS_BITS, ulong(2048))]),
        )
        .expect("spec");
        let pss = |prehash| Scheme::RsaPss {
            prehash,
            hash: Digest::Sha256,
            mgf: Digest::Sha256,
            salt_len: 32,
        };
        generate_and_check(
            spec,
            &[
                Scheme::RsaPkcs {
                    prehash: Some(Digest::Sha256),
                },
                Scheme::RsaPkcs { prehash: None },
                pss(true),
                pss(false),
            ],
        );
    }

    #[test]
    fn fail_key_specs_out_of_range() {
        let small = Template(vec![(CKA_MODULUS_BITS, ulong(1024))]);
        assert_eq!(
            KeySpec::from_template(CKM_RSA_PKCS_KEY_PAIR_GEN, &small),
            Err(Ckr::KEY_SIZE_RANGE)
        );
        let p521 = ObjectIdentifier::new_unwrap("1.3.132.0.35")
            .to_der()
            .expect("der");
        let curve = Template(vec![(CKA_EC_PARAMS, p521)]);
        assert_eq!(
            KeySpec::from_template(CKM_EC_KEY_PAIR_GEN, &curve),
            Err(Ckr::CURVE_NOT_SUPPORTED)
        );
        assert_eq!(
            KeySpec::from_template(CKM_EC_KEY_PAIR_GEN, &Template::default()),
            Err(Ckr::TEMPLATE_INCOMPLETE)
        );
    }

    #[test]
    fn fail_scheme_with_wrong_key_or_params() {
        assert_eq!(
            Scheme::resolve(CKM_ECDSA, &Param::None, CKK_RSA),
            Err(Ckr::KEY_TYPE_INCONSISTENT)
        );
        assert_eq!(
            Scheme::resolve(CKM_RSA_PKCS_PSS, &Param::None, CKK_RSA),
            Err(Ckr::MECHANISM_PARAM_INVALID)
        );
        let mismatched = Param::Pss {
            hash: CKM_SHA384,
            mgf: CKG_MGF1_SHA256,
            salt_len: 32,
        };
        assert_eq!(
            Scheme::resolve(CKM_SHA256_RSA_PKCS_PSS, &mismatched, CKK_RSA),
            Err(Ckr::MECHANISM_PARAM_INVALID)
        );
        assert_eq!(
            Scheme::resolve(CKM_AES_CBC, &Param::None, CKK_RSA),
            Err(Ckr::MECHANISM_INVALID)
        );
    }
}
