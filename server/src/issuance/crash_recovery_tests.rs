//! The enrollment outcomes for a token a crash left used up, through the
//! real pipeline (SQLite store, in-memory P-256 CA key standing in for the
//! HSM): redelivery of the certificate whose response was lost, refund and
//! issuance when the pending row is older than the bound, and a retryable
//! 503 while it is younger.

use std::sync::{Arc, Mutex};

use certmint::wire::{
    AllowedNames, CertificateStatus, EnrollRequest, KeyType, PolicySpec, RenewalRules, TtlBounds,
};
use certmint::ProblemCode;
use der::{Decode as _, Encode as _};
use time::macros::datetime;

use super::*;
use crate::api::error::ApiError;
use crate::hsm::HsmError;
use crate::store::Store;
use crate::tokens::{create_signing_key_file, TokenAuthority};

const ISSUER: &str = "https://ca.test:8443";
const AUDIENCE: &str = "https://ca.test:8443/v1/enroll";
const START: OffsetDateTime = datetime!(2026-06-01 12:00:00 UTC);
const PENDING_TIMEOUT_SECONDS: i64 = 120;
const NAME: &str = "api.payments.svc.cluster.local";

/// A clock the test moves.
struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    fn set(&self, now: OffsetDateTime) {
        *self.0.lock().unwrap() = now;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

/// A P-256 CA key in memory, standing in for the HSM key.
struct InMemoryP256 {
    key_pair: ring::signature::EcdsaKeyPair,
    spki: Vec<u8>,
    algorithm: Vec<u8>,
}

impl InMemoryP256 {
    fn generate() -> Self {
        use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key_pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap();
        let oid = der::asn1::ObjectIdentifier::new_unwrap;
        let spki = spki::SubjectPublicKeyInfoOwned {
            algorithm: spki::AlgorithmIdentifierOwned {
                oid: oid("1.2.840.10045.2.1"),
                parameters: Some(der::Any::encode_from(&oid("1.2.840.10045.3.1.7")).unwrap()),
            },
            subject_public_key: der::asn1::BitString::from_bytes(key_pair.public_key().as_ref())
                .unwrap(),
        }
        .to_der()
        .unwrap();
        let algorithm = spki::AlgorithmIdentifierOwned {
            oid: oid("1.2.840.10045.4.3.2"),
            parameters: None,
        }
        .to_der()
        .unwrap();
        Self {
            key_pair,
            spki,
            algorithm,
        }
    }
}

impl CaSigner for InMemoryP256 {
    fn key_type(&self) -> KeyType {
        KeyType::EcP256
    }
    fn label(&self) -> &str {
        "test-ca"
    }
    fn subject_public_key_info(&self) -> &[u8] {
        &self.spki
    }
    fn signature_algorithm(&self) -> &[u8] {
        &self.algorithm
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let rng = ring::rand::SystemRandom::new();
        Ok(self.key_pair.sign(&rng, message).unwrap().as_ref().to_vec())
    }
}

struct Harness {
    issuer: Issuer,
    store: Store,
    clock: Arc<ManualClock>,
    tokens: Arc<TokenAuthority>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("certmint.db").display());
        let store = Store::open(&url, 4).unwrap();
        let signer: Arc<dyn CaSigner> = Arc::new(InMemoryP256::generate());
        let spki =
            spki::SubjectPublicKeyInfoOwned::from_der(signer.subject_public_key_info()).unwrap();
        let name: x509_cert::name::Name = "CN=certmint test CA".parse().unwrap();
        let template = profile::CaTemplate {
            serial: random_serial().unwrap(),
            subject: name.clone(),
            issuer: name,
            subject_public_key_info: spki.clone(),
            issuer_public_key_info: spki,
            path_length: 0,
            not_before: START - time::Duration::days(1),
            not_after: START + time::Duration::days(365),
        };
        let unsigned = profile::prepare_ca(&template, signer.as_ref()).unwrap();
        let signature = signer.sign(unsigned.tbs_der()).unwrap();
        let certificate = unsigned.assemble(&signature).unwrap();
        let chain_pem = pem("CERTIFICATE", &certificate.to_der().unwrap()).unwrap();
        let key_path = dir.path().join("token-key.pem");
        create_signing_key_file(&key_path).unwrap();
        let tokens = Arc::new(TokenAuthority::load(&key_path, ISSUER).unwrap());
        let clock = Arc::new(ManualClock(Mutex::new(START)));
        store
            .create_policy(&payments_policy(), "admin:test", START)
            .unwrap();
        let issuer = Issuer::new(IssuerParts {
            store: store.clone(),
            ca: IssuingCa {
                signer,
                certificate,
                key_id: "00aa".into(),
                chain_pem,
                path_not_after: START + time::Duration::days(365),
            },
            tokens: tokens.clone(),
            clock: clock.clone(),
            settings: IssuerSettings {
                enroll_audience: AUDIENCE.into(),
                backdate_seconds: 60,
                renew_fraction: 2.0 / 3.0,
                renew_jitter: 0.0,
                pending_timeout_seconds: PENDING_TIMEOUT_SECONDS,
                crl: crate::revocation::sharding::CrlSharding {
                    base_url: "http://127.0.0.1:1".into(),
                    shards: 4,
                    width_seconds: 3600,
                },
            },
            metrics: Arc::new(Metrics::new()),
        });
        Self {
            issuer,
            store,
            clock,
            tokens,
            _dir: dir,
        }
    }

    /// A single-use bootstrap token for [`NAME`], recorded and minted.
    fn single_use_token(&self, id: &str) -> String {
        let identity = Identity {
            dns: vec![NAME.to_owned()],
            ip: Vec::new(),
            uri: Vec::new(),
        };
        self.store
            .insert_token(
                &NewToken {
                    id: id.to_owned(),
                    policy: "payments".to_owned(),
                    identity: identity.clone(),
                    max_uses: 1,
                    expires_at: START + time::Duration::days(1),
                },
                "admin:test",
                START,
            )
            .unwrap();
        self.tokens
            .mint_bootstrap(
                id,
                "payments",
                &identity,
                AUDIENCE,
                START,
                START + time::Duration::days(1),
            )
            .unwrap()
    }

    /// What a request that died with the server leaves: a pending row
    /// holding the token's use, recorded at `at`.
    fn dead_request(&self, token_id: &str, csr: &str, serial: &str, at: OffsetDateTime) {
        let subject_key_sha256 = csr::verify(csr).unwrap().subject_key_sha256;
        let cert = NewCertificate {
            serial: serial.to_owned(),
            policy: "payments".to_owned(),
            policy_version: 1,
            identity: Identity {
                dns: vec![NAME.to_owned()],
                ip: Vec::new(),
                uri: Vec::new(),
            },
            key_type: KeyType::EcP256,
            subject_key_sha256,
            not_before: at,
            not_after: at + time::Duration::hours(1),
            tbs_der: vec![0x30, 0x00],
            crl: crate::store::CrlAssignment {
                issuer_key_id: "00aa".to_owned(),
                shard: 0,
            },
            token_id: Some(token_id.to_owned()),
            predecessor: None,
            chain_started_at: at,
            require_current_policy: false,
        };
        self.store
            .begin_issuance(&cert, Some(token_id), "token:dead", at)
            .unwrap();
    }

    fn uses(&self, token_id: &str) -> u32 {
        self.store.token(token_id).unwrap().unwrap().uses
    }
}

fn payments_policy() -> PolicySpec {
    PolicySpec {
        name: "payments".to_owned(),
        description: "test".to_owned(),
        allowed: AllowedNames {
            dns: vec!["*.payments.svc.cluster.local".to_owned()],
            ip: Vec::new(),
            uri: Vec::new(),
        },
        key_types: vec!["ec-p256".to_owned()],
        ttl: TtlBounds {
            default: "1h".parse().unwrap(),
            max: "24h".parse().unwrap(),
        },
        extended_key_usage: vec!["client_auth".to_owned()],
        renewal: RenewalRules::default(),
        allow_wildcard_certificates: false,
        enabled: true,
    }
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(vec![NAME.to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

fn request(csr: &str, token: &str) -> EnrollRequest {
    serde_json::from_value(serde_json::json!({ "csr": csr, "token": token })).unwrap()
}

fn code_of(error: ServiceError) -> ProblemCode {
    ApiError::from_service(error, "test").code().clone()
}

#[test]
fn ok_retry_after_a_lost_response_gets_the_same_certificate() {
    let harness = Harness::new();
    let token = harness.single_use_token("tok-lost-response");
    let csr = csr();
    let first = harness.issuer.enroll(&request(&csr, &token)).unwrap();
    harness.clock.set(START + time::Duration::seconds(30));
    let again = harness.issuer.enroll(&request(&csr, &token)).unwrap();
    assert_eq!(again.serial, first.serial);
    assert_eq!(again.certificate_pem, first.certificate_pem);
    assert_eq!(
        (again.not_before, again.not_after),
        (first.not_before, first.not_after)
    );
    // renew_after as at first issuance (no jitter here): from its dates.
    assert_eq!(again.renew_after, first.renew_after);
    assert_eq!(harness.uses("tok-lost-response"), 1);
    let kinds: Vec<String> = harness
        .store
        .list_audit(None, 100)
        .unwrap()
        .items
        .into_iter()
        .map(|event| event.kind)
        .collect();
    assert!(kinds
        .iter()
        .any(|kind| kind == crate::audit::CERTIFICATE_REDELIVERED));
    // Another key with the same token is still refused.
    let other = harness
        .issuer
        .enroll(&request(&self::csr(), &token))
        .unwrap_err();
    assert_eq!(code_of(other), ProblemCode::TokenUsed);
}

#[test]
fn ok_retry_after_a_dead_request_past_the_bound_is_refunded_and_issued() {
    let harness = Harness::new();
    let token = harness.single_use_token("tok-dead");
    let csr = csr();
    harness.dead_request("tok-dead", &csr, &"0a".repeat(16), START);
    harness
        .clock
        .set(START + time::Duration::seconds(PENDING_TIMEOUT_SECONDS + 1));
    let bundle = harness.issuer.enroll(&request(&csr, &token)).unwrap();
    assert_eq!(harness.uses("tok-dead"), 1);
    let dead = harness
        .store
        .certificate(&"0a".repeat(16))
        .unwrap()
        .unwrap();
    assert_eq!(dead.status, CertificateStatus::Failed);
    let issued = harness.store.certificate(&bundle.serial).unwrap().unwrap();
    assert_eq!(issued.status, CertificateStatus::Issued);
}

#[test]
fn fail_retry_while_a_young_pending_row_holds_the_use_is_in_flight() {
    let harness = Harness::new();
    let token = harness.single_use_token("tok-young");
    let csr = csr();
    harness.dead_request("tok-young", &csr, &"0b".repeat(16), START);
    harness.clock.set(START + time::Duration::seconds(10));
    // Another key: a parallel request that lost the race, as always.
    let other = harness
        .issuer
        .enroll(&request(&self::csr(), &token))
        .unwrap_err();
    assert_eq!(code_of(other), ProblemCode::TokenUsed);
    let error = harness.issuer.enroll(&request(&csr, &token)).unwrap_err();
    assert!(
        matches!(
            error,
            ServiceError::Store(StoreError::TokenUseInFlight { .. })
        ),
        "{error:?}"
    );
    assert_eq!(code_of(error), ProblemCode::IssuanceInFlight);
    assert_eq!(
        crate::api::error::status_and_title(&ProblemCode::IssuanceInFlight).0,
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE
    );
    // Nothing changed: the row is still pending, the use still held.
    let young = harness
        .store
        .certificate(&"0b".repeat(16))
        .unwrap()
        .unwrap();
    assert_eq!(young.status, CertificateStatus::Pending);
    assert_eq!(harness.uses("tok-young"), 1);
}

#[test]
fn fail_a_withdrawn_issuance_is_retryable_not_internal() {
    let error = ServiceError::Store(StoreError::IssuanceWithdrawn {
        serial: "0c".repeat(16),
    });
    assert_eq!(code_of(error), ProblemCode::StoreUnavailable);
}
