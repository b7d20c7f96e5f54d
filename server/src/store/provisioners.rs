//! Provisioner queries: external token issuers registered by an admin.
//!
//! Invariants: a name is never reused (a disabled provisioner keeps its
//! row, so its tokens stay attributable in the audit trail); the public key
//! is stored as given after the admin service validated it; every change is
//! audited in the same transaction.

use certmint::wire::ProvisionerInfo;
use certmint::Duration;
use diesel::prelude::*;
use serde_json::json;
use time::OffsetDateTime;

use super::connection::DbConnection;
use super::models::ProvisionerRow;
use super::schema::provisioners;
use super::{
    audit, from_unix, is_unique_violation, optional_from_unix, to_json, unix, Store, StoreError,
};
use crate::audit::{NewAuditEvent, PROVISIONER_DISABLED, PROVISIONER_REGISTERED};

/// A validated provisioner to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewProvisionerRecord {
    /// Unique name (`iss` of its tokens).
    pub name: String,
    /// SubjectPublicKeyInfo PEM.
    pub public_key_pem: String,
    /// The JWS algorithm its key type fixes.
    pub algorithm: String,
    /// The `kid` its tokens may carry.
    pub key_id: String,
    /// Policies its tokens may name.
    pub policies: Vec<String>,
    /// Longest token lifetime, seconds.
    pub max_token_ttl_seconds: u64,
}

impl Store {
    /// Registers a provisioner (audit `provisioner.registered`).
    pub fn insert_provisioner(
        &self,
        record: &NewProvisionerRecord,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<ProvisionerInfo, StoreError> {
        let row = ProvisionerRow {
            name: record.name.clone(),
            public_key_pem: record.public_key_pem.clone(),
            algorithm: record.algorithm.clone(),
            key_id: record.key_id.clone(),
            policies_json: to_json(&record.policies)?,
            max_token_ttl: i64::try_from(record.max_token_ttl_seconds)
                .map_err(|_| StoreError::corrupt("max_token_ttl out of range"))?,
            created_at: unix(now),
            created_by: actor.to_owned(),
            disabled_at: None,
        };
        let data = json!({
            "algorithm": record.algorithm,
            "key_id": record.key_id,
            "policies": record.policies,
            "max_token_ttl_seconds": record.max_token_ttl_seconds,
        });
        let event = NewAuditEvent::new(PROVISIONER_REGISTERED, actor, &record.name, data);
        let name = record.name.clone();
        self.write(move |conn| {
            match diesel::insert_into(provisioners::table)
                .values(&row)
                .execute(conn)
            {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::ProvisionerAlreadyExists { name })
                }
                other => other.map_err(StoreError::query)?,
            };
            audit::append(conn, &event, now)?;
            provisioner_from_row(row)
        })
    }

    /// A provisioner by name.
    pub fn provisioner(&self, name: &str) -> Result<Option<ProvisionerInfo>, StoreError> {
        self.read(|conn| provisioner_row(conn, name))?
            .map(provisioner_from_row)
            .transpose()
    }

    /// Every provisioner, by name. Not paginated: a deployment registers a
    /// handful (one per orchestrator), never thousands.
    pub fn list_provisioners(&self) -> Result<Vec<ProvisionerInfo>, StoreError> {
        self.read(|conn| {
            provisioners::table
                .order(provisioners::name.asc())
                .select(ProvisionerRow::as_select())
                .load(conn)
                .map_err(StoreError::query)
        })?
        .into_iter()
        .map(provisioner_from_row)
        .collect()
    }

    /// Disables a provisioner (audit `provisioner.disabled`): its tokens are
    /// refused from now on, and the records of those already seen are
    /// revoked in the same transaction. Disabling a
    /// disabled provisioner returns it unchanged and writes nothing.
    pub fn disable_provisioner(
        &self,
        name: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<ProvisionerInfo, StoreError> {
        let name = name.to_owned();
        let actor = actor.to_owned();
        self.write(move |conn| {
            let disabled = diesel::update(
                provisioners::table
                    .filter(provisioners::name.eq(&name))
                    .filter(provisioners::disabled_at.is_null()),
            )
            .set(provisioners::disabled_at.eq(unix(now)))
            .execute(conn)
            .map_err(StoreError::query)?;
            let row = provisioner_row(conn, &name)?
                .ok_or_else(|| StoreError::ProvisionerNotFound { name: name.clone() })?;
            if disabled == 1 {
                // Its recorded tokens too, in the same transaction: a token
                // verified just before this commit cannot then be consumed.
                let revoked = super::tokens::revoke_provisioner_tokens(conn, &name, now)?;
                audit::append(
                    conn,
                    &NewAuditEvent::new(
                        PROVISIONER_DISABLED,
                        &actor,
                        &name,
                        json!({ "token_records_revoked": revoked }),
                    ),
                    now,
                )?;
            }
            provisioner_from_row(row)
        })
    }
}

fn provisioner_row(
    conn: &mut DbConnection,
    name: &str,
) -> Result<Option<ProvisionerRow>, StoreError> {
    provisioners::table
        .filter(provisioners::name.eq(name))
        .select(ProvisionerRow::as_select())
        .get_result(conn)
        .optional()
        .map_err(StoreError::query)
}

fn provisioner_from_row(row: ProvisionerRow) -> Result<ProvisionerInfo, StoreError> {
    let what = format!("provisioner {:?}", row.name);
    let policies: Vec<String> = serde_json::from_str(&row.policies_json)
        .map_err(|_| StoreError::corrupt(format!("{what}: policies_json")))?;
    let max_token_ttl = u64::try_from(row.max_token_ttl)
        .ok()
        .and_then(Duration::from_seconds)
        .ok_or_else(|| StoreError::corrupt(format!("{what}: max_token_ttl out of range")))?;
    Ok(ProvisionerInfo {
        created_at: from_unix(row.created_at, &what)?,
        disabled_at: optional_from_unix(row.disabled_at, &what)?,
        name: row.name,
        algorithm: row.algorithm,
        key_id: row.key_id,
        public_key_pem: row.public_key_pem,
        policies,
        max_token_ttl,
        created_by: row.created_by,
    })
}
