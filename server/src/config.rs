//! Server configuration: the TOML file written by `certmint-server init` and
//! read by every other command.
//!
//! Invariants: the configuration never holds a secret. The HSM PIN is read
//! from an environment variable or a file named here, at the moment it is
//! needed, and lives in a [`SecretString`] that redacts itself from `Debug`.
//! Relative paths are resolved against the directory of the config file, so a
//! config and its data directory can move together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use certmint::wire::{KeyType, REDACTED};
use certmint::Duration;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path} is invalid: {message}")]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// What is wrong, with a line and column: never a quote of the file,
        /// whose `database.url` may hold a PostgreSQL password.
        message: String,
    },
    /// The PIN is configured nowhere, or its source is unreadable.
    #[error("HSM PIN unavailable: {0}")]
    Pin(String),
}

/// The whole configuration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTPS listener and the server's own identity.
    pub server: ServerConfig,
    /// Database location.
    pub database: DatabaseConfig,
    /// PKCS#11 token holding the CA keys.
    pub hsm: HsmSection,
    /// CA naming, key types and validity.
    pub ca: CaConfig,
    /// Bootstrap and admin token settings.
    #[serde(default)]
    pub tokens: TokensConfig,
    /// Issuance defaults.
    #[serde(default)]
    pub issuance: IssuanceConfig,
    /// Revocation lists.
    #[serde(default)]
    pub crl: CrlConfig,
    /// Where this file was loaded from (not serialised).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[server]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Socket address to listen on.
    pub listen: SocketAddr,
    /// External base URL clients use; bootstrap token audiences derive from it.
    pub public_url: String,
    /// SANs of the server's own TLS certificate (DNS names or IP addresses).
    pub names: Vec<String>,
    /// Lifetime of the server's own TLS certificate; renewed at two thirds.
    #[serde(default = "default_server_cert_ttl")]
    pub tls_certificate_ttl: Duration,
    /// Largest accepted request body in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// HTTP worker threads (0 = one per CPU).
    #[serde(default)]
    pub workers: usize,
}

/// `[database]`. Its `Debug` form shows a PostgreSQL URL's scheme only: the
/// URL may hold a password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://<path>` or `postgres://…`.
    pub url: String,
    /// Connections in the pool.
    #[serde(default = "default_db_pool_size")]
    pub pool_size: u32,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match self.url.split_once(':') {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("sqlite") => self.url.clone(),
            Some((scheme, _)) => format!("{scheme}://{REDACTED}"),
            None => REDACTED.to_owned(),
        };
        f.debug_struct("DatabaseConfig")
            .field("url", &url)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// `[hsm]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmSection {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// hsm-sim's token directory, handed to the module as `HSM_SIM_DIR`
    /// unless the environment names one (`HSM_SIM_DIR` or `HSM_SIM_CONFIG`).
    /// Written by `init` when the module is hsm-sim, so a shell that never
    /// exported `HSM_SIM_DIR` still finds the token `init` made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim_dir: Option<PathBuf>,
    /// Label of the token holding the CA keys.
    pub token_label: String,
    /// Environment variable holding the user PIN (checked first).
    #[serde(default = "default_pin_env")]
    pub pin_env: String,
    /// File holding the user PIN (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
    /// PKCS#11 sessions kept open for signing in parallel.
    #[serde(default = "default_session_pool_size")]
    pub session_pool_size: usize,
}

/// `[ca]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Common name prefix of the CA certificates.
    pub name: String,
    /// Label of the root key on the token.
    #[serde(default = "default_root_label")]
    pub root_key_label: String,
    /// Label of the issuing (intermediate) key on the token.
    #[serde(default = "default_issuing_label")]
    pub issuing_key_label: String,
    /// Key type of both CA keys.
    #[serde(default = "default_key_type")]
    pub key_type: KeyType,
    /// Root certificate lifetime.
    #[serde(default = "default_root_validity")]
    pub root_validity: Duration,
    /// Issuing certificate lifetime.
    #[serde(default = "default_issuing_validity")]
    pub issuing_validity: Duration,
}

/// `[tokens]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    /// Where the Ed25519 key that signs bootstrap and admin tokens lives.
    /// Configs written before the HSM could hold it say nothing, and keep
    /// their file.
    #[serde(default = "default_token_key_store")]
    pub signing_key: TokenKeyStore,
    /// `CKA_LABEL` of the token key on the HSM (`signing_key = "hsm"`).
    #[serde(default = "default_token_key_label")]
    pub signing_key_label: String,
    /// PKCS#8 Ed25519 key file, 0600 (`signing_key = "file"`).
    #[serde(default = "default_token_key_file")]
    pub signing_key_file: PathBuf,
    /// Default bootstrap token lifetime.
    #[serde(default = "default_token_ttl")]
    pub default_ttl: Duration,
    /// Longest bootstrap token lifetime an admin may mint.
    #[serde(default = "default_token_max_ttl")]
    pub max_ttl: Duration,
}

/// Where the token-signing key lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKeyStore {
    /// On the HSM, beside the CA keys: a stolen disk or backup cannot mint
    /// tokens, and replicas sharing the token share the key.
    Hsm,
    /// In `signing_key_file`.
    File,
}

/// `[issuance]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceConfig {
    /// notBefore is backdated by this much to absorb client clock skew.
    #[serde(default = "default_backdate")]
    pub backdate: Duration,
    /// Fraction of the lifetime after which renewal is suggested (0 < x < 1).
    #[serde(default = "default_renew_fraction")]
    pub renew_fraction: f64,
    /// Random jitter (± fraction of lifetime) added to `renew_after`.
    #[serde(default = "default_renew_jitter")]
    pub renew_jitter: f64,
    /// Age after which a `pending` issuance (its request died with a
    /// replica, or outlived this bound) is reconciled as failed and its
    /// token use refunded. It must exceed the longest an issuance can take
    /// (HSM latency included) plus the clock skew between replicas, or a
    /// slow request fails with 503 and must be retried.
    #[serde(default = "default_pending_timeout")]
    pub pending_timeout: Duration,
}

/// `[crl]`: how CRLs are sharded, signed and published (docs/REVOCATION.md).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlConfig {
    /// Plain-HTTP listener that serves only CRLs and the CA chain, so a
    /// relying party can fetch them without trusting the CA's TLS first.
    /// None: CRLs are served on the HTTPS API only.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Base URL of the CRL distribution points written into certificates
    /// and CRLs (`<url>/crl/<issuer key id>/<shard>.crl`). Defaults to
    /// `http://<listen>` when `listen` names a concrete address, else to
    /// `server.public_url`.
    #[serde(default)]
    pub url: Option<String>,
    /// How many CRLs each issuing CA's revocations are split into.
    #[serde(default = "default_crl_shards")]
    pub shards: u32,
    /// A certificate's shard is `(notAfter / shard_width) % shards`: one
    /// shard holds the certificates that expire in the same window.
    #[serde(default = "default_crl_shard_width")]
    pub shard_width: Duration,
    /// nextUpdate - thisUpdate of every CRL: how long a relying party may
    /// keep using one when it cannot fetch a newer one.
    #[serde(default = "default_crl_next_update")]
    pub next_update: Duration,
    /// A CRL is re-signed when it is this old, revoked or not; well before
    /// `next_update`, so relying parties never hold an expired CRL.
    #[serde(default = "default_crl_refresh")]
    pub refresh: Duration,
}

impl Default for CrlConfig {
    fn default() -> Self {
        Self {
            listen: None,
            url: None,
            shards: default_crl_shards(),
            shard_width: default_crl_shard_width(),
            next_update: default_crl_next_update(),
            refresh: default_crl_refresh(),
        }
    }
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            signing_key: default_token_key_store(),
            signing_key_label: default_token_key_label(),
            signing_key_file: default_token_key_file(),
            default_ttl: default_token_ttl(),
            max_ttl: default_token_max_ttl(),
        }
    }
}

impl Default for IssuanceConfig {
    fn default() -> Self {
        Self {
            backdate: default_backdate(),
            renew_fraction: default_renew_fraction(),
            renew_jitter: default_renew_jitter(),
            pending_timeout: default_pending_timeout(),
        }
    }
}

fn duration(literal: &str) -> Duration {
    // Local invariant: only called with the literals below, which the unit
    // test `ok_defaults_parse` checks; no input reaches this.
    literal.parse().expect("default duration literal parses")
}
fn default_server_cert_ttl() -> Duration {
    duration("24h")
}
fn default_max_body_bytes() -> usize {
    64 * 1024
}
fn default_db_pool_size() -> u32 {
    16
}
fn default_pin_env() -> String {
    "CERTMINT_HSM_PIN".into()
}
fn default_session_pool_size() -> usize {
    8
}
fn default_root_label() -> String {
    "certmint-root".into()
}
fn default_issuing_label() -> String {
    "certmint-issuing".into()
}
fn default_key_type() -> KeyType {
    KeyType::EcP256
}
fn default_root_validity() -> Duration {
    duration("3650d")
}
fn default_issuing_validity() -> Duration {
    duration("1825d")
}
fn default_token_key_store() -> TokenKeyStore {
    TokenKeyStore::File
}
fn default_token_key_label() -> String {
    "certmint-token-signing".to_owned()
}
fn default_token_key_file() -> PathBuf {
    PathBuf::from("token-signing-key.pem")
}
fn default_token_ttl() -> Duration {
    duration("1h")
}
fn default_token_max_ttl() -> Duration {
    duration("30d")
}
fn default_backdate() -> Duration {
    duration("60s")
}
fn default_renew_fraction() -> f64 {
    2.0 / 3.0
}
fn default_renew_jitter() -> f64 {
    0.05
}
fn default_crl_shards() -> u32 {
    16
}
fn default_crl_shard_width() -> Duration {
    duration("6h")
}
fn default_crl_next_update() -> Duration {
    duration("24h")
}
fn default_crl_refresh() -> Duration {
    duration("6h")
}
fn default_pending_timeout() -> Duration {
    duration("2m")
}

/// The parser's message with the 1-based line and column it points at.
/// `toml`'s own `Display` quotes the offending line, which could put a
/// password from `database.url` on stderr.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline + 1);
    let column = before.len() - line_start + 1;
    format!("line {line}, column {column}: {message}")
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|error| ConfigError::Invalid {
            path: path.to_owned(),
            message: describe_toml_error(&text, &error),
        })?;
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.server.names.is_empty() {
            return Err("server.names must list at least one DNS name or IP address".into());
        }
        if !(self.issuance.renew_fraction > 0.0 && self.issuance.renew_fraction < 1.0) {
            return Err("issuance.renew_fraction must lie strictly between 0 and 1".into());
        }
        if !(0.0..0.5).contains(&self.issuance.renew_jitter) {
            return Err("issuance.renew_jitter must lie in [0, 0.5)".into());
        }
        if !(1..=1024).contains(&self.crl.shards) {
            return Err("crl.shards must lie between 1 and 1024".into());
        }
        if self.crl.shard_width.as_seconds() == 0 {
            return Err("crl.shard_width must be at least 1s".into());
        }
        if self.crl.refresh >= self.crl.next_update || self.crl.refresh.as_seconds() == 0 {
            return Err(
                "crl.refresh must be shorter than crl.next_update (and at least 1s): relying parties must get a new CRL before theirs expires"
                    .into(),
            );
        }
        if let Some(url) = &self.crl.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "crl.url {url:?} must be an http:// or https:// URL"
                ));
            }
        } else if self
            .crl
            .listen
            .is_some_and(|listen| listen.ip().is_unspecified())
        {
            return Err(
                "crl.listen is a wildcard address: set crl.url to the address relying parties fetch CRLs from"
                    .into(),
            );
        }
        if self.hsm.session_pool_size == 0 {
            return Err("hsm.session_pool_size must be at least 1".into());
        }
        if self.tokens.default_ttl > self.tokens.max_ttl {
            return Err("tokens.default_ttl exceeds tokens.max_ttl".into());
        }
        // One label, one key: two settings naming the same label would make
        // init use one key for both jobs (the root signing online, say).
        let mut labels = vec![
            ("ca.root_key_label", &self.ca.root_key_label),
            ("ca.issuing_key_label", &self.ca.issuing_key_label),
        ];
        if self.tokens.signing_key == TokenKeyStore::Hsm {
            labels.push(("tokens.signing_key_label", &self.tokens.signing_key_label));
        }
        for (index, (setting, label)) in labels.iter().enumerate() {
            if let Some((other, _)) = labels[..index].iter().find(|(_, earlier)| earlier == label) {
                return Err(format!(
                    "{other} and {setting} are both {label:?}; each key needs a label of its own"
                ));
            }
        }
        Ok(())
    }

    /// A path from the config, resolved against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The database URL with a relative SQLite path resolved.
    pub fn database_url(&self) -> String {
        let url = &self.database.url;
        for prefix in ["sqlite://", "sqlite:"] {
            if let Some(path) = url.strip_prefix(prefix) {
                return format!("sqlite://{}", self.resolve(Path::new(path)).display());
            }
        }
        url.clone()
    }

    /// `hsm.sim_dir` resolved against the config file's directory.
    pub fn simulator_dir(&self) -> Option<PathBuf> {
        self.hsm.sim_dir.as_deref().map(|dir| self.resolve(dir))
    }

    /// Base URL of the CRL distribution points, without a trailing slash.
    pub fn crl_base_url(&self) -> String {
        let base = match (&self.crl.url, self.crl.listen) {
            (Some(url), _) => url.clone(),
            (None, Some(listen)) => format!("http://{listen}"),
            (None, None) => self.server.public_url.clone(),
        };
        base.trim_end_matches('/').to_owned()
    }

    /// The host of `server.public_url`, the name agents connect to (an IPv6
    /// address without its brackets), if the URL has one.
    pub fn public_host(&self) -> Option<String> {
        let uri: actix_web::http::Uri = self.server.public_url.parse().ok()?;
        uri.host().map(|host| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
    }

    /// Audience of bootstrap tokens: the enroll endpoint's public URL.
    pub fn enroll_audience(&self) -> String {
        format!("{}/v1/enroll", self.server.public_url.trim_end_matches('/'))
    }

    /// Audience of admin tokens.
    pub fn admin_audience(&self) -> String {
        format!("{}/v1/admin", self.server.public_url.trim_end_matches('/'))
    }

    /// Reads the HSM user PIN: the environment variable first, then the file.
    pub fn hsm_pin(&self) -> Result<SecretString, ConfigError> {
        if let Ok(pin) = std::env::var(&self.hsm.pin_env) {
            if !pin.is_empty() {
                return Ok(SecretString::from(pin));
            }
        }
        if let Some(file) = &self.hsm.pin_file {
            let path = self.resolve(file);
            let unreadable = |error: std::io::Error| {
                ConfigError::Pin(format!("cannot read pin file {}: {error}", path.display()))
            };
            // Warned about, not refused: secret mounts (a Kubernetes Secret
            // volume is 0644 unless defaultMode says otherwise) are often
            // world-readable inside a container of one user, and refusing
            // would stop the server over what is a deployment choice.
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).map_err(unreadable)?.permissions(),
            );
            if let Some(warning) = world_readable_warning(&path, mode) {
                tracing::warn!("{warning}");
            }
            // Zeroized on drop, as the SecretString the PIN moves into is.
            let text = secrecy::zeroize::Zeroizing::new(
                std::fs::read_to_string(&path).map_err(unreadable)?,
            );
            let pin = text.trim_end_matches(['\n', '\r']).to_owned();
            if pin.is_empty() {
                return Err(ConfigError::Pin(format!(
                    "pin file {} is empty",
                    path.display()
                )));
            }
            return Ok(SecretString::from(pin));
        }
        Err(ConfigError::Pin(format!(
            "set the environment variable {} or hsm.pin_file",
            self.hsm.pin_env
        )))
    }
}

/// The warning for a PIN file every local user can read, if it is one.
fn world_readable_warning(path: &Path, mode: u32) -> Option<String> {
    (mode & 0o004 != 0).then(|| {
        format!(
            "pin file {} is readable by every user (mode {:o}); restrict it (chmod 600, or defaultMode 0400 for a Kubernetes Secret)",
            path.display(),
            mode & 0o777
        )
    })
}

/// Values `certmint-server init` writes into a fresh config.
#[derive(Clone, Debug)]
pub struct InitValues {
    /// `server.listen`.
    pub listen: SocketAddr,
    /// `server.public_url`.
    pub public_url: String,
    /// `server.names`.
    pub names: Vec<String>,
    /// `database.url`.
    pub database_url: String,
    /// `hsm.module`.
    pub module: PathBuf,
    /// `hsm.sim_dir`: hsm-sim's token directory, when the module is hsm-sim
    /// and its directory is known (otherwise the setting is left commented).
    pub sim_dir: Option<PathBuf>,
    /// `hsm.token_label`.
    pub token_label: String,
    /// `hsm.pin_file`, if the PIN comes from a file.
    pub pin_file: Option<PathBuf>,
    /// `ca.name`.
    pub ca_name: String,
    /// `ca.key_type`.
    pub key_type: KeyType,
    /// `crl.listen`.
    pub crl_listen: Option<SocketAddr>,
    /// `crl.url`, when the listener's own address is not what relying
    /// parties reach.
    pub crl_url: Option<String>,
}

/// Renders a commented config file for `init`.
pub fn render_commented(values: &InitValues) -> String {
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let names = values
        .names
        .iter()
        .map(|name| quote(name))
        .collect::<Vec<_>>()
        .join(", ");
    let sim_dir = match &values.sim_dir {
        Some(dir) => format!("sim_dir = {}\n", quote(&dir.display().to_string())),
        None => "# sim_dir = \"/var/lib/certmint/hsm-sim\"\n".to_owned(),
    };
    let pin_file = match &values.pin_file {
        Some(path) => format!("pin_file = {}\n", quote(&path.display().to_string())),
        None => "# pin_file = \"/etc/certmint/hsm-pin\"\n".to_owned(),
    };
    format!(
        r#"# certmint-server configuration, written by `certmint-server init`.
# Relative paths are resolved against the directory holding this file.
# This file holds no secret: the HSM PIN comes from the environment or a file.

[server]
# Address the HTTPS listener binds.
listen = {listen}
# URL clients use to reach this server (or its load balancer). Bootstrap tokens
# are minted for the audience <public_url>/v1/enroll.
public_url = {public_url}
# Names in the server's own TLS certificate, which it issues to itself from
# its CA and renews in-process.
names = [{names}]
# tls_certificate_ttl = "24h"
# max_body_bytes = 65536
# workers = 0            # 0 = one per CPU

[database]
# sqlite://<path> (embedded, WAL, synchronous=FULL) or postgres://user@host/db
url = {database_url}
# pool_size = 16

[hsm]
# PKCS#11 module: a vendor HSM, SoftHSM2 (/usr/lib/softhsm/libsofthsm2.so)
# or hsm-sim (libhsm_sim.so, the zero-install default: a software simulator
# that keeps its token in $HSM_SIM_DIR; for development and tests only).
module = {module}
# hsm-sim only: its token directory, given to the module as $HSM_SIM_DIR when
# neither $HSM_SIM_DIR nor $HSM_SIM_CONFIG is set (either of those wins).
{sim_dir}token_label = {token_label}
# The user PIN is read from this environment variable, else from pin_file.
pin_env = "CERTMINT_HSM_PIN"
{pin_file}# PKCS#11 sessions kept open so requests sign in parallel.
# session_pool_size = 8

[ca]
name = {ca_name}
key_type = {key_type}    # ec-p256 | ec-p384 | rsa-3072 | rsa-4096 | ed25519
# root_key_label = "certmint-root"
# issuing_key_label = "certmint-issuing"
# root_validity = "3650d"
# issuing_validity = "1825d"

[tokens]
# The Ed25519 key that signs bootstrap and admin tokens: "hsm" (generated
# on the token by init, labelled signing_key_label) or "file" (PKCS#8 PEM,
# mode 0600, at signing_key_file; for tokens without Ed25519).
signing_key = "hsm"
# signing_key_label = "certmint-token-signing"
# signing_key_file = "token-signing-key.pem"
# default_ttl = "1h"
# max_ttl = "30d"

[issuance]
# Backdating of notBefore to absorb client clock skew; it counts toward the
# policy's maximum lifetime and is at most a tenth of it.
# backdate = "60s"
# renew_after = issued_at + (renew_fraction ± renew_jitter) * (not_after - issued_at),
# where issued_at is when the request was decided
# renew_fraction = 0.6667
# renew_jitter = 0.05
# An issuance still pending after pending_timeout (its request died with a
# server, or outlived the bound) is marked failed and its token use refunded,
# by every replica's background sweep and by a retry of the same token. Keep
# it above the slowest issuance (HSM latency) plus the clock skew between
# replicas: a request still signing when its row is reconciled gets 503 and
# must retry. A retry with the same token inside the bound gets 503 too.
# pending_timeout = "2m"

[crl]
# Revocation lists, signed on the HSM by the CA that issued the certificates
# they list (docs/REVOCATION.md). A plain-HTTP listener serves only CRLs and
# the CA chain: relying parties fetch CRLs without trusting this server's TLS
# first. Without it, CRLs are served on the HTTPS API only.
{crl_listen}{crl_url}# Each issuing CA's revocations are split into `shards` CRLs; a certificate's
# shard is (notAfter / shard_width) % shards, so each shard holds the
# certificates that expire in the same window and no CRL grows for ever.
# shards = 16
# shard_width = "6h"
# A revocation reaches the CRLs within seconds; besides, every CRL is
# re-signed when it is `refresh` old. `next_update` is how long a relying
# party may go on using a CRL it cannot replace (and how long a revocation
# may stay unseen by one that fetches no newer CRL).
# next_update = "24h"
# refresh = "6h"
"#,
        crl_listen = match values.crl_listen {
            Some(listen) => format!("listen = {}\n", quote(&listen.to_string())),
            None => "# listen = \"127.0.0.1:8080\"\n".to_owned(),
        },
        crl_url = match &values.crl_url {
            Some(url) => format!("url = {}\n", quote(url)),
            None => "# Base URL written into certificates' CRL distribution points\n# (default http://<listen>):\n# url = \"http://ca.example.org:8080\"\n".to_owned(),
        },
        listen = quote(&values.listen.to_string()),
        public_url = quote(&values.public_url),
        database_url = quote(&values.database_url),
        module = quote(&values.module.display().to_string()),
        token_label = quote(&values.token_label),
        ca_name = quote(&values.ca_name),
        key_type = quote(values.key_type.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InitValues {
        InitValues {
            listen: "127.0.0.1:8443".parse().unwrap(),
            crl_listen: Some("127.0.0.1:8080".parse().unwrap()),
            crl_url: None,
            public_url: "https://localhost:8443".into(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
            database_url: "sqlite://certmint.db".into(),
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            sim_dir: None,
            token_label: "certmint".into(),
            pin_file: None,
            ca_name: "certmint".into(),
            key_type: KeyType::EcP256,
        }
    }

    #[test]
    fn pin_file_is_read_and_a_world_readable_one_warned_about() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certmint.toml");
        let pin_path = dir.path().join("hsm-pin");
        let values = InitValues {
            pin_file: Some(pin_path.clone()),
            ..sample()
        };
        std::fs::write(&path, render_commented(&values)).unwrap();
        let mut config = Config::load(&path).unwrap();
        config.hsm.pin_env = "CERTMINT_TEST_UNSET_PIN_VARIABLE".into();
        std::fs::write(&pin_path, "1234\n").unwrap();

        std::fs::set_permissions(&pin_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let pin = config.hsm_pin().expect("a 0640 pin file is read");
        assert_eq!(secrecy::ExposeSecret::expose_secret(&pin), "1234");

        std::fs::set_permissions(&pin_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        config
            .hsm_pin()
            .expect("a world-readable pin file is read, with a warning");
        assert_eq!(world_readable_warning(&pin_path, 0o640), None);
        let warning = world_readable_warning(&pin_path, 0o100644).expect("warned about");
        assert!(
            warning.contains("mode 644") && warning.contains("chmod 600"),
            "{warning}"
        );
    }

    #[test]
    fn fail_two_keys_under_one_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certmint.toml");
        let text = render_commented(&sample()).replace(
            "# issuing_key_label = \"certmint-issuing\"",
            "issuing_key_label = \"certmint-root\"",
        );
        std::fs::write(&path, text).unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("ca.root_key_label and ca.issuing_key_label"),
            "{error}"
        );

        let text = render_commented(&sample()).replace(
            "# signing_key_label = \"certmint-token-signing\"",
            "signing_key_label = \"certmint-issuing\"",
        );
        std::fs::write(&path, text).unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(error.contains("tokens.signing_key_label"), "{error}");
    }

    #[test]
    fn public_host_is_the_url_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certmint.toml");
        std::fs::write(&path, render_commented(&sample())).unwrap();
        let mut config = Config::load(&path).unwrap();
        for (url, host) in [
            ("https://ca.example:8443", Some("ca.example")),
            ("https://ca.example/", Some("ca.example")),
            ("https://[::1]:8443", Some("::1")),
            ("https://10.0.0.7:8443", Some("10.0.0.7")),
            ("not a url", None),
        ] {
            config.server.public_url = url.to_owned();
            assert_eq!(config.public_host().as_deref(), host, "{url}");
        }
    }

    #[test]
    fn ok_defaults_parse() {
        for literal in ["24h", "3650d", "1825d", "1h", "30d", "60s", "2m"] {
            assert!(literal.parse::<Duration>().is_ok());
        }
    }

    #[test]
    fn ok_rendered_config_loads_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certmint.toml");
        std::fs::write(&path, render_commented(&sample())).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.ca.key_type, KeyType::EcP256);
        assert_eq!(
            config.database_url(),
            format!("sqlite://{}", dir.path().join("certmint.db").display())
        );
        assert_eq!(config.enroll_audience(), "https://localhost:8443/v1/enroll");
    }

    #[test]
    fn ok_simulator_directory_is_recorded_and_resolved_against_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certmint.toml");
        std::fs::write(&path, render_commented(&sample())).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.hsm.sim_dir, None,
            "left commented without a directory"
        );
        assert_eq!(config.simulator_dir(), None);

        for (written, resolved) in [
            ("/var/lib/hsm-sim", PathBuf::from("/var/lib/hsm-sim")),
            ("hsm-sim", dir.path().join("hsm-sim")),
        ] {
            let values = InitValues {
                module: "/opt/certmint/libhsm_sim.so".into(),
                sim_dir: Some(written.into()),
                ..sample()
            };
            std::fs::write(&path, render_commented(&values)).unwrap();
            let config = Config::load(&path).unwrap();
            assert_eq!(config.hsm.sim_dir.as_deref(), Some(Path::new(written)));
            assert_eq!(config.simulator_dir(), Some(resolved));
        }
    }

    #[test]
    fn fail_syntax_error_names_the_line_but_never_quotes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certmint.toml");
        let mut values = sample();
        values.database_url = "postgres://certmint:hunter2@db.internal/certmint".into();
        // The closing quote lost on the line that holds the password.
        let text = render_commented(&values).replace("certmint\"\n", "certmint\n");
        assert!(text.contains("hunter2@db.internal/certmint\n"), "{text}");
        std::fs::write(&path, &text).unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
        let line = text
            .lines()
            .position(|line| line.contains("hunter2"))
            .unwrap()
            + 1;
        assert!(error.contains(&format!("line {line}, column ")), "{error}");
    }

    #[test]
    fn debug_form_hides_a_database_password() {
        let shown = |url: &str| {
            format!(
                "{:?}",
                DatabaseConfig {
                    url: url.into(),
                    pool_size: 4
                }
            )
        };
        let postgres = shown("postgres://certmint:hunter2@db.internal/certmint");
        assert!(!postgres.contains("hunter2"), "{postgres}");
        assert!(postgres.contains("postgres://<redacted>"), "{postgres}");
        assert!(shown("sqlite://certmint.db").contains("sqlite://certmint.db"));
        assert!(!shown("hunter2").contains("hunter2"));
    }

    #[test]
    fn fail_unknown_field_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certmint.toml");
        let text = render_commented(&sample()).replace("[ca]", "[ca]\nnmae = \"typo\"");
        std::fs::write(&path, text).unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
