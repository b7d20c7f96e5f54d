//! Setting a server up: [`ServerOptions`], [`ServerBuilder`], and the
//! private [`Prepared`] state (directory, token, database, `init`) that
//! becomes a [`TestServer`] or a [`PendingCa`].
//!
//! Invariants: every server gets its own directory, token directory,
//! `softhsm2.conf`, PINs, port and database; until the supervisor takes
//! them over, dropping the [`Prepared`] removes the directory and drops the
//! database. A missing back end that is not mandatory is a [`Skip`], never a
//! silent pass; a mandatory one (`CERTMINT_REQUIRE_SOFTHSM`,
//! `CERTMINT_REQUIRE_POSTGRES`) panics.

use std::path::{Path, PathBuf};

use crate::external_root::PendingCa;
use crate::hsm::{Token, SOFTHSM_MODULE};
use crate::http::install_crypto_provider;
use crate::postgres::TestDatabase;
use crate::process::{
    env_flag, free_port, hsm_sim_binary, hsm_sim_module, random_hex, server_binary, ChildEnv,
    CommandOutput,
};
use crate::server::{Backend, Skip, TestServer};

/// How [`ServerBuilder`] sets a server up. The default is what
/// [`TestServer::start`] does: an ec-p256 CA created by `init` on the token
/// `CERTMINT_TEST_TOKEN` names, text logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// The PKCS#11 token.
    pub token: Token,
    /// `init --key-type`: `ec-p256`, `ec-p384`, `rsa-3072`, `rsa-4096` or `ed25519`.
    pub key_type: String,
    /// `serve --log-format json` instead of text.
    pub log_format_json: bool,
    /// `init --external-root-csr`, with the test acting as the offline root
    /// and installing the chain with `ca import-chain`.
    pub external_root: bool,
    /// `[server] tls_certificate_ttl`, written into the config after `init`
    /// (short values make the server renew its own certificate during a test).
    pub tls_certificate_ttl: Option<String>,
    /// `hsm-sim fault set` arguments in force during a first `init`, which
    /// must fail; the faults are then cleared and `init` runs again, as an
    /// operator would after an interrupted set-up. The first run's output
    /// is kept in `init-interrupted.log`. hsm-sim only.
    pub interrupt_first_init: Vec<String>,
    /// How many `init`s run at the same moment (replicas that each run
    /// `init` at start); every one must succeed.
    pub concurrent_inits: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            token: Token::from_env(),
            key_type: "ec-p256".to_owned(),
            log_format_json: false,
            external_root: false,
            tls_certificate_ttl: None,
            interrupt_first_init: Vec::new(),
            concurrent_inits: 1,
        }
    }
}

impl ServerOptions {
    /// The PKCS#11 token.
    pub fn token(mut self, token: Token) -> Self {
        self.token = token;
        self
    }

    /// The CA key type.
    pub fn key_type(mut self, key_type: &str) -> Self {
        key_type.clone_into(&mut self.key_type);
        self
    }

    /// Lifetime of the server's own HTTPS certificate, e.g. `"12s"`.
    pub fn tls_certificate_ttl(mut self, ttl: &str) -> Self {
        self.tls_certificate_ttl = Some(ttl.to_owned());
        self
    }

    /// JSON log lines.
    pub fn log_format_json(mut self) -> Self {
        self.log_format_json = true;
        self
    }

    /// External-root mode (or not).
    pub fn external_root(mut self, external_root: bool) -> Self {
        self.external_root = external_root;
        self
    }

    /// `count` `init`s at the same moment (see
    /// [`ServerOptions::concurrent_inits`]).
    pub fn concurrent_inits(mut self, count: usize) -> Self {
        self.concurrent_inits = count.max(1);
        self
    }

    /// A first `init` that fails under these hsm-sim faults, then a rerun
    /// (see [`ServerOptions::interrupt_first_init`]).
    pub fn interrupt_first_init(mut self, fault_args: &[&str]) -> Self {
        self.interrupt_first_init = fault_args.iter().map(|arg| (*arg).to_owned()).collect();
        self
    }
}

/// Builds a [`TestServer`] with [`ServerOptions`]; see [`TestServer::builder`].
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    pub(crate) backend: Backend,
    pub(crate) options: ServerOptions,
}

impl ServerBuilder {
    /// The PKCS#11 token (default: `CERTMINT_TEST_TOKEN`).
    pub fn token(mut self, token: Token) -> Self {
        self.options = self.options.token(token);
        self
    }

    /// The CA key type (default `ec-p256`).
    pub fn key_type(mut self, key_type: &str) -> Self {
        self.options = self.options.key_type(key_type);
        self
    }

    /// `serve --log-format json`.
    pub fn log_format_json(mut self) -> Self {
        self.options = self.options.log_format_json();
        self
    }

    /// External-root mode: `init --external-root-csr`, an offline root made
    /// with `openssl` signs the CSR, `ca import-chain` installs the chain.
    pub fn external_root(mut self, external_root: bool) -> Self {
        self.options = self.options.external_root(external_root);
        self
    }

    /// All options at once.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// Starts the server; `None` (after printing why) when a non-mandatory
    /// dependency is missing. Panics, with the output, on any other failure.
    pub fn start(self) -> Option<TestServer> {
        let backend = self.backend;
        match self.try_start() {
            Ok(server) => Some(server),
            Err(Skip(reason)) => {
                eprintln!("note: skipping {backend:?} end-to-end test: {reason}");
                None
            }
        }
    }

    /// [`ServerBuilder::start`], returning why it skipped.
    pub fn try_start(self) -> Result<TestServer, Skip> {
        if self.options.external_root {
            return Ok(self.try_init_external_root()?.complete());
        }
        let prepared = Prepared::new(self.backend, self.options)?;
        prepared.run_interrupted_init(None);
        let init = prepared.init_concurrently();
        assert!(
            init.success(),
            "certmint-server init failed in {}:\n{}",
            prepared.dir.display(),
            init.text
        );
        let root_fingerprint = parse_root_fingerprint(&init.text).unwrap_or_else(|| {
            panic!(
                "init printed no `root fingerprint: sha256:<hex>` line:\n{}",
                init.text
            )
        });
        Ok(TestServer::launch(prepared, root_fingerprint, None))
    }

    /// External-root mode up to the pending CA: runs `init
    /// --external-root-csr` and stops there, so the test can play the
    /// offline root (or fail to). `None` when skipped.
    pub fn init_external_root(self) -> Option<PendingCa> {
        let backend = self.backend;
        match self.try_init_external_root() {
            Ok(pending) => Some(pending),
            Err(Skip(reason)) => {
                eprintln!("note: skipping {backend:?} end-to-end test: {reason}");
                None
            }
        }
    }

    fn try_init_external_root(self) -> Result<PendingCa, Skip> {
        let prepared = Prepared::new(self.backend, self.options.external_root(true))?;
        let csr_path = prepared.dir.join("issuing.csr");
        prepared.run_interrupted_init(Some(&csr_path));
        let init = prepared.init(Some(&csr_path));
        assert!(
            init.success(),
            "certmint-server init --external-root-csr failed in {}:\n{}",
            prepared.dir.display(),
            init.text
        );
        let csr_pem = std::fs::read_to_string(&csr_path).unwrap_or_else(|error| {
            panic!(
                "init --external-root-csr wrote no {} ({error}):\n{}",
                csr_path.display(),
                init.text
            )
        });
        Ok(PendingCa {
            prepared,
            init_output: init.text,
            csr_pem,
        })
    }
}

/// Everything a server needs before `serve`: directory, token, database.
/// Dropping it (before [`TestServer::launch`] hands both to the supervisor)
/// removes the directory and drops the database.
pub(crate) struct Prepared {
    pub(crate) backend: Backend,
    pub(crate) options: ServerOptions,
    pub(crate) binary: PathBuf,
    pub(crate) module: PathBuf,
    pub(crate) database: Option<TestDatabase>,
    pub(crate) dir: PathBuf,
    pub(crate) softhsm_conf: PathBuf,
    pub(crate) config_path: PathBuf,
    pub(crate) log_path: PathBuf,
    pub(crate) port: u16,
    /// The plain-HTTP CRL listener's port.
    pub(crate) crl_port: u16,
    pub(crate) hsm_pin: String,
    pub(crate) so_pin: String,
    /// False once the supervisor owns the directory and the database.
    pub(crate) clean_up: bool,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.clean_up {
            // The database, if any, is dropped with its field.
            if !env_flag("CERTMINT_E2E_KEEP") {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        } else if let Some(database) = &mut self.database {
            database.hand_over();
        }
    }
}

impl Prepared {
    pub(crate) fn new(backend: Backend, options: ServerOptions) -> Result<Prepared, Skip> {
        install_crypto_provider();
        let binary = server_binary();
        let module = match options.token {
            Token::HsmSim => hsm_sim_module(),
            Token::SoftHsm2 => {
                let module = std::env::var_os("CERTMINT_TEST_PKCS11_MODULE")
                    .map_or_else(|| PathBuf::from(SOFTHSM_MODULE), PathBuf::from);
                if !module.exists() {
                    let reason = format!(
                        "SoftHSM2 module {} not found (apt-get install softhsm2)",
                        module.display()
                    );
                    if env_flag("CERTMINT_REQUIRE_SOFTHSM") {
                        panic!("{reason}, and CERTMINT_REQUIRE_SOFTHSM=1");
                    }
                    return Err(Skip(reason));
                }
                module
            }
        };
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestDatabase::create()?),
        };
        let dir = tempfile::Builder::new()
            .prefix("certmint-e2e-")
            .tempdir()
            .expect("create a temporary directory")
            .keep();
        // From here on, dropping `prepared` cleans up.
        let prepared = Prepared {
            backend,
            options,
            binary,
            module,
            database,
            softhsm_conf: dir.join("softhsm2.conf"),
            config_path: dir.join("certmint.toml"),
            log_path: dir.join("server.log"),
            dir,
            port: free_port(),
            crl_port: free_port(),
            hsm_pin: random_hex(8),
            so_pin: random_hex(8),
            clean_up: true,
        };
        let token_dir = prepared.dir.join("softhsm-tokens");
        std::fs::create_dir(&token_dir).expect("create the token directory");
        std::fs::create_dir(prepared.child_env().hsm_sim_dir())
            .expect("create the hsm-sim directory");
        std::fs::write(
            &prepared.softhsm_conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                token_dir.display()
            ),
        )
        .expect("write softhsm2.conf");
        Ok(prepared)
    }

    pub(crate) fn child_env(&self) -> ChildEnv {
        ChildEnv {
            softhsm_conf: self.softhsm_conf.clone(),
            hsm_pin: self.hsm_pin.clone(),
        }
    }

    /// The failing first `init` of [`ServerOptions::interrupt_first_init`],
    /// if asked for; leaves no fault in force.
    pub(crate) fn run_interrupted_init(&self, external_csr: Option<&Path>) {
        if self.options.interrupt_first_init.is_empty() {
            return;
        }
        assert_eq!(self.options.token, Token::HsmSim, "faults need hsm-sim");
        let hsm_sim = |args: &[&str]| {
            let mut command = self.child_env().command(&hsm_sim_binary());
            command.args(args);
            let output = CommandOutput::of(&mut command, &format!("hsm-sim {}", args.join(" ")));
            assert!(
                output.success(),
                "hsm-sim {args:?} failed:\n{}",
                output.text
            );
        };
        let mut set = vec!["fault", "set"];
        set.extend(self.options.interrupt_first_init.iter().map(String::as_str));
        hsm_sim(&set);
        let init = self.init(external_csr);
        hsm_sim(&["fault", "clear"]);
        std::fs::write(self.dir.join("init-interrupted.log"), &init.text)
            .expect("write init-interrupted.log");
        assert!(
            init.failed(),
            "init under hsm-sim faults {:?} did not fail:\n{}",
            self.options.interrupt_first_init,
            init.text
        );
    }

    /// [`ServerOptions::concurrent_inits`] `init`s at once; asserts each
    /// one succeeded and returns the output of one that reports the root.
    pub(crate) fn init_concurrently(&self) -> CommandOutput {
        let count = self.options.concurrent_inits;
        if count <= 1 {
            return self.init(None);
        }
        let outputs: Vec<CommandOutput> = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..count)
                .map(|_| scope.spawn(|| self.init(None)))
                .collect();
            runs.into_iter()
                .map(|run| run.join().expect("init thread"))
                .collect()
        });
        for output in &outputs {
            assert!(
                output.success(),
                "one of {count} concurrent inits failed in {}:\n{}",
                self.dir.display(),
                output.text
            );
        }
        let created = outputs
            .iter()
            .filter(|output| output.text.contains("created CA"))
            .count();
        assert_eq!(
            created, 1,
            "exactly one of {count} concurrent inits creates the CA"
        );
        outputs
            .into_iter()
            .find(|output| output.text.contains("root fingerprint"))
            .expect("an init reported the root")
    }

    /// The first `init` (it also initialises the token); `external_csr`
    /// selects external-root mode. Output is also kept in `init.log`.
    pub(crate) fn init(&self, external_csr: Option<&Path>) -> CommandOutput {
        let token_label = format!("e2e-{}", random_hex(4));
        let database_url = match &self.database {
            None => format!("sqlite://{}", self.dir.join("certmint.db").display()),
            Some(database) => database.url().to_owned(),
        };
        let mut command = self.child_env().command(&self.binary);
        command
            .env("CERTMINT_HSM_SO_PIN", &self.so_pin)
            .arg("init")
            .arg("--config")
            .arg(&self.config_path)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--crl-listen", &format!("127.0.0.1:{}", self.crl_port)])
            .args(["--name", "localhost", "--name", "127.0.0.1"])
            .arg("--pkcs11-module")
            .arg(&self.module)
            .args(["--token-label", &token_label])
            .args(["--ca-name", "certmint e2e"])
            .args(["--key-type", &self.options.key_type, "--init-token"]);
        // PostgreSQL URLs (which may hold a password) come through the
        // environment, as the README advises; SQLite paths as a flag. Both
        // ways are exercised on every run.
        match &self.database {
            None => command.args(["--database-url", &database_url]),
            Some(_) => command.env("CERTMINT_DATABASE_URL", &database_url),
        };
        if let Some(csr) = external_csr {
            command.arg("--external-root-csr").arg(csr);
        }
        let output = CommandOutput::of(&mut command, "certmint-server init");
        std::fs::write(self.dir.join("init.log"), &output.text).expect("write init.log");
        if let Ok(metadata) = std::fs::metadata(&self.config_path) {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                metadata.permissions().mode() & 0o777,
                0o600,
                "init must write its config 0600: database.url may hold a password"
            );
        }
        if let Some(ttl) = &self.options.tls_certificate_ttl {
            let config = std::fs::read_to_string(&self.config_path).expect("read config");
            let edited = config.replacen(
                "[server]\n",
                &format!("[server]\ntls_certificate_ttl = \"{ttl}\"\n"),
                1,
            );
            std::fs::write(&self.config_path, edited).expect("write config");
        }
        output
    }
}

/// Finds `root fingerprint: sha256:<64 hex>` in `init`'s output.
pub fn parse_root_fingerprint(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let value = line.trim().strip_prefix("root fingerprint: ")?;
        let hex = value.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| value.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_parse_root_fingerprint() {
        let hex = "ab".repeat(32);
        assert_eq!(
            parse_root_fingerprint(&format!("x\nroot fingerprint: sha256:{hex}\n")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(parse_root_fingerprint("root fingerprint: sha256:zz"), None);
    }
}
