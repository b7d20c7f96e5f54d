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

#[path = "table.rs"]
mod table;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use certmint::audit::{verify_chain, AuditChainError};
use certmint::client::admin::{AdminRequest, CertificateFilter};
use certmint::client::{Client, ClientOptions, Error, TrustAnchors};
use certmint::wire::{
    AuditEvent, CertificateInfo, CertificateStatus, EvaluateRequest, EvaluateResponse, Identity,
    MintTokenRequest, MintedToken, NewProvisioner, Page, Policy, PolicySpec, ProvisionerInfo,
    RevocationReason, RevokeRequest, TokenInfo, Verdict,
};
use certmint::Duration;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;

use crate::exit::Exit;
use table::{key_values, Table};

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
    Policies(PolicyCommand),
    /// Bootstrap tokens for first enrollment.
    #[command(subcommand)]
    Tokens(TokenCommand),
    /// Provisioners: external issuers that sign bootstrap tokens with their own key.
    #[command(subcommand)]
    Provisioners(ProvisionerCommand),
    /// The certificate inventory.
    #[command(subcommand, visible_alias = "certs")]
    Certificates(CertificateCommand),
    /// The hash-chained audit log, oldest first.
    Audit(AuditArgs),
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

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
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

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Mint a bootstrap token; the JWT goes to stdout (or --out), id and expiry to stderr.
    Mint {
        /// Policy the token enrolls under.
        #[arg(long, value_name = "NAME")]
        policy: String,
        /// DNS name (or pattern narrower than the policy's); repeatable.
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// IP address or CIDR range; repeatable.
        #[arg(long, value_name = "IP")]
        ip: Vec<String>,
        /// URI (or pattern); repeatable.
        #[arg(long, value_name = "URI")]
        uri: Vec<String>,
        /// Token lifetime (server default 1h).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<Duration>,
        /// Enrollments allowed (server default 1).
        #[arg(long, value_name = "N")]
        max_uses: Option<u32>,
        /// Write the JWT to this file (mode 0600) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List bootstrap tokens (never their JWTs).
    List(PageArgs),
    /// Show one bootstrap token.
    Show {
        /// Token id.
        id: String,
    },
    /// Revoke a bootstrap token.
    Revoke {
        /// Token id.
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ProvisionerCommand {
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

#[derive(Debug, clap::Subcommand)]
enum CertificateCommand {
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

#[derive(Debug, clap::Args)]
struct AuditArgs {
    #[command(flatten)]
    page: PageArgs,
    /// Recompute the hash chain of the events read (from seq 1 with --all).
    #[arg(long)]
    verify: bool,
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
            Failure::Client(Error::Problem(problem)) => {
                eprintln!(
                    "error: {}: {}",
                    problem.code,
                    table::printable(&problem.detail)
                );
                for refusal in &problem.refusals {
                    eprintln!(
                        "  {} {}: {}: {}",
                        refusal.kind,
                        table::printable(&refusal.name),
                        refusal.code,
                        table::printable(&refusal.reason)
                    );
                }
                if let Some(id) = &problem.request_id {
                    eprintln!("  (request id {id})");
                }
            }
            other => eprintln!("error: {other}"),
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
        Group::Policies(command) => policies(context, command).await,
        Group::Tokens(command) => tokens(context, command).await,
        Group::Provisioners(command) => provisioners(context, command).await,
        Group::Certificates(command) => certificates(context, command).await,
        Group::Audit(args) => audit(context, args).await,
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

// ---- policies ---------------------------------------------------------------

async fn policies(context: &Context, command: PolicyCommand) -> Result<Exit, Failure> {
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

// ---- tokens -----------------------------------------------------------------

async fn tokens(context: &Context, command: TokenCommand) -> Result<Exit, Failure> {
    match command {
        TokenCommand::Mint {
            policy,
            dns,
            ip,
            uri,
            ttl,
            max_uses,
            out,
        } => {
            let request = MintTokenRequest {
                policy,
                identity: Identity { dns, ip, uri },
                ttl,
                max_uses,
            };
            let (minted, mut raw): (MintedToken, Value) =
                context.fetch(&AdminRequest::mint_token(&request)).await?;
            match &out {
                Some(path) => write_secret(path, &minted.token)?,
                None if context.json => {}
                None => println!("{}", minted.token),
            }
            if context.json {
                // With --out the JWT belongs in the file only.
                if let (Some(_), Some(object)) = (&out, raw.as_object_mut()) {
                    object.remove("token");
                }
                print_json(&raw)?;
            }
            eprintln!(
                "minted token {} for policy {}: {} use(s), expires {}{}",
                minted.id,
                minted.policy,
                minted.max_uses,
                time_text(minted.expires_at),
                out.as_ref()
                    .map(|path| format!("; JWT written to {}", path.display()))
                    .unwrap_or_default()
            );
            Ok(Exit::Ok)
        }
        TokenCommand::List(page) => {
            let listing: Listing<TokenInfo> =
                context.list(&page, AdminRequest::list_tokens).await?;
            let now = OffsetDateTime::now_utc();
            context.print_listing(&listing, |tokens| token_table(tokens, now))
        }
        TokenCommand::Show { id } => {
            let (token, raw): (TokenInfo, Value) =
                context.fetch(&AdminRequest::token(&id)?).await?;
            let now = OffsetDateTime::now_utc();
            context.print(&raw, || token_details(&token, now))?;
            Ok(Exit::Ok)
        }
        TokenCommand::Revoke { id } => {
            let (token, raw): (TokenInfo, Value) =
                context.fetch(&AdminRequest::revoke_token(&id)?).await?;
            context.print(&raw, || {
                format!(
                    "revoked token {} at {}\n",
                    token.id,
                    token.revoked_at.map(time_text).unwrap_or_default()
                )
            })?;
            Ok(Exit::Ok)
        }
    }
}

/// Writes `secret` to `path` readable by its owner only, also when the file
/// existed with wider permissions.
fn write_secret(path: &Path, secret: &str) -> Result<(), Failure> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let io =
        |error: std::io::Error| Failure::Io(format!("cannot write {}: {error}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // `mode` applies only on creation; narrow an existing file before
    // the secret is in it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(secret.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)
}

fn token_state(token: &TokenInfo, now: OffsetDateTime) -> &'static str {
    if token.revoked_at.is_some() {
        "revoked"
    } else if token.expires_at <= now {
        "expired"
    } else if token.uses >= token.max_uses {
        "used up"
    } else {
        "active"
    }
}

fn token_table(tokens: &[TokenInfo], now: OffsetDateTime) -> Table {
    let mut table = Table::new(&["ID", "POLICY", "STATE", "USES", "EXPIRES", "IDENTITY"]);
    for token in tokens {
        table.row(vec![
            token.id.clone(),
            token.policy.clone(),
            token_state(token, now).into(),
            format!("{}/{}", token.uses, token.max_uses),
            time_text(token.expires_at),
            identity_text(&token.identity),
        ]);
    }
    table
}

fn token_details(token: &TokenInfo, now: OffsetDateTime) -> String {
    key_values(&[
        ("id", token.id.clone()),
        ("policy", token.policy.clone()),
        ("state", token_state(token, now).into()),
        ("uses", format!("{} of {}", token.uses, token.max_uses)),
        ("identity", identity_text(&token.identity)),
        ("created", time_text(token.created_at)),
        ("expires", time_text(token.expires_at)),
        (
            "revoked",
            token.revoked_at.map(time_text).unwrap_or_default(),
        ),
    ])
}

// ---- provisioners -----------------------------------------------------------

async fn provisioners(context: &Context, command: ProvisionerCommand) -> Result<Exit, Failure> {
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

// ---- certificates -----------------------------------------------------------

async fn certificates(context: &Context, command: CertificateCommand) -> Result<Exit, Failure> {
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

// ---- audit ------------------------------------------------------------------

async fn audit(context: &Context, args: AuditArgs) -> Result<Exit, Failure> {
    let listing: Listing<AuditEvent> = context.list(&args.page, AdminRequest::audit).await?;
    context.print_listing(&listing, audit_table)?;
    if args.verify {
        verify_chain(&listing.items)?;
        let anchor = match listing.items.first() {
            Some(first) if first.seq == 1 => "from the genesis hash".to_owned(),
            Some(first) => format!(
                "anchored at seq {}'s prev_hash (use --all to check from the start)",
                first.seq
            ),
            None => "nothing to check".to_owned(),
        };
        let range = match (listing.items.first(), listing.items.last()) {
            (Some(first), Some(last)) => format!(", seq {}..{}", first.seq, last.seq),
            _ => String::new(),
        };
        eprintln!(
            "audit chain verified: {} event(s){range}, {anchor}",
            listing.items.len()
        );
    }
    Ok(Exit::Ok)
}

fn audit_table(events: &[AuditEvent]) -> Table {
    let mut table = Table::new(&["SEQ", "AT", "KIND", "ACTOR", "SUBJECT", "DATA"]);
    for event in events {
        table.row(vec![
            event.seq.to_string(),
            time_text(event.at),
            event.kind.clone(),
            event.actor.clone(),
            event.subject.clone(),
            event.data.to_string(),
        ]);
    }
    table
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

fn status_text(status: CertificateStatus) -> String {
    wire_name(status)
}

fn reason_text(reason: RevocationReason) -> String {
    wire_name(reason)
}

/// Parses a wire name (`key_compromise`; `key-compromise` is accepted too).
fn parse_wire_name<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    serde_json::from_value(Value::String(text.trim().replace('-', "_")))
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

    #[test]
    fn ok_token_states() {
        let now = OffsetDateTime::now_utc();
        let mut token = TokenInfo {
            id: "t1".into(),
            policy: "web".into(),
            identity: Identity::default(),
            max_uses: 2,
            uses: 1,
            expires_at: now + time::Duration::hours(1),
            created_at: now,
            revoked_at: None,
        };
        assert_eq!(token_state(&token, now), "active");
        token.uses = 2;
        assert_eq!(token_state(&token, now), "used up");
        token.expires_at = now - time::Duration::seconds(1);
        assert_eq!(token_state(&token, now), "expired");
        token.revoked_at = Some(now);
        assert_eq!(token_state(&token, now), "revoked");
    }

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

    #[test]
    fn ok_secret_file_is_owner_only_even_when_it_existed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.jwt");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&path, "eyJ.x.y").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "eyJ.x.y\n");
    }
}
