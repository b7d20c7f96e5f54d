//! The store suite: one body per behaviour, run on SQLite and PostgreSQL by
//! `backend_tests!`.
//!
//! SQLite gets a fresh file in a temporary directory per test. PostgreSQL
//! gets a fresh database `certmint_t_<random hex>` created through
//! `CERTMINT_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and dropped afterwards. When
//! PostgreSQL cannot be reached the PostgreSQL half prints a note and passes,
//! unless `CERTMINT_REQUIRE_POSTGRES=1`, which makes it fail.

use std::collections::BTreeSet;
use std::sync::Barrier;

use certmint::wire::{
    AllowedNames, CertificateStatus, Identity, KeyType, PolicySpec, RenewalRules, RevocationReason,
    TtlBounds,
};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::connection::DbConnection;
use super::*;
use crate::audit::{self as chain};
use certmint::audit::{verify_chain, ChainBreak};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const POOL_SIZE: u32 = 8;
const NOW: OffsetDateTime = datetime!(2026-01-01 12:00:00 UTC);
const ACTOR: &str = "admin:test";

/// A store on a throwaway database.
struct TestDb {
    /// Declared first so it drops first: the pool's connections must close
    /// before the guard drops the database.
    store: Store,
    /// The URL the store was opened with (a second replica can open it too).
    url: String,
    _guard: Guard,
}

/// Owns the database's lifetime; only its `Drop` matters.
enum Guard {
    Sqlite(#[expect(dead_code, reason = "held for its Drop")] tempfile::TempDir),
    Postgres(#[expect(dead_code, reason = "held for its Drop")] PgDatabase),
}

/// A PostgreSQL database that is dropped with this value.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("certmint.db").display());
        let store = Store::open(&url, POOL_SIZE).expect("open sqlite store");
        assert_eq!(store.backend(), Backend::Sqlite);
        TestDb {
            store,
            url,
            _guard: Guard::Sqlite(dir),
        }
    }

    /// A store on a fresh PostgreSQL database, or `None` (after a note) when
    /// PostgreSQL is unreachable and not required.
    fn postgres() -> Option<TestDb> {
        let database = PgDatabase::create()?;
        let store = Store::open(&database.url, POOL_SIZE).expect("open postgres store");
        assert_eq!(store.backend(), Backend::Postgres);
        Some(TestDb {
            store,
            url: database.url.clone(),
            _guard: Guard::Postgres(database),
        })
    }
}

impl PgDatabase {
    fn create() -> Option<PgDatabase> {
        let admin_url = std::env::var("CERTMINT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let required = std::env::var("CERTMINT_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        let mut admin = match PgConnection::establish(&admin_url) {
            Ok(conn) => conn,
            Err(e) if required => {
                panic!("CERTMINT_REQUIRE_POSTGRES=1 but PostgreSQL is unreachable: {e}")
            }
            Err(e) => {
                eprintln!("note: skipping the PostgreSQL half of this test: {e}");
                return None;
            }
        };
        SWEEP.call_once(|| sweep_stale_databases(&mut admin));
        let mut random = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .expect("random");
        let created = OffsetDateTime::now_utc().unix_timestamp();
        let name = format!("{TEST_DATABASE_PREFIX}{created}_{}", hex::encode(random));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let (base, query) = match admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin_url.as_str(), String::new()),
        };
        let (server, _) = base
            .rsplit_once('/')
            .filter(|(server, _)| server.contains("://") && !server.ends_with('/'))
            .expect("CERTMINT_TEST_POSTGRES_URL must name a database");
        let url = format!("{server}/{name}{query}");
        Some(PgDatabase {
            admin_url,
            name,
            url,
        })
    }
}

/// Test databases are named `certmint_t_<unix seconds>_<random hex>`.
const TEST_DATABASE_PREFIX: &str = "certmint_t_";
/// Age after which a test database is a leftover of a killed run.
const STALE_AFTER_SECONDS: i64 = 3600;
static SWEEP: std::sync::Once = std::sync::Once::new();

/// Drops test databases that killed runs left behind (old enough that no
/// live test, in this process or another, can still be using them).
fn sweep_stale_databases(admin: &mut PgConnection) {
    let Ok(rows) = diesel::sql_query(
        "SELECT datname::text AS name FROM pg_database WHERE datname LIKE 'certmint\\_t\\_%'",
    )
    .load::<NamedThing>(admin) else {
        return;
    };
    let cutoff = OffsetDateTime::now_utc().unix_timestamp() - STALE_AFTER_SECONDS;
    for NamedThing { name } in rows {
        let created = name
            .strip_prefix(TEST_DATABASE_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(created, _)| created.parse::<i64>().ok());
        let is_test_name = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if is_test_name && created.is_some_and(|created| created < cutoff) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        match PgConnection::establish(&self.admin_url) {
            Ok(mut admin) => {
                if let Err(e) = admin.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )) {
                    eprintln!("note: could not drop test database {}: {e}", self.name);
                }
            }
            Err(e) => eprintln!("note: could not drop test database {}: {e}", self.name),
        }
    }
}

/// Instantiates each named test body once per back end.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::TestDb::sqlite());
                }
            )*
        }

        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(db) = super::TestDb::postgres() {
                        super::$name(&db);
                    }
                }
            )*
        }
    };
}

backend_tests!(
    open_pings_and_reopens,
    single_use_token_raced_by_64_threads_issues_once,
    three_use_token_allows_exactly_three,
    fail_token_not_found_revoked_or_expired,
    fail_serial_collision_consumes_nothing,
    fail_superseded_policy_version_consumes_nothing,
    fail_policy_version_superseded_by_a_write_in_flight_elsewhere,
    abandon_refunds_the_token,
    fail_complete_issuance_twice,
    certificate_read_has_pem_once_issued,
    renewal_record_keeps_lineage,
    fail_renewal_of_a_predecessor_revoked_meanwhile,
    fail_renewal_whose_predecessor_is_revoked_while_it_is_signed,
    key_compromise_revokes_every_renewal_from_the_certificate,
    policy_versions_create_replace_disable,
    concurrent_replaces_produce_distinct_versions,
    list_policies_pages_with_cursor,
    list_tokens_and_certificates_page_with_cursor,
    fail_bad_cursor,
    inventory_filters,
    fail_revoke_twice,
    revoke_token_is_idempotent,
    provisioners_register_once_list_and_disable,
    audit_chain_verifies_and_detects_tampering,
    fail_corrupt_stored_json,
    ca_state_once_and_external_import,
    ca_key_reservations_hold_until_the_ca_is_recorded,
    one_init_at_a_time,
);

// ---------------------------------------------------------------- helpers

fn spec(name: &str) -> PolicySpec {
    PolicySpec {
        name: name.to_owned(),
        description: format!("{name} policy"),
        allowed: AllowedNames {
            dns: vec![format!("*.{name}.svc.cluster.local")],
            ip: vec!["10.20.0.0/16".to_owned()],
            uri: Vec::new(),
        },
        key_types: vec!["ec-p256".to_owned()],
        ttl: TtlBounds {
            default: "24h".parse().expect("duration"),
            max: "72h".parse().expect("duration"),
        },
        extended_key_usage: vec!["client_auth".to_owned()],
        renewal: RenewalRules::default(),
        allow_wildcard_certificates: false,
        enabled: true,
    }
}

fn identity(name: &str) -> Identity {
    Identity {
        dns: vec![format!("{name}.payments.svc.cluster.local")],
        ip: Vec::new(),
        uri: Vec::new(),
    }
}

fn token(store: &Store, id: &str, max_uses: u32, expires_at: OffsetDateTime) {
    let new = NewToken {
        id: id.to_owned(),
        policy: "payments".to_owned(),
        identity: identity(id),
        max_uses,
        expires_at,
    };
    let info = store.insert_token(&new, ACTOR, NOW).expect("insert token");
    assert_eq!((info.uses, info.max_uses), (0, max_uses));
}

fn new_cert(serial: &str, policy: &str, token_id: Option<&str>) -> NewCertificate {
    NewCertificate {
        serial: serial.to_owned(),
        policy: policy.to_owned(),
        policy_version: 1,
        identity: identity(serial),
        key_type: KeyType::EcP256,
        subject_key_sha256: "ab".repeat(32),
        not_before: NOW - Duration::minutes(5),
        not_after: NOW + Duration::days(1),
        tbs_der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
        token_id: token_id.map(str::to_owned),
        predecessor: None,
        chain_started_at: NOW,
        require_current_policy: false,
    }
}

/// Begins and completes issuance of `cert`.
fn issue(store: &Store, cert: &NewCertificate) {
    store
        .begin_issuance(cert, cert.token_id.as_deref(), ACTOR, NOW)
        .expect("begin issuance");
    store
        .complete_issuance(
            &cert.serial,
            cert.predecessor.as_deref(),
            &fake_der(&cert.serial),
            NOW,
        )
        .expect("complete issuance");
}

fn fake_der(serial: &str) -> Vec<u8> {
    let mut der = vec![0x30, 0x0a];
    der.extend_from_slice(serial.as_bytes());
    der
}

fn serial(n: usize) -> String {
    format!("{n:032x}")
}

fn uses(store: &Store, id: &str) -> u32 {
    store
        .token(id)
        .expect("read token")
        .expect("token exists")
        .uses
}

/// Every audit event, read page by page.
fn all_audit(store: &Store) -> Vec<certmint::wire::AuditEvent> {
    let mut events = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_audit(cursor.as_deref(), 4).expect("list audit");
        events.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return events,
        }
    }
}

// ------------------------------------------------------------ test bodies

fn open_pings_and_reopens(db: &TestDb) {
    db.store.ping().expect("ping");
    // Migrations are idempotent: a second store on the same database
    // (another replica) opens cleanly and sees the same data.
    db.store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect("create");
    let second = Store::open(&db.url, 2).expect("reopen");
    assert_eq!(second.backend(), db.store.backend());
    assert!(second.current_policy("payments").expect("read").is_some());
}

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

fn fail_serial_collision_consumes_nothing(db: &TestDb) {
    let store = &db.store;
    token(store, "tok-2", 2, NOW + Duration::hours(1));
    let cert = new_cert(&serial(7), "payments", Some("tok-2"));
    store
        .begin_issuance(&cert, Some("tok-2"), ACTOR, NOW)
        .expect("first");
    let err = store
        .begin_issuance(&cert, Some("tok-2"), ACTOR, NOW)
        .expect_err("same serial");
    assert!(
        matches!(err, StoreError::SerialCollision { ref serial } if *serial == cert.serial),
        "{err:?}"
    );
    // The collision rolled back the token use taken in the same transaction.
    assert_eq!(uses(store, "tok-2"), 1);
    // Without a token too.
    let err = store
        .begin_issuance(&new_cert(&serial(7), "payments", None), None, ACTOR, NOW)
        .expect_err("same serial, no token");
    assert!(matches!(err, StoreError::SerialCollision { .. }), "{err:?}");
}

fn fail_policy_version_superseded_by_a_write_in_flight_elsewhere(db: &TestDb) {
    // Another replica is replacing the policy (its transaction holds the
    // write lock: BEGIN IMMEDIATE on SQLite, the audit head on PostgreSQL)
    // while this one records an intent evaluated under version 1. The intent
    // must wait for that write and then see version 2, not check the version
    // first and commit after the replacement.
    use diesel::r2d2::ManageConnection as _;
    let store = &db.store;
    store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect("create");
    let manager = connection::Manager::new(connection::Target::parse(&db.url).expect("url"));
    let mut other = manager.connect().expect("second connection");
    let begin = match &other {
        DbConnection::Sqlite(_) => "BEGIN IMMEDIATE;",
        DbConnection::Postgres(_) => "BEGIN; SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE;",
    };
    other
        .batch_execute(&format!(
            "{begin} INSERT INTO policies (name, version, spec_json, enabled, created_at, created_by) \
             SELECT name, 2, spec_json, enabled, created_at, created_by FROM policies \
             WHERE name = 'payments' AND version = 1;"
        ))
        .expect("replacement in flight");
    let evaluated_under_v1 = NewCertificate {
        policy_version: 1,
        require_current_policy: true,
        ..new_cert(&serial(34), "payments", None)
    };
    let outcome = std::thread::scope(|scope| {
        let intent = scope.spawn(|| store.begin_issuance(&evaluated_under_v1, None, ACTOR, NOW));
        std::thread::sleep(std::time::Duration::from_millis(300));
        other
            .batch_execute("COMMIT")
            .expect("commit the replacement");
        intent.join().expect("no panic")
    });
    assert!(
        matches!(
            &outcome,
            Err(StoreError::PolicyChanged { evaluated: 1, .. })
        ),
        "{outcome:?}"
    );
    assert!(store.certificate(&serial(34)).expect("read").is_none());
}

fn fail_superseded_policy_version_consumes_nothing(db: &TestDb) {
    let store = &db.store;
    store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect("create");
    token(store, "tok-policy", 5, NOW + Duration::hours(1));
    let current = |serial_n, version| NewCertificate {
        policy_version: version,
        require_current_policy: true,
        ..new_cert(&serial(serial_n), "payments", Some("tok-policy"))
    };
    store
        .begin_issuance(&current(30, 1), Some("tok-policy"), ACTOR, NOW)
        .expect("version 1 is current");
    let mut changed = spec("payments");
    changed.allowed.dns = vec!["*.narrower.internal".into()];
    store.replace_policy(&changed, ACTOR, NOW).expect("replace");
    let stale = store.begin_issuance(&current(31, 1), Some("tok-policy"), ACTOR, NOW);
    assert!(
        matches!(&stale, Err(StoreError::PolicyChanged { name, evaluated: 1 }) if name == "payments"),
        "{stale:?}"
    );
    assert_eq!(
        store.token("tok-policy").expect("read").map(|t| t.uses),
        Some(1),
        "the refused intent consumed no token use"
    );
    assert!(store.certificate(&serial(31)).expect("read").is_none());
    store
        .begin_issuance(&current(32, 2), Some("tok-policy"), ACTOR, NOW)
        .expect("version 2 is current");
    let unknown = NewCertificate {
        require_current_policy: true,
        ..new_cert(&serial(33), "no-such-policy", None)
    };
    assert!(matches!(
        store.begin_issuance(&unknown, None, ACTOR, NOW),
        Err(StoreError::PolicyChanged { .. })
    ));
}

fn abandon_refunds_the_token(db: &TestDb) {
    let store = &db.store;
    token(store, "tok-1", 1, NOW + Duration::hours(1));
    let first = new_cert(&serial(1), "payments", Some("tok-1"));
    store
        .begin_issuance(&first, Some("tok-1"), ACTOR, NOW)
        .expect("begin");
    assert_eq!(uses(store, "tok-1"), 1);
    store
        .abandon_issuance(&first.serial, "hsm: CKR_DEVICE_REMOVED", Some("tok-1"), NOW)
        .expect("abandon");
    assert_eq!(uses(store, "tok-1"), 0);
    let info = store
        .certificate(&first.serial)
        .expect("read")
        .expect("exists");
    assert_eq!(info.status, CertificateStatus::Failed);
    assert_eq!(info.certificate_pem, None);
    // Abandoning again is refused, and refunds nothing more.
    let err = store
        .abandon_issuance(&first.serial, "again", Some("tok-1"), NOW)
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
    assert_eq!(uses(store, "tok-1"), 0);
    // The client retries with the same token and a new serial.
    let second = new_cert(&serial(2), "payments", Some("tok-1"));
    issue(store, &second);
    assert_eq!(uses(store, "tok-1"), 1);
    assert_eq!(
        store
            .count_certificates(CertificateStatus::Failed)
            .expect("count"),
        1
    );
    assert_eq!(
        store
            .count_certificates(CertificateStatus::Issued)
            .expect("count"),
        1
    );
}

fn fail_complete_issuance_twice(db: &TestDb) {
    let store = &db.store;
    let cert = new_cert(&serial(3), "payments", None);
    store
        .begin_issuance(&cert, None, ACTOR, NOW)
        .expect("begin");
    store
        .complete_issuance(&cert.serial, None, &fake_der("x"), NOW)
        .expect("first completion");
    let err = store
        .complete_issuance(&cert.serial, None, &fake_der("y"), NOW)
        .expect_err("second completion");
    assert!(
        matches!(
            err,
            StoreError::CertificateNotPending {
                status: CertificateStatus::Issued,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .complete_issuance(&serial(99), None, &fake_der("z"), NOW)
        .expect_err("unknown serial");
    assert!(
        matches!(err, StoreError::CertificateNotFound { .. }),
        "{err:?}"
    );
    // The first certificate's bytes are the ones kept.
    let pem = store
        .certificate(&cert.serial)
        .expect("read")
        .expect("exists")
        .certificate_pem
        .expect("pem");
    let expected = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &fake_der("x"))
        .expect("pem");
    assert_eq!(pem, expected);
}

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
        .revoke_certificate(&first.serial, RevocationReason::KeyCompromise, ACTOR, NOW)
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
        .revoke_certificate(&first.serial, RevocationReason::KeyCompromise, ACTOR, NOW)
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
        .revoke_certificate(&e.serial, RevocationReason::Superseded, ACTOR, NOW)
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
        .revoke_certificate(&a.serial, RevocationReason::KeyCompromise, ACTOR, NOW)
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
        .revoke_certificate(&serial(5), RevocationReason::Superseded, ACTOR, NOW)
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
        .revoke_certificate(&cert.serial, RevocationReason::KeyCompromise, ACTOR, later)
        .expect("revoke");
    assert_eq!(revoked.status, CertificateStatus::Revoked);
    assert_eq!(
        revoked.revocation_reason,
        Some(RevocationReason::KeyCompromise)
    );
    assert_eq!(revoked.revoked_at, Some(later));
    assert!(revoked.certificate_pem.is_some());
    let err = store
        .revoke_certificate(&cert.serial, RevocationReason::Unspecified, ACTOR, NOW)
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
        .revoke_certificate(&pending.serial, RevocationReason::Unspecified, ACTOR, NOW)
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
        .revoke_certificate(&serial(404), RevocationReason::Unspecified, ACTOR, NOW)
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
        .revoke_certificate(&serial(1), RevocationReason::Unspecified, ACTOR, NOW)
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

fn ca_state_once_and_external_import(db: &TestDb) {
    let store = &db.store;
    assert_eq!(store.ca_state().expect("read"), None);
    let err = store
        .complete_ca_import(b"root", &[], b"issuing", ACTOR, NOW)
        .expect_err("nothing to complete");
    assert!(matches!(err, StoreError::CaNotInitialized), "{err:?}");
    let pending = CaState {
        root_der: b"root-v0".to_vec(),
        issuing_der: None,
        intermediates_der: Vec::new(),
        root_key_label: None,
        issuing_key_label: "certmint-issuing".to_owned(),
        issuing_key_type: KeyType::EcP384,
        pending_csr_der: Some(b"csr".to_vec()),
    };
    store.save_ca_state(&pending, ACTOR, NOW).expect("save");
    assert_eq!(store.ca_state().expect("read"), Some(pending.clone()));
    let err = store
        .save_ca_state(&pending, ACTOR, NOW)
        .expect_err("twice");
    assert!(matches!(err, StoreError::CaAlreadyInitialized), "{err:?}");

    // Two intermediate CAs; each is one DER element (here SEQUENCE {
    // INTEGER }), stored back to back and split again on read.
    let intermediates = vec![
        vec![0x30, 0x03, 0x02, 0x01, 0x05],
        vec![0x30, 0x04, 0x02, 0x02, 0x01, 0x00],
    ];
    store
        .complete_ca_import(b"root", &intermediates, b"issuing", ACTOR, NOW)
        .expect("import");
    let complete = store.ca_state().expect("read").expect("exists");
    assert_eq!(complete.root_der, b"root");
    assert_eq!(complete.intermediates_der, intermediates);
    assert_eq!(complete.issuing_der.as_deref(), Some(&b"issuing"[..]));
    assert_eq!(complete.pending_csr_der, None);
    let err = store
        .complete_ca_import(b"root2", &[], b"issuing2", ACTOR, NOW)
        .expect_err("already complete");
    assert!(matches!(err, StoreError::CaAlreadyInitialized), "{err:?}");
    let kinds: Vec<String> = all_audit(store).into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [chain::CA_INITIALIZED, chain::CA_IMPORTED]);
}

fn ca_key_reservations_hold_until_the_ca_is_recorded(db: &TestDb) {
    let store = &db.store;
    let root = store
        .reserve_ca_key("ca-root", KeyType::EcP256, b"id-1", NOW)
        .expect("reserve");
    assert_eq!(
        root,
        CaKeyReservation {
            label: "ca-root".to_owned(),
            key_id: b"id-1".to_vec(),
            key_type: KeyType::EcP256,
        }
    );
    // A rerun after an interruption draws a new id (and may be asked for
    // another type): the first reservation, whose key may be on the token,
    // is what it gets.
    let again = store
        .reserve_ca_key("ca-root", KeyType::EcP384, b"id-2", NOW)
        .expect("reserve again");
    assert_eq!(again, root);
    let issuing = store
        .reserve_ca_key("ca-issuing", KeyType::Ed25519, b"id-3", NOW)
        .expect("reserve another label");
    assert_eq!(issuing.key_id, b"id-3");
    // Nothing was generated under it (the token had no Ed25519, say): the
    // rerun asks for another type and keeps the id.
    store
        .retype_ca_key_reservation("ca-issuing", KeyType::EcP256)
        .expect("retype");
    let issuing = store
        .reserve_ca_key("ca-issuing", KeyType::EcP256, b"id-7", NOW)
        .expect("reserve again");
    assert_eq!(
        (issuing.key_type, issuing.key_id.as_slice()),
        (KeyType::EcP256, &b"id-3"[..])
    );
    let token_key = store
        .reserve_ca_key("token-signing", KeyType::Ed25519, b"id-5", NOW)
        .expect("reserve a key that is not the CA's");
    assert_eq!(
        store.ca_key_reservation("token-signing").expect("read"),
        Some(token_key.clone())
    );
    assert_eq!(store.ca_key_reservation("nothing").expect("read"), None);

    let state = CaState {
        root_der: b"root".to_vec(),
        issuing_der: Some(b"issuing".to_vec()),
        intermediates_der: Vec::new(),
        root_key_label: Some("ca-root".to_owned()),
        issuing_key_label: "ca-issuing".to_owned(),
        issuing_key_type: KeyType::EcP256,
        pending_csr_der: None,
    };
    store
        .save_ca_state(&state, ACTOR, NOW)
        .expect("record the CA");
    let fresh = store
        .reserve_ca_key("ca-root", KeyType::EcP256, b"id-4", NOW)
        .expect("reserve after the CA is recorded");
    assert_eq!(
        fresh.key_id, b"id-4",
        "recording the CA drops its keys' reservations"
    );
    let kept = store
        .reserve_ca_key("token-signing", KeyType::Ed25519, b"id-6", NOW)
        .expect("reserve the token key again");
    assert_eq!(kept, token_key, "other reservations stay");
}

fn one_init_at_a_time(db: &TestDb) {
    let store = &db.store;
    let first = store.lock_for_init().expect("first lock");
    let (acquired, released) = std::thread::scope(|scope| {
        let second = scope.spawn(|| {
            let _lock = store.lock_for_init().expect("second lock");
            std::time::Instant::now()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        let released = std::time::Instant::now();
        drop(first);
        (second.join().expect("second init"), released)
    });
    assert!(
        acquired >= released,
        "the second init got the lock while the first held it"
    );
    // Released again: a third takes it at once.
    drop(store.lock_for_init().expect("third lock"));
}

// ----------------------------------------------- back-end specific tests

#[derive(QueryableByName)]
struct PragmaText {
    #[diesel(sql_type = Text)]
    value: String,
}

#[derive(QueryableByName)]
struct PragmaInt {
    #[diesel(sql_type = Integer)]
    value: i32,
}

#[test]
fn sqlite_pragmas_hold_on_every_pooled_connection() {
    let db = TestDb::sqlite();
    // Hold the whole pool so every connection is a distinct one.
    let mut held: Vec<_> = (0..POOL_SIZE)
        .map(|_| db.store.connection().expect("connection"))
        .collect();
    for conn in &mut held {
        let DbConnection::Sqlite(conn) = &mut **conn else {
            panic!("expected SQLite");
        };
        let text = |conn: &mut diesel::SqliteConnection, sql: &str| {
            diesel::sql_query(sql)
                .get_result::<PragmaText>(conn)
                .expect(sql)
                .value
        };
        let int = |conn: &mut diesel::SqliteConnection, sql: &str| {
            diesel::sql_query(sql)
                .get_result::<PragmaInt>(conn)
                .expect(sql)
                .value
        };
        assert_eq!(
            text(
                conn,
                "SELECT journal_mode AS value FROM pragma_journal_mode"
            ),
            "wal"
        );
        assert_eq!(
            int(conn, "SELECT synchronous AS value FROM pragma_synchronous"),
            2
        );
        assert_eq!(
            int(
                conn,
                "SELECT foreign_keys AS value FROM pragma_foreign_keys"
            ),
            1
        );
        assert_eq!(
            int(conn, "SELECT timeout AS value FROM pragma_busy_timeout"),
            10_000
        );
    }
}

#[test]
fn fail_open_with_unsupported_or_missing_target() {
    for url in [
        "mysql://root@localhost/certmint",
        "certmint.db",
        "sqlite::memory:",
        "sqlite:",
        "file:x.db",
    ] {
        let err = Store::open(url, 1).expect_err(url);
        assert!(
            matches!(err, StoreError::UnsupportedUrl { .. }),
            "{url}: {err:?}"
        );
        // The URL (which may hold a password) is not echoed back.
        assert!(!err.to_string().contains("root@"), "{err}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir");
    let url = format!("sqlite://{}", missing.join("certmint.db").display());
    let err = Store::open(&url, 1).expect_err("missing dir");
    assert!(
        matches!(err, StoreError::SqliteDirectoryMissing { ref directory } if *directory == missing),
        "{err:?}"
    );
    // `sqlite:<path>` works as well as `sqlite://<path>`, and reopening an
    // existing file migrates nothing twice.
    let url = format!("sqlite:{}", dir.path().join("other.db").display());
    let store = Store::open(&url, 1).expect("sqlite: form");
    store
        .create_policy(&spec("payments"), ACTOR, NOW)
        .expect("create");
    drop(store);
    let store = Store::open(&url, 1).expect("reopen");
    assert!(store.current_policy("payments").expect("read").is_some());
}

#[test]
fn fail_open_unreachable_postgres_is_unavailable() {
    // Port 1 on loopback: nothing listens there.
    let err = Store::open(
        "postgres://postgres:secret@127.0.0.1:1/x?connect_timeout=2",
        1,
    )
    .expect_err("unreachable");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(!format!("{err}").contains("secret"));
}

#[derive(QueryableByName, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ColumnShape {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Integer)]
    not_null: i32,
    #[diesel(sql_type = Integer)]
    primary_key: i32,
}

#[derive(QueryableByName, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct NamedThing {
    #[diesel(sql_type = Text)]
    name: String,
}

const SQLITE_COLUMNS: &str = r#"
    SELECT m.name AS table_name, p.name AS column_name, p."notnull" AS not_null,
           CASE WHEN p.pk > 0 THEN 1 ELSE 0 END AS primary_key
    FROM sqlite_master m JOIN pragma_table_info(m.name) p
    WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'
      AND m.name <> '__diesel_schema_migrations'"#;

const SQLITE_INDEXES: &str = "
    SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL";

const SQLITE_FOREIGN_KEYS: &str = r#"
    SELECT m.name || '.' || f."from" || ' -> ' || f."table" || '.' || f."to" AS name
    FROM sqlite_master m JOIN pragma_foreign_key_list(m.name) f
    WHERE m.type = 'table'"#;

const POSTGRES_COLUMNS: &str = "
    SELECT c.table_name::text AS table_name, c.column_name::text AS column_name,
           CASE WHEN c.is_nullable = 'NO' THEN 1 ELSE 0 END AS not_null,
           CASE WHEN EXISTS (
               SELECT 1 FROM information_schema.table_constraints t
               JOIN information_schema.key_column_usage k
                 ON k.constraint_name = t.constraint_name
                AND k.table_schema = t.table_schema AND k.table_name = t.table_name
               WHERE t.constraint_type = 'PRIMARY KEY' AND t.table_schema = c.table_schema
                 AND t.table_name = c.table_name AND k.column_name = c.column_name
           ) THEN 1 ELSE 0 END AS primary_key
    FROM information_schema.columns c
    WHERE c.table_schema = current_schema() AND c.table_name <> '__diesel_schema_migrations'";

const POSTGRES_INDEXES: &str = "
    SELECT indexname::text AS name FROM pg_indexes
    WHERE schemaname = current_schema() AND indexname NOT LIKE '%_pkey'
      AND tablename <> '__diesel_schema_migrations'";

const POSTGRES_FOREIGN_KEYS: &str = "
    SELECT (cl.relname || '.' || a.attname || ' -> ' || rc.relname || '.' || ra.attname)::text AS name
    FROM pg_constraint c
    JOIN pg_class cl ON cl.oid = c.conrelid
    JOIN pg_class rc ON rc.oid = c.confrelid
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
    JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1]
    WHERE c.contype = 'f' AND cl.relnamespace = current_schema()::regnamespace";

#[test]
fn schema_parity_between_sqlite_and_postgres() {
    let Some(pg) = TestDb::postgres() else {
        return;
    };
    let sqlite = TestDb::sqlite();
    let mut sqlite_conn = sqlite.store.connection().expect("sqlite connection");
    let mut pg_conn = pg.store.connection().expect("postgres connection");
    let (DbConnection::Sqlite(lite), DbConnection::Postgres(postgres)) =
        (&mut *sqlite_conn, &mut *pg_conn)
    else {
        panic!("wrong back ends");
    };

    let sorted = |mut rows: Vec<ColumnShape>| {
        rows.sort();
        rows
    };
    let lite_columns = sorted(
        diesel::sql_query(SQLITE_COLUMNS)
            .load(lite)
            .expect("sqlite columns"),
    );
    let pg_columns = sorted(
        diesel::sql_query(POSTGRES_COLUMNS)
            .load(postgres)
            .expect("pg columns"),
    );
    assert!(lite_columns.len() > 40, "{lite_columns:?}");
    assert_eq!(lite_columns, pg_columns);

    let names = |rows: Vec<NamedThing>| rows.into_iter().map(|r| r.name).collect::<BTreeSet<_>>();
    let lite_indexes = names(
        diesel::sql_query(SQLITE_INDEXES)
            .load(lite)
            .expect("sqlite indexes"),
    );
    let pg_indexes = names(
        diesel::sql_query(POSTGRES_INDEXES)
            .load(postgres)
            .expect("pg indexes"),
    );
    assert!(
        lite_indexes.contains("certificates_status_idx"),
        "{lite_indexes:?}"
    );
    // Dropped by 2026-12-01-000000_drop_unused_certificate_indexes: indexes
    // no query uses, which every issuance would otherwise write.
    for dropped in ["certificates_token_id_idx", "certificates_not_after_idx"] {
        assert!(!lite_indexes.contains(dropped), "{lite_indexes:?}");
    }
    // Back with 2026-12-04-000000_certificate_predecessor_index: the
    // key-compromise cascade walks renewals by predecessor.
    assert!(
        lite_indexes.contains("certificates_predecessor_idx"),
        "{lite_indexes:?}"
    );
    assert_eq!(lite_indexes, pg_indexes);

    let lite_fks = names(
        diesel::sql_query(SQLITE_FOREIGN_KEYS)
            .load(lite)
            .expect("sqlite fks"),
    );
    let pg_fks = names(
        diesel::sql_query(POSTGRES_FOREIGN_KEYS)
            .load(postgres)
            .expect("pg fks"),
    );
    assert_eq!(lite_fks, pg_fks);
    assert!(!lite_fks.is_empty());
}

#[test]
fn sqlite_stores_opened_together_on_a_new_file_all_open() {
    // Processes started together (a server and an `init`, or replicas of a
    // test harness) open one new file at once. Switching it to WAL needs
    // the write lock, and SQLite answers a lock upgrade that could deadlock
    // with SQLITE_BUSY at once, without waiting out `busy_timeout`.
    const OPENERS: usize = 4;
    for round in 0..25 {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("certmint.db").display());
        let start = Barrier::new(OPENERS);
        std::thread::scope(|scope| {
            let openers: Vec<_> = (0..OPENERS)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        Store::open(&url, 1).map(drop)
                    })
                })
                .collect();
            for opener in openers {
                let outcome = opener.join().expect("opener thread");
                if let Err(err) = outcome {
                    panic!("round {round}: {}", crate::error::with_causes(&err));
                }
            }
        });
    }
}
