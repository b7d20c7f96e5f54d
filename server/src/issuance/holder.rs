//! What a certificate holder may do with the certificate it presents over
//! mutual TLS: renew it (`POST /v1/renew`) or revoke it (`POST /v1/revoke`).
//!
//! Invariants:
//! - The TLS layer has proven possession of the key and that the chain
//!   leads to this CA's root (see `crate::tls::HolderCertificateVerifier`;
//!   it lets expired certificates through so that they get a precise code
//!   here). The authority is the inventory: a presented certificate counts
//!   only if a record with its serial holds exactly the same DER.
//! - Renewal keeps the identity: the CSR must ask for exactly the names of
//!   the presented certificate, and the current policy version must still
//!   allow them, allow renewal, and allow the chain's age. The new
//!   certificate never outlives `chain_started_at + max_chain_age`.
//! - Renewal goes through the same recorded pipeline as enrollment
//!   ([`Issuer::prepare`] then [`Issuer::sign`]), with the predecessor and
//!   chain start recorded and no token consumed.

use std::collections::BTreeSet;

use certmint::wire::{
    CertificateBundle, CertificateInfo, CertificateStatus, Identity, RenewRequest,
    RevocationReason, RevokeRequest,
};
use der::Decode as _;
use time::OffsetDateTime;
use x509_cert::certificate::Certificate;

use super::{csr, identity_of, leaf_names, Decided, Issuer, Lineage};
use crate::error::ServiceError;
use crate::policy::{self, Decision};
use crate::store::CertificateRecord;

/// Why a holder's request was refused before any policy check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HolderError {
    /// No client certificate in the TLS handshake.
    #[error("this endpoint needs mutual TLS: present the certificate to renew or revoke")]
    CertificateRequired,
    /// The certificate is not one this CA issued (unknown serial or other bytes).
    #[error("the client certificate is not in this CA's inventory")]
    Unknown,
    /// The certificate is revoked.
    #[error("certificate {serial} is revoked ({reason}); it cannot renew")]
    Revoked {
        /// Serial.
        serial: String,
        /// Revocation reason name.
        reason: String,
    },
    /// The certificate has expired.
    #[error("certificate {serial} expired at {not_after}; enroll again with a bootstrap token")]
    Expired {
        /// Serial.
        serial: String,
        /// End of validity, RFC 3339.
        not_after: String,
    },
    /// The policy forbids renewal.
    #[error("policy {policy} version {version} does not allow renewal")]
    RenewalNotAllowed {
        /// Policy name.
        policy: String,
        /// Version checked.
        version: i64,
    },
    /// The renewal chain is too old.
    #[error("the renewal chain began at {started}; policy {policy} allows {max_age_seconds}s; enroll again")]
    ChainTooOld {
        /// Policy name.
        policy: String,
        /// First enrollment, RFC 3339.
        started: String,
        /// The policy's limit.
        max_age_seconds: u64,
    },
    /// The CSR asks for other names than the certificate carries.
    #[error("the CSR asks for {requested}, the certificate being renewed names {current}; renewal keeps the identity")]
    IdentityMismatch {
        /// Names in the CSR.
        requested: String,
        /// Names in the certificate.
        current: String,
    },
    /// The CSR's key is the presented certificate's key.
    #[error("the CSR's key is the key of certificate {serial}; renewal needs a fresh key")]
    KeyNotRotated {
        /// Serial of the presented certificate.
        serial: String,
    },
    /// A reason only an administrator may give.
    #[error("a holder may revoke with unspecified, key_compromise, affiliation_changed, superseded or cessation_of_operation, not {reason}; ask an administrator")]
    ReasonNotAllowed {
        /// The reason asked for.
        reason: String,
    },
}

impl Issuer {
    /// `POST /v1/renew`: a new certificate for the holder of `presented`
    /// (the DER of the TLS client certificate), for the CSR's fresh key.
    pub fn renew(
        &self,
        presented: Option<&[u8]>,
        request: &RenewRequest,
    ) -> Result<CertificateBundle, ServiceError> {
        let now = self.parts.clock.now();
        let record = self.presented_record(presented)?;
        let serial = record.info.serial.clone();
        refuse_unless_current(&record, now)?;
        let csr = csr::verify(&request.csr)?;
        let requested = identity_of(&leaf_names(&csr));
        if !same_names(&requested, &record.info.identity) {
            return Err(HolderError::IdentityMismatch {
                requested: describe(&requested),
                current: describe(&record.info.identity),
            }
            .into());
        }
        // The key is what a stolen certificate gives away: a renewal that
        // kept it would extend the thief's certificate along with the
        // holder's.
        if reuses_key(&record, &csr) {
            return Err(HolderError::KeyNotRotated { serial }.into());
        }
        let ttl = request.ttl.map(|ttl| ttl.as_seconds());
        let chain_started_at = record.chain_started_at;
        let lineage = Lineage {
            token_id: None,
            predecessor: Some(serial),
            chain_started_at,
            latest_not_after: None,
        };
        let prepared =
            self.prepare_under_policy(&record.info.policy, &csr, lineage, now, |policy| {
                let decision = policy::evaluate(policy, &csr.issuance_request(ttl, None));
                // A disabled policy is reported as such (policy.disabled)
                // before the renewal rules, which only matter for an enabled
                // policy.
                let ttl_seconds = match decision {
                    Decision::Deny(refusals) if !policy.is_enabled() => {
                        return Err(ServiceError::denied(refusals))
                    }
                    decision => {
                        if !policy.renewal_allowed() {
                            return Err(HolderError::RenewalNotAllowed {
                                policy: policy.name().to_owned(),
                                version: policy.version(),
                            }
                            .into());
                        }
                        match decision {
                            Decision::Allow { ttl_seconds } => ttl_seconds,
                            Decision::Deny(refusals) => return Err(ServiceError::denied(refusals)),
                        }
                    }
                };
                let latest_not_after = match policy.max_chain_age() {
                    Some(max_age_seconds) => match chain_end(chain_started_at, max_age_seconds) {
                        Some(limit) if now >= limit => {
                            return Err(HolderError::ChainTooOld {
                                policy: policy.name().to_owned(),
                                started: rfc3339(chain_started_at),
                                max_age_seconds,
                            }
                            .into());
                        }
                        limit => limit,
                    },
                    None => None,
                };
                Ok(Decided {
                    ttl_seconds,
                    latest_not_after,
                })
            })?;
        self.sign(prepared)
    }

    /// `POST /v1/revoke`: the holder revokes the certificate it presents.
    pub fn revoke_presented(
        &self,
        presented: Option<&[u8]>,
        request: &RevokeRequest,
    ) -> Result<CertificateInfo, ServiceError> {
        let now = self.parts.clock.now();
        let reason = request.reason;
        let record = self.presented_record(presented)?;
        // An already revoked certificate gets its 409 from the store first.
        if record.info.status == CertificateStatus::Issued && !holder_may_revoke_with(reason) {
            return Err(HolderError::ReasonNotAllowed {
                reason: reason.as_str().to_owned(),
            }
            .into());
        }
        let revocation = crate::revocation::checked_revocation(request, now)?;
        let serial = record.info.serial;
        let actor = format!("certificate:{serial}");
        Ok(self
            .parts
            .store
            .revoke_certificate(&serial, revocation, &actor, now)?)
    }

    /// The inventory record of the presented certificate, which must hold
    /// exactly the presented bytes.
    fn presented_record(
        &self,
        presented: Option<&[u8]>,
    ) -> Result<CertificateRecord, ServiceError> {
        let der = presented.ok_or(HolderError::CertificateRequired)?;
        let certificate = Certificate::from_der(der).map_err(|_| HolderError::Unknown)?;
        let serial = hex::encode(certificate.tbs_certificate().serial_number().as_bytes());
        let record = self
            .parts
            .store
            .certificate_record(&serial)?
            .ok_or(HolderError::Unknown)?;
        if record.certificate_der.as_deref() != Some(der) {
            return Err(HolderError::Unknown.into());
        }
        Ok(record)
    }
}

/// Reasons a subscriber can know to be true of its own certificate (those
/// Let's Encrypt accepts from subscribers); `ca_compromise` and
/// `privilege_withdrawn` are for an administrator to assert.
fn holder_may_revoke_with(reason: RevocationReason) -> bool {
    match reason {
        RevocationReason::Unspecified
        | RevocationReason::KeyCompromise
        | RevocationReason::AffiliationChanged
        | RevocationReason::Superseded
        | RevocationReason::CessationOfOperation => true,
        RevocationReason::CaCompromise | RevocationReason::PrivilegeWithdrawn => false,
    }
}

/// Whether the CSR asks for the key the presented certificate already
/// certifies. `record` holds the presented DER ([`Issuer::presented_record`]).
fn reuses_key(record: &CertificateRecord, csr: &csr::VerifiedCsr) -> bool {
    let Some(der) = record.certificate_der.as_deref() else {
        return false;
    };
    match Certificate::from_der(der) {
        Ok(certificate) => {
            certificate.tbs_certificate().subject_public_key_info() == &csr.subject_public_key_info
        }
        Err(_) => false,
    }
}

/// Revoked and expired certificates cannot renew; each says so.
fn refuse_unless_current(
    record: &CertificateRecord,
    now: OffsetDateTime,
) -> Result<(), HolderError> {
    let info = &record.info;
    match info.status {
        CertificateStatus::Revoked => Err(HolderError::Revoked {
            serial: info.serial.clone(),
            reason: info
                .revocation_reason
                .map_or("unspecified", RevocationReason::as_str)
                .to_owned(),
        }),
        CertificateStatus::Issued if now >= info.not_after => Err(HolderError::Expired {
            serial: info.serial.clone(),
            not_after: rfc3339(info.not_after),
        }),
        CertificateStatus::Issued => Ok(()),
        // A record with DER is issued or revoked; anything else is not a
        // certificate anyone holds.
        CertificateStatus::Pending | CertificateStatus::Failed => Err(HolderError::Unknown),
    }
}

/// Same names, ignoring order and duplicates (DNS is already lower-cased).
fn same_names(a: &Identity, b: &Identity) -> bool {
    fn set(names: &[String]) -> BTreeSet<&str> {
        names.iter().map(String::as_str).collect()
    }
    set(&a.dns) == set(&b.dns) && set(&a.ip) == set(&b.ip) && set(&a.uri) == set(&b.uri)
}

fn describe(identity: &Identity) -> String {
    let names: Vec<String> = identity
        .dns
        .iter()
        .map(|name| format!("dns:{name}"))
        .chain(identity.ip.iter().map(|ip| format!("ip:{ip}")))
        .chain(identity.uri.iter().map(|uri| format!("uri:{uri}")))
        .collect();
    if names.is_empty() {
        "no names".into()
    } else {
        names.join(", ")
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// When a renewal chain that began at `started` reaches `max_age_seconds`.
/// An age that ends past the calendar's range (year 9999; a policy may
/// write "10000000d" to mean "no limit") is no limit at all: `None`.
fn chain_end(started: OffsetDateTime, max_age_seconds: u64) -> Option<OffsetDateTime> {
    let seconds = i64::try_from(max_age_seconds).ok()?;
    started.checked_add(time::Duration::seconds(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_chain_end_adds_the_age_and_is_none_past_the_calendar() {
        let started = time::macros::datetime!(2026-12-01 00:00 UTC);
        assert_eq!(
            chain_end(started, 90 * 86_400),
            Some(time::macros::datetime!(2027-03-01 00:00 UTC))
        );
        assert_eq!(chain_end(started, 0), Some(started));
        // Far-future ages used to panic in `OffsetDateTime + Duration`.
        assert_eq!(chain_end(started, 10_000_000 * 86_400), None);
        assert_eq!(chain_end(started, i64::MAX as u64), None);
        assert_eq!(chain_end(started, u64::MAX), None);
    }

    fn identity(dns: &[&str], ip: &[&str]) -> Identity {
        Identity {
            dns: dns.iter().map(|s| s.to_string()).collect(),
            ip: ip.iter().map(|s| s.to_string()).collect(),
            uri: Vec::new(),
        }
    }

    #[test]
    fn ok_same_names_ignores_order() {
        assert!(same_names(
            &identity(&["a.test", "b.test"], &["10.0.0.1"]),
            &identity(&["b.test", "a.test"], &["10.0.0.1"])
        ));
    }

    #[test]
    fn fail_same_names_on_added_or_dropped_name() {
        let current = identity(&["a.test"], &[]);
        assert!(!same_names(&identity(&["a.test", "b.test"], &[]), &current));
        assert!(!same_names(&identity(&[], &[]), &current));
        assert!(!same_names(&identity(&["a.test"], &["10.0.0.1"]), &current));
    }
}
