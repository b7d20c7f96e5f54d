//! Registered provisioners: registered once, listed, disabled.

use super::*;

backend_tests!(
    run = TestDb::run;
    provisioners_register_once_list_and_disable,);

fn provisioners_register_once_list_and_disable(db: &TestDb) {
    let store = &db.store;
    let record = |name: &str| NewProvisionerRecord {
        name: name.to_owned(),
        public_key_pem: "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n".to_owned(),
        algorithm: "ES256".to_owned(),
        key_id: "00112233445566778899aabb".to_owned(),
        policies: vec!["billing".to_owned(), "payments".to_owned()],
        max_token_ttl_seconds: 300,
    };
    assert_eq!(store.provisioner("ci").expect("read"), None);
    let registered = store
        .insert_provisioner(&record("ci"), ACTOR, NOW)
        .expect("register");
    assert_eq!(registered.policies, ["billing", "payments"]);
    assert_eq!(registered.max_token_ttl.as_seconds(), 300);
    assert_eq!(registered.created_by, ACTOR);
    assert_eq!(registered.disabled_at, None);
    assert_eq!(
        store.provisioner("ci").expect("read"),
        Some(registered.clone())
    );
    let err = store
        .insert_provisioner(&record("ci"), ACTOR, NOW)
        .expect_err("same name");
    assert!(
        matches!(err, StoreError::ProvisionerAlreadyExists { .. }),
        "{err:?}"
    );
    store
        .insert_provisioner(&record("argo"), ACTOR, NOW)
        .expect("register another");
    let names: Vec<String> = store
        .list_provisioners()
        .expect("list")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["argo", "ci"]);

    let later = NOW + Duration::minutes(5);
    let disabled = store
        .disable_provisioner("ci", ACTOR, later)
        .expect("disable");
    assert_eq!(disabled.disabled_at, Some(later));
    let again = store
        .disable_provisioner("ci", ACTOR, later + Duration::minutes(1))
        .expect("disable again");
    assert_eq!(again, disabled);
    // A disabled name stays taken.
    let err = store
        .insert_provisioner(&record("ci"), ACTOR, later)
        .expect_err("reuse");
    assert!(
        matches!(err, StoreError::ProvisionerAlreadyExists { .. }),
        "{err:?}"
    );
    let err = store
        .disable_provisioner("nope", ACTOR, NOW)
        .expect_err("unknown");
    assert!(
        matches!(err, StoreError::ProvisionerNotFound { .. }),
        "{err:?}"
    );

    // Token records: refused once the provisioner is disabled; the same
    // token again is fine; other claims under its jti are not.
    store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect("policy");
    let seen = |id: &str, who: &str| NewToken {
        id: id.to_owned(),
        policy: "payments".to_owned(),
        identity: identity(who),
        max_uses: 1,
        expires_at: later + Duration::minutes(5),
    };
    let err = store
        .record_provisioner_token(&seen("p-1", "api"), "ci", later)
        .expect_err("disabled");
    assert!(
        matches!(err, StoreError::ProvisionerDisabled { .. }),
        "{err:?}"
    );
    store
        .record_provisioner_token(&seen("p-2", "api"), "argo", later)
        .expect("first use");
    store
        .record_provisioner_token(&seen("p-2", "api"), "argo", later)
        .expect("the same token again");
    let err = store
        .record_provisioner_token(&seen("p-2", "web"), "argo", later)
        .expect_err("other claims");
    assert!(matches!(err, StoreError::TokenJtiReused { .. }), "{err:?}");
    let recorded = store.token("p-2").expect("read").expect("recorded");
    assert_eq!(
        (recorded.max_uses, recorded.uses, recorded.revoked_at),
        (1, 0, None)
    );
    // Disabling the provisioner revokes its records in the same write.
    store
        .disable_provisioner("argo", ACTOR, later)
        .expect("disable argo");
    let revoked = store.token("p-2").expect("read").expect("recorded");
    assert_eq!(revoked.revoked_at, Some(later));
    let kinds: Vec<String> = all_audit(store)
        .into_iter()
        .filter(|e| e.kind.starts_with("provisioner."))
        .map(|e| format!("{} {}", e.kind, e.subject))
        .collect();
    assert_eq!(
        kinds,
        [
            "provisioner.registered ci",
            "provisioner.registered argo",
            "provisioner.disabled ci",
            "provisioner.disabled argo"
        ]
    );
}
