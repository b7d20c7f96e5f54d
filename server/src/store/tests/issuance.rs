//! The issuance record: serial collisions, policy versions superseded in
//! flight, abandonment refunds, and completion happening at most once.

use super::*;

backend_tests!(
    run = TestDb::run;
    fail_serial_collision_consumes_nothing,
    fail_policy_version_superseded_by_a_write_in_flight_elsewhere,
    fail_superseded_policy_version_consumes_nothing,
    abandon_refunds_the_token,
    fail_complete_issuance_twice,
);

fn fail_serial_collision_consumes_nothing(db: &TestDb) {
    let store = &db.store;
    token(store, "tok-2", 2, NOW + Duration::hours(1));
    let cert = new_cert(&serial(7), "payments", Some("tok-2"));
    store
        .begin_issuance(&cert, Some("tok-2"), ACTOR, NOW)
        .expect("first");
    let err = store
        .begin_issuance(&cert, Some("tok-2"), ACTOR, NOW)
        .expect_err("same serial");
    assert!(
        matches!(err, StoreError::SerialCollision { ref serial } if *serial == cert.serial),
        "{err:?}"
    );
    // The collision rolled back the token use taken in the same transaction.
    assert_eq!(uses(store, "tok-2"), 1);
    // Without a token too.
    let err = store
        .begin_issuance(&new_cert(&serial(7), "payments", None), None, ACTOR, NOW)
        .expect_err("same serial, no token");
    assert!(matches!(err, StoreError::SerialCollision { .. }), "{err:?}");
}

fn fail_policy_version_superseded_by_a_write_in_flight_elsewhere(db: &TestDb) {
    // Another replica is replacing the policy (its transaction holds the
    // write lock: BEGIN IMMEDIATE on SQLite, the audit head on PostgreSQL)
    // while this one records an intent evaluated under version 1. The intent
    // must wait for that write and then see version 2, not check the version
    // first and commit after the replacement.
    use diesel::r2d2::ManageConnection as _;
    let store = &db.store;
    store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect("create");
    let manager = connection::Manager::new(connection::Target::parse(&db.url).expect("url"));
    let mut other = manager.connect().expect("second connection");
    let begin = match &other {
        DbConnection::Sqlite(_) => "BEGIN IMMEDIATE;",
        DbConnection::Postgres(_) => "BEGIN; SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE;",
    };
    other
        .batch_execute(&format!(
            "{begin} INSERT INTO policies (name, version, spec_json, enabled, created_at, created_by) \
             SELECT name, 2, spec_json, enabled, created_at, created_by FROM policies \
             WHERE name = 'payments' AND version = 1;"
        ))
        .expect("replacement in flight");
    let evaluated_under_v1 = NewCertificate {
        policy_version: 1,
        require_current_policy: true,
        ..new_cert(&serial(34), "payments", None)
    };
    let outcome = std::thread::scope(|scope| {
        let intent = scope.spawn(|| store.begin_issuance(&evaluated_under_v1, None, ACTOR, NOW));
        std::thread::sleep(std::time::Duration::from_millis(300));
        other
            .batch_execute("COMMIT")
            .expect("commit the replacement");
        intent.join().expect("no panic")
    });
    assert!(
        matches!(
            &outcome,
            Err(StoreError::PolicyChanged { evaluated: 1, .. })
        ),
        "{outcome:?}"
    );
    assert!(store.certificate(&serial(34)).expect("read").is_none());
}

fn fail_superseded_policy_version_consumes_nothing(db: &TestDb) {
    let store = &db.store;
    store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect("create");
    token(store, "tok-policy", 5, NOW + Duration::hours(1));
    let current = |serial_n, version| NewCertificate {
        policy_version: version,
        require_current_policy: true,
        ..new_cert(&serial(serial_n), "payments", Some("tok-policy"))
    };
    store
        .begin_issuance(&current(30, 1), Some("tok-policy"), ACTOR, NOW)
        .expect("version 1 is current");
    let mut changed = spec("payments");
    changed.allowed.dns = vec!["*.narrower.internal".into()];
    store.replace_policy(&changed, ACTOR, NOW).expect("replace");
    let stale = store.begin_issuance(&current(31, 1), Some("tok-policy"), ACTOR, NOW);
    assert!(
        matches!(&stale, Err(StoreError::PolicyChanged { name, evaluated: 1 }) if name == "payments"),
        "{stale:?}"
    );
    assert_eq!(
        store.token("tok-policy").expect("read").map(|t| t.uses),
        Some(1),
        "the refused intent consumed no token use"
    );
    assert!(store.certificate(&serial(31)).expect("read").is_none());
    store
        .begin_issuance(&current(32, 2), Some("tok-policy"), ACTOR, NOW)
        .expect("version 2 is current");
    let unknown = NewCertificate {
        require_current_policy: true,
        ..new_cert(&serial(33), "no-such-policy", None)
    };
    assert!(matches!(
        store.begin_issuance(&unknown, None, ACTOR, NOW),
        Err(StoreError::PolicyChanged { .. })
    ));
}

fn abandon_refunds_the_token(db: &TestDb) {
    let store = &db.store;
    token(store, "tok-1", 1, NOW + Duration::hours(1));
    let first = new_cert(&serial(1), "payments", Some("tok-1"));
    store
        .begin_issuance(&first, Some("tok-1"), ACTOR, NOW)
        .expect("begin");
    assert_eq!(uses(store, "tok-1"), 1);
    store
        .abandon_issuance(&first.serial, "hsm: CKR_DEVICE_REMOVED", Some("tok-1"), NOW)
        .expect("abandon");
    assert_eq!(uses(store, "tok-1"), 0);
    let info = store
        .certificate(&first.serial)
        .expect("read")
        .expect("exists");
    assert_eq!(info.status, CertificateStatus::Failed);
    assert_eq!(info.certificate_pem, None);
    // Abandoning again is refused, and refunds nothing more.
    let err = store
        .abandon_issuance(&first.serial, "again", Some("tok-1"), NOW)
        .expect_err("not pending");
    assert!(
        matches!(
            err,
            StoreError::CertificateNotPending {
                status: CertificateStatus::Failed,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(uses(store, "tok-1"), 0);
    // The client retries with the same token and a new serial.
    let second = new_cert(&serial(2), "payments", Some("tok-1"));
    issue(store, &second);
    assert_eq!(uses(store, "tok-1"), 1);
    assert_eq!(
        store
            .count_certificates(CertificateStatus::Failed)
            .expect("count"),
        1
    );
    assert_eq!(
        store
            .count_certificates(CertificateStatus::Issued)
            .expect("count"),
        1
    );
}

fn fail_complete_issuance_twice(db: &TestDb) {
    let store = &db.store;
    let cert = new_cert(&serial(3), "payments", None);
    store
        .begin_issuance(&cert, None, ACTOR, NOW)
        .expect("begin");
    store
        .complete_issuance(&cert.serial, None, &fake_der("x"), NOW)
        .expect("first completion");
    let err = store
        .complete_issuance(&cert.serial, None, &fake_der("y"), NOW)
        .expect_err("second completion");
    assert!(
        matches!(
            err,
            StoreError::CertificateNotPending {
                status: CertificateStatus::Issued,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .complete_issuance(&serial(99), None, &fake_der("z"), NOW)
        .expect_err("unknown serial");
    assert!(
        matches!(err, StoreError::CertificateNotFound { .. }),
        "{err:?}"
    );
    // The first certificate's bytes are the ones kept.
    let pem = store
        .certificate(&cert.serial)
        .expect("read")
        .expect("exists")
        .certificate_pem
        .expect("pem");
    let expected = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &fake_der("x"))
        .expect("pem");
    assert_eq!(pem, expected);
}
