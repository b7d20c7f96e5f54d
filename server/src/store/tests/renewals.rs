//! Renewal records: lineage, predecessors revoked before or while a
//! renewal is signed, and key-compromise revocation of a whole chain.

use super::*;

backend_tests!(
    run = TestDb::run;
    renewal_record_keeps_lineage,
    fail_renewal_of_a_predecessor_revoked_meanwhile,
    fail_renewal_whose_predecessor_is_revoked_while_it_is_signed,
    key_compromise_revokes_every_renewal_from_the_certificate,
);

fn renewal_record_keeps_lineage(db: &TestDb) {
    let store = &db.store;
    let first = new_cert(&serial(6), "payments", None);
    issue(store, &first);
    let later = NOW + Duration::hours(1);
    let renewed = NewCertificate {
        predecessor: Some(first.serial.clone()),
        chain_started_at: first.chain_started_at,
        ..new_cert(&serial(7), "payments", None)
    };
    store
        .begin_issuance(
            &renewed,
            None,
            &format!("certificate:{}", first.serial),
            later,
        )
        .expect("begin renewal");
    store
        .complete_issuance(
            &renewed.serial,
            renewed.predecessor.as_deref(),
            &fake_der("7"),
            later,
        )
        .expect("complete renewal");
    let record = store
        .certificate_record(&renewed.serial)
        .expect("read")
        .expect("exists");
    assert_eq!(record.chain_started_at, NOW);
    assert_eq!(
        record.info.predecessor.as_deref(),
        Some(first.serial.as_str())
    );
    assert_eq!(
        record.certificate_der.as_deref(),
        Some(fake_der("7").as_slice())
    );
    assert_eq!(
        record.info.certificate_pem, None,
        "the record carries DER, not PEM"
    );
    let listed = store
        .list_certificates(&CertificateFilter::default(), None, 10)
        .expect("list");
    assert!(listed
        .items
        .iter()
        .any(|info| info.serial == renewed.serial && info.predecessor.is_some()));
    assert_eq!(store.certificate_record(&serial(405)).expect("read"), None);
}

fn fail_renewal_of_a_predecessor_revoked_meanwhile(db: &TestDb) {
    // The renewal path checks the presented certificate before its
    // transaction; a revocation that commits in between must still stop it.
    let store = &db.store;
    let first = new_cert(&serial(8), "payments", None);
    issue(store, &first);
    store
        .revoke_certificate(
            &first.serial,
            RevocationReason::KeyCompromise.into(),
            ACTOR,
            NOW,
        )
        .expect("revoke");
    let renewed = NewCertificate {
        predecessor: Some(first.serial.clone()),
        chain_started_at: first.chain_started_at,
        ..new_cert(&serial(9), "payments", None)
    };
    let err = store
        .begin_issuance(&renewed, None, ACTOR, NOW)
        .expect_err("the predecessor is revoked");
    assert!(
        matches!(&err, StoreError::PredecessorRevoked { serial } if *serial == first.serial),
        "{err:?}"
    );
    assert!(store.certificate(&renewed.serial).expect("read").is_none());
    let revoked = store
        .certificate(&first.serial)
        .expect("read")
        .expect("exists");
    assert_eq!(revoked.status, CertificateStatus::Revoked);
}

fn fail_renewal_whose_predecessor_is_revoked_while_it_is_signed(db: &TestDb) {
    let store = &db.store;
    let first = new_cert(&serial(10), "payments", None);
    issue(store, &first);
    let renewed = NewCertificate {
        predecessor: Some(first.serial.clone()),
        chain_started_at: first.chain_started_at,
        ..new_cert(&serial(11), "payments", None)
    };
    store
        .begin_issuance(&renewed, None, ACTOR, NOW)
        .expect("the intent is recorded");
    // The HSM signs; meanwhile the holder's certificate is revoked.
    store
        .revoke_certificate(
            &first.serial,
            RevocationReason::KeyCompromise.into(),
            ACTOR,
            NOW,
        )
        .expect("revoke");
    let err = store
        .complete_issuance(
            &renewed.serial,
            renewed.predecessor.as_deref(),
            &fake_der("11"),
            NOW,
        )
        .expect_err("the predecessor is revoked");
    assert!(
        matches!(&err, StoreError::PredecessorRevoked { serial } if *serial == first.serial),
        "{err:?}"
    );
    let pending = store
        .certificate(&renewed.serial)
        .expect("read")
        .expect("exists");
    assert_eq!(
        pending.status,
        CertificateStatus::Pending,
        "left for abandon_issuance"
    );
    // An enrollment (no predecessor) completes as before.
    let fresh = new_cert(&serial(12), "payments", None);
    issue(store, &fresh);
}

fn key_compromise_revokes_every_renewal_from_the_certificate(db: &TestDb) {
    let store = &db.store;
    let renewal_of = |parent: &NewCertificate, n: usize| NewCertificate {
        predecessor: Some(parent.serial.clone()),
        chain_started_at: parent.chain_started_at,
        ..new_cert(&serial(n), "payments", None)
    };
    // a → b → c, and a fork a → d (someone else renewed a as well).
    let a = new_cert(&serial(20), "payments", None);
    issue(store, &a);
    let b = renewal_of(&a, 21);
    issue(store, &b);
    let c = renewal_of(&b, 22);
    issue(store, &c);
    let d = renewal_of(&a, 23);
    issue(store, &d);
    // Another chain, revoked for another reason: its successor stays valid.
    let e = new_cert(&serial(24), "payments", None);
    issue(store, &e);
    let f = renewal_of(&e, 25);
    issue(store, &f);
    store
        .revoke_certificate(&e.serial, RevocationReason::Superseded.into(), ACTOR, NOW)
        .expect("revoke e");
    let status = |cert: &NewCertificate| {
        store
            .certificate(&cert.serial)
            .expect("read")
            .expect("exists")
            .status
    };
    assert_eq!(
        status(&f),
        CertificateStatus::Issued,
        "superseded does not cascade"
    );

    let revoked = store
        .revoke_certificate(
            &a.serial,
            RevocationReason::KeyCompromise.into(),
            ACTOR,
            NOW,
        )
        .expect("revoke a");
    assert_eq!(revoked.serial, a.serial);
    for cert in [&a, &b, &c, &d] {
        assert_eq!(status(cert), CertificateStatus::Revoked, "{}", cert.serial);
    }
    let cascaded: Vec<(String, String)> = all_audit(store)
        .into_iter()
        .filter(|event| event.kind == "certificate.revoked")
        .filter_map(|event| {
            let origin = event.data.get("cascaded_from")?.as_str()?.to_owned();
            Some((event.subject, origin))
        })
        .collect();
    let mut subjects: Vec<String> = cascaded
        .iter()
        .map(|(subject, _)| subject.clone())
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        vec![b.serial.clone(), c.serial.clone(), d.serial.clone()]
    );
    assert!(
        cascaded.iter().all(|(_, origin)| *origin == a.serial),
        "{cascaded:?}"
    );
    let info = store.certificate(&c.serial).expect("read").expect("exists");
    assert_eq!(
        info.revocation_reason,
        Some(RevocationReason::KeyCompromise)
    );
}
