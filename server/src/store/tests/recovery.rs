//! Crash recovery: stale pending rows are reconciled exactly once (refund
//! included) however many replicas sweep at once, young rows are left
//! alone, a withdrawn row cannot be completed, and a used-up token's
//! earlier requests are found again (redelivery, refund, in flight).

use std::sync::Barrier;

use super::*;
use crate::audit::{CERTIFICATE_FAILED, CERTIFICATE_REDELIVERED};

backend_tests!(
    run = TestDb::run;
    reconcile_is_exactly_once_under_concurrent_replicas,
    fail_complete_issuance_after_reconciliation,
    used_up_token_recovery_redelivers_refunds_or_reports_in_flight,
);

/// Bound used by these tests: rows created at `NOW` are stale from here on.
const STALE_BEFORE: OffsetDateTime = datetime!(2026-01-01 12:02:01 UTC);

/// A second key hash, for a CSR with another key.
fn other_key() -> String {
    "cd".repeat(32)
}

fn reconciled_events(store: &Store) -> Vec<certmint::wire::AuditEvent> {
    all_audit(store)
        .into_iter()
        .filter(|event| event.kind == CERTIFICATE_FAILED && event.data["reconciled"] == true)
        .collect()
}

fn reconcile_is_exactly_once_under_concurrent_replicas(db: &TestDb) {
    const THREADS: usize = 8;
    let store = &db.store;
    let replica = Store::open(&db.url, POOL_SIZE).expect("second replica");
    // Two stale rows (an enrollment holding a use, a renewal holding none)
    // and one young enrollment row.
    token(store, "tok-stale", 1, NOW + Duration::hours(1));
    token(store, "tok-young", 1, NOW + Duration::hours(1));
    let stale = new_cert(&serial(1), "payments", Some("tok-stale"));
    store
        .begin_issuance(&stale, Some("tok-stale"), ACTOR, NOW)
        .expect("begin stale");
    let renewal = new_cert(&serial(2), "payments", None);
    store
        .begin_issuance(&renewal, None, ACTOR, NOW)
        .expect("begin renewal");
    let young = new_cert(&serial(3), "payments", Some("tok-young"));
    store
        .begin_issuance(&young, Some("tok-young"), ACTOR, STALE_BEFORE)
        .expect("begin young");
    let later = STALE_BEFORE + Duration::seconds(30);

    let barrier = Barrier::new(THREADS);
    let counts: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|n| {
                let store = if n % 2 == 0 { store } else { &replica };
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    store
                        .reconcile_pending(STALE_BEFORE, later)
                        .expect("reconcile")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .collect()
    });
    assert_eq!(counts.iter().sum::<usize>(), 2, "{counts:?}");
    for serial in [&stale.serial, &renewal.serial] {
        let info = store.certificate(serial).expect("read").expect("exists");
        assert_eq!(info.status, CertificateStatus::Failed, "{serial}");
    }
    let record = store
        .certificate(&young.serial)
        .expect("read")
        .expect("exists");
    assert_eq!(record.status, CertificateStatus::Pending);
    // Refunded once: the use is back, and not below zero.
    assert_eq!(uses(store, "tok-stale"), 0);
    assert_eq!(uses(store, "tok-young"), 1);
    let events = reconciled_events(store);
    let mut subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    subjects.sort_unstable();
    assert_eq!(subjects, [stale.serial.as_str(), renewal.serial.as_str()]);
    let refunds: Vec<&serde_json::Value> =
        events.iter().map(|e| &e.data["refunded_token"]).collect();
    assert!(refunds.contains(&&serde_json::json!("tok-stale")));
    assert!(refunds.contains(&&serde_json::Value::Null));
    verify_chain(&all_audit(store)).expect("chain verifies");
    // Nothing is left to reconcile, and the young row's time has not come.
    assert_eq!(
        store.reconcile_pending(STALE_BEFORE, later).expect("again"),
        0
    );
    assert_eq!(
        store
            .count_certificates(CertificateStatus::Pending)
            .expect("count"),
        1
    );
}

fn fail_complete_issuance_after_reconciliation(db: &TestDb) {
    let store = &db.store;
    token(store, "tok-slow", 1, NOW + Duration::hours(1));
    let slow = new_cert(&serial(7), "payments", Some("tok-slow"));
    store
        .begin_issuance(&slow, Some("tok-slow"), ACTOR, NOW)
        .expect("begin");
    // The slow request is still signing when its row is reconciled.
    assert_eq!(
        store
            .reconcile_pending(STALE_BEFORE, STALE_BEFORE)
            .expect("reconcile"),
        1
    );
    assert_eq!(uses(store, "tok-slow"), 0);
    // A retry takes the refunded use.
    let retry = new_cert(&serial(8), "payments", Some("tok-slow"));
    issue(store, &retry);
    assert_eq!(uses(store, "tok-slow"), 1);
    let err = store
        .complete_issuance(&slow.serial, None, &fake_der("late"), STALE_BEFORE)
        .expect_err("withdrawn");
    assert!(
        matches!(err, StoreError::IssuanceWithdrawn { .. }),
        "{err:?}"
    );
    // The slow request's own clean-up refunds nothing a second time.
    let err = store
        .abandon_issuance(&slow.serial, "too late", Some("tok-slow"), STALE_BEFORE)
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
    assert_eq!(uses(store, "tok-slow"), 1);
    let info = store
        .certificate(&slow.serial)
        .expect("read")
        .expect("exists");
    assert_eq!(
        (info.status, info.certificate_pem),
        (CertificateStatus::Failed, None)
    );
}

fn used_up_token_recovery_redelivers_refunds_or_reports_in_flight(db: &TestDb) {
    let store = &db.store;
    let key = "ab".repeat(32);
    let recover = |id: &str, key: &str, stale_before, now| {
        store
            .recover_used_up_token(id, key, stale_before, &format!("token:{id}"), now)
            .expect("recover")
    };

    // Issued for this token and key: delivered again, and audited.
    token(store, "tok-done", 1, NOW + Duration::hours(1));
    let done = new_cert(&serial(20), "payments", Some("tok-done"));
    issue(store, &done);
    match recover("tok-done", &key, STALE_BEFORE, NOW) {
        UsedUpTokenRecovery::Redeliver(info) => {
            assert_eq!(info.serial, done.serial);
            assert_eq!(info.status, CertificateStatus::Issued);
            assert!(info.certificate_pem.is_some());
        }
        other => panic!("expected a redelivery, got {other:?}"),
    }
    let redelivered: Vec<String> = all_audit(store)
        .into_iter()
        .filter(|event| event.kind == CERTIFICATE_REDELIVERED)
        .map(|event| event.subject)
        .collect();
    assert_eq!(redelivered, std::slice::from_ref(&done.serial));
    // Another key, or the certificate expired or revoked: nothing to give.
    assert_eq!(
        recover("tok-done", &other_key(), STALE_BEFORE, NOW),
        UsedUpTokenRecovery::UsedUp
    );
    assert_eq!(
        recover(
            "tok-done",
            &key,
            STALE_BEFORE,
            done.not_after + Duration::seconds(1)
        ),
        UsedUpTokenRecovery::UsedUp
    );
    store
        .revoke_certificate(
            &done.serial,
            RevocationReason::Superseded.into(),
            ACTOR,
            NOW,
        )
        .expect("revoke");
    assert_eq!(
        recover("tok-done", &key, STALE_BEFORE, NOW),
        UsedUpTokenRecovery::UsedUp
    );

    // Pending and young: in flight, nothing changes.
    token(store, "tok-pending", 1, NOW + Duration::hours(1));
    let pending = new_cert(&serial(21), "payments", Some("tok-pending"));
    store
        .begin_issuance(&pending, Some("tok-pending"), ACTOR, NOW)
        .expect("begin");
    assert_eq!(
        recover("tok-pending", &key, NOW - Duration::minutes(2), NOW),
        UsedUpTokenRecovery::InFlight { pending_since: NOW }
    );
    // A parallel request with another key lost the race: used up.
    assert_eq!(
        recover("tok-pending", &other_key(), NOW - Duration::minutes(2), NOW),
        UsedUpTokenRecovery::UsedUp
    );
    assert_eq!(uses(store, "tok-pending"), 1);
    // Pending and stale: reconciled and refunded, once; whatever the key
    // (the row was never signed for anyone).
    assert_eq!(
        recover("tok-pending", &other_key(), STALE_BEFORE, STALE_BEFORE),
        UsedUpTokenRecovery::Refunded(1)
    );
    assert_eq!(uses(store, "tok-pending"), 0);
    assert_eq!(
        recover("tok-pending", &key, STALE_BEFORE, STALE_BEFORE),
        UsedUpTokenRecovery::UsedUp
    );
    assert_eq!(uses(store, "tok-pending"), 0);
    assert_eq!(reconciled_events(store).len(), 1);
}
