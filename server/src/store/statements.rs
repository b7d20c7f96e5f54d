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
//! The same reason keeps `.first()` off the hot reads: it binds `LIMIT ?`,
//! and SQLite's planner uses that value, so every rebind expires the
//! prepared statement and the next step compiles it again. Single-row
//! lookups by key use `.get_result()` (no LIMIT), and the current policy
//! version is `MAX(version)`.
//!
//! Invariant: each type's SQL text is fixed; only bind values vary (a type
//! whose text varied would poison the cache, which is keyed by type). Every
//! statement here is valid in both dialects; diesel writes `?` or `$n` for
//! each bind.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Binary, HasSqlType, Integer, Nullable, Text};
use diesel::{QueryResult, RunQueryDsl};

use certmint::wire::CertificateStatus;

use super::certificates::status_name;
use super::models::{AuditEventRow, CertificateRow};

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
    /// PostgreSQL only: the first statement of every write transaction
    /// (see `write_transaction`).
    LockAuditHead = "SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"
);

fixed_statement!(
    /// Takes the audit chain's next sequence number (on PostgreSQL the
    /// transaction already holds the head row's lock: [`LockAuditHead`]).
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

/// Confirms, inside a renewal's intent and final transactions, that its
/// predecessor is still issued: changes exactly one row (to the value it has) or none. On
/// PostgreSQL the write also takes the row lock a concurrent revocation
/// needs, so one of the two waits for the other.
#[derive(Debug)]
pub(super) struct ConfirmIssued<'a> {
    pub(super) serial: &'a str,
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

/// Records a certificate (all columns).
#[derive(Debug)]
pub(super) struct InsertCertificate<'a> {
    pub(super) row: &'a CertificateRow,
}

/// Records when a certificate's renewal chain began.
#[derive(Debug)]
pub(super) struct InsertRenewalChain<'a> {
    pub(super) serial: &'a str,
    pub(super) chain_started_at_unix: i64,
}

/// Records which CRL shard a certificate belongs to.
#[derive(Debug)]
pub(super) struct InsertCrlAssignment<'a> {
    pub(super) serial: &'a str,
    pub(super) issuer_key_id: &'a str,
    pub(super) shard: i32,
}

/// Appends one audit event row (all columns).
#[derive(Debug)]
pub(super) struct InsertAuditEvent<'a> {
    pub(super) row: &'a AuditEventRow,
}

static_query_id!(InsertCertificate);
static_query_id!(InsertRenewalChain);
static_query_id!(InsertCrlAssignment);
static_query_id!(InsertAuditEvent);
static_query_id!(SetAuditHead);
static_query_id!(ConsumeTokenUse);
static_query_id!(MarkIssued);
static_query_id!(ConfirmIssued);

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

impl<DB> QueryFragment<DB> for ConfirmIssued<'_>
where
    DB: Backend + HasSqlType<Text>,
    str: ToSql<Text, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let issued = status_name(CertificateStatus::Issued);
        out.push_sql("UPDATE certificates SET status = ");
        out.push_bind_param::<Text, _>(issued)?;
        out.push_sql(" WHERE serial = ");
        out.push_bind_param::<Text, _>(self.serial)?;
        out.push_sql(" AND status = ");
        out.push_bind_param::<Text, _>(issued)?;
        Ok(())
    }
}

impl<DB> QueryFragment<DB> for InsertCertificate<'_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt> + HasSqlType<Binary>,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    [u8]: ToSql<Binary, DB>,
    Option<Vec<u8>>: ToSql<Nullable<Binary>, DB>,
    Option<String>: ToSql<Nullable<Text>, DB>,
    Option<i64>: ToSql<Nullable<BigInt>, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let row = self.row;
        out.push_sql(
            "INSERT INTO certificates (serial, status, policy, policy_version, \
             identity_json, key_type, subject_key_sha256, not_before, not_after, tbs_der, \
             certificate_der, token_id, predecessor, created_at, issued_at, failure) VALUES (",
        );
        out.push_bind_param::<Text, _>(row.serial.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.status.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.policy.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.policy_version)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.identity_json.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.key_type.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.subject_key_sha256.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.not_before)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.not_after)?;
        out.push_sql(", ");
        out.push_bind_param::<Binary, _>(row.tbs_der.as_slice())?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Binary>, _>(&row.certificate_der)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&row.token_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&row.predecessor)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.created_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<BigInt>, _>(&row.issued_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&row.failure)?;
        out.push_sql(")");
        Ok(())
    }
}

impl<DB> QueryFragment<DB> for InsertRenewalChain<'_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt>,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("INSERT INTO renewal_chains (serial, chain_started_at) VALUES (");
        out.push_bind_param::<Text, _>(self.serial)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.chain_started_at_unix)?;
        out.push_sql(")");
        Ok(())
    }
}

impl<DB> QueryFragment<DB> for InsertCrlAssignment<'_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<Integer>,
    str: ToSql<Text, DB>,
    i32: ToSql<Integer, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("INSERT INTO crl_assignments (serial, issuer_key_id, shard) VALUES (");
        out.push_bind_param::<Text, _>(self.serial)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.issuer_key_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Integer, _>(&self.shard)?;
        out.push_sql(")");
        Ok(())
    }
}

impl<DB> QueryFragment<DB> for InsertAuditEvent<'_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt>,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let row = self.row;
        out.push_sql(
            "INSERT INTO audit_events (seq, at, kind, actor, subject, data_json, prev_hash, hash) \
             VALUES (",
        );
        out.push_bind_param::<BigInt, _>(&row.seq)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.at)?;
        for text in [
            &row.kind,
            &row.actor,
            &row.subject,
            &row.data_json,
            &row.prev_hash,
            &row.hash,
        ] {
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(text.as_str())?;
        }
        out.push_sql(")");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use diesel::sqlite::Sqlite;
    use diesel::{debug_query, ExpressionMethods as _};

    use super::*;
    use crate::store::schema::{audit_events, certificates, renewal_chains};

    /// Diesel's own SQL for the same write, without its identifier quotes:
    /// the hand-written statements must name the same columns in the same
    /// order, so a column added to the schema cannot be silently skipped.
    fn diesel_sql(query: impl QueryFragment<Sqlite>) -> String {
        debug_query::<Sqlite, _>(&query)
            .to_string()
            .replace('`', "")
            .split(" -- binds")
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn ok_certificate_insert_names_every_column_in_schema_order() {
        // Every optional column set, so diesel names it too.
        let row = CertificateRow {
            serial: "01".into(),
            status: "issued".into(),
            policy: "p".into(),
            policy_version: 1,
            identity_json: "{}".into(),
            key_type: "ec-p256".into(),
            subject_key_sha256: "ab".into(),
            not_before: 1,
            not_after: 2,
            tbs_der: vec![1],
            certificate_der: Some(vec![2]),
            token_id: Some("t".into()),
            predecessor: Some("00".into()),
            created_at: 3,
            issued_at: Some(4),
            failure: Some("f".into()),
        };
        let hand_written = diesel_sql(InsertCertificate { row: &row });
        assert!(
            hand_written.starts_with("INSERT INTO certificates (serial, status, "),
            "{hand_written}"
        );
        assert_eq!(
            hand_written,
            diesel_sql(diesel::insert_into(certificates::table).values(&row))
        );
    }

    #[test]
    fn ok_audit_and_chain_inserts_name_every_column_in_schema_order() {
        let row = AuditEventRow {
            seq: 1,
            at: 2,
            kind: "k".into(),
            actor: "a".into(),
            subject: "s".into(),
            data_json: "{}".into(),
            prev_hash: "p".into(),
            hash: "h".into(),
        };
        assert_eq!(
            diesel_sql(InsertAuditEvent { row: &row }),
            diesel_sql(diesel::insert_into(audit_events::table).values(&row))
        );
        assert_eq!(
            diesel_sql(InsertRenewalChain {
                serial: "01",
                chain_started_at_unix: 5,
            }),
            diesel_sql(diesel::insert_into(renewal_chains::table).values((
                renewal_chains::serial.eq("01"),
                renewal_chains::chain_started_at.eq(5_i64),
            )))
        );
    }
}
