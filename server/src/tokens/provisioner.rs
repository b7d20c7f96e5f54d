//! Tokens signed by registered provisioners: external issuers (an
//! orchestrator, a CI system) that hold their own private key and mint
//! bootstrap tokens without calling this server.
//!
//! Verification follows the fixed order of the parent module, with the
//! provisioner's key in place of the server's:
//! 1. the unverified `iss` only chooses the provisioner (a name nobody
//!    registered is `token.unknown`);
//! 2. `alg` must be the one algorithm the registered key's type fixes
//!    (ES256 for P-256, ES384 for P-384, EdDSA for Ed25519): no `none`, no
//!    HMAC with the public key as secret, no RSA;
//! 3. a `kid`, when present, must name that key;
//! 4. `jsonwebtoken` verifies the signature and `aud`/`iss`, requiring
//!    `exp`; `iat`, `jti`, `policy` and `identity` must decode;
//! 5. times against the injected clock, then the provisioner's own limits:
//!    enabled, the policy in its list, `exp - iat` within its maximum.
//!
//! Single use is not checked here: the token's `jti` becomes a one-use
//! token record (see [`token_record_id`]) that the issuance transaction
//! consumes like any other.

use base64::Engine as _;
use certmint::wire::{Identity, ProvisionerInfo};
use const_oid::ObjectIdentifier;
use der::{Decode as _, Encode as _};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{check_time_claims, decode_refusal, key_id_of, TokenError};

/// id-ecPublicKey (RFC 5480).
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 / prime256v1.
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1.
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// id-Ed25519 (RFC 8410).
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Longest `jti` accepted; it names a database row.
const MAX_JTI_LEN: usize = 128;

/// Why a public key cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("public_key_pem: {0}")]
pub struct KeyError(String);

/// A provisioner's verification key, with the one algorithm it takes.
pub struct ProvisionerKey {
    algorithm: Algorithm,
    algorithm_name: &'static str,
    key_id: String,
    decoding_key: DecodingKey,
}

impl std::fmt::Debug for ProvisionerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionerKey")
            .field("algorithm", &self.algorithm_name)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ProvisionerKey {
    /// Parses a SubjectPublicKeyInfo PEM: P-256, P-384 or Ed25519.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|_| KeyError("not a PEM block".into()))?;
        if label != "PUBLIC KEY" {
            return Err(KeyError(format!(
                "a {label:?} PEM block; a SubjectPublicKeyInfo (\"PUBLIC KEY\") is required"
            )));
        }
        let spki = spki::SubjectPublicKeyInfoRef::from_der(&der)
            .map_err(|_| KeyError("not a SubjectPublicKeyInfo".into()))?;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|parameters| parameters.decode_as::<ObjectIdentifier>().ok());
        let (algorithm, algorithm_name) = match (spki.algorithm.oid, curve) {
            (ID_EC_PUBLIC_KEY, Some(SECP256R1)) => (Algorithm::ES256, "ES256"),
            (ID_EC_PUBLIC_KEY, Some(SECP384R1)) => (Algorithm::ES384, "ES384"),
            // RFC 8410: the parameters are absent, not merely not an OID.
            (ID_ED25519, None) if spki.algorithm.parameters.is_none() => {
                (Algorithm::EdDSA, "EdDSA")
            }
            _ => {
                return Err(KeyError(
                    "unsupported key type; use P-256 (ES256), P-384 (ES384) or Ed25519 (EdDSA)"
                        .into(),
                ))
            }
        };
        let canonical = spki
            .to_der()
            .map_err(|_| KeyError("not a SubjectPublicKeyInfo".into()))?;
        let rewrapped = der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &canonical)
            .map_err(|_| KeyError("not a SubjectPublicKeyInfo".into()))?;
        let decoding_key = match algorithm {
            Algorithm::EdDSA => DecodingKey::from_ed_pem(rewrapped.as_bytes()),
            _ => DecodingKey::from_ec_pem(rewrapped.as_bytes()),
        }
        .map_err(|error| KeyError(format!("key does not load: {error}")))?;
        Ok(Self {
            algorithm,
            algorithm_name,
            key_id: key_id_of(&canonical),
            decoding_key,
        })
    }

    /// The JWS algorithm its tokens must use.
    pub fn algorithm_name(&self) -> &'static str {
        self.algorithm_name
    }

    /// The `kid` its tokens may carry.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// The claims of a provisioner's token. Other claims (`sub`, custom ones)
/// are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ProvisionerClaims {
    /// The provisioner's name.
    pub iss: String,
    /// Unique per token: it can be used once.
    pub jti: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Not before (unix seconds), honoured when present.
    #[serde(default)]
    pub nbf: Option<i64>,
    /// Policy the holder enrolls under.
    pub policy: String,
    /// Names (or patterns) the holder may request.
    pub identity: Identity,
}

/// The `iss` of a token, read WITHOUT verifying anything: only to choose
/// which provisioner's key to verify it with.
pub fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    #[derive(Deserialize)]
    struct Issuer {
        iss: String,
    }
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| TokenError::Malformed("a JWT has exactly three segments".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed("claims are not base64url".into()))?;
    serde_json::from_slice::<Issuer>(&bytes)
        .map(|issuer| issuer.iss)
        .map_err(|_| TokenError::Malformed("claims have no iss".into()))
}

/// Verifies a token of `provisioner` for `audience` at `now`.
pub fn verify(
    token: &str,
    provisioner: &ProvisionerInfo,
    audience: &str,
    now: OffsetDateTime,
) -> Result<ProvisionerClaims, TokenError> {
    // A stored key that no longer parses cannot verify anything.
    let key = ProvisionerKey::from_pem(&provisioner.public_key_pem)
        .map_err(|_| TokenError::UnknownKey)?;
    let header = super::UnverifiedHeader::parse(token)?;
    if header.alg != key.algorithm_name {
        return Err(TokenError::AlgorithmNotAllowed {
            alg: header.alg,
            expected: key.algorithm_name,
        });
    }
    if header.kid.as_deref().is_some_and(|kid| kid != key.key_id) {
        return Err(TokenError::UnknownKey);
    }
    let mut validation = Validation::new(key.algorithm);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[&provisioner.name]);
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding_key, &validation)
        .map_err(|error| decode_refusal(&error, audience, key.algorithm_name))?;
    let claims: ProvisionerClaims = serde_json::from_value(data.claims).map_err(|_| {
        TokenError::Malformed(
            "claims need iat, jti, policy and identity besides iss, aud and exp".into(),
        )
    })?;
    if claims.jti.is_empty()
        || claims.jti.len() > MAX_JTI_LEN
        || !claims.jti.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(TokenError::Malformed(format!(
            "jti must be 1 to {MAX_JTI_LEN} printable ASCII characters"
        )));
    }
    check_time_claims(claims.iat, claims.nbf, claims.exp, now)?;
    if provisioner.disabled_at.is_some() {
        return Err(TokenError::IssuerDisabled {
            provisioner: provisioner.name.clone(),
        });
    }
    if !provisioner.policies.contains(&claims.policy) {
        return Err(TokenError::PolicyNotAllowed {
            provisioner: provisioner.name.clone(),
            policy: claims.policy,
        });
    }
    let lifetime = claims.exp.saturating_sub(claims.iat);
    let max = provisioner.max_token_ttl.as_seconds();
    if u64::try_from(lifetime).map_or(true, |lifetime| lifetime > max) {
        return Err(TokenError::LifetimeTooLong { lifetime, max });
    }
    Ok(claims)
}

/// The id of the one-use token record that stands for a provisioner's
/// token: 32 hex digits, like the server's own token ids, derived from the
/// provisioner and the `jti`, so a replay finds the same record.
pub fn token_record_id(provisioner: &str, jti: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("provisioner:{provisioner}:{jti}").as_bytes(),
    );
    hex::encode(&digest.as_ref()[..16])
}

#[cfg(test)]
mod tests;
