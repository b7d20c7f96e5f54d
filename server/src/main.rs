//! `certmint-server`: init, serve, admin-token, ca import-chain.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use certmint::wire::KeyType;
use certmint_server::commands::{self, InitArgs, LogFormat};
use certmint_server::tokens::Role;
use clap::{Parser, Subcommand};

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
    Init {
        /// Config file to write or read.
        #[arg(long, default_value = "certmint.toml")]
        config: PathBuf,
        /// Listen address for the config.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// Public URL (default https://<first name>:<port>).
        #[arg(long)]
        public_url: Option<String>,
        /// Server TLS names (repeatable).
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
        names: Vec<String>,
        /// Database URL.
        #[arg(long, default_value = "sqlite://certmint.db")]
        database_url: String,
        /// PKCS#11 module path.
        #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
        pkcs11_module: PathBuf,
        /// Token label.
        #[arg(long, default_value = "certmint")]
        token_label: String,
        /// File holding the user PIN (else $CERTMINT_HSM_PIN).
        #[arg(long)]
        pin_file: Option<PathBuf>,
        /// CA name (subjects: "<name> Root CA", "<name> Issuing CA").
        #[arg(long, default_value = "certmint")]
        ca_name: String,
        /// CA key type.
        #[arg(long, default_value = "ec-p256", value_parser = parse_key_type)]
        key_type: KeyType,
        /// Initialise an empty token slot first (SO PIN from $CERTMINT_HSM_SO_PIN).
        #[arg(long)]
        init_token: bool,
        /// Create only the issuing key and write its CSR here, for an external root.
        #[arg(long)]
        external_root_csr: Option<PathBuf>,
    },
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

fn parse_key_type(text: &str) -> Result<KeyType, String> {
    KeyType::parse(text)
        .ok_or_else(|| "expected ec-p256, ec-p384, rsa-3072, rsa-4096 or ed25519".to_owned())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init {
            config,
            listen,
            public_url,
            names,
            database_url,
            pkcs11_module,
            token_label,
            pin_file,
            ca_name,
            key_type,
            init_token,
            external_root_csr,
        } => commands::init(&InitArgs {
            config,
            listen,
            public_url,
            names,
            database_url,
            pkcs11_module,
            token_label,
            pin_file,
            ca_name,
            key_type,
            init_token,
            external_root_csr,
        }),
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("certmint-server: {error}");
            ExitCode::FAILURE
        }
    }
}
