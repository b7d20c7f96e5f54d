//! CRL bookkeeping: a shard is claimed only when it needs a CRL (none yet,
//! a revocation since, or its newest is `refresh` old), by one claimer at
//! a time even across replicas; CRL numbers are unique and increase; an
//! expired certificate is listed until a CRL signed after its expiry has
//! listed it; pre-CRL certificates get a shard; old CRLs are pruned.

use std::sync::Barrier;

use super::*;
use crate::revocation::sharding::shard_of;

backend_tests!(
    run = TestDb::run;
    a_shard_is_claimed_only_when_it_needs_a_crl,
    one_claimer_at_a_time_and_numbers_are_unique_across_replicas,
    an_expired_certificate_leaves_after_one_crl_past_its_expiry,
    certificates_recorded_before_crls_get_a_shard,
);

const REFRESH: i64 = 3600;
const CLAIM: i64 = 60;

fn set_up(store: &Store) {
    store
        .set_up_crl_issuer(&CrlIssuerSetup {
            issuer_key_id: TEST_ISSUER_KEY_ID.into(),
            shards: 2,
            backfill_width_seconds: Some(3600),
        })
        .expect("set up the issuer");
}

/// Claims shard 0 at `now` and records an empty-bodied CRL for it.
fn sign(store: &Store, now: OffsetDateTime) -> Option<CrlClaim> {
    let claim = store
        .claim_crl_shard(TEST_ISSUER_KEY_ID, 0, REFRESH, CLAIM, now)
        .expect("claim")?;
    store
        .record_crl(&SignedCrl {
            issuer_key_id: TEST_ISSUER_KEY_ID.into(),
            number: claim.number,
            shard: 0,
            scope: certmint::wire::CrlScope::UserCerts,
            generation: claim.generation,
            this_update: now,
            next_update: now + Duration::hours(24),
            entries: claim.entries.len() as u64,
            der: vec![0x30, 0x00],
            sha256: format!("sha256:{}", claim.number),
        })
        .expect("record");
    Some(claim)
}

fn listed(claim: &CrlClaim) -> Vec<String> {
    claim
        .entries
        .iter()
        .map(|entry| entry.serial.clone())
        .collect()
}

fn a_shard_is_claimed_only_when_it_needs_a_crl(db: &TestDb) {
    let store = &db.store;
    set_up(store);
    let first = sign(store, NOW).expect("a shard without a CRL needs one");
    assert!(
        sign(store, NOW + Duration::minutes(1)).is_none(),
        "fresh and unchanged"
    );

    let cert = new_cert(&serial(1), "payments", None);
    issue(store, &cert);
    store
        .revoke_certificate(
            &cert.serial,
            Revocation {
                reason: RevocationReason::KeyCompromise,
                invalidity_date: Some(NOW - Duration::hours(2)),
            },
            ACTOR,
            NOW,
        )
        .expect("revoke");
    let after_revocation =
        sign(store, NOW + Duration::minutes(2)).expect("a revocation makes it stale");
    assert!(after_revocation.number > first.number);
    assert_eq!(
        listed(&after_revocation),
        std::slice::from_ref(&cert.serial)
    );
    let entry = &after_revocation.entries[0];
    assert_eq!(entry.reason, RevocationReason::KeyCompromise);
    assert_eq!(entry.invalidity_date, Some(NOW - Duration::hours(2)));
    assert_eq!(entry.revoked_at, NOW);

    assert!(sign(store, NOW + Duration::minutes(3)).is_none());
    let refreshed = sign(
        store,
        NOW + Duration::minutes(2) + Duration::seconds(REFRESH),
    )
    .expect("a CRL `refresh` old is signed again");
    assert_eq!(
        listed(&refreshed),
        std::slice::from_ref(&cert.serial),
        "still listed"
    );
    let refreshed = sign(
        store,
        NOW + Duration::minutes(2) + Duration::seconds(2 * REFRESH),
    )
    .expect("and again");

    // The served CRL is the newest; the older ones beyond a few are pruned.
    let newest = store.newest_crls().expect("newest");
    let ours: Vec<_> = newest.iter().filter(|crl| crl.shard == 0).collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].number, refreshed.number);
    assert!(store
        .crl_der(TEST_ISSUER_KEY_ID, refreshed.number)
        .expect("der")
        .is_some());
    assert!(
        store
            .crl_der(TEST_ISSUER_KEY_ID, first.number)
            .expect("der")
            .is_none(),
        "the first of four CRLs was pruned"
    );
}

fn one_claimer_at_a_time_and_numbers_are_unique_across_replicas(db: &TestDb) {
    set_up(&db.store);
    let replicas: Vec<Store> = (0..4)
        .map(|_| Store::open(&db.url, 4).expect("a replica opens the store"))
        .collect();
    let barrier = Barrier::new(replicas.len());
    let claims: Vec<Option<CrlClaim>> = std::thread::scope(|scope| {
        let handles: Vec<_> = replicas
            .iter()
            .map(|replica| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    replica
                        .claim_crl_shard(TEST_ISSUER_KEY_ID, 0, REFRESH, CLAIM, NOW)
                        .expect("claim")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("no panic"))
            .collect()
    });
    let won: Vec<&CrlClaim> = claims.iter().flatten().collect();
    assert_eq!(
        won.len(),
        1,
        "exactly one replica claims the shard: {claims:?}"
    );
    // A claim that was never finished runs out, and the next gets a higher
    // number; shard 1 draws from the same counter.
    let again = db
        .store
        .claim_crl_shard(
            TEST_ISSUER_KEY_ID,
            0,
            REFRESH,
            CLAIM,
            NOW + Duration::seconds(CLAIM + 1),
        )
        .expect("claim")
        .expect("the abandoned claim ran out");
    assert!(again.number > won[0].number);
    let other = db
        .store
        .claim_crl_shard(TEST_ISSUER_KEY_ID, 1, REFRESH, CLAIM, NOW)
        .expect("claim")
        .expect("shard 1 has no CRL");
    assert!(other.number > again.number);
}

fn an_expired_certificate_leaves_after_one_crl_past_its_expiry(db: &TestDb) {
    let store = &db.store;
    set_up(store);
    let cert = new_cert(&serial(2), "payments", None);
    issue(store, &cert);
    store
        .revoke_certificate(
            &cert.serial,
            RevocationReason::Superseded.into(),
            ACTOR,
            NOW,
        )
        .expect("revoke");
    let before_expiry = sign(store, NOW).expect("first CRL");
    assert_eq!(listed(&before_expiry), std::slice::from_ref(&cert.serial));
    // Signed after notAfter: still listed, once.
    let past_expiry = cert.not_after + Duration::minutes(1);
    let once_more = sign(store, past_expiry).expect("refresh");
    assert_eq!(listed(&once_more), std::slice::from_ref(&cert.serial));
    let later = sign(store, past_expiry + Duration::seconds(REFRESH)).expect("refresh");
    assert!(
        listed(&later).is_empty(),
        "gone after one CRL past its expiry"
    );
}

fn certificates_recorded_before_crls_get_a_shard(db: &TestDb) {
    let store = &db.store;
    let cert = new_cert(&serial(3), "payments", None);
    issue(store, &cert);
    // What a database from before CRLs holds: no assignment.
    store
        .write(|conn| {
            diesel::delete(schema::crl_assignments::table)
                .execute(conn)
                .map_err(StoreError::query)
        })
        .expect("drop the assignment");
    store
        .revoke_certificate(
            &cert.serial,
            RevocationReason::Unspecified.into(),
            ACTOR,
            NOW,
        )
        .expect("an unassigned certificate can still be revoked");
    set_up(store);
    let shard = shard_of(cert.not_after.unix_timestamp(), 3600, 2);
    let claim = store
        .claim_crl_shard(TEST_ISSUER_KEY_ID, shard, REFRESH, CLAIM, NOW)
        .expect("claim")
        .expect("no CRL yet");
    assert_eq!(
        listed(&claim),
        std::slice::from_ref(&cert.serial),
        "the backfill put it in its shard"
    );
}
