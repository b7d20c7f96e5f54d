//! The certificate inventory: reads, filters and revocation.

use super::*;

backend_tests!(
    run = TestDb::run;
    certificate_read_has_pem_once_issued,
    inventory_filters,
    fail_revoke_twice,
);

fn certificate_read_has_pem_once_issued(db: &TestDb) {
    let store = &db.store;
    let cert = new_cert(&serial(5), "payments", None);
    store
        .begin_issuance(&cert, None, ACTOR, NOW)
        .expect("begin");
    let pending = store
        .certificate(&cert.serial)
        .expect("read")
        .expect("exists");
    assert_eq!(pending.status, CertificateStatus::Pending);
    assert_eq!(pending.certificate_pem, None);
    store
        .complete_issuance(&cert.serial, None, &fake_der("5"), NOW)
        .expect("complete");
    let issued = store
        .certificate(&cert.serial)
        .expect("read")
        .expect("exists");
    assert_eq!(issued.status, CertificateStatus::Issued);
    assert!(issued
        .certificate_pem
        .as_deref()
        .is_some_and(|pem| pem.starts_with("-----BEGIN CERTIFICATE-----\n")));
    assert_eq!(issued.identity, cert.identity);
    assert_eq!(issued.key_type, "ec-p256");
    assert_eq!(
        (issued.not_before, issued.not_after),
        (cert.not_before, cert.not_after)
    );
    assert_eq!(issued.created_at, NOW);
    assert_eq!(store.certificate(&serial(404)).expect("read"), None);
}

fn inventory_filters(db: &TestDb) {
    let store = &db.store;
    let soon = |n: usize, policy: &str, days: i64| {
        let mut cert = new_cert(&serial(n), policy, None);
        cert.not_after = NOW + Duration::days(days);
        cert
    };
    issue(store, &soon(1, "payments", 1));
    issue(store, &soon(2, "payments", 10));
    issue(store, &soon(3, "billing", 2));
    store
        .begin_issuance(&soon(4, "billing", 1), None, ACTOR, NOW)
        .expect("pending");
    issue(store, &soon(5, "billing", 1));
    store
        .revoke_certificate(&serial(5), RevocationReason::Superseded.into(), ACTOR, NOW)
        .expect("revoke");
    // Issued, and already expired at NOW: not "expiring".
    issue(store, &soon(6, "payments", -1));

    let list = |filter: CertificateFilter| -> Vec<String> {
        let mut serials: Vec<String> = store
            .list_certificates(&filter, None, 100)
            .expect("list")
            .items
            .into_iter()
            .map(|c| c.serial)
            .collect();
        serials.sort();
        serials
    };
    assert_eq!(
        list(CertificateFilter {
            policy: Some("payments".to_owned()),
            ..Default::default()
        }),
        [serial(1), serial(2), serial(6)]
    );
    assert_eq!(
        list(CertificateFilter {
            status: Some(CertificateStatus::Pending),
            ..Default::default()
        }),
        [serial(4)]
    );
    assert_eq!(
        list(CertificateFilter {
            status: Some(CertificateStatus::Revoked),
            ..Default::default()
        }),
        [serial(5)]
    );
    // Expiring: issued only, still valid at NOW, not_after at or before
    // the bound (serial 6 has expired already).
    let within_two_days = Some(ExpiryWindow {
        from: NOW,
        until: NOW + Duration::days(2),
    });
    assert_eq!(
        list(CertificateFilter {
            expiring: within_two_days,
            ..Default::default()
        }),
        [serial(1), serial(3)]
    );
    assert_eq!(
        list(CertificateFilter {
            policy: Some("billing".to_owned()),
            expiring: within_two_days,
            ..Default::default()
        }),
        [serial(3)]
    );
    let revoked = store
        .list_certificates(
            &CertificateFilter {
                status: Some(CertificateStatus::Revoked),
                ..Default::default()
            },
            None,
            10,
        )
        .expect("list");
    assert_eq!(
        revoked.items[0].revocation_reason,
        Some(RevocationReason::Superseded)
    );
    assert_eq!(revoked.items[0].revoked_at, Some(NOW));
}

fn fail_revoke_twice(db: &TestDb) {
    let store = &db.store;
    let cert = new_cert(&serial(8), "payments", None);
    issue(store, &cert);
    let later = NOW + Duration::minutes(3);
    let revoked = store
        .revoke_certificate(
            &cert.serial,
            RevocationReason::KeyCompromise.into(),
            ACTOR,
            later,
        )
        .expect("revoke");
    assert_eq!(revoked.status, CertificateStatus::Revoked);
    assert_eq!(
        revoked.revocation_reason,
        Some(RevocationReason::KeyCompromise)
    );
    assert_eq!(revoked.revoked_at, Some(later));
    assert!(revoked.certificate_pem.is_some());
    let err = store
        .revoke_certificate(
            &cert.serial,
            RevocationReason::Unspecified.into(),
            ACTOR,
            NOW,
        )
        .expect_err("twice");
    assert!(
        matches!(err, StoreError::CertificateAlreadyRevoked { revoked_at: Some(at), .. } if at == later),
        "{err:?}"
    );
    let pending = new_cert(&serial(9), "payments", None);
    store
        .begin_issuance(&pending, None, ACTOR, NOW)
        .expect("begin");
    let err = store
        .revoke_certificate(
            &pending.serial,
            RevocationReason::Unspecified.into(),
            ACTOR,
            NOW,
        )
        .expect_err("pending");
    assert!(
        matches!(
            err,
            StoreError::CertificateNotIssued {
                status: CertificateStatus::Pending,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .revoke_certificate(
            &serial(404),
            RevocationReason::Unspecified.into(),
            ACTOR,
            NOW,
        )
        .expect_err("unknown");
    assert!(
        matches!(err, StoreError::CertificateNotFound { .. }),
        "{err:?}"
    );
    assert_eq!(
        store
            .count_certificates(CertificateStatus::Revoked)
            .expect("count"),
        1
    );
}
