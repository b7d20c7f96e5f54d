//! `certmint`: the workload agent and the admin CLI.
//!
//! Subcommands, one module each:
//! - `enroll` ([`enroll`]): one-shot first enrollment with a bootstrap token;
//! - `agent` ([`agent`]): enroll if needed, then renew over mutual TLS forever;
//! - `status` ([`status`]): are the files on disk usable for mutual TLS?
//! - `admin` ([`admin`]): policies, tokens, provisioners, certificates and
//!   audit, one submodule per group;
//! - `doctor` ([`doctor`]): explain a failed mutual TLS handshake, layer
//!   by layer, with an exit code per layer.
//!
//! The workload's building blocks (key generation, the output directory,
//! hooks, renewal schedule, stop handling, the enroll/renew steps) live
//! under [`agent`]; `enroll` is the agent's first step run once, so it
//! uses them from there. [`table`] formats the admin CLI's output.
//!
//! Every subcommand returns an [`exit::Exit`]: one table of exit codes.

mod admin;
mod agent;
mod doctor;
mod enroll;
mod exit;
mod report;
mod status;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use exit::Exit;

#[derive(Debug, Parser)]
#[command(
    name = "certmint",
    version,
    about = "certmint workload agent and admin CLI"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll once with a bootstrap token and write key, certificate and CA files.
    Enroll(enroll::Args),
    /// Keep a certificate in place: enroll if needed, renew over mTLS before expiry.
    Agent(agent::Args),
    /// Say whether the files on disk are usable for mutual TLS, layer by layer.
    Status(status::Args),
    /// Administer policies, bootstrap tokens, certificates and the audit log.
    Admin(admin::Args),
    /// Explain why a mutual TLS handshake fails, layer by layer (or, with --listen, a client's certificate).
    Doctor(doctor::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // reqwest looks for a process-wide rustls provider; install ring's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("certmint: cannot start the async runtime: {error}");
            return Exit::Failure.code();
        }
    };
    let exit = runtime.block_on(async move {
        match cli.command {
            Command::Enroll(args) => enroll::run(args).await.code(),
            Command::Agent(args) => agent::run(args).await.code(),
            Command::Status(args) => status::run(args).await.code(),
            Command::Admin(args) => admin::run(args).await.code(),
            // Blocking I/O on this one thread, where nothing else runs; its
            // own exit code table, one code per layer.
            Command::Doctor(args) => doctor::run(args),
        }
    });
    exit
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CERTMINT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Colour only for a person at a terminal: never in a file, a pipe or the
/// journal, and never when `NO_COLOR` is set to anything but empty
/// (<https://no-color.org>).
fn use_colour(stderr_is_terminal: bool, no_colour: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_colour.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn ok_colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(
            !use_colour(false, None),
            "files and pipes get no escape codes"
        );
        assert!(!use_colour(true, Some(OsStr::new("1"))));
    }
}
