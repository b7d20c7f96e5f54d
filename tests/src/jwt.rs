//! Bootstrap tokens from the outside: decoding JWTs, forging hostile ones
//! (`alg: none`, HS256, a foreign Ed25519 key), and [`TestProvisioner`], an
//! external token issuer with a P-256 key of its own.
//!
//! Invariant: forgeries keep the claims of the token they start from, so a
//! refusal is about the one thing the forgery changed.

use base64::Engine as _;
use serde_json::{json, Value};

/// Base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The header segment (as sent) and the decoded claims of a JWT.
#[track_caller]
pub fn jwt_segments(token: &str) -> (String, Value) {
    let mut parts = token.split('.');
    let header = parts.next().expect("JWT header").to_owned();
    let claims = parts.next().expect("JWT claims");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .expect("claims are base64url");
    (
        header,
        serde_json::from_slice(&claims).expect("claims are JSON"),
    )
}

/// The decoded JWT header.
#[track_caller]
pub fn jwt_header(token: &str) -> Value {
    let (header, _) = jwt_segments(token);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("header is base64url");
    serde_json::from_slice(&bytes).expect("header is JSON")
}

/// The claims of `token` under a new header `alg: none` and no signature.
pub fn forge_alg_none(token: &str) -> String {
    let (_, claims) = jwt_segments(token);
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// The claims of `token` signed HS256 with `secret` (the `kid` kept).
pub fn forge_hs256(token: &str, secret: &[u8]) -> String {
    let (_, claims) = jwt_segments(token);
    let mut header = jwt_header(token);
    header["alg"] = json!("HS256");
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(tag.as_ref()))
}

/// The claims of `token` signed EdDSA by a fresh key nobody registered;
/// `kid` replaces the header's key id (`None` keeps the server's).
pub fn forge_foreign_ed25519(token: &str, kid: Option<&str>) -> String {
    let (_, claims) = jwt_segments(token);
    let mut header = jwt_header(token);
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate a key");
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("load the key");
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(signature.as_ref()))
}

/// An external token issuer as an orchestrator runs one: a P-256 key of
/// its own, and bootstrap tokens it signs ES256 without the server.
pub struct TestProvisioner {
    /// Registered name; the `iss` of its tokens.
    pub name: String,
    /// SubjectPublicKeyInfo PEM, to register.
    pub public_key_pem: String,
    key: ring::signature::EcdsaKeyPair,
}

impl TestProvisioner {
    /// A fresh key for `name`.
    pub fn new(name: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let algorithm = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(algorithm, &rng)
            .expect("generate a P-256 key");
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref(), &rng)
            .expect("load the key");
        let public_key_pem = rcgen::KeyPair::try_from(pkcs8.as_ref())
            .expect("rcgen reads the key")
            .public_key_pem();
        Self {
            name: name.to_owned(),
            public_key_pem,
            key,
        }
    }

    /// `POST /v1/admin/provisioners` body for `policies`.
    pub fn registration(&self, policies: &[&str]) -> Value {
        json!({
            "name": self.name,
            "public_key_pem": self.public_key_pem,
            "policies": policies,
        })
    }

    /// `claims` signed ES256 (header `alg` and `typ` only).
    pub fn sign(&self, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            b64url(br#"{"alg":"ES256","typ":"JWT"}"#),
            b64url(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let signature = self.key.sign(&rng, signing_input.as_bytes()).expect("sign");
        format!("{signing_input}.{}", b64url(signature.as_ref()))
    }

    /// The claims of a token for `policy` and `identity`, valid for two
    /// minutes from now, with `jti` and `audience` (the server's
    /// `<public_url>/v1/enroll`).
    pub fn claims(&self, audience: &str, policy: &str, identity: &Value, jti: &str) -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        json!({
            "iss": self.name,
            "aud": audience,
            "sub": "workload",
            "jti": jti,
            "iat": now,
            "exp": now + 120,
            "policy": policy,
            "identity": identity,
        })
    }

    /// A signed token with [`Self::claims`].
    pub fn token(&self, audience: &str, policy: &str, identity: &Value, jti: &str) -> String {
        self.sign(&self.claims(audience, policy, identity, jti))
    }
}
