//! Row structs: the exact shape of each table as diesel reads and writes it.
//!
//! Invariant: nothing here leaves `store`. Conversions to and from the wire
//! types live beside the queries of each entity, and every conversion that
//! can meet bad stored data returns `StoreError::Corrupt` instead of panicking.

use diesel::prelude::*;

use super::schema::{
    audit_events, bootstrap_tokens, ca_key_reservations, ca_state, certificate_revocations,
    certificates, policies, provisioners,
};

#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = policies)]
pub(super) struct PolicyRow {
    pub name: String,
    pub version: i64,
    pub spec_json: String,
    pub enabled: bool,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = bootstrap_tokens)]
pub(super) struct TokenRow {
    pub id: String,
    pub policy: String,
    pub identity_json: String,
    pub max_uses: i64,
    pub uses: i64,
    pub expires_at: i64,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
}

#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = provisioners)]
pub(super) struct ProvisionerRow {
    pub name: String,
    pub public_key_pem: String,
    pub algorithm: String,
    pub key_id: String,
    pub policies_json: String,
    pub max_token_ttl: i64,
    pub created_at: i64,
    pub created_by: String,
    pub disabled_at: Option<i64>,
}

#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = certificates)]
pub(super) struct CertificateRow {
    pub serial: String,
    pub status: String,
    pub policy: String,
    pub policy_version: i64,
    pub identity_json: String,
    pub key_type: String,
    pub subject_key_sha256: String,
    pub not_before: i64,
    pub not_after: i64,
    pub tbs_der: Vec<u8>,
    pub certificate_der: Option<Vec<u8>>,
    pub token_id: Option<String>,
    pub predecessor: Option<String>,
    pub created_at: i64,
    pub issued_at: Option<i64>,
    pub failure: Option<String>,
}

/// A certificate row without the (large) TBS and certificate bytes: what
/// lists need.
#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = certificates)]
pub(super) struct CertificateSummaryRow {
    pub serial: String,
    pub status: String,
    pub policy: String,
    pub policy_version: i64,
    pub identity_json: String,
    pub key_type: String,
    pub not_before: i64,
    pub not_after: i64,
    pub token_id: Option<String>,
    pub predecessor: Option<String>,
    pub created_at: i64,
}

#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = certificate_revocations)]
pub(super) struct RevocationRow {
    pub serial: String,
    pub revoked_at: i64,
    pub reason: String,
    pub revoked_by: String,
    pub invalidity_date: Option<i64>,
}

#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = ca_state)]
pub(super) struct CaStateRow {
    pub id: i32,
    pub root_der: Vec<u8>,
    pub issuing_der: Option<Vec<u8>>,
    pub root_key_label: Option<String>,
    pub issuing_key_label: String,
    pub issuing_key_type: String,
    pub pending_csr_der: Option<Vec<u8>>,
    pub created_at: i64,
    pub intermediates_der: Option<Vec<u8>>,
}

#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = ca_key_reservations)]
pub(super) struct CaKeyReservationRow {
    pub label: String,
    pub key_id: Vec<u8>,
    pub key_type: String,
    pub reserved_at: i64,
}

#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = audit_events)]
pub(super) struct AuditEventRow {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub data_json: String,
    pub prev_hash: String,
    pub hash: String,
}
