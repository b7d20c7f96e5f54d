//! Per-server PostgreSQL databases: `certmint_e2e_<random>`, created through
//! `CERTMINT_TEST_POSTGRES_URL` with `psql` and dropped by the supervisor
//! (or by [`drop_postgres_database`] when set-up fails first).
//!
//! Invariant: an unreachable PostgreSQL is a [`Skip`] unless
//! `CERTMINT_REQUIRE_POSTGRES=1`, which turns it into a failure.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use crate::process::{env_flag, random_hex};
use crate::server::Skip;

/// Default PostgreSQL URL (its database is only used to create and drop others).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub(crate) struct PostgresDatabase {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) admin_url: String,
}

pub(crate) fn create_postgres_database() -> Result<PostgresDatabase, Skip> {
    let admin_url = std::env::var("CERTMINT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let unreachable = |reason: String| {
        if env_flag("CERTMINT_REQUIRE_POSTGRES") {
            panic!("PostgreSQL at {admin_url} is required (CERTMINT_REQUIRE_POSTGRES=1): {reason}");
        }
        Skip(format!("PostgreSQL at {admin_url} unreachable: {reason}"))
    };
    let name = format!("certmint_e2e_{}", random_hex(6));
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
    let url = replace_database(&admin_url, &name);
    Ok(PostgresDatabase {
        name,
        url,
        admin_url,
    })
}

pub(crate) fn drop_postgres_database(database: Option<&PostgresDatabase>) {
    if let Some(database) = database {
        let _ = Command::new("psql")
            .arg(&database.admin_url)
            .arg("-qc")
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                database.name
            ))
            .stdin(Stdio::null())
            .output();
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
