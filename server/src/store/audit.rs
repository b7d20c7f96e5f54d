//! Audit log queries: appending to the hash chain inside a caller's
//! transaction, and reading it back.
//!
//! Appends are serialised through the single `audit_head` row: the first
//! statement of an append is `UPDATE audit_head SET seq = seq + 1`, which
//! takes that row's lock on PostgreSQL until the transaction ends (SQLite's
//! `BEGIN IMMEDIATE` already serialises writers). So sequence numbers have
//! no gaps and every event's `prev_hash` is the hash committed before it,
//! however many replicas write. Append is always the last step of a write
//! transaction, so the head lock is held only until the commit.

use certmint::wire::{AuditEvent, Page};
use diesel::prelude::*;
use time::OffsetDateTime;

use super::connection::DbConnection;
use super::models::AuditEventRow;
use super::schema::{audit_events, audit_head};
use super::statements::{BumpAuditSequence, InsertAuditEvent, SetAuditHead};
use super::{
    cursor_int, decode_cursor, encode_cursor, from_json, from_unix, page_of, page_size, unix,
    Store, StoreError,
};
use certmint::audit::{canonical_json, chain_hash};

use crate::audit::NewAuditEvent;

/// Id of the one `audit_head` row.
const HEAD: i32 = 1;

impl Store {
    /// Appends a standalone event (one not tied to another write).
    pub fn append_audit(
        &self,
        event: &NewAuditEvent,
        now: OffsetDateTime,
    ) -> Result<AuditEvent, StoreError> {
        let event = event.clone();
        self.write(move |conn| append(conn, &event, now))
    }

    /// Audit events in ascending `seq` order, `limit` at a time.
    pub fn list_audit(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEvent>, StoreError> {
        let after = match cursor {
            Some(cursor) => {
                let [seq] = decode_cursor::<1>(cursor)?;
                cursor_int(&seq)?
            }
            None => 0,
        };
        let size = page_size(limit);
        let rows: Vec<AuditEventRow> = self.read(|conn| {
            audit_events::table
                .filter(audit_events::seq.gt(after))
                .order(audit_events::seq.asc())
                .limit(size as i64 + 1)
                .select(AuditEventRow::as_select())
                .load(conn)
                .map_err(StoreError::query)
        })?;
        page_of(
            rows,
            size,
            |row| encode_cursor(&[&row.seq.to_string()]),
            event_from_row,
        )
    }
}

/// Appends `event` at time `now` inside the caller's write transaction.
pub(super) fn append(
    conn: &mut DbConnection,
    event: &NewAuditEvent,
    now: OffsetDateTime,
) -> Result<AuditEvent, StoreError> {
    let bumped = BumpAuditSequence.execute(conn).map_err(StoreError::query)?;
    if bumped != 1 {
        return Err(StoreError::corrupt("audit_head row is missing"));
    }
    let (seq, prev_hash): (i64, String) = audit_head::table
        .filter(audit_head::id.eq(HEAD))
        .select((audit_head::seq, audit_head::hash))
        .get_result(conn)
        .map_err(StoreError::query)?;
    let at = unix(now);
    let data_json = canonical_json(&event.data);
    let hash = chain_hash(
        &prev_hash,
        seq,
        at,
        &event.kind,
        &event.actor,
        &event.subject,
        &data_json,
    );
    let row = AuditEventRow {
        seq,
        at,
        kind: event.kind.clone(),
        actor: event.actor.clone(),
        subject: event.subject.clone(),
        data_json,
        prev_hash,
        hash,
    };
    InsertAuditEvent { row: &row }
        .execute(conn)
        .map_err(StoreError::query)?;
    SetAuditHead { hash: &row.hash }
        .execute(conn)
        .map_err(StoreError::query)?;
    event_from_row(row)
}

fn event_from_row(row: AuditEventRow) -> Result<AuditEvent, StoreError> {
    let what = format!("audit event {}", row.seq);
    Ok(AuditEvent {
        seq: row.seq,
        at: from_unix(row.at, &what)?,
        data: from_json(&row.data_json, &what)?,
        kind: row.kind,
        actor: row.actor,
        subject: row.subject,
        prev_hash: row.prev_hash,
        hash: row.hash,
    })
}
