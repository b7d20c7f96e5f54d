//! `certmint admin policies`: list, show, create, replace, disable and
//! dry-run evaluate issuance policies.
//!
//! Invariants: a policy document is parsed as the SDK's [`PolicySpec`]
//! before anything is sent; a deny from `evaluate` is an answer, printed
//! and mapped to [`Exit::PolicyRefused`], never an error.

use std::path::{Path, PathBuf};

use certmint::client::admin::AdminRequest;
use certmint::wire::{EvaluateRequest, EvaluateResponse, Identity, Policy, PolicySpec, Verdict};
use certmint::Duration;
use serde_json::Value;

use super::{read_text, time_text, yes_no, Context, Failure, Listing, PageArgs};
use crate::exit::Exit;
use crate::table::{key_values, Table};

#[derive(Debug, clap::Subcommand)]
pub(super) enum PolicyCommand {
    /// List the current version of every policy.
    List(PageArgs),
    /// Show the current version of one policy.
    Show {
        /// Policy name.
        name: String,
    },
    /// Create a policy (version 1) from a JSON document.
    Create {
        /// The policy JSON file, or - for stdin.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Replace a policy with a new version from a JSON document.
    Replace {
        /// Policy name (must equal the document's name).
        name: String,
        /// The policy JSON file, or - for stdin.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Disable a policy (writes a disabled version; nothing is deleted).
    Disable {
        /// Policy name.
        name: String,
    },
    /// Dry run: would this CSR (and token identity) be issued? Exits 6 on deny.
    Evaluate {
        /// Policy name.
        name: String,
        /// The CSR, PEM.
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// DNS name (or pattern) a token would bind; repeatable.
        #[arg(long = "identity-dns", value_name = "NAME")]
        dns: Vec<String>,
        /// IP address (or CIDR) a token would bind; repeatable.
        #[arg(long = "identity-ip", value_name = "IP")]
        ip: Vec<String>,
        /// URI (or pattern) a token would bind; repeatable.
        #[arg(long = "identity-uri", value_name = "URI")]
        uri: Vec<String>,
        /// Requested certificate lifetime, e.g. 24h.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<Duration>,
    },
}

pub(super) async fn run(context: &Context, command: PolicyCommand) -> Result<Exit, Failure> {
    match command {
        PolicyCommand::List(page) => {
            let listing: Listing<Policy> = context.list(&page, AdminRequest::list_policies).await?;
            context.print_listing(&listing, policy_table)
        }
        PolicyCommand::Show { name } => {
            let (policy, raw): (Policy, Value) =
                context.fetch(&AdminRequest::policy(&name)?).await?;
            context.print(&raw, || policy_details(&policy))?;
            Ok(Exit::Ok)
        }
        PolicyCommand::Create { file } => {
            let spec = read_policy(&file)?;
            let (policy, raw): (Policy, Value) =
                context.fetch(&AdminRequest::create_policy(&spec)).await?;
            context.print(&raw, || {
                format!(
                    "created policy {} version {}\n",
                    policy.spec.name, policy.version
                )
            })?;
            Ok(Exit::Ok)
        }
        PolicyCommand::Replace { name, file } => {
            let spec = read_policy(&file)?;
            let (policy, raw): (Policy, Value) = context
                .fetch(&AdminRequest::replace_policy(&name, &spec)?)
                .await?;
            context.print(&raw, || {
                format!(
                    "replaced policy {}: now version {}\n",
                    policy.spec.name, policy.version
                )
            })?;
            Ok(Exit::Ok)
        }
        PolicyCommand::Disable { name } => {
            let (policy, raw): (Policy, Value) =
                context.fetch(&AdminRequest::disable_policy(&name)?).await?;
            context.print(&raw, || {
                format!(
                    "disabled policy {} (version {})\n",
                    policy.spec.name, policy.version
                )
            })?;
            Ok(Exit::Ok)
        }
        PolicyCommand::Evaluate {
            name,
            csr,
            dns,
            ip,
            uri,
            ttl,
        } => {
            let identity = Identity { dns, ip, uri };
            let request = EvaluateRequest {
                csr: read_text(&csr)?,
                identity: (!identity.is_empty()).then_some(identity),
                ttl,
            };
            let (outcome, raw): (EvaluateResponse, Value) = context
                .fetch(&AdminRequest::evaluate_policy(&name, &request)?)
                .await?;
            context.print(&raw, || evaluation(&name, &outcome))?;
            // A deny is an answer, not an error, but scripts should be able
            // to branch on it without parsing.
            Ok(match outcome.decision {
                Verdict::Allow => Exit::Ok,
                Verdict::Deny => Exit::PolicyRefused,
            })
        }
    }
}

fn read_policy(file: &Path) -> Result<PolicySpec, Failure> {
    let text = read_text(file)?;
    serde_json::from_str(&text).map_err(|error| {
        Failure::Usage(format!(
            "{} is not a policy document: {error}",
            file.display()
        ))
    })
}

fn policy_table(policies: &[Policy]) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "VERSION",
        "ENABLED",
        "TTL",
        "KEY TYPES",
        "EKU",
        "DESCRIPTION",
    ]);
    for policy in policies {
        let spec = &policy.spec;
        table.row(vec![
            spec.name.clone(),
            policy.version.to_string(),
            yes_no(spec.enabled),
            format!("{}/{}", spec.ttl.default, spec.ttl.max),
            spec.key_types.join(","),
            spec.extended_key_usage.join(","),
            spec.description.clone(),
        ]);
    }
    table
}

fn policy_details(policy: &Policy) -> String {
    let spec = &policy.spec;
    key_values(&[
        ("name", spec.name.clone()),
        ("version", policy.version.to_string()),
        ("created", time_text(policy.created_at)),
        ("enabled", yes_no(spec.enabled)),
        ("description", spec.description.clone()),
        ("allowed dns", spec.allowed.dns.join(", ")),
        ("allowed ip", spec.allowed.ip.join(", ")),
        ("allowed uri", spec.allowed.uri.join(", ")),
        ("key types", spec.key_types.join(", ")),
        (
            "ttl",
            format!("default {}, max {}", spec.ttl.default, spec.ttl.max),
        ),
        ("eku", spec.extended_key_usage.join(", ")),
        ("renewal", yes_no(spec.renewal.allowed)),
        (
            "max chain age",
            spec.renewal
                .max_chain_age
                .map(|age| age.to_string())
                .unwrap_or_else(|| "unlimited".into()),
        ),
        (
            "wildcard certificates",
            yes_no(spec.allow_wildcard_certificates),
        ),
    ])
}

fn evaluation(name: &str, outcome: &EvaluateResponse) -> String {
    let verdict = match outcome.decision {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
    };
    let mut text = format!(
        "{verdict}: policy {name} version {}\n",
        outcome.policy_version
    );
    if !outcome.refusals.is_empty() {
        let mut table = Table::new(&["KIND", "NAME", "CODE", "REASON"]);
        for refusal in &outcome.refusals {
            table.row(vec![
                refusal.kind.clone(),
                refusal.name.clone(),
                refusal.code.to_string(),
                refusal.reason.clone(),
            ]);
        }
        text.push_str(&table.render());
    }
    text
}
