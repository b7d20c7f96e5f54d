//! The audit chain: it verifies, and tampering is detected.

use super::*;

backend_tests!(
    run = TestDb::run;
    audit_chain_verifies_and_detects_tampering,);

fn audit_chain_verifies_and_detects_tampering(db: &TestDb) {
    let store = &db.store;
    store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect("create");
    store
        .replace_policy(&spec("payments"), ACTOR, NOW)
        .expect("replace");
    token(store, "tok-a", 2, NOW + Duration::hours(1));
    issue(store, &new_cert(&serial(1), "payments", Some("tok-a")));
    let failed = new_cert(&serial(2), "payments", Some("tok-a"));
    store
        .begin_issuance(&failed, Some("tok-a"), ACTOR, NOW)
        .expect("begin");
    store
        .abandon_issuance(&failed.serial, "signer failed", Some("tok-a"), NOW)
        .expect("abandon");
    store
        .revoke_certificate(&serial(1), RevocationReason::Unspecified.into(), ACTOR, NOW)
        .expect("revoke");
    store
        .disable_policy("payments", ACTOR, NOW)
        .expect("disable");
    let standalone = store
        .append_audit(
            &chain::NewAuditEvent::new(
                "admin.login",
                ACTOR,
                "admin",
                serde_json::json!({"z": 1, "a": [2]}),
            ),
            NOW,
        )
        .expect("append");

    let events = all_audit(store);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            chain::POLICY_CREATED,
            chain::POLICY_REPLACED,
            chain::TOKEN_MINTED,
            chain::CERTIFICATE_SIGNING,
            chain::CERTIFICATE_ISSUED,
            chain::CERTIFICATE_SIGNING,
            chain::CERTIFICATE_FAILED,
            chain::CERTIFICATE_REVOKED,
            chain::POLICY_DISABLED,
            "admin.login",
        ]
    );
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(events.last(), Some(&standalone));
    assert_eq!(events[0].prev_hash, certmint::audit::GENESIS_HASH);
    verify_chain(&events).expect("chain verifies");
    // The token's JWT never reaches the log; its id does.
    assert_eq!(events[2].subject, "tok-a");

    // Edit one stored event behind the store's back.
    let mut conn = store.connection().expect("connection");
    diesel::update(schema::audit_events::table.filter(schema::audit_events::seq.eq(4)))
        .set(schema::audit_events::actor.eq("admin:mallory"))
        .execute(&mut *conn)
        .expect("tamper");
    drop(conn);
    let err = verify_chain(&all_audit(store)).expect_err("tampered");
    assert_eq!((err.seq, err.reason), (4, ChainBreak::HashMismatch));
}
