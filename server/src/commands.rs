//! The `certmint-server` subcommands, wiring the layers together.
//!
//! Invariants: no command takes a secret on its command line (the PIN comes
//! from the environment or a file); `init` never overwrites an existing
//! config, key file or CA.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use certmint::wire::{CaInfo, CrlScope, Directory, KeyType, API_VERSION};
use secrecy::SecretString;

use crate::admin::{Admin, TokenSettings};
use crate::api::{self, AppState};
use crate::ca::{self, CaOptions, InitOutcome};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, InitValues, TokenKeyStore};
use crate::hsm::{self, Hsm, HsmConfig};
use crate::issuance::{Issuer, IssuerParts, IssuerSettings};
use crate::metrics::Metrics;
use crate::revocation::publisher::{CrlIssuer, CrlPublisher, PublisherSettings};
use crate::revocation::sharding::CrlSharding;
use crate::store::{Store, RECONCILE_BATCH};
use crate::tls::{self, ServerCertificate};
use crate::tokens::{self, Role, TokenAuthority};

/// A command failed; the message is for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(String);

macro_rules! command_error_from {
    ($($source:ty),*) => {$(
        impl From<$source> for CommandError {
            fn from(error: $source) -> Self {
                CommandError(crate::error::with_causes(&error))
            }
        }
    )*};
}

command_error_from!(
    crate::config::ConfigError,
    crate::store::StoreError,
    crate::hsm::HsmError,
    crate::error::ServiceError,
    crate::tokens::TokenKeyError,
    crate::tokens::TokenError,
    crate::tokens::MintError,
    crate::random::EntropyError,
    std::io::Error
);

/// Log output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `init` (the CLI's flags, also usable from code).
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Config file to write (if absent) or read.
    #[arg(long, default_value = "certmint.toml")]
    pub config: PathBuf,
    /// Listen address for the config.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Public URL (default https://<first name>:<port>).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Server TLS names (repeatable).
    #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
    pub names: Vec<String>,
    /// Database URL. A PostgreSQL URL with a password is better passed as
    /// $CERTMINT_DATABASE_URL than on the command line, where `ps` shows it.
    #[arg(
        long,
        env = "CERTMINT_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://certmint.db"
    )]
    pub database_url: String,
    /// PKCS#11 module path (default: hsm-sim's libhsm_sim.so installed beside
    /// this binary; e.g. /usr/lib/softhsm/libsofthsm2.so for SoftHSM2).
    #[arg(long = "pkcs11-module")]
    pub pkcs11_module: Option<PathBuf>,
    /// Token label.
    #[arg(long, default_value = "certmint")]
    pub token_label: String,
    /// File holding the user PIN (else $CERTMINT_HSM_PIN).
    #[arg(long)]
    pub pin_file: Option<PathBuf>,
    /// CA name (subjects: "<name> Root CA", "<name> Issuing CA").
    #[arg(long, default_value = "certmint")]
    pub ca_name: String,
    /// CA key type: ec-p256, ec-p384, rsa-3072, rsa-4096 or ed25519.
    #[arg(long, default_value = "ec-p256", value_parser = ca::parse_ca_key_type)]
    pub key_type: KeyType,
    /// Initialise an empty token slot first (SO PIN from $CERTMINT_HSM_SO_PIN).
    #[arg(long)]
    pub init_token: bool,
    /// Create only the issuing key and write its CSR here, for an external root.
    #[arg(long)]
    pub external_root_csr: Option<PathBuf>,
    /// Plain-HTTP listener for CRLs and the CA chain (default: the
    /// --listen address on port 8080; "none" for none).
    #[arg(long, value_parser = parse_crl_listen)]
    pub crl_listen: Option<CrlListen>,
    /// Base URL of CRL distribution points (default http://<crl-listen>,
    /// or the public URL's host when --crl-listen is a wildcard address).
    #[arg(long)]
    pub crl_url: Option<String>,
}

/// `--crl-listen`: an address, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlListen {
    /// Listen here.
    At(SocketAddr),
    /// No plain-HTTP listener.
    Off,
}

fn parse_crl_listen(text: &str) -> Result<CrlListen, String> {
    if text == "none" {
        return Ok(CrlListen::Off);
    }
    text.parse()
        .map(CrlListen::At)
        .map_err(|_| format!("{text:?} is neither host:port nor \"none\""))
}

/// Port of the plain-HTTP CRL listener `init` configures by default.
const DEFAULT_CRL_PORT: u16 = 8080;

/// `certmint-server init`.
pub fn init(args: &InitArgs) -> Result<(), CommandError> {
    init_command_logging();
    if args.config.exists() {
        println!(
            "config {} exists; using it unchanged",
            args.config.display()
        );
    } else {
        let public_url = args.public_url.clone().unwrap_or_else(|| {
            let host = args.names.first().map_or("localhost", String::as_str);
            format!("https://{host}:{}", args.listen.port())
        });
        let module = match &args.pkcs11_module {
            Some(module) => module.clone(),
            None => bundled_simulator()?,
        };
        let sim_dir = if is_simulator(&module) {
            SimulatorEnvironment::current().token_dir_for_init()
        } else {
            None
        };
        let crl_listen = match args.crl_listen {
            Some(CrlListen::At(listen)) => Some(listen),
            Some(CrlListen::Off) => None,
            None => Some(SocketAddr::new(args.listen.ip(), DEFAULT_CRL_PORT)),
        };
        let crl_url = args.crl_url.clone().or_else(|| {
            let listen = crl_listen.filter(|listen| listen.ip().is_unspecified())?;
            let host = public_url
                .parse::<actix_web::http::Uri>()
                .ok()?
                .host()?
                .to_owned();
            Some(format!("http://{host}:{}", listen.port()))
        });
        let text = config::render_commented(&InitValues {
            crl_listen,
            crl_url,
            listen: args.listen,
            public_url,
            names: args.names.clone(),
            database_url: args.database_url.clone(),
            module,
            sim_dir,
            token_label: args.token_label.clone(),
            pin_file: args.pin_file.clone(),
            ca_name: args.ca_name.clone(),
            key_type: args.key_type,
        });
        if let Some(parent) = args.config.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        // 0600: `database.url` may hold a PostgreSQL password.
        match crate::files::create(&args.config, text.as_bytes(), crate::files::Readers::Owner) {
            Ok(()) => println!("wrote config {}", args.config.display()),
            // Another init started at the same moment wrote it first.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => println!(
                "config {} exists; using it unchanged",
                args.config.display()
            ),
            Err(error) => return Err(error.into()),
        }
    }
    let config = Config::load(&args.config)?;
    let pin = config.hsm_pin()?;
    let store = Store::open(&config.database_url(), 2)?;
    println!("database ready ({:?})", store.backend());
    // Held to the end: inits started together (an init container per
    // replica) take turns instead of racing for the token and the keys.
    let _one_init_at_a_time = store.lock_for_init()?;
    if args.init_token {
        let so_pin = std::env::var("CERTMINT_HSM_SO_PIN").map_err(|_| {
            CommandError("--init-token needs the SO PIN in $CERTMINT_HSM_SO_PIN".into())
        })?;
        match hsm::init_token(
            &config.hsm.module,
            &config.hsm.token_label,
            &SecretString::from(so_pin),
            &pin,
        ) {
            Ok(()) => println!("initialised token {:?}", config.hsm.token_label),
            Err(hsm::HsmError::AlreadyExists { .. }) => {
                println!("token {:?} already initialised", config.hsm.token_label)
            }
            Err(error) => return Err(error.into()),
        }
    }
    if config.tokens.signing_key == TokenKeyStore::File {
        let key_file = config.resolve(&config.tokens.signing_key_file);
        if key_file.exists() {
            println!("token signing key {} exists; kept", key_file.display());
        } else {
            tokens::create_signing_key_file(&key_file)?;
            println!("created token signing key {}", key_file.display());
        }
    }
    warn_if_simulator(&config);
    let hsm = open_hsm(&config, &args.config, pin)?;
    // Before any CA key exists: a token that cannot hold the token key
    // should stop init here, not after the CA is made.
    if config.tokens.signing_key == TokenKeyStore::Hsm {
        ca::require_ed25519_for_tokens(&hsm)?;
    }
    let options = CaOptions {
        name: config.ca.name.clone(),
        key_type: config.ca.key_type,
        root_key_label: config.ca.root_key_label.clone(),
        issuing_key_label: config.ca.issuing_key_label.clone(),
        root_validity_seconds: seconds(config.ca.root_validity),
        issuing_validity_seconds: seconds(config.ca.issuing_validity),
    };
    let now = SystemClock.now();
    let outcome = match &args.external_root_csr {
        None => ca::initialize(&hsm, &store, &options, now)?,
        Some(_) => ca::initialize_for_external_root(&hsm, &store, &options, now)?,
    };
    if config.tokens.signing_key == TokenKeyStore::Hsm {
        let label = &config.tokens.signing_key_label;
        ca::token_signing_key(&hsm, &store, label, now)?;
        println!(
            "token signing key {label:?} on token {:?}",
            config.hsm.token_label
        );
    }
    match outcome {
        InitOutcome::Created { root_fingerprint } => {
            write_root_files(&config, &store)?;
            println!(
                "created CA {:?} on token {:?}",
                config.ca.name, config.hsm.token_label
            );
            println!("root fingerprint: {root_fingerprint}");
        }
        InitOutcome::AlreadyInitialized { root_fingerprint } => {
            println!("CA already initialised; nothing changed");
            if let Some(fingerprint) = root_fingerprint {
                write_root_files(&config, &store)?;
                println!("root fingerprint: {fingerprint}");
            }
        }
        InitOutcome::AwaitingExternalRoot { csr_pem } => {
            let path = args
                .external_root_csr
                .clone()
                .unwrap_or_else(|| PathBuf::from("issuing-ca.csr"));
            crate::files::create_or_confirm(&path, csr_pem.as_bytes(), "CSR")?;
            println!(
                "issuing key created; CSR written to {}. Have it signed (CA:TRUE, pathlen 0), then run `certmint-server ca import-chain --chain <pem>`",
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes `root.pem` beside the config so first contact can pin it.
fn write_root_files(config: &Config, store: &Store) -> Result<(), CommandError> {
    if let Some(state) = store.ca_state()? {
        if let Some(root) = state.root() {
            let pem = crate::issuance::pem("CERTIFICATE", root)?;
            let path = config.resolve(Path::new("root.pem"));
            crate::files::create_or_confirm(&path, pem.as_bytes(), "root certificate")?;
            println!("root certificate written to {}", path.display());
        }
    }
    Ok(())
}

fn seconds(duration: certmint::Duration) -> i64 {
    i64::try_from(duration.as_seconds()).unwrap_or(i64::MAX / 4)
}

/// File name of hsm-sim's PKCS#11 module.
const SIMULATOR_FILE: &str = "libhsm_sim.so";

/// hsm-sim's module as installed beside `certmint-server` (the zero-install
/// default token), as an absolute path for the config file.
fn bundled_simulator() -> Result<PathBuf, CommandError> {
    let exe = std::env::current_exe()?;
    let exe_dir = exe.parent().unwrap_or(Path::new("."));
    find_simulator(exe_dir).ok_or_else(|| {
        CommandError(format!(
            "no --pkcs11-module given, and hsm-sim's {SIMULATOR_FILE} is not installed beside {} \
             (build it with `cargo build -p hsm-sim`, or pass --pkcs11-module, e.g. \
             /usr/lib/softhsm/libsofthsm2.so)",
            exe.display()
        ))
    })
}

/// Where hsm-sim's module is looked for, in order: beside the binary (a
/// cargo target directory after `cargo build`, or a flat install), in
/// `deps/` beside it (after `cargo test`), and in `../lib/certmint/`
/// (an FHS install: `/usr/bin` + `/usr/lib/certmint`).
fn find_simulator(exe_dir: &Path) -> Option<PathBuf> {
    [
        exe_dir.join(SIMULATOR_FILE),
        exe_dir.join("deps").join(SIMULATOR_FILE),
        exe_dir.join("../lib/certmint").join(SIMULATOR_FILE),
    ]
    .into_iter()
    .find(|path| path.is_file())
    .map(|path| std::fs::canonicalize(&path).unwrap_or(path))
}

/// True when `module` is hsm-sim (by file name), for the "not for
/// production" warning.
fn is_simulator(module: &Path) -> bool {
    module
        .file_name()
        .is_some_and(|name| name == SIMULATOR_FILE)
}

/// Environment variable naming hsm-sim's token directory.
const SIMULATOR_DIR_ENV: &str = "HSM_SIM_DIR";
/// Environment variable naming hsm-sim's configuration file, whose `dir`
/// names the token directory when `HSM_SIM_DIR` is not set.
const SIMULATOR_CONFIG_ENV: &str = "HSM_SIM_CONFIG";

/// What of the environment decides where hsm-sim keeps its tokens: its
/// own variables first, then `$HOME/.local/share/hsm-sim` (hsm-sim's rule,
/// see `docs/HSM-SIM.md`). Empty variables count as unset, as there.
#[derive(Debug, Default)]
struct SimulatorEnvironment {
    dir: Option<PathBuf>,
    config_file: Option<PathBuf>,
    home: Option<PathBuf>,
}

impl SimulatorEnvironment {
    fn current() -> SimulatorEnvironment {
        let variable = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        SimulatorEnvironment {
            dir: variable(SIMULATOR_DIR_ENV),
            config_file: variable(SIMULATOR_CONFIG_ENV),
            home: variable("HOME"),
        }
    }

    /// The directory `init` records as `hsm.sim_dir`: the one hsm-sim will
    /// use in this environment, made absolute. `None` when an
    /// `HSM_SIM_CONFIG` file decides, which stays the place to change it.
    fn token_dir_for_init(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.dir {
            return Some(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()));
        }
        if self.config_file.is_some() {
            return None;
        }
        self.default_dir()
    }

    fn default_dir(&self) -> Option<PathBuf> {
        self.home
            .as_ref()
            .map(|home| home.join(".local/share/hsm-sim"))
    }
}

/// The token directory to hand hsm-sim as `HSM_SIM_DIR` for the config at
/// `config_path`: its `hsm.sim_dir`, when the module is hsm-sim and the
/// environment names no directory of its own (an explicit `HSM_SIM_DIR` or
/// `HSM_SIM_CONFIG` wins). `None` also when the config cannot be read: the
/// command itself then reports why.
pub fn simulator_dir_to_export(config_path: &Path) -> Option<PathBuf> {
    let config = Config::load(config_path).ok()?;
    simulator_dir_for(&config, &SimulatorEnvironment::current())
}

fn simulator_dir_for(config: &Config, environment: &SimulatorEnvironment) -> Option<PathBuf> {
    if !is_simulator(&config.hsm.module)
        || environment.dir.is_some()
        || environment.config_file.is_some()
    {
        return None;
    }
    config.simulator_dir()
}

/// The "not for production" warning of the commands that make or serve the
/// CA (`init`, `serve`, `ca import-chain`); `admin-token`, run often and
/// read by scripts, stays quiet.
fn warn_if_simulator(config: &Config) {
    if is_simulator(&config.hsm.module) {
        tracing::warn!(
            hsm.module = %config.hsm.module.display(),
            "hsm: using hsm-sim, a software HSM simulator: the CA keys are protected only by the PIN; \
             use a real HSM in production"
        );
    }
}

fn open_hsm(config: &Config, config_path: &Path, pin: SecretString) -> Result<Hsm, CommandError> {
    Hsm::open(&HsmConfig {
        module_path: config.hsm.module.clone(),
        token_label: config.hsm.token_label.clone(),
        pin,
        session_pool_size: config.hsm.session_pool_size,
    })
    .map_err(|error| match error {
        hsm::HsmError::TokenNotFound { .. } => CommandError(format!(
            "{}: {}",
            crate::error::with_causes(&error),
            token_not_found_hint(config, config_path, &SimulatorEnvironment::current())
        )),
        other => other.into(),
    })
}

/// Where a token label was looked for, and how to point at the right place.
fn token_not_found_hint(
    config: &Config,
    config_path: &Path,
    environment: &SimulatorEnvironment,
) -> String {
    let module = config.hsm.module.display();
    let config_file = config_path.display();
    let init = "to create the token there, run `certmint-server init --init-token`";
    if !is_simulator(&config.hsm.module) {
        let softhsm = match std::env::var_os("SOFTHSM2_CONF") {
            Some(file) => format!("$SOFTHSM2_CONF is {}", Path::new(&file).display()),
            None => "$SOFTHSM2_CONF is not set".to_owned(),
        };
        return format!(
            "searched every slot of the PKCS#11 module {module}. Check token_label under [hsm] \
             in {config_file} and the module's own configuration (SoftHSM2 reads its token \
             directory from $SOFTHSM2_CONF; {softhsm}); {init}"
        );
    }
    let set_sim_dir = format!(
        "set sim_dir under [hsm] in {config_file} to the directory init used (or export \
         HSM_SIM_DIR)"
    );
    let (searched, repoint) = match (&environment.dir, &environment.config_file) {
        (Some(dir), _) if config.simulator_dir().as_ref() == Some(dir) => (
            format!(
                "the hsm-sim token directory {} (sim_dir under [hsm] in {config_file})",
                dir.display()
            ),
            set_sim_dir,
        ),
        (Some(dir), _) => (
            format!(
                "the hsm-sim token directory {} (from $HSM_SIM_DIR, which wins over sim_dir \
                 under [hsm] in {config_file})",
                dir.display()
            ),
            "point HSM_SIM_DIR at the directory init used, or unset it to use sim_dir".to_owned(),
        ),
        (None, Some(file)) => (
            format!(
                "the hsm-sim token directory named by `dir` in $HSM_SIM_CONFIG ({})",
                file.display()
            ),
            format!(
                "fix `dir` there, or unset HSM_SIM_CONFIG and set sim_dir under [hsm] in \
                 {config_file}"
            ),
        ),
        (None, None) => match environment.default_dir() {
            Some(dir) => (
                format!(
                    "the hsm-sim token directory {} (hsm-sim's default: neither $HSM_SIM_DIR, \
                     $HSM_SIM_CONFIG nor sim_dir under [hsm] in {config_file} is set)",
                    dir.display()
                ),
                set_sim_dir,
            ),
            None => (
                "no hsm-sim token directory (neither $HSM_SIM_DIR, $HSM_SIM_CONFIG, sim_dir \
                 nor $HOME is set)"
                    .to_owned(),
                set_sim_dir,
            ),
        },
    };
    format!(
        "the PKCS#11 module {module} searched {searched}. If the token is elsewhere, {repoint}; \
         {init}"
    )
}

/// `certmint-server ca import-chain`.
pub fn import_chain(config_path: &Path, chain: &Path) -> Result<(), CommandError> {
    init_command_logging();
    let config = Config::load(config_path)?;
    let store = Store::open(&config.database_url(), 2)?;
    warn_if_simulator(&config);
    let hsm = open_hsm(&config, config_path, config.hsm_pin()?)?;
    let chain_pem = std::fs::read_to_string(chain)?;
    let fingerprint = ca::import_chain(&hsm, &store, &chain_pem, SystemClock.now())?;
    write_root_files(&config, &store)?;
    println!("chain installed; root fingerprint: {fingerprint}");
    Ok(())
}

/// `certmint-server admin-token`.
pub fn admin_token(
    config_path: &Path,
    role: Role,
    subject: &str,
    ttl: certmint::Duration,
) -> Result<(), CommandError> {
    init_command_logging();
    let config = Config::load(config_path)?;
    let ttl_seconds = admin_token_ttl_seconds(ttl)?;
    // The HSM key is found through the database's record of it; a key file
    // needs neither.
    let authority = match config.tokens.signing_key {
        TokenKeyStore::Hsm => {
            let hsm = open_hsm(&config, config_path, config.hsm_pin()?)?;
            let store = Store::open(&config.database_url(), 1)?;
            hsm_token_authority(&config, &hsm, &store)?
        }
        TokenKeyStore::File => file_token_authority(&config)?,
    };
    let now = SystemClock.now();
    let token = authority.mint_admin(
        &crate::random::hex_id()?,
        role,
        subject,
        &config.admin_audience(),
        now,
        now.checked_add(time::Duration::seconds(ttl_seconds))
            .ok_or_else(|| CommandError(format!("--ttl {ttl} is out of range")))?,
    )?;
    println!("{token}");
    Ok(())
}

/// The token authority of `tokens.signing_key = "file"`.
fn file_token_authority(config: &Config) -> Result<TokenAuthority, CommandError> {
    Ok(TokenAuthority::load(
        &config.resolve(&config.tokens.signing_key_file),
        &config.server.public_url,
    )?)
}

/// The token authority of `tokens.signing_key = "hsm"`: the key `init`
/// generated, found by its label *and* the `CKA_ID` init recorded for it,
/// with the protection checks of a CA key, so no other object under the
/// label (a CA key after a config edit, a planted key) can sign tokens.
fn hsm_token_authority(
    config: &Config,
    hsm: &Hsm,
    store: &Store,
) -> Result<TokenAuthority, CommandError> {
    let label = &config.tokens.signing_key_label;
    let not_made = || {
        CommandError(format!(
            "no token signing key {label:?} made by init on this token: run `certmint-server init` (it creates it)"
        ))
    };
    let reservation = store.ca_key_reservation(label)?.ok_or_else(not_made)?;
    let signer = hsm
        .find_generated_key_pair(label, &reservation.key_id, KeyType::Ed25519)?
        .ok_or_else(not_made)?;
    Ok(TokenAuthority::from_hsm_key(
        signer,
        &config.server.public_url,
    )?)
}

/// Longest admin token: they cannot be revoked one by one (only by
/// replacing the token-signing key), so a leaked one must run out soon.
const MAX_ADMIN_TOKEN_TTL_SECONDS: i64 = 30 * 86_400;

fn admin_token_ttl_seconds(ttl: certmint::Duration) -> Result<i64, CommandError> {
    let ttl_seconds = seconds(ttl);
    if ttl_seconds > MAX_ADMIN_TOKEN_TTL_SECONDS {
        return Err(CommandError(format!(
            "--ttl {ttl} is too long: admin tokens cannot be revoked, so they live at most 30d"
        )));
    }
    Ok(ttl_seconds)
}

/// Logging for the one-shot commands (`init`, `admin-token`, `ca
/// import-chain`): warnings and errors to stderr, so stdout keeps only what
/// the command prints (an admin token, say); `CERTMINT_LOG` overrides.
fn init_command_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// `CERTMINT_LOG`, else `default`.
fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("CERTMINT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(log_filter("info"));
    match format {
        // Colour only on a terminal: a log file or a pipe gets plain text.
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    // A panic (a bug: requests are answered with 500 `internal`) is logged
    // like everything else, so JSON logs stay one JSON object per line.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|location| format!("{}:{}", location.file(), location.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic.location = %location, panic.message = %message, "panic");
    }));
}

/// `certmint-server serve`.
pub fn serve(config_path: &Path, log_format: LogFormat) -> Result<(), CommandError> {
    init_logging(log_format);
    let config = Config::load(config_path)?;
    let store = Store::open(&config.database_url(), config.database.pool_size)?;
    warn_if_simulator(&config);
    let hsm = open_hsm(&config, config_path, config.hsm_pin()?)?;
    let loaded = ca::load(&hsm, &store)?;
    let token_authority = Arc::new(match config.tokens.signing_key {
        TokenKeyStore::Hsm => hsm_token_authority(&config, &hsm, &store)?,
        TokenKeyStore::File => file_token_authority(&config)?,
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut metrics = Metrics::new();
    metrics.register_group_commit(store.clone());
    let metrics = Arc::new(metrics);
    let issuer_not_after = crate::issuance::certificate_not_after(&loaded.issuing.certificate)?;
    let issuer_subject = loaded
        .issuing
        .certificate
        .tbs_certificate()
        .subject()
        .to_string();
    let issuing_der = der::Encode::to_der(&loaded.issuing.certificate)
        .map_err(|error| CommandError(format!("issuing certificate encoding: {error}")))?;
    let crl_sharding = CrlSharding {
        base_url: config.crl_base_url(),
        shards: config.crl.shards,
        width_seconds: seconds(config.crl.shard_width),
    };
    let crl_publisher = CrlPublisher::start(
        store.clone(),
        crl_issuers(&config, &hsm, &store, &loaded, &crl_sharding)?,
        PublisherSettings {
            next_update_seconds: seconds(config.crl.next_update),
            refresh_seconds: seconds(config.crl.refresh),
            poll: CRL_POLL_INTERVAL,
        },
        clock.clone(),
        metrics.crl(),
    )?;
    crl_publisher.spawn()?;
    let issuer = Arc::new(Issuer::new(IssuerParts {
        store: store.clone(),
        ca: loaded.issuing.clone(),
        tokens: token_authority.clone(),
        clock: clock.clone(),
        settings: IssuerSettings {
            enroll_audience: config.enroll_audience(),
            backdate_seconds: seconds(config.issuance.backdate),
            renew_fraction: config.issuance.renew_fraction,
            renew_jitter: config.issuance.renew_jitter,
            pending_timeout_seconds: seconds(config.issuance.pending_timeout),
            crl: crl_sharding.clone(),
        },
        metrics: metrics.clone(),
    }));
    let admin = Arc::new(Admin::new(
        store.clone(),
        token_authority.clone(),
        clock.clone(),
        TokenSettings {
            enroll_audience: config.enroll_audience(),
            default_ttl_seconds: config.tokens.default_ttl.as_seconds(),
            max_ttl_seconds: config.tokens.max_ttl.as_seconds(),
        },
    ));
    let server_ttl = config.server.tls_certificate_ttl.as_seconds();
    let public_host = config.public_host();
    let first = tls::issue(
        &issuer,
        &config.server.names,
        public_host.as_deref(),
        server_ttl,
    )?;
    tracing::info!(cert.serial = %first.serial, "server certificate issued");
    let first_renewal = first.renew_after;
    let resolver = ServerCertificate::new(first, metrics.server_certificate_expiry());
    spawn_renewal(
        issuer.clone(),
        resolver.clone(),
        config.server.names.clone(),
        public_host,
        server_ttl,
        first_renewal,
    );
    spawn_reconciler(store.clone(), seconds(config.issuance.pending_timeout))?;
    let ca_certificates: Vec<Vec<u8>> = std::iter::once(issuing_der)
        .chain(loaded.intermediates_der.iter().cloned())
        .collect();
    let tls_config = tls::server_config(
        resolver.clone(),
        &loaded.root_der,
        &ca_certificates,
        metrics.tls_handshake_failures(),
    )?;

    let directory = Directory {
        api_version: API_VERSION.into(),
        endpoints: [
            ("enroll", "/v1/enroll"),
            ("renew", "/v1/renew"),
            ("revoke", "/v1/revoke"),
            ("ca_chain", "/v1/ca/chain.pem"),
            ("crls", "/v1/crls"),
            ("admin_policies", "/v1/admin/policies"),
            ("admin_tokens", "/v1/admin/tokens"),
            ("admin_provisioners", "/v1/admin/provisioners"),
            ("admin_certificates", "/v1/admin/certificates"),
            ("admin_audit", "/v1/admin/audit"),
            ("openapi", "/openapi.json"),
        ]
        .into_iter()
        .map(|(name, path)| (name.to_owned(), path.to_owned()))
        .collect(),
        ca: CaInfo {
            root_fingerprint: ca::fingerprint(&loaded.root_der),
            issuer_subject,
            issuer_key_type: loaded.key_type.as_str().into(),
            issuer_not_after,
        },
        enroll_audience: Some(config.enroll_audience()),
    };
    let openapi: serde_json::Value =
        serde_norway::from_str(include_str!("../../openapi/openapi.yaml"))
            .map_err(|error| CommandError(format!("embedded openapi.yaml: {error}")))?;
    let state = actix_web::web::Data::new(AppState {
        issuer,
        admin,
        store,
        hsm,
        metrics,
        tokens: token_authority,
        admin_audience: config.admin_audience(),
        directory,
        clock,
        max_body_bytes: config.server.max_body_bytes,
        openapi_json: openapi.to_string(),
        server_certificate: resolver,
        crls: crl_publisher,
    });
    let listen = config.server.listen;
    let workers = config.server.workers;
    let crl_listen = config.crl.listen;
    tracing::info!(listen = %listen, public_url = %config.server.public_url, "certmint-server listening");
    actix_web::rt::System::new().block_on(async move {
        let api_state = state.clone();
        let mut server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .wrap_fn(api::observe)
                .configure(api::configure(api_state.clone()))
        })
        .on_connect(api::capture_client_certificate);
        if workers > 0 {
            server = server.workers(workers);
        }
        let api_server = server.bind_rustls_0_23(listen, tls_config)?.run();
        let Some(crl_listen) = crl_listen else {
            return api_server.await;
        };
        // Relying parties fetch a handful of small cached files: two
        // workers are plenty and leave the CPUs to issuance.
        let crl_server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .wrap_fn(api::observe)
                .configure(api::configure_distribution(state.clone()))
        })
        .workers(2)
        .bind(crl_listen)?
        .run();
        tracing::info!(listen = %crl_listen, url = %config.crl_base_url(), "CRL listener (plain HTTP) listening");
        tokio::try_join!(api_server, crl_server).map(|_| ())
    })?;
    Ok(())
}

/// How often each replica looks for shards that need a new CRL: the bound
/// on how long a revocation waits before it is signed into one.
const CRL_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The issuers whose CRLs this server signs: the issuing CA (leaf CRLs,
/// sharded), and the root when its key is on the token (one CRL of revoked
/// CA certificates). With an external root, that root's operator publishes
/// the CRL that covers the issuing CA.
fn crl_issuers(
    config: &Config,
    hsm: &Hsm,
    store: &Store,
    loaded: &ca::LoadedCa,
    sharding: &CrlSharding,
) -> Result<Vec<CrlIssuer>, CommandError> {
    let mut issuers = vec![CrlIssuer {
        key_id: loaded.issuing.key_id.clone(),
        name: loaded
            .issuing
            .certificate
            .tbs_certificate()
            .subject()
            .clone(),
        signer: loaded.issuing.signer.clone(),
        scope: CrlScope::UserCerts,
        shards: config.crl.shards,
        shard_width_seconds: Some(sharding.width_seconds),
        base_url: sharding.base_url.clone(),
    }];
    let root_label = store.ca_state()?.and_then(|state| state.root_key_label);
    if let Some(label) = root_label {
        let root = <x509_cert::Certificate as der::Decode>::from_der(&loaded.root_der)
            .map_err(|error| CommandError(format!("root certificate: {error}")))?;
        let key_id = hex::encode(
            crate::issuance::profile::issuer_key_identifier(&root)
                .map_err(crate::error::ServiceError::from)?
                .as_bytes(),
        );
        issuers.push(CrlIssuer {
            key_id,
            name: root.tbs_certificate().subject().clone(),
            signer: hsm.signer(&label)?,
            scope: CrlScope::CaCerts,
            shards: 1,
            shard_width_seconds: None,
            base_url: sharding.base_url.clone(),
        });
    }
    Ok(issuers)
}

/// Every replica sweeps, every quarter of `pending_timeout_seconds`
/// (jittered ±25 %, so replicas started together spread out), for `pending`
/// issuances older than the bound: their requests died with a server, and
/// their token uses are refunded. The store claims each row with a
/// conditional update, so replicas sweeping at once reconcile it once.
fn spawn_reconciler(store: Store, pending_timeout_seconds: i64) -> Result<(), CommandError> {
    let interval_seconds = (pending_timeout_seconds as f64 / 4.0).max(1.0);
    let spawned = std::thread::Builder::new()
        .name("pending-reconciler".into())
        .spawn(move || loop {
            let mut unit = [0u8; 8];
            let jitter = if crate::random::fill(&mut unit).is_ok() {
                0.75 + 0.5 * (u64::from_le_bytes(unit) as f64 / u64::MAX as f64)
            } else {
                1.0
            };
            std::thread::sleep(std::time::Duration::from_secs_f64(
                interval_seconds * jitter,
            ));
            let now = SystemClock.now();
            let stale_before = now - time::Duration::seconds(pending_timeout_seconds);
            loop {
                match store.reconcile_pending(stale_before, now) {
                    Ok(count) if i64::try_from(count).unwrap_or(i64::MAX) >= RECONCILE_BATCH => {}
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(error = %error, "could not reconcile pending issuances; retrying at the next sweep");
                        break;
                    }
                }
            }
        });
    spawned
        .map(drop)
        .map_err(|error| CommandError(format!("starting the pending-issuance sweep: {error}")))
}

fn spawn_renewal(
    issuer: Arc<Issuer>,
    resolver: Arc<ServerCertificate>,
    names: Vec<String>,
    public_host: Option<String>,
    ttl_seconds: u64,
    first_renewal: time::OffsetDateTime,
) {
    std::thread::spawn(move || {
        let mut renew_at = first_renewal;
        let mut failures: u32 = 0;
        loop {
            let wait = (renew_at - SystemClock.now()).max(time::Duration::ZERO);
            std::thread::sleep(wait.unsigned_abs());
            match tls::issue(&issuer, &names, public_host.as_deref(), ttl_seconds) {
                Ok(renewed) => {
                    tracing::info!(cert.serial = %renewed.serial, "server certificate renewed");
                    failures = 0;
                    renew_at = renewed.renew_after;
                    resolver.replace(renewed);
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let retry = renewal_retry_delay(failures);
                    let expires = resolver.not_after();
                    if SystemClock.now() + retry >= expires {
                        // Clients will refuse the server from then on, and
                        // /readyz says so (server.certificate_expired).
                        tracing::error!(error = %error, failures, expires = %expires,
                            retry_seconds = retry.whole_seconds(),
                            "server certificate renewal failed; the served certificate expires before the next attempt");
                    } else {
                        tracing::warn!(error = %error, failures, expires = %expires,
                            retry_seconds = retry.whole_seconds(),
                            "server certificate renewal failed; retrying");
                    }
                    renew_at = SystemClock.now() + retry;
                }
            }
        }
    });
}

/// Wait before renewal attempt `failures + 1`: 30 s, doubling, at most
/// 10 minutes (a dependency that is down for hours is not hammered).
fn renewal_retry_delay(failures: u32) -> time::Duration {
    let seconds = 30_i64.saturating_mul(1_i64 << failures.saturating_sub(1).min(5));
    time::Duration::seconds(seconds.min(600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_tokens_live_at_most_thirty_days() {
        let ttl = |text: &str| text.parse::<certmint::Duration>().expect("duration");
        assert_eq!(admin_token_ttl_seconds(ttl("12h")).ok(), Some(12 * 3600));
        assert_eq!(admin_token_ttl_seconds(ttl("30d")).ok(), Some(30 * 86_400));
        assert!(admin_token_ttl_seconds(ttl("31d")).is_err());
        assert!(admin_token_ttl_seconds(ttl("3650d")).is_err());
    }

    #[test]
    fn renewal_retries_back_off_to_ten_minutes() {
        let delays: Vec<i64> = (1..=8)
            .map(|failures| renewal_retry_delay(failures).whole_seconds())
            .collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 600, 600, 600]);
    }

    #[test]
    fn ok_simulator_found_beside_the_binary_then_in_deps_then_lib() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(bin.join("deps")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("lib/certmint")).expect("mkdir");
        assert_eq!(find_simulator(&bin), None);

        let installed = dir.path().join("lib/certmint").join(SIMULATOR_FILE);
        std::fs::write(&installed, b"").expect("write");
        assert_eq!(find_simulator(&bin), std::fs::canonicalize(&installed).ok());

        let in_deps = bin.join("deps").join(SIMULATOR_FILE);
        std::fs::write(&in_deps, b"").expect("write");
        assert_eq!(find_simulator(&bin), std::fs::canonicalize(&in_deps).ok());

        let beside = bin.join(SIMULATOR_FILE);
        std::fs::write(&beside, b"").expect("write");
        assert_eq!(find_simulator(&bin), std::fs::canonicalize(&beside).ok());
    }

    /// A config loaded from `dir`, on `module`, recording `sim_dir`.
    fn config_in(dir: &Path, module: &str, sim_dir: Option<&str>) -> Config {
        let path = dir.join("certmint.toml");
        let text = config::render_commented(&InitValues {
            listen: "127.0.0.1:8443".parse().expect("address"),
            public_url: "https://localhost:8443".into(),
            names: vec!["localhost".into()],
            database_url: "sqlite://certmint.db".into(),
            module: module.into(),
            sim_dir: sim_dir.map(PathBuf::from),
            token_label: "certmint".into(),
            pin_file: None,
            ca_name: "certmint".into(),
            key_type: KeyType::EcP256,
            crl_listen: None,
            crl_url: None,
        });
        std::fs::write(&path, text).expect("write config");
        Config::load(&path).expect("load config")
    }

    #[test]
    fn ok_recorded_simulator_dir_is_exported_unless_the_environment_names_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config_in(dir.path(), "/opt/certmint/libhsm_sim.so", Some("hsm-sim"));
        let fresh_shell = SimulatorEnvironment {
            home: Some("/home/newcomer".into()),
            ..SimulatorEnvironment::default()
        };
        assert_eq!(
            simulator_dir_for(&config, &fresh_shell),
            Some(dir.path().join("hsm-sim"))
        );
        let explicit_dir = SimulatorEnvironment {
            dir: Some("/elsewhere".into()),
            ..SimulatorEnvironment::default()
        };
        assert_eq!(simulator_dir_for(&config, &explicit_dir), None);
        let explicit_file = SimulatorEnvironment {
            config_file: Some("/etc/hsm-sim.toml".into()),
            ..SimulatorEnvironment::default()
        };
        assert_eq!(simulator_dir_for(&config, &explicit_file), None);

        let softhsm = config_in(
            dir.path(),
            "/usr/lib/softhsm/libsofthsm2.so",
            Some("hsm-sim"),
        );
        assert_eq!(simulator_dir_for(&softhsm, &fresh_shell), None);
        let unrecorded = config_in(dir.path(), "/opt/certmint/libhsm_sim.so", None);
        assert_eq!(simulator_dir_for(&unrecorded, &fresh_shell), None);
    }

    #[test]
    fn ok_init_records_the_directory_hsm_sim_will_use() {
        let environment = |dir: Option<&str>, file: Option<&str>| SimulatorEnvironment {
            dir: dir.map(PathBuf::from),
            config_file: file.map(PathBuf::from),
            home: Some("/home/newcomer".into()),
        };
        assert_eq!(
            environment(Some("/srv/tokens"), Some("/etc/hsm-sim.toml")).token_dir_for_init(),
            Some(PathBuf::from("/srv/tokens"))
        );
        let relative = environment(Some("tokens"), None)
            .token_dir_for_init()
            .expect("recorded");
        assert!(
            relative.is_absolute() && relative.ends_with("tokens"),
            "{relative:?}"
        );
        assert_eq!(
            environment(None, Some("/etc/hsm-sim.toml")).token_dir_for_init(),
            None
        );
        assert_eq!(
            environment(None, None).token_dir_for_init(),
            Some(PathBuf::from("/home/newcomer/.local/share/hsm-sim"))
        );
    }

    #[test]
    fn ok_token_not_found_names_the_module_the_directory_and_the_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("certmint.toml");
        let config = config_in(dir.path(), "/opt/certmint/libhsm_sim.so", None);
        let fresh_shell = SimulatorEnvironment {
            home: Some("/home/newcomer".into()),
            ..SimulatorEnvironment::default()
        };
        let hint = token_not_found_hint(&config, &config_path, &fresh_shell);
        for part in [
            "/opt/certmint/libhsm_sim.so",
            "/home/newcomer/.local/share/hsm-sim",
            "hsm-sim's default",
            "set sim_dir under [hsm]",
            &config_path.display().to_string(),
            "HSM_SIM_DIR",
        ] {
            assert!(hint.contains(part), "{part:?} missing from {hint}");
        }

        let recorded = config_in(dir.path(), "/opt/certmint/libhsm_sim.so", Some("/srv/t"));
        let exported = SimulatorEnvironment {
            dir: Some("/srv/t".into()),
            ..SimulatorEnvironment::default()
        };
        let hint = token_not_found_hint(&recorded, &config_path, &exported);
        assert!(hint.contains("/srv/t (sim_dir under [hsm] in"), "{hint}");
        let hint = token_not_found_hint(&config, &config_path, &exported);
        assert!(
            hint.contains("/srv/t (from $HSM_SIM_DIR") && hint.contains("point HSM_SIM_DIR at"),
            "{hint}"
        );

        let softhsm = config_in(dir.path(), "/usr/lib/softhsm/libsofthsm2.so", None);
        let hint = token_not_found_hint(&softhsm, &config_path, &fresh_shell);
        assert!(
            hint.contains("/usr/lib/softhsm/libsofthsm2.so") && hint.contains("SOFTHSM2_CONF"),
            "{hint}"
        );
    }

    #[test]
    fn ok_simulator_recognised_by_file_name() {
        assert!(is_simulator(Path::new("/opt/x/libhsm_sim.so")));
        assert!(!is_simulator(Path::new("/usr/lib/softhsm/libsofthsm2.so")));
    }
}
