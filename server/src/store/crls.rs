//! CRL bookkeeping: which shard each certificate belongs to, when a shard is
//! stale, CRL numbers, the one-signer-per-shard claim, and the signed CRLs
//! every replica serves.
//!
//! Invariants (all kept by the database, so any number of replicas agree):
//!
//! - CRL numbers come from the issuer's `crl_issuers` row, moved on by an
//!   `UPDATE` in the transaction that claims a shard: unique (the row lock
//!   serialises claimers, and `(issuer_key_id, number)` is the primary key
//!   of `crls`) and increasing across replicas and shards.
//! - A revocation moves its shard's `generation` on in the revoking
//!   transaction ([`mark_shard_stale`]); a CRL records the generation it
//!   was built from, read after its number was taken, so a CRL with a
//!   higher number never lists less than one with a lower number.
//! - A shard is claimed by a conditional `UPDATE` on `claimed_until`: one
//!   replica signs it at a time; a claimer that dies frees it when the
//!   claim runs out.
//! - The served CRL of a shard is its highest number.

use certmint::wire::{CertificateStatus, CrlScope, RevocationReason};
use diesel::prelude::*;
use time::OffsetDateTime;

use super::certificates::{parse_reason, shard_column, status_name};
use super::connection::DbConnection;
use super::schema::{
    certificate_revocations, certificates, crl_assignments, crl_issuers, crl_shards, crls,
};
use super::statements::InsertCrlAssignment;
use super::{from_unix, optional_from_unix, unix, Store, StoreError};

/// Older CRLs of a shard kept beside the newest (for a relying party that
/// is fetching one while a new one is stored).
const KEEP_PER_SHARD: usize = 3;

/// What one issuer's CRLs look like, ensured at every start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlIssuerSetup {
    /// Lower-case hex of the issuer's subject key identifier.
    pub issuer_key_id: String,
    /// How many shards its CRLs are split into.
    pub shards: u32,
    /// For an issuing CA: assign the certificates recorded before CRLs
    /// existed to shards, `(not_after / width_seconds) % shards`.
    pub backfill_width_seconds: Option<i64>,
}

/// A claimed shard: the number its CRL carries and what it lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlClaim {
    /// The CRL number handed out.
    pub number: u64,
    /// The shard generation the entries were read at.
    pub generation: i64,
    /// The revoked certificates to list, by serial.
    pub entries: Vec<CrlEntryRecord>,
}

/// One revoked certificate as a CRL lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlEntryRecord {
    /// Lower-case hex serial.
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
    /// Key compromise known since, when given.
    pub invalidity_date: Option<OffsetDateTime>,
}

/// A signed CRL to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCrl {
    /// Issuer key id (hex).
    pub issuer_key_id: String,
    /// Its number (from the claim).
    pub number: u64,
    /// Shard.
    pub shard: u32,
    /// What it covers.
    pub scope: CrlScope,
    /// Generation it was built from (from the claim).
    pub generation: i64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
    /// Entries listed.
    pub entries: u64,
    /// The DER.
    pub der: Vec<u8>,
    /// `sha256:<hex>` of the DER.
    pub sha256: String,
}

/// A recorded CRL without its DER: what the index lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCrl {
    /// Issuer key id (hex).
    pub issuer_key_id: String,
    /// Its number.
    pub number: u64,
    /// Shard.
    pub shard: u32,
    /// What it covers.
    pub scope: CrlScope,
    /// Generation it was built from.
    pub generation: i64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
    /// Entries listed.
    pub entries: u64,
    /// `sha256:<hex>` of the DER.
    pub sha256: String,
}

type StoredCrlColumns = (String, i64, i32, String, i64, i64, i64, i64, String);

impl Store {
    /// Makes sure the issuer's counter and shard rows exist, and (for an
    /// issuing CA) gives every certificate recorded before CRLs existed its
    /// issuer and shard. Safe to run on every start of every replica.
    pub fn set_up_crl_issuer(&self, setup: &CrlIssuerSetup) -> Result<(), StoreError> {
        let setup = setup.clone();
        self.write(move |conn| {
            let known: i64 = crl_issuers::table
                .filter(crl_issuers::issuer_key_id.eq(&setup.issuer_key_id))
                .count()
                .get_result(conn)
                .map_err(StoreError::query)?;
            if known == 0 {
                diesel::insert_into(crl_issuers::table)
                    .values((
                        crl_issuers::issuer_key_id.eq(&setup.issuer_key_id),
                        crl_issuers::last_number.eq(0i64),
                    ))
                    .execute(conn)
                    .map_err(StoreError::query)?;
            }
            let present: Vec<i32> = crl_shards::table
                .filter(crl_shards::issuer_key_id.eq(&setup.issuer_key_id))
                .select(crl_shards::shard)
                .load(conn)
                .map_err(StoreError::query)?;
            for shard in 0..setup.shards {
                let shard = shard_column(shard)?;
                if !present.contains(&shard) {
                    diesel::insert_into(crl_shards::table)
                        .values((
                            crl_shards::issuer_key_id.eq(&setup.issuer_key_id),
                            crl_shards::shard.eq(shard),
                            crl_shards::generation.eq(0i64),
                            crl_shards::claim_number.eq(0i64),
                            crl_shards::claimed_until.eq(0i64),
                        ))
                        .execute(conn)
                        .map_err(StoreError::query)?;
                }
            }
            if let Some(width) = setup.backfill_width_seconds {
                backfill_shards(conn, &setup.issuer_key_id, width, setup.shards)?;
            }
            Ok(())
        })
    }

    /// Claims `shard` of `issuer_key_id` for signing when it needs a new
    /// CRL: it has none, a revocation made it stale, or its newest CRL is at
    /// least `refresh_seconds` old. `None` when it needs none or another
    /// replica holds it. The claim lasts `claim_seconds`; [`Store::record_crl`]
    /// or [`Store::release_crl_claim`] ends it.
    pub fn claim_crl_shard(
        &self,
        issuer_key_id: &str,
        shard: u32,
        refresh_seconds: i64,
        claim_seconds: i64,
        now: OffsetDateTime,
    ) -> Result<Option<CrlClaim>, StoreError> {
        let issuer = issuer_key_id.to_owned();
        let shard_number = shard_column(shard)?;
        let now_unix = unix(now);
        self.write(move |conn| {
            let claimed = diesel::update(
                crl_shards::table
                    .filter(crl_shards::issuer_key_id.eq(&issuer))
                    .filter(crl_shards::shard.eq(shard_number))
                    .filter(crl_shards::claimed_until.le(now_unix)),
            )
            .set(crl_shards::claimed_until.eq(now_unix.saturating_add(claim_seconds)))
            .execute(conn)
            .map_err(StoreError::query)?;
            if claimed != 1 {
                return Ok(None);
            }
            let generation: i64 = crl_shards::table
                .filter(crl_shards::issuer_key_id.eq(&issuer))
                .filter(crl_shards::shard.eq(shard_number))
                .select(crl_shards::generation)
                .get_result(conn)
                .map_err(StoreError::query)?;
            let newest: Option<(i64, i64)> = crls::table
                .filter(crls::issuer_key_id.eq(&issuer))
                .filter(crls::shard.eq(shard_number))
                .order(crls::number.desc())
                .select((crls::generation, crls::this_update))
                .first(conn)
                .optional()
                .map_err(StoreError::query)?;
            let needed = match newest {
                None => true,
                Some((built_from, this_update)) => {
                    generation > built_from
                        || now_unix >= this_update.saturating_add(refresh_seconds)
                }
            };
            if !needed {
                diesel::update(
                    crl_shards::table
                        .filter(crl_shards::issuer_key_id.eq(&issuer))
                        .filter(crl_shards::shard.eq(shard_number)),
                )
                .set(crl_shards::claimed_until.eq(0i64))
                .execute(conn)
                .map_err(StoreError::query)?;
                return Ok(None);
            }
            diesel::update(crl_issuers::table.filter(crl_issuers::issuer_key_id.eq(&issuer)))
                .set(crl_issuers::last_number.eq(crl_issuers::last_number + 1i64))
                .execute(conn)
                .map_err(StoreError::query)?;
            let number: i64 = crl_issuers::table
                .filter(crl_issuers::issuer_key_id.eq(&issuer))
                .select(crl_issuers::last_number)
                .get_result(conn)
                .map_err(StoreError::query)?;
            diesel::update(
                crl_shards::table
                    .filter(crl_shards::issuer_key_id.eq(&issuer))
                    .filter(crl_shards::shard.eq(shard_number)),
            )
            .set(crl_shards::claim_number.eq(number))
            .execute(conn)
            .map_err(StoreError::query)?;
            // An expired certificate stays listed until a CRL issued after
            // its expiry has listed it: the previous CRL's thisUpdate is the
            // line.
            let listed_until = newest.map(|(_, this_update)| this_update);
            let entries = revoked_in_shard(conn, &issuer, shard_number, listed_until)?;
            Ok(Some(CrlClaim {
                number: u64::try_from(number)
                    .map_err(|_| StoreError::corrupt(format!("CRL number {number}")))?,
                generation,
                entries,
            }))
        })
    }

    /// Records a CRL signed under a claim, ends the claim, and drops the
    /// shard's CRLs older than the newest few.
    pub fn record_crl(&self, crl: &SignedCrl) -> Result<(), StoreError> {
        let crl = crl.clone();
        self.write(move |conn| {
            let number = crl_number_column(crl.number)?;
            let shard = shard_column(crl.shard)?;
            diesel::insert_into(crls::table)
                .values((
                    crls::issuer_key_id.eq(&crl.issuer_key_id),
                    crls::number.eq(number),
                    crls::shard.eq(shard),
                    crls::scope.eq(scope_name(crl.scope)),
                    crls::generation.eq(crl.generation),
                    crls::this_update.eq(unix(crl.this_update)),
                    crls::next_update.eq(unix(crl.next_update)),
                    crls::entries.eq(i64::try_from(crl.entries).unwrap_or(i64::MAX)),
                    crls::der.eq(&crl.der),
                    crls::sha256.eq(&crl.sha256),
                ))
                .execute(conn)
                .map_err(StoreError::query)?;
            end_claim(conn, &crl.issuer_key_id, shard, number)?;
            let numbers: Vec<i64> = crls::table
                .filter(crls::issuer_key_id.eq(&crl.issuer_key_id))
                .filter(crls::shard.eq(shard))
                .order(crls::number.desc())
                .select(crls::number)
                .load(conn)
                .map_err(StoreError::query)?;
            if let Some(oldest_kept) = numbers.get(KEEP_PER_SHARD - 1) {
                diesel::delete(
                    crls::table
                        .filter(crls::issuer_key_id.eq(&crl.issuer_key_id))
                        .filter(crls::shard.eq(shard))
                        .filter(crls::number.lt(oldest_kept)),
                )
                .execute(conn)
                .map_err(StoreError::query)?;
            }
            Ok(())
        })
    }

    /// Ends a claim whose CRL could not be signed, so any replica may try
    /// again at once.
    pub fn release_crl_claim(
        &self,
        issuer_key_id: &str,
        shard: u32,
        number: u64,
    ) -> Result<(), StoreError> {
        let issuer = issuer_key_id.to_owned();
        let shard = shard_column(shard)?;
        let number = crl_number_column(number)?;
        self.write(move |conn| end_claim(conn, &issuer, shard, number))
    }

    /// The newest CRL of every shard of every issuer, issuer then shard
    /// order, without the DER.
    pub fn newest_crls(&self) -> Result<Vec<StoredCrl>, StoreError> {
        self.read(|conn| {
            let rows: Vec<StoredCrlColumns> = crls::table
                .order((crls::issuer_key_id, crls::shard, crls::number.desc()))
                .select((
                    crls::issuer_key_id,
                    crls::number,
                    crls::shard,
                    crls::scope,
                    crls::generation,
                    crls::this_update,
                    crls::next_update,
                    crls::entries,
                    crls::sha256,
                ))
                .load(conn)
                .map_err(StoreError::query)?;
            let mut newest: Vec<StoredCrl> = Vec::new();
            for row in rows {
                let crl = stored_crl(row)?;
                let same_shard = newest.last().is_some_and(|last| {
                    last.issuer_key_id == crl.issuer_key_id && last.shard == crl.shard
                });
                if !same_shard {
                    newest.push(crl);
                }
            }
            Ok(newest)
        })
    }

    /// Every shard's generation, by `(issuer key id, shard)`: with
    /// [`Store::newest_crls`], what a publisher reads to find the shards
    /// that need a CRL without writing anything.
    pub fn crl_shard_generations(&self) -> Result<Vec<(String, u32, i64)>, StoreError> {
        self.read(|conn| {
            let rows: Vec<(String, i32, i64)> = crl_shards::table
                .select((
                    crl_shards::issuer_key_id,
                    crl_shards::shard,
                    crl_shards::generation,
                ))
                .load(conn)
                .map_err(StoreError::query)?;
            rows.into_iter()
                .map(|(issuer, shard, generation)| {
                    let shard = u32::try_from(shard)
                        .map_err(|_| StoreError::corrupt(format!("CRL shard {shard}")))?;
                    Ok((issuer, shard, generation))
                })
                .collect()
        })
    }

    /// The DER of one recorded CRL.
    pub fn crl_der(&self, issuer_key_id: &str, number: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let number = crl_number_column(number)?;
        self.read(|conn| {
            crls::table
                .filter(crls::issuer_key_id.eq(issuer_key_id))
                .filter(crls::number.eq(number))
                .select(crls::der)
                .get_result(conn)
                .optional()
                .map_err(StoreError::query)
        })
    }
}

/// Part of a revoking transaction: the shard of `serial` is stale now.
pub(super) fn mark_shard_stale(conn: &mut DbConnection, serial: &str) -> Result<(), StoreError> {
    let assignment: Option<(String, i32)> = crl_assignments::table
        .filter(crl_assignments::serial.eq(serial))
        .select((crl_assignments::issuer_key_id, crl_assignments::shard))
        .get_result(conn)
        .optional()
        .map_err(StoreError::query)?;
    // A certificate recorded before CRLs existed and not yet given a shard
    // is picked up by the backfill, which runs before any CRL is signed.
    let Some((issuer, shard)) = assignment else {
        return Ok(());
    };
    let moved = diesel::update(
        crl_shards::table
            .filter(crl_shards::issuer_key_id.eq(&issuer))
            .filter(crl_shards::shard.eq(shard)),
    )
    .set(crl_shards::generation.eq(crl_shards::generation + 1i64))
    .execute(conn)
    .map_err(StoreError::query)?;
    if moved == 0 {
        // The shard row is made when a server first publishes for the
        // issuer; a revocation before that starts the shard itself.
        diesel::insert_into(crl_shards::table)
            .values((
                crl_shards::issuer_key_id.eq(&issuer),
                crl_shards::shard.eq(shard),
                crl_shards::generation.eq(1i64),
                crl_shards::claim_number.eq(0i64),
                crl_shards::claimed_until.eq(0i64),
            ))
            .execute(conn)
            .map_err(StoreError::query)?;
    }
    Ok(())
}

/// Revoked certificates of a shard, by serial; with `listed_until`, only
/// those that had not expired by then.
fn revoked_in_shard(
    conn: &mut DbConnection,
    issuer: &str,
    shard: i32,
    listed_until: Option<i64>,
) -> Result<Vec<CrlEntryRecord>, StoreError> {
    let mut query = certificates::table
        .inner_join(certificate_revocations::table)
        .inner_join(crl_assignments::table)
        .filter(crl_assignments::issuer_key_id.eq(issuer))
        .filter(crl_assignments::shard.eq(shard))
        .filter(certificates::status.eq(status_name(CertificateStatus::Revoked)))
        .select((
            certificates::serial,
            certificate_revocations::revoked_at,
            certificate_revocations::reason,
            certificate_revocations::invalidity_date,
        ))
        .order(certificates::serial)
        .into_boxed();
    if let Some(line) = listed_until {
        query = query.filter(certificates::not_after.ge(line));
    }
    let rows: Vec<(String, i64, String, Option<i64>)> =
        query.load(conn).map_err(StoreError::query)?;
    rows.into_iter()
        .map(|(serial, revoked_at, reason, invalidity_date)| {
            let what = format!("revocation of {serial}");
            Ok(CrlEntryRecord {
                revoked_at: from_unix(revoked_at, &what)?,
                reason: parse_reason(&reason, &what)?,
                invalidity_date: optional_from_unix(invalidity_date, &what)?,
                serial,
            })
        })
        .collect()
}

/// Gives pre-CRL certificates of the (only) issuing CA their issuer and
/// shard, by the same rule issuance uses.
fn backfill_shards(
    conn: &mut DbConnection,
    issuer: &str,
    width_seconds: i64,
    shards: u32,
) -> Result<(), StoreError> {
    let unassigned: Vec<(String, i64)> = certificates::table
        .left_join(crl_assignments::table)
        .filter(crl_assignments::serial.nullable().is_null())
        .select((certificates::serial, certificates::not_after))
        .load(conn)
        .map_err(StoreError::query)?;
    for (serial, not_after) in unassigned {
        let shard = crate::revocation::sharding::shard_of(not_after, width_seconds, shards);
        InsertCrlAssignment {
            serial: &serial,
            issuer_key_id: issuer,
            shard: shard_column(shard)?,
        }
        .execute(conn)
        .map_err(StoreError::query)?;
    }
    Ok(())
}

fn end_claim(
    conn: &mut DbConnection,
    issuer: &str,
    shard: i32,
    number: i64,
) -> Result<(), StoreError> {
    diesel::update(
        crl_shards::table
            .filter(crl_shards::issuer_key_id.eq(issuer))
            .filter(crl_shards::shard.eq(shard))
            .filter(crl_shards::claim_number.eq(number)),
    )
    .set(crl_shards::claimed_until.eq(0i64))
    .execute(conn)
    .map_err(StoreError::query)?;
    Ok(())
}

fn crl_number_column(number: u64) -> Result<i64, StoreError> {
    i64::try_from(number).map_err(|_| StoreError::corrupt(format!("CRL number {number}")))
}

fn scope_name(scope: CrlScope) -> &'static str {
    match scope {
        CrlScope::UserCerts => "user_certs",
        CrlScope::CaCerts => "ca_certs",
    }
}

fn stored_crl(row: StoredCrlColumns) -> Result<StoredCrl, StoreError> {
    let (
        issuer_key_id,
        number,
        shard,
        scope,
        generation,
        this_update,
        next_update,
        entries,
        sha256,
    ) = row;
    let what = format!("CRL {number} of {issuer_key_id}");
    Ok(StoredCrl {
        number: u64::try_from(number).map_err(|_| StoreError::corrupt(what.clone()))?,
        shard: u32::try_from(shard).map_err(|_| StoreError::corrupt(what.clone()))?,
        scope: match scope.as_str() {
            "user_certs" => CrlScope::UserCerts,
            "ca_certs" => CrlScope::CaCerts,
            other => return Err(StoreError::corrupt(format!("{what}: scope {other:?}"))),
        },
        generation,
        this_update: from_unix(this_update, &what)?,
        next_update: from_unix(next_update, &what)?,
        entries: u64::try_from(entries).map_err(|_| StoreError::corrupt(what.clone()))?,
        sha256,
        issuer_key_id,
    })
}
