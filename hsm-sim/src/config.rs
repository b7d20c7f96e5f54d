//! Where the module keeps its state, and how it is configured.
//!
//! Resolution, first match wins for the state directory:
//! 1. `HSM_SIM_DIR`;
//! 2. `dir` in the TOML file named by `HSM_SIM_CONFIG`;
//! 3. `$HOME/.local/share/hsm-sim`.
//!
//! The configuration file may also set `kdf_iterations` and a `[faults]`
//! table (see [`crate::faults::FaultConfig`]); faults written by the CLI to
//! the control file `<dir>/faults.toml` take precedence over that table.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::faults::FaultConfig;

/// Environment variable naming the state directory.
pub const DIR_ENV: &str = "HSM_SIM_DIR";
/// Environment variable naming the TOML configuration file.
pub const CONFIG_ENV: &str = "HSM_SIM_CONFIG";
/// PBKDF2-HMAC-SHA256 iterations for new PINs unless configured otherwise.
pub const DEFAULT_KDF_ITERATIONS: u32 = 100_000;
/// Name of the fault control file inside the state directory.
pub const CONTROL_FILE: &str = "faults.toml";

/// The configuration file's contents.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// State directory (relative paths are relative to the file).
    pub dir: Option<PathBuf>,
    /// PBKDF2 iterations used when a PIN is set.
    pub kdf_iterations: Option<u32>,
    /// Faults in force when no control file exists.
    #[serde(default)]
    pub faults: FaultConfig,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The state directory.
    pub dir: PathBuf,
    /// The configuration file, if one is used (its `[faults]` is watched).
    pub config_file: Option<PathBuf>,
    /// PBKDF2 iterations for new PINs.
    pub kdf_iterations: u32,
}

/// Why the configuration could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML for this schema.
    #[error("invalid hsm-sim configuration {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// No directory was configured and `HOME` is not set.
    #[error("no state directory: set {DIR_ENV} or {CONFIG_ENV}")]
    NoDirectory,
}

impl Config {
    /// Resolves the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let dir = std::env::var_os(DIR_ENV)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from);
        let config_file = std::env::var_os(CONFIG_ENV)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from);
        Config::resolve(dir, config_file)
    }

    /// Resolves the configuration from an explicit directory and/or file.
    pub fn resolve(
        dir: Option<PathBuf>,
        config_file: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let file = match &config_file {
            Some(path) => read_config_file(path)?,
            None => ConfigFile::default(),
        };
        let file_dir = file.dir.as_ref().map(|configured| {
            match config_file.as_deref().and_then(Path::parent) {
                Some(parent) if configured.is_relative() => parent.join(configured),
                _ => configured.clone(),
            }
        });
        let dir = match dir.or(file_dir) {
            Some(dir) => dir,
            None => std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".local/share/hsm-sim"))
                .ok_or(ConfigError::NoDirectory)?,
        };
        Ok(Config {
            dir,
            config_file,
            kdf_iterations: file.kdf_iterations.unwrap_or(DEFAULT_KDF_ITERATIONS).max(1),
        })
    }

    /// The fault control file the CLI writes.
    pub fn control_file(&self) -> PathBuf {
        self.dir.join(CONTROL_FILE)
    }
}

/// Reads and parses a configuration file.
pub fn read_config_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: error.message().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_explicit_dir_wins_over_file() {
        let temp = tempfile::tempdir().expect("tempdir");
        let file = temp.path().join("sim.toml");
        std::fs::write(&file, "dir = \"state\"\nkdf_iterations = 7\n").expect("write");
        let from_file = Config::resolve(None, Some(file.clone())).expect("resolves");
        assert_eq!(from_file.dir, temp.path().join("state"));
        assert_eq!(from_file.kdf_iterations, 7);
        let explicit = Config::resolve(Some("/elsewhere".into()), Some(file)).expect("resolves");
        assert_eq!(explicit.dir, PathBuf::from("/elsewhere"));
    }

    #[test]
    fn fail_unknown_key_in_file() {
        let temp = tempfile::tempdir().expect("tempdir");
        let file = temp.path().join("sim.toml");
        std::fs::write(&file, "directory = \"x\"\n").expect("write");
        assert!(matches!(
            Config::resolve(None, Some(file)),
            Err(ConfigError::Parse { .. })
        ));
    }
}
