//! Hand-written SQL for the statements every enrollment runs, as diesel
//! query fragments that diesel keeps prepared.
//!
//! Why they exist: diesel prepares its own UPDATE statements afresh on every
//! call (`UpdateStatement` always marks itself unsafe to cache, since a
//! changeset of `Option`s can change shape), and `batch_execute` goes
//! through `sqlite3_exec`, which parses its text every time. On the SQLite
//! group-commit writer, the one serial section every enrollment passes
//! twice, that parsing was about a fifth of the thread's time. A fragment
//! whose SQL text never changes and whose `QueryId` is static is prepared
//! once per connection and then served from diesel's statement cache.
//!
//! Invariant: each type's SQL text is fixed; only bind values vary (a type
//! whose text varied would poison the cache, which is keyed by type). Every
//! statement here is valid in both dialects; diesel writes `?` or `$n` for
//! each bind.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Binary, HasSqlType, Text};
use diesel::{QueryResult, RunQueryDsl};

use certmint::wire::CertificateStatus;

use super::certificates::status_name;

/// A statement without binds.
macro_rules! fixed_statement {
    ($(#[$doc:meta])* $name:ident = $sql:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, QueryId)]
        pub(super) struct $name;

        impl<DB: Backend> QueryFragment<DB> for $name {
            fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
                out.push_sql($sql);
                Ok(())
            }
        }

        impl<Conn> RunQueryDsl<Conn> for $name {}
    };
}

fixed_statement!(
    /// Opens a group-commit batch (SQLite).
    BeginImmediate = "BEGIN IMMEDIATE"
);
fixed_statement!(
    /// Ends a batch durably.
    Commit = "COMMIT"
);
fixed_statement!(
    /// Abandons a batch.
    Rollback = "ROLLBACK"
);
fixed_statement!(
    /// Starts one body of a batch.
    Savepoint = "SAVEPOINT certmint_write"
);
fixed_statement!(
    /// Keeps one body of a batch.
    ReleaseSavepoint = "RELEASE certmint_write"
);
fixed_statement!(
    /// Undoes one body of a batch (then [`ReleaseSavepoint`]).
    RollbackToSavepoint = "ROLLBACK TO certmint_write"
);
fixed_statement!(
    /// Takes the audit chain's next sequence number; on PostgreSQL this also
    /// locks the head row until the transaction ends.
    BumpAuditSequence = "UPDATE audit_head SET seq = seq + 1 WHERE id = 1"
);

/// Records the audit chain's new head hash.
#[derive(Debug)]
pub(super) struct SetAuditHead<'a> {
    pub(super) hash: &'a str,
}

/// Consumes one use of a live token: must change exactly one row.
#[derive(Debug)]
pub(super) struct ConsumeTokenUse<'a> {
    pub(super) id: &'a str,
    pub(super) now_unix: i64,
}

/// Marks a pending certificate issued, with its DER: must change exactly
/// one row.
#[derive(Debug)]
pub(super) struct MarkIssued<'a> {
    pub(super) serial: &'a str,
    pub(super) certificate_der: &'a [u8],
    pub(super) issued_at_unix: i64,
}

/// `QueryId` for a statement type with a lifetime: one cache entry per type.
macro_rules! static_query_id {
    ($name:ident) => {
        impl QueryId for $name<'_> {
            type QueryId = $name<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl<Conn> RunQueryDsl<Conn> for $name<'_> {}
    };
}

static_query_id!(SetAuditHead);
static_query_id!(ConsumeTokenUse);
static_query_id!(MarkIssued);

impl<DB> QueryFragment<DB> for SetAuditHead<'_>
where
    DB: Backend + HasSqlType<Text>,
    str: ToSql<Text, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE audit_head SET hash = ");
        out.push_bind_param::<Text, _>(self.hash)?;
        out.push_sql(" WHERE id = 1");
        Ok(())
    }
}

impl<DB> QueryFragment<DB> for ConsumeTokenUse<'_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt>,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE bootstrap_tokens SET uses = uses + 1 WHERE id = ");
        out.push_bind_param::<Text, _>(self.id)?;
        out.push_sql(" AND uses < max_uses AND revoked_at IS NULL AND expires_at > ");
        out.push_bind_param::<BigInt, _>(&self.now_unix)?;
        Ok(())
    }
}

impl<DB> QueryFragment<DB> for MarkIssued<'_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt> + HasSqlType<Binary>,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    [u8]: ToSql<Binary, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE certificates SET status = ");
        out.push_bind_param::<Text, _>(status_name(CertificateStatus::Issued))?;
        out.push_sql(", certificate_der = ");
        out.push_bind_param::<Binary, _>(self.certificate_der)?;
        out.push_sql(", issued_at = ");
        out.push_bind_param::<BigInt, _>(&self.issued_at_unix)?;
        out.push_sql(" WHERE serial = ");
        out.push_bind_param::<Text, _>(self.serial)?;
        out.push_sql(" AND status = ");
        out.push_bind_param::<Text, _>(status_name(CertificateStatus::Pending))?;
        Ok(())
    }
}
