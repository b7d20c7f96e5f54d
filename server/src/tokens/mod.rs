//! Bootstrap and admin tokens: JWTs signed by the server's Ed25519 token key.
//!
//! The key lives on the HSM (`tokens.signing_key = "hsm"`, what `init`
//! sets up; a JWS is then assembled here and only its signature is made
//! on the token) or, for set-ups from before that, in a PKCS#8 file
//! (`"file"`). Verification needs only the public key, so it never touches
//! the HSM.
//!
//! Verification follows one fixed order (see `docs/ISSUANCE.md`):
//! 1. [`UnverifiedHeader`] reads `alg` and `kid` without trusting them;
//! 2. the key is chosen by `kid` (today: the server's own key);
//! 3. `jsonwebtoken` verifies with exactly the one algorithm registered for
//!    that key, requiring `exp`, `aud`, `iss` and `jti`;
//! 4. times are checked against the injected [`Clock`], with one leeway
//!    constant, and an `iat` in the future is refused.
//!
//! Tokens signed by registered provisioners (external issuers) are checked
//! in [`provisioner`], in the same order with the provisioner's own key.
//!
//! Invariants: this module never consumes a token (uses are counted in the
//! store, in the same transaction that records the certificate) and never
//! logs a token. Bootstrap and admin tokens carry different audiences and a
//! `kind` claim, so one can never be replayed as the other.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use certmint::wire::{Identity, KeyType};
use der::Decode as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::KeyPair as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::hsm::{CaSigner, HsmError};

/// Allowed clock difference between the minting and the verifying host.
pub const LEEWAY_SECONDS: i64 = 30;

/// The only algorithm certmint's own tokens use.
const TOKEN_ALGORITHM: Algorithm = Algorithm::EdDSA;
const TOKEN_ALGORITHM_NAME: &str = "EdDSA";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three base64url segments with a JSON header and claims.
    #[error("token is not a well-formed JWT: {0}")]
    Malformed(String),
    /// `alg` is not the one registered for the key (includes `none`, HS*, RS*).
    #[error("token algorithm {alg:?} is not allowed (expected {expected})")]
    AlgorithmNotAllowed {
        /// The `alg` header as sent.
        alg: String,
        /// The one algorithm the key takes.
        expected: &'static str,
    },
    /// The `kid` names no key this server knows.
    #[error("token key id is unknown to this server")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// `aud` does not name this operation on this server.
    #[error("token audience does not match {expected}")]
    WrongAudience {
        /// The audience this endpoint accepts.
        expected: String,
    },
    /// `iss` is not this server.
    #[error("token issuer is not this server")]
    WrongIssuer,
    /// The token is of the wrong kind for this endpoint.
    #[error("a {found} token cannot be used here (expected {expected})")]
    WrongKind {
        /// The kind this endpoint needs.
        expected: &'static str,
        /// The kind the token claims.
        found: String,
    },
    /// `exp` has passed.
    #[error("token expired at {expired_at} (server time {now})")]
    Expired {
        /// The token's `exp`.
        expired_at: OffsetDateTime,
        /// Server time at the check.
        now: OffsetDateTime,
    },
    /// A provisioner's token names a policy the provisioner may not use.
    #[error("provisioner {provisioner:?} may not enroll under policy {policy:?}")]
    PolicyNotAllowed {
        /// The provisioner.
        provisioner: String,
        /// The policy the token names.
        policy: String,
    },
    /// A provisioner's token lives longer than the provisioner allows.
    #[error(
        "token lifetime (exp - iat) of {lifetime}s exceeds the provisioner's maximum of {max}s"
    )]
    LifetimeTooLong {
        /// `exp - iat`, seconds.
        lifetime: i64,
        /// The provisioner's `max_token_ttl`, seconds.
        max: u64,
    },
    /// The provisioner that signed the token is disabled.
    #[error("provisioner {provisioner:?} is disabled")]
    IssuerDisabled {
        /// The provisioner.
        provisioner: String,
    },
    /// `iat` or `nbf` lies in the future.
    #[error("token is not valid before {valid_from} (server time {now}); check clocks")]
    NotYetValid {
        /// The token's `iat`/`nbf`.
        valid_from: OffsetDateTime,
        /// Server time at the check.
        now: OffsetDateTime,
    },
}

/// Admin API roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Full read and write access to the admin API.
    Admin,
    /// Read-only access to inventory, policies, tokens and audit.
    Auditor,
}

/// The registered claims every certmint token carries (RFC 7519 §4.1),
/// plus `kind`, which keeps bootstrap and admin tokens apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredClaims {
    /// Issuer: the server's public URL.
    pub iss: String,
    /// Audience: `<public_url>/v1/enroll` or `<public_url>/v1/admin`.
    pub aud: String,
    /// Unique id: a bootstrap token's id (the store counts its uses), or an
    /// admin token's id for audit trails.
    pub jti: String,
    /// Subject: the bootstrap token id again, or who holds an admin token.
    pub sub: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Not before (unix seconds): never set by this server, honoured when
    /// present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// `bootstrap` or `admin`.
    pub kind: String,
}

/// Claims of a bootstrap token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapClaims {
    /// Registered claims; `sub` and `jti` are the token id.
    #[serde(flatten)]
    pub registered: RegisteredClaims,
    /// Policy the holder enrolls under.
    pub policy: String,
    /// Names (or patterns) the holder may request.
    pub identity: Identity,
}

/// Claims of an admin token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminClaims {
    /// Registered claims; `sub` names the holder.
    #[serde(flatten)]
    pub registered: RegisteredClaims,
    /// What the holder may do.
    pub role: Role,
}

const KIND_BOOTSTRAP: &str = "bootstrap";
const KIND_ADMIN: &str = "admin";

/// The header fields read before any verification. The name is a warning:
/// nothing in here may be trusted except to choose a key.
#[derive(Debug, Deserialize)]
pub struct UnverifiedHeader {
    /// Algorithm as claimed by the sender.
    pub alg: String,
    /// Key id as claimed by the sender.
    #[serde(default)]
    pub kid: Option<String>,
}

impl UnverifiedHeader {
    /// Decodes the first JWT segment.
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let mut segments = token.split('.');
        let header = segments
            .next()
            .ok_or_else(|| TokenError::Malformed("empty token".into()))?;
        if segments.count() != 2 {
            return Err(TokenError::Malformed(
                "a JWT has exactly three segments".into(),
            ));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed("header is not base64url".into()))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| TokenError::Malformed("header is not a JSON object with alg".into()))
    }
}

/// Errors loading or creating the token signing key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenKeyError {
    /// The key file could not be read or written.
    #[error("token signing key {path}: {source}")]
    Io {
        /// Key file path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HSM key's private half did not sign for its public half: the
    /// public key object was replaced or belongs to another key.
    #[error("token signing key {label:?}: the public key on the token does not verify the private key's signature")]
    HalvesDisagree {
        /// The key's label.
        label: String,
    },
    /// The HSM could not sign the challenge.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// No randomness for the challenge.
    #[error(transparent)]
    Entropy(#[from] crate::random::EntropyError),
    /// The HSM key named for token signing is not an Ed25519 key.
    #[error("token signing key {label:?} on the HSM is not an Ed25519 key")]
    NotEd25519 {
        /// The key's label.
        label: String,
    },
    /// The key file does not hold a PKCS#8 Ed25519 key.
    #[error("token signing key {path} is not a PKCS#8 Ed25519 PEM key")]
    Invalid {
        /// Key file path.
        path: String,
    },
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The claims or header would not encode, or the file key refused (a
    /// bug).
    #[error("token encoding failed: {0}")]
    Encoding(String),
    /// The HSM holding the token key could not sign.
    #[error(transparent)]
    Hsm(#[from] HsmError),
}

/// Where the token key signs.
enum TokenSigner {
    /// A PKCS#8 key read from a file (older set-ups).
    File(EncodingKey),
    /// An Ed25519 key on the HSM.
    Hsm(Arc<dyn CaSigner>),
}

/// The server's token key: signs and verifies bootstrap and admin tokens.
pub struct TokenAuthority {
    signer: TokenSigner,
    decoding_key: DecodingKey,
    key_id: String,
    issuer: String,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("key_id", &self.key_id)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Creates a new PKCS#8 Ed25519 key file, mode 0600. Never overwrites.
pub fn create_signing_key_file(path: &Path) -> Result<(), TokenKeyError> {
    let io = |source| TokenKeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| {
        io(std::io::Error::other(
            "system random number generator failed",
        ))
    })?;
    let pem = der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, pkcs8.as_ref())
        .map_err(|_| io(std::io::Error::other("PEM encoding failed")))?;
    crate::files::create(path, pem.as_bytes(), crate::files::Readers::Owner).map_err(io)
}

impl TokenAuthority {
    /// Uses the Ed25519 key `signer` on the HSM; `issuer` is the server's
    /// public URL.
    ///
    /// The verifying key comes from the token's public key object, which a
    /// session without the PIN could replace; so the private key first
    /// signs a random challenge that must verify under it. Tokens are then
    /// verified only with a public key proven to belong to the private one.
    pub fn from_hsm_key(signer: Arc<dyn CaSigner>, issuer: &str) -> Result<Self, TokenKeyError> {
        let unusable = || TokenKeyError::NotEd25519 {
            label: signer.label().to_owned(),
        };
        if signer.key_type() != KeyType::Ed25519 {
            return Err(unusable());
        }
        let spki = spki::SubjectPublicKeyInfoRef::from_der(signer.subject_public_key_info())
            .map_err(|_| unusable())?;
        let public_key = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(unusable)?
            .to_vec();
        let mut challenge = [0u8; 32];
        crate::random::fill(&mut challenge)?;
        let signature = signer.sign(&challenge)?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public_key)
            .verify(&challenge, &signature)
            .map_err(|_| TokenKeyError::HalvesDisagree {
                label: signer.label().to_owned(),
            })?;
        Ok(Self {
            decoding_key: DecodingKey::from_ed_der(&public_key),
            key_id: key_id_of(&public_key),
            issuer: issuer.to_owned(),
            signer: TokenSigner::Hsm(signer),
        })
    }

    /// Loads the signing key from a PKCS#8 file; `issuer` is the server's
    /// public URL.
    pub fn load(path: &Path, issuer: &str) -> Result<Self, TokenKeyError> {
        let invalid = || TokenKeyError::Invalid {
            path: path.display().to_string(),
        };
        let pem = std::fs::read_to_string(path).map_err(|source| TokenKeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let (label, pkcs8) = der::pem::decode_vec(pem.as_bytes()).map_err(|_| invalid())?;
        if label != "PRIVATE KEY" {
            return Err(invalid());
        }
        let key_pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|_| invalid())?;
        let public_key = key_pair.public_key().as_ref().to_vec();
        Ok(Self {
            signer: TokenSigner::File(EncodingKey::from_ed_der(&pkcs8)),
            decoding_key: DecodingKey::from_ed_der(&public_key),
            key_id: key_id_of(&public_key),
            issuer: issuer.to_owned(),
        })
    }

    /// The `kid` of this server's key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs bootstrap claims; `jti`, times and identity come from the caller.
    pub fn mint_bootstrap(
        &self,
        id: &str,
        policy: &str,
        identity: &Identity,
        audience: &str,
        issued_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<String, MintError> {
        let claims = BootstrapClaims {
            registered: self.registered(id, id, audience, KIND_BOOTSTRAP, issued_at, expires_at),
            policy: policy.to_owned(),
            identity: identity.clone(),
        };
        self.sign(&claims)
    }

    /// Signs admin claims.
    pub fn mint_admin(
        &self,
        id: &str,
        role: Role,
        subject: &str,
        audience: &str,
        issued_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<String, MintError> {
        let claims = AdminClaims {
            registered: self.registered(id, subject, audience, KIND_ADMIN, issued_at, expires_at),
            role,
        };
        self.sign(&claims)
    }

    fn registered(
        &self,
        id: &str,
        subject: &str,
        audience: &str,
        kind: &str,
        issued_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> RegisteredClaims {
        RegisteredClaims {
            iss: self.issuer.clone(),
            aud: audience.to_owned(),
            jti: id.to_owned(),
            sub: subject.to_owned(),
            iat: issued_at.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
            nbf: None,
            kind: kind.to_owned(),
        }
    }

    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, MintError> {
        let mut header = Header::new(TOKEN_ALGORITHM);
        header.kid = Some(self.key_id.clone());
        match &self.signer {
            TokenSigner::File(key) => jsonwebtoken::encode(&header, claims, key)
                .map_err(|error| MintError::Encoding(error.to_string())),
            TokenSigner::Hsm(signer) => {
                // JWS compact serialization (RFC 7515 §7.1): the token signs
                // base64url(header) "." base64url(claims); EdDSA signatures
                // are the raw 64 bytes (RFC 8037 §3.1), as the token returns
                // them.
                let signing_input = format!("{}.{}", json_part(&header)?, json_part(claims)?);
                let signature = signer.sign(signing_input.as_bytes())?;
                Ok(format!(
                    "{signing_input}.{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
                ))
            }
        }
    }

    /// Verifies a bootstrap token for `audience` at `now`.
    pub fn verify_bootstrap(
        &self,
        token: &str,
        audience: &str,
        now: OffsetDateTime,
    ) -> Result<BootstrapClaims, TokenError> {
        let claims: BootstrapClaims = self.verify(token, audience, KIND_BOOTSTRAP)?;
        check_times(&claims.registered, now)?;
        Ok(claims)
    }

    /// Verifies an admin token for `audience` at `now`.
    pub fn verify_admin(
        &self,
        token: &str,
        audience: &str,
        now: OffsetDateTime,
    ) -> Result<AdminClaims, TokenError> {
        let claims: AdminClaims = self.verify(token, audience, KIND_ADMIN)?;
        check_times(&claims.registered, now)?;
        Ok(claims)
    }

    fn verify<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
        expected_kind: &'static str,
    ) -> Result<T, TokenError> {
        let header = UnverifiedHeader::parse(token)?;
        if header.alg != TOKEN_ALGORITHM_NAME {
            return Err(TokenError::AlgorithmNotAllowed {
                alg: header.alg,
                expected: TOKEN_ALGORITHM_NAME,
            });
        }
        if header.kid.as_deref() != Some(self.key_id.as_str()) {
            return Err(TokenError::UnknownKey);
        }
        let mut validation = Validation::new(TOKEN_ALGORITHM);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        // Time checks run against the injected clock in `check_times`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // Decode to a JSON value first: jsonwebtoken deserialises the claims
        // type before it checks `aud`, so an admin token sent to the enroll
        // endpoint would otherwise look malformed instead of misaddressed.
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &self.decoding_key, &validation)
                .map_err(|error| decode_refusal(&error, audience, TOKEN_ALGORITHM_NAME))?;
        let found = data.claims.get("kind").and_then(serde_json::Value::as_str);
        if found != Some(expected_kind) {
            return Err(TokenError::WrongKind {
                expected: expected_kind,
                found: found.unwrap_or("unspecified").to_owned(),
            });
        }
        serde_json::from_value(data.claims)
            .map_err(|_| TokenError::Malformed("claims do not decode".into()))
    }
}

/// The refusal for a `jsonwebtoken::decode` error, for a token verified
/// against `audience` with the one algorithm `expected`.
pub(crate) fn decode_refusal(
    error: &jsonwebtoken::errors::Error,
    audience: &str,
    expected: &'static str,
) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAudience => TokenError::WrongAudience {
            expected: audience.to_owned(),
        },
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::AlgorithmNotAllowed {
                alg: "unknown".into(),
                expected,
            }
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            TokenError::Malformed(format!("missing claim {claim}"))
        }
        _ => TokenError::Malformed("claims do not decode".into()),
    }
}

/// A JWS header or payload segment: base64url of the JSON, unpadded.
fn json_part<T: Serialize + ?Sized>(value: &T) -> Result<String, MintError> {
    serde_json::to_vec(value)
        .map(|json| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
        .map_err(|error| MintError::Encoding(error.to_string()))
}

/// The `kid` of a public key: the first 12 bytes of its SHA-256, in hex.
pub(crate) fn key_id_of(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    hex::encode(&digest.as_ref()[..12])
}

/// `iat` and `nbf` (whichever is later) not past `now` and `exp` not
/// reached, each with [`LEEWAY_SECONDS`].
fn check_times(claims: &RegisteredClaims, now: OffsetDateTime) -> Result<(), TokenError> {
    check_time_claims(claims.iat, claims.nbf, claims.exp, now)
}

pub(crate) fn check_time_claims(
    iat: i64,
    nbf: Option<i64>,
    exp: i64,
    now: OffsetDateTime,
) -> Result<(), TokenError> {
    let issued_at = iat.max(nbf.unwrap_or(iat));
    let expires_at = exp;
    let at = |unix: i64| {
        OffsetDateTime::from_unix_timestamp(unix)
            .map_err(|_| TokenError::Malformed("time claim out of range".into()))
    };
    let now_unix = now.unix_timestamp();
    if issued_at > now_unix.saturating_add(LEEWAY_SECONDS) {
        return Err(TokenError::NotYetValid {
            valid_from: at(issued_at)?,
            now,
        });
    }
    if expires_at.saturating_add(LEEWAY_SECONDS) <= now_unix {
        return Err(TokenError::Expired {
            expired_at: at(expires_at)?,
            now,
        });
    }
    Ok(())
}

pub mod provisioner;

#[cfg(test)]
mod tests;
