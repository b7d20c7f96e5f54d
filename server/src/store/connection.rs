//! Connections: the `MultiConnection` enum over both dialects, the URL
//! parsing that picks one, and the r2d2 manager that opens and checks them.
//!
//! The enum lives in a module of its own because diesel's derive adds
//! `MultiBackend` and friends to the module that declares it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{HandleError, ManageConnection, R2D2Connection};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, RunQueryDsl};

use super::{sqlite_directory, Backend, StoreError};

/// Settings applied to every SQLite connection as it is opened, after
/// `busy_timeout` (so that they wait for other connections instead of
/// failing) and the switch to WAL ([`enter_wal_mode`]).
///
/// `synchronous=FULL` makes every commit durable (a certificate a client
/// received is never lost on power failure). `temp_store = MEMORY` keeps the
/// group-commit writer's savepoint sub-journals in RAM rather than spilling
/// them to temporary files.
const SQLITE_PRAGMAS: &str = "PRAGMA synchronous = FULL; \
     PRAGMA foreign_keys = ON; \
     PRAGMA temp_store = MEMORY;";

/// How long a connection waits for other connections' locks.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to either back end.
#[derive(diesel::MultiConnection)]
pub(super) enum DbConnection {
    /// An SQLite file.
    Sqlite(SqliteConnection),
    /// A PostgreSQL server.
    Postgres(PgConnection),
}

/// Where connections go, decided once from the URL's scheme.
pub(super) enum Target {
    /// Path of the SQLite file.
    Sqlite(PathBuf),
    /// The PostgreSQL URL as given (never logged: it may hold a password).
    Postgres(String),
}

impl Target {
    /// Parses a database URL (see [`super::Store::open`]).
    pub(super) fn parse(url: &str) -> Result<Target, StoreError> {
        let Some((scheme, rest)) = url.split_once(':') else {
            return Err(StoreError::UnsupportedUrl {
                scheme: String::new(),
            });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                // `:memory:` would give every pooled connection its own
                // database, and `file:` URIs would bypass the path checks.
                if path.is_empty() || path.starts_with(':') || path.starts_with("file:") {
                    return Err(StoreError::UnsupportedUrl {
                        scheme: "sqlite (a file path is required)".to_owned(),
                    });
                }
                let path = PathBuf::from(path);
                let directory = sqlite_directory(&path);
                if !directory.is_dir() {
                    return Err(StoreError::SqliteDirectoryMissing { directory });
                }
                Ok(Target::Sqlite(path))
            }
            "postgres" | "postgresql" => Ok(Target::Postgres(url.to_owned())),
            _ => Err(StoreError::UnsupportedUrl {
                scheme: scheme.chars().take(32).collect(),
            }),
        }
    }

    pub(super) fn backend(&self) -> Backend {
        match self {
            Target::Sqlite(_) => Backend::Sqlite,
            Target::Postgres(_) => Backend::Postgres,
        }
    }
}

/// The r2d2 manager. diesel's own `ConnectionManager` would call
/// `MultiConnection::establish`, which tries SQLite first and so would
/// create a file named after a PostgreSQL URL.
pub(super) struct Manager {
    target: Target,
}

impl Manager {
    pub(super) fn new(target: Target) -> Self {
        Self { target }
    }
}

/// Why a connection could not be opened or set up.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    /// The driver refused to connect.
    #[error("cannot connect to the database")]
    Connect(#[source] diesel::ConnectionError),
    /// libpq refused to connect; its message with the URL and password
    /// taken out (libpq quotes the URI, or a malformed part of it such as
    /// a bad percent-escape in the password, in some of its errors).
    #[error("cannot connect to the database: {0}")]
    Postgres(String),
    /// The connection opened but its settings could not be applied.
    #[error("cannot configure the database connection")]
    Setup(#[source] diesel::result::Error),
    /// A health check on a pooled connection failed.
    #[error("database connection check failed")]
    Check(#[source] diesel::result::Error),
    /// SQLite kept another journal mode (e.g. on a file system without the
    /// shared memory WAL needs).
    #[error("SQLite refused WAL mode; the journal mode stays {0:?}")]
    NotWal(String),
    /// The SQLite path is not valid UTF-8.
    #[error("SQLite path is not valid UTF-8")]
    PathEncoding,
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = ConnectError;

    fn connect(&self) -> Result<DbConnection, ConnectError> {
        match &self.target {
            Target::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(sqlite_path(path)?)
                    .map_err(ConnectError::Connect)?;
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {};",
                    SQLITE_BUSY_TIMEOUT.as_millis()
                ))
                .map_err(ConnectError::Setup)?;
                enter_wal_mode(&mut conn)?;
                conn.batch_execute(SQLITE_PRAGMAS)
                    .map_err(ConnectError::Setup)?;
                Ok(DbConnection::Sqlite(conn))
            }
            Target::Postgres(url) => PgConnection::establish(url)
                .map(DbConnection::Postgres)
                .map_err(|error| ConnectError::Postgres(redact_url(&error.to_string(), url))),
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), ConnectError> {
        conn.ping().map_err(ConnectError::Check)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

/// Puts the database in WAL mode (a no-op once it is; the mode is stored in
/// the file).
///
/// The switch reads the file and then upgrades to a write lock, and SQLite
/// refuses that upgrade at once, without waiting out `busy_timeout`, while
/// another connection holds a read lock: it could deadlock otherwise. That
/// happens when processes open one new file together (a server and an admin
/// command, or replicas), so the refused switch is retried, as SQLite's
/// documentation advises for this case, for as long as a lock is waited for.
fn enter_wal_mode(conn: &mut SqliteConnection) -> Result<(), ConnectError> {
    #[derive(diesel::QueryableByName)]
    struct JournalMode {
        #[diesel(sql_type = diesel::sql_types::Text)]
        journal_mode: String,
    }
    let give_up = Instant::now() + SQLITE_BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        match diesel::sql_query("PRAGMA journal_mode = WAL").get_result::<JournalMode>(conn) {
            Ok(mode) if mode.journal_mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => return Err(ConnectError::NotWal(mode.journal_mode)),
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message() == SQLITE_BUSY_MESSAGE && Instant::now() < give_up =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(error) => return Err(ConnectError::Setup(error)),
        }
    }
}

/// `sqlite3_errstr(SQLITE_BUSY)`: diesel reports SQLite's result code only
/// through its message.
const SQLITE_BUSY_MESSAGE: &str = "database is locked";

/// libpq's `message` fit for an operator's terminal and the logs.
///
/// libpq quotes the URI, or whatever part of it it could not parse, in
/// some errors, and its parse of a password holding `@`, `/` or `%` is not
/// one this code can mirror exactly. So when the URL may carry a password
/// (anything before an `@`, or a `password=` parameter) the message is
/// withheld whole; otherwise only the URL is replaced.
fn redact_url(message: &str, url: &str) -> String {
    if may_hold_password(url) {
        return "libpq's reason is withheld because the URL holds a password; \
                try the same URL with psql, or give the password in PGPASSWORD or a \
                .pgpass file"
            .to_owned();
    }
    message.replace(url, "<database.url>")
}

/// Whether `url` may carry a password anywhere libpq reads one.
fn may_hold_password(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let userinfo = after_scheme.rsplit_once('@').map(|(userinfo, _)| userinfo);
    userinfo.is_some_and(|userinfo| userinfo.contains(':'))
        || url.to_ascii_lowercase().contains("password")
}

fn sqlite_path(path: &Path) -> Result<&str, ConnectError> {
    path.to_str().ok_or(ConnectError::PathEncoding)
}

/// Sends r2d2's background connection errors to `tracing`.
#[derive(Debug)]
pub(super) struct TracingErrorHandler;

impl HandleError<ConnectError> for TracingErrorHandler {
    fn handle_error(&self, error: ConnectError) {
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        tracing::warn!(error = %error, error.cause = cause.as_deref(), "database connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_withholds_libpq_text_when_the_url_may_hold_a_password() {
        for url in [
            "postgres://certmint:s%3Ecret%zz@db.internal:5432/certmint",
            "postgres://u:p@ss@h/db",
            "postgres://u:pa/ss@h/db",
            "postgres://u@h/db?password=pa%zz",
            "postgres://u@h/db?PassWord=x",
        ] {
            let message = format!("invalid token \"p\" \"pa\" \"ss@h\" in {url}");
            let redacted = redact_url(&message, url);
            assert!(redacted.contains("withheld"), "{url}: {redacted}");
            assert!(!redacted.contains('"'), "{url}: {redacted}");
        }
        // Without a password libpq's reason is kept, minus the URL.
        let url = "postgres://postgres@127.0.0.1:1/x";
        let redacted = redact_url(&format!("Connection refused ({url})"), url);
        assert_eq!(redacted, "Connection refused (<database.url>)");
    }

    #[test]
    fn a_refused_postgres_connection_never_shows_the_password() {
        // A stray `%` in a password: libpq quotes the malformed token.
        let url = "postgres://postgres:pa%ss@127.0.0.1:1/x?connect_timeout=2";
        let manager = Manager::new(Target::parse(url).expect("url"));
        let Err(error) = manager.connect() else {
            panic!("nothing listens on port 1");
        };
        let text = crate::error::with_causes(&error);
        assert!(!text.contains("pa%ss") && !text.contains("%ss"), "{text}");
    }
}
