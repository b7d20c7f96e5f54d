//! What `certmint doctor` says: the layers, their causes, the checks made
//! and the verdict, as text for people and as JSON for scripts.
//!
//! Invariants: the verdict is the first failing check in the order the
//! checks were made (local identity, then the network from the bottom up),
//! so the exit code always names the lowest broken layer; every string that
//! came from a certificate or a peer is escaped before it is printed
//! ([`crate::table::printable`]), so a hostile name cannot drive the
//! terminal; layer codes and cause names are append-only, like the exit
//! codes of the rest of `certmint`.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use crate::table::printable;

/// A layer of a mutual TLS connection, in the order doctor checks them.
/// Each has its own exit code (documented in `docs/DOCTOR.md` and `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Our own key, certificate chain and CA files, checked before connecting.
    Identity,
    /// Name resolution and the TCP connection.
    Tcp,
    /// A TLS protocol version and cipher suite both sides speak.
    Protocol,
    /// The server's certificate chain up to a root in our CA file.
    ServerChain,
    /// The server certificate's validity period against our clock.
    ServerDates,
    /// The name we asked for against the server certificate's names.
    ServerName,
    /// The server certificate's extended key usage (serverAuth).
    ServerEku,
    /// Either side's certificate against the CRLs.
    Revocation,
    /// Whether a client certificate was asked for, and from which CAs.
    ClientAuth,
    /// The alert the server sent when it refused our certificate.
    Refused,
    /// `--listen`: the client's chain up to a root in our CA file.
    ClientChain,
    /// `--listen`: the client certificate's validity period.
    ClientDates,
    /// `--listen`: the client certificate's extended key usage (clientAuth).
    ClientEku,
}

impl Layer {
    /// Every layer, in check order (for the `--help` test).
    #[cfg(test)]
    pub const ALL: [Layer; 13] = [
        Layer::Identity,
        Layer::Tcp,
        Layer::Protocol,
        Layer::ServerChain,
        Layer::ServerDates,
        Layer::ServerName,
        Layer::ServerEku,
        Layer::Revocation,
        Layer::ClientAuth,
        Layer::Refused,
        Layer::ClientChain,
        Layer::ClientDates,
        Layer::ClientEku,
    ];

    /// The layer's name in text and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Identity => "identity",
            Layer::Tcp => "tcp",
            Layer::Protocol => "protocol",
            Layer::ServerChain => "server_chain",
            Layer::ServerDates => "server_dates",
            Layer::ServerName => "server_name",
            Layer::ServerEku => "server_eku",
            Layer::Revocation => "revocation",
            Layer::ClientAuth => "client_auth",
            Layer::Refused => "refused",
            Layer::ClientChain => "client_chain",
            Layer::ClientDates => "client_dates",
            Layer::ClientEku => "client_eku",
        }
    }

    /// The exit code when this layer is the verdict. Doctor's codes start
    /// at 20 so they never collide with the 0–10 table the other
    /// subcommands share.
    pub fn exit_code(self) -> u8 {
        match self {
            Layer::Identity => 20,
            Layer::Tcp => 21,
            Layer::Protocol => 22,
            Layer::ServerChain => 23,
            Layer::ServerDates => 24,
            Layer::ServerName => 25,
            Layer::ServerEku => 26,
            Layer::Revocation => 27,
            Layer::ClientAuth => 28,
            Layer::Refused => 29,
            Layer::ClientChain => 30,
            Layer::ClientDates => 31,
            Layer::ClientEku => 32,
        }
    }
}

/// Why a layer failed or warned: a stable machine name (tests and scripts
/// match these, never the prose).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A key, certificate, CA or CRL file is missing or does not parse.
    FilesUnreadable,
    /// Our private key does not match our certificate.
    KeyMismatch,
    /// Our certificate does not chain to our own CA file.
    ChainIncomplete,
    /// A certificate is past its notAfter.
    Expired,
    /// A certificate's notBefore is in the future.
    NotYetValid,
    /// The certificate cannot be used as a TLS client (no clientAuth).
    NoClientAuth,
    /// The certificate cannot be used as a TLS server (no serverAuth).
    NoServerAuth,
    /// The host name does not resolve.
    Dns,
    /// Nothing listens on the port.
    ConnectionRefused,
    /// No answer in time (a firewall dropping packets, a wrong address).
    Timeout,
    /// Any other connection failure (no route, network down).
    Unreachable,
    /// The server speaks no TLS version we speak.
    NoCommonVersion,
    /// The server speaks our version but only cipher suites we lack.
    NoCommonCipherSuite,
    /// What answered is not a TLS server.
    NotTls,
    /// The handshake failed for a protocol reason doctor could not narrow.
    HandshakeFailed,
    /// The peer sent no certificate.
    NoCertificate,
    /// The chain lacks the certificate between the leaf and the roots.
    MissingIntermediate,
    /// The chain leads to a CA our CA file does not contain.
    UnknownCa,
    /// A CA of the right name but another key (signatures do not verify).
    WrongCaKey,
    /// Any other chain defect (a CA as leaf, bad encoding, constraints).
    InvalidChain,
    /// The name asked for is not among the certificate's names.
    NameMismatch,
    /// The server's certificate is listed in a CRL.
    ServerCertificateRevoked,
    /// Our (or, with `--listen`, the client's) certificate is listed in a CRL.
    ClientCertificateRevoked,
    /// A CRL is stale, or none covers the issuer: revocation is unknown.
    CrlUnusable,
    /// The server did not ask for a client certificate (no mutual TLS).
    NotRequested,
    /// The server asked for certificates from CAs our chain is not part of.
    CaNotAccepted,
    /// Alert unknown_ca: the server does not trust our CA.
    UnknownCaAlert,
    /// Alert bad_certificate.
    BadCertificate,
    /// Alert certificate_revoked.
    CertificateRevoked,
    /// Alert certificate_expired.
    CertificateExpired,
    /// Alert unsupported_certificate.
    UnsupportedCertificate,
    /// Alert access_denied.
    AccessDenied,
    /// Alert certificate_required: the server wanted a certificate we did not send.
    CertificateRequired,
    /// Alert certificate_unknown.
    CertificateUnknown,
    /// Alert decrypt_error: a signature (often our CertificateVerify) did not verify.
    DecryptError,
    /// Any other alert after our certificate was sent.
    OtherAlert,
    /// The connection closed after our certificate was sent, without an alert.
    ClosedWithoutAlert,
}

impl Cause {
    /// The cause's machine name.
    pub fn name(self) -> &'static str {
        match self {
            Cause::FilesUnreadable => "files_unreadable",
            Cause::KeyMismatch => "key_mismatch",
            Cause::ChainIncomplete => "chain_incomplete",
            Cause::Expired => "expired",
            Cause::NotYetValid => "not_yet_valid",
            Cause::NoClientAuth => "no_client_auth",
            Cause::NoServerAuth => "no_server_auth",
            Cause::Dns => "dns",
            Cause::ConnectionRefused => "connection_refused",
            Cause::Timeout => "timeout",
            Cause::Unreachable => "unreachable",
            Cause::NoCommonVersion => "no_common_version",
            Cause::NoCommonCipherSuite => "no_common_cipher_suite",
            Cause::NotTls => "not_tls",
            Cause::HandshakeFailed => "handshake_failed",
            Cause::NoCertificate => "no_certificate",
            Cause::MissingIntermediate => "missing_intermediate",
            Cause::UnknownCa => "unknown_ca",
            Cause::WrongCaKey => "wrong_ca_key",
            Cause::InvalidChain => "invalid_chain",
            Cause::NameMismatch => "name_mismatch",
            Cause::ServerCertificateRevoked => "server_certificate_revoked",
            Cause::ClientCertificateRevoked => "client_certificate_revoked",
            Cause::CrlUnusable => "crl_unusable",
            Cause::NotRequested => "not_requested",
            Cause::CaNotAccepted => "ca_not_accepted",
            Cause::UnknownCaAlert => "unknown_ca_alert",
            Cause::BadCertificate => "bad_certificate",
            Cause::CertificateRevoked => "certificate_revoked",
            Cause::CertificateExpired => "certificate_expired",
            Cause::UnsupportedCertificate => "unsupported_certificate",
            Cause::AccessDenied => "access_denied",
            Cause::CertificateRequired => "certificate_required",
            Cause::CertificateUnknown => "certificate_unknown",
            Cause::DecryptError => "decrypt_error",
            Cause::OtherAlert => "other_alert",
            Cause::ClosedWithoutAlert => "closed_without_alert",
        }
    }
}

/// Outcome of one check: the same four as `certmint status` prints.
pub use crate::status::inspect::Status;

/// ANSI colour of a status on a terminal.
fn ansi_colour(status: Status) -> &'static str {
    match status {
        Status::Ok => "\x1b[32m",
        Status::Warn => "\x1b[33m",
        Status::Fail => "\x1b[1;31m",
        Status::Skip => "\x1b[2m",
    }
}

/// One check: a layer, its outcome, why, and the evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The layer checked.
    pub layer: Layer,
    /// Outcome.
    pub status: Status,
    /// Why it failed or warned; `None` when fine or skipped.
    #[serde(serialize_with = "cause_name")]
    pub cause: Option<Cause>,
    /// The evidence, for a person.
    pub detail: String,
}

impl Check {
    /// A passed check.
    pub fn ok(layer: Layer, detail: impl Into<String>) -> Check {
        Check {
            layer,
            status: Status::Ok,
            cause: None,
            detail: detail.into(),
        }
    }

    /// A warning with its cause.
    pub fn warn(layer: Layer, cause: Cause, detail: impl Into<String>) -> Check {
        Check {
            layer,
            status: Status::Warn,
            cause: Some(cause),
            detail: detail.into(),
        }
    }

    /// A failure with its cause.
    pub fn fail(layer: Layer, cause: Cause, detail: impl Into<String>) -> Check {
        Check {
            layer,
            status: Status::Fail,
            cause: Some(cause),
            detail: detail.into(),
        }
    }

    /// A layer not checked, and why.
    pub fn skip(layer: Layer, detail: impl Into<String>) -> Check {
        Check {
            layer,
            status: Status::Skip,
            cause: None,
            detail: detail.into(),
        }
    }
}

fn cause_name<S: serde::Serializer>(
    cause: &Option<Cause>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match cause {
        Some(cause) => serializer.serialize_str(cause.name()),
        None => serializer.serialize_none(),
    }
}

fn layer_name<S: serde::Serializer>(
    layer: &Option<Layer>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match layer {
        Some(layer) => serializer.serialize_str(layer.name()),
        None => serializer.serialize_none(),
    }
}

/// The whole diagnosis: `{"ok", "layer", "cause", "detail", "checks"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// True when no check failed.
    pub ok: bool,
    /// The verdict's layer: the first failing check's; `null` when ok.
    #[serde(serialize_with = "layer_name")]
    pub layer: Option<Layer>,
    /// The verdict's cause; `null` when ok.
    #[serde(serialize_with = "cause_name")]
    pub cause: Option<Cause>,
    /// The verdict, for a person.
    pub detail: String,
    /// Every check, in the order made.
    pub checks: Vec<Check>,
}

impl Report {
    /// The report of `checks`; `success` is the detail when none failed.
    pub fn from_checks(checks: Vec<Check>, success: &str) -> Report {
        let verdict = checks.iter().find(|check| check.status == Status::Fail);
        Report {
            ok: verdict.is_none(),
            layer: verdict.map(|check| check.layer),
            cause: verdict.and_then(|check| check.cause),
            detail: verdict.map_or_else(|| success.to_owned(), |check| check.detail.clone()),
            checks,
        }
    }

    /// The exit code: 0, or the verdict layer's code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.layer.map_or(0, Layer::exit_code))
    }

    /// The text report: one aligned line per check, then the verdict.
    pub fn render(&self, colour: bool) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let label = check.status.label();
            let label = if colour {
                format!("{}{label:<4}\x1b[0m", ansi_colour(check.status))
            } else {
                format!("{label:<4}")
            };
            let cause = check
                .cause
                .map(|cause| format!("{}: ", cause.name()))
                .unwrap_or_default();
            let line = format!(
                "{label}  {:<12}  {cause}{}",
                check.layer.name(),
                printable(&check.detail)
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        match (self.layer, self.cause) {
            (Some(layer), cause) => {
                let _ = writeln!(
                    out,
                    "verdict: {} ({}): {}",
                    layer.name(),
                    cause.map_or("unknown", Cause::name),
                    printable(&self.detail)
                );
            }
            (None, _) => {
                let _ = writeln!(out, "verdict: ok: {}", printable(&self.detail));
            }
        }
        out
    }
}

/// The `--help` paragraph listing the exit codes, built from the table
/// (the help text is a constant; a test keeps the two equal).
#[cfg(test)]
pub fn exit_code_help() -> String {
    let mut text = String::from(
        "Exit codes: 0 all good; 1 doctor itself failed; 2 bad arguments; otherwise the code of \
         the first failing layer:",
    );
    for layer in Layer::ALL {
        let _ = write!(text, " {} {},", layer.exit_code(), layer.name());
    }
    text.pop();
    text.push('.');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_verdict_is_the_first_failure_and_names_its_exit_code() {
        let report = Report::from_checks(
            vec![
                Check::ok(Layer::Identity, "fine"),
                Check::warn(Layer::Tcp, Cause::Timeout, "slow"),
                Check::fail(Layer::ServerName, Cause::NameMismatch, "asked a, has b"),
                Check::fail(Layer::Refused, Cause::BadCertificate, "later"),
            ],
            "works",
        );
        assert!(!report.ok);
        assert_eq!(report.layer, Some(Layer::ServerName));
        assert_eq!(report.cause, Some(Cause::NameMismatch));
        assert_eq!(report.detail, "asked a, has b");
        assert_eq!(report.exit_code(), ExitCode::from(25));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["layer"], "server_name");
        assert_eq!(json["cause"], "name_mismatch");
        assert_eq!(json["checks"][1]["status"], "warn");
        assert_eq!(json["checks"][0]["cause"], serde_json::Value::Null);
    }

    #[test]
    fn ok_no_failure_is_exit_zero_and_null_layer() {
        let report = Report::from_checks(vec![Check::ok(Layer::Tcp, "up")], "works");
        assert!(report.ok);
        assert_eq!(report.exit_code(), ExitCode::from(0));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["layer"], serde_json::Value::Null);
        assert_eq!(json["detail"], "works");
    }

    #[test]
    fn ok_render_escapes_peer_text_and_colours_only_when_asked() {
        let report = Report::from_checks(
            vec![Check::fail(
                Layer::ServerName,
                Cause::NameMismatch,
                "dns: evil\x1b[2J",
            )],
            "works",
        );
        let plain = report.render(false);
        assert!(!plain.contains('\x1b'), "{plain}");
        assert!(plain.starts_with("FAIL  server_name   name_mismatch: dns: evil\\u{1b}[2J\n"));
        assert!(plain.ends_with("verdict: server_name (name_mismatch): dns: evil\\u{1b}[2J\n"));
        assert!(report.render(true).contains("\x1b[1;31mFAIL\x1b[0m"));
    }

    #[test]
    fn ok_exit_codes_are_distinct_and_clear_of_the_shared_table() {
        let mut codes: Vec<u8> = Layer::ALL.iter().map(|layer| layer.exit_code()).collect();
        assert!(codes.iter().all(|code| *code >= 20));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Layer::ALL.len());
        assert!(exit_code_help().contains("29 refused"));
    }
}
