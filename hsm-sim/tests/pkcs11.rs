//! The built `libhsm_sim.so`, loaded through `cryptoki` exactly as certmint
//! loads it, plus the `hsm-sim` CLI and OpenSC's `pkcs11-tool`.
//!
//! Isolation: the module reads `HSM_SIM_CONFIG` at `C_Initialize`, from the
//! process environment. Rather than mutate this process's environment
//! (tests run in parallel threads), each test re-executes this test binary
//! for itself alone, with the environment of a fresh temporary state
//! directory; the child sees `CHILD_ENV` and runs the scenario. Signatures
//! are verified independently with OpenSSL, never only by the token.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Verifier};

/// Set in a child process: the scenario's state directory.
const CHILD_ENV: &str = "HSM_SIM_TEST_CHILD_DIR";
const SO_PIN: &str = "so-secret-1234";
const USER_PIN: &str = "user-secret-5678";
const LABEL: &str = "certmint-test";

/// Runs `scenario` in a child process of this test binary with its own
/// state directory and configuration file.
fn isolated(name: &str, scenario: impl FnOnce(&Path)) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        scenario(Path::new(&dir));
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let state = temp.path().join("state");
    let config = temp.path().join("hsm-sim.toml");
    // Few PBKDF2 rounds: the tests exercise behaviour, not KDF cost.
    std::fs::write(
        &config,
        format!(
            "dir = {:?}\nkdf_iterations = 1000\n",
            state.display().to_string()
        ),
    )
    .expect("write config");
    let output = Command::new(std::env::current_exe().expect("current exe"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &state)
        .env("HSM_SIM_CONFIG", &config)
        .env_remove("HSM_SIM_DIR")
        .output()
        .expect("run child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scenario {name} failed:\n{stdout}\n{stderr}"
    );
    // The filter must have matched exactly this one test in the child.
    assert!(
        stdout.contains("1 passed"),
        "scenario {name} did not run:\n{stdout}"
    );
}

/// The module built for this test run. `cargo test` builds the cdylib into
/// `target/<profile>/deps/` beside this executable, and only `cargo build`
/// copies it up to `target/<profile>/`, where it may be stale; so `deps`
/// comes first.
fn module_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps directory");
    let candidates = [
        deps.join("libhsm_sim.so"),
        deps.parent()
            .expect("profile directory")
            .join("libhsm_sim.so"),
    ];
    candidates
        .into_iter()
        .find(|path| path.exists())
        .expect("libhsm_sim.so built next to the test executable")
}

fn load() -> Pkcs11 {
    let pkcs11 = Pkcs11::new(module_path()).expect("load module");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    pkcs11
}

fn pin(text: &str) -> AuthPin {
    AuthPin::new(text.into())
}

/// What certmint's `init_token` does: C_InitToken on the free slot, then
/// C_InitPIN as SO. Returns the token's slot.
fn init_token(pkcs11: &Pkcs11, label: &str) -> Slot {
    let slots = pkcs11.get_slots_with_token().expect("slots");
    let free = *slots
        .iter()
        .find(|slot| {
            !pkcs11
                .get_token_info(**slot)
                .expect("token info")
                .token_initialized()
        })
        .expect("a free slot after the initialised ones");
    pkcs11
        .init_token(free, &pin(SO_PIN), label)
        .expect("C_InitToken");
    let slot = find_slot(pkcs11, label);
    assert_eq!(slot, free);
    let session = pkcs11.open_rw_session(slot).expect("open session");
    session
        .login(UserType::So, Some(&pin(SO_PIN)))
        .expect("SO login");
    session.init_pin(&pin(USER_PIN)).expect("C_InitPIN");
    session.logout().expect("logout");
    slot
}

fn find_slot(pkcs11: &Pkcs11, label: &str) -> Slot {
    let slots = pkcs11.get_slots_with_token().expect("slots");
    let matching: Vec<Slot> = slots
        .into_iter()
        .filter(|slot| {
            let info = pkcs11.get_token_info(*slot).expect("token info");
            info.token_initialized() && info.label().trim_end() == label
        })
        .collect();
    assert_eq!(matching.len(), 1, "exactly one token labelled {label}");
    matching[0]
}

fn user_session(pkcs11: &Pkcs11, slot: Slot) -> Session {
    let session = pkcs11.open_rw_session(slot).expect("open session");
    session
        .login(UserType::User, Some(&pin(USER_PIN)))
        .expect("user login");
    session
}

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// PrintableString "edwards25519".
const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ec(&'static [u8]),
    Ed25519(&'static [u8]),
    Rsa(u64),
}

/// certmint's key pair templates (server/src/hsm/keys.rs).
fn templates(
    kind: Kind,
    label: &str,
    id: &[u8],
    sensitive: bool,
) -> (Mechanism<'static>, Vec<Attribute>, Vec<Attribute>) {
    let mut public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let mechanism = match kind {
        Kind::Ec(params) => {
            public.push(Attribute::EcParams(params.to_vec()));
            Mechanism::EccKeyPairGen
        }
        Kind::Ed25519(params) => {
            public.push(Attribute::EcParams(params.to_vec()));
            Mechanism::EccEdwardsKeyPairGen
        }
        Kind::Rsa(bits) => {
            public.push(Attribute::ModulusBits(bits.into()));
            public.push(Attribute::PublicExponent(vec![1, 0, 1]));
            Mechanism::RsaPkcsKeyPairGen
        }
    };
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(sensitive),
        Attribute::Extractable(!sensitive),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    (mechanism, public, private)
}

fn generate(
    session: &Session,
    kind: Kind,
    label: &str,
    sensitive: bool,
) -> (ObjectHandle, ObjectHandle) {
    let (mechanism, public, private) = templates(kind, label, label.as_bytes(), sensitive);
    session
        .generate_key_pair(&mechanism, &public, &private)
        .unwrap_or_else(|error| panic!("generate {kind:?}: {error}"))
}

/// The public key as OpenSSL sees it, from the attributes certmint reads.
fn openssl_public_key(session: &Session, public: ObjectHandle) -> PKey<Public> {
    let attributes = session
        .get_attributes(
            public,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )
        .expect("public attributes");
    let mut key_type = None;
    let (mut params, mut point, mut modulus, mut exponent) = (None, None, None, None);
    for attribute in attributes {
        match attribute {
            Attribute::KeyType(value) => key_type = Some(value),
            Attribute::EcParams(value) => params = Some(value),
            Attribute::EcPoint(value) => point = Some(value),
            Attribute::Modulus(value) => modulus = Some(value),
            Attribute::PublicExponent(value) => exponent = Some(value),
            _ => {}
        }
    }
    let key_type = key_type.expect("CKA_KEY_TYPE");
    if key_type == KeyType::RSA {
        let rsa = Rsa::from_public_components(
            BigNum::from_slice(&modulus.expect("modulus")).expect("n"),
            BigNum::from_slice(&exponent.expect("exponent")).expect("e"),
        )
        .expect("rsa");
        return PKey::from_rsa(rsa).expect("pkey");
    }
    let point = point.expect("CKA_EC_POINT");
    // CKA_EC_POINT is a DER OCTET STRING wrapping the point.
    assert_eq!(point[0], 0x04, "OCTET STRING tag");
    assert_eq!(usize::from(point[1]), point.len() - 2, "short-form length");
    let raw = &point[2..];
    if key_type == KeyType::EC_EDWARDS {
        return PKey::public_key_from_raw_bytes(raw, Id::ED25519).expect("ed25519");
    }
    let nid = match params.expect("CKA_EC_PARAMS").as_slice() {
        P256 => Nid::X9_62_PRIME256V1,
        P384 => Nid::SECP384R1,
        other => panic!("unexpected params {other:02x?}"),
    };
    let group = EcGroup::from_curve_name(nid).expect("group");
    let mut context = BigNumContext::new().expect("bn ctx");
    let point = EcPoint::from_bytes(&group, raw, &mut context).expect("point");
    PKey::from_ec_key(EcKey::from_public_key(&group, &point).expect("ec key")).expect("pkey")
}

/// Verifies a raw `r||s` ECDSA signature over `digest`.
fn verify_raw_ecdsa(key: &PKey<Public>, digest: &[u8], signature: &[u8]) -> bool {
    let (r, s) = signature.split_at(signature.len() / 2);
    let signature = EcdsaSig::from_private_components(
        BigNum::from_slice(r).expect("r"),
        BigNum::from_slice(s).expect("s"),
    )
    .expect("sig");
    signature
        .verify(digest, &key.ec_key().expect("ec"))
        .expect("verify")
}

fn verify_with(
    key: &PKey<Public>,
    digest: MessageDigest,
    data: &[u8],
    signature: &[u8],
    pss: bool,
) -> bool {
    let mut verifier = Verifier::new(digest, key).expect("verifier");
    if pss {
        verifier.set_rsa_padding(Padding::PKCS1_PSS).expect("pss");
        verifier.set_rsa_mgf1_md(digest).expect("mgf");
        verifier
            .set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
            .expect("salt");
    }
    verifier.verify_oneshot(signature, data).expect("verify")
}

fn sha(digest: MessageDigest, data: &[u8]) -> Vec<u8> {
    openssl::hash::hash(digest, data).expect("hash").to_vec()
}

fn rv(error: Error) -> RvError {
    match error {
        Error::Pkcs11(code, _) => code,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

/// Runs the CLI with this process's environment (the child's config).
fn cli(arguments: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_hsm-sim"))
        .args(arguments)
        .output()
        .expect("run hsm-sim");
    assert!(
        output.status.success(),
        "hsm-sim {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn ok_every_key_type_signs_and_openssl_verifies() {
    isolated("ok_every_key_type_signs_and_openssl_verifies", |_| {
        let pkcs11 = load();
        let slot = init_token(&pkcs11, LABEL);
        let session = user_session(&pkcs11, slot);
        let data = b"to be signed";

        for (name, params, digest, mechanism) in [
            (
                "p256",
                P256,
                MessageDigest::sha256(),
                Mechanism::EcdsaSha256,
            ),
            (
                "p384",
                P384,
                MessageDigest::sha384(),
                Mechanism::EcdsaSha384,
            ),
        ] {
            let (public, private) = generate(&session, Kind::Ec(params), name, true);
            let key = openssl_public_key(&session, public);
            // certmint: CKM_ECDSA over a host-computed digest, raw r||s.
            let hashed = sha(digest, data);
            let signature = session
                .sign(&Mechanism::Ecdsa, private, &hashed)
                .expect("CKM_ECDSA");
            assert_eq!(
                signature.len(),
                2 * key.ec_key().expect("ec").group().order_bits().div_ceil(8) as usize
            );
            assert!(
                verify_raw_ecdsa(&key, &hashed, &signature),
                "{name} CKM_ECDSA"
            );
            let signature = session
                .sign(&mechanism, private, data)
                .expect("CKM_ECDSA_SHA*");
            assert!(
                verify_raw_ecdsa(&key, &hashed, &signature),
                "{name} hashing mechanism"
            );
            session
                .verify(&mechanism, public, data, &signature)
                .expect("token verifies");
            let mut forged = signature.clone();
            forged[3] ^= 1;
            assert_eq!(
                rv(session
                    .verify(&mechanism, public, data, &forged)
                    .expect_err("forged")),
                RvError::SignatureInvalid
            );
        }

        for (name, params) in [("ed-oid", ED25519_OID), ("ed-name", ED25519_NAME)] {
            let (public, private) = generate(&session, Kind::Ed25519(params), name, true);
            let key = openssl_public_key(&session, public);
            let eddsa = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
            let signature = session.sign(&eddsa, private, data).expect("CKM_EDDSA");
            let mut verifier = Verifier::new_without_digest(&key).expect("verifier");
            assert!(
                verifier.verify_oneshot(&signature, data).expect("verify"),
                "{name}"
            );
        }

        let (public, private) = generate(&session, Kind::Rsa(2048), "rsa", true);
        let key = openssl_public_key(&session, public);
        assert_eq!(key.bits(), 2048);
        for (mechanism, digest) in [
            (Mechanism::Sha256RsaPkcs, MessageDigest::sha256()),
            (Mechanism::Sha384RsaPkcs, MessageDigest::sha384()),
        ] {
            let signature = session
                .sign(&mechanism, private, data)
                .expect("SHA*_RSA_PKCS");
            assert!(
                verify_with(&key, digest, data, &signature, false),
                "{mechanism:?}"
            );
        }
        let pss = PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: 32u64.into(),
        };
        let signature = session
            .sign(&Mechanism::Sha256RsaPkcsPss(pss), private, data)
            .expect("PSS");
        assert!(
            verify_with(&key, MessageDigest::sha256(), data, &signature, true),
            "SHA256_RSA_PKCS_PSS"
        );
        let signature = session
            .sign(
                &Mechanism::RsaPkcsPss(pss),
                private,
                &sha(MessageDigest::sha256(), data),
            )
            .expect("raw PSS");
        assert!(
            verify_with(&key, MessageDigest::sha256(), data, &signature, true),
            "RSA_PKCS_PSS"
        );
    });
}

#[test]
fn ok_rsa_4096_and_3072_key_sizes() {
    isolated("ok_rsa_4096_and_3072_key_sizes", |_| {
        let pkcs11 = load();
        let slot = init_token(&pkcs11, LABEL);
        let session = user_session(&pkcs11, slot);
        for bits in [3072u64, 4096] {
            let (public, private) =
                generate(&session, Kind::Rsa(bits), &format!("rsa{bits}"), true);
            let key = openssl_public_key(&session, public);
            assert_eq!(u64::from(key.bits()), bits);
            let signature = session
                .sign(&Mechanism::Sha256RsaPkcs, private, b"x")
                .expect("sign");
            assert!(verify_with(
                &key,
                MessageDigest::sha256(),
                b"x",
                &signature,
                false
            ));
        }
        let (mechanism, public, private) = templates(Kind::Rsa(1024), "weak", b"w", true);
        let refused = session
            .generate_key_pair(&mechanism, &public, &private)
            .expect_err("1024 refused");
        assert_eq!(rv(refused), RvError::KeySizeRange);
    });
}

#[test]
fn fail_sensitive_key_refuses_private_value() {
    isolated("fail_sensitive_key_refuses_private_value", |_| {
        let pkcs11 = load();
        let slot = init_token(&pkcs11, LABEL);
        let session = user_session(&pkcs11, slot);
        let (_, sensitive) = generate(&session, Kind::Ec(P256), "sensitive", true);
        let info = session
            .get_attribute_info(
                sensitive,
                &[
                    AttributeType::Value,
                    AttributeType::Label,
                    AttributeType::Modulus,
                ],
            )
            .expect("attribute info");
        assert!(
            matches!(info[0], AttributeInfo::Sensitive),
            "CKA_VALUE: {:?}",
            info[0]
        );
        assert!(matches!(info[1], AttributeInfo::Available(len) if len == "sensitive".len()));
        assert!(matches!(info[2], AttributeInfo::TypeInvalid));
        // cryptoki drops refused attributes from the result.
        let values = session
            .get_attributes(
                sensitive,
                &[
                    AttributeType::Value,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .expect("attributes");
        assert!(!values
            .iter()
            .any(|value| matches!(value, Attribute::Value(_))));
        let flags = session
            .get_attributes(
                sensitive,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                ],
            )
            .expect("flags");
        assert!(flags.contains(&Attribute::Sensitive(true)));
        assert!(flags.contains(&Attribute::Extractable(false)));
        assert!(flags.contains(&Attribute::AlwaysSensitive(true)));
        assert!(flags.contains(&Attribute::NeverExtractable(true)));
        // A sensitive key cannot be made non-sensitive.
        let change = session
            .update_attributes(sensitive, &[Attribute::Sensitive(false)])
            .expect_err("one-way");
        assert_eq!(rv(change), RvError::AttributeReadOnly);

        // The control case: an extractable, non-sensitive key does reveal
        // its scalar, so the refusal above is the policy, not a bug.
        let (public, open) = generate(&session, Kind::Ec(P256), "open", false);
        let values = session
            .get_attributes(open, &[AttributeType::Value])
            .expect("value");
        let Some(Attribute::Value(scalar)) = values.first() else {
            panic!("non-sensitive key must return CKA_VALUE, got {values:?}");
        };
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group");
        let mut context = BigNumContext::new().expect("ctx");
        let mut derived = EcPoint::new(&group).expect("point");
        derived
            .mul_generator2(
                &group,
                &BigNum::from_slice(scalar).expect("scalar"),
                &mut context,
            )
            .expect("mul");
        let key = openssl_public_key(&session, public);
        assert!(derived
            .eq(&group, key.ec_key().expect("ec").public_key(), &mut context)
            .expect("compare"));
    });
}

#[test]
fn fail_wrong_pin_and_private_objects_hidden() {
    isolated("fail_wrong_pin_and_private_objects_hidden", |_| {
        let pkcs11 = load();
        let slot = init_token(&pkcs11, LABEL);
        let session = pkcs11.open_rw_session(slot).expect("session");
        let wrong = session
            .login(UserType::User, Some(&pin("not-the-pin")))
            .expect_err("wrong PIN");
        assert_eq!(rv(wrong), RvError::PinIncorrect);
        assert_eq!(
            session.get_session_info().expect("info").session_state(),
            SessionState::RwPublic
        );
        session
            .login(UserType::User, Some(&pin(USER_PIN)))
            .expect("login");
        generate(&session, Kind::Ec(P256), "key", true);
        let private = [
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"key".to_vec()),
        ];
        assert_eq!(session.find_objects(&private).expect("find").len(), 1);
        session.logout().expect("logout");
        assert!(
            session.find_objects(&private).expect("find").is_empty(),
            "private key visible after logout"
        );
        let public = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(b"key".to_vec()),
        ];
        let public = session.find_objects(&public).expect("find");
        assert_eq!(public.len(), 1);
        // Unsupported functions answer, they do not crash.
        let encrypt = session.encrypt(&Mechanism::RsaPkcs, public[0], b"x");
        assert_eq!(
            rv(encrypt.expect_err("unsupported")),
            RvError::FunctionNotSupported
        );
    });
}

#[test]
fn ok_state_persists_across_finalize_and_is_sealed() {
    isolated("ok_state_persists_across_finalize_and_is_sealed", |dir| {
        let (scalar, signature_key) = {
            let pkcs11 = load();
            let slot = init_token(&pkcs11, LABEL);
            let session = user_session(&pkcs11, slot);
            generate(&session, Kind::Ec(P384), "ca", true);
            let (_, open) = generate(&session, Kind::Ec(P256), "open", false);
            let values = session
                .get_attributes(open, &[AttributeType::Value])
                .expect("value");
            let Some(Attribute::Value(scalar)) = values.into_iter().next() else {
                panic!("no CKA_VALUE");
            };
            let public = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Label(b"ca".to_vec()),
                ])
                .expect("find");
            let key = openssl_public_key(&session, public[0]);
            drop(session);
            pkcs11.finalize().expect("C_Finalize");
            (scalar, key)
        };
        // The private scalar is not on disk in clear.
        let tokens = dir.join("tokens");
        for entry in std::fs::read_dir(&tokens).expect("tokens dir") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read token");
            assert!(
                !text.contains(&hex::encode(&scalar)),
                "private key stored in clear"
            );
            assert!(
                !text.contains(USER_PIN) && !text.contains(SO_PIN),
                "PIN stored in clear"
            );
        }
        let pkcs11 = load();
        let slot = find_slot(&pkcs11, LABEL);
        let session = user_session(&pkcs11, slot);
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(b"ca".to_vec()),
            ])
            .expect("find");
        assert_eq!(found.len(), 1);
        let digest = sha(MessageDigest::sha384(), b"after restart");
        let signature = session
            .sign(&Mechanism::Ecdsa, found[0], &digest)
            .expect("sign");
        assert!(verify_raw_ecdsa(&signature_key, &digest, &signature));
    });
}

#[test]
fn fault_failure_code_is_returned_and_cleared_while_running() {
    isolated(
        "fault_failure_code_is_returned_and_cleared_while_running",
        |_| {
            let pkcs11 = load();
            let slot = init_token(&pkcs11, LABEL);
            let session = user_session(&pkcs11, slot);
            let (_, private) = generate(&session, Kind::Ec(P256), "k", true);
            let digest = sha(MessageDigest::sha256(), b"x");
            cli(&[
                "fault",
                "set",
                "--failure-rate",
                "1",
                "--failure-code",
                "CKR_DEVICE_MEMORY",
                "--fail-function",
                "C_Sign",
            ]);
            let failed = session
                .sign(&Mechanism::Ecdsa, private, &digest)
                .expect_err("injected");
            assert_eq!(rv(failed), RvError::DeviceMemory);
            // Other functions are untouched by a targeted failure.
            session.get_session_info().expect("session info");
            cli(&[
                "fault",
                "set",
                "--all-functions",
                "--failure-code",
                "CKR_DEVICE_ERROR",
            ]);
            assert_eq!(
                rv(session.get_session_info().expect_err("all fail")),
                RvError::DeviceError
            );
            cli(&["fault", "clear"]);
            session
                .sign(&Mechanism::Ecdsa, private, &digest)
                .expect("sign after clear");
        },
    );
}

#[test]
fn fault_device_removed_then_inserted_recovers() {
    isolated("fault_device_removed_then_inserted_recovers", |_| {
        let pkcs11 = load();
        let slot = init_token(&pkcs11, LABEL);
        let session = user_session(&pkcs11, slot);
        let (_, private) = generate(&session, Kind::Ec(P256), "k", true);
        cli(&["fault", "remove-device"]);
        assert_eq!(
            rv(session.get_session_info().expect_err("removed")),
            RvError::DeviceRemoved
        );
        assert!(pkcs11.get_slots_with_token().expect("slots").is_empty());
        assert!(!pkcs11
            .get_slot_info(slot)
            .expect("slot info")
            .token_present());
        assert_eq!(
            rv(pkcs11.open_rw_session(slot).expect_err("no token")),
            RvError::TokenNotPresent
        );
        cli(&["fault", "insert-device"]);
        assert_eq!(
            rv(session.get_session_info().expect_err("old session")),
            RvError::SessionHandleInvalid
        );
        // The token is back in the same slot; a new session works.
        assert_eq!(find_slot(&pkcs11, LABEL), slot);
        let fresh = user_session(&pkcs11, slot);
        let found = fresh
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(b"k".to_vec()),
            ])
            .expect("find");
        assert_eq!(found, vec![private]);
        fresh
            .sign(&Mechanism::Ecdsa, private, &[7; 32])
            .expect("sign after re-insert");
    });
}

#[test]
fn fault_session_limit_and_latency() {
    isolated("fault_session_limit_and_latency", |_| {
        let pkcs11 = load();
        let slot = init_token(&pkcs11, LABEL);
        cli(&["fault", "set", "--session-limit", "2"]);
        let first = pkcs11.open_ro_session(slot).expect("first");
        let second = pkcs11.open_ro_session(slot).expect("second");
        assert_eq!(
            rv(pkcs11.open_ro_session(slot).expect_err("third")),
            RvError::SessionCount
        );
        drop(second);
        let third = pkcs11.open_ro_session(slot).expect("after a close");
        cli(&["fault", "set", "--no-session-limit", "--latency", "150ms"]);
        let started = Instant::now();
        first.get_session_info().expect("slow call");
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "latency not applied"
        );
        cli(&["fault", "clear"]);
        drop(third);
    });
}

#[test]
fn ok_cli_init_token_and_status_show_no_secrets() {
    isolated("ok_cli_init_token_and_status_show_no_secrets", |_| {
        let output = Command::new(env!("CARGO_BIN_EXE_hsm-sim"))
            .args(["init-token", "--label", "from-cli"])
            .env("HSM_SIM_SO_PIN", SO_PIN)
            .env("HSM_SIM_USER_PIN", USER_PIN)
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The same label twice is refused with exit code 1.
        let again = Command::new(env!("CARGO_BIN_EXE_hsm-sim"))
            .args(["init-token", "--label", "from-cli"])
            .env("HSM_SIM_SO_PIN", SO_PIN)
            .env("HSM_SIM_USER_PIN", USER_PIN)
            .output()
            .expect("run");
        assert_eq!(again.status.code(), Some(1));
        // Without PINs in the environment it fails before touching anything.
        let no_pin = Command::new(env!("CARGO_BIN_EXE_hsm-sim"))
            .args(["init-token", "--label", "other"])
            .env_remove("HSM_SIM_SO_PIN")
            .env_remove("HSM_SIM_USER_PIN")
            .output()
            .expect("run");
        assert_eq!(no_pin.status.code(), Some(1));

        let pkcs11 = load();
        let slot = find_slot(&pkcs11, "from-cli");
        let session = user_session(&pkcs11, slot);
        generate(&session, Kind::Ed25519(ED25519_OID), "ed", true);
        let status = cli(&["status"]);
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(text.contains("\"from-cli\""), "{text}");
        assert!(text.contains("private-key ed25519 label=\"ed\""), "{text}");
        assert!(!text.contains(USER_PIN) && !text.contains(SO_PIN));
        assert!(text.contains("faults: none"), "{text}");
    });
}

/// OpenSC's pkcs11-tool against the module: list slots, initialise, log
/// in, generate an EC key pair, sign; OpenSSL verifies the signature.
#[test]
fn ok_pkcs11_tool_lists_generates_and_signs() {
    let tool = Command::new("pkcs11-tool").arg("--help").output();
    if tool.is_err() {
        assert!(
            std::env::var("CERTMINT_REQUIRE_SOFTHSM").as_deref() != Ok("1"),
            "pkcs11-tool is required (CERTMINT_REQUIRE_SOFTHSM=1) but not installed: apt-get install opensc"
        );
        eprintln!("skipping: pkcs11-tool not installed (apt-get install opensc)");
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let module = module_path();
    let run = |arguments: &[&str]| {
        let output = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&module)
            .args(arguments)
            .env("HSM_SIM_DIR", temp.path().join("state"))
            .env_remove("HSM_SIM_CONFIG")
            .current_dir(temp.path())
            .output()
            .expect("run pkcs11-tool");
        assert!(
            output.status.success(),
            "pkcs11-tool {arguments:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let slots = run(&["--list-slots"]);
    assert!(slots.contains("uninitialized"), "{slots}");
    run(&["--init-token", "--label", "tool", "--so-pin", SO_PIN]);
    run(&[
        "--token-label",
        "tool",
        "--login",
        "--login-type",
        "so",
        "--so-pin",
        SO_PIN,
        "--init-pin",
        "--pin",
        USER_PIN,
    ]);
    let slots = run(&["--list-slots"]);
    assert!(slots.contains("tool"), "{slots}");
    run(&[
        "--token-label",
        "tool",
        "--login",
        "--pin",
        USER_PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "k",
        "--id",
        "01",
    ]);
    std::fs::write(temp.path().join("data"), b"signed by pkcs11-tool").expect("write data");
    run(&[
        "--token-label",
        "tool",
        "--login",
        "--pin",
        USER_PIN,
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--label",
        "k",
        "-i",
        "data",
        "-o",
        "sig",
        "--signature-format",
        "openssl",
    ]);
    run(&[
        "--token-label",
        "tool",
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        "k",
        "-o",
        "pub.der",
    ]);
    let public =
        PKey::public_key_from_der(&std::fs::read(temp.path().join("pub.der")).expect("pub"))
            .expect("spki");
    let signature = std::fs::read(temp.path().join("sig")).expect("sig");
    let mut verifier = Verifier::new(MessageDigest::sha256(), &public).expect("verifier");
    assert!(verifier
        .verify_oneshot(&signature, b"signed by pkcs11-tool")
        .expect("verify"));
}
