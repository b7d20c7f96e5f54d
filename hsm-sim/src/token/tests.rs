//! Unit tests of the token model, driving [`Module`] directly.

use super::*;

use crate::mechanisms::{Digest, Param};
use crate::object::{boolean, ulong, Template};

const SO_PIN: &[u8] = b"so-pin-1";
const USER_PIN: &[u8] = b"user-pin-1";
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

fn module(dir: &Path) -> Module {
    let mut config = Config::resolve(Some(dir.to_path_buf()), None).expect("config");
    config.kdf_iterations = 10;
    Module::new(config)
}

/// A module with one initialised token and a logged-in RW session.
fn ready(dir: &Path) -> (Module, CK_SLOT_ID, CK_SESSION_HANDLE) {
    let mut module = module(dir);
    let free = *module.slot_list(true).last().expect("free slot");
    module.init_token(free, SO_PIN, "test").expect("init token");
    let session = module
        .open_session(free, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .expect("session");
    module.login(session, CKU_SO, SO_PIN).expect("SO login");
    module.init_pin(session, USER_PIN).expect("init PIN");
    module.logout(session).expect("logout");
    module
        .login(session, CKU_USER, USER_PIN)
        .expect("user login");
    (module, free, session)
}

fn key_pair(
    module: &mut Module,
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_TYPE,
    public_extra: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>,
    sensitive: bool,
    label: &str,
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
    let mut public = vec![
        (CKA_TOKEN, boolean(true)),
        (CKA_LABEL, label.as_bytes().to_vec()),
    ];
    public.extend(public_extra);
    let private = vec![
        (CKA_TOKEN, boolean(true)),
        (CKA_PRIVATE, boolean(true)),
        (CKA_SENSITIVE, boolean(sensitive)),
        (CKA_EXTRACTABLE, boolean(!sensitive)),
        (CKA_SIGN, boolean(true)),
        (CKA_DECRYPT, boolean(false)),
        (CKA_LABEL, label.as_bytes().to_vec()),
    ];
    module.generate_key_pair(
        session,
        mechanism,
        &Param::None,
        &Template(public),
        &Template(private),
    )
}

/// A token key pair on `curve` (EC or Ed25519 parameters) that must
/// generate.
fn curve_pair(
    module: &mut Module,
    session: CK_SESSION_HANDLE,
    curve: &[u8],
    sensitive: bool,
    label: &str,
) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let mechanism = if curve == ED25519 {
        CKM_EC_EDWARDS_KEY_PAIR_GEN
    } else {
        CKM_EC_KEY_PAIR_GEN
    };
    key_pair(
        module,
        session,
        mechanism,
        vec![(CKA_EC_PARAMS, curve.to_vec())],
        sensitive,
        label,
    )
    .expect("keygen")
}

fn sign_and_verify(
    module: &mut Module,
    session: CK_SESSION_HANDLE,
    keys: (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE),
    mechanism: CK_MECHANISM_TYPE,
    param: &Param,
    data: &[u8],
) {
    module
        .sign_init(session, mechanism, param, keys.1)
        .expect("sign init");
    let len = module
        .sign_len(session)
        .expect("length query keeps the operation");
    let signature = module.sign(session, data).expect("sign");
    assert_eq!(signature.len(), len, "mechanism {mechanism:#x}");
    module
        .verify_init(session, mechanism, param, keys.0)
        .expect("verify init");
    module.verify(session, data, &signature).expect("verify");
    let mut forged = signature;
    forged[1] ^= 0x40;
    module
        .verify_init(session, mechanism, param, keys.0)
        .expect("verify init");
    assert_eq!(
        module.verify(session, data, &forged),
        Err(Ckr::SIGNATURE_INVALID)
    );
}

#[test]
fn ok_free_slot_follows_initialised_tokens() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut module = module(temp.path());
    assert_eq!(module.slot_list(true), vec![0]);
    assert_eq!(
        module.token_info(0).expect("info").flags & CKF_TOKEN_INITIALIZED,
        0
    );
    assert_eq!(
        module.open_session(0, CKF_SERIAL_SESSION),
        Err(Ckr::TOKEN_NOT_RECOGNIZED)
    );
    module.init_token(0, SO_PIN, "first").expect("init");
    assert_eq!(module.slot_list(true), vec![0, 1]);
    let info = module.token_info(0).expect("info");
    assert_eq!(info.label, "first");
    assert_ne!(info.flags & CKF_TOKEN_INITIALIZED, 0);
    assert_eq!(info.flags & CKF_USER_PIN_INITIALIZED, 0);
    assert_eq!(module.slot_info(7), Err(Ckr::SLOT_ID_INVALID));
}

#[test]
fn fail_login_with_wrong_pin_or_twice() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (mut module, slot, session) = ready(temp.path());
    assert_eq!(
        module.login(session, CKU_USER, USER_PIN),
        Err(Ckr::USER_ALREADY_LOGGED_IN)
    );
    assert_eq!(
        module.login(session, CKU_SO, SO_PIN),
        Err(Ckr::USER_ANOTHER_ALREADY_LOGGED_IN)
    );
    module.logout(session).expect("logout");
    assert_eq!(module.logout(session), Err(Ckr::USER_NOT_LOGGED_IN));
    assert_eq!(
        module.login(session, CKU_USER, b"wrong-pin"),
        Err(Ckr::PIN_INCORRECT)
    );
    assert_eq!(
        module.login(session, CKU_SO, USER_PIN),
        Err(Ckr::PIN_INCORRECT)
    );
    assert_eq!(
        module.session_info(session).expect("info").state,
        CKS_RW_PUBLIC_SESSION
    );
    // An RO session blocks SO login.
    let read_only = module
        .open_session(slot, CKF_SERIAL_SESSION)
        .expect("ro session");
    assert_eq!(
        module.login(session, CKU_SO, SO_PIN),
        Err(Ckr::SESSION_READ_ONLY_EXISTS)
    );
    module.login(read_only, CKU_USER, USER_PIN).expect("login");
    // Login is per token: the other session is logged in too.
    assert_eq!(
        module.session_info(session).expect("info").state,
        CKS_RW_USER_FUNCTIONS
    );
    assert_eq!(
        module.session_info(read_only).expect("info").state,
        CKS_RO_USER_FUNCTIONS
    );
    // Closing every session logs out.
    module.close_all_sessions(slot).expect("close all");
    let again = module
        .open_session(slot, CKF_SERIAL_SESSION)
        .expect("session");
    assert_eq!(
        module.session_info(again).expect("info").state,
        CKS_RO_PUBLIC_SESSION
    );
    assert_eq!(
        module.session_info(session),
        Err(Ckr::SESSION_HANDLE_INVALID)
    );
}

#[test]
fn ok_set_pin_changes_the_user_pin() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (mut module, _, session) = ready(temp.path());
    assert_eq!(
        module.set_pin(session, b"wrong-pin", b"new-pin-2"),
        Err(Ckr::PIN_INCORRECT)
    );
    assert_eq!(
        module.set_pin(session, USER_PIN, b"123"),
        Err(Ckr::PIN_LEN_RANGE)
    );
    module
        .set_pin(session, USER_PIN, b"new-pin-2")
        .expect("set PIN");
    module.logout(session).expect("logout");
    assert_eq!(
        module.login(session, CKU_USER, USER_PIN),
        Err(Ckr::PIN_INCORRECT)
    );
    module
        .login(session, CKU_USER, b"new-pin-2")
        .expect("new PIN works");
}

#[test]
fn ok_keygen_template_and_sensitive_refusal() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (mut module, _, session) = ready(temp.path());
    let (public, private) = curve_pair(&mut module, session, P256, true, "ca");
    let values = module
        .attribute_values(
            session,
            private,
            &[
                CKA_VALUE,
                CKA_SENSITIVE,
                CKA_EXTRACTABLE,
                CKA_ALWAYS_SENSITIVE,
                CKA_NEVER_EXTRACTABLE,
                CKA_LOCAL,
                CKA_EC_POINT,
                0x8765_4321,
            ],
        )
        .expect("attributes");
    assert_eq!(
        values,
        vec![
            AttributeValue::Sensitive,
            AttributeValue::Value(vec![1]),
            AttributeValue::Value(vec![0]),
            AttributeValue::Value(vec![1]),
            AttributeValue::Value(vec![1]),
            AttributeValue::Value(vec![1]),
            AttributeValue::Invalid,
            AttributeValue::Invalid,
        ]
    );
    let point = module
        .attribute_values(session, public, &[CKA_EC_POINT, CKA_KEY_TYPE])
        .expect("public");
    assert!(
        matches!(&point[0], AttributeValue::Value(bytes) if bytes.len() == 67 && bytes[0] == 0x04)
    );
    assert_eq!(point[1], AttributeValue::Value(ulong(CKK_EC)));
    // The key stays sensitive.
    let loosen = Template(vec![(CKA_SENSITIVE, boolean(false))]);
    assert_eq!(
        module.set_attribute_values(session, private, &loosen),
        Err(Ckr::ATTRIBUTE_READ_ONLY)
    );
    let relabel = Template(vec![(CKA_LABEL, b"renamed".to_vec())]);
    module
        .set_attribute_values(session, private, &relabel)
        .expect("relabel");
    // Templates the token must refuse.
    let computed = vec![
        (CKA_EC_PARAMS, P256.to_vec()),
        (CKA_EC_POINT, vec![4, 1, 0]),
    ];
    assert_eq!(
        key_pair(
            &mut module,
            session,
            CKM_EC_KEY_PAIR_GEN,
            computed,
            true,
            "bad"
        ),
        Err(Ckr::ATTRIBUTE_READ_ONLY)
    );
    let wrong_class = vec![
        (CKA_EC_PARAMS, P256.to_vec()),
        (CKA_CLASS, ulong(CKO_PRIVATE_KEY)),
    ];
    assert_eq!(
        key_pair(
            &mut module,
            session,
            CKM_EC_KEY_PAIR_GEN,
            wrong_class,
            true,
            "bad"
        ),
        Err(Ckr::TEMPLATE_INCONSISTENT)
    );
    // A token key needs a login.
    module.logout(session).expect("logout");
    assert_eq!(
        key_pair(
            &mut module,
            session,
            CKM_EC_KEY_PAIR_GEN,
            vec![(CKA_EC_PARAMS, P256.to_vec())],
            true,
            "x"
        ),
        Err(Ckr::USER_NOT_LOGGED_IN)
    );
}

#[test]
fn ok_extractable_key_reveals_value_sensitive_does_not() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (mut module, _, session) = ready(temp.path());
    let (_, open) = curve_pair(&mut module, session, ED25519, false, "o");
    let value = module
        .attribute_values(session, open, &[CKA_VALUE])
        .expect("value");
    assert!(matches!(&value[0], AttributeValue::Value(bytes) if bytes.len() == 32));
    let (_, closed) = curve_pair(&mut module, session, ED25519, true, "c");
    assert_eq!(
        module
            .attribute_values(session, closed, &[CKA_VALUE])
            .expect("value"),
        vec![AttributeValue::Sensitive]
    );
}

#[test]
fn ok_find_sees_private_objects_only_when_logged_in() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (mut module, _, session) = ready(temp.path());
    let (public, private) = curve_pair(&mut module, session, P256, true, "k");
    let by_label = Template(vec![(CKA_LABEL, b"k".to_vec())]);
    module.find_init(session, &by_label).expect("find init");
    assert_eq!(
        module.find_init(session, &by_label),
        Err(Ckr::OPERATION_ACTIVE)
    );
    let mut found = module.find(session, 1).expect("find");
    found.extend(module.find(session, 10).expect("find"));
    assert!(module.find(session, 10).expect("find").is_empty());
    module.find_final(session).expect("final");
    found.sort_unstable();
    let mut expected = vec![public, private];
    expected.sort_unstable();
    assert_eq!(found, expected);
    module.logout(session).expect("logout");
    module.find_init(session, &by_label).expect("find init");
    assert_eq!(module.find(session, 10).expect("find"), vec![public]);
    module.find_final(session).expect("final");
    assert_eq!(
        module.attribute_values(session, private, &[CKA_LABEL]),
        Err(Ckr::OBJECT_HANDLE_INVALID)
    );
}

#[test]
fn ok_sign_and_verify_round_trip_per_mechanism() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (mut module, _, session) = ready(temp.path());
    let digest = Digest::Sha256.hash(b"data").expect("hash");
    for params in [P256, P384] {
        let keys = curve_pair(&mut module, session, params, true, "ec");
        sign_and_verify(&mut module, session, keys, CKM_ECDSA, &Param::None, &digest);
        for mechanism in [CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, CKM_ECDSA_SHA512] {
            sign_and_verify(&mut module, session, keys, mechanism, &Param::None, b"data");
        }
    }
    let keys = curve_pair(&mut module, session, ED25519, true, "ed");
    sign_and_verify(&mut module, session, keys, CKM_EDDSA, &Param::None, b"data");
    let keys = key_pair(
        &mut module,
        session,
        CKM_RSA_PKCS_KEY_PAIR_GEN,
        vec![(CKA_MODULUS_BITS, ulong(2048))],
        true,
        "rsa",
    )
    .expect("keygen");
    for mechanism in [
        CKM_SHA256_RSA_PKCS,
        CKM_SHA384_RSA_PKCS,
        CKM_SHA512_RSA_PKCS,
        CKM_RSA_PKCS,
    ] {
        sign_and_verify(&mut module, session, keys, mechanism, &Param::None, &digest);
    }
    let pss = |hash| Param::Pss {
        hash,
        mgf: CKG_MGF1_SHA256,
        salt_len: 32,
    };
    sign_and_verify(
        &mut module,
        session,
        keys,
        CKM_SHA256_RSA_PKCS_PSS,
        &pss(CKM_SHA256),
        b"data",
    );
    sign_and_verify(
        &mut module,
        session,
        keys,
        CKM_RSA_PKCS_PSS,
        &pss(CKM_SHA256),
        &digest,
    );
    // Multi-part signing gives a signature the single-part verify accepts.
    module
        .sign_init(session, CKM_SHA256_RSA_PKCS, &Param::None, keys.1)
        .expect("init");
    module.sign_update(session, b"da").expect("update");
    module.sign_update(session, b"ta").expect("update");
    let signature = module.sign_final(session).expect("final");
    module
        .verify_init(session, CKM_SHA256_RSA_PKCS, &Param::None, keys.0)
        .expect("init");
    module.verify(session, b"data", &signature).expect("verify");
    // Wrong key type and a finished operation.
    assert_eq!(
        module.sign_init(session, CKM_ECDSA, &Param::None, keys.1),
        Err(Ckr::KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        module.sign(session, b"x"),
        Err(Ckr::OPERATION_NOT_INITIALIZED)
    );
    assert_eq!(
        module.sign_init(session, CKM_SHA256_RSA_PKCS, &Param::None, keys.0),
        Err(Ckr::KEY_TYPE_INCONSISTENT)
    );
}

#[test]
fn ok_digest_matches_openssl() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (mut module, _, session) = ready(temp.path());
    module
        .digest_init(session, CKM_SHA384, &Param::None)
        .expect("init");
    assert_eq!(module.digest_len(session), Ok(48));
    let digest = module.digest(session, b"abc").expect("digest");
    let expected =
        openssl::hash::hash(openssl::hash::MessageDigest::sha384(), b"abc").expect("hash");
    assert_eq!(digest, expected.to_vec());
    assert_eq!(
        module.digest_init(session, CKM_MD5, &Param::None),
        Err(Ckr::MECHANISM_INVALID)
    );
}

#[test]
fn ok_token_objects_persist_and_are_sealed() {
    let temp = tempfile::tempdir().expect("tempdir");
    let point = {
        let (mut module, _, session) = ready(temp.path());
        let (public, _) = curve_pair(&mut module, session, P384, true, "ca");
        let point = module
            .attribute_values(session, public, &[CKA_EC_POINT])
            .expect("point");
        // A session object disappears with its session.
        let session_object = Template(vec![
            (CKA_CLASS, ulong(CKO_DATA)),
            (CKA_LABEL, b"temp".to_vec()),
        ]);
        module
            .create_object(session, &session_object)
            .expect("create");
        point
    };
    let mut module = module(temp.path());
    let slot = module.slot_list(true)[0];
    let session = module
        .open_session(slot, CKF_SERIAL_SESSION)
        .expect("session");
    module.login(session, CKU_USER, USER_PIN).expect("login");
    module
        .find_init(session, &Template(vec![(CKA_LABEL, b"ca".to_vec())]))
        .expect("find");
    let found = module.find(session, 10).expect("find");
    module.find_final(session).expect("final");
    assert_eq!(found.len(), 2);
    module
        .find_init(session, &Template(vec![(CKA_LABEL, b"temp".to_vec())]))
        .expect("find");
    assert!(module.find(session, 10).expect("find").is_empty());
    module.find_final(session).expect("final");
    // Handles are per module instance; look the keys up again by class.
    let class_of = |module: &mut Module, handle| {
        module
            .attribute_values(session, handle, &[CKA_CLASS])
            .expect("class")
    };
    let (mut new_public, mut new_private) = (0, 0);
    for handle in found {
        if class_of(&mut module, handle) == vec![AttributeValue::Value(ulong(CKO_PUBLIC_KEY))] {
            new_public = handle;
        } else {
            new_private = handle;
        }
    }
    assert_ne!((new_public, new_private), (0, 0));
    assert_eq!(
        module
            .attribute_values(session, new_public, &[CKA_EC_POINT])
            .expect("point"),
        point
    );
    sign_and_verify(
        &mut module,
        session,
        (new_public, new_private),
        CKM_ECDSA_SHA384,
        &Param::None,
        b"after reopen",
    );
    // On disk: one sealed secret, and no private value as an attribute.
    let serial = module.token_info(slot).expect("info").serial;
    let record = module.store.read(&serial).expect("record");
    let sealed_count = record
        .objects
        .values()
        .filter(|object| object.secret.is_some())
        .count();
    assert_eq!(sealed_count, 1);
    assert!(record
        .objects
        .values()
        .all(|object| object.get(CKA_VALUE).is_none()));
}

#[test]
fn ok_device_removal_closes_sessions_and_session_limit_applies() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (mut module, slot, session) = ready(temp.path());
    module.set_device_removed(true);
    assert_eq!(module.session_info(session), Err(Ckr::DEVICE_REMOVED));
    assert!(module.slot_list(true).is_empty());
    assert!(!module.slot_info(slot).expect("slot").token_present);
    assert_eq!(
        module.open_session(slot, CKF_SERIAL_SESSION),
        Err(Ckr::TOKEN_NOT_PRESENT)
    );
    module.set_device_removed(false);
    assert_eq!(
        module.session_info(session),
        Err(Ckr::SESSION_HANDLE_INVALID)
    );
    module.set_session_limit(Some(1));
    let only = module
        .open_session(slot, CKF_SERIAL_SESSION)
        .expect("first");
    assert_eq!(
        module.open_session(slot, CKF_SERIAL_SESSION),
        Err(Ckr::SESSION_COUNT)
    );
    assert_eq!(module.token_info(slot).expect("info").max_sessions, Some(1));
    // The removal logged the token out.
    assert_eq!(
        module.session_info(only).expect("info").state,
        CKS_RO_PUBLIC_SESSION
    );
}

#[test]
fn ok_create_certificate_and_public_key_objects() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (mut module, _, session) = ready(temp.path());
    let certificate = Template(vec![
        (CKA_CLASS, ulong(CKO_CERTIFICATE)),
        (CKA_TOKEN, boolean(true)),
        (CKA_VALUE, vec![0x30, 0x03, 0x02, 0x01, 0x01]),
        (CKA_LABEL, b"cert".to_vec()),
    ]);
    let handle = module
        .create_object(session, &certificate)
        .expect("certificate");
    assert_eq!(
        module
            .attribute_values(session, handle, &[CKA_VALUE])
            .expect("value"),
        vec![AttributeValue::Value(vec![0x30, 0x03, 0x02, 0x01, 0x01])]
    );
    let (public, _) = curve_pair(&mut module, session, P256, true, "k");
    let point = match module
        .attribute_values(session, public, &[CKA_EC_POINT])
        .expect("point")
        .remove(0)
    {
        AttributeValue::Value(bytes) => bytes,
        other => panic!("no point: {other:?}"),
    };
    let imported = Template(vec![
        (CKA_CLASS, ulong(CKO_PUBLIC_KEY)),
        (CKA_KEY_TYPE, ulong(CKK_EC)),
        (CKA_EC_PARAMS, P256.to_vec()),
        (CKA_EC_POINT, point),
    ]);
    module
        .create_object(session, &imported)
        .expect("public key");
    let garbage = Template(vec![
        (CKA_CLASS, ulong(CKO_PUBLIC_KEY)),
        (CKA_KEY_TYPE, ulong(CKK_EC)),
        (CKA_EC_PARAMS, P256.to_vec()),
        (CKA_EC_POINT, vec![4, 2, 1, 2]),
    ]);
    assert_eq!(
        module.create_object(session, &garbage),
        Err(Ckr::TEMPLATE_INCONSISTENT)
    );
    let private = Template(vec![(CKA_CLASS, ulong(CKO_PRIVATE_KEY))]);
    assert_eq!(
        module.create_object(session, &private),
        Err(Ckr::ATTRIBUTE_VALUE_INVALID)
    );
    module.destroy_object(session, handle).expect("destroy");
    assert_eq!(
        module.attribute_values(session, handle, &[CKA_VALUE]),
        Err(Ckr::OBJECT_HANDLE_INVALID)
    );
}
