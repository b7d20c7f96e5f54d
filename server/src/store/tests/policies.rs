//! Policy versions: create, replace, disable, and concurrent replaces.

use std::sync::Barrier;

use super::*;

backend_tests!(
    run = TestDb::run;
    policy_versions_create_replace_disable,
    concurrent_replaces_produce_distinct_versions,
);

fn policy_versions_create_replace_disable(db: &TestDb) {
    let store = &db.store;
    let created = store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect("create");
    assert_eq!((created.version, created.created_at), (1, NOW));
    assert_eq!(created.spec, spec("payments"));
    let err = store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect_err("duplicate");
    assert!(matches!(err, StoreError::PolicyAlreadyExists { ref name } if name == "payments"));

    let mut changed = spec("payments");
    changed.description = "second".to_owned();
    let replaced = store
        .replace_policy(&changed, ACTOR, NOW + Duration::seconds(1))
        .expect("replace");
    assert_eq!(replaced.version, 2);
    assert_eq!(replaced.spec.description, "second");

    let disabled = store
        .disable_policy("payments", ACTOR, NOW + Duration::seconds(2))
        .expect("disable");
    assert_eq!((disabled.version, disabled.spec.enabled), (3, false));
    assert_eq!(disabled.spec.description, "second");
    // Disabling a disabled policy writes no new version.
    let again = store
        .disable_policy("payments", ACTOR, NOW)
        .expect("disable again");
    assert_eq!(again, disabled);
    assert_eq!(
        store.current_policy("payments").expect("read"),
        Some(disabled)
    );

    let err = store
        .replace_policy(&spec("unknown"), ACTOR, NOW)
        .expect_err("replace unknown");
    assert!(matches!(err, StoreError::PolicyNotFound { .. }), "{err:?}");
    let err = store
        .disable_policy("unknown", ACTOR, NOW)
        .expect_err("disable unknown");
    assert!(matches!(err, StoreError::PolicyNotFound { .. }), "{err:?}");
    assert_eq!(store.current_policy("unknown").expect("read"), None);
}

fn concurrent_replaces_produce_distinct_versions(db: &TestDb) {
    const THREADS: usize = 8;
    db.store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect("create");
    let barrier = Barrier::new(THREADS);
    let versions: BTreeSet<i64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|n| {
                let (store, barrier) = (&db.store, &barrier);
                scope.spawn(move || {
                    let mut changed = spec("payments");
                    changed.description = format!("writer {n}");
                    barrier.wait();
                    store
                        .replace_policy(&changed, ACTOR, NOW)
                        .expect("replace")
                        .version
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .collect()
    });
    let expected: BTreeSet<i64> = (2..=THREADS as i64 + 1).collect();
    assert_eq!(versions, expected);
    let current = db
        .store
        .current_policy("payments")
        .expect("read")
        .expect("exists");
    assert_eq!(current.version, THREADS as i64 + 1);
}
