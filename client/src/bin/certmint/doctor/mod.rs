//! `certmint doctor`: explains a failed mutual TLS handshake layer by layer.
//!
//! - `--connect HOST:PORT` ([`connect`]) makes the handshake a workload
//!   makes, with our identity, and names the first broken layer: our own
//!   files ([`local`]), TCP, protocol versions and cipher suites (with a
//!   [`probe`] when they do not overlap), the server's chain, dates, name
//!   and usage, revocation against our CRLs, the server's request for a
//!   client certificate, and the alert it sent about ours.
//! - `--listen ADDR` ([`listen`]) is a test server that asks for a client
//!   certificate and explains each client's.
//!
//! The judgements live in [`analysis`] (pure, on parsed certificates) and
//! the output in [`report`]: one text line per check, or one JSON object
//! `{"ok", "layer", "cause", "detail", "checks"}`. Each failing layer has
//! its own exit code, listed in `--help` and `docs/DOCTOR.md`; codes start
//! at 20, clear of the table the other subcommands share.
//!
//! Invariants: doctor reads files and talks to one peer; it never writes a
//! file and never prints key material; everything a peer sends is escaped
//! before it reaches a terminal.

mod analysis;
mod connect;
mod listen;
mod local;
mod probe;
mod report;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use rustls::pki_types::ServerName;
use time::OffsetDateTime;

use crate::exit::Exit;
use report::{Report, Status};

/// The exit code paragraph of `--help` (a test keeps it equal to
/// [`report::exit_code_help`]).
const EXIT_HELP: &str = "Exit codes: 0 all good; 1 doctor itself failed; 2 bad arguments; \
otherwise the code of the first failing layer: 20 identity, 21 tcp, 22 protocol, 23 server_chain, \
24 server_dates, 25 server_name, 26 server_eku, 27 revocation, 28 client_auth, 29 refused, \
30 client_chain, 31 client_dates, 32 client_eku.";

/// `certmint doctor` options.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_HELP)]
pub struct Args {
    /// Connect to this server (HOST:PORT) as the workload would, and explain.
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present = "listen",
        conflicts_with = "listen"
    )]
    connect: Option<String>,
    /// Listen on ADDR (IP:PORT) as a test server and explain each client's certificate.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The agent's output directory: key.pem, cert.pem, ca.pem and crl.pem
    /// (from the generation `..data` points at).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["key", "cert", "ca"])]
    out: Option<PathBuf>,
    /// Our certificate chain (leaf, then intermediates, PEM), instead of --out.
    #[arg(long, value_name = "FILE", requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// Our private key (PEM), instead of --out.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "ca"])]
    key: Option<PathBuf>,
    /// The CAs we trust (PEM), instead of --out.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// CRLs (concatenated PEM X509 CRL blocks); default with --out: DIR/crl.pem if present.
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// The name to check the server's certificate against (default: the
    /// host of --connect).
    #[arg(long, value_name = "NAME", requires = "connect")]
    server_name: Option<String>,
    /// Print JSON: one object for --connect, one line per client for --listen.
    #[arg(long)]
    json: bool,
    /// With --listen: exit after the first client (its verdict is the exit code).
    #[arg(long, requires = "listen")]
    once: bool,
}

/// Runs the command; the exit code names the first failing layer.
pub fn run(args: Args) -> ExitCode {
    let paths = match (&args.out, &args.cert, &args.key, &args.ca) {
        (Some(dir), None, None, None) => local::Paths::in_dir(dir, args.crl.clone()),
        (None, Some(cert), Some(key), Some(ca)) => local::Paths {
            key: key.clone(),
            cert: cert.clone(),
            ca: ca.clone(),
            crl: args.crl.clone(),
            crl_required: args.crl.is_some(),
        },
        _ => {
            eprintln!("error: give --out DIR, or all of --cert FILE --key FILE --ca FILE");
            return Exit::Usage.code();
        }
    };
    let colour = crate::use_colour(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let (material, loaded) = local::load(&paths);
    match (&args.connect, &args.listen) {
        (Some(connect), None) => {
            let target = match target(connect, args.server_name.as_deref()) {
                Ok(target) => target,
                Err(message) => {
                    crate::report::message(&message);
                    return Exit::Usage.code();
                }
            };
            let checks =
                connect::diagnose(&target, &material, vec![loaded], OffsetDateTime::now_utc());
            let report = Report::from_checks(checks, &format!("mutual TLS with {connect} works"));
            print_report(&report, args.json, colour)
        }
        (None, Some(address)) => {
            if loaded.status == Status::Fail || material.key.is_none() || material.chain.is_empty()
            {
                let report = Report::from_checks(vec![loaded], "");
                return print_report(&report, args.json, colour);
            }
            // Our own identity as a server: problems are worth saying, but
            // a test server with a flawed certificate is still useful.
            for check in local::identity_checks(
                &material,
                OffsetDateTime::now_utc(),
                analysis::Purpose::Server,
            ) {
                if check.status == Status::Fail {
                    eprintln!(
                        "certmint doctor: warning: our own {}: {}",
                        check.cause.map_or("problem", report::Cause::name),
                        crate::table::printable(&check.detail)
                    );
                }
            }
            match listen::serve(address, &material, args.once, args.json, colour) {
                Ok(Some(report)) if args.once => report.exit_code(),
                Ok(_) => Exit::Ok.code(),
                Err(message) => {
                    crate::report::message(&message);
                    Exit::Failure.code()
                }
            }
        }
        _ => {
            eprintln!("error: give exactly one of --connect HOST:PORT or --listen ADDR");
            Exit::Usage.code()
        }
    }
}

fn print_report(report: &Report, json: bool, colour: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                crate::report::message(&format!("cannot encode the report: {error}"));
                return Exit::Failure.code();
            }
        }
    } else {
        print!("{}", report.render(colour));
    }
    report.exit_code()
}

/// The connection target: `host:port` (`[v6]:port` for IPv6) and the name
/// to verify, `--server-name` or else the host.
fn target(connect: &str, server_name: Option<&str>) -> Result<connect::Target, String> {
    let host = if let Some(rest) = connect.strip_prefix('[') {
        rest.split_once("]:").map(|(host, _)| host)
    } else {
        connect
            .rsplit_once(':')
            .map(|(host, _)| host)
            .filter(|host| !host.contains(':'))
    };
    let Some(host) = host.filter(|host| !host.is_empty()) else {
        return Err(format!(
            "--connect {connect:?}: give HOST:PORT (IPv6 as [ADDR]:PORT)"
        ));
    };
    let name = server_name.unwrap_or(host);
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|error| format!("{name:?} is not a DNS name or IP address: {error}"))?;
    Ok(connect::Target {
        connect: connect.to_owned(),
        server_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_help_lists_every_exit_code() {
        assert_eq!(EXIT_HELP, report::exit_code_help());
    }

    #[test]
    fn ok_targets_and_names() {
        let target = target("api.test:443", None).unwrap();
        assert_eq!(
            target.server_name,
            ServerName::try_from("api.test").unwrap()
        );
        let ip = target_name("[::1]:8443", None);
        assert_eq!(ip, ServerName::try_from("::1").unwrap());
        let named = target_name("127.0.0.1:8443", Some("api.test"));
        assert_eq!(named, ServerName::try_from("api.test").unwrap());
        assert!(super::target("api.test", None).is_err());
        assert!(super::target(":443", None).is_err());
        assert!(super::target("::1:443", None).is_err());
    }

    fn target_name(connect: &str, name: Option<&str>) -> ServerName<'static> {
        target(connect, name).unwrap().server_name
    }
}
