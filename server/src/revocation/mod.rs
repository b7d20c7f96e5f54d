//! Revocation that every peer can enforce: RFC 5280 CRLs signed on the HSM,
//! sharded, numbered by the database, and served to relying parties.
//!
//! - [`crl`] turns a list of revoked certificates into a CRL signed through
//!   [`crate::hsm::CaSigner`]; nothing here reads keys.
//! - [`sharding`] decides, at issuance, which CRL will list a certificate.
//! - [`publisher`] signs stale shards on every replica and holds the newest
//!   CRLs for the HTTP handlers.
//!
//! What is revoked lives in the store; this module decides only what the
//! CRLs say and when they are signed.

pub mod crl;
pub mod publisher;
pub mod sharding;

use certmint::wire::{RevocationReason, RevokeRequest};
use time::OffsetDateTime;

use crate::store::Revocation;

/// A revocation request that cannot be recorded as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// RFC 5280 §5.3.2: the invalidity date says since when a key is known
    /// or suspected to be compromised; with another reason it means nothing.
    #[error("invalidity_date is only allowed with reason key_compromise")]
    InvalidityDateWithoutKeyCompromise,
    /// A compromise cannot be known to start later than now.
    #[error("invalidity_date {invalidity_date} lies in the future (now {now})")]
    InvalidityDateInFuture {
        /// The date given.
        invalidity_date: OffsetDateTime,
        /// The server's time.
        now: OffsetDateTime,
    },
}

/// The revocation a request asks for, checked.
pub fn checked_revocation(
    request: &RevokeRequest,
    now: OffsetDateTime,
) -> Result<Revocation, RevocationError> {
    if let Some(invalidity_date) = request.invalidity_date {
        if request.reason != RevocationReason::KeyCompromise {
            return Err(RevocationError::InvalidityDateWithoutKeyCompromise);
        }
        if invalidity_date > now {
            return Err(RevocationError::InvalidityDateInFuture {
                invalidity_date,
                now,
            });
        }
    }
    Ok(Revocation {
        reason: request.reason,
        invalidity_date: request
            .invalidity_date
            .map(|at| at.replace_nanosecond(0).unwrap_or(at)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: OffsetDateTime = time::macros::datetime!(2026-12-08 12:00 UTC);

    #[test]
    fn invalidity_date_needs_key_compromise_and_a_past_date() {
        let request = |reason, invalidity_date| RevokeRequest {
            reason,
            invalidity_date,
        };
        let earlier = NOW - time::Duration::hours(3);
        let kept = checked_revocation(
            &request(RevocationReason::KeyCompromise, Some(earlier)),
            NOW,
        )
        .expect("a past compromise date is kept");
        assert_eq!(kept.invalidity_date, Some(earlier));
        assert!(matches!(
            checked_revocation(&request(RevocationReason::Superseded, Some(earlier)), NOW),
            Err(RevocationError::InvalidityDateWithoutKeyCompromise)
        ));
        assert!(matches!(
            checked_revocation(
                &request(
                    RevocationReason::KeyCompromise,
                    Some(NOW + time::Duration::minutes(1))
                ),
                NOW
            ),
            Err(RevocationError::InvalidityDateInFuture { .. })
        ));
        let plain = checked_revocation(&request(RevocationReason::Unspecified, None), NOW)
            .expect("no date is fine");
        assert_eq!(plain.invalidity_date, None);
    }
}
