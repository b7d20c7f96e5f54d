//! `hsm-sim`: initialises simulated tokens, shows their state, and sets or
//! clears faults while applications keep the module loaded.
//!
//! The CLI works on the state directory directly (the same files and locks
//! the module uses) and never goes through the fault layer, so it keeps
//! working while the simulated device is "removed". Faults are changed by
//! rewriting the control file `<dir>/faults.toml` atomically; every loaded
//! module notices the new file on its next call.
//!
//! PINs come from environment variables or files, never from the command
//! line (argv is visible to every user through `/proc`). Nothing here
//! prints a PIN or key material.
//!
//! Exit codes: 0 success, 1 failure (the message says which step failed),
//! 2 usage error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use hsm_sim::config::{self, Config};
use hsm_sim::error::{name_of, parse_code};
use hsm_sim::faults::FaultConfig;
use hsm_sim::object::read_ulong;
use hsm_sim::store::{Store, StoredObject};
use hsm_sim::token::Module;
use hsm_sim::Ckr;

/// Environment variable holding the SO PIN for `init-token`.
const SO_PIN_ENV: &str = "HSM_SIM_SO_PIN";
/// Environment variable holding the user PIN for `init-token`.
const USER_PIN_ENV: &str = "HSM_SIM_USER_PIN";

#[derive(Debug, Parser)]
#[command(
    name = "hsm-sim",
    version,
    about = "Control the hsm-sim PKCS#11 HSM simulator"
)]
struct Cli {
    /// State directory (default: HSM_SIM_DIR, then `dir` in the config file, then ~/.local/share/hsm-sim).
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Configuration file (default: HSM_SIM_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a token in the free slot and set its user PIN.
    ///
    /// The SO PIN is read from HSM_SIM_SO_PIN or --so-pin-file, the user
    /// PIN from HSM_SIM_USER_PIN or --user-pin-file.
    InitToken(InitToken),
    /// Show tokens, their objects (no secrets) and the faults in force.
    Status,
    /// Set or clear injected faults.
    #[command(subcommand)]
    Fault(FaultCommand),
}

#[derive(Debug, Args)]
struct InitToken {
    /// Token label (at most 32 bytes); must not exist yet.
    #[arg(long)]
    label: String,
    /// File holding the SO PIN (one line).
    #[arg(long, value_name = "FILE")]
    so_pin_file: Option<PathBuf>,
    /// File holding the user PIN (one line).
    #[arg(long, value_name = "FILE")]
    user_pin_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum FaultCommand {
    /// Change fault knobs; knobs not given keep their current value.
    Set(FaultSet),
    /// Simulate pulling the HSM: sessions die, tokens disappear.
    RemoveDevice,
    /// Put the HSM back: tokens reappear, old sessions stay invalid.
    InsertDevice,
    /// Remove every fault (also overrides the config file's [faults]).
    Clear,
    /// Delete the control file, so the config file's [faults] apply again.
    Reset,
}

#[derive(Debug, Args)]
struct FaultSet {
    /// Fixed delay added to every call, e.g. 200ms ("0" to remove).
    #[arg(long, value_name = "DURATION")]
    latency: Option<String>,
    /// Extra random delay, uniform between 0 and this, e.g. 50ms.
    #[arg(long, value_name = "DURATION")]
    jitter: Option<String>,
    /// Probability (0 to 1) that a call fails with --failure-code.
    #[arg(long, value_name = "RATE")]
    failure_rate: Option<f64>,
    /// Return code of injected failures, e.g. CKR_DEVICE_ERROR or 0x30.
    #[arg(long, value_name = "CKR")]
    failure_code: Option<String>,
    /// Only this function fails (repeatable, e.g. C_Sign); replaces the list.
    #[arg(long = "fail-function", value_name = "C_NAME")]
    fail_functions: Vec<String>,
    /// Let every function fail again (clears --fail-function).
    #[arg(long, conflicts_with = "fail_functions")]
    all_functions: bool,
    /// Maximum number of open sessions (C_OpenSession beyond it returns CKR_SESSION_COUNT).
    #[arg(long, value_name = "N")]
    session_limit: Option<u64>,
    /// Remove the session limit.
    #[arg(long, conflicts_with = "session_limit")]
    no_session_limit: bool,
}

/// A failure of one CLI step, printed as `hsm-sim: <message>`.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Message(String),
    #[error("{step}: {code}{hint}")]
    Token {
        step: &'static str,
        code: Ckr,
        hint: &'static str,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn token_error(step: &'static str) -> impl Fn(Ckr) -> CliError {
    move |code| CliError::Token {
        step,
        code,
        hint: match code.0 {
            CKR_PIN_LEN_RANGE => " (PINs are 4 to 255 bytes)",
            CKR_PIN_INCORRECT => " (wrong PIN)",
            CKR_DEVICE_ERROR => " (cannot read or write the state directory)",
            _ => "",
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hsm-sim: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let dir = cli.dir.or_else(|| {
        std::env::var_os(config::DIR_ENV)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    });
    let config_file = cli.config.or_else(|| {
        std::env::var_os(config::CONFIG_ENV)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    });
    let config = Config::resolve(dir, config_file)?;
    match cli.command {
        Command::InitToken(arguments) => init_token(config, &arguments),
        Command::Status => status(&config),
        Command::Fault(command) => fault(&config, command),
    }
}

/// Reads a PIN from a file (first line) or else from an environment
/// variable.
fn read_pin(
    file: Option<&Path>,
    variable: &str,
    flag: &str,
) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let text = match file {
        Some(path) => Zeroizing::new(std::fs::read_to_string(path).map_err(|source| CliError::Io {
            action: "cannot read PIN file",
            path: path.to_path_buf(),
            source,
        })?),
        None => match std::env::var(variable) {
            Ok(value) => Zeroizing::new(value),
            Err(_) => {
                return Err(CliError::Message(format!(
                    "no PIN given: set {variable} or pass {flag} (PINs are never taken on the command line)"
                )))
            }
        },
    };
    let line = text.lines().next().unwrap_or_default();
    Ok(Zeroizing::new(line.as_bytes().to_vec()))
}

fn init_token(config: Config, arguments: &InitToken) -> Result<(), CliError> {
    if arguments.label.is_empty() || arguments.label.len() > 32 {
        return Err(CliError::Message(
            "the label must be 1 to 32 bytes".to_owned(),
        ));
    }
    let so_pin = read_pin(
        arguments.so_pin_file.as_deref(),
        SO_PIN_ENV,
        "--so-pin-file",
    )?;
    let user_pin = read_pin(
        arguments.user_pin_file.as_deref(),
        USER_PIN_ENV,
        "--user-pin-file",
    )?;
    let dir = config.dir.clone();
    let mut module = Module::new(config);
    let slots = module.slot_list(false);
    let Some(free) = slots.last().copied() else {
        return Err(CliError::Message("no free slot".to_owned()));
    };
    for slot in &slots {
        let info = module
            .token_info(*slot)
            .map_err(token_error("reading token information"))?;
        if info.flags & CKF_TOKEN_INITIALIZED != 0 && info.label == arguments.label {
            return Err(CliError::Message(format!(
                "a token labelled {:?} already exists in {} (serial {})",
                arguments.label,
                dir.display(),
                info.serial
            )));
        }
    }
    let serial = module
        .init_token(free, &so_pin, &arguments.label)
        .map_err(token_error("initialising the token"))?;
    let session = module
        .open_session(free, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .map_err(token_error("opening a session"))?;
    module
        .login(session, CKU_SO, &so_pin)
        .map_err(token_error("logging in as SO"))?;
    module
        .init_pin(session, &user_pin)
        .map_err(token_error("setting the user PIN"))?;
    module
        .close_session(session)
        .map_err(token_error("closing the session"))?;
    println!(
        "initialised token {:?} (serial {serial}) in {}",
        arguments.label,
        dir.display()
    );
    Ok(())
}

fn status(config: &Config) -> Result<(), CliError> {
    println!("state directory: {}", config.dir.display());
    if let Some(file) = &config.config_file {
        println!("config file:     {}", file.display());
    }
    let store = Store::new(config.dir.clone());
    let tokens = store.list();
    if tokens.is_empty() {
        println!("tokens: none (run `hsm-sim init-token --label <label>`)");
    }
    for (_, serial) in tokens {
        let record = store
            .read(&serial)
            .map_err(token_error("reading a token file"))?;
        println!(
            "token {:?} serial {} user PIN {}, {} object(s)",
            record.label,
            record.serial,
            if record.user_pin.is_some() {
                "set"
            } else {
                "not set"
            },
            record.objects.len()
        );
        for (uid, object) in &record.objects {
            println!("  {uid} {}", describe(object));
        }
    }
    let (source, faults) = effective_faults(config)?;
    if faults.is_empty() {
        println!("faults: none ({source})");
    } else {
        let text =
            toml::to_string(&faults).map_err(|error| CliError::Message(error.to_string()))?;
        println!("faults ({source}):");
        for line in text.lines() {
            println!("  {line}");
        }
    }
    Ok(())
}

/// One line about an object: class, key type, label, id and protection
/// flags. Only public attributes are shown.
fn describe(object: &StoredObject) -> String {
    let number = |attribute| object.get(attribute).and_then(read_ulong);
    let class = match number(CKA_CLASS) {
        Some(CKO_PRIVATE_KEY) => "private-key",
        Some(CKO_PUBLIC_KEY) => "public-key",
        Some(CKO_CERTIFICATE) => "certificate",
        Some(CKO_DATA) => "data",
        _ => "other",
    };
    let key_type = match number(CKA_KEY_TYPE) {
        Some(CKK_EC) => " ec",
        Some(CKK_EC_EDWARDS) => " ed25519",
        Some(CKK_RSA) => " rsa",
        Some(_) => " other-key",
        None => "",
    };
    let label = String::from_utf8_lossy(object.get(CKA_LABEL).unwrap_or_default());
    let id = hex::encode(object.get(CKA_ID).unwrap_or_default());
    let mut flags = Vec::new();
    for (attribute, name) in [
        (CKA_PRIVATE, "private"),
        (CKA_SENSITIVE, "sensitive"),
        (CKA_EXTRACTABLE, "extractable"),
        (CKA_SIGN, "sign"),
        (CKA_VERIFY, "verify"),
    ] {
        if object.flag(attribute) {
            flags.push(name);
        }
    }
    if object.secret.is_some() {
        flags.push("sealed-secret");
    }
    format!(
        "{class}{key_type} label={label:?} id={id} [{}]",
        flags.join(" ")
    )
}

/// The faults a module would apply now, and where they come from.
fn effective_faults(config: &Config) -> Result<(String, FaultConfig), CliError> {
    let control = config.control_file();
    if control.exists() {
        let faults = read_control(&control)?;
        return Ok((format!("control file {}", control.display()), faults));
    }
    if let Some(file) = &config.config_file {
        let faults = config::read_config_file(file)?.faults;
        return Ok((format!("[faults] of {}", file.display()), faults));
    }
    Ok(("no control file".to_owned(), FaultConfig::default()))
}

fn read_control(path: &Path) -> Result<FaultConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|error| {
        CliError::Message(format!(
            "invalid control file {}: {}",
            path.display(),
            error.message()
        ))
    })
}

fn fault(config: &Config, command: FaultCommand) -> Result<(), CliError> {
    let control = config.control_file();
    if let FaultCommand::Reset = command {
        match std::fs::remove_file(&control) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CliError::Io {
                    action: "cannot remove",
                    path: control,
                    source,
                })
            }
        }
        println!("faults: control file removed; the config file's [faults] apply");
        return Ok(());
    }
    // Start from what is in force, so `fault set` adds to earlier settings.
    let mut faults = effective_faults(config)?.1;
    match command {
        FaultCommand::Set(set) => {
            if let Some(latency) = set.latency {
                faults.latency = Some(latency);
            }
            if let Some(jitter) = set.jitter {
                faults.jitter = Some(jitter);
            }
            if let Some(rate) = set.failure_rate {
                faults.fail_rate = Some(rate);
            }
            if let Some(code) = set.failure_code {
                // Store the canonical name, so `status` reads the same
                // whatever spelling was given; unknown text is kept for
                // `validate` to report.
                let canonical = parse_code(&code).map(|number| {
                    name_of(number).map_or_else(|| format!("{number:#x}"), str::to_owned)
                });
                faults.fail_code = Some(canonical.unwrap_or(code));
            }
            if !set.fail_functions.is_empty() {
                faults.fail_functions = set.fail_functions;
            }
            if set.all_functions {
                faults.fail_functions.clear();
            }
            if let Some(limit) = set.session_limit {
                faults.session_limit = Some(limit);
            }
            if set.no_session_limit {
                faults.session_limit = None;
            }
        }
        FaultCommand::RemoveDevice => faults.device_removed = true,
        FaultCommand::InsertDevice => faults.device_removed = false,
        FaultCommand::Clear => faults = FaultConfig::default(),
        FaultCommand::Reset => {}
    }
    faults.validate().map_err(CliError::Message)?;
    write_control(&control, &faults)?;
    let text = toml::to_string(&faults).map_err(|error| CliError::Message(error.to_string()))?;
    if text.trim().is_empty() {
        println!("faults: none");
    } else {
        println!("faults now in force:");
        for line in text.lines() {
            println!("  {line}");
        }
    }
    Ok(())
}

/// Writes the control file atomically (temporary file, then rename), so a
/// module never reads half a file and always sees a new inode.
fn write_control(path: &Path, faults: &FaultConfig) -> Result<(), CliError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| CliError::Io {
            action,
            path,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let text = toml::to_string(faults).map_err(|error| CliError::Message(error.to_string()))?;
    let temporary = dir.join(format!(".faults.toml.tmp.{}", std::process::id()));
    std::fs::write(&temporary, text).map_err(io("cannot write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io("cannot replace", path))
}
