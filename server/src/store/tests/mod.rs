//! The store suite: one body per behaviour, run on SQLite and PostgreSQL by
//! the end-to-end harness's `backend_tests!` (its `run = TestDb::run` form),
//! so the whole project has one way of running a body per back end.
//!
//! SQLite gets a fresh file in a temporary directory per test. PostgreSQL
//! gets a fresh database from the harness's `TestDatabase` (created through
//! `CERTMINT_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, dropped afterwards, leftovers
//! of killed runs swept). When PostgreSQL cannot be reached the PostgreSQL
//! half prints a note and passes, unless `CERTMINT_REQUIRE_POSTGRES=1`,
//! which makes it fail.
//!
//! One file per area; each instantiates its bodies with `backend_tests!`.

use std::collections::BTreeSet;

use certmint::wire::{
    AllowedNames, CertificateStatus, Identity, KeyType, PolicySpec, RenewalRules, RevocationReason,
    TtlBounds,
};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::connection::DbConnection;
use super::*;
use crate::audit::{self as chain};
use certmint::audit::{verify_chain, ChainBreak};

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
    Postgres(#[expect(dead_code, reason = "held for its Drop")] certmint_e2e::TestDatabase),
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
        // Panics by itself when PostgreSQL is required and unreachable.
        let database = match certmint_e2e::TestDatabase::create() {
            Ok(database) => database,
            Err(certmint_e2e::Skip(reason)) => {
                eprintln!("note: skipping the PostgreSQL half of this test: {reason}");
                return None;
            }
        };
        let url = database.url().to_owned();
        let store = Store::open(&url, POOL_SIZE).expect("open postgres store");
        assert_eq!(store.backend(), Backend::Postgres);
        Some(TestDb {
            store,
            url,
            _guard: Guard::Postgres(database),
        })
    }

    /// Runs `body` on a fresh store of `backend` (nothing when PostgreSQL
    /// is skipped): what `backend_tests!(run = TestDb::run; …)` calls.
    fn run(backend: certmint_e2e::Backend, body: fn(&TestDb)) {
        match backend {
            certmint_e2e::Backend::Sqlite => body(&TestDb::sqlite()),
            certmint_e2e::Backend::Postgres => {
                if let Some(db) = TestDb::postgres() {
                    body(&db);
                }
            }
        }
    }
}

/// A name a catalog query returns (schema parity).
#[derive(QueryableByName, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct NamedThing {
    #[diesel(sql_type = Text)]
    name: String,
}

use certmint_e2e::backend_tests;

mod audit;
mod backends;
mod ca;
mod certificates;
mod crls;
mod issuance;
mod paging;
mod policies;
mod provisioners;
mod recovery;
mod renewals;
mod tokens;

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

/// The issuer key id test certificates are recorded under.
const TEST_ISSUER_KEY_ID: &str = "00aa";

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
        crl: CrlAssignment {
            issuer_key_id: TEST_ISSUER_KEY_ID.to_owned(),
            shard: 0,
        },
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
