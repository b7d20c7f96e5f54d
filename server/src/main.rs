//! `certmint-server`: init, serve, admin-token, ca import-chain.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use certmint_server::commands::{self, InitArgs, LogFormat};
use certmint_server::tokens::Role;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: enrollment allocates on many threads
/// (HTTP workers, the blocking pool, the database writer), and glibc's
/// per-arena locks and consolidation cost ~13 % of server CPU at load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "certmint-server", version, about = "certmint CA server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a config (if absent), create the database and the CA on the token.
    /// Safe to run twice: an existing CA is never touched.
    Init(Box<InitArgs>),
    /// Serve the HTTPS API.
    Serve {
        /// Config file.
        #[arg(long, default_value = "certmint.toml")]
        config: PathBuf,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Mint an admin API token (printed on stdout).
    AdminToken {
        /// Config file.
        #[arg(long, default_value = "certmint.toml")]
        config: PathBuf,
        /// Role.
        #[arg(long, value_enum, default_value = "admin")]
        role: Role,
        /// Who will hold it (recorded in audit events).
        #[arg(long, default_value = "operator")]
        subject: String,
        /// Lifetime.
        #[arg(long, default_value = "12h")]
        ttl: certmint::Duration,
    },
    /// CA maintenance.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Install the externally signed chain (issuing certificate first, root last).
    ImportChain {
        /// Config file.
        #[arg(long, default_value = "certmint.toml")]
        config: PathBuf,
        /// PEM chain file.
        #[arg(long)]
        chain: PathBuf,
    },
}

impl Command {
    /// The config file the command reads, if it reads one.
    fn config_path(&self) -> &Path {
        match self {
            Command::Init(args) => &args.config,
            Command::Serve { config, .. } | Command::AdminToken { config, .. } => config,
            Command::Ca {
                command: CaCommand::ImportChain { config, .. },
            } => config,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // hsm-sim takes its token directory from the environment only, when the
    // command loads it; a config's `hsm.sim_dir` reaches it this way.
    // `set_var` is sound only while no other thread reads or writes the
    // environment (libc's getenv is not synchronised with it, which is why
    // edition 2024 marks it unsafe). Nothing has started a thread yet: the
    // HTTP runtime, the session pool and the renewal thread start inside the
    // command below, argument parsing and mimalloc start none, and the
    // module is loaded later on this thread.
    if let Some(dir) = commands::simulator_dir_to_export(cli.command.config_path()) {
        std::env::set_var("HSM_SIM_DIR", dir);
    }
    let result = match cli.command {
        Command::Init(args) => commands::init(&args),
        Command::Serve { config, log_format } => commands::serve(&config, log_format),
        Command::AdminToken {
            config,
            role,
            subject,
            ttl,
        } => commands::admin_token(&config, role, &subject, ttl),
        Command::Ca {
            command: CaCommand::ImportChain { config, chain },
        } => commands::import_chain(&config, &chain),
    };
    // Every command is done with the token by now.
    certmint_server::hsm::finalize_all_modules();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("certmint-server: {error}");
            ExitCode::FAILURE
        }
    }
}
