//! Provisioner tokens: each refusal in the verification order, with real
//! keys made by rcgen and tokens signed by jsonwebtoken, as an
//! orchestrator would sign them.

use certmint::wire::{Identity, ProvisionerInfo};
use certmint::Duration;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use time::macros::datetime;
use time::OffsetDateTime;

use super::*;

const AUDIENCE: &str = "https://ca.test:8443/v1/enroll";
const NOW: OffsetDateTime = datetime!(2026-06-01 12:00:00 UTC);

struct Issuer {
    private_pem: String,
    info: ProvisionerInfo,
    algorithm: Algorithm,
}

fn issuer(name: &str, scheme: &'static rcgen::SignatureAlgorithm, algorithm: Algorithm) -> Issuer {
    let key = rcgen::KeyPair::generate_for(scheme).expect("key");
    let public_key_pem = key.public_key_pem();
    let parsed = ProvisionerKey::from_pem(&public_key_pem).expect("registrable");
    Issuer {
        private_pem: key.serialize_pem(),
        info: ProvisionerInfo {
            name: name.into(),
            algorithm: parsed.algorithm_name().into(),
            key_id: parsed.key_id().into(),
            public_key_pem,
            policies: vec!["payments".into()],
            max_token_ttl: Duration::from_seconds(300).expect("duration"),
            created_at: NOW,
            created_by: "admin:test".into(),
            disabled_at: None,
        },
        algorithm,
    }
}

fn p256(name: &str) -> Issuer {
    issuer(name, &rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256)
}

fn claims(issuer: &str) -> Value {
    json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "payments-api-7d9f",
        "jti": "run-42",
        "iat": NOW.unix_timestamp(),
        "exp": NOW.unix_timestamp() + 120,
        "policy": "payments",
        "identity": Identity { dns: vec!["api.payments.internal".into()], ..Identity::default() },
    })
}

fn sign(issuer: &Issuer, header: Header, claims: &Value) -> String {
    let key = match issuer.algorithm {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(issuer.private_pem.as_bytes()),
        _ => EncodingKey::from_ec_pem(issuer.private_pem.as_bytes()),
    }
    .expect("encoding key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn token(issuer: &Issuer) -> String {
    sign(
        issuer,
        Header::new(issuer.algorithm),
        &claims(&issuer.info.name),
    )
}

#[test]
fn ok_each_supported_key_type_verifies_its_own_algorithm() {
    for (scheme, algorithm, name) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256, "ES256"),
        (&rcgen::PKCS_ECDSA_P384_SHA384, Algorithm::ES384, "ES384"),
        (&rcgen::PKCS_ED25519, Algorithm::EdDSA, "EdDSA"),
    ] {
        let issuer = issuer("ci", scheme, algorithm);
        assert_eq!(issuer.info.algorithm, name);
        let mut header = Header::new(algorithm);
        header.kid = Some(issuer.info.key_id.clone());
        let token = sign(&issuer, header, &claims("ci"));
        let verified = verify(&token, &issuer.info, AUDIENCE, NOW).expect(name);
        assert_eq!(verified.jti, "run-42");
        assert_eq!(verified.policy, "payments");
        assert_eq!(unverified_issuer(&token).unwrap(), "ci");
    }
}

#[test]
fn fail_keys_that_cannot_be_registered() {
    for (case, pem) in [
        ("garbage", "not a key".to_owned()),
        (
            "a certificate",
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".to_owned(),
        ),
        (
            "a private key",
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        ),
    ] {
        assert!(ProvisionerKey::from_pem(&pem).is_err(), "{case}");
    }
    // The kid is stable for a key, and differs between keys.
    let one = p256("a");
    let again = ProvisionerKey::from_pem(&one.info.public_key_pem).unwrap();
    assert_eq!(again.key_id(), one.info.key_id);
    assert_ne!(p256("b").info.key_id, one.info.key_id);
}

#[test]
fn fail_algorithm_confusion_none_and_hmac_with_the_public_key() {
    let issuer = p256("ci");
    let body = |alg: &str| {
        use base64::Engine as _;
        let b64 = |value: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(value).unwrap())
        };
        format!(
            "{}.{}",
            b64(&json!({"alg": alg, "typ": "JWT"})),
            b64(&claims("ci"))
        )
    };
    let unsigned = format!("{}.", body("none"));
    assert!(matches!(
        verify(&unsigned, &issuer.info, AUDIENCE, NOW),
        Err(TokenError::AlgorithmNotAllowed { .. })
    ));
    let hmac = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("ci"),
        &EncodingKey::from_secret(issuer.info.public_key_pem.as_bytes()),
    )
    .unwrap();
    assert!(matches!(
        verify(&hmac, &issuer.info, AUDIENCE, NOW),
        Err(TokenError::AlgorithmNotAllowed {
            expected: "ES256",
            ..
        })
    ));
}

#[test]
fn fail_each_claim_and_limit_in_order() {
    let issuer = p256("ci");
    let other = p256("ci");
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut body = claims("ci");
        edit(&mut body);
        sign(&issuer, Header::new(Algorithm::ES256), &body)
    };
    let check = |token: &str| verify(token, &issuer.info, AUDIENCE, NOW);

    // Another key with the same name: the signature fails.
    assert_eq!(check(&token(&other)), Err(TokenError::BadSignature));
    // A kid that names another key.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(other.info.key_id.clone());
    let wrong_kid = sign(&issuer, header, &claims("ci"));
    assert_eq!(check(&wrong_kid), Err(TokenError::UnknownKey));
    assert!(matches!(
        check(&with(&|c| c["aud"] = json!("https://elsewhere/v1/enroll"))),
        Err(TokenError::WrongAudience { .. })
    ));
    assert_eq!(
        check(&with(&|c| c["iss"] = json!("other"))),
        Err(TokenError::WrongIssuer)
    );
    assert!(matches!(
        check(&with(&|c| {
            c.as_object_mut().unwrap().remove("jti");
        })),
        Err(TokenError::Malformed(_))
    ));
    assert!(matches!(
        check(&with(&|c| c["jti"] = json!("has space"))),
        Err(TokenError::Malformed(_))
    ));
    assert!(matches!(
        check(&with(&|c| c["exp"] = json!(NOW.unix_timestamp() - 120))),
        Err(TokenError::Expired { .. })
    ));
    assert_eq!(
        check(&with(&|c| c["policy"] = json!("billing"))),
        Err(TokenError::PolicyNotAllowed {
            provisioner: "ci".into(),
            policy: "billing".into()
        })
    );
    assert_eq!(
        check(&with(&|c| c["exp"] = json!(NOW.unix_timestamp() + 3600))),
        Err(TokenError::LifetimeTooLong {
            lifetime: 3600,
            max: 300
        })
    );
    // Disabled: refused even though everything else is right.
    let mut disabled = issuer.info.clone();
    disabled.disabled_at = Some(NOW);
    assert_eq!(
        verify(&token(&issuer), &disabled, AUDIENCE, NOW),
        Err(TokenError::IssuerDisabled {
            provisioner: "ci".into()
        })
    );
    assert!(check(&token(&issuer)).is_ok());
}

#[test]
fn ok_record_ids_are_hex_stable_and_per_provisioner() {
    let id = token_record_id("ci", "run-42");
    assert_eq!(id.len(), 32);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(id, token_record_id("ci", "run-42"));
    assert_ne!(id, token_record_id("cd", "run-42"));
    assert_ne!(id, token_record_id("ci", "run-43"));
}
