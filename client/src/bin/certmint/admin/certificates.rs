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
        /// Only certificates in this state: pending, issued, revoked, failed.
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
    },
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
            context.print_listing(&listing, certificate_table)
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
            context.print(&raw, || certificate_details(&certificate))?;
            Ok(Exit::Ok)
        }
        CertificateCommand::Revoke { serial, reason } => {
            let request = RevokeRequest { reason };
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

fn certificate_table(certificates: &[CertificateInfo]) -> Table {
    let mut table = Table::new(&["SERIAL", "STATUS", "POLICY", "NOT AFTER", "KEY", "NAMES"]);
    for certificate in certificates {
        table.row(vec![
            certificate.serial.clone(),
            status_text(certificate.status),
            format!("{} v{}", certificate.policy, certificate.policy_version),
            time_text(certificate.not_after),
            certificate.key_type.clone(),
            identity_text(&certificate.identity),
        ]);
    }
    table
}

fn certificate_details(certificate: &CertificateInfo) -> String {
    key_values(&[
        ("serial", certificate.serial.clone()),
        ("status", status_text(certificate.status)),
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
    use super::*;

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
