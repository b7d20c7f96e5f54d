//! Tests of `hsm` against a real PKCS#11 token: hsm-sim (the workspace's
//! own module, default) or SoftHSM2 (`CERTMINT_TEST_TOKEN=softhsm2`), loaded
//! through cryptoki exactly as the server loads them.
//!
//! A PKCS#11 library has one global state per process and reads its
//! configuration (`HSM_SIM_DIR`, `SOFTHSM2_CONF`) at `C_Initialize`, so this
//! test binary uses one token directory, set up once by [`fixture`], and
//! each test uses its own key labels. Only [`finalized_module_is_reinitialized_transparently`] resets
//! the module for everyone; it takes [`MODULE_RESET`] for writing while
//! every other token test holds it for reading.
//!
//! Set `CERTMINT_REQUIRE_SOFTHSM=1` to make a missing SoftHSM2 a failure
//! instead of a skip. hsm-sim is built with the workspace and always
//! required.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock, RwLockWriteGuard};

use der::asn1::ObjectIdentifier;
use der::Decode;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use secrecy::SecretString;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use super::error::classify;
use super::*;

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN_LABEL: &str = "certmint-test";
const USER_PIN: &str = "user-pin-1234";
const SO_PIN: &str = "so-pin-5678";
/// `CKA_ID` of test keys; labels tell them apart.
const TEST_KEY_ID: &[u8] = b"certmint-test-id";

/// Readers: every token test. Writer: the test that finalizes the module.
static MODULE_RESET: RwLock<()> = RwLock::new(());

struct Fixture {
    module_path: PathBuf,
    /// Kept so the token directory outlives every test.
    _token_dir: tempfile::TempDir,
}

/// hsm-sim's module built with this workspace, found above this test
/// executable: `deps/` first (what `cargo test` refreshes), then the target
/// directory.
fn hsm_sim_module() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join("libhsm_sim.so"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "libhsm_sim.so not found above {}: run `cargo build --workspace`",
                exe.display()
            )
        })
}

/// The shared token (`CERTMINT_TEST_TOKEN`: `hsm-sim`, the default, or
/// `softhsm2`), or `None` (after printing why) when SoftHSM2 is wanted but
/// missing and not required.
fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let softhsm2 = std::env::var("CERTMINT_TEST_TOKEN").as_deref() == Ok("softhsm2");
            let module_path = if softhsm2 {
                PathBuf::from(
                    std::env::var("SOFTHSM2_MODULE").unwrap_or_else(|_| SOFTHSM_MODULE.to_owned()),
                )
            } else {
                hsm_sim_module()
            };
            let required = std::env::var("CERTMINT_REQUIRE_SOFTHSM").as_deref() == Ok("1");
            if !module_path.exists() {
                assert!(
                    !required,
                    "CERTMINT_REQUIRE_SOFTHSM=1 but {} does not exist",
                    module_path.display()
                );
                eprintln!(
                    "note: skipping SoftHSM2 tests, {} not found",
                    module_path.display()
                );
                return None;
            }
            let token_dir = tempfile::tempdir().expect("temporary token directory");
            let config_path = token_dir.path().join("softhsm2.conf");
            std::fs::create_dir(token_dir.path().join("tokens")).expect("tokens directory");
            std::fs::write(
                &config_path,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                    token_dir.path().join("tokens").display()
                ),
            )
            .expect("write softhsm2.conf");
            // Set once, before the module is first loaded, while every other
            // test thread that wants the module waits on this OnceLock.
            // Each module reads only its own variable.
            std::env::set_var("SOFTHSM2_CONF", &config_path);
            std::env::set_var("HSM_SIM_DIR", token_dir.path().join("hsm-sim"));
            std::env::remove_var("HSM_SIM_CONFIG");
            init_token(
                &module_path,
                TOKEN_LABEL,
                &SecretString::from(SO_PIN),
                &SecretString::from(USER_PIN),
            )
            .expect("init_token on a fresh token directory");
            Some(Fixture {
                module_path,
                _token_dir: token_dir,
            })
        })
        .as_ref()
}

/// A logged-in handle with a pool of `pool_size` sessions, plus the guard
/// that gives the test the token to itself.
fn open_hsm(pool_size: usize) -> Option<(Hsm, RwLockWriteGuard<'static, ()>)> {
    let (fixture, guard) = exclusive_fixture()?;
    let hsm = Hsm::open(&config(fixture, pool_size)).expect("open the test token");
    Some((hsm, guard))
}

/// The shared token, held exclusively. SoftHSM2's file backend fails
/// C_GenerateKeyPair with CKR_GENERAL_ERROR when another thread uses the
/// token at the same time (SoftHSMv2 #573), and some tests reset the module
/// for everyone, so token tests take turns. Concurrency inside one test
/// (the signing pool tests) is what the tests measure.
fn exclusive_fixture() -> Option<(&'static Fixture, RwLockWriteGuard<'static, ()>)> {
    let fixture = fixture()?;
    let guard = MODULE_RESET
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Some((fixture, guard))
}

fn config(fixture: &Fixture, pool_size: usize) -> HsmConfig {
    HsmConfig {
        module_path: fixture.module_path.clone(),
        token_label: TOKEN_LABEL.to_owned(),
        pin: SecretString::from(USER_PIN),
        session_pool_size: pool_size,
    }
}

/// Verifies `signature` over `message` with ring, using only the signer's
/// SPKI and signature algorithm: an independent check of the DER work.
fn verify_with_ring(signer: &dyn CaSigner, message: &[u8], signature: &[u8]) {
    let spki =
        SubjectPublicKeyInfoOwned::from_der(signer.subject_public_key_info()).expect("SPKI parses");
    let algorithm = AlgorithmIdentifierOwned::from_der(signer.signature_algorithm())
        .expect("signature AlgorithmIdentifier parses");
    let verification: &dyn VerificationAlgorithm = match signer.key_type() {
        KeyType::EcP256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyType::EcP384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyType::Ed25519 => &signature::ED25519,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
    };
    let expected_oid = match signer.key_type() {
        KeyType::EcP256 => "1.2.840.10045.4.3.2",
        KeyType::EcP384 => "1.2.840.10045.4.3.3",
        KeyType::Ed25519 => "1.3.101.112",
        _ => "1.2.840.113549.1.1.11",
    };
    assert_eq!(
        algorithm.oid,
        ObjectIdentifier::new_unwrap(expected_oid),
        "signature algorithm of {}",
        signer.key_type()
    );
    let public_key = spki.subject_public_key.raw_bytes();
    UnparsedPublicKey::new(verification, public_key)
        .verify(message, signature)
        .unwrap_or_else(|_| panic!("ring rejects the {} signature", signer.key_type()));
}

fn generate_sign_verify(key_type: KeyType) {
    let Some((hsm, _guard)) = open_hsm(2) else {
        return;
    };
    let label = format!("ok-sign-{key_type}");
    let signer = hsm
        .generate_key_pair(&label, key_type, TEST_KEY_ID)
        .expect("generate key pair");
    assert_eq!(signer.key_type(), key_type);
    assert_eq!(signer.label(), label);

    let message = b"TBSCertificate bytes, more or less";
    let signature = signer.sign(message).expect("sign");
    verify_with_ring(signer.as_ref(), message, &signature);

    let protection = hsm.key_protection(&label).expect("key protection");
    assert!(protection.sensitive, "{protection:?}");
    assert!(!protection.extractable, "{protection:?}");
    assert!(protection.always_sensitive, "{protection:?}");
    assert!(protection.never_extractable, "{protection:?}");

    // A fresh lookup by label rebuilds the same public key and still signs.
    let reloaded = hsm.signer(&label).expect("signer by label");
    assert_eq!(reloaded.key_type(), key_type);
    assert_eq!(
        reloaded.subject_public_key_info(),
        signer.subject_public_key_info()
    );
    let signature = reloaded.sign(message).expect("sign with reloaded signer");
    verify_with_ring(reloaded.as_ref(), message, &signature);
}

#[test]
fn ok_ec_p256_signature_verifies_with_ring() {
    generate_sign_verify(KeyType::EcP256);
}

#[test]
fn ok_ec_p384_signature_verifies_with_ring() {
    generate_sign_verify(KeyType::EcP384);
}

#[test]
fn ok_rsa_3072_signature_verifies_with_ring() {
    generate_sign_verify(KeyType::Rsa3072);
}

#[test]
fn ok_ed25519_signature_verifies_with_ring_when_supported() {
    let Some((hsm, guard)) = open_hsm(1) else {
        return;
    };
    let supported = hsm.supported_key_types().expect("probe mechanisms");
    drop((hsm, guard));
    if supported.contains(&KeyType::Ed25519) {
        generate_sign_verify(KeyType::Ed25519);
    } else {
        eprintln!("note: this SoftHSM2 build has no EdDSA; skipping Ed25519");
    }
}

#[test]
fn ok_supported_key_types_include_nist_curves_and_rsa() {
    let Some((hsm, _guard)) = open_hsm(1) else {
        return;
    };
    let supported = hsm.supported_key_types().expect("probe mechanisms");
    for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa3072] {
        assert!(supported.contains(&key_type), "{supported:?}");
    }
}

#[test]
fn fail_generate_with_taken_label_is_already_exists() {
    let Some((hsm, _guard)) = open_hsm(1) else {
        return;
    };
    let label = "fail-taken-label";
    hsm.generate_key_pair(label, KeyType::EcP256, TEST_KEY_ID)
        .expect("first key");
    let error = hsm
        .generate_key_pair(label, KeyType::EcP384, TEST_KEY_ID)
        .err()
        .expect("second key with the same label is refused");
    assert!(
        matches!(&error, HsmError::AlreadyExists { label: taken } if taken == label),
        "{error:?}"
    );
}

#[test]
fn fail_signer_of_unknown_label_is_key_not_found() {
    let Some((hsm, _guard)) = open_hsm(1) else {
        return;
    };
    let error = hsm.signer("fail-no-such-key").err().expect("unknown label");
    assert!(
        matches!(&error, HsmError::KeyNotFound { label } if label == "fail-no-such-key"),
        "{error:?}"
    );
    assert_eq!(error.fault_kind(), None);
    let error = hsm
        .key_protection("fail-no-such-key")
        .expect_err("unknown label");
    assert!(matches!(error, HsmError::KeyNotFound { .. }), "{error:?}");
}

#[test]
fn fail_signer_of_duplicated_label_is_ambiguous() {
    let Some((hsm, _guard)) = open_hsm(1) else {
        return;
    };
    let label = "fail-duplicated-label";
    hsm.generate_key_pair(label, KeyType::EcP256, TEST_KEY_ID)
        .expect("first key");
    // Bypass the refusal to plant a second key with the same label, as a
    // careless operator with pkcs11-tool could.
    let _serialized = hsm.pool.module().serialize_key_generation();
    hsm.pool
        .run(Retry::Never, |session, _| {
            let (public, private) = keys::key_pair_templates(KeyType::EcP256, label, b"second-id")?;
            session
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .during("C_GenerateKeyPair")
        })
        .expect("plant a duplicate");
    let error = hsm.signer(label).err().expect("two keys, one label");
    assert!(
        matches!(&error, HsmError::Ambiguous { label: ambiguous } if ambiguous == label),
        "{error:?}"
    );
}

#[test]
fn ok_sixteen_threads_sign_through_four_sessions() {
    let Some((hsm, _guard)) = open_hsm(4) else {
        return;
    };
    let signer = hsm
        .generate_key_pair("ok-concurrent", KeyType::EcP256, TEST_KEY_ID)
        .expect("generate key pair");
    let threads: Vec<_> = (0..16)
        .map(|thread| {
            let signer = Arc::clone(&signer);
            std::thread::spawn(move || {
                for round in 0..8 {
                    let message = format!("thread {thread} round {round}");
                    let signature = signer.sign(message.as_bytes()).expect("sign");
                    verify_with_ring(signer.as_ref(), message.as_bytes(), &signature);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("signing thread");
    }
    let open = hsm.pool.open_sessions();
    assert!(open <= 4, "pool opened {open} sessions");
}

#[test]
fn finalized_module_is_reinitialized_transparently() {
    // Exclusive: finalizing the module closes every session in the process.
    let Some((fixture, _exclusive)) = exclusive_fixture() else {
        return;
    };
    let hsm = Hsm::open(&config(fixture, 2)).expect("open");
    let signer = hsm
        .generate_key_pair("ok-survives-reset", KeyType::EcP256, TEST_KEY_ID)
        .expect("generate key pair");
    signer.sign(b"before").expect("sign before the reset");

    // All sessions and the login vanish behind the pool's back.
    let generation_before = hsm.pool.module().generation();
    hsm.pool.finalize_module_behind_the_pool();

    let signature = signer.sign(b"after").expect("sign after the reset");
    verify_with_ring(signer.as_ref(), b"after", &signature);
    hsm.ping().expect("ping after the reset");
    assert_eq!(
        hsm.pool.module().generation(),
        generation_before + 1,
        "the pool noticed the reset and reinitialized the module once"
    );
}

#[test]
fn ok_ping_on_a_fresh_handle() {
    let Some((hsm, _guard)) = open_hsm(1) else {
        return;
    };
    hsm.ping().expect("ping");
}

#[test]
fn fail_init_token_twice_is_already_exists() {
    let Some((fixture, _guard)) = exclusive_fixture() else {
        return;
    };
    let error = init_token(
        &fixture.module_path,
        TOKEN_LABEL,
        &SecretString::from(SO_PIN),
        &SecretString::from(USER_PIN),
    )
    .expect_err("label taken");
    assert!(matches!(error, HsmError::AlreadyExists { .. }), "{error:?}");
}

#[test]
fn fail_open_unknown_token_is_token_not_found() {
    let Some((fixture, _guard)) = exclusive_fixture() else {
        return;
    };
    let mut config = config(fixture, 1);
    config.token_label = "fail-no-such-token".to_owned();
    let error = Hsm::open(&config).expect_err("no such token");
    assert!(matches!(error, HsmError::TokenNotFound { .. }), "{error:?}");
}

#[test]
fn fail_open_missing_module_is_module_load() {
    let config = HsmConfig {
        module_path: PathBuf::from("/nonexistent/libpkcs11.so"),
        token_label: TOKEN_LABEL.to_owned(),
        pin: SecretString::from(USER_PIN),
        session_pool_size: 1,
    };
    let error = Hsm::open(&config).expect_err("no such module");
    assert!(matches!(error, HsmError::ModuleLoad { .. }), "{error:?}");
}

#[test]
fn ok_pin_is_redacted_from_debug() {
    let config = HsmConfig {
        module_path: PathBuf::from(SOFTHSM_MODULE),
        token_label: TOKEN_LABEL.to_owned(),
        pin: SecretString::from("hunter2-secret-pin"),
        session_pool_size: 1,
    };
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn classify_sorts_return_codes() {
    use cryptoki::error::RvError;
    let cases = [
        (RvError::DeviceError, FaultKind::Transient),
        (RvError::DeviceMemory, FaultKind::Transient),
        (RvError::FunctionFailed, FaultKind::Transient),
        (RvError::SessionCount, FaultKind::Transient),
        (RvError::DeviceRemoved, FaultKind::DeviceGone),
        (RvError::TokenNotPresent, FaultKind::DeviceGone),
        (RvError::SessionHandleInvalid, FaultKind::DeviceGone),
        (RvError::SessionClosed, FaultKind::DeviceGone),
        (RvError::UserNotLoggedIn, FaultKind::DeviceGone),
        (RvError::CryptokiNotInitialized, FaultKind::DeviceGone),
        (RvError::GeneralError, FaultKind::DeviceGone),
        (RvError::MechanismInvalid, FaultKind::Unsupported),
        (RvError::FunctionNotSupported, FaultKind::Unsupported),
        (RvError::CurveNotSupported, FaultKind::Unsupported),
        (RvError::ArgumentsBad, FaultKind::Bug),
        (RvError::PinIncorrect, FaultKind::Bug),
        (RvError::KeyHandleInvalid, FaultKind::Bug),
    ];
    for (return_value, expected) in cases {
        assert_eq!(classify(return_value), expected, "{return_value:?}");
    }
}

#[test]
fn device_errors_expose_kind_and_retryability() {
    use cryptoki::context::Function;
    use cryptoki::error::{Error, RvError};
    let transient = error::device_error(
        "C_Sign",
        Error::Pkcs11(RvError::DeviceMemory, Function::Sign),
    );
    assert_eq!(transient.fault_kind(), Some(FaultKind::Transient));
    assert!(transient.is_retryable());
    let gone = error::device_error(
        "C_Sign",
        Error::Pkcs11(RvError::DeviceRemoved, Function::Sign),
    );
    assert_eq!(gone.fault_kind(), Some(FaultKind::DeviceGone));
    assert!(gone.is_retryable());
    let bug = error::device_error(
        "C_Sign",
        Error::Pkcs11(RvError::ArgumentsBad, Function::Sign),
    );
    assert_eq!(bug.fault_kind(), Some(FaultKind::Bug));
    assert!(!bug.is_retryable());
    // The log line names the function and the return code.
    let source = std::error::Error::source(&gone)
        .expect("source")
        .to_string();
    assert!(source.contains("DeviceRemoved"), "{source}");
}

#[test]
fn ok_one_lost_session_is_retried_transparently() {
    let Some((hsm, _guard)) = open_hsm(2) else {
        return;
    };
    let signer = hsm
        .generate_key_pair("ok-injected-session-loss", KeyType::EcP256, TEST_KEY_ID)
        .expect("generate key pair");
    hsm.pool
        .inject_faults(vec![(1, cryptoki::error::RvError::SessionHandleInvalid)]);
    let signature = signer.sign(b"retried").expect("retry on a fresh session");
    verify_with_ring(signer.as_ref(), b"retried", &signature);
}

#[test]
fn fail_session_lost_twice_is_device_gone() {
    let Some((hsm, _guard)) = open_hsm(2) else {
        return;
    };
    let signer = hsm
        .generate_key_pair("fail-injected-device-removed", KeyType::EcP256, TEST_KEY_ID)
        .expect("generate key pair");
    hsm.pool.inject_faults(vec![
        (1, cryptoki::error::RvError::DeviceRemoved),
        (2, cryptoki::error::RvError::DeviceRemoved),
    ]);
    let error = signer.sign(b"lost").expect_err("retried only once");
    assert_eq!(error.fault_kind(), Some(FaultKind::DeviceGone), "{error:?}");
    assert!(error.is_retryable());
    // The third attempt is not faulted: the pool recovers on its own.
    signer
        .sign(b"recovered")
        .expect("sign after the device came back");
}

#[test]
fn fail_transient_fault_is_not_retried_internally() {
    let Some((hsm, _guard)) = open_hsm(2) else {
        return;
    };
    let signer = hsm
        .generate_key_pair("fail-injected-device-memory", KeyType::EcP256, TEST_KEY_ID)
        .expect("generate key pair");
    hsm.pool.inject_faults(vec![
        (1, cryptoki::error::RvError::DeviceMemory),
        (3, cryptoki::error::RvError::MechanismInvalid),
    ]);
    let error = signer.sign(b"busy").expect_err("transient fault surfaces");
    assert_eq!(error.fault_kind(), Some(FaultKind::Transient), "{error:?}");
    assert!(error.is_retryable());
    signer.sign(b"fine").expect("second attempt is clean");
    let error = signer
        .sign(b"unsupported")
        .expect_err("unsupported surfaces");
    assert_eq!(
        error.fault_kind(),
        Some(FaultKind::Unsupported),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

#[test]
fn ok_sign_logs_in_again_after_the_login_was_lost() {
    let Some((hsm, _guard)) = open_hsm(2) else {
        return;
    };
    let signer = hsm
        .generate_key_pair("ok-relogin-after-logout", KeyType::EcP256, TEST_KEY_ID)
        .expect("generate key pair");
    signer.sign(b"before").expect("sign before the logout");

    hsm.pool.log_out_behind_the_pool();

    let signature = signer
        .sign(b"after")
        .expect("sign after the login was lost");
    verify_with_ring(signer.as_ref(), b"after", &signature);
}

#[test]
fn fail_refused_pin_is_tried_once_then_suspended() {
    let Some((hsm, _guard)) = open_hsm(2) else {
        return;
    };
    let signer = hsm
        .generate_key_pair(
            "fail-pin-changed-behind-the-server",
            KeyType::EcP256,
            TEST_KEY_ID,
        )
        .expect("generate key pair");
    // Someone changes the user PIN on the token, then the login is lost:
    // the pool's PIN is now wrong.
    const OTHER_PIN: &str = "changed-pin-9876";
    hsm.pool
        .run(Retry::Never, |session, _| {
            session
                .set_pin(
                    &SecretString::from(USER_PIN),
                    &SecretString::from(OTHER_PIN),
                )
                .during("C_SetPIN")
        })
        .expect("change the user PIN");
    let _restore = RestoreUserPin {
        hsm: &hsm,
        changed_to: OTHER_PIN,
    };
    hsm.pool.log_out_behind_the_pool();
    let attempts_before = hsm.pool.login_attempts();

    let first = signer.sign(b"refused").expect_err("wrong PIN");
    assert!(matches!(first, HsmError::Login { .. }), "{first:?}");
    for _ in 0..5 {
        let again = signer.sign(b"refused").expect_err("still no login");
        assert!(
            matches!(again, HsmError::LoginSuspended { .. }),
            "{again:?}"
        );
        assert!(again.is_retryable(), "a 503 for the caller, not a 500");
        assert!(!again.to_string().contains(USER_PIN));
    }
    let pinged = hsm.ping().expect_err("not ready");
    assert!(
        matches!(pinged, HsmError::LoginSuspended { .. }),
        "{pinged:?}"
    );
    assert_eq!(
        hsm.pool.login_attempts() - attempts_before,
        1,
        "a refused PIN costs the token one failed login, not one per request"
    );
}

/// Puts the fixture's user PIN back when a test that changed it ends,
/// passed or not, so the tests after it can log in.
struct RestoreUserPin<'a> {
    hsm: &'a Hsm,
    changed_to: &'static str,
}

impl Drop for RestoreUserPin<'_> {
    fn drop(&mut self) {
        let restore = || -> Result<(), cryptoki::error::Error> {
            let slot = self
                .hsm
                .pool
                .slot()
                .map_err(|_| cryptoki::error::Error::NotSupported)?;
            let session = self.hsm.pool.module().pkcs11().open_rw_session(slot)?;
            session.login(UserType::User, Some(&SecretString::from(self.changed_to)))?;
            session.set_pin(
                &SecretString::from(self.changed_to),
                &SecretString::from(USER_PIN),
            )?;
            session.logout()
        };
        if let Err(error) = restore() {
            eprintln!("could not restore the fixture's user PIN: {error}");
        }
    }
}

#[test]
fn ok_finalize_waits_for_the_call_in_flight() {
    // Exclusive: finalizing the module closes every session in the process.
    let Some((fixture, _exclusive)) = exclusive_fixture() else {
        return;
    };
    let hsm = Hsm::open(&config(fixture, 2)).expect("open");
    let (started, call_started) = std::sync::mpsc::channel();
    let pool = Arc::clone(&hsm.pool);
    // A call that is slow on the host side, as a renewal thread or an
    // abandoned request can be when shutdown comes. Never retried, so a
    // module finalized under it fails it.
    let worker = std::thread::spawn(move || {
        pool.run(Retry::Never, |session, _| {
            let _ = started.send(());
            std::thread::sleep(std::time::Duration::from_millis(400));
            session
                .get_session_info()
                .map(|_| std::time::Instant::now())
                .during("C_GetSessionInfo")
        })
    });
    call_started.recv().expect("the call started");

    assert!(
        !hsm.pool
            .module()
            .finalize_when_idle(std::time::Duration::from_millis(50)),
        "gives up while the call runs"
    );
    assert!(hsm
        .pool
        .module()
        .finalize_when_idle(std::time::Duration::from_secs(5)));
    let finalized_at = std::time::Instant::now();
    let call_ended = worker
        .join()
        .expect("worker thread")
        .expect("the call in flight ran on a live module");
    assert!(call_ended <= finalized_at);
    let refused = hsm.ping().expect_err("finalized");
    assert!(matches!(refused, HsmError::Finalized), "{refused:?}");

    // Let the other tests use the module again.
    hsm.pool.allow_calls_after_finalize();
    hsm.ping().expect("reinitialized after the test");
}

#[test]
fn ok_generated_key_pair_is_found_again_by_label_and_id() {
    let Some((hsm, _guard)) = open_hsm(1) else {
        return;
    };
    let label = "ok-found-again";
    let missing = hsm
        .find_generated_key_pair(label, b"id-a", KeyType::EcP256)
        .expect("lookup before generation");
    assert!(missing.is_none());
    let generated = hsm
        .generate_key_pair(label, KeyType::EcP256, b"id-a")
        .expect("generate");

    let found = hsm
        .find_generated_key_pair(label, b"id-a", KeyType::EcP256)
        .expect("lookup")
        .expect("the key generated under this id");
    assert_eq!(
        found.subject_public_key_info(),
        generated.subject_public_key_info()
    );
    let signature = found.sign(b"found").expect("sign with the found key");
    verify_with_ring(found.as_ref(), b"found", &signature);

    // The same label under another id is somebody else's key: not found,
    // and the label stays taken.
    let other = hsm
        .find_generated_key_pair(label, b"id-b", KeyType::EcP256)
        .expect("lookup under another id");
    assert!(other.is_none());
    let taken = hsm
        .generate_key_pair(label, KeyType::EcP256, b"id-b")
        .err()
        .expect("label taken");
    assert!(matches!(taken, HsmError::AlreadyExists { .. }), "{taken:?}");
    let wrong_type = hsm
        .find_generated_key_pair(label, b"id-a", KeyType::EcP384)
        .err()
        .expect("another key type");
    assert!(
        matches!(wrong_type, HsmError::UnusableKey { .. }),
        "{wrong_type:?}"
    );
}

#[test]
fn fail_found_key_pair_that_was_extractable_is_unusable() {
    let Some((hsm, _guard)) = open_hsm(1) else {
        return;
    };
    let label = "fail-found-extractable";
    // A key planted under the label and id, as someone with the token's
    // PIN and the database could: extractable, so not a CA key.
    let _serialized = hsm.pool.module().serialize_key_generation();
    hsm.pool
        .run(Retry::Never, |session, _| {
            let (public, mut private) =
                keys::key_pair_templates(KeyType::EcP256, label, b"planted")?;
            private.retain(|attribute| {
                !matches!(
                    attribute,
                    Attribute::Sensitive(_) | Attribute::Extractable(_)
                )
            });
            private.push(Attribute::Sensitive(false));
            private.push(Attribute::Extractable(true));
            session
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .during("C_GenerateKeyPair")
        })
        .expect("plant an extractable key");
    let error = hsm
        .find_generated_key_pair(label, b"planted", KeyType::EcP256)
        .err()
        .expect("extractable");
    assert!(matches!(error, HsmError::UnusableKey { .. }), "{error:?}");
}

#[test]
fn ok_init_token_sets_the_user_pin_an_interrupted_init_left_unset() {
    let Some((fixture, _guard)) = exclusive_fixture() else {
        return;
    };
    let label = "ok-half-initialized";
    // An earlier init that stopped right after C_InitToken: the token has
    // its label and SO PIN but no user PIN.
    let module = Module::load(&fixture.module_path).expect("module");
    let pkcs11 = module.pkcs11();
    let free_slot = pkcs11
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|slot| {
            !pkcs11
                .get_token_info(*slot)
                .expect("token info")
                .token_initialized()
        })
        .expect("a free slot");
    pkcs11
        .init_token(free_slot, &SecretString::from(SO_PIN), label)
        .expect("C_InitToken only");
    let mut config = config(fixture, 1);
    config.token_label = label.to_owned();
    let refused = Hsm::open(&config).expect_err("no user PIN yet");
    assert!(matches!(refused, HsmError::Login { .. }), "{refused:?}");

    init_token(
        &fixture.module_path,
        label,
        &SecretString::from(SO_PIN),
        &SecretString::from(USER_PIN),
    )
    .expect("the rerun sets the user PIN");
    let hsm = Hsm::open(&config).expect("open with the user PIN");
    hsm.ping().expect("ping");
    let again = init_token(
        &fixture.module_path,
        label,
        &SecretString::from(SO_PIN),
        &SecretString::from(USER_PIN),
    )
    .expect_err("now complete");
    assert!(matches!(again, HsmError::AlreadyExists { .. }), "{again:?}");
}
