//! Certificate queries, in the crash-safe issuance order (STYLE item 4,
//! `docs/ISSUANCE.md`):
//!
//! 1. [`Store::begin_issuance`], one transaction: consume the token's use,
//!    record the certificate as `pending` with its TBS bytes (the serial's
//!    primary key is the collision check), audit `certificate.signing`.
//! 2. The caller signs on the HSM and verifies the result.
//! 3. [`Store::complete_issuance`]: `pending` -> `issued` with the DER, audit
//!    `certificate.issued`. Only then is the certificate returned.
//!
//! Revocations live in `certificate_revocations` (one row per serial),
//! joined into every read.
//!
//! If the signer fails, [`Store::abandon_issuance`] marks the row `failed`
//! and refunds the token's use. A crash between 1 and 3 leaves a `pending`
//! row with the TBS: the record of a certificate that may exist is never
//! lost, and no client received a certificate that is not recorded. Such
//! rows are reconciled once older than `issuance.pending_timeout` (see
//! `recovery`).

use certmint::wire::{
    CertificateInfo, CertificateStatus, Identity, KeyType, Page, RevocationReason,
};
use diesel::prelude::*;
use serde_json::json;
use time::OffsetDateTime;

use super::connection::DbConnection;
use super::models::{CertificateRow, CertificateSummaryRow, RevocationRow};
use super::schema::{certificate_revocations, certificates, policies, renewal_chains};
use super::statements::{
    ConfirmIssued, InsertCertificate, InsertCrlAssignment, InsertRenewalChain, MarkIssued,
};
use super::{
    audit, cursor_hex, cursor_int, decode_cursor, encode_cursor, from_unix, identity_from_json,
    is_unique_violation, optional_from_unix, page_of, page_size, sha256_hex, to_json, tokens, unix,
    Store, StoreError,
};
use crate::audit::{
    NewAuditEvent, CERTIFICATE_FAILED, CERTIFICATE_ISSUED, CERTIFICATE_REVOKED, CERTIFICATE_SIGNING,
};

/// Actor recorded for the store's own follow-up events.
const SYSTEM_ACTOR: &str = "system";

/// A certificate about to be signed: everything recorded before the HSM call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCertificate {
    /// Lower-case hex serial (16 random bytes, positive).
    pub serial: String,
    /// Policy that allowed it.
    pub policy: String,
    /// Version of that policy.
    pub policy_version: i64,
    /// Names in the certificate.
    pub identity: Identity,
    /// Subject key type.
    pub key_type: KeyType,
    /// SHA-256 of the subject's SubjectPublicKeyInfo DER, hex.
    pub subject_key_sha256: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The DER TBSCertificate the HSM will sign.
    pub tbs_der: Vec<u8>,
    /// Which CRL will list it if it is revoked: its issuer's key id and
    /// the shard of that issuer's CRLs (chosen from `not_after`).
    pub crl: CrlAssignment,
    /// Bootstrap token used, for enrollments.
    pub token_id: Option<String>,
    /// Serial of the certificate this one renews.
    pub predecessor: Option<String>,
    /// When the chain of renewals this certificate belongs to began: the
    /// first enrollment's time (equal to now for an enrollment).
    pub chain_started_at: OffsetDateTime,
    /// Record the intent only while `policy_version` is still the newest
    /// version of `policy` in the database ([`StoreError::PolicyChanged`]
    /// otherwise). False only for the server's own certificates, whose
    /// built-in policy is not stored.
    pub require_current_policy: bool,
}

/// The CRL a certificate belongs to, fixed when it is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlAssignment {
    /// Lower-case hex of the issuer's subject key identifier.
    pub issuer_key_id: String,
    /// Shard number within that issuer's CRLs.
    pub shard: u32,
}

/// A revocation: why, and (for a key compromise) since when the key is
/// known or suspected to be compromised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The RFC 5280 reason.
    pub reason: RevocationReason,
    /// The CRL entry's invalidityDate, when known.
    pub invalidity_date: Option<OffsetDateTime>,
}

impl From<RevocationReason> for Revocation {
    fn from(reason: RevocationReason) -> Self {
        Revocation {
            reason,
            invalidity_date: None,
        }
    }
}

/// A certificate as stored, for checks against a presented certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRecord {
    /// The inventory view (status, names, policy, dates, revocation).
    pub info: CertificateInfo,
    /// The signed DER, once issued.
    pub certificate_der: Option<Vec<u8>>,
    /// When its renewal chain began (first enrollment).
    pub chain_started_at: OffsetDateTime,
}

/// Inventory filters; all present filters must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateFilter {
    /// Only certificates of this policy.
    pub policy: Option<String>,
    /// Only certificates in this state.
    pub status: Option<CertificateStatus>,
    /// Only issued certificates whose `not_after` lies in this window.
    pub expiring: Option<ExpiryWindow>,
}

/// "Expiring within": issued certificates still valid at `from` whose
/// `not_after` comes at or before `until`. Expired ones are not expiring:
/// every renewed predecessor would pile up in the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiryWindow {
    /// Normally now: `not_after` must be after it.
    pub from: OffsetDateTime,
    /// `not_after` must be at or before it.
    pub until: OffsetDateTime,
}

impl Store {
    /// Step 1 of issuance, in one transaction: check that the policy version
    /// is still current (when `cert.require_current_policy`), consume one use
    /// of `token_use` (if any), record `cert` as `pending`, audit
    /// `certificate.signing`. A superseded policy version is
    /// [`StoreError::PolicyChanged`] (nothing is written).
    ///
    /// Token refusals are precise: [`StoreError::TokenUnknown`],
    /// [`StoreError::TokenRevoked`], [`StoreError::TokenExpired`],
    /// [`StoreError::TokenUsedUp`]. A renewal (`cert.predecessor`) whose
    /// predecessor is no longer `issued` is [`StoreError::PredecessorRevoked`].
    /// A taken serial is
    /// [`StoreError::SerialCollision`] (nothing is consumed; pick a new serial
    /// and call again). `token_use` is normally `cert.token_id`; renewals
    /// pass `None`.
    pub fn begin_issuance(
        &self,
        cert: &NewCertificate,
        token_use: Option<&str>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let row = CertificateRow {
            serial: cert.serial.clone(),
            status: status_name(CertificateStatus::Pending).to_owned(),
            policy: cert.policy.clone(),
            policy_version: cert.policy_version,
            identity_json: to_json(&cert.identity)?,
            key_type: cert.key_type.as_str().to_owned(),
            subject_key_sha256: cert.subject_key_sha256.clone(),
            not_before: unix(cert.not_before),
            not_after: unix(cert.not_after),
            tbs_der: cert.tbs_der.clone(),
            certificate_der: None,
            token_id: cert.token_id.clone(),
            predecessor: cert.predecessor.clone(),
            created_at: unix(now),
            issued_at: None,
            failure: None,
        };
        let crl_shard = shard_column(cert.crl.shard)?;
        let crl_issuer = cert.crl.issuer_key_id.clone();
        let data = json!({
            "policy": cert.policy,
            "policy_version": cert.policy_version,
            "identity": cert.identity,
            "key_type": cert.key_type.as_str(),
            "subject_key_sha256": cert.subject_key_sha256,
            "not_before_unix": row.not_before,
            "not_after_unix": row.not_after,
            "tbs_sha256": sha256_hex(&cert.tbs_der),
            "token_id": token_use,
            "predecessor": cert.predecessor,
        });
        let event = NewAuditEvent::new(CERTIFICATE_SIGNING, actor, &cert.serial, data);
        let token_use = token_use.map(str::to_owned);
        let chain_started_at = unix(cert.chain_started_at);
        let require_current_policy = cert.require_current_policy;
        self.write(move |conn| {
            if require_current_policy {
                // In the transaction that consumes the token: the version the
                // request was evaluated under is the one in force at commit.
                let current: Option<i64> = policies::table
                    .filter(policies::name.eq(&row.policy))
                    .select(diesel::dsl::max(policies::version))
                    .get_result(conn)
                    .map_err(StoreError::query)?;
                if current != Some(row.policy_version) {
                    return Err(StoreError::PolicyChanged {
                        name: row.policy,
                        evaluated: row.policy_version,
                    });
                }
            }
            if let Some(token_id) = &token_use {
                tokens::consume_use(conn, token_id, now)?;
            }
            if let Some(predecessor) = &row.predecessor {
                // The holder's certificate was checked before this
                // transaction; a revocation committed since must still stop
                // the renewal.
                confirm_still_issued(conn, predecessor)?;
            }
            match (InsertCertificate { row: &row }).execute(conn) {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::SerialCollision { serial: row.serial })
                }
                other => other.map_err(StoreError::query)?,
            };
            InsertRenewalChain {
                serial: &row.serial,
                chain_started_at_unix: chain_started_at,
            }
            .execute(conn)
            .map_err(StoreError::query)?;
            InsertCrlAssignment {
                serial: &row.serial,
                issuer_key_id: &crl_issuer,
                shard: crl_shard,
            }
            .execute(conn)
            .map_err(StoreError::query)?;
            audit::append(conn, &event, now)?;
            Ok(())
        })
    }

    /// Step 3 of issuance: stores the signed DER and marks the `pending` row
    /// `issued` (audit `certificate.issued`). Fails with
    /// [`StoreError::CertificateNotPending`] unless exactly one pending row
    /// had this serial, so it never runs twice; with
    /// [`StoreError::IssuanceWithdrawn`] when the row was reconciled as
    /// failed meanwhile (it outlived `issuance.pending_timeout`); with
    /// [`StoreError::PredecessorRevoked`] for a renewal (`predecessor`) whose
    /// predecessor was revoked while it was being signed (the caller abandons
    /// it: nobody has received it).
    pub fn complete_issuance(
        &self,
        serial: &str,
        predecessor: Option<&str>,
        certificate_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let data = json!({ "certificate_sha256": sha256_hex(certificate_der) });
        let event = NewAuditEvent::new(CERTIFICATE_ISSUED, SYSTEM_ACTOR, serial, data);
        let serial = serial.to_owned();
        let certificate_der = certificate_der.to_vec();
        let predecessor = predecessor.map(str::to_owned);
        self.write(move |conn| {
            if let Some(predecessor) = &predecessor {
                confirm_still_issued(conn, predecessor)?;
            }
            let updated = MarkIssued {
                serial: &serial,
                certificate_der: &certificate_der,
                issued_at_unix: unix(now),
            }
            .execute(conn)
            .map_err(StoreError::query)?;
            if updated != 1 {
                return Err(match not_pending(conn, &serial)? {
                    // Only reconciliation fails a row while its request is
                    // still signing (`abandon_issuance` runs in that request).
                    StoreError::CertificateNotPending {
                        status: CertificateStatus::Failed,
                        serial,
                    } => StoreError::IssuanceWithdrawn { serial },
                    other => other,
                });
            }
            audit::append(conn, &event, now)?;
            Ok(())
        })
    }

    /// Issuance failed after its intent was recorded: marks the `pending`
    /// row `failed` with the reason, and gives back one use of
    /// `refund_token` (the client received no certificate, so it may retry
    /// with the same token). Audit `certificate.failed`, whose reason says
    /// which step failed.
    ///
    /// Call it only while no certificate for this serial has left the
    /// process: the signer returned an error, the post-signing check refused
    /// what it returned, or recording the signed certificate failed (its
    /// bytes are then dropped, never sent). A row this call cannot reach
    /// (the database is down) stays `pending` until
    /// [`Store::reconcile_pending`] fails it and refunds the use.
    pub fn abandon_issuance(
        &self,
        serial: &str,
        failure: &str,
        refund_token: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let serial = serial.to_owned();
        let failure = failure.to_owned();
        let refund_token = refund_token.map(str::to_owned);
        self.write(move |conn| {
            let updated = diesel::update(
                certificates::table
                    .filter(certificates::serial.eq(&serial))
                    .filter(certificates::status.eq(status_name(CertificateStatus::Pending))),
            )
            .set((
                certificates::status.eq(status_name(CertificateStatus::Failed)),
                certificates::failure.eq(&failure),
            ))
            .execute(conn)
            .map_err(StoreError::query)?;
            if updated != 1 {
                return Err(not_pending(conn, &serial)?);
            }
            refund_and_audit_failure(
                conn,
                &serial,
                &failure,
                refund_token.as_deref(),
                SYSTEM_ACTOR,
                json!({}),
                now,
            )
        })
    }

    /// One certificate, with its PEM once issued (or revoked).
    pub fn certificate(&self, serial: &str) -> Result<Option<CertificateInfo>, StoreError> {
        self.read(|conn| full_row(conn, serial))?
            .map(|(row, revocation)| info_with_pem(row, revocation))
            .transpose()
    }

    /// The stored record of a certificate, with its DER and renewal
    /// lineage: what mTLS renewal and self-revocation check a presented
    /// certificate against.
    pub fn certificate_record(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        let found = self.read(|conn| {
            let Some(full) = full_row(conn, serial)? else {
                return Ok(None);
            };
            let started: Option<i64> = renewal_chains::table
                .filter(renewal_chains::serial.eq(serial))
                .select(renewal_chains::chain_started_at)
                .get_result(conn)
                .optional()
                .map_err(StoreError::query)?;
            Ok(Some((full, started)))
        })?;
        let Some(((row, revocation), started)) = found else {
            return Ok(None);
        };
        let what = format!("certificate {serial}");
        let chain_started_at = from_unix(
            started.ok_or_else(|| StoreError::corrupt(format!("{what}: no renewal chain row")))?,
            &what,
        )?;
        let certificate_der = row.certificate_der.clone();
        let mut info = info_with_pem(row, revocation)?;
        info.certificate_pem = None;
        Ok(Some(CertificateRecord {
            info,
            certificate_der,
            chain_started_at,
        }))
    }

    /// The inventory, newest first (ties broken by serial), without PEM.
    pub fn list_certificates(
        &self,
        filter: &CertificateFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<CertificateInfo>, StoreError> {
        let after = cursor
            .map(|cursor| {
                let [created_at, serial] = decode_cursor::<2>(cursor)?;
                Ok::<_, StoreError>((cursor_int(&created_at)?, cursor_hex(serial)?))
            })
            .transpose()?;
        let size = page_size(limit);
        let rows = self.read(|conn| {
            let mut query = certificates::table
                .left_join(certificate_revocations::table)
                .order((certificates::created_at.desc(), certificates::serial.desc()))
                .limit(size as i64 + 1)
                .select((CertificateSummaryRow::as_select(), revocation_columns()))
                .into_boxed();
            if let Some(policy) = &filter.policy {
                query = query.filter(certificates::policy.eq(policy));
            }
            if let Some(status) = filter.status {
                query = query.filter(certificates::status.eq(status_name(status)));
            }
            if let Some(window) = filter.expiring {
                query = query
                    .filter(certificates::not_after.gt(unix(window.from)))
                    .filter(certificates::not_after.le(unix(window.until)))
                    .filter(certificates::status.eq(status_name(CertificateStatus::Issued)));
            }
            if let Some((created_at, serial)) = &after {
                query = query.filter(
                    certificates::created_at
                        .lt(*created_at)
                        .or(certificates::created_at
                            .eq(*created_at)
                            .and(certificates::serial.lt(serial))),
                );
            }
            query.load(conn).map_err(StoreError::query)
        })?;
        page_of(
            rows,
            size,
            |(row, _)| encode_cursor(&[&row.created_at.to_string(), &row.serial]),
            |(row, revocation)| info_from_summary(row, revocation),
        )
    }

    /// Revokes an issued certificate (audit `certificate.revoked`). For
    /// `key_compromise`, also every issued certificate renewed from it,
    /// directly or through others (each audited with `cascaded_from`):
    /// their renewals were authorized by the compromised key, and a thief
    /// holding it could have renewed too. Other reasons revoke only this
    /// certificate; its successor (new key) stays valid.
    ///
    /// [`StoreError::CertificateNotFound`], [`StoreError::CertificateAlreadyRevoked`],
    /// or [`StoreError::CertificateNotIssued`] for pending and failed rows.
    ///
    /// The revocation moves the generation of each revoked certificate's
    /// CRL shard on in the same transaction, so the CRL publisher of any
    /// replica sees the shard stale at its next look.
    pub fn revoke_certificate(
        &self,
        serial: &str,
        revocation: Revocation,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<CertificateInfo, StoreError> {
        let serial = serial.to_owned();
        let actor = actor.to_owned();
        let reason = revocation.reason;
        self.write(move |conn| {
            if mark_revoked(conn, &serial)? != 1 {
                let Some((row, revocation)) = full_row(conn, &serial)? else {
                    return Err(StoreError::CertificateNotFound {
                        serial: serial.clone(),
                    });
                };
                let what = format!("certificate {serial}");
                return Err(match parse_status(&row.status, &what)? {
                    CertificateStatus::Revoked => StoreError::CertificateAlreadyRevoked {
                        serial: serial.clone(),
                        revoked_at: optional_from_unix(revocation.0, &what)?,
                    },
                    status => StoreError::CertificateNotIssued {
                        serial: serial.clone(),
                        status,
                    },
                });
            }
            record_revocation(conn, &serial, revocation, &actor, None, now)?;
            if reason == RevocationReason::KeyCompromise {
                revoke_descendants(conn, &serial, revocation, &actor, now)?;
            }
            let (row, revocation) =
                full_row(conn, &serial)?.ok_or_else(|| StoreError::CertificateNotFound {
                    serial: serial.clone(),
                })?;
            info_with_pem(row, revocation)
        })
    }

    /// How many certificates are in `status`.
    pub fn count_certificates(&self, status: CertificateStatus) -> Result<i64, StoreError> {
        self.read(|conn| {
            certificates::table
                .filter(certificates::status.eq(status_name(status)))
                .count()
                .get_result(conn)
                .map_err(StoreError::query)
        })
    }
}

/// Marks `serial` revoked if it is issued; how many rows changed (0 or 1).
fn mark_revoked(conn: &mut DbConnection, serial: &str) -> Result<usize, StoreError> {
    diesel::update(
        certificates::table
            .filter(certificates::serial.eq(serial))
            .filter(certificates::status.eq(status_name(CertificateStatus::Issued))),
    )
    .set(certificates::status.eq(status_name(CertificateStatus::Revoked)))
    .execute(conn)
    .map_err(StoreError::query)
}

/// The revocation row and audit event of `serial`, already marked revoked;
/// `cascaded_from` names the certificate whose revocation caused it.
fn record_revocation(
    conn: &mut DbConnection,
    serial: &str,
    revocation: Revocation,
    actor: &str,
    cascaded_from: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let reason = revocation.reason;
    diesel::insert_into(certificate_revocations::table)
        .values(RevocationRow {
            serial: serial.to_owned(),
            revoked_at: unix(now),
            reason: reason.as_str().to_owned(),
            revoked_by: actor.to_owned(),
            invalidity_date: revocation.invalidity_date.map(unix),
        })
        .execute(conn)
        .map_err(StoreError::query)?;
    super::crls::mark_shard_stale(conn, serial)?;
    let mut data = json!({ "reason": reason.as_str(), "reason_code": reason.code() });
    if let Some(invalid_since) = revocation.invalidity_date {
        data["invalidity_date"] = json!(unix(invalid_since));
    }
    if let Some(origin) = cascaded_from {
        data["cascaded_from"] = json!(origin);
    }
    audit::append(
        conn,
        &NewAuditEvent::new(CERTIFICATE_REVOKED, actor, serial, data),
        now,
    )?;
    Ok(())
}

/// Revokes every issued certificate renewed from `root`, generation by
/// generation. Renewal chains are acyclic (a successor is inserted after
/// its predecessor exists), so the walk ends; pending renewals need no
/// revocation, since their final write requires an issued predecessor.
fn revoke_descendants(
    conn: &mut DbConnection,
    root: &str,
    reason: Revocation,
    actor: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let mut frontier = vec![root.to_owned()];
    while !frontier.is_empty() {
        let children: Vec<String> = certificates::table
            .filter(certificates::predecessor.eq_any(&frontier))
            .filter(certificates::status.eq(status_name(CertificateStatus::Issued)))
            .select(certificates::serial)
            .load(conn)
            .map_err(StoreError::query)?;
        for child in &children {
            mark_revoked(conn, child)?;
            record_revocation(conn, child, reason, actor, Some(root), now)?;
        }
        frontier = children;
    }
    Ok(())
}

/// A renewal's predecessor is still `issued` ([`StoreError::PredecessorRevoked`]
/// otherwise). [`ConfirmIssued`] writes the row, so on PostgreSQL it waits
/// for a revocation in flight instead of reading around it.
fn confirm_still_issued(conn: &mut DbConnection, predecessor: &str) -> Result<(), StoreError> {
    let still_issued = ConfirmIssued {
        serial: predecessor,
    }
    .execute(conn)
    .map_err(StoreError::query)?;
    if still_issued != 1 {
        return Err(StoreError::PredecessorRevoked {
            serial: predecessor.to_owned(),
        });
    }
    Ok(())
}

/// What follows marking a pending row `failed` (a failed signing, or a
/// reconciled crash): the token use it held is given back and
/// `certificate.failed` is audited, with `extra`'s fields (an object)
/// added to the event's data. Part of the caller's transaction.
pub(super) fn refund_and_audit_failure(
    conn: &mut DbConnection,
    serial: &str,
    failure: &str,
    refund_token: Option<&str>,
    actor: &str,
    extra: serde_json::Value,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let refunded = match refund_token {
        Some(token_id) => tokens::refund_use(conn, token_id)?,
        None => false,
    };
    if refund_token.is_some() && !refunded {
        tracing::warn!(cert.serial = %serial, "token use to refund not found");
    }
    let mut data = json!({
        "failure": failure,
        "refunded_token": refund_token.filter(|_| refunded),
    });
    if let (Some(data), serde_json::Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    let event = NewAuditEvent::new(CERTIFICATE_FAILED, actor, serial, data);
    audit::append(conn, &event, now)?;
    Ok(())
}

/// The error for a serial that is not (or no longer) pending.
fn not_pending(conn: &mut DbConnection, serial: &str) -> Result<StoreError, StoreError> {
    let status: Option<String> = certificates::table
        .filter(certificates::serial.eq(serial))
        .select(certificates::status)
        .get_result(conn)
        .optional()
        .map_err(StoreError::query)?;
    Ok(match status {
        None => StoreError::CertificateNotFound {
            serial: serial.to_owned(),
        },
        Some(status) => StoreError::CertificateNotPending {
            serial: serial.to_owned(),
            status: parse_status(&status, &format!("certificate {serial}"))?,
        },
    })
}

/// `(revoked_at, reason)` of the joined revocation, if any.
pub(super) type RevocationColumns = (Option<i64>, Option<String>);

fn revocation_columns() -> (
    diesel::dsl::Nullable<certificate_revocations::revoked_at>,
    diesel::dsl::Nullable<certificate_revocations::reason>,
) {
    (
        certificate_revocations::revoked_at.nullable(),
        certificate_revocations::reason.nullable(),
    )
}

pub(super) fn full_row(
    conn: &mut DbConnection,
    serial: &str,
) -> Result<Option<(CertificateRow, RevocationColumns)>, StoreError> {
    certificates::table
        .left_join(certificate_revocations::table)
        .filter(certificates::serial.eq(serial))
        .select((CertificateRow::as_select(), revocation_columns()))
        .get_result(conn)
        .optional()
        .map_err(StoreError::query)
}

pub(super) fn info_with_pem(
    row: CertificateRow,
    revocation: RevocationColumns,
) -> Result<CertificateInfo, StoreError> {
    let what = format!("certificate {}", row.serial);
    let certificate_pem = row
        .certificate_der
        .as_deref()
        .map(|der| {
            der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der)
                .map_err(|e| StoreError::corrupt(format!("{what}: {e}")))
        })
        .transpose()?;
    let summary = CertificateSummaryRow {
        serial: row.serial,
        status: row.status,
        policy: row.policy,
        policy_version: row.policy_version,
        identity_json: row.identity_json,
        key_type: row.key_type,
        not_before: row.not_before,
        not_after: row.not_after,
        token_id: row.token_id,
        predecessor: row.predecessor,
        created_at: row.created_at,
    };
    let mut info = info_from_summary(summary, revocation)?;
    info.certificate_pem = certificate_pem;
    Ok(info)
}

fn info_from_summary(
    row: CertificateSummaryRow,
    (revoked_at, revocation_reason): RevocationColumns,
) -> Result<CertificateInfo, StoreError> {
    let what = format!("certificate {}", row.serial);
    Ok(CertificateInfo {
        status: parse_status(&row.status, &what)?,
        identity: identity_from_json(&row.identity_json, &what)?,
        not_before: from_unix(row.not_before, &what)?,
        not_after: from_unix(row.not_after, &what)?,
        created_at: from_unix(row.created_at, &what)?,
        revoked_at: optional_from_unix(revoked_at, &what)?,
        revocation_reason: revocation_reason
            .as_deref()
            .map(|name| parse_reason(name, &what))
            .transpose()?,
        certificate_pem: None,
        serial: row.serial,
        policy: row.policy,
        policy_version: row.policy_version,
        key_type: row.key_type,
        token_id: row.token_id,
        predecessor: row.predecessor,
    })
}

/// The stored name of a status (the wire name).
pub(super) fn status_name(status: CertificateStatus) -> &'static str {
    match status {
        CertificateStatus::Pending => "pending",
        CertificateStatus::Issued => "issued",
        CertificateStatus::Revoked => "revoked",
        CertificateStatus::Failed => "failed",
    }
}

fn parse_status(name: &str, what: &str) -> Result<CertificateStatus, StoreError> {
    [
        CertificateStatus::Pending,
        CertificateStatus::Issued,
        CertificateStatus::Revoked,
        CertificateStatus::Failed,
    ]
    .into_iter()
    .find(|status| status_name(*status) == name)
    .ok_or_else(|| StoreError::corrupt(format!("{what}: unknown status {name:?}")))
}

pub(super) fn parse_reason(name: &str, what: &str) -> Result<RevocationReason, StoreError> {
    RevocationReason::ALL
        .into_iter()
        .find(|reason| reason.as_str() == name)
        .ok_or_else(|| StoreError::corrupt(format!("{what}: unknown revocation reason {name:?}")))
}

/// A shard number as its INTEGER column holds it.
pub(super) fn shard_column(shard: u32) -> Result<i32, StoreError> {
    i32::try_from(shard).map_err(|_| StoreError::corrupt(format!("CRL shard {shard} out of range")))
}
