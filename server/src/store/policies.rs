//! Policy queries. Every write adds a version: `(name, version)` is the
//! primary key, so two replicas replacing the same policy at once cannot
//! both write version N; the loser retries with N + 1.
//!
//! The `enabled` and `name` columns are authoritative over the copies inside
//! `spec_json`.

use certmint::wire::{Page, Policy, PolicySpec};
use diesel::prelude::*;
use serde_json::json;
use time::OffsetDateTime;

use super::connection::DbConnection;
use super::models::PolicyRow;
use super::schema::policies;
use super::{
    audit, decode_cursor, encode_cursor, from_json, from_unix, is_unique_violation, page_of,
    page_size, to_json, unix, Store, StoreError,
};
use crate::audit::{NewAuditEvent, POLICY_CREATED, POLICY_DISABLED, POLICY_REPLACED};

impl Store {
    /// Creates version 1 of a policy; [`StoreError::PolicyAlreadyExists`] if
    /// the name is taken (by any version, enabled or not).
    pub fn create_policy(
        &self,
        spec: &PolicySpec,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Policy, StoreError> {
        let row = new_row(spec, 1, actor, now)?;
        let event = version_event(POLICY_CREATED, &row, actor);
        let name = spec.name.clone();
        self.write(move |conn| {
            match diesel::insert_into(policies::table)
                .values(&row)
                .execute(conn)
            {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::PolicyAlreadyExists { name })
                }
                other => other.map_err(StoreError::query)?,
            };
            audit::append(conn, &event, now)?;
            policy_from_row(row)
        })
    }

    /// Writes `spec` as the policy's next version;
    /// [`StoreError::PolicyNotFound`] if it has none yet.
    pub fn replace_policy(
        &self,
        spec: &PolicySpec,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Policy, StoreError> {
        let spec = spec.clone();
        let actor = actor.to_owned();
        self.write_retrying(move |conn| {
            let current =
                current_row(conn, &spec.name)?.ok_or_else(|| StoreError::PolicyNotFound {
                    name: spec.name.clone(),
                })?;
            let row = new_row(&spec, current.version + 1, &actor, now)?;
            insert_version(conn, &row)?;
            audit::append(conn, &version_event(POLICY_REPLACED, &row, &actor), now)?;
            policy_from_row(row)
        })
    }

    /// Writes a new version of the policy with `enabled: false`. A policy
    /// that is already disabled is returned unchanged (no new version).
    pub fn disable_policy(
        &self,
        name: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Policy, StoreError> {
        let name = name.to_owned();
        let actor = actor.to_owned();
        self.write_retrying(move |conn| {
            let current = current_row(conn, &name)?
                .ok_or_else(|| StoreError::PolicyNotFound { name: name.clone() })?;
            if !current.enabled {
                return policy_from_row(current);
            }
            let mut spec = policy_from_row(current.clone())?.spec;
            spec.enabled = false;
            let row = new_row(&spec, current.version + 1, &actor, now)?;
            insert_version(conn, &row)?;
            audit::append(conn, &version_event(POLICY_DISABLED, &row, &actor), now)?;
            policy_from_row(row)
        })
    }

    /// The newest version of a policy, if it exists.
    pub fn current_policy(&self, name: &str) -> Result<Option<Policy>, StoreError> {
        self.read(|conn| current_row(conn, name))?
            .map(policy_from_row)
            .transpose()
    }

    /// The current version of every policy, ordered by name.
    pub fn list_policies(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Policy>, StoreError> {
        let after = cursor
            .map(|cursor| decode_cursor::<1>(cursor).map(|[name]| name))
            .transpose()?;
        let size = page_size(limit);
        let rows = self.read(|conn| {
            let newer = diesel::alias!(policies as newer);
            let latest_version = newer
                .filter(newer.field(policies::name).eq(policies::name))
                .select(diesel::dsl::max(newer.field(policies::version)))
                .single_value();
            let mut query = policies::table
                .filter(policies::version.nullable().eq(latest_version))
                .order(policies::name.asc())
                .limit(size as i64 + 1)
                .select(PolicyRow::as_select())
                .into_boxed();
            if let Some(after) = &after {
                query = query.filter(policies::name.gt(after));
            }
            query.load(conn).map_err(StoreError::query)
        })?;
        page_of(
            rows,
            size,
            |row| encode_cursor(&[&row.name]),
            policy_from_row,
        )
    }
}

fn current_row(conn: &mut DbConnection, name: &str) -> Result<Option<PolicyRow>, StoreError> {
    policies::table
        .filter(policies::name.eq(name))
        .order(policies::version.desc())
        .select(PolicyRow::as_select())
        .first(conn)
        .optional()
        .map_err(StoreError::query)
}

/// Inserts a version; a taken `(name, version)` means another writer won
/// the race, reported as [`StoreError::Conflict`] so the write is retried.
fn insert_version(conn: &mut DbConnection, row: &PolicyRow) -> Result<(), StoreError> {
    match diesel::insert_into(policies::table)
        .values(row)
        .execute(conn)
    {
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict {
            what: "policy version",
        }),
        other => other.map(drop).map_err(StoreError::query),
    }
}

fn new_row(
    spec: &PolicySpec,
    version: i64,
    actor: &str,
    now: OffsetDateTime,
) -> Result<PolicyRow, StoreError> {
    Ok(PolicyRow {
        name: spec.name.clone(),
        version,
        spec_json: to_json(spec)?,
        enabled: spec.enabled,
        created_at: unix(now),
        created_by: actor.to_owned(),
    })
}

/// The audit event for a new version; its data holds the whole spec (a
/// policy holds no secret), so the log shows what each version allowed.
fn version_event(kind: &str, row: &PolicyRow, actor: &str) -> NewAuditEvent {
    let spec = serde_json::from_str(&row.spec_json).unwrap_or(serde_json::Value::Null);
    NewAuditEvent::new(
        kind,
        actor,
        &row.name,
        json!({ "version": row.version, "enabled": row.enabled, "spec": spec }),
    )
}

fn policy_from_row(row: PolicyRow) -> Result<Policy, StoreError> {
    let what = format!("policy {:?} version {}", row.name, row.version);
    let mut spec: PolicySpec = from_json(&row.spec_json, &what)?;
    spec.name = row.name;
    spec.enabled = row.enabled;
    Ok(Policy {
        spec,
        version: row.version,
        created_at: from_unix(row.created_at, &what)?,
    })
}
