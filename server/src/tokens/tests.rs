use base64::Engine as _;
use time::macros::datetime;

use super::*;

const ISSUER: &str = "https://ca.test:8443";
const ENROLL: &str = "https://ca.test:8443/v1/enroll";
const ADMIN: &str = "https://ca.test:8443/v1/admin";
const NOW: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);

fn new_authority() -> (tempfile::TempDir, TokenAuthority) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    create_signing_key_file(&path).unwrap();
    let authority = TokenAuthority::load(&path, ISSUER).unwrap();
    (dir, authority)
}

fn identity() -> Identity {
    Identity {
        dns: vec!["api.payments.internal".into()],
        ..Identity::default()
    }
}

fn bootstrap(authority: &TokenAuthority, audience: &str, minutes: i64) -> String {
    authority
        .mint_bootstrap(
            "tok1",
            "payments",
            &identity(),
            audience,
            NOW,
            NOW + time::Duration::minutes(minutes),
        )
        .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Replaces the header of `token` and re-signs nothing: the payload and
/// signature stay, as an attacker would send them.
fn with_header(token: &str, header: &str) -> String {
    let mut parts = token.splitn(2, '.');
    parts.next();
    format!("{}.{}", b64(header.as_bytes()), parts.next().unwrap())
}

#[test]
fn ok_bootstrap_round_trip() {
    let (_dir, authority) = new_authority();
    let claims = authority
        .verify_bootstrap(&bootstrap(&authority, ENROLL, 10), ENROLL, NOW)
        .unwrap();
    assert_eq!(claims.registered.jti, "tok1");
    assert_eq!(claims.policy, "payments");
    assert_eq!(claims.identity, identity());
}

#[test]
fn ok_key_file_is_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    create_signing_key_file(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(create_signing_key_file(&path).is_err());
}

#[test]
fn fail_expired() {
    let (_dir, authority) = new_authority();
    let token = bootstrap(&authority, ENROLL, 10);
    let later = NOW + time::Duration::minutes(11);
    assert!(matches!(
        authority.verify_bootstrap(&token, ENROLL, later),
        Err(TokenError::Expired { .. })
    ));
}

#[test]
fn ok_within_leeway() {
    let (_dir, authority) = new_authority();
    let token = bootstrap(&authority, ENROLL, 10);
    let just_after =
        NOW + time::Duration::minutes(10) + time::Duration::seconds(LEEWAY_SECONDS - 1);
    assert!(authority
        .verify_bootstrap(&token, ENROLL, just_after)
        .is_ok());
}

#[test]
fn fail_issued_in_the_future() {
    let (_dir, authority) = new_authority();
    let token = bootstrap(&authority, ENROLL, 10);
    let earlier = NOW - time::Duration::minutes(5);
    assert!(matches!(
        authority.verify_bootstrap(&token, ENROLL, earlier),
        Err(TokenError::NotYetValid { .. })
    ));
}

#[test]
fn fail_before_its_nbf() {
    // This server never sets nbf; a token that carries one is honoured.
    let (_dir, authority) = new_authority();
    let mut registered = authority.registered(
        "tok-nbf",
        "tok-nbf",
        ENROLL,
        KIND_BOOTSTRAP,
        NOW,
        NOW + time::Duration::minutes(30),
    );
    registered.nbf = Some((NOW + time::Duration::minutes(10)).unix_timestamp());
    let token = authority
        .sign(&BootstrapClaims {
            registered,
            policy: "payments".into(),
            identity: identity(),
        })
        .unwrap();
    assert!(matches!(
        authority.verify_bootstrap(&token, ENROLL, NOW),
        Err(TokenError::NotYetValid { .. })
    ));
    let later = NOW + time::Duration::minutes(11);
    let claims = authority
        .verify_bootstrap(&token, ENROLL, later)
        .expect("valid from nbf");
    assert_eq!(
        claims.registered.nbf,
        Some((NOW + time::Duration::minutes(10)).unix_timestamp())
    );
}

#[test]
fn fail_wrong_audience() {
    let (_dir, authority) = new_authority();
    let token = bootstrap(&authority, "https://other.test/v1/enroll", 10);
    assert!(matches!(
        authority.verify_bootstrap(&token, ENROLL, NOW),
        Err(TokenError::WrongAudience { .. })
    ));
}

#[test]
fn fail_admin_token_used_as_bootstrap_and_back() {
    let (_dir, authority) = new_authority();
    let admin = authority
        .mint_admin(
            "a1",
            Role::Admin,
            "ops",
            ADMIN,
            NOW,
            NOW + time::Duration::hours(1),
        )
        .unwrap();
    assert!(authority.verify_bootstrap(&admin, ENROLL, NOW).is_err());
    assert!(authority.verify_bootstrap(&admin, ADMIN, NOW).is_err());
    let boot = bootstrap(&authority, ENROLL, 10);
    assert!(authority.verify_admin(&boot, ADMIN, NOW).is_err());
    // Right audience, wrong kind of token.
    assert!(matches!(
        authority.verify_admin(&bootstrap(&authority, ADMIN, 10), ADMIN, NOW),
        Err(TokenError::WrongKind { .. })
    ));
    assert!(matches!(
        authority.verify_bootstrap(&admin, ENROLL, NOW),
        Err(TokenError::WrongAudience { .. })
    ));
}

#[test]
fn fail_alg_none() {
    let (_dir, authority) = new_authority();
    let token = bootstrap(&authority, ENROLL, 10);
    let header = format!(
        r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
        authority.key_id()
    );
    let forged = with_header(&token, &header);
    let unsigned = format!("{}.", forged.rsplit_once('.').unwrap().0);
    for candidate in [forged, unsigned] {
        assert!(matches!(
            authority.verify_bootstrap(&candidate, ENROLL, NOW),
            Err(TokenError::AlgorithmNotAllowed { .. })
        ));
    }
}

#[test]
fn fail_hs256_signed_with_the_public_key() {
    // The classic confusion: an HMAC keyed with the verifier's public key.
    let (_dir, authority) = new_authority();
    let claims = authority
        .verify_bootstrap(&bootstrap(&authority, ENROLL, 10), ENROLL, NOW)
        .unwrap();
    let public = match authority.decoding_key.kind() {
        jsonwebtoken::DecodingKeyKind::SecretOrDer(bytes) => bytes.clone(),
        _ => unreachable!(),
    };
    for alg in [Algorithm::HS256, Algorithm::HS512] {
        let mut header = Header::new(alg);
        header.kid = Some(authority.key_id().to_owned());
        let forged =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&public)).unwrap();
        assert!(matches!(
            authority.verify_bootstrap(&forged, ENROLL, NOW),
            Err(TokenError::AlgorithmNotAllowed { .. })
        ));
    }
    let rs = with_header(
        &bootstrap(&authority, ENROLL, 10),
        &format!(r#"{{"alg":"RS256","kid":"{}"}}"#, authority.key_id()),
    );
    assert!(matches!(
        authority.verify_bootstrap(&rs, ENROLL, NOW),
        Err(TokenError::AlgorithmNotAllowed { .. })
    ));
}

#[test]
fn fail_token_from_another_key() {
    let (_dir, authority) = new_authority();
    let (_other_dir, other) = new_authority();
    let foreign = bootstrap(&other, ENROLL, 10);
    assert_eq!(
        authority.verify_bootstrap(&foreign, ENROLL, NOW),
        Err(TokenError::UnknownKey)
    );
    // Same kid claimed, other key's signature.
    let forged = with_header(
        &foreign,
        &format!(
            r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#,
            authority.key_id()
        ),
    );
    assert_eq!(
        authority.verify_bootstrap(&forged, ENROLL, NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn fail_tampered_claims() {
    let (_dir, authority) = new_authority();
    let token = bootstrap(&authority, ENROLL, 10);
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    claims["identity"]["dns"] = serde_json::json!(["*.internal"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        authority.verify_bootstrap(&tampered, ENROLL, NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn fail_garbage() {
    let (_dir, authority) = new_authority();
    for garbage in ["", "a", "a.b", "a.b.c.d", "!!!.e30.x", "e30.e30.e30"] {
        assert!(matches!(
            authority.verify_bootstrap(garbage, ENROLL, NOW),
            Err(TokenError::Malformed(_) | TokenError::AlgorithmNotAllowed { .. })
        ));
    }
}

/// An Ed25519 [`CaSigner`] in memory, standing in for the HSM key (the
/// token tests in `hsm` and the end-to-end suite use real tokens).
struct InMemoryEd25519 {
    key_pair: ring::signature::Ed25519KeyPair,
    spki: Vec<u8>,
}

impl InMemoryEd25519 {
    fn from_pkcs8(pkcs8: &[u8]) -> Self {
        use der::Encode as _;
        let key_pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).unwrap();
        let spki = spki::SubjectPublicKeyInfoOwned {
            algorithm: spki::AlgorithmIdentifierOwned {
                oid: der::asn1::ObjectIdentifier::new_unwrap("1.3.101.112"),
                parameters: None,
            },
            subject_public_key: der::asn1::BitString::from_bytes(key_pair.public_key().as_ref())
                .unwrap(),
        }
        .to_der()
        .unwrap();
        Self { key_pair, spki }
    }
}

impl CaSigner for InMemoryEd25519 {
    fn key_type(&self) -> KeyType {
        KeyType::Ed25519
    }
    fn label(&self) -> &str {
        "token-signing"
    }
    fn subject_public_key_info(&self) -> &[u8] {
        &self.spki
    }
    fn signature_algorithm(&self) -> &[u8] {
        &[]
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        Ok(self.key_pair.sign(message).as_ref().to_vec())
    }
}

#[test]
fn ok_tokens_signed_by_an_hsm_key_verify_like_file_key_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    create_signing_key_file(&path).unwrap();
    let pem = std::fs::read_to_string(&path).unwrap();
    let (_, pkcs8) = der::pem::decode_vec(pem.as_bytes()).unwrap();
    let file_authority = TokenAuthority::load(&path, ISSUER).unwrap();
    let hsm_authority =
        TokenAuthority::from_hsm_key(Arc::new(InMemoryEd25519::from_pkcs8(&pkcs8)), ISSUER)
            .unwrap();
    assert_eq!(hsm_authority.key_id(), file_authority.key_id());

    let token = bootstrap(&hsm_authority, ENROLL, 10);
    let header = UnverifiedHeader::parse(&token).unwrap();
    assert_eq!(header.alg, "EdDSA");
    assert_eq!(header.kid.as_deref(), Some(hsm_authority.key_id()));
    // Each verifies the other's tokens: same key, same JWS.
    let claims = file_authority
        .verify_bootstrap(&token, ENROLL, NOW)
        .expect("a JWS assembled around the HSM signature verifies");
    assert_eq!(claims.identity, identity());
    file_authority
        .verify_bootstrap(&bootstrap(&file_authority, ENROLL, 10), ENROLL, NOW)
        .unwrap();
    hsm_authority
        .verify_bootstrap(&bootstrap(&file_authority, ENROLL, 10), ENROLL, NOW)
        .unwrap();
}

#[test]
fn fail_hsm_token_key_whose_public_half_was_replaced() {
    // The public key object on the token holds another key's point, as a
    // session without the PIN could arrange: the challenge does not verify.
    let pkcs8 = |seed: &Path| {
        create_signing_key_file(seed).unwrap();
        let pem = std::fs::read_to_string(seed).unwrap();
        der::pem::decode_vec(pem.as_bytes()).unwrap().1
    };
    let dir = tempfile::tempdir().unwrap();
    let genuine = InMemoryEd25519::from_pkcs8(&pkcs8(&dir.path().join("a.pem")));
    let planted = InMemoryEd25519::from_pkcs8(&pkcs8(&dir.path().join("b.pem")));
    let swapped = InMemoryEd25519 {
        key_pair: genuine.key_pair,
        spki: planted.spki,
    };
    let error = TokenAuthority::from_hsm_key(Arc::new(swapped), ISSUER).unwrap_err();
    assert!(
        matches!(error, TokenKeyError::HalvesDisagree { .. }),
        "{error}"
    );
}

#[test]
fn fail_hsm_token_key_that_is_not_ed25519() {
    struct P256;
    impl CaSigner for P256 {
        fn key_type(&self) -> KeyType {
            KeyType::EcP256
        }
        fn label(&self) -> &str {
            "not-ed25519"
        }
        fn subject_public_key_info(&self) -> &[u8] {
            &[]
        }
        fn signature_algorithm(&self) -> &[u8] {
            &[]
        }
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, HsmError> {
            unreachable!("never asked to sign")
        }
    }
    let error = TokenAuthority::from_hsm_key(Arc::new(P256), ISSUER).unwrap_err();
    assert!(matches!(error, TokenKeyError::NotEd25519 { .. }), "{error}");
}
