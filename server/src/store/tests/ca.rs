//! CA state: recorded once, key reservations, and one init at a time.

use super::*;

backend_tests!(
    run = TestDb::run;
    ca_state_once_and_external_import,
    ca_key_reservations_hold_until_the_ca_is_recorded,
    one_init_at_a_time,
);

fn ca_state_once_and_external_import(db: &TestDb) {
    let store = &db.store;
    assert_eq!(store.ca_state().expect("read"), None);
    let err = store
        .complete_ca_import(b"root", &[], b"issuing", ACTOR, NOW)
        .expect_err("nothing to complete");
    assert!(matches!(err, StoreError::CaNotInitialized), "{err:?}");
    let pending = CaState {
        root_der: b"root-v0".to_vec(),
        issuing_der: None,
        intermediates_der: Vec::new(),
        root_key_label: None,
        issuing_key_label: "certmint-issuing".to_owned(),
        issuing_key_type: KeyType::EcP384,
        pending_csr_der: Some(b"csr".to_vec()),
    };
    store.save_ca_state(&pending, ACTOR, NOW).expect("save");
    assert_eq!(store.ca_state().expect("read"), Some(pending.clone()));
    let err = store
        .save_ca_state(&pending, ACTOR, NOW)
        .expect_err("twice");
    assert!(matches!(err, StoreError::CaAlreadyInitialized), "{err:?}");

    // Two intermediate CAs; each is one DER element (here SEQUENCE {
    // INTEGER }), stored back to back and split again on read.
    let intermediates = vec![
        vec![0x30, 0x03, 0x02, 0x01, 0x05],
        vec![0x30, 0x04, 0x02, 0x02, 0x01, 0x00],
    ];
    store
        .complete_ca_import(b"root", &intermediates, b"issuing", ACTOR, NOW)
        .expect("import");
    let complete = store.ca_state().expect("read").expect("exists");
    assert_eq!(complete.root_der, b"root");
    assert_eq!(complete.intermediates_der, intermediates);
    assert_eq!(complete.issuing_der.as_deref(), Some(&b"issuing"[..]));
    assert_eq!(complete.pending_csr_der, None);
    let err = store
        .complete_ca_import(b"root2", &[], b"issuing2", ACTOR, NOW)
        .expect_err("already complete");
    assert!(matches!(err, StoreError::CaAlreadyInitialized), "{err:?}");
    let kinds: Vec<String> = all_audit(store).into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [chain::CA_INITIALIZED, chain::CA_IMPORTED]);
}

fn ca_key_reservations_hold_until_the_ca_is_recorded(db: &TestDb) {
    let store = &db.store;
    let root = store
        .reserve_ca_key("ca-root", KeyType::EcP256, b"id-1", NOW)
        .expect("reserve");
    assert_eq!(
        root,
        CaKeyReservation {
            label: "ca-root".to_owned(),
            key_id: b"id-1".to_vec(),
            key_type: KeyType::EcP256,
        }
    );
    // A rerun after an interruption draws a new id (and may be asked for
    // another type): the first reservation, whose key may be on the token,
    // is what it gets.
    let again = store
        .reserve_ca_key("ca-root", KeyType::EcP384, b"id-2", NOW)
        .expect("reserve again");
    assert_eq!(again, root);
    let issuing = store
        .reserve_ca_key("ca-issuing", KeyType::Ed25519, b"id-3", NOW)
        .expect("reserve another label");
    assert_eq!(issuing.key_id, b"id-3");
    // Nothing was generated under it (the token had no Ed25519, say): the
    // rerun asks for another type and keeps the id.
    store
        .retype_ca_key_reservation("ca-issuing", KeyType::EcP256)
        .expect("retype");
    let issuing = store
        .reserve_ca_key("ca-issuing", KeyType::EcP256, b"id-7", NOW)
        .expect("reserve again");
    assert_eq!(
        (issuing.key_type, issuing.key_id.as_slice()),
        (KeyType::EcP256, &b"id-3"[..])
    );
    let token_key = store
        .reserve_ca_key("token-signing", KeyType::Ed25519, b"id-5", NOW)
        .expect("reserve a key that is not the CA's");
    assert_eq!(
        store.ca_key_reservation("token-signing").expect("read"),
        Some(token_key.clone())
    );
    assert_eq!(store.ca_key_reservation("nothing").expect("read"), None);

    let state = CaState {
        root_der: b"root".to_vec(),
        issuing_der: Some(b"issuing".to_vec()),
        intermediates_der: Vec::new(),
        root_key_label: Some("ca-root".to_owned()),
        issuing_key_label: "ca-issuing".to_owned(),
        issuing_key_type: KeyType::EcP256,
        pending_csr_der: None,
    };
    store
        .save_ca_state(&state, ACTOR, NOW)
        .expect("record the CA");
    let fresh = store
        .reserve_ca_key("ca-root", KeyType::EcP256, b"id-4", NOW)
        .expect("reserve after the CA is recorded");
    assert_eq!(
        fresh.key_id, b"id-4",
        "recording the CA drops its keys' reservations"
    );
    let kept = store
        .reserve_ca_key("token-signing", KeyType::Ed25519, b"id-6", NOW)
        .expect("reserve the token key again");
    assert_eq!(kept, token_key, "other reservations stay");
}

fn one_init_at_a_time(db: &TestDb) {
    let store = &db.store;
    let first = store.lock_for_init().expect("first lock");
    let (acquired, released) = std::thread::scope(|scope| {
        let second = scope.spawn(|| {
            let _lock = store.lock_for_init().expect("second lock");
            std::time::Instant::now()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        let released = std::time::Instant::now();
        drop(first);
        (second.join().expect("second init"), released)
    });
    assert!(
        acquired >= released,
        "the second init got the lock while the first held it"
    );
    // Released again: a third takes it at once.
    drop(store.lock_for_init().expect("third lock"));
}
