//! Bootstrap token queries. A token's uses are consumed by a conditional
//! `UPDATE … SET uses = uses + 1 WHERE uses < max_uses AND revoked_at IS NULL
//! AND expires_at > now` that must hit exactly one row (see
//! [`consume_use`]), in the same transaction that records the certificate.
//! The JWT itself is never stored or audited: only its `jti` (the id).

use certmint::wire::{Identity, Page, TokenInfo};
use diesel::prelude::*;
use serde_json::json;
use time::OffsetDateTime;

use super::connection::DbConnection;
use super::models::TokenRow;
use super::schema::{bootstrap_tokens, provisioners};
use super::statements::ConsumeTokenUse;
use super::{
    audit, cursor_int, decode_cursor, encode_cursor, from_unix, identity_from_json,
    is_unique_violation, optional_from_unix, page_of, page_size, to_json, unix, Store, StoreError,
};
use crate::audit::{NewAuditEvent, TOKEN_MINTED, TOKEN_REVOKED};

/// A bootstrap token to record when it is minted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    /// Token id, also the JWT's `jti`.
    pub id: String,
    /// Policy the token enrolls under.
    pub policy: String,
    /// Names (or narrower patterns) the holder may request.
    pub identity: Identity,
    /// Enrollments allowed (at least 1).
    pub max_uses: u32,
    /// When the token stops working.
    pub expires_at: OffsetDateTime,
}

impl Store {
    /// Records a minted token (audit `token.minted`, without the JWT).
    pub fn insert_token(
        &self,
        token: &NewToken,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<TokenInfo, StoreError> {
        let (row, event) = minted(token, actor, now)?;
        self.write(move |conn| {
            insert_token_row(conn, &row, &event, now)?;
            token_from_row(row)
        })
    }

    /// Records the first use of a provisioner's token as a one-use token
    /// (audit `token.minted` by `provisioner:<name>`), in one transaction
    /// with the check that the provisioner is still enabled: a disable that
    /// commits first refuses it ([`StoreError::ProvisionerDisabled`]), and
    /// one that commits later revokes the record with the provisioner's
    /// others before its use is consumed (see `disable_provisioner`).
    ///
    /// A record already there is the same token seen before (a replay, or
    /// a parallel first use that won): fine when it binds the same policy
    /// and identity, so the issuance transaction decides whether a use is
    /// left. Other claims under the same `jti` are
    /// [`StoreError::TokenJtiReused`].
    pub fn record_provisioner_token(
        &self,
        token: &NewToken,
        provisioner: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let (row, event) = minted(token, &provisioner_actor(provisioner), now)?;
        let name = provisioner.to_owned();
        let identity = token.identity.clone();
        self.write(move |conn| {
            let disabled_at: Option<Option<i64>> = provisioners::table
                .filter(provisioners::name.eq(&name))
                .select(provisioners::disabled_at)
                .get_result(conn)
                .optional()
                .map_err(StoreError::query)?;
            match disabled_at {
                None => return Err(StoreError::ProvisionerNotFound { name }),
                Some(Some(_)) => return Err(StoreError::ProvisionerDisabled { name }),
                Some(None) => {}
            }
            // Looked up before inserting: every write transaction is
            // serialized (BEGIN IMMEDIATE; the audit head lock), so nobody
            // inserts it in between, and a failed INSERT would abort a
            // PostgreSQL transaction for any statement after it.
            match token_row(conn, &row.id)? {
                Some(existing) => {
                    let same = existing.created_by == row.created_by
                        && existing.policy == row.policy
                        && identity_from_json(&existing.identity_json, &existing.id)? == identity;
                    if same {
                        Ok(())
                    } else {
                        Err(StoreError::TokenJtiReused { id: existing.id })
                    }
                }
                None => insert_token_row(conn, &row, &event, now),
            }
        })
    }

    /// A token by id.
    pub fn token(&self, id: &str) -> Result<Option<TokenInfo>, StoreError> {
        self.read(|conn| token_row(conn, id))?
            .map(token_from_row)
            .transpose()
    }

    /// Whether token `id` has a use left at `now`, without consuming it:
    /// `Ok(())`, or the refusal its use would get ([`StoreError::TokenUnknown`],
    /// `TokenRevoked`, `TokenExpired`, `TokenUsedUp`). Only a hint: the
    /// conditional update in the issuance transaction is what counts.
    pub fn check_token_usable(&self, id: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        let row = self.read(|conn| token_row(conn, id))?;
        match row {
            None => Err(StoreError::TokenUnknown { id: id.to_owned() }),
            Some(row) => match refusal_for(row, now)? {
                Some(refusal) => Err(refusal),
                None => Ok(()),
            },
        }
    }

    /// Tokens, newest first (ties broken by id, descending).
    pub fn list_tokens(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<TokenInfo>, StoreError> {
        let after = cursor
            .map(|cursor| {
                let [created_at, id] = decode_cursor::<2>(cursor)?;
                Ok::<_, StoreError>((cursor_int(&created_at)?, id))
            })
            .transpose()?;
        let size = page_size(limit);
        let rows = self.read(|conn| {
            let mut query = bootstrap_tokens::table
                .order((
                    bootstrap_tokens::created_at.desc(),
                    bootstrap_tokens::id.desc(),
                ))
                .limit(size as i64 + 1)
                .select(TokenRow::as_select())
                .into_boxed();
            if let Some((created_at, id)) = &after {
                query = query.filter(
                    bootstrap_tokens::created_at
                        .lt(*created_at)
                        .or(bootstrap_tokens::created_at
                            .eq(*created_at)
                            .and(bootstrap_tokens::id.lt(id))),
                );
            }
            query.load(conn).map_err(StoreError::query)
        })?;
        page_of(
            rows,
            size,
            |row| encode_cursor(&[&row.created_at.to_string(), &row.id]),
            token_from_row,
        )
    }

    /// Revokes a token (audit `token.revoked`). Revoking a revoked token
    /// returns it unchanged and writes nothing.
    pub fn revoke_token(
        &self,
        id: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<TokenInfo, StoreError> {
        let id = id.to_owned();
        let actor = actor.to_owned();
        self.write(move |conn| {
            let revoked = diesel::update(
                bootstrap_tokens::table
                    .filter(bootstrap_tokens::id.eq(&id))
                    .filter(bootstrap_tokens::revoked_at.is_null()),
            )
            .set(bootstrap_tokens::revoked_at.eq(unix(now)))
            .execute(conn)
            .map_err(StoreError::query)?;
            let row = token_row(conn, &id)?
                .ok_or_else(|| StoreError::TokenNotFound { id: id.clone() })?;
            if revoked == 1 {
                let data = json!({ "policy": row.policy, "uses": row.uses });
                audit::append(
                    conn,
                    &NewAuditEvent::new(TOKEN_REVOKED, &actor, &id, data),
                    now,
                )?;
            }
            token_from_row(row)
        })
    }
}

/// The row and the `token.minted` audit event (never with the JWT) that
/// record `token`, minted by `actor` at `now`.
fn minted(
    token: &NewToken,
    actor: &str,
    now: OffsetDateTime,
) -> Result<(TokenRow, NewAuditEvent), StoreError> {
    let row = TokenRow {
        id: token.id.clone(),
        policy: token.policy.clone(),
        identity_json: to_json(&token.identity)?,
        max_uses: i64::from(token.max_uses),
        uses: 0,
        expires_at: unix(token.expires_at),
        created_at: unix(now),
        created_by: actor.to_owned(),
        revoked_at: None,
    };
    let data = json!({
        "policy": token.policy,
        "identity": token.identity,
        "max_uses": token.max_uses,
        "expires_at_unix": row.expires_at,
    });
    let event = NewAuditEvent::new(TOKEN_MINTED, actor, &token.id, data);
    Ok((row, event))
}

/// Inserts a token row with its audit event; a taken id is
/// [`StoreError::TokenAlreadyExists`].
fn insert_token_row(
    conn: &mut DbConnection,
    row: &TokenRow,
    event: &NewAuditEvent,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    match diesel::insert_into(bootstrap_tokens::table)
        .values(row)
        .execute(conn)
    {
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::TokenAlreadyExists { id: row.id.clone() })
        }
        other => other.map_err(StoreError::query)?,
    };
    audit::append(conn, event, now).map(drop)
}

/// The `created_by` (and audit actor) of a provisioner's token records.
pub(super) fn provisioner_actor(provisioner: &str) -> String {
    format!("provisioner:{provisioner}")
}

/// Revokes every unrevoked token record of `provisioner` in the caller's
/// write transaction; returns how many.
pub(super) fn revoke_provisioner_tokens(
    conn: &mut DbConnection,
    provisioner: &str,
    now: OffsetDateTime,
) -> Result<usize, StoreError> {
    diesel::update(
        bootstrap_tokens::table
            .filter(bootstrap_tokens::created_by.eq(provisioner_actor(provisioner)))
            .filter(bootstrap_tokens::revoked_at.is_null()),
    )
    .set(bootstrap_tokens::revoked_at.eq(unix(now)))
    .execute(conn)
    .map_err(StoreError::query)
}

/// Consumes one use of token `id` inside the caller's write transaction, or
/// says precisely why it cannot: not found, revoked, expired, used up.
pub(super) fn consume_use(
    conn: &mut DbConnection,
    id: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let now_unix = unix(now);
    let consumed = ConsumeTokenUse { id, now_unix }
        .execute(conn)
        .map_err(StoreError::query)?;
    if consumed == 1 {
        return Ok(());
    }
    let Some(row) = token_row(conn, id)? else {
        return Err(StoreError::TokenUnknown { id: id.to_owned() });
    };
    match refusal_for(row, now)? {
        Some(refusal) => Err(refusal),
        // The conditional update missed a row that now passes every check:
        // only possible if `consumed` were miscounted.
        None => Err(StoreError::corrupt(format!(
            "token {id:?}: use not consumed"
        ))),
    }
}

/// Why a use of the token in `row` is refused at `now`, if it is.
fn refusal_for(row: TokenRow, now: OffsetDateTime) -> Result<Option<StoreError>, StoreError> {
    let what = format!("token {:?}", row.id);
    if let Some(revoked_at) = row.revoked_at {
        return Ok(Some(StoreError::TokenRevoked {
            id: row.id,
            revoked_at: from_unix(revoked_at, &what)?,
        }));
    }
    if row.expires_at <= unix(now) {
        return Ok(Some(StoreError::TokenExpired {
            id: row.id,
            expires_at: from_unix(row.expires_at, &what)?,
            now,
        }));
    }
    if row.uses >= row.max_uses {
        return Ok(Some(StoreError::TokenUsedUp {
            max_uses: u32::try_from(row.max_uses)
                .map_err(|_| StoreError::corrupt(format!("{what}: max_uses out of range")))?,
            id: row.id,
        }));
    }
    Ok(None)
}

/// Gives back one use of token `id` (its certificate was never signed).
pub(super) fn refund_use(conn: &mut DbConnection, id: &str) -> Result<bool, StoreError> {
    diesel::update(
        bootstrap_tokens::table
            .filter(bootstrap_tokens::id.eq(id))
            .filter(bootstrap_tokens::uses.gt(0)),
    )
    .set(bootstrap_tokens::uses.eq(bootstrap_tokens::uses - 1))
    .execute(conn)
    .map(|refunded| refunded == 1)
    .map_err(StoreError::query)
}

fn token_row(conn: &mut DbConnection, id: &str) -> Result<Option<TokenRow>, StoreError> {
    bootstrap_tokens::table
        .filter(bootstrap_tokens::id.eq(id))
        .select(TokenRow::as_select())
        .get_result(conn)
        .optional()
        .map_err(StoreError::query)
}

fn token_from_row(row: TokenRow) -> Result<TokenInfo, StoreError> {
    let what = format!("token {:?}", row.id);
    let count = |value: i64, field: &str| {
        u32::try_from(value)
            .map_err(|_| StoreError::corrupt(format!("{what}: {field} out of range")))
    };
    Ok(TokenInfo {
        identity: identity_from_json(&row.identity_json, &what)?,
        max_uses: count(row.max_uses, "max_uses")?,
        uses: count(row.uses, "uses")?,
        expires_at: from_unix(row.expires_at, &what)?,
        created_at: from_unix(row.created_at, &what)?,
        revoked_at: optional_from_unix(row.revoked_at, &what)?,
        id: row.id,
        policy: row.policy,
    })
}
