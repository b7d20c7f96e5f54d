//! Token uses under contention, on SQLite and PostgreSQL: the database, not
//! one process's memory, decides which of many simultaneous enrollments a
//! token allows. Exactly `max_uses` succeed, every other request is
//! `token.used` (never a 500, never a second certificate), and the inventory
//! holds exactly one certificate per success.

use std::collections::BTreeMap;

use certmint::wire::{CertificateBundle, CertificateStatus};
use certmint_e2e::{backend_tests, identity, make_csr, policy_json, TestServer};

/// Fires `requests` enrollments at once with one token allowing `max_uses`,
/// and checks the outcome end to end.
fn race(server: &TestServer, prefix: &str, requests: usize, max_uses: u32) {
    let policy = server.unique(prefix);
    server.create_policy(&policy_json(&policy, &["*.race.internal"], &[], &[]));
    let minted = server.mint_token(&policy, &identity(&["*.race.internal"], &[], &[]), max_uses);
    // Keys and CSRs first, so the requests really overlap.
    let jobs: Vec<(String, String)> = (0..requests)
        .map(|index| {
            let (csr, _) = make_csr("ec-p256", &[&format!("w{index}.race.internal")], &[], &[]);
            (csr, minted.token.clone())
        })
        .collect();
    let responses = server.enroll_in_parallel(&jobs);

    let mut outcomes: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for response in &responses {
        *outcomes
            .entry((response.status, response.code().to_owned()))
            .or_default() += 1;
    }
    let successes: Vec<CertificateBundle> = responses
        .iter()
        .filter(|response| response.status == 201)
        .map(certmint_e2e::Response::json)
        .collect();
    let allowed = usize::try_from(max_uses).expect("small");
    let mut expected = BTreeMap::new();
    expected.insert((201, String::new()), allowed);
    expected.insert((401, "token.used".to_owned()), requests - allowed);
    assert_eq!(
        outcomes, expected,
        "{requests} parallel enrollments with a {max_uses}-use token"
    );

    // The inventory agrees: exactly one record per certificate handed out,
    // none left pending or failed, all carrying the token's id.
    let recorded = server.certificates(&format!("policy={policy}"));
    let mut recorded_serials: Vec<&str> = recorded.iter().map(|c| c.serial.as_str()).collect();
    let mut issued_serials: Vec<&str> = successes.iter().map(|b| b.serial.as_str()).collect();
    recorded_serials.sort_unstable();
    issued_serials.sort_unstable();
    assert_eq!(
        recorded_serials, issued_serials,
        "inventory of policy {policy}"
    );
    for info in &recorded {
        assert_eq!(info.status, CertificateStatus::Issued, "{info:?}");
        assert_eq!(info.token_id.as_deref(), Some(minted.id.as_str()));
    }
    assert_eq!(
        server
            .certificates(&format!("policy={policy}&status=issued"))
            .len(),
        allowed
    );
    let token = server.admin_get(&format!("/v1/admin/tokens/{}", minted.id));
    token.assert_status(200);
    assert_eq!(token.body["uses"], max_uses, "{}", token.text);
}

backend_tests! {
    fn ok_single_use_token_wins_exactly_once_among_64(server: &TestServer) {
        race(server, "race-single", 64, 1);
    }

    fn ok_three_use_token_wins_exactly_three_times_among_16(server: &TestServer) {
        race(server, "race-three", 16, 3);
    }
}
