//! `certmint admin certificates`: list, show and revoke certificates of
//! the inventory.
//!
//! Invariants: statuses and revocation reasons are parsed and printed by
//! their wire names, so the CLI never invents a spelling the server does
//! not know.

use certmint::client::admin::{AdminRequest, CertificateFilter};
use certmint::wire::{CertificateInfo, CertificateStatus, RevocationReason, RevokeRequest};
use certmint::Duration;
use serde_json::Value;
use time::OffsetDateTime;

use super::{
    identity_text, parse_wire_name, time_text, wire_name, Context, Failure, Listing, PageArgs,
};
use crate::exit::Exit;
use crate::table::{key_values, Table};

#[derive(Debug, clap::Subcommand)]
pub(super) enum CertificateCommand {
    /// List the inventory, newest first.
    List {
        /// Only certificates of this policy.
        #[arg(long, value_name = "NAME")]
        policy: Option<String>,
        /// Only certificates in this state: pending, issued, revoked, failed
        /// (issued includes expired ones, which the table shows as expired).
        #[arg(long, value_name = "STATUS", value_parser = parse_status)]
        status: Option<CertificateStatus>,
        /// Only certificates expiring within this span, e.g. 24h.
        #[arg(long, value_name = "DURATION")]
        expiring_within: Option<Duration>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one certificate.
    Show {
        /// Serial number, hex.
        serial: String,
        /// Print only the certificate, PEM.
        #[arg(long)]
        pem: bool,
    },
    /// Revoke a certificate.
    Revoke {
        /// Serial number, hex.
        serial: String,
        /// RFC 5280 reason: unspecified, key_compromise, ca_compromise,
        /// affiliation_changed, superseded, cessation_of_operation,
        /// privilege_withdrawn.
        #[arg(long, value_name = "REASON", value_parser = parse_reason, default_value = "unspecified")]
        reason: RevocationReason,
        /// With key_compromise: since when the key is known or suspected to
        /// be compromised (RFC 3339, e.g. 2026-12-08T09:30:00Z); CRLs carry
        /// it as the entry's invalidity date.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        invalidity_date: Option<OffsetDateTime>,
    },
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|error| format!("{text:?} is not an RFC 3339 time: {error}"))
}

pub(super) async fn run(context: &Context, command: CertificateCommand) -> Result<Exit, Failure> {
    match command {
        CertificateCommand::List {
            policy,
            status,
            expiring_within,
            page,
        } => {
            let listing: Listing<CertificateInfo> = context
                .list(&page, |cursor, limit| {
                    AdminRequest::list_certificates(&CertificateFilter {
                        policy: policy.clone(),
                        status,
                        expiring_within,
                        cursor: cursor.map(str::to_owned),
                        limit,
                    })
                })
                .await?;
            let now = OffsetDateTime::now_utc();
            context.print_listing(&listing, |certificates| {
                certificate_table(certificates, now)
            })
        }
        CertificateCommand::Show { serial, pem } => {
            let (certificate, raw): (CertificateInfo, Value) =
                context.fetch(&AdminRequest::certificate(&serial)?).await?;
            if pem {
                let Some(pem) = &certificate.certificate_pem else {
                    return Err(Failure::Io(format!(
                        "certificate {} has no PEM (status {})",
                        certificate.serial,
                        status_text(certificate.status)
                    )));
                };
                print!("{pem}");
                return Ok(Exit::Ok);
            }
            let now = OffsetDateTime::now_utc();
            context.print(&raw, || certificate_details(&certificate, now))?;
            Ok(Exit::Ok)
        }
        CertificateCommand::Revoke {
            serial,
            reason,
            invalidity_date,
        } => {
            let request = RevokeRequest {
                reason,
                invalidity_date,
            };
            let (certificate, raw): (CertificateInfo, Value) = context
                .fetch(&AdminRequest::revoke_certificate(&serial, &request)?)
                .await?;
            context.print(&raw, || {
                format!(
                    "revoked certificate {} ({}) at {}\n",
                    certificate.serial,
                    reason_text(certificate.revocation_reason.unwrap_or(reason)),
                    certificate.revoked_at.map(time_text).unwrap_or_default()
                )
            })?;
            Ok(Exit::Ok)
        }
    }
}

fn certificate_table(certificates: &[CertificateInfo], now: OffsetDateTime) -> Table {
    let mut table = Table::new(&["SERIAL", "STATUS", "POLICY", "NOT AFTER", "KEY", "NAMES"]);
    for certificate in certificates {
        table.row(vec![
            certificate.serial.clone(),
            shown_status(certificate, now),
            format!("{} v{}", certificate.policy, certificate.policy_version),
            time_text(certificate.not_after),
            certificate.key_type.clone(),
            identity_text(&certificate.identity),
        ]);
    }
    table
}

fn certificate_details(certificate: &CertificateInfo, now: OffsetDateTime) -> String {
    key_values(&[
        ("serial", certificate.serial.clone()),
        ("status", shown_status(certificate, now)),
        (
            "policy",
            format!(
                "{} version {}",
                certificate.policy, certificate.policy_version
            ),
        ),
        ("names", identity_text(&certificate.identity)),
        ("key type", certificate.key_type.clone()),
        ("not before", time_text(certificate.not_before)),
        ("not after", time_text(certificate.not_after)),
        ("created", time_text(certificate.created_at)),
        ("token", certificate.token_id.clone().unwrap_or_default()),
        (
            "renewal of",
            certificate.predecessor.clone().unwrap_or_default(),
        ),
        (
            "revoked",
            certificate.revoked_at.map(time_text).unwrap_or_default(),
        ),
        (
            "revocation reason",
            certificate
                .revocation_reason
                .map(reason_text)
                .unwrap_or_default(),
        ),
    ])
}

/// The status people see: the server's, except that an issued
/// certificate past its `not_after` reads `expired` (the inventory keeps
/// it `issued`; `--json` shows the server's word).
fn shown_status(certificate: &CertificateInfo, now: OffsetDateTime) -> String {
    match certificate.status {
        CertificateStatus::Issued if certificate.not_after <= now => "expired".to_owned(),
        status => status_text(status),
    }
}

fn status_text(status: CertificateStatus) -> String {
    wire_name(status)
}

fn reason_text(reason: RevocationReason) -> String {
    wire_name(reason)
}

fn parse_status(text: &str) -> Result<CertificateStatus, String> {
    parse_wire_name(text)
        .map_err(|_| format!("{text:?} is not one of pending, issued, revoked, failed"))
}

fn parse_reason(text: &str) -> Result<RevocationReason, String> {
    parse_wire_name(text).map_err(|_| {
        format!(
            "{text:?} is not one of unspecified, key_compromise, ca_compromise, \
             affiliation_changed, superseded, cessation_of_operation, privilege_withdrawn"
        )
    })
}

#[cfg(test)]
mod tests {
    use certmint::wire::Identity;

    use super::*;

    #[test]
    fn ok_issued_certificates_past_not_after_show_as_expired() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut certificate = CertificateInfo {
            serial: "0a1b".into(),
            status: CertificateStatus::Issued,
            policy: "web".into(),
            policy_version: 1,
            identity: Identity {
                dns: vec!["a.test".into()],
                ..Identity::default()
            },
            key_type: "ec-p256".into(),
            not_before: now - time::Duration::hours(2),
            not_after: now + time::Duration::hours(1),
            token_id: None,
            predecessor: None,
            created_at: now - time::Duration::hours(2),
            revoked_at: None,
            revocation_reason: None,
            certificate_pem: None,
        };
        assert_eq!(shown_status(&certificate, now), "issued");
        certificate.not_after = now;
        assert_eq!(shown_status(&certificate, now), "expired");
        let table = certificate_table(std::slice::from_ref(&certificate), now).render();
        assert!(
            table.lines().nth(1).unwrap().starts_with("0a1b    expired"),
            "{table}"
        );
        let details = certificate_details(&certificate, now);
        assert!(
            details
                .lines()
                .any(|l| l.starts_with("status:") && l.ends_with(" expired")),
            "{details}"
        );
        // Revocation says more than expiry; other states are the server's.
        certificate.status = CertificateStatus::Revoked;
        assert_eq!(shown_status(&certificate, now), "revoked");
        certificate.status = CertificateStatus::Pending;
        assert_eq!(shown_status(&certificate, now), "pending");
    }

    #[test]
    fn ok_wire_names_parse_both_spellings() {
        assert_eq!(
            parse_reason("key_compromise").unwrap(),
            RevocationReason::KeyCompromise
        );
        assert_eq!(
            parse_reason("key-compromise").unwrap(),
            RevocationReason::KeyCompromise
        );
        assert_eq!(parse_status("revoked").unwrap(), CertificateStatus::Revoked);
        assert!(parse_reason("certificate_hold").is_err());
        assert!(parse_status("valid").is_err());
        assert_eq!(reason_text(RevocationReason::CaCompromise), "ca_compromise");
    }
}
