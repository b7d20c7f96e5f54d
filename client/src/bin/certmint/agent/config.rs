//! `agent.toml`: what the agent keeps in place and how it reaches the CA.
//!
//! Invariants:
//! - Unknown keys are refused (`deny_unknown_fields`), so a typo never
//!   silently falls back to a default; every error names the file and,
//!   where the parser knows it, the key and line.
//! - Exactly one trust source: `root_fingerprint` or `ca_bundle`.
//! - Relative paths are relative to the directory holding the file, so a
//!   config works the same from any working directory.
//! - The token itself is never part of the config (only where to read it),
//!   and never appears in an error.

use std::path::{Path, PathBuf};

use certmint::wire::{Identity, KeyType};
use certmint::Duration;
use serde::Deserialize;

use crate::agent::keys;
use crate::agent::output::FileGroup;
pub use crate::agent::workload::TrustSource;

/// Default first retry delay after a failure.
pub const DEFAULT_BACKOFF_INITIAL_S: u64 = 1;
/// Default longest retry delay.
pub const DEFAULT_BACKOFF_MAX_S: u64 = 300;
/// Default jitter added to the server's `renew_after` (± fraction of lifetime).
pub const DEFAULT_JITTER: f64 = 0.05;
/// Default time a reload command may run.
pub const DEFAULT_RELOAD_TIMEOUT_S: u64 = 30;

/// Why the config cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a bad value (the message names it).
    #[error("{}: {message}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the key and line.
        message: String,
    },
    /// Keys that are fine alone but not together.
    #[error("{}: {key}: {reason}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key at fault.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: String,
    #[serde(default)]
    root_fingerprint: Option<String>,
    #[serde(default)]
    ca_bundle: Option<PathBuf>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    output_dir: PathBuf,
    #[serde(default)]
    group: Option<String>,
    #[serde(default = "default_key_type")]
    key_type: KeyType,
    #[serde(default)]
    ttl: Option<Duration>,
    #[serde(default)]
    request_timeout: Option<Duration>,
    #[serde(deserialize_with = "names_without_unknown_keys")]
    names: Identity,
    #[serde(default)]
    renewal: RawRenewal,
    #[serde(default)]
    backoff: RawBackoff,
    #[serde(default)]
    reload: RawReload,
    #[serde(default)]
    crl: RawCrl,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrl {
    #[serde(default)]
    refresh: Option<Duration>,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRenewal {
    #[serde(default)]
    jitter: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    #[serde(default)]
    initial: Option<Duration>,
    #[serde(default)]
    max: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReload {
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    timeout: Option<Duration>,
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    pid_file: Option<PathBuf>,
}

fn default_key_type() -> KeyType {
    keys::DEFAULT_KEY_TYPE
}

/// `[names]`: the SDK's [`Identity`], refusing keys other than `dns`, `ip`
/// and `uri` as the rest of the file does (the wire type itself ignores
/// unknown fields, as API bodies must).
fn names_without_unknown_keys<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Identity, D::Error> {
    const KINDS: &[&str] = &["dns", "ip", "uri"];
    let table = std::collections::BTreeMap::<String, Vec<String>>::deserialize(deserializer)?;
    let mut names = Identity::default();
    for (kind, list) in table {
        match kind.as_str() {
            "dns" => names.dns = list,
            "ip" => names.ip = list,
            "uri" => names.uri = list,
            _ => return Err(serde::de::Error::unknown_field(&kind, KINDS)),
        }
    }
    Ok(names)
}

/// What to do after new files are in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reload {
    /// argv of a command run without a shell.
    pub command: Option<Vec<String>>,
    /// How long the command may run before it is killed.
    pub timeout: std::time::Duration,
    /// A signal to send to the pid in `pid_file`.
    pub signal: Option<(crate::agent::hooks::ReloadSignal, PathBuf)>,
}

/// The validated config.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `https://host:port`.
    pub server: String,
    /// Trust source.
    pub trust: TrustSource,
    /// Where the bootstrap token is read from (absent once enrolled is fine).
    pub token_file: Option<PathBuf>,
    /// The workload's output directory.
    pub output_dir: PathBuf,
    /// A group that may read the files too (the workload's, when it runs
    /// as another user).
    pub group: Option<FileGroup>,
    /// Key type for every new key.
    pub key_type: KeyType,
    /// Requested lifetime (policy default when absent).
    pub ttl: Option<Duration>,
    /// Per-request timeout.
    pub request_timeout: std::time::Duration,
    /// The names to hold a certificate for.
    pub names: Identity,
    /// ± fraction of the lifetime added to `renew_after`.
    pub jitter: f64,
    /// First retry delay.
    pub backoff_initial: std::time::Duration,
    /// Longest retry delay.
    pub backoff_max: std::time::Duration,
    /// Reload hooks.
    pub reload: Reload,
    /// How `crl.pem` is kept current.
    pub crl: CrlSettings,
}

/// `[crl]`: how `crl.pem` is kept current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlSettings {
    /// Time between two refreshes (each wait is jittered by ± 10 %).
    pub refresh: std::time::Duration,
    /// The server's plain-HTTP CRL listener to read CRLs from instead of
    /// the HTTPS API (`http://host:port`); every CRL is checked either way.
    pub url: Option<String>,
}

impl AgentConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses `text` (named `path` in errors), resolving relative paths
    /// against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string().trim_end().replace('\n', " "),
        })?;
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        if !raw.server.trim().starts_with("https://") {
            return Err(invalid(
                "server",
                format!("{:?} is not an https:// URL", raw.server),
            ));
        }
        let trust = match (raw.root_fingerprint, raw.ca_bundle) {
            (Some(fingerprint), None) => TrustSource::Fingerprint(
                certmint::client::trust::parse_fingerprint(&fingerprint).ok_or_else(|| {
                    invalid(
                        "root_fingerprint",
                        format!("{fingerprint:?} is not sha256:<64 hex digits>"),
                    )
                })?,
            ),
            (None, Some(bundle)) => TrustSource::Bundle(resolve(bundle)),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "root_fingerprint",
                    "give root_fingerprint or ca_bundle, not both".into(),
                ))
            }
            (None, None) => return Err(invalid(
                "root_fingerprint",
                "one of root_fingerprint or ca_bundle is required (no blind trust on first use)"
                    .into(),
            )),
        };
        let group = raw
            .group
            .map(|spec| spec.parse::<FileGroup>())
            .transpose()
            .map_err(|reason| invalid("group", reason))?;
        keys::generatable(raw.key_type).map_err(|error| invalid("key_type", error.to_string()))?;
        keys::subject_alt_names(&raw.names).map_err(|error| invalid("names", error.to_string()))?;
        let jitter = raw.renewal.jitter.unwrap_or(DEFAULT_JITTER);
        if !(0.0..=0.5).contains(&jitter) {
            return Err(invalid(
                "renewal.jitter",
                format!("{jitter} is not a fraction between 0 and 0.5"),
            ));
        }
        let backoff_initial = raw.backoff.initial.map_or(
            std::time::Duration::from_secs(DEFAULT_BACKOFF_INITIAL_S),
            |d| d.to_std(),
        );
        let backoff_max = raw
            .backoff
            .max
            .map_or(std::time::Duration::from_secs(DEFAULT_BACKOFF_MAX_S), |d| {
                d.to_std()
            });
        if backoff_max < backoff_initial {
            return Err(invalid(
                "backoff.max",
                "must not be shorter than backoff.initial".into(),
            ));
        }
        let signal = match (raw.reload.signal, raw.reload.pid_file) {
            (Some(name), Some(pid_file)) => Some((
                name.parse()
                    .map_err(|error: crate::agent::hooks::HookError| {
                        invalid("reload.signal", error.to_string())
                    })?,
                resolve(pid_file),
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "reload.pid_file",
                    "reload.signal needs a pid_file".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "reload.signal",
                    "reload.pid_file needs a signal".into(),
                ))
            }
        };
        let crl_refresh = raw
            .crl
            .refresh
            .map_or(crate::agent::crl::DEFAULT_REFRESH, |d| d.to_std());
        let crl_url = raw
            .crl
            .url
            .as_deref()
            .map(certmint::client::crl::listener_url)
            .transpose()
            .map_err(|error| invalid("crl.url", error.to_string()))?;
        if raw.reload.command.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(
                "reload.command",
                "an empty argv runs nothing".into(),
            ));
        }
        Ok(Self {
            server: raw.server.trim().to_owned(),
            trust,
            token_file: raw.token_file.map(resolve),
            output_dir: resolve(raw.output_dir),
            group,
            key_type: raw.key_type,
            ttl: raw.ttl,
            request_timeout: raw
                .request_timeout
                .map_or(certmint::client::DEFAULT_TIMEOUT, |d| d.to_std()),
            names: raw.names,
            jitter,
            backoff_initial,
            backoff_max,
            reload: Reload {
                command: raw.reload.command,
                timeout: raw.reload.timeout.map_or(
                    std::time::Duration::from_secs(DEFAULT_RELOAD_TIMEOUT_S),
                    |d| d.to_std(),
                ),
                signal,
            },
            crl: CrlSettings {
                refresh: crl_refresh,
                url: crl_url,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str =
        "sha256:ab00000000000000000000000000000000000000000000000000000000000000";

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(
            text,
            Path::new("/etc/certmint/agent.toml"),
            Path::new("/etc/certmint"),
        )
    }

    #[test]
    fn ok_the_sample_in_docs_parses() {
        let sample = include_str!("../../../../../docs/agent/agent.toml");
        let config = parse(sample).expect("docs/agent/agent.toml is a valid config");
        assert_eq!(config.key_type, KeyType::EcP256);
        assert_eq!(config.backoff_max, std::time::Duration::from_secs(300));
        assert!(config.reload.command.is_some());
    }

    fn minimal() -> String {
        with_top("")
    }

    /// The minimal config with `top` added as top-level keys (before any
    /// table, where TOML puts them).
    fn with_top(top: &str) -> String {
        format!(
            "server = \"https://ca.internal:8443\"\nroot_fingerprint = \"{FINGERPRINT}\"\n\
             output_dir = \"out\"\n{top}[names]\ndns = [\"api.internal\"]\n"
        )
    }

    #[test]
    fn ok_minimal_config_gets_defaults_and_resolved_paths() {
        let config = parse(&minimal()).unwrap();
        assert_eq!(config.trust, TrustSource::Fingerprint(FINGERPRINT.into()));
        assert_eq!(config.output_dir, Path::new("/etc/certmint/out"));
        assert_eq!(config.key_type, KeyType::EcP256);
        assert_eq!(config.backoff_initial, std::time::Duration::from_secs(1));
        assert_eq!(config.backoff_max, std::time::Duration::from_secs(300));
        assert_eq!(config.jitter, DEFAULT_JITTER);
        assert!(config.token_file.is_none());
        assert!(config.group.is_none());
        assert_eq!(
            config.crl,
            CrlSettings {
                refresh: std::time::Duration::from_secs(60),
                url: None,
            }
        );
        assert_eq!(
            config.reload,
            Reload {
                command: None,
                timeout: std::time::Duration::from_secs(30),
                signal: None,
            }
        );
    }

    #[test]
    fn ok_full_config() {
        let text = format!(
            "{}token_file = \"/run/secrets/token\"\nkey_type = \"ed25519\"\nttl = \"12h\"\n\
             [renewal]\njitter = 0.1\n[backoff]\ninitial = \"2s\"\nmax = \"1m\"\n\
             [reload]\ncommand = [\"systemctl\", \"reload\", \"nginx\"]\ntimeout = \"10s\"\n\
             signal = \"HUP\"\npid_file = \"/run/nginx.pid\"\n\
             [crl]\nrefresh = \"5m\"\nurl = \"http://ca.internal:8080/\"\n",
            minimal().replace("[names]\ndns = [\"api.internal\"]\n", "")
        ) + "[names]\ndns = [\"api.internal\"]\nip = [\"10.0.0.1\"]\n";
        let config = parse(&text).unwrap();
        assert_eq!(config.key_type, KeyType::Ed25519);
        assert_eq!(config.ttl.unwrap().as_seconds(), 43_200);
        assert_eq!(config.backoff_max, std::time::Duration::from_secs(60));
        assert_eq!(config.reload.command.as_deref().unwrap().len(), 3);
        assert_eq!(
            config.reload.signal.as_ref().unwrap().1,
            Path::new("/run/nginx.pid")
        );
        assert_eq!(config.names.ip, ["10.0.0.1"]);
        assert_eq!(config.crl.refresh, std::time::Duration::from_secs(300));
        assert_eq!(config.crl.url.as_deref(), Some("http://ca.internal:8080"));
    }

    #[test]
    fn ok_group_by_name_or_number() {
        // Group 0 is named `root` on every Linux system.
        let by_name = parse(&with_top("group = \"root\"\n")).unwrap();
        assert_eq!(by_name.group.as_ref().map(FileGroup::gid), Some(0));
        assert_eq!(by_name.group.unwrap().to_string(), "root (gid 0)");
        // A number needs no name.
        let by_number = parse(&with_top("group = \"4242\"\n")).unwrap();
        assert_eq!(by_number.group.as_ref().map(FileGroup::gid), Some(4242));
        assert_eq!(by_number.group.unwrap().to_string(), "gid 4242");
    }

    fn error_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn fail_unknown_keys_name_the_file_and_the_key() {
        let text = minimal() + "[backoff]\ninital = \"1s\"\n";
        let error = error_text(&text);
        assert!(error.starts_with("/etc/certmint/agent.toml: "), "{error}");
        assert!(error.contains("inital"), "{error}");
        assert!(matches!(parse(&text), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn fail_bad_values() {
        let cases = [
            (
                "rsa key",
                with_top("key_type = \"rsa-2048\"\n"),
                Some("key_type"),
            ),
            (
                "alias key type",
                with_top("key_type = \"p256\"\n"),
                Some("key_type"),
            ),
            (
                "upper-case key type",
                with_top("key_type = \"EC-P256\"\n"),
                Some("key_type"),
            ),
            (
                "typo in names",
                minimal() + "dsn = [\"api.internal\"]\n",
                Some("dsn"),
            ),
            ("bad duration", with_top("ttl = \"1 hour\"\n"), Some("ttl")),
            ("typo", with_top("outputdir = \"x\"\n"), Some("outputdir")),
            (
                "http",
                minimal().replace("https://", "http://"),
                Some("server"),
            ),
            (
                "both trust sources",
                with_top("ca_bundle = \"ca.pem\"\n"),
                Some("root_fingerprint"),
            ),
            (
                "no trust source",
                minimal().replace(&format!("root_fingerprint = \"{FINGERPRINT}\"\n"), ""),
                Some("root_fingerprint"),
            ),
            (
                "short fingerprint",
                minimal().replace(FINGERPRINT, "sha256:abcd"),
                Some("root_fingerprint"),
            ),
            (
                "no names",
                minimal().replace("dns = [\"api.internal\"]\n", ""),
                Some("names"),
            ),
            (
                "jitter",
                minimal() + "[renewal]\njitter = 0.9\n",
                Some("renewal.jitter"),
            ),
            (
                "backoff order",
                minimal() + "[backoff]\ninitial = \"5m\"\nmax = \"1s\"\n",
                Some("backoff.max"),
            ),
            (
                "signal without pid file",
                minimal() + "[reload]\nsignal = \"HUP\"\n",
                Some("reload.pid_file"),
            ),
            (
                "unknown signal",
                minimal() + "[reload]\nsignal = \"BOGUS\"\npid_file = \"x.pid\"\n",
                Some("reload.signal"),
            ),
            (
                "unknown group",
                with_top("group = \"no-such-group-certmint\"\n"),
                Some("group"),
            ),
            ("empty group", with_top("group = \"\"\n"), Some("group")),
            (
                "crl refresh of zero",
                minimal() + "[crl]\nrefresh = \"0s\"\n",
                Some("refresh"),
            ),
            (
                "crl url not plain http",
                minimal() + "[crl]\nurl = \"https://ca:8443\"\n",
                Some("crl.url"),
            ),
            (
                "crl typo",
                minimal() + "[crl]\nrefesh = \"1m\"\n",
                Some("refesh"),
            ),
            (
                "empty argv",
                minimal() + "[reload]\ncommand = []\n",
                Some("reload.command"),
            ),
        ];
        for (case, text, key) in cases {
            match (parse(&text), key) {
                (Err(ConfigError::Invalid { key: got, .. }), Some(key)) => {
                    assert_eq!(got, key, "{case}")
                }
                (Err(ConfigError::Parse { message, .. }), Some(key)) => {
                    assert!(message.contains(key), "{case}: {message}")
                }
                (other, _) => panic!("{case}: {other:?}"),
            }
        }
    }

    #[test]
    fn fail_missing_file_names_it() {
        let error = AgentConfig::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(error.to_string().contains("/nonexistent/agent.toml"));
    }
}
