//! `certmint admin tokens`: mint, list, show and revoke bootstrap tokens.
//!
//! Invariants: a minted JWT goes to stdout or to the `--out` file (mode
//! 0600, narrowed before the secret is written) and never to stderr, a log
//! or the JSON printed with `--out`; listings show token ids, never JWTs.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use certmint::client::admin::AdminRequest;
use certmint::wire::{Identity, MintTokenRequest, MintedToken, TokenInfo};
use certmint::Duration;
use serde_json::Value;
use time::OffsetDateTime;

use super::{identity_text, print_json, time_text, Context, Failure, Listing, PageArgs};
use crate::exit::Exit;
use crate::table::{key_values, Table};

#[derive(Debug, clap::Subcommand)]
pub(super) enum TokenCommand {
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

pub(super) async fn run(context: &Context, command: TokenCommand) -> Result<Exit, Failure> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
