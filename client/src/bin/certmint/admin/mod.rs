//! `certmint admin`: policies, bootstrap tokens, provisioners, certificates
//! and the audit log, over the admin API with a bearer admin JWT.
//!
//! Output: aligned tables (or `key: value` blocks) for people; with `--json`
//! the server's JSON body, pretty-printed, field for field (a list read with
//! `--all` prints `{"items": [...]}` over every page). Problems print as
//! `error: <code>: <detail>` on stderr and exit through [`Exit::for_error`].
//!
//! Invariants:
//! - No first contact without a trust decision: `--root-fingerprint` (pinned
//!   on first contact) or `--ca-bundle`; never "trust on first use".
//! - The admin token is read from `--token-file` or `CERTMINT_ADMIN_TOKEN`,
//!   sent only in the `Authorization` header and never printed, logged or
//!   kept in [`Args`] (whose `Debug` clap may print).
//! - A minted bootstrap JWT goes to stdout or to the `--out` file (mode
//!   0600) only; its id and expiry go to stderr.
//!
//! This module holds what every group shares (options, connection, paging,
//! printing, the error report); each group has its own module, as the
//! server's admin API does.

mod audit;
mod certificates;
mod policies;
mod provisioners;
mod tokens;

use std::path::{Path, PathBuf};

use certmint::audit::AuditChainError;
use certmint::client::admin::AdminRequest;
use certmint::client::{Client, ClientOptions, Error, TrustAnchors};
use certmint::wire::{Identity, Page};
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;

use crate::exit::Exit;
use crate::report;
use crate::table::Table;

/// Environment variable holding the admin JWT (when no `--token-file`).
const TOKEN_ENV: &str = "CERTMINT_ADMIN_TOKEN";
/// Most pages `--all` follows before deciding the server's cursor is stuck.
const MAX_PAGES: usize = 100_000;

/// `certmint admin` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The certmint server, https://host:port.
    #[arg(long, global = true, env = "CERTMINT_SERVER", value_name = "URL")]
    server: Option<String>,
    /// Trust the server's CA root with this SHA-256 fingerprint (sha256:<hex>),
    /// checked on first contact.
    #[arg(
        long,
        global = true,
        env = "CERTMINT_ROOT_FINGERPRINT",
        value_name = "sha256:HEX"
    )]
    root_fingerprint: Option<String>,
    /// Trust the CA certificates in this PEM file instead of pinning a fingerprint.
    #[arg(long, global = true, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// File holding the admin JWT (default: the CERTMINT_ADMIN_TOKEN variable).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    group: Group,
}

#[derive(Debug, clap::Subcommand)]
enum Group {
    /// Issuance policies.
    #[command(subcommand)]
    Policies(policies::PolicyCommand),
    /// Bootstrap tokens for first enrollment.
    #[command(subcommand)]
    Tokens(tokens::TokenCommand),
    /// Provisioners: external issuers that sign bootstrap tokens with their own key.
    #[command(subcommand)]
    Provisioners(provisioners::ProvisionerCommand),
    /// The certificate inventory.
    #[command(subcommand, visible_alias = "certs")]
    Certificates(certificates::CertificateCommand),
    /// The hash-chained audit log, newest first (--json: the server's pages, oldest first).
    Audit(audit::AuditArgs),
}

/// Paging options shared by every list.
#[derive(Debug, clap::Args)]
struct PageArgs {
    /// Page size (the server clamps it into 1-500; default 100).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Start at this cursor (a previous page's `next`).
    #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
    cursor: Option<String>,
    /// Follow cursors to the last page.
    #[arg(long)]
    all: bool,
}

/// Why a command stopped.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Client(#[from] Error),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    AuditChain(#[from] AuditChainError),
}

impl Failure {
    fn exit(&self) -> Exit {
        match self {
            Failure::Client(error) => Exit::for_error(error),
            Failure::Usage(_) => Exit::Usage,
            Failure::Io(_) | Failure::AuditChain(_) => Exit::Failure,
        }
    }

    /// `error: <code>: <detail>` for problems, with every refusal and the
    /// request id; `error: <text>` otherwise.
    fn report(&self) {
        match self {
            Failure::Client(error) => report::client_error(error),
            other => report::message(other),
        }
    }
}

/// What every command needs: the authenticated client and the output mode.
struct Context {
    client: Client,
    json: bool,
}

/// Runs the command.
pub async fn run(args: Args) -> Exit {
    let outcome = match connect(&args).await {
        Ok(context) => dispatch(&context, args.group).await,
        Err(failure) => Err(failure),
    };
    match outcome {
        Ok(exit) => exit,
        Err(failure) => {
            failure.report();
            failure.exit()
        }
    }
}

async fn connect(args: &Args) -> Result<Context, Failure> {
    let server = args.server.as_deref().ok_or_else(|| {
        Failure::Usage("no server: give --server URL or set CERTMINT_SERVER".into())
    })?;
    let token = admin_token(args.token_file.as_deref())?;
    let options = ClientOptions::default();
    let anchors = match (&args.root_fingerprint, &args.ca_bundle) {
        (Some(_), Some(_)) => {
            return Err(Failure::Usage(
                "give --root-fingerprint or --ca-bundle, not both".into(),
            ))
        }
        (Some(fingerprint), None) => Client::pin_root(server, fingerprint, &options).await?,
        (None, Some(bundle)) => TrustAnchors::from_pem(&read_text(bundle)?)?,
        (None, None) => {
            return Err(Failure::Usage(
                "no trust anchor: give --root-fingerprint sha256:<hex> (or set \
                 CERTMINT_ROOT_FINGERPRINT) or --ca-bundle FILE"
                    .into(),
            ))
        }
    };
    let client = Client::new(server, anchors, None, options)?.with_bearer(&token);
    Ok(Context {
        client,
        json: args.json,
    })
}

fn admin_token(file: Option<&Path>) -> Result<String, Failure> {
    let token = match file {
        Some(path) => read_text(path)?,
        None => std::env::var(TOKEN_ENV).map_err(|_| {
            Failure::Usage(format!(
                "no admin token: give --token-file FILE or set {TOKEN_ENV}"
            ))
        })?,
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(Failure::Usage("the admin token is empty".into()));
    }
    Ok(token.to_owned())
}

fn read_text(path: &Path) -> Result<String, Failure> {
    if path == Path::new("-") {
        return std::io::read_to_string(std::io::stdin())
            .map_err(|error| Failure::Io(format!("cannot read stdin: {error}")));
    }
    std::fs::read_to_string(path)
        .map_err(|error| Failure::Io(format!("cannot read {}: {error}", path.display())))
}

async fn dispatch(context: &Context, group: Group) -> Result<Exit, Failure> {
    match group {
        Group::Policies(command) => policies::run(context, command).await,
        Group::Tokens(command) => tokens::run(context, command).await,
        Group::Provisioners(command) => provisioners::run(context, command).await,
        Group::Certificates(command) => certificates::run(context, command).await,
        Group::Audit(args) => audit::run(context, args).await,
    }
}

impl Context {
    /// Sends `request`; returns the body both typed and as the server sent it.
    async fn fetch<T: DeserializeOwned>(
        &self,
        request: &AdminRequest<'_>,
    ) -> Result<(T, Value), Failure> {
        let raw: Value = self.client.admin(request).await?;
        let typed = serde_json::from_value(raw.clone()).map_err(|error| {
            Failure::Client(Error::UnexpectedResponse {
                status: 200,
                detail: format!("body is not the documented JSON: {error}"),
            })
        })?;
        Ok((typed, raw))
    }

    /// Reads one page, or every page with `--all`.
    async fn list<T: DeserializeOwned>(
        &self,
        page: &PageArgs,
        request: impl Fn(Option<&str>, Option<u32>) -> AdminRequest<'static>,
    ) -> Result<Listing<T>, Failure> {
        let mut listing = Listing {
            items: Vec::new(),
            raw: Vec::new(),
            next: None,
        };
        let mut cursor = page.cursor.clone();
        for _ in 0..MAX_PAGES {
            let (typed, raw): (Page<T>, Value) =
                self.fetch(&request(cursor.as_deref(), page.limit)).await?;
            listing.items.extend(typed.items);
            if let Some(items) = raw.get("items").and_then(Value::as_array) {
                listing.raw.extend(items.iter().cloned());
            }
            if !page.all {
                listing.next = typed.next;
                return Ok(listing);
            }
            match typed.next {
                Some(next) if Some(&next) == cursor.as_ref() => {
                    return Err(Failure::Client(Error::UnexpectedResponse {
                        status: 200,
                        detail: "the server returned the same cursor twice".into(),
                    }))
                }
                Some(next) => cursor = Some(next),
                None => return Ok(listing),
            }
        }
        Err(Failure::Client(Error::UnexpectedResponse {
            status: 200,
            detail: format!("more than {MAX_PAGES} pages: is the cursor stuck?"),
        }))
    }

    /// Prints `raw` (JSON mode) or `text` (people).
    fn print(&self, raw: &Value, text: impl FnOnce() -> String) -> Result<(), Failure> {
        if self.json {
            print_json(raw)
        } else {
            print!("{}", text());
            Ok(())
        }
    }

    fn print_listing<T>(
        &self,
        listing: &Listing<T>,
        table: impl FnOnce(&[T]) -> Table,
    ) -> Result<Exit, Failure> {
        if self.json {
            print_json(&listing.json())?;
        } else {
            let table = table(&listing.items);
            print!("{}", table.render());
        }
        if let Some(next) = &listing.next {
            eprintln!("(more results: add --cursor {next}, or --all)");
        }
        Ok(Exit::Ok)
    }
}

/// Items read from one or more pages.
struct Listing<T> {
    items: Vec<T>,
    raw: Vec<Value>,
    /// Cursor of the page after the last one read, without `--all`.
    next: Option<String>,
}

impl<T> Listing<T> {
    /// The JSON printed for a listing: the page shape, `next` only when
    /// more remain.
    fn json(&self) -> Value {
        let mut page = serde_json::Map::new();
        page.insert("items".into(), Value::Array(self.raw.clone()));
        if let Some(next) = &self.next {
            page.insert("next".into(), Value::String(next.clone()));
        }
        Value::Object(page)
    }
}

fn print_json(value: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| Failure::Io(format!("cannot encode JSON: {error}")))?;
    println!("{text}");
    Ok(())
}

// ---- formatting -------------------------------------------------------------

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// RFC 3339 to the second (the wire may carry fractions people do not need).
fn time_text(time: OffsetDateTime) -> String {
    let time = time.replace_nanosecond(0).unwrap_or(time);
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

fn identity_text(identity: &Identity) -> String {
    identity
        .dns
        .iter()
        .chain(&identity.ip)
        .chain(&identity.uri)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

/// The wire name of a value whose serde form is a plain string.
fn wire_name<T: serde::Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => "?".to_owned(),
    }
}

/// Parses a wire name (`key_compromise`; `key-compromise` is accepted too).
fn parse_wire_name<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    serde_json::from_value(Value::String(text.trim().replace('-', "_")))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_listing_json_keeps_the_page_shape() {
        let listing: Listing<()> = Listing {
            items: Vec::new(),
            raw: vec![serde_json::json!({"a": 1})],
            next: Some("c2".into()),
        };
        assert_eq!(
            listing.json(),
            serde_json::json!({"items": [{"a": 1}], "next": "c2"})
        );
    }
}
