//! Recovery from issuances a crash interrupted: no `pending` row stays
//! pending for ever, and no token use is lost to a crash.
//!
//! A crash between `begin_issuance` and `complete_issuance` leaves a
//! `pending` row holding a consumed token use; a crash after the `issued`
//! commit but before the response loses only the response. Two ways out:
//!
//! - [`Store::reconcile_pending`]: every `pending` row created before a
//!   cutoff (now minus `issuance.pending_timeout`) is marked `failed`, its
//!   token use refunded and `certificate.failed` audited (with
//!   `"reconciled": true`), in one transaction per batch. Each row is taken
//!   by a conditional `UPDATE … WHERE status = 'pending' AND created_at <
//!   cutoff`, so any number of replicas may run it at once and each row is
//!   reconciled (and refunded) exactly once.
//! - [`Store::recover_used_up_token`]: what an enrollment whose token is
//!   used up can still get: its certificate again (issued for this token and
//!   this key), a refund of this token's stale pending rows (then retry), or
//!   word that an issuance of this token for this key (an earlier try of the
//!   same request) is still in flight.
//!
//! Invariant: a row is reconciled only while it is `pending`, and
//! `complete_issuance` marks a row issued only while it is `pending`, so a
//! request that outlives the cutoff fails instead of returning a certificate
//! whose record says `failed`. Never reconcile a row younger than the
//! cutoff: its request may still be signing on this or another replica.

use certmint::wire::{CertificateInfo, CertificateStatus};
use diesel::prelude::*;
use serde_json::json;
use time::OffsetDateTime;

use super::certificates::{full_row, info_with_pem, refund_and_audit_failure, status_name};
use super::connection::DbConnection;
use super::schema::certificates;
use super::{audit, unix, Store, StoreError};
use crate::audit::{NewAuditEvent, CERTIFICATE_REDELIVERED};

/// Actor recorded for reconciliation events.
const RECONCILER_ACTOR: &str = "system:reconciler";

/// The failure recorded on a reconciled row.
pub const RECONCILED_FAILURE: &str =
    "reconciled: still pending after issuance.pending_timeout (its request died or outlived the bound)";

/// Rows reconciled per transaction, so one sweep never holds the write
/// section (every write shares it) for long.
pub const RECONCILE_BATCH: i64 = 100;

/// What an enrollment whose token has no use left can still get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsedUpTokenRecovery {
    /// An issued, unexpired certificate recorded for this token and this
    /// subject key: the answer to an earlier request whose response was lost.
    /// Audited `certificate.redelivered`. Carries its PEM.
    Redeliver(Box<CertificateInfo>),
    /// This many pending rows of the token, older than the cutoff, were
    /// reconciled and their uses refunded: retry the issuance.
    Refunded(usize),
    /// A pending row of this token for this subject key is younger than
    /// the cutoff: an earlier try of the same request may still be in
    /// flight. Retry after a while.
    InFlight {
        /// When the youngest such row was recorded.
        pending_since: OffsetDateTime,
    },
    /// Nothing to recover: the token's uses went to other keys' certificates.
    UsedUp,
}

impl Store {
    /// Reconciles up to [`RECONCILE_BATCH`] `pending` rows created before
    /// `stale_before`, oldest first: each is marked `failed` with
    /// [`RECONCILED_FAILURE`], its token use (if any) refunded and
    /// `certificate.failed` audited, in one transaction. Returns how many
    /// rows this call reconciled; rows another replica took first are not
    /// counted. Call again while it returns [`RECONCILE_BATCH`].
    pub fn reconcile_pending(
        &self,
        stale_before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let stale_before = unix(stale_before);
        self.write(move |conn| reconcile_rows(conn, None, stale_before, now))
    }

    /// For an enrollment that found token `token_id` used up, in one
    /// transaction (only when a read finds something to do): redeliver an issued certificate of this token whose
    /// subject key hash is `subject_key_sha256` (not revoked, not expired at
    /// `now`); else reconcile this token's pending rows older than
    /// `stale_before` (refunding their uses, whatever their key); else
    /// report a younger pending row of this token for this key. See
    /// [`UsedUpTokenRecovery`].
    pub fn recover_used_up_token(
        &self,
        token_id: &str,
        subject_key_sha256: &str,
        stale_before: OffsetDateTime,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<UsedUpTokenRecovery, StoreError> {
        let token_id = token_id.to_owned();
        let subject_key_sha256 = subject_key_sha256.to_owned();
        let actor = actor.to_owned();
        let stale_before = unix(stale_before);
        // Most used-up tokens are races lost or replays: answered from a
        // read, without a write (every write shares one serial section).
        // The write transaction below checks everything again.
        let worth_a_write = self.read(|conn| {
            Ok(
                redeliverable(conn, &token_id, &subject_key_sha256, now)?.is_some()
                    || stale_pending(conn, &token_id, stale_before)?,
            )
        })?;
        if !worth_a_write {
            return self.read(|conn| in_flight_or_used_up(conn, &token_id, &subject_key_sha256));
        }
        self.write(move |conn| {
            if let Some(serial) = redeliverable(conn, &token_id, &subject_key_sha256, now)? {
                let (row, revocation) =
                    full_row(conn, &serial)?.ok_or_else(|| StoreError::CertificateNotFound {
                        serial: serial.clone(),
                    })?;
                let info = info_with_pem(row, revocation)?;
                let data = json!({
                    "token_id": token_id,
                    "subject_key_sha256": subject_key_sha256,
                });
                let event = NewAuditEvent::new(CERTIFICATE_REDELIVERED, &actor, &serial, data);
                audit::append(conn, &event, now)?;
                return Ok(UsedUpTokenRecovery::Redeliver(Box::new(info)));
            }
            let refunded = reconcile_rows(conn, Some(&token_id), stale_before, now)?;
            if refunded > 0 {
                return Ok(UsedUpTokenRecovery::Refunded(refunded));
            }
            in_flight_or_used_up(conn, &token_id, &subject_key_sha256)
        })
    }
}

/// The newest issued certificate of `token_id` for this subject key that is
/// still valid at `now` (`issued` excludes revoked ones).
fn redeliverable(
    conn: &mut DbConnection,
    token_id: &str,
    subject_key_sha256: &str,
    now: OffsetDateTime,
) -> Result<Option<String>, StoreError> {
    certificates::table
        .filter(certificates::token_id.eq(token_id))
        .filter(certificates::subject_key_sha256.eq(subject_key_sha256))
        .filter(certificates::status.eq(status_name(CertificateStatus::Issued)))
        .filter(certificates::not_after.gt(unix(now)))
        .order((certificates::created_at.desc(), certificates::serial.desc()))
        .select(certificates::serial)
        .first(conn)
        .optional()
        .map_err(StoreError::query)
}

/// Whether `token_id` has a pending row created before `stale_before`.
fn stale_pending(
    conn: &mut DbConnection,
    token_id: &str,
    stale_before: i64,
) -> Result<bool, StoreError> {
    let found: Option<String> = certificates::table
        .filter(certificates::token_id.eq(token_id))
        .filter(certificates::status.eq(status_name(CertificateStatus::Pending)))
        .filter(certificates::created_at.lt(stale_before))
        .select(certificates::serial)
        .first(conn)
        .optional()
        .map_err(StoreError::query)?;
    Ok(found.is_some())
}

/// In flight when `token_id` has a pending row for this subject key (only
/// such a row can be this client's own earlier try; a younger row for
/// another key is a parallel request that won the use, and the answer is
/// `token.used`, as without any crash); used up otherwise.
fn in_flight_or_used_up(
    conn: &mut DbConnection,
    token_id: &str,
    subject_key_sha256: &str,
) -> Result<UsedUpTokenRecovery, StoreError> {
    let youngest: Option<i64> = certificates::table
        .filter(certificates::token_id.eq(token_id))
        .filter(certificates::subject_key_sha256.eq(subject_key_sha256))
        .filter(certificates::status.eq(status_name(CertificateStatus::Pending)))
        .select(diesel::dsl::max(certificates::created_at))
        .get_result(conn)
        .map_err(StoreError::query)?;
    Ok(match youngest {
        Some(created_at) => UsedUpTokenRecovery::InFlight {
            pending_since: super::from_unix(created_at, "pending certificate")?,
        },
        None => UsedUpTokenRecovery::UsedUp,
    })
}

/// Reconciles, in the caller's write transaction, up to [`RECONCILE_BATCH`]
/// pending rows created before `stale_before` (only token `token_id`'s, when
/// given). Each row is claimed by its own conditional update, so a row
/// another transaction reconciled or completed meanwhile is skipped, and
/// its token is refunded only by the transaction whose update hit it.
fn reconcile_rows(
    conn: &mut DbConnection,
    token_id: Option<&str>,
    stale_before: i64,
    now: OffsetDateTime,
) -> Result<usize, StoreError> {
    let pending = status_name(CertificateStatus::Pending);
    let mut query = certificates::table
        .filter(certificates::status.eq(pending))
        .filter(certificates::created_at.lt(stale_before))
        .order((certificates::created_at.asc(), certificates::serial.asc()))
        .limit(RECONCILE_BATCH)
        .select((
            certificates::serial,
            certificates::token_id,
            certificates::created_at,
        ))
        .into_boxed();
    if let Some(token_id) = token_id {
        query = query.filter(certificates::token_id.eq(token_id));
    }
    let candidates: Vec<(String, Option<String>, i64)> =
        query.load(conn).map_err(StoreError::query)?;
    let mut reconciled = 0;
    for (serial, token, created_at) in candidates {
        let claimed = diesel::update(
            certificates::table
                .filter(certificates::serial.eq(&serial))
                .filter(certificates::status.eq(pending))
                .filter(certificates::created_at.lt(stale_before)),
        )
        .set((
            certificates::status.eq(status_name(CertificateStatus::Failed)),
            certificates::failure.eq(RECONCILED_FAILURE),
        ))
        .execute(conn)
        .map_err(StoreError::query)?;
        if claimed != 1 {
            continue;
        }
        refund_and_audit_failure(
            conn,
            &serial,
            RECONCILED_FAILURE,
            token.as_deref(),
            RECONCILER_ACTOR,
            json!({ "reconciled": true, "pending_since_unix": created_at }),
            now,
        )?;
        reconciled += 1;
    }
    if reconciled > 0 {
        tracing::info!(
            store.reconciled = reconciled,
            "pending certificates reconciled as failed"
        );
    }
    Ok(reconciled)
}
