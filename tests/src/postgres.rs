//! Throwaway PostgreSQL databases for tests, the one factory of both the
//! end-to-end suites and the server's store suite: [`TestDatabase`], a fresh
//! `certmint_e2e_<unix seconds>_<random>` created through
//! `CERTMINT_TEST_POSTGRES_URL` with `psql`, dropped (`WITH (FORCE)`) when
//! the value is dropped. A test server hands its database over to its
//! supervisor, which drops it when the server stops, even if this process
//! is killed; databases a killed in-process test left behind are swept by
//! the first `create` of a later run, once they are an hour old.
//!
//! Invariants: an unreachable PostgreSQL is a [`Skip`] unless
//! `CERTMINT_REQUIRE_POSTGRES=1`, which turns it into a failure; a database
//! has exactly one owner that drops it (the value, or the supervisor it was
//! handed to).

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use crate::process::{env_flag, random_hex};
use crate::server::Skip;

/// Default PostgreSQL URL (its database is only used to create and drop others).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh PostgreSQL database, dropped with this value unless handed over.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
    /// False once another owner (the supervisor) drops the database.
    owned: bool,
}

impl TestDatabase {
    /// Creates `certmint_e2e_<random>` through `CERTMINT_TEST_POSTGRES_URL`
    /// (default [`DEFAULT_POSTGRES_URL`]); a [`Skip`] when PostgreSQL is
    /// unreachable, a panic instead when `CERTMINT_REQUIRE_POSTGRES=1`.
    pub fn create() -> Result<TestDatabase, Skip> {
        let admin_url = std::env::var("CERTMINT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let unreachable = |reason: String| {
            if env_flag("CERTMINT_REQUIRE_POSTGRES") {
                panic!(
                    "PostgreSQL at {admin_url} is required (CERTMINT_REQUIRE_POSTGRES=1): {reason}"
                );
            }
            Skip(format!("PostgreSQL at {admin_url} unreachable: {reason}"))
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let name = format!("{DATABASE_PREFIX}{created}_{}", random_hex(6));
        let output = Command::new("psql")
            .arg(&admin_url)
            .args(["-v", "ON_ERROR_STOP=1", "-qc"])
            .arg(format!("CREATE DATABASE \"{name}\""))
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|error| unreachable(format!("cannot run psql: {error}")))?;
        if !output.status.success() {
            return Err(unreachable(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ));
        }
        SWEEP.call_once(|| sweep_stale_databases(&admin_url, created));
        let url = replace_database(&admin_url, &name);
        Ok(TestDatabase {
            name,
            url,
            admin_url,
            owned: true,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL for the database itself (the admin URL with its database
    /// replaced).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL the database was created through (its own database is only
    /// used to create and drop others).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// From now on someone else (the supervisor) drops the database; this
    /// value no longer does.
    pub(crate) fn hand_over(&mut self) {
        self.owned = false;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("psql")
                .arg(&self.admin_url)
                .arg("-qc")
                .arg(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ))
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// Test databases are named `certmint_e2e_<unix seconds>_<random hex>`.
const DATABASE_PREFIX: &str = "certmint_e2e_";
/// Age after which a test database is a leftover of a killed run: no live
/// test, in this process or another, runs that long.
const STALE_AFTER_SECONDS: u64 = 3600;
static SWEEP: std::sync::Once = std::sync::Once::new();

/// Drops the test databases older than [`STALE_AFTER_SECONDS`] that killed
/// runs left behind. Best effort: a failure leaves them for the next run.
fn sweep_stale_databases(admin_url: &str, now: u64) {
    let Ok(listing) = Command::new("psql")
        .arg(admin_url)
        .arg("-Atc")
        .arg("SELECT datname FROM pg_database WHERE datname LIKE 'certmint\\_e2e\\_%'")
        .stdin(Stdio::null())
        .output()
    else {
        return;
    };
    for name in String::from_utf8_lossy(&listing.stdout).lines() {
        let created = name
            .strip_prefix(DATABASE_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(created, _)| created.parse::<u64>().ok());
        let is_test_name = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if is_test_name
            && created.is_some_and(|created| created.saturating_add(STALE_AFTER_SECONDS) < now)
        {
            let _ = Command::new("psql")
                .arg(admin_url)
                .arg("-qc")
                .arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// `postgres://user@host:port/old?x` with the database replaced by `name`.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |index| index + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |index| authority_start + index);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        let _ = write!(out, "?{query}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count of databases called `name`, as `psql` prints it.
    fn databases_named(admin_url: &str, name: &str) -> String {
        let output = Command::new("psql")
            .arg(admin_url)
            .arg("-Atc")
            .arg(format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
            ))
            .output()
            .expect("run psql");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    #[test]
    fn ok_dropping_a_test_database_drops_it_unless_handed_over() {
        let Ok(database) = TestDatabase::create() else {
            return;
        };
        let (name, admin_url) = (database.name().to_owned(), database.admin_url().to_owned());
        assert_eq!(databases_named(&admin_url, &name), "1");
        drop(database);
        assert_eq!(
            databases_named(&admin_url, &name),
            "0",
            "{name} left behind"
        );

        let mut handed_over = TestDatabase::create().expect("PostgreSQL answered a moment ago");
        handed_over.hand_over();
        let name = handed_over.name().to_owned();
        drop(handed_over);
        assert_eq!(
            databases_named(&admin_url, &name),
            "1",
            "{name} dropped by a non-owner"
        );
        drop(TestDatabase {
            name,
            url: String::new(),
            admin_url,
            owned: true,
        });
    }

    #[test]
    fn ok_replace_database() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
