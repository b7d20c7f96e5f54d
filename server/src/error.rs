//! The error every service function returns: one enum over the typed
//! errors of each layer and service. It carries no HTTP status and no
//! problem code; `api::error` maps every variant (and every variant of each
//! nested enum, without a wildcard) to a code and status in one place, so
//! a new variant that nobody mapped fails to compile.

use certmint::wire::NameRefusal;
use certmint::ProblemCode;

use crate::admin::AdminError;
use crate::ca::CaError;
use crate::hsm::HsmError;
use crate::issuance::csr::CsrError;
use crate::issuance::holder::HolderError;
use crate::issuance::profile::ProfileError;
use crate::issuance::IssuanceError;
use crate::policy::{NoSuchPolicyName, PolicyError};
use crate::random::EntropyError;
use crate::revocation::crl::CrlError;
use crate::revocation::RevocationError;
use crate::store::StoreError;
use crate::tls::TlsError;
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
    /// A policy name that no policy can have.
    #[error(transparent)]
    PolicyName(#[from] NoSuchPolicyName),
    /// A certificate holder's mTLS request was refused (renew, self-revoke).
    #[error(transparent)]
    Holder(#[from] HolderError),
    /// The policy (or the token's identity) refused the request, name by
    /// name. The problem code is the first refusal's.
    #[error("{}", summarize(refusals))]
    Denied {
        /// Every refusal, never empty.
        refusals: Vec<NameRefusal>,
    },
    /// An admin request was refused before it reached the store.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HSM failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// `/readyz` could not use the HSM: whatever the cause, the server is
    /// not ready (503), unlike a request that hit a configuration error.
    #[error("HSM not ready: {0}")]
    HsmNotReady(#[source] HsmError),
    /// Minting a token failed.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The issuance pipeline could not go on (configuration, exhausted
    /// serials, a failed post-signing check).
    #[error(transparent)]
    Issuance(#[from] IssuanceError),
    /// Certificate building failed (a bug).
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// No randomness.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The CA cannot be created, imported or loaded.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The server's own TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A CRL could not be built or signed.
    #[error(transparent)]
    Crl(#[from] CrlError),
    /// A revocation request was refused before it reached the store.
    #[error(transparent)]
    Revocation(#[from] RevocationError),
}

impl ServiceError {
    /// A denial from a list of refusals (which must not be empty).
    pub fn denied(refusals: Vec<NameRefusal>) -> Self {
        ServiceError::Denied { refusals }
    }
}

/// "who refused: what, for each name". Token refusals say the token
/// refused, not the policy, so an operator looks at the right object.
fn summarize(refusals: &[NameRefusal]) -> String {
    let by_token = refusals
        .iter()
        .any(|refusal| refusal.code == ProblemCode::TokenNameNotAllowed);
    let by_policy = refusals
        .iter()
        .any(|refusal| refusal.code != ProblemCode::TokenNameNotAllowed);
    let who = match (by_policy, by_token) {
        (true, true) => "the policy and the bootstrap token's identity refused",
        (false, true) => "the bootstrap token's identity refused",
        _ => "the policy refused",
    };
    let parts: Vec<String> = refusals
        .iter()
        .map(|refusal| format!("{} {:?}: {}", refusal.kind, refusal.name, refusal.reason))
        .collect();
    format!("{who} the request: {}", parts.join("; "))
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
