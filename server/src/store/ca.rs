//! The CA's certificates and key labels, shared by every replica.
//!
//! One row (`id = 1`), written once by `init` ([`Store::save_ca_state`]).
//! In external-root mode the row is first written with the issuing key's
//! CSR pending and no issuing certificate, and
//! [`Store::complete_ca_import`] adds the externally signed chain later.
//! The private keys never come here: only PKCS#11 labels, and the CKA_IDs
//! `init` reserves before it generates a key ([`Store::reserve_ca_key`]),
//! so an interrupted `init` can recognise its own keys on the token.

use certmint::wire::KeyType;
use diesel::prelude::*;
use serde_json::json;
use time::OffsetDateTime;

use super::connection::DbConnection;
use super::models::{CaKeyReservationRow, CaStateRow};
use super::schema::{ca_key_reservations, ca_state};
use super::{audit, is_unique_violation, key_type_from_name, sha256_hex, unix, Store, StoreError};
use crate::audit::{NewAuditEvent, CA_IMPORTED, CA_INITIALIZED};

/// Id of the one `ca_state` row.
const CA_ROW: i32 = 1;

/// The CA as recorded in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaState {
    /// Root certificate, DER. Empty while an external-root import is
    /// pending and the root is not known yet.
    pub root_der: Vec<u8>,
    /// Issuing (intermediate) certificate, DER; `None` while an
    /// external-root import is pending.
    pub issuing_der: Option<Vec<u8>>,
    /// CA certificates between the issuing certificate and the root, DER,
    /// the issuing certificate's issuer first; empty when the root signed
    /// the issuing certificate (always, for a CA `init` created).
    pub intermediates_der: Vec<Vec<u8>>,
    /// PKCS#11 label of the root key, when the root key is in our HSM.
    pub root_key_label: Option<String>,
    /// PKCS#11 label of the issuing key.
    pub issuing_key_label: String,
    /// Type of the issuing key.
    pub issuing_key_type: KeyType,
    /// CSR for the issuing key awaiting an external signature, DER.
    pub pending_csr_der: Option<Vec<u8>>,
}

/// Key of the PostgreSQL advisory lock `init` holds (ASCII `cm-init!`).
const INIT_LOCK_KEY: i64 = 0x636d_2d69_6e69_7421;

/// Held by one `init` at a time (see [`Store::lock_for_init`]); released
/// when dropped.
pub struct InitLock {
    held: HeldInitLock,
}

enum HeldInitLock {
    /// The connection holding the session-level advisory lock.
    Postgres(diesel::r2d2::PooledConnection<super::connection::Manager>),
    /// The locked file beside the database (`flock`, released on close;
    /// none for an in-memory database).
    Sqlite { _locked: Option<std::fs::File> },
}

impl Drop for InitLock {
    fn drop(&mut self) {
        if let HeldInitLock::Postgres(conn) = &mut self.held {
            if let DbConnection::Postgres(conn) = &mut **conn {
                use diesel::connection::SimpleConnection as _;
                // Closing the connection would release it too; the pool
                // keeps connections open, so unlock explicitly.
                let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({INIT_LOCK_KEY})"));
            }
        }
    }
}

/// A key `init` reserved before generating it: the token object labelled
/// `label` whose `CKA_ID` is `key_id` is this CA's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaKeyReservation {
    /// The key's `CKA_LABEL`.
    pub label: String,
    /// The key's `CKA_ID`, chosen at random before generation.
    pub key_id: Vec<u8>,
    /// The key type asked for.
    pub key_type: KeyType,
}

impl CaState {
    /// The root certificate, once known.
    pub fn root(&self) -> Option<&[u8]> {
        (!self.root_der.is_empty()).then_some(self.root_der.as_slice())
    }
}

impl Store {
    /// The recorded CA, if `init` has run.
    pub fn ca_state(&self) -> Result<Option<CaState>, StoreError> {
        let row: Option<CaStateRow> = self.read(|conn| {
            ca_state::table
                .filter(ca_state::id.eq(CA_ROW))
                .select(CaStateRow::as_select())
                .first(conn)
                .optional()
                .map_err(StoreError::query)
        })?;
        row.map(|row| {
            Ok(CaState {
                issuing_key_type: key_type_from_name(&row.issuing_key_type, "ca_state")?,
                intermediates_der: split_der(row.intermediates_der.as_deref().unwrap_or_default())?,
                root_der: row.root_der,
                issuing_der: row.issuing_der,
                root_key_label: row.root_key_label,
                issuing_key_label: row.issuing_key_label,
                pending_csr_der: row.pending_csr_der,
            })
        })
        .transpose()
    }

    /// Waits until no other `init` works on this database, and keeps them
    /// out until the returned lock is dropped. Replicas that all run `init`
    /// at start (an init container per pod) then take turns: the first
    /// initialises the token and the CA, the others find them made. On
    /// PostgreSQL a session advisory lock, on SQLite an exclusive `flock`
    /// on `<database>.init-lock`.
    pub fn lock_for_init(&self) -> Result<InitLock, StoreError> {
        let mut conn = self.connection()?;
        let held = match &mut *conn {
            DbConnection::Postgres(postgres) => {
                #[derive(diesel::QueryableByName)]
                struct Taken {
                    #[diesel(sql_type = diesel::sql_types::Bool)]
                    taken: bool,
                }
                // Polled rather than blocking in pg_advisory_lock, so a
                // statement_timeout cannot fail the wait and the operator
                // is told what it waits for. Needs a direct connection (or
                // session pooling): a transaction-pooling proxy would hand
                // the lock to whatever session comes next.
                super::wait_for("another init holds this database's init lock", || {
                    diesel::sql_query(format!(
                        "SELECT pg_try_advisory_lock({INIT_LOCK_KEY}) AS taken"
                    ))
                    .get_result::<Taken>(postgres)
                    .map(|row| row.taken)
                    .map_err(StoreError::query)
                })?;
                HeldInitLock::Postgres(conn)
            }
            DbConnection::Sqlite(sqlite) => HeldInitLock::Sqlite {
                _locked: super::lock_beside_sqlite_file(sqlite, "init-lock")?,
            },
        };
        Ok(InitLock { held })
    }

    /// Reserves `label` for a key of `key_type` that will carry `key_id`,
    /// durably, before the key is generated. If an earlier `init` that did
    /// not finish reserved the label, its reservation is returned unchanged:
    /// the key it names may already be on the token.
    pub fn reserve_ca_key(
        &self,
        label: &str,
        key_type: KeyType,
        key_id: &[u8],
        now: OffsetDateTime,
    ) -> Result<CaKeyReservation, StoreError> {
        let row = CaKeyReservationRow {
            label: label.to_owned(),
            key_id: key_id.to_vec(),
            key_type: key_type.as_str().to_owned(),
            reserved_at: unix(now),
        };
        let reserved = self.write(move |conn| {
            if let Some(earlier) = reservation_row(conn, &row.label)? {
                return Ok(earlier);
            }
            diesel::insert_into(ca_key_reservations::table)
                .values(&row)
                .execute(conn)
                .map_err(StoreError::query)?;
            Ok(row)
        })?;
        reservation_from_row(reserved)
    }

    /// The reservation recorded for `label`, if any.
    pub fn ca_key_reservation(&self, label: &str) -> Result<Option<CaKeyReservation>, StoreError> {
        self.read(|conn| reservation_row(conn, label))?
            .map(reservation_from_row)
            .transpose()
    }

    /// Changes the key type of `label`'s reservation, for a rerun of `init`
    /// that asks for another type before any key was generated under it.
    pub fn retype_ca_key_reservation(
        &self,
        label: &str,
        key_type: KeyType,
    ) -> Result<(), StoreError> {
        let (label, key_type) = (label.to_owned(), key_type.as_str().to_owned());
        self.write(move |conn| {
            diesel::update(
                ca_key_reservations::table.filter(ca_key_reservations::label.eq(&label)),
            )
            .set(ca_key_reservations::key_type.eq(&key_type))
            .execute(conn)
            .map_err(StoreError::query)?;
            Ok(())
        })
    }

    /// Records the CA once (audit `ca.initialized`) and drops the
    /// reservations of its keys; [`StoreError::CaAlreadyInitialized`] if a
    /// CA is already recorded.
    pub fn save_ca_state(
        &self,
        state: &CaState,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let row = CaStateRow {
            id: CA_ROW,
            root_der: state.root_der.clone(),
            issuing_der: state.issuing_der.clone(),
            root_key_label: state.root_key_label.clone(),
            issuing_key_label: state.issuing_key_label.clone(),
            issuing_key_type: state.issuing_key_type.as_str().to_owned(),
            pending_csr_der: state.pending_csr_der.clone(),
            created_at: unix(now),
            intermediates_der: join_der(&state.intermediates_der),
        };
        let data = json!({
            "root_sha256": (!state.root_der.is_empty()).then(|| sha256_hex(&state.root_der)),
            "issuing_sha256": state.issuing_der.as_deref().map(sha256_hex),
            "root_key_label": state.root_key_label,
            "issuing_key_label": state.issuing_key_label,
            "issuing_key_type": state.issuing_key_type.as_str(),
            "pending_import": state.issuing_der.is_none(),
        });
        let event = NewAuditEvent::new(CA_INITIALIZED, actor, "ca", data);
        let ca_labels: Vec<String> = state
            .root_key_label
            .iter()
            .chain([&state.issuing_key_label])
            .cloned()
            .collect();
        self.write(move |conn| {
            match diesel::insert_into(ca_state::table)
                .values(&row)
                .execute(conn)
            {
                Err(e) if is_unique_violation(&e) => return Err(StoreError::CaAlreadyInitialized),
                other => other.map_err(StoreError::query)?,
            };
            // The CA keys are named by the row just written now. Other
            // reservations (the token-signing key's) stay: they are that
            // key's only record.
            diesel::delete(
                ca_key_reservations::table.filter(ca_key_reservations::label.eq_any(&ca_labels)),
            )
            .execute(conn)
            .map_err(StoreError::query)?;
            audit::append(conn, &event, now)?;
            Ok(())
        })
    }

    /// Completes an external-root set-up: stores the root, the CA
    /// certificates between it and the issuing certificate (issuer first),
    /// and the externally signed issuing certificate, and clears the
    /// pending CSR (audit `ca.imported`). [`StoreError::CaNotInitialized`] without a recorded CA,
    /// [`StoreError::CaAlreadyInitialized`] when its chain is already complete.
    pub fn complete_ca_import(
        &self,
        root_der: &[u8],
        intermediates_der: &[Vec<u8>],
        issuing_der: &[u8],
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let data = json!({
            "root_sha256": sha256_hex(root_der),
            "intermediates_sha256": intermediates_der.iter().map(|der| sha256_hex(der)).collect::<Vec<_>>(),
            "issuing_sha256": sha256_hex(issuing_der),
        });
        let event = NewAuditEvent::new(CA_IMPORTED, actor, "ca", data);
        let (root_der, issuing_der) = (root_der.to_vec(), issuing_der.to_vec());
        let intermediates_der = join_der(intermediates_der);
        self.write(move |conn| {
            let updated = diesel::update(
                ca_state::table
                    .filter(ca_state::id.eq(CA_ROW))
                    .filter(ca_state::issuing_der.is_null()),
            )
            .set((
                ca_state::root_der.eq(&root_der),
                ca_state::issuing_der.eq(&issuing_der),
                ca_state::pending_csr_der.eq(None::<Vec<u8>>),
                ca_state::intermediates_der.eq(&intermediates_der),
            ))
            .execute(conn)
            .map_err(StoreError::query)?;
            if updated != 1 {
                let exists: i64 = ca_state::table
                    .count()
                    .get_result(conn)
                    .map_err(StoreError::query)?;
                return Err(if exists == 0 {
                    StoreError::CaNotInitialized
                } else {
                    StoreError::CaAlreadyInitialized
                });
            }
            audit::append(conn, &event, now)?;
            Ok(())
        })
    }
}

/// The reservation row for `label`, if any.
fn reservation_row(
    conn: &mut DbConnection,
    label: &str,
) -> Result<Option<CaKeyReservationRow>, StoreError> {
    ca_key_reservations::table
        .filter(ca_key_reservations::label.eq(label))
        .select(CaKeyReservationRow::as_select())
        .get_result(conn)
        .optional()
        .map_err(StoreError::query)
}

fn reservation_from_row(row: CaKeyReservationRow) -> Result<CaKeyReservation, StoreError> {
    Ok(CaKeyReservation {
        key_type: key_type_from_name(&row.key_type, "ca_key_reservations")?,
        label: row.label,
        key_id: row.key_id,
    })
}

/// Stores certificates as one column: their DER encodings back to back
/// (each is one self-delimiting TLV); `None` for none.
fn join_der(certificates: &[Vec<u8>]) -> Option<Vec<u8>> {
    (!certificates.is_empty()).then(|| certificates.concat())
}

/// The certificates [`join_der`] stored, split at their TLV boundaries.
fn split_der(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    use der::Decode as _;
    let mut certificates = Vec::new();
    while !bytes.is_empty() {
        let (_, rest) =
            der::asn1::AnyRef::from_der_partial(bytes).map_err(|_| StoreError::Corrupt {
                what: "ca_state.intermediates_der".into(),
            })?;
        let (certificate, _) = bytes.split_at(bytes.len() - rest.len());
        certificates.push(certificate.to_vec());
        bytes = rest;
    }
    Ok(certificates)
}
