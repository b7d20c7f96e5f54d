//! Cursor pagination of policies, tokens and certificates.

use super::*;

backend_tests!(
    run = TestDb::run;
    list_policies_pages_with_cursor,
    list_tokens_and_certificates_page_with_cursor,
    fail_bad_cursor,
);

fn list_policies_pages_with_cursor(db: &TestDb) {
    let store = &db.store;
    let names = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
    ];
    for name in names.iter().rev() {
        store
            .create_policy(&spec(name), ACTOR, NOW)
            .expect("create");
    }
    store
        .replace_policy(&spec("charlie"), ACTOR, NOW)
        .expect("replace");
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_policies(cursor.as_deref(), 3).expect("list");
        pages += 1;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|p| (p.spec.name, p.version)));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<(String, i64)> = names
        .iter()
        .map(|name| (name.to_string(), if *name == "charlie" { 2 } else { 1 }))
        .collect();
    assert_eq!(seen, expected);
    // A page that ends exactly at the last item has no `next`.
    let exact = store.list_policies(None, 7).expect("list");
    assert_eq!((exact.items.len(), exact.next), (7, None));
}

fn list_tokens_and_certificates_page_with_cursor(db: &TestDb) {
    let store = &db.store;
    // Tokens minted at three different times, two of them in the same second.
    for (n, at) in [(0, 0), (1, 10), (2, 10), (3, 20), (4, 30), (5, 30), (6, 40)] {
        let new = NewToken {
            id: format!("tok-{n}"),
            policy: "payments".to_owned(),
            identity: identity("t"),
            max_uses: 1,
            expires_at: NOW + Duration::hours(1),
        };
        store
            .insert_token(&new, ACTOR, NOW + Duration::seconds(at))
            .expect("insert");
    }
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_tokens(cursor.as_deref(), 3).expect("list");
        pages += 1;
        ids.extend(page.items.into_iter().map(|t| t.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        ids,
        ["tok-6", "tok-5", "tok-4", "tok-3", "tok-2", "tok-1", "tok-0"]
    );

    for n in 0..8 {
        issue(store, &new_cert(&serial(n), "payments", None));
    }
    let mut serials = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_certificates(&CertificateFilter::default(), cursor.as_deref(), 3)
            .expect("list");
        pages += 1;
        assert!(page.items.iter().all(|c| c.certificate_pem.is_none()));
        serials.extend(page.items.into_iter().map(|c| c.serial));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..8).rev().map(serial).collect();
    assert_eq!(serials, expected);
}

fn fail_bad_cursor(db: &TestDb) {
    let store = &db.store;
    for garbage in ["", "garbage", "c1", "c1.zz", "c1.61.62", "c2.61", "c1.ff"] {
        let err = store.list_policies(Some(garbage), 10).expect_err(garbage);
        assert!(matches!(err, StoreError::BadCursor), "{garbage}: {err:?}");
    }
    for garbage in ["c1.61", "c1.61.62", "c1.31"] {
        let err = store.list_tokens(Some(garbage), 10).expect_err(garbage);
        assert!(matches!(err, StoreError::BadCursor), "{garbage}: {err:?}");
        let err = store
            .list_certificates(&CertificateFilter::default(), Some(garbage), 10)
            .expect_err(garbage);
        assert!(matches!(err, StoreError::BadCursor), "{garbage}: {err:?}");
    }
    let err = store
        .list_audit(Some("c1.7a"), 10)
        .expect_err("non-numeric");
    assert!(matches!(err, StoreError::BadCursor), "{err:?}");
}
