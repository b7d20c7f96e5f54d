//! The database: diesel schema, row models and every query certmint runs.
//!
//! This module is **the only place that writes SQL**. Everything else sees
//! [`Store`], whose methods take and return wire or domain types; no diesel
//! type (connection, error, row) appears in a public signature, and the
//! row structs in `models` never leave the module.
//!
//! # Back ends
//!
//! One code path serves SQLite (the embedded default) and PostgreSQL (the
//! scale-out store shared by several replicas), through an r2d2 pool of a
//! diesel `MultiConnection` enum. The back end is chosen explicitly from the
//! URL scheme (`sqlite:`/`sqlite://` or `postgres://`/`postgresql://`),
//! never by trying one driver after the other: SQLite accepts any string as
//! a file name. Queries use SQL both dialects share; the few places that
//! must differ carry a `// dialect:` comment. Migrations for both
//! (`migrations/sqlite`, `migrations/postgres`) are embedded and applied by
//! [`Store::open`].
//!
//! # Invariants
//!
//! - Every uniqueness rule is the database's, never this process's memory:
//!   serials are a primary key, token uses are consumed by a conditional
//!   `UPDATE` that must hit exactly one row, policy versions are a
//!   `(name, version)` primary key. Any number of replicas may share one
//!   PostgreSQL database.
//! - Every write and its audit event commit in one transaction, and the
//!   audit log is a hash chain serialised through the `audit_head` row
//!   (see [`crate::audit`]).
//! - A certificate is recorded (status `pending`, with its TBS bytes) before
//!   it is signed and marked `issued` after; see
//!   [`Store::begin_issuance`].
//! - On SQLite every write runs on one dedicated connection, owned by one
//!   writer thread, that group-commits concurrent transactions (one
//!   `BEGIN IMMEDIATE` and one durable COMMIT per batch, each transaction in
//!   its own savepoint; see `group_commit`). Write bodies therefore own what
//!   they capture, and the statements every enrollment runs are kept
//!   prepared (`statements`).
//!   Other processes writing the same file still queue on `busy_timeout`.
//! - Times are stored as BIGINT unix seconds (UTC): one representation both
//!   dialects compare and index the same way, free of text-format and
//!   time-zone ambiguity. Sub-second precision is dropped on write, and
//!   values returned from writes are the stored (truncated) ones.
//! - JSON bodies are TEXT, DER is BLOB/BYTEA. Stored data that does not
//!   decode is reported as [`StoreError::Corrupt`], never a panic.
//!
//! # Never
//!
//! Never store or audit a secret (a JWT, a PIN, a private key), never log a
//! database URL (it may carry a password), never `unwrap` a database result.

mod audit;
mod ca;
mod certificates;
mod connection;
mod crls;
mod group_commit;
mod models;
mod policies;
mod provisioners;
mod recovery;
mod schema;
mod statements;
#[cfg(test)]
mod tests;
mod tokens;

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certmint::wire::{CertificateStatus, Identity, KeyType, Page};
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::r2d2::{ManageConnection, Pool, PooledConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::RunQueryDsl as _;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use time::OffsetDateTime;

use self::connection::{DbConnection, Manager, Target};
use self::statements::LockAuditHead;

pub use self::ca::{CaKeyReservation, CaState, InitLock};
pub use self::certificates::{
    CertificateFilter, CertificateRecord, CrlAssignment, ExpiryWindow, NewCertificate, Revocation,
};
pub use self::crls::{CrlClaim, CrlEntryRecord, CrlIssuerSetup, SignedCrl, StoredCrl};
pub use self::group_commit::GroupCommitCounts;
pub use self::provisioners::NewProvisionerRecord;
pub use self::recovery::{UsedUpTokenRecovery, RECONCILED_FAILURE, RECONCILE_BATCH};
pub use self::tokens::NewToken;

/// SQLite migrations, embedded at build time (path relative to the server
/// crate's `Cargo.toml`).
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
/// PostgreSQL migrations, embedded at build time.
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// Key of the PostgreSQL advisory lock held while migrating, so replicas
/// that start together migrate one at a time (ASCII `certmint`).
const MIGRATION_LOCK_KEY: i64 = 0x6365_7274_6d69_6e74;

/// How long a caller waits for a pooled connection before
/// [`StoreError::Unavailable`].
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest page any list returns; larger limits are clamped to it, and a
/// limit of 0 reads as 1.
pub const MAX_PAGE_SIZE: u32 = 500;

/// How often a write that lost a race on a primary key (a policy version)
/// is retried before [`StoreError::Conflict`]. Each lost race means another
/// writer committed, so N concurrent writers need at most N - 1 retries.
const MAX_WRITE_ATTEMPTS: usize = 64;

/// Handle on the certmint database: a pool of connections to one back end.
///
/// Cheap to clone; all methods are blocking (call them from a blocking pool).
#[derive(Clone)]
pub struct Store {
    pool: Pool<Manager>,
    backend: Backend,
    /// SQLite only: every write goes through one group-committing connection.
    writer: Option<std::sync::Arc<group_commit::GroupWriter>>,
}

/// Which database engine a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An SQLite file (WAL mode), for a single server.
    Sqlite,
    /// PostgreSQL, shareable by several replicas.
    Postgres,
}

/// Everything that can go wrong in the store.
///
/// Variants name the domain rule that refused the operation and carry the
/// context a caller needs; driver errors are kept only as `#[source]`.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL's scheme is not `sqlite:`, `postgres:` or `postgresql:`.
    #[error("unsupported database URL scheme {scheme:?}: use sqlite://<path> or postgres://…")]
    UnsupportedUrl {
        /// The scheme found (the rest of the URL is withheld: it may hold a password).
        scheme: String,
    },
    /// The SQLite file's directory does not exist (the file itself is created).
    #[error("SQLite database directory {} does not exist", directory.display())]
    SqliteDirectoryMissing {
        /// The missing directory.
        directory: PathBuf,
    },
    /// The database cannot be reached or a connection failed (API: 503).
    #[error("database unavailable: {what}")]
    Unavailable {
        /// What failed, e.g. `connect`, `pool timeout`, `database busy`.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// Applying the embedded migrations failed.
    #[error("database migration failed")]
    Migration {
        /// The migration harness's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// A policy of that name already exists (create).
    #[error("policy {name:?} already exists")]
    PolicyAlreadyExists {
        /// Policy name.
        name: String,
    },
    /// No policy of that name exists.
    #[error("policy {name:?} not found")]
    PolicyNotFound {
        /// Policy name.
        name: String,
    },
    /// The policy version an issuance was evaluated under is no longer the
    /// current one (re-evaluate under the current version).
    #[error("policy {name:?} version {evaluated} is no longer current")]
    PolicyChanged {
        /// Policy name.
        name: String,
        /// The version the request was evaluated under.
        evaluated: i64,
    },
    /// A concurrent writer kept winning the race for the same key; retry later.
    #[error("concurrent update conflict on {what}")]
    Conflict {
        /// What was contended, e.g. `policy version`.
        what: &'static str,
    },
    /// A provisioner with this name exists (enabled or disabled).
    #[error("provisioner {name:?} already exists")]
    ProvisionerAlreadyExists {
        /// The name.
        name: String,
    },
    /// The provisioner is disabled: its tokens are refused.
    #[error("provisioner {name:?} is disabled")]
    ProvisionerDisabled {
        /// The name.
        name: String,
    },
    /// A provisioner's `jti` already stands for a token with other claims.
    #[error("token {id:?} was already recorded with other claims: the provisioner reused its jti")]
    TokenJtiReused {
        /// The token record's id.
        id: String,
    },
    /// No provisioner with this name.
    #[error("provisioner {name:?} not found")]
    ProvisionerNotFound {
        /// The name.
        name: String,
    },
    /// A token with this id already exists.
    #[error("token {id:?} already exists")]
    TokenAlreadyExists {
        /// Token id.
        id: String,
    },
    /// A token presented for enrollment has no record: the JWT verified,
    /// but this database never minted it (another installation's key?).
    #[error("token {id:?} is not known to this server")]
    TokenUnknown {
        /// Token id.
        id: String,
    },
    /// An administrator named a token id that has no record.
    #[error("no bootstrap token with id {id:?}")]
    TokenNotFound {
        /// Token id.
        id: String,
    },
    /// The token was revoked.
    #[error("token {id:?} was revoked at {revoked_at}")]
    TokenRevoked {
        /// Token id.
        id: String,
        /// When it was revoked.
        revoked_at: OffsetDateTime,
    },
    /// The token expired.
    #[error("token {id:?} expired at {expires_at} (now {now})")]
    TokenExpired {
        /// Token id.
        id: String,
        /// Its expiry.
        expires_at: OffsetDateTime,
        /// The time it was presented.
        now: OffsetDateTime,
    },
    /// All of the token's uses are spent.
    #[error("token {id:?} has used all {max_uses} of its uses")]
    TokenUsedUp {
        /// Token id.
        id: String,
        /// Uses it allowed.
        max_uses: u32,
    },
    /// The serial is already taken: pick a new random serial and retry.
    #[error("serial {serial} is already taken")]
    SerialCollision {
        /// The colliding serial.
        serial: String,
    },
    /// No certificate with this serial.
    #[error("certificate {serial} not found")]
    CertificateNotFound {
        /// Serial, hex.
        serial: String,
    },
    /// The certificate is already revoked.
    #[error("certificate {serial} was already revoked at {revoked_at:?}")]
    CertificateAlreadyRevoked {
        /// Serial, hex.
        serial: String,
        /// When it was revoked.
        revoked_at: Option<OffsetDateTime>,
    },
    /// The certificate was never issued (it is pending or failed).
    #[error("certificate {serial} is {status:?}, not issued")]
    CertificateNotIssued {
        /// Serial, hex.
        serial: String,
        /// Its current status.
        status: CertificateStatus,
    },
    /// A renewal's predecessor is no longer issued (it was revoked after the
    /// holder's certificate was checked): nothing is written.
    #[error("certificate {serial} was revoked while its renewal was being prepared")]
    PredecessorRevoked {
        /// Serial of the predecessor, hex.
        serial: String,
    },
    /// A pending issuance outlived `issuance.pending_timeout` and was
    /// reconciled as failed (its token use refunded) before it could be
    /// marked issued: the signed certificate is dropped, never returned.
    /// Retrying gets a new certificate.
    #[error("certificate {serial} was reconciled as failed while it was being signed; retry")]
    IssuanceWithdrawn {
        /// Serial, hex.
        serial: String,
    },
    /// The token is used up by a pending issuance younger than
    /// `issuance.pending_timeout`: that request may still be in flight.
    #[error(
        "token {id:?} is used up by an issuance in flight since {pending_since}; retry shortly"
    )]
    TokenUseInFlight {
        /// Token id.
        id: String,
        /// When the in-flight issuance was recorded.
        pending_since: OffsetDateTime,
    },
    /// The certificate is not pending, so it cannot be completed or abandoned.
    #[error("certificate {serial} is {status:?}, not pending")]
    CertificateNotPending {
        /// Serial, hex.
        serial: String,
        /// Its current status.
        status: CertificateStatus,
    },
    /// The CA state is already recorded (or its chain already imported).
    #[error("the CA is already initialized")]
    CaAlreadyInitialized,
    /// No CA state is recorded yet.
    #[error("the CA is not initialized")]
    CaNotInitialized,
    /// A list cursor is not one this store produced.
    #[error("malformed pagination cursor")]
    BadCursor,
    /// Stored data does not decode (bad JSON, unknown enum name, time out of range).
    #[error("corrupt stored data: {what}")]
    Corrupt {
        /// What did not decode, and where.
        what: String,
    },
    /// A transaction failed, and rolling it back failed too.
    #[error("{original}; rolling back the transaction also failed: {rollback}")]
    Rollback {
        /// The error that aborted the transaction.
        #[source]
        original: Box<StoreError>,
        /// The rollback's own error.
        rollback: Box<dyn StdError + Send + Sync>,
    },
    /// Any other database error.
    #[error("database query failed")]
    Query {
        /// The driver's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl Store {
    /// Opens (and migrates) the database at `url` with up to `pool_size`
    /// connections.
    ///
    /// `url` is `sqlite://<path>` or `sqlite:<path>` (relative or absolute;
    /// the file is created, its directory must exist), or
    /// `postgres://…`/`postgresql://…`. Pending migrations are applied before
    /// this returns; on PostgreSQL under an advisory lock, so replicas
    /// starting together do not race.
    pub fn open(url: &str, pool_size: u32) -> Result<Store, StoreError> {
        let target = Target::parse(url)?;
        let backend = target.backend();
        let manager = Manager::new(target);
        // A direct first connection reports the real driver error (r2d2
        // reports only a timeout) and runs the migrations.
        let mut first = manager
            .connect()
            .map_err(|e| StoreError::unavailable("connect", e))?;
        run_migrations(&mut first)?;
        // dialect: SQLite has one writer at a time; a dedicated connection
        // group-commits all writes (see `group_commit`). PostgreSQL writes
        // run concurrently on pooled connections.
        let writer = match backend {
            Backend::Sqlite => Some(std::sync::Arc::new(group_commit::GroupWriter::new(first)?)),
            Backend::Postgres => {
                drop(first);
                None
            }
        };
        let pool = Pool::builder()
            .max_size(pool_size.max(1))
            // No idle floor: r2d2 replenishes an idle floor from a background
            // thread, and a libpq connect still running there when a
            // short-lived command exits races OpenSSL's exit-time cleanup
            // (seen: SIGSEGV in SSL_CTX_new after `init` printed its results).
            // Connections are opened on demand and kept until idle_timeout.
            .min_idle(Some(0))
            .connection_timeout(POOL_TIMEOUT)
            .error_handler(Box::new(connection::TracingErrorHandler))
            .build(manager)
            .map_err(|e| StoreError::unavailable("connection pool", e))?;
        tracing::info!(store.backend = ?backend, store.pool_size = pool_size, "database opened");
        Ok(Store {
            pool,
            backend,
            writer,
        })
    }

    /// The back end this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// SQLite only: what the group-commit writer has done so far.
    pub fn group_commit_counts(&self) -> Option<GroupCommitCounts> {
        self.writer.as_ref().map(|writer| writer.counts())
    }

    /// Checks that a connection works (`SELECT 1`), for `/readyz`.
    pub fn ping(&self) -> Result<(), StoreError> {
        use diesel::r2d2::R2D2Connection;
        let mut conn = self.connection()?;
        conn.ping().map_err(StoreError::query)
    }

    /// A pooled connection, or [`StoreError::Unavailable`].
    fn connection(&self) -> Result<PooledConnection<Manager>, StoreError> {
        self.pool
            .get()
            .map_err(|e| StoreError::unavailable("connection pool", e))
    }

    /// Runs `body` on one connection, outside any explicit transaction.
    fn read<T>(
        &self,
        body: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.connection()?;
        body(&mut conn)
    }

    /// Runs `body` in a write transaction: committed when it returns `Ok`,
    /// rolled back when it returns `Err` (keeping both errors if the rollback
    /// fails too).
    ///
    /// The body owns what it captures because on SQLite it runs on the
    /// group-commit thread. Do everything that needs no connection (JSON,
    /// hashes, row building) before calling: the body runs in the one serial
    /// section every write shares.
    fn write<T, F>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        if let Some(writer) = &self.writer {
            return writer.write(body);
        }
        let mut conn = self.connection()?;
        write_transaction(&mut conn, body)
    }

    /// [`Store::write`], retried while it fails with [`StoreError::Conflict`]
    /// (a lost race on a primary key; the winner has committed by then).
    fn write_retrying<T, F>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let body = std::sync::Arc::new(std::sync::Mutex::new(body));
        let mut attempt = 1;
        loop {
            let attempt_body = body.clone();
            let result = self.write(move |conn| {
                let mut body = attempt_body
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (*body)(conn)
            });
            match result {
                Err(StoreError::Conflict { what }) if attempt < MAX_WRITE_ATTEMPTS => {
                    tracing::debug!(
                        store.conflict = what,
                        store.attempt = attempt,
                        "retrying write"
                    );
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL stays out of Debug: it may carry a password.
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("pool", &self.pool.state())
            .finish()
    }
}

impl StoreError {
    /// Maps a diesel error: lost connections and a busy SQLite file become
    /// [`StoreError::Unavailable`], anything else [`StoreError::Query`].
    fn query(error: DieselError) -> StoreError {
        match &error {
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => StoreError::unavailable("connection lost", error),
            // dialect: SQLite reports SQLITE_BUSY (after busy_timeout) only by message.
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
                if info.message().contains("database is locked") =>
            {
                StoreError::unavailable("database busy", error)
            }
            _ => StoreError::Query {
                source: Box::new(error),
            },
        }
    }

    fn unavailable(
        what: &'static str,
        source: impl StdError + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Unavailable {
            what,
            source: Box::new(source),
        }
    }

    fn corrupt(what: impl Into<String>) -> StoreError {
        StoreError::Corrupt { what: what.into() }
    }
}

/// Applies pending migrations for the connection's dialect.
fn run_migrations(conn: &mut DbConnection) -> Result<(), StoreError> {
    use diesel::connection::SimpleConnection;

    let migration_error = |source| StoreError::Migration { source };
    let applied = match conn {
        // Processes opening one new file together (a server starting while
        // an admin command runs) migrate one at a time.
        DbConnection::Sqlite(conn) => {
            // Only when there is something to do: an up-to-date database in
            // a read-only directory still opens.
            if conn
                .has_pending_migration(SQLITE_MIGRATIONS)
                .map_err(migration_error)?
            {
                let _one_at_a_time = lock_beside_sqlite_file(conn, "migration-lock")?;
                conn.run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(|versions| versions.len())
                    .map_err(migration_error)?
            } else {
                0
            }
        }
        // dialect: replicas share one PostgreSQL; serialise their migrations.
        DbConnection::Postgres(conn) => {
            conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
                .map_err(StoreError::query)?;
            let result = conn
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|versions| versions.len());
            let unlocked =
                conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
            let applied = result.map_err(migration_error)?;
            unlocked.map_err(StoreError::query)?;
            applied
        }
    };
    if applied > 0 {
        tracing::info!(store.migrations_applied = applied, "database migrated");
    }
    Ok(())
}

/// An exclusive `flock` on `<database file>.<suffix>`, waited for: how
/// processes sharing one SQLite file take turns at work SQLite's own
/// locking does not cover (migrations, `init`). Released when the file is
/// closed. `None` for an in-memory database, which no other process sees.
fn lock_beside_sqlite_file(
    conn: &mut diesel::SqliteConnection,
    suffix: &str,
) -> Result<Option<std::fs::File>, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct DatabaseFile {
        #[diesel(sql_type = diesel::sql_types::Text)]
        file: String,
    }
    let main: DatabaseFile =
        diesel::sql_query("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .get_result(conn)
            .map_err(StoreError::query)?;
    if main.file.is_empty() {
        return Ok(None);
    }
    let path = format!("{}.{suffix}", main.file);
    let unavailable = |error| StoreError::unavailable("lock file", error);
    // Opened read-only when it exists (flock needs no write access), so a
    // file left by a command run as root does not stop the service user;
    // created readable by all when it does not.
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::OpenOptionsExt as _;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::File::open(&path).map_err(unavailable)?
                }
                Err(error) => return Err(unavailable(error)),
            }
        }
        Err(error) => return Err(unavailable(error)),
    };
    wait_for(&format!("another process holds {path}"), || {
        match file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(error)) => Err(unavailable(error)),
        }
    })?;
    Ok(Some(file))
}

/// How long [`wait_for`] waits for a lock another process holds.
const LOCK_WAIT: Duration = Duration::from_secs(15 * 60);

/// Polls `try_take` until it takes the lock, saying once (as a warning)
/// that it is waiting for `holder`, and giving up after [`LOCK_WAIT`] with
/// [`StoreError::Unavailable`]: a lock held by a process that hung should
/// stop the waiter with a reason, not hang it silently.
pub(super) fn wait_for(
    holder: &str,
    mut try_take: impl FnMut() -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut warned = false;
    loop {
        if try_take()? {
            return Ok(());
        }
        if !warned {
            tracing::warn!(
                "{holder}; waiting (at most {} min)",
                LOCK_WAIT.as_secs() / 60
            );
            warned = true;
        }
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::unavailable(
                "lock",
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{holder} still")),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The transaction helper every write goes through.
///
/// Commits when `body` returns `Ok`. When it returns `Err`, rolls back and
/// returns that error, or [`StoreError::Rollback`] holding both errors when
/// the rollback fails too (the pool then discards the connection, because
/// diesel marks its transaction state broken).
fn write_transaction<T>(
    conn: &mut DbConnection,
    body: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // dialect: SQLite takes the write lock up front (BEGIN IMMEDIATE) so that
    // concurrent writers wait on busy_timeout instead of failing to upgrade a
    // read lock. PostgreSQL runs READ COMMITTED and takes the audit head's row
    // lock first: every write transaction appends to the audit chain, so
    // they all queue on that one lock, taken before any other (no deadlock
    // between them), and each statement after it sees everything earlier
    // writers committed. Without it, an enrollment on one replica could
    // check the policy version while a disable on another was committing,
    // and record a certificate under a version already superseded.
    let begun = match conn {
        DbConnection::Sqlite(inner) => {
            AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")
        }
        DbConnection::Postgres(inner) => AnsiTransactionManager::begin_transaction(inner),
    };
    begun.map_err(StoreError::query)?;
    let locked = match conn {
        DbConnection::Sqlite(_) => Ok(()),
        DbConnection::Postgres(inner) => LockAuditHead
            .execute(inner)
            .map(drop)
            .map_err(StoreError::query),
    };
    match locked.and_then(|()| body(conn)) {
        Ok(value) => {
            <DbConnection as TransactionManager<DbConnection>>::commit_transaction(conn)
                .map_err(StoreError::query)?;
            Ok(value)
        }
        Err(original) => {
            match <DbConnection as TransactionManager<DbConnection>>::rollback_transaction(conn) {
                Ok(()) => Err(original),
                Err(rollback) => Err(StoreError::Rollback {
                    original: Box::new(original),
                    rollback: Box::new(rollback),
                }),
            }
        }
    }
}

/// True when `error` is a unique (or primary key) violation.
fn is_unique_violation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

/// Unix seconds of `time` (sub-second precision is dropped).
fn unix(time: OffsetDateTime) -> i64 {
    time.unix_timestamp()
}

/// The time at `seconds` after the epoch, or `Corrupt` naming `what`.
fn from_unix(seconds: i64, what: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(seconds)
        .map_err(|_| StoreError::corrupt(format!("{what}: time {seconds} out of range")))
}

fn optional_from_unix(
    seconds: Option<i64>,
    what: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    seconds.map(|s| from_unix(s, what)).transpose()
}

/// Serialises a value for a TEXT column.
fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Query {
        source: Box::new(e),
    })
}

/// Parses a TEXT column, or `Corrupt` naming `what`.
fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(format!("{what}: {e}")))
}

fn identity_from_json(text: &str, what: &str) -> Result<Identity, StoreError> {
    from_json(text, what)
}

fn key_type_from_name(name: &str, what: &str) -> Result<KeyType, StoreError> {
    KeyType::parse(name)
        .ok_or_else(|| StoreError::corrupt(format!("{what}: unknown key type {name:?}")))
}

/// SHA-256 of `bytes`, lower-case hex (fingerprints in audit data).
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Number of rows to show for a requested `limit` (see [`MAX_PAGE_SIZE`]).
fn page_size(limit: u32) -> usize {
    // u32 -> usize never truncates on the platforms certmint supports.
    limit.clamp(1, MAX_PAGE_SIZE) as usize
}

/// Turns `rows` fetched with `LIMIT size + 1` into a page: when the extra row
/// is there, it is dropped and `next` is the cursor of the last row kept.
fn page_of<R, T>(
    mut rows: Vec<R>,
    size: usize,
    cursor_of: impl Fn(&R) -> String,
    convert: impl Fn(R) -> Result<T, StoreError>,
) -> Result<Page<T>, StoreError> {
    let next = if rows.len() > size {
        rows.truncate(size);
        rows.last().map(&cursor_of)
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(convert)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page { items, next })
}

/// Opaque cursors: `c1.` followed by the hex of each key part, `.`-separated.
/// Opaque to clients, unambiguous whatever bytes the keys contain.
fn encode_cursor(parts: &[&str]) -> String {
    let mut cursor = String::from("c1");
    for part in parts {
        cursor.push('.');
        cursor.push_str(&hex::encode(part.as_bytes()));
    }
    cursor
}

/// Decodes a cursor of exactly `N` parts, or [`StoreError::BadCursor`].
fn decode_cursor<const N: usize>(cursor: &str) -> Result<[String; N], StoreError> {
    let mut pieces = cursor.split('.');
    if pieces.next() != Some("c1") {
        return Err(StoreError::BadCursor);
    }
    let parts: Vec<String> = pieces
        .map(|piece| {
            let bytes = hex::decode(piece).map_err(|_| StoreError::BadCursor)?;
            // Every key a cursor carries (names, serials, ids, times) is
            // printable ASCII; anything else is forged, and PostgreSQL would
            // refuse a NUL in a text comparison.
            if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_graphic) {
                return Err(StoreError::BadCursor);
            }
            String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)
        })
        .collect::<Result<_, _>>()?;
    parts.try_into().map_err(|_| StoreError::BadCursor)
}

/// Checks a serial part of a cursor (serials are lower-case hex).
fn cursor_hex(part: String) -> Result<String, StoreError> {
    if part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(part)
    } else {
        Err(StoreError::BadCursor)
    }
}

/// Parses the integer part of a cursor.
fn cursor_int(part: &str) -> Result<i64, StoreError> {
    part.parse().map_err(|_| StoreError::BadCursor)
}

/// The directory a SQLite path lives in (`.` for a bare file name).
fn sqlite_directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
