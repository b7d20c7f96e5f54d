//! `certmint admin provisioners`: register, list, show and disable the
//! external issuers whose own keys sign bootstrap tokens.
//!
//! Invariants: the public key is sent as read (PEM); nothing is deleted,
//! a provisioner is only ever disabled.

use std::path::PathBuf;

use certmint::client::admin::AdminRequest;
use certmint::wire::{NewProvisioner, Page, ProvisionerInfo};
use certmint::Duration;
use serde_json::Value;

use super::{read_text, time_text, Context, Failure, Listing};
use crate::exit::Exit;
use crate::table::{self, key_values, Table};

#[derive(Debug, clap::Subcommand)]
pub(super) enum ProvisionerCommand {
    /// Register a provisioner; its tokens enroll under the given policies.
    Register {
        /// Unique name, and the `iss` of its tokens (never reused).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Its public key, SubjectPublicKeyInfo PEM (P-256, P-384 or Ed25519), or - for stdin.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Policy its tokens may enroll under; repeatable, at least one.
        #[arg(long = "policy", value_name = "NAME", required = true)]
        policies: Vec<String>,
        /// Longest token lifetime accepted (server default 5m, at most 1h).
        #[arg(long, value_name = "DURATION")]
        max_token_ttl: Option<Duration>,
    },
    /// List every provisioner.
    List,
    /// Show one provisioner, with its public key.
    Show {
        /// Provisioner name.
        name: String,
    },
    /// Disable a provisioner: its tokens are refused from now on (nothing is deleted).
    Disable {
        /// Provisioner name.
        name: String,
    },
}

pub(super) async fn run(context: &Context, command: ProvisionerCommand) -> Result<Exit, Failure> {
    match command {
        ProvisionerCommand::Register {
            name,
            public_key,
            policies,
            max_token_ttl,
        } => {
            let request = NewProvisioner {
                name,
                public_key_pem: read_text(&public_key)?,
                policies,
                max_token_ttl,
            };
            let (provisioner, raw): (ProvisionerInfo, Value) = context
                .fetch(&AdminRequest::register_provisioner(&request))
                .await?;
            context.print(&raw, || {
                format!(
                    "registered provisioner {} ({}, key id {}) for policies {}; \
                     tokens live at most {}\n",
                    provisioner.name,
                    provisioner.algorithm,
                    provisioner.key_id,
                    provisioner.policies.join(", "),
                    provisioner.max_token_ttl
                )
            })?;
            Ok(Exit::Ok)
        }
        ProvisionerCommand::List => {
            // The server answers with every provisioner in one page.
            let (page, raw): (Page<ProvisionerInfo>, Value) =
                context.fetch(&AdminRequest::list_provisioners()).await?;
            let listing = Listing {
                items: page.items,
                raw: raw
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                next: page.next,
            };
            context.print_listing(&listing, provisioner_table)
        }
        ProvisionerCommand::Show { name } => {
            let (provisioner, raw): (ProvisionerInfo, Value) =
                context.fetch(&AdminRequest::provisioner(&name)?).await?;
            context.print(&raw, || provisioner_details(&provisioner))?;
            Ok(Exit::Ok)
        }
        ProvisionerCommand::Disable { name } => {
            let (provisioner, raw): (ProvisionerInfo, Value) = context
                .fetch(&AdminRequest::disable_provisioner(&name)?)
                .await?;
            context.print(&raw, || {
                format!(
                    "disabled provisioner {} at {}\n",
                    provisioner.name,
                    provisioner.disabled_at.map(time_text).unwrap_or_default()
                )
            })?;
            Ok(Exit::Ok)
        }
    }
}

fn provisioner_status(provisioner: &ProvisionerInfo) -> &'static str {
    if provisioner.disabled_at.is_some() {
        "disabled"
    } else {
        "enabled"
    }
}

fn provisioner_table(provisioners: &[ProvisionerInfo]) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "ALGORITHM",
        "KEY ID",
        "POLICIES",
        "MAX TTL",
        "STATUS",
    ]);
    for provisioner in provisioners {
        table.row(vec![
            provisioner.name.clone(),
            provisioner.algorithm.clone(),
            provisioner.key_id.clone(),
            provisioner.policies.join(","),
            provisioner.max_token_ttl.to_string(),
            provisioner_status(provisioner).into(),
        ]);
    }
    table
}

fn provisioner_details(provisioner: &ProvisionerInfo) -> String {
    let mut text = key_values(&[
        ("name", provisioner.name.clone()),
        ("status", provisioner_status(provisioner).into()),
        ("algorithm", provisioner.algorithm.clone()),
        ("key id", provisioner.key_id.clone()),
        ("policies", provisioner.policies.join(", ")),
        ("max token ttl", provisioner.max_token_ttl.to_string()),
        ("created", time_text(provisioner.created_at)),
        ("created by", provisioner.created_by.clone()),
        (
            "disabled",
            provisioner.disabled_at.map(time_text).unwrap_or_default(),
        ),
        ("public key", String::new()),
    ]);
    // The key is several lines: the PEM block follows its heading.
    for line in provisioner.public_key_pem.trim_end().lines() {
        text.push_str(&table::printable(line));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;

    #[test]
    fn ok_provisioner_status_table_and_details() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut provisioner = ProvisionerInfo {
            name: "k8s".into(),
            algorithm: "ES256".into(),
            key_id: "0a1b2c".into(),
            public_key_pem: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
            policies: vec!["db".into(), "web".into()],
            max_token_ttl: "5m".parse().unwrap(),
            created_at: now,
            created_by: "admin:alice".into(),
            disabled_at: None,
        };
        assert_eq!(provisioner_status(&provisioner), "enabled");
        let rendered = provisioner_table(std::slice::from_ref(&provisioner)).render();
        assert_eq!(
            rendered,
            "NAME  ALGORITHM  KEY ID  POLICIES  MAX TTL  STATUS\n\
             k8s   ES256      0a1b2c  db,web    5m       enabled\n"
        );
        provisioner.disabled_at = Some(now);
        assert_eq!(provisioner_status(&provisioner), "disabled");
        let details = provisioner_details(&provisioner);
        assert!(
            details
                .lines()
                .any(|l| l.starts_with("status:") && l.ends_with(" disabled")),
            "{details}"
        );
        assert!(
            details.ends_with(
                "public key:\n-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
            ),
            "{details}"
        );
    }
}
