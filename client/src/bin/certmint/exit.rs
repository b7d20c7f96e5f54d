//! The exit codes of `certmint`, one table for every subcommand, so scripts
//! and systemd units can tell "try again later" from "a person must act".
//! Documented in `docs/AGENT.md`; codes are never renumbered. `certmint
//! doctor` exits with one code per failing layer from 20 up (its own table,
//! in `doctor/` and `docs/DOCTOR.md`), clear of this one.

use std::process::ExitCode;

use certmint::client::Error;
use certmint::ProblemCode;

/// Why `certmint` stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done; for `agent --once` and `status`: a valid certificate is in place.
    Ok = 0,
    /// A failure not covered below (I/O, an unexpected server answer).
    Failure = 1,
    /// Bad command line or configuration file.
    Usage = 2,
    /// The server stayed unreachable (or kept answering 5xx) past the retry budget.
    Unreachable = 3,
    /// The bootstrap token was refused: used up, expired, revoked, unknown, wrong audience.
    TokenRefused = 4,
    /// The certificate was revoked; an administrator must act (no automatic re-enrollment).
    CertificateRevoked = 5,
    /// The policy refuses: disabled, renewal not allowed, chain too old, names or key not allowed.
    PolicyRefused = 6,
    /// Trust failure: the root fingerprint does not match, or the server certificate is untrusted.
    TrustFailure = 7,
    /// The certificate expired and there is no usable token to enroll again.
    CertificateExpired = 8,
    /// `status`: the files on disk are not usable for mutual TLS.
    NotUsable = 9,
    /// `enroll`, `agent --once`: stopped by SIGTERM/SIGINT before a
    /// certificate was installed, while no request was in flight or by abandoning one (a
    /// second signal, or the grace period ran out; the server may have
    /// used the token). Not 0: a boot script must not go on as if the
    /// files were in place.
    Stopped = 10,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }

    /// Which exit a failed call leads to, when the failure is final.
    pub fn for_error(error: &Error) -> Exit {
        match error {
            Error::Problem(problem) => Exit::for_problem(&problem.code, problem.status),
            Error::Transport(_) => Exit::Unreachable,
            Error::RootFingerprintMismatch { .. } | Error::Trust(_) => Exit::TrustFailure,
            Error::Identity(_) | Error::Url(_) => Exit::Usage,
            Error::UnexpectedResponse { .. } => Exit::Failure,
        }
    }

    /// The exit for a problem code.
    pub fn for_problem(code: &ProblemCode, status: u16) -> Exit {
        let text = code.as_str();
        match code {
            ProblemCode::CertificateRevoked => Exit::CertificateRevoked,
            ProblemCode::CertificateExpired => Exit::CertificateExpired,
            _ if text.starts_with("token.") => Exit::TokenRefused,
            _ if text.starts_with("policy.") || text.starts_with("renewal.") => Exit::PolicyRefused,
            _ if status >= 500 => Exit::Unreachable,
            _ => Exit::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_problem_codes_map_to_documented_exits() {
        assert_eq!(
            Exit::for_problem(&ProblemCode::TokenUsed, 409),
            Exit::TokenRefused
        );
        assert_eq!(
            Exit::for_problem(&ProblemCode::CertificateRevoked, 403),
            Exit::CertificateRevoked
        );
        assert_eq!(
            Exit::for_problem(&ProblemCode::PolicyDisabled, 403),
            Exit::PolicyRefused
        );
        assert_eq!(
            Exit::for_problem(&ProblemCode::RenewalChainTooOld, 403),
            Exit::PolicyRefused
        );
        assert_eq!(
            Exit::for_problem(&ProblemCode::HsmUnavailable, 503),
            Exit::Unreachable
        );
        assert_eq!(
            Exit::for_error(&Error::RootFingerprintMismatch {
                expected: "x".into(),
                got: "y".into(),
            }),
            Exit::TrustFailure
        );
    }
}
