//! The error every service function returns: one enum over the domain
//! errors of each layer. It carries no HTTP status; `api::error` maps it to
//! a problem code and status in one table.

use certmint::wire::NameRefusal;
use certmint::ProblemCode;

use crate::hsm::HsmError;
use crate::issuance::csr::CsrError;
use crate::issuance::holder::HolderError;
use crate::issuance::profile::ProfileError;
use crate::policy::PolicyError;
use crate::random::EntropyError;
use crate::store::StoreError;
use crate::tokens::{MintError, TokenError};

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The bootstrap or admin token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A policy document was refused.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A certificate holder's mTLS request was refused (renew, self-revoke).
    #[error(transparent)]
    Holder(#[from] HolderError),
    /// The policy (or token identity) refused the request, name by name.
    #[error("{}", summarize(refusals))]
    Denied {
        /// Code of the first refusal, used as the problem's code.
        code: ProblemCode,
        /// Every refusal.
        refusals: Vec<NameRefusal>,
    },
    /// An input was invalid in a way with its own code (e.g. a bad filter).
    #[error("{detail}")]
    Invalid {
        /// The problem code.
        code: ProblemCode,
        /// What was wrong.
        detail: String,
    },
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HSM failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// Certificate building failed (a bug).
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// No randomness.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The CA, its chain or the server's own configuration cannot be used
    /// (no CA yet, an expired issuing certificate, a chain that does not
    /// verify, a lifetime out of range). Operator-facing; a 500 on the API.
    #[error("{0}")]
    Setup(String),
    /// A signed certificate failed its post-signing checks (a bug or a
    /// misbehaving token); nothing was returned to the client.
    #[error("post-signing check failed: {0}")]
    PostSigningCheck(String),
}

impl ServiceError {
    /// A denial from a list of refusals (which must not be empty).
    pub fn denied(refusals: Vec<NameRefusal>) -> Self {
        let code = refusals
            .first()
            .map(|refusal| refusal.code.clone())
            .unwrap_or(ProblemCode::PolicyNameNotAllowed);
        ServiceError::Denied { code, refusals }
    }

    /// Shorthand for [`ServiceError::Invalid`].
    pub fn invalid(code: ProblemCode, detail: impl Into<String>) -> Self {
        ServiceError::Invalid {
            code,
            detail: detail.into(),
        }
    }
}

fn summarize(refusals: &[NameRefusal]) -> String {
    let parts: Vec<String> = refusals
        .iter()
        .map(|refusal| format!("{} {:?}: {}", refusal.kind, refusal.name, refusal.reason))
        .collect();
    format!("policy check refused the request: {}", parts.join("; "))
}

impl From<MintError> for ServiceError {
    fn from(error: MintError) -> Self {
        match error {
            // The HSM's own fault kinds decide 503 or 500.
            MintError::Hsm(error) => ServiceError::Hsm(error),
            MintError::Encoding(detail) => ServiceError::Setup(detail),
        }
    }
}

/// An error's message followed by its causes, for an operator reading a
/// command's output (`database unavailable: connect: database is locked`).
/// A cause already spelled out in the message before it is not repeated.
/// Never for API responses: causes are driver text, meant for logs.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let message = current.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {what}")]
    struct Outer {
        what: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read: {source}")]
    struct SpelledOut {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn with_causes_appends_each_cause_once() {
        let error = Outer {
            what: "connect",
            source: std::io::Error::other("database is locked"),
        };
        assert_eq!(with_causes(&error), "outer: connect: database is locked");
        // A message that already names its cause does not get it twice.
        let spelled_out = SpelledOut {
            source: std::io::Error::other("permission denied"),
        };
        assert_eq!(with_causes(&spelled_out), "cannot read: permission denied");
    }
}
