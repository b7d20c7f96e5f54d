//! Back-end behaviour: opening, pragmas, unsupported targets and schema
//! parity between SQLite and PostgreSQL.

use std::sync::Barrier;

use super::*;

backend_tests!(
    run = TestDb::run;
    open_pings_and_reopens);

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
    assert!(
        !lite_indexes.contains("certificates_not_after_idx"),
        "{lite_indexes:?}"
    );
    // Back with 2026-12-07-000000_certificate_token_index: an enrollment
    // whose token is used up looks up that token's earlier certificates.
    assert!(
        lite_indexes.contains("certificates_token_id_idx"),
        "{lite_indexes:?}"
    );
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
