//! Bootstrap-token consumption: uses are counted exactly once under races,
//! and refused tokens consume nothing.

use std::sync::Barrier;

use super::*;

backend_tests!(
    run = TestDb::run;
    single_use_token_raced_by_64_threads_issues_once,
    three_use_token_allows_exactly_three,
    fail_token_not_found_revoked_or_expired,
    revoke_token_is_idempotent,
    fail_corrupt_stored_json,
);

fn single_use_token_raced_by_64_threads_issues_once(db: &TestDb) {
    const THREADS: usize = 64;
    token(&db.store, "tok-race", 1, NOW + Duration::hours(1));
    let barrier = Barrier::new(THREADS);
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|n| {
                let (store, barrier) = (&db.store, &barrier);
                scope.spawn(move || {
                    let cert = new_cert(&serial(n), "payments", Some("tok-race"));
                    barrier.wait();
                    store.begin_issuance(&cert, Some("tok-race"), ACTOR, NOW)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let used_up = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::TokenUsedUp { max_uses: 1, .. })))
        .count();
    assert_eq!((ok, used_up), (1, THREADS - 1), "{results:?}");
    assert_eq!(
        db.store
            .count_certificates(CertificateStatus::Pending)
            .expect("count"),
        1
    );
    assert_eq!(uses(&db.store, "tok-race"), 1);
}

fn three_use_token_allows_exactly_three(db: &TestDb) {
    const THREADS: usize = 16;
    token(&db.store, "tok-3", 3, NOW + Duration::hours(1));
    let barrier = Barrier::new(THREADS);
    let ok = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|n| {
                let (store, barrier) = (&db.store, &barrier);
                scope.spawn(move || {
                    let cert = new_cert(&serial(n), "payments", Some("tok-3"));
                    barrier.wait();
                    match store.begin_issuance(&cert, Some("tok-3"), ACTOR, NOW) {
                        Ok(()) => true,
                        Err(StoreError::TokenUsedUp { .. }) => false,
                        Err(e) => panic!("unexpected error: {e:?}"),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .filter(|ok| *ok)
            .count()
    });
    assert_eq!(ok, 3);
    assert_eq!(uses(&db.store, "tok-3"), 3);
    assert_eq!(
        db.store
            .count_certificates(CertificateStatus::Pending)
            .expect("count"),
        3
    );
}

fn fail_token_not_found_revoked_or_expired(db: &TestDb) {
    let store = &db.store;
    let err = store
        .begin_issuance(
            &new_cert(&serial(1), "payments", None),
            Some("nope"),
            ACTOR,
            NOW,
        )
        .expect_err("unknown token");
    assert!(
        matches!(err, StoreError::TokenUnknown { ref id } if id == "nope"),
        "{err:?}"
    );

    token(store, "tok-revoked", 5, NOW + Duration::hours(1));
    store
        .revoke_token("tok-revoked", ACTOR, NOW)
        .expect("revoke");
    let err = store
        .begin_issuance(
            &new_cert(&serial(2), "payments", None),
            Some("tok-revoked"),
            ACTOR,
            NOW,
        )
        .expect_err("revoked token");
    assert!(
        matches!(err, StoreError::TokenRevoked { revoked_at, .. } if revoked_at == NOW),
        "{err:?}"
    );

    let expires_at = NOW + Duration::minutes(1);
    token(store, "tok-expired", 5, expires_at);
    let later = NOW + Duration::minutes(2);
    let err = store
        .begin_issuance(
            &new_cert(&serial(3), "payments", None),
            Some("tok-expired"),
            ACTOR,
            later,
        )
        .expect_err("expired token");
    assert!(
        matches!(err, StoreError::TokenExpired { expires_at: e, now, .. } if e == expires_at && now == later),
        "{err:?}"
    );
    // Expiry is exclusive: a token is dead at its expires_at instant.
    let err = store
        .begin_issuance(
            &new_cert(&serial(4), "payments", None),
            Some("tok-expired"),
            ACTOR,
            expires_at,
        )
        .expect_err("expired at the instant");
    assert!(matches!(err, StoreError::TokenExpired { .. }), "{err:?}");

    // Nothing was recorded or consumed by any refusal.
    assert_eq!(
        store
            .count_certificates(CertificateStatus::Pending)
            .expect("count"),
        0
    );
    assert_eq!(uses(store, "tok-revoked"), 0);
    assert_eq!(uses(store, "tok-expired"), 0);
}

fn revoke_token_is_idempotent(db: &TestDb) {
    let store = &db.store;
    token(store, "tok-r", 1, NOW + Duration::hours(1));
    let first = store.revoke_token("tok-r", ACTOR, NOW).expect("revoke");
    assert_eq!(first.revoked_at, Some(NOW));
    let second = store
        .revoke_token("tok-r", ACTOR, NOW + Duration::minutes(1))
        .expect("revoke again");
    assert_eq!(second, first);
    let revocations = all_audit(store)
        .iter()
        .filter(|e| e.kind == chain::TOKEN_REVOKED)
        .count();
    assert_eq!(revocations, 1);
    let err = store.revoke_token("nope", ACTOR, NOW).expect_err("unknown");
    assert!(matches!(err, StoreError::TokenNotFound { .. }), "{err:?}");
}

fn fail_corrupt_stored_json(db: &TestDb) {
    let store = &db.store;
    token(store, "tok-c", 1, NOW + Duration::hours(1));
    let mut conn = store.connection().expect("connection");
    diesel::update(schema::bootstrap_tokens::table)
        .set(schema::bootstrap_tokens::identity_json.eq("{not json"))
        .execute(&mut *conn)
        .expect("corrupt");
    drop(conn);
    let err = store.token("tok-c").expect_err("corrupt");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}
