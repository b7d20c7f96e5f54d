//! The one place where errors become HTTP: every [`ServiceError`] maps to a
//! stable [`ProblemCode`], and every code maps to one status and title in
//! [`status_and_title`]. Internal errors become `internal` with the request
//! id; their text goes to the log, never to the client.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use certmint::wire::NameRefusal;
use certmint::{Problem, ProblemCode};

use crate::admin::AdminError;
use crate::ca::CaError;
use crate::error::ServiceError;
use crate::hsm::{FaultKind, HsmError};
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

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 2;

/// The status and title of each code. Append-only, like the codes.
pub fn status_and_title(code: &ProblemCode) -> (StatusCode, &'static str) {
    use ProblemCode as C;
    match code {
        C::RequestMalformed => (StatusCode::BAD_REQUEST, "Malformed request"),
        C::RequestTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
        C::RequestNotFound => (StatusCode::NOT_FOUND, "No such endpoint"),
        C::RequestMethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
        C::RequestInvalidParameter => (StatusCode::BAD_REQUEST, "Invalid parameter"),
        C::CsrMalformed => (StatusCode::BAD_REQUEST, "Malformed CSR"),
        C::CsrBadSignature => (StatusCode::BAD_REQUEST, "CSR signature invalid"),
        C::CsrUnsupportedKey => (StatusCode::BAD_REQUEST, "Unsupported key"),
        C::CsrWeakKey => (StatusCode::BAD_REQUEST, "Key too weak"),
        C::CsrUnsupportedSignatureAlgorithm => {
            (StatusCode::BAD_REQUEST, "Unsupported signature algorithm")
        }
        C::CsrNoNames => (StatusCode::BAD_REQUEST, "CSR requests no names"),
        C::PolicyNotFound => (StatusCode::NOT_FOUND, "Policy not found"),
        C::PolicyDisabled => (StatusCode::FORBIDDEN, "Policy disabled"),
        C::PolicyAlreadyExists => (StatusCode::CONFLICT, "Policy already exists"),
        C::PolicyInvalid => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid policy"),
        C::PolicyNameNotAllowed => (StatusCode::FORBIDDEN, "Name not allowed by policy"),
        C::PolicyInvalidName => (StatusCode::BAD_REQUEST, "Invalid name"),
        C::PolicyWildcardNotAllowed => (StatusCode::FORBIDDEN, "Wildcard not allowed"),
        C::PolicyKeyTypeNotAllowed => (StatusCode::FORBIDDEN, "Key type not allowed"),
        C::PolicyTtlExceedsMax => (StatusCode::FORBIDDEN, "Lifetime exceeds policy maximum"),
        C::PolicyIdentityOutsidePolicy => {
            (StatusCode::UNPROCESSABLE_ENTITY, "Identity outside policy")
        }
        C::TokenMalformed => (StatusCode::UNAUTHORIZED, "Malformed token"),
        C::TokenBadSignature => (StatusCode::UNAUTHORIZED, "Token signature invalid"),
        C::TokenAlgorithmNotAllowed => (StatusCode::UNAUTHORIZED, "Token algorithm not allowed"),
        C::TokenExpired => (StatusCode::UNAUTHORIZED, "Token expired"),
        C::TokenNotYetValid => (StatusCode::UNAUTHORIZED, "Token not yet valid"),
        C::TokenWrongAudience => (StatusCode::UNAUTHORIZED, "Token audience mismatch"),
        C::TokenUnknown => (StatusCode::UNAUTHORIZED, "Unknown token"),
        C::TokenRevoked => (StatusCode::UNAUTHORIZED, "Token revoked"),
        C::TokenUsed => (StatusCode::UNAUTHORIZED, "Token used up"),
        C::TokenNameNotAllowed => (StatusCode::FORBIDDEN, "Name outside token identity"),
        C::AuthMissing => (StatusCode::UNAUTHORIZED, "Authentication required"),
        C::AuthInvalid => (StatusCode::UNAUTHORIZED, "Invalid credentials"),
        C::AuthForbidden => (StatusCode::FORBIDDEN, "Forbidden"),
        C::CertificateNotFound => (StatusCode::NOT_FOUND, "Certificate not found"),
        C::CertificateAlreadyRevoked => (StatusCode::CONFLICT, "Certificate already revoked"),
        C::CertificateNotIssued => (StatusCode::CONFLICT, "Certificate not issued"),
        C::TokenNotFound => (StatusCode::NOT_FOUND, "Token not found"),
        C::CertificateRevoked => (StatusCode::FORBIDDEN, "Certificate revoked"),
        C::CertificateExpired => (StatusCode::FORBIDDEN, "Certificate expired"),
        C::MtlsCertificateRequired => (StatusCode::UNAUTHORIZED, "Client certificate required"),
        C::MtlsCertificateUnknown => (StatusCode::UNAUTHORIZED, "Client certificate unknown"),
        C::RenewalNotAllowed => (StatusCode::FORBIDDEN, "Renewal not allowed"),
        C::RenewalChainTooOld => (StatusCode::FORBIDDEN, "Renewal chain too old"),
        C::RenewalIdentityMismatch => (StatusCode::FORBIDDEN, "Names differ from the certificate"),
        C::RenewalKeyNotRotated => (StatusCode::FORBIDDEN, "Renewal needs a fresh key"),
        C::RevocationReasonNotAllowed => (StatusCode::FORBIDDEN, "Revocation reason not allowed"),
        C::TokenPolicyNotAllowed => (StatusCode::FORBIDDEN, "Policy not allowed for provisioner"),
        C::TokenLifetimeTooLong => (StatusCode::UNAUTHORIZED, "Token lifetime too long"),
        C::TokenIssuerDisabled => (StatusCode::UNAUTHORIZED, "Provisioner disabled"),
        C::ProvisionerNotFound => (StatusCode::NOT_FOUND, "Provisioner not found"),
        C::ProvisionerAlreadyExists => (StatusCode::CONFLICT, "Provisioner already exists"),
        C::ProvisionerInvalid => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid provisioner"),
        C::HsmUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "HSM unavailable"),
        C::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "Database unavailable"),
        C::IssuanceInFlight => (StatusCode::SERVICE_UNAVAILABLE, "Issuance in flight"),
        C::CrlNotFound => (StatusCode::NOT_FOUND, "CRL not found"),
        C::ServerCertificateExpired => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Server certificate expired",
        ),
        // A code added to the SDK without a row here lands in this arm; the
        // test below fails for it, so the table cannot silently fall behind.
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error"),
    }
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    code: ProblemCode,
    detail: String,
    refusals: Vec<NameRefusal>,
    request_id: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl ApiError {
    /// An error with an explicit code.
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            refusals: Vec::new(),
            request_id: None,
        }
    }

    /// Attaches the request id.
    pub fn with_request_id(mut self, request_id: &str) -> Self {
        self.request_id = Some(request_id.to_owned());
        self
    }

    /// The code (for metrics and logs).
    pub fn code(&self) -> &ProblemCode {
        &self.code
    }

    /// Maps a service error; internal details are logged here, once.
    pub fn from_service(error: ServiceError, request_id: &str) -> Self {
        let (code, detail) = classify(&error);
        let mut api = ApiError::new(code, detail).with_request_id(request_id);
        if let ServiceError::Denied { refusals, .. } = error {
            api.refusals = refusals;
        } else if matches!(api.code, ProblemCode::Internal) {
            tracing::error!(request.id = %request_id, error = %error, "internal error");
            api.detail = format!("internal error; quote request id {request_id} to the operator");
        } else if matches!(
            api.code,
            ProblemCode::HsmUnavailable | ProblemCode::StoreUnavailable
        ) {
            // The cause names PKCS#11 functions, token labels or database
            // errors: operators read it in the log; callers, who may be
            // unauthenticated (/readyz, /v1/enroll), get a fixed detail.
            tracing::warn!(request.id = %request_id, error = %error, "backend unavailable");
            let backend = if matches!(api.code, ProblemCode::HsmUnavailable) {
                "the HSM"
            } else {
                "the database"
            };
            api.detail = format!(
                "{backend} is unavailable; retry later (the server log has the cause under request id {request_id})"
            );
        }
        api
    }
}

/// The code of every service error. Each nested enum is matched in full,
/// without a wildcard: a variant added anywhere below `api` fails to
/// compile until it is given its code here.
fn classify(error: &ServiceError) -> (ProblemCode, String) {
    let code = match error {
        ServiceError::Csr(error) => csr_code(error),
        ServiceError::Token(error) => token_code(error),
        ServiceError::Policy(error) => policy_code(error),
        ServiceError::PolicyName(NoSuchPolicyName { .. }) => ProblemCode::PolicyNotFound,
        ServiceError::Holder(error) => holder_code(error),
        ServiceError::Denied { refusals } => refusals
            .first()
            .map_or(ProblemCode::PolicyNameNotAllowed, |refusal| {
                refusal.code.clone()
            }),
        ServiceError::Admin(error) => admin_code(error),
        ServiceError::Store(error) => store_code(error),
        ServiceError::Hsm(error) => hsm_code(error),
        ServiceError::HsmNotReady(_) => ProblemCode::HsmUnavailable,
        ServiceError::Mint(error) => match error {
            MintError::Hsm(error) => hsm_code(error),
            MintError::Encoding(_) => ProblemCode::Internal,
        },
        ServiceError::Issuance(error) => match error {
            IssuanceError::BackdateOutOfRange
            | IssuanceError::IssuingCertificateExpired
            | IssuanceError::SerialsExhausted { .. }
            | IssuanceError::PostSigningCheck(_) => ProblemCode::Internal,
        },
        ServiceError::Profile(error) => match error {
            ProfileError::Encoding(_) | ProfileError::Name { .. } => ProblemCode::Internal,
        },
        ServiceError::Entropy(EntropyError) => ProblemCode::Internal,
        // Operator errors of `init`, `ca import-chain` and start-up; a
        // request that meets one (a CA gone from the database) is a 500.
        ServiceError::Ca(error) => match error {
            CaError::KeyTypeNotForCa { .. }
            | CaError::NoEd25519ForTokens
            | CaError::KeyTypeUnsupported { .. }
            | CaError::ReservedForOtherKeyType { .. }
            | CaError::NoPendingCa
            | CaError::ChainUnparsable { .. }
            | CaError::ChainTooLong { .. }
            | CaError::ChainTooShort
            | CaError::ForeignIssuingKey
            | CaError::DuplicateInChain { .. }
            | CaError::SelfSignedIntermediate { .. }
            | CaError::NotUsableAsCa { .. }
            | CaError::IssuerNameMismatch { .. }
            | CaError::NotSignedBy { .. }
            | CaError::NotInitialized
            | CaError::AwaitingChain
            | CaError::IssuingKeyMismatch
            | CaError::KeyCanLeaveToken { .. }
            | CaError::LifetimeOutOfRange { .. } => ProblemCode::Internal,
        },
        ServiceError::Crl(error) => match error {
            CrlError::Hsm(error) => hsm_code(error),
            CrlError::Encoding { .. } | CrlError::Template(_) | CrlError::Verification(_) => {
                ProblemCode::Internal
            }
        },
        ServiceError::Revocation(error) => match error {
            RevocationError::InvalidityDateWithoutKeyCompromise
            | RevocationError::InvalidityDateInFuture { .. } => {
                ProblemCode::RequestInvalidParameter
            }
        },
        ServiceError::Tls(error) => match error {
            TlsError::TrustAnchor(_)
            | TlsError::ClientVerifier(_)
            | TlsError::Configuration(_)
            | TlsError::RefusedByClients(_)
            | TlsError::ServerCertificate(_) => ProblemCode::Internal,
        },
    };
    (code, error.to_string())
}

fn csr_code(error: &CsrError) -> ProblemCode {
    use ProblemCode as C;
    match error {
        CsrError::Malformed(_) => C::CsrMalformed,
        CsrError::BadSignature => C::CsrBadSignature,
        CsrError::UnsupportedKey(_) => C::CsrUnsupportedKey,
        CsrError::WeakKey { .. } => C::CsrWeakKey,
        CsrError::UnsupportedSignatureAlgorithm(_) => C::CsrUnsupportedSignatureAlgorithm,
        CsrError::NoNames => C::CsrNoNames,
    }
}

fn token_code(error: &TokenError) -> ProblemCode {
    use ProblemCode as C;
    match error {
        TokenError::Malformed(_) => C::TokenMalformed,
        TokenError::AlgorithmNotAllowed { .. } => C::TokenAlgorithmNotAllowed,
        TokenError::UnknownKey | TokenError::WrongIssuer => C::TokenUnknown,
        TokenError::BadSignature => C::TokenBadSignature,
        TokenError::WrongAudience { .. } | TokenError::WrongKind { .. } => C::TokenWrongAudience,
        TokenError::Expired { .. } => C::TokenExpired,
        TokenError::NotYetValid { .. } => C::TokenNotYetValid,
        TokenError::PolicyNotAllowed { .. } => C::TokenPolicyNotAllowed,
        TokenError::LifetimeTooLong { .. } => C::TokenLifetimeTooLong,
        TokenError::IssuerDisabled { .. } => C::TokenIssuerDisabled,
    }
}

fn policy_code(error: &PolicyError) -> ProblemCode {
    match error {
        PolicyError::Invalid(_) => ProblemCode::PolicyInvalid,
    }
}

fn holder_code(error: &HolderError) -> ProblemCode {
    use ProblemCode as C;
    match error {
        HolderError::CertificateRequired => C::MtlsCertificateRequired,
        HolderError::Unknown => C::MtlsCertificateUnknown,
        HolderError::Revoked { .. } => C::CertificateRevoked,
        HolderError::Expired { .. } => C::CertificateExpired,
        HolderError::RenewalNotAllowed { .. } => C::RenewalNotAllowed,
        HolderError::ChainTooOld { .. } => C::RenewalChainTooOld,
        HolderError::IdentityMismatch { .. } => C::RenewalIdentityMismatch,
        HolderError::KeyNotRotated { .. } => C::RenewalKeyNotRotated,
        HolderError::ReasonNotAllowed { .. } => C::RevocationReasonNotAllowed,
    }
}

fn admin_code(error: &AdminError) -> ProblemCode {
    use ProblemCode as C;
    match error {
        AdminError::PolicyNameInvalid { .. } | AdminError::PolicyRenamed { .. } => C::PolicyInvalid,
        AdminError::PolicyDisabled { .. } => C::PolicyDisabled,
        AdminError::IdentityEmpty
        | AdminError::TokenTtlTooLong { .. }
        | AdminError::TokenTtlOutOfRange
        | AdminError::MaxUsesOutOfRange => C::RequestMalformed,
        AdminError::ProvisionerInvalid { .. } => C::ProvisionerInvalid,
        AdminError::SerialMalformed { .. } => C::CertificateNotFound,
        AdminError::TokenIdMalformed { .. } => C::TokenNotFound,
        AdminError::ProvisionerNameMalformed { .. } => C::ProvisionerNotFound,
        AdminError::PolicyFilterInvalid { .. } | AdminError::ExpiryFilterOutOfRange => {
            C::RequestInvalidParameter
        }
    }
}

fn store_code(error: &StoreError) -> ProblemCode {
    use ProblemCode as C;
    match error {
        StoreError::PolicyAlreadyExists { .. } => C::PolicyAlreadyExists,
        StoreError::PolicyNotFound { .. } => C::PolicyNotFound,
        StoreError::TokenUnknown { .. } => C::TokenUnknown,
        StoreError::TokenNotFound { .. } => C::TokenNotFound,
        StoreError::TokenRevoked { .. } => C::TokenRevoked,
        StoreError::TokenExpired { .. } => C::TokenExpired,
        StoreError::TokenUsedUp { .. } | StoreError::TokenJtiReused { .. } => C::TokenUsed,
        StoreError::ProvisionerAlreadyExists { .. } => C::ProvisionerAlreadyExists,
        StoreError::ProvisionerNotFound { .. } => C::ProvisionerNotFound,
        StoreError::ProvisionerDisabled { .. } => C::TokenIssuerDisabled,
        StoreError::CertificateNotFound { .. } => C::CertificateNotFound,
        StoreError::CertificateAlreadyRevoked { .. } => C::CertificateAlreadyRevoked,
        StoreError::PredecessorRevoked { .. } => C::CertificateRevoked,
        StoreError::BadCursor => C::RequestInvalidParameter,
        StoreError::CertificateNotIssued { .. } => C::CertificateNotIssued,
        StoreError::Conflict { .. }
        | StoreError::PolicyChanged { .. }
        | StoreError::Unavailable { .. }
        | StoreError::IssuanceWithdrawn { .. } => C::StoreUnavailable,
        StoreError::TokenUseInFlight { .. } => C::IssuanceInFlight,
        // A failed rollback is as retryable as the error that caused it:
        // a connection lost mid-transaction is still an outage, not a bug.
        StoreError::Rollback { original, .. } => store_code(original),
        StoreError::UnsupportedUrl { .. }
        | StoreError::SqliteDirectoryMissing { .. }
        | StoreError::Migration { .. }
        | StoreError::TokenAlreadyExists { .. }
        | StoreError::SerialCollision { .. }
        | StoreError::CertificateNotPending { .. }
        | StoreError::CaAlreadyInitialized
        | StoreError::CaNotInitialized
        | StoreError::Corrupt { .. }
        | StoreError::Query { .. } => C::Internal,
    }
}

/// 503 for what goes away by itself or with an operator's fix (the device
/// is busy, gone, or refused the PIN); 500 for configuration and bugs.
fn hsm_code(error: &HsmError) -> ProblemCode {
    use ProblemCode as C;
    match error {
        HsmError::Login { .. }
        | HsmError::LoginSuspended { .. }
        | HsmError::Finalized
        | HsmError::TokenAbsent { .. }
        | HsmError::Reconnecting { .. }
        | HsmError::SessionPoolTimeout { .. } => C::HsmUnavailable,
        HsmError::Device { kind, .. } => match kind {
            FaultKind::Transient | FaultKind::DeviceGone => C::HsmUnavailable,
            FaultKind::Unsupported | FaultKind::Bug => C::Internal,
        },
        HsmError::ModuleLoad { .. }
        | HsmError::TokenNotFound { .. }
        | HsmError::TokenAmbiguous { .. }
        | HsmError::KeyNotFound { .. }
        | HsmError::PublicKeyNotFound { .. }
        | HsmError::AlreadyExists { .. }
        | HsmError::Ambiguous { .. }
        | HsmError::UnsupportedKeyType { .. }
        | HsmError::UnusableKey { .. }
        | HsmError::MalformedSignature { .. }
        | HsmError::NoUninitializedToken
        | HsmError::Encoding { .. } => C::Internal,
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        status_and_title(&self.code).0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, title) = status_and_title(&self.code);
        let body = Problem {
            problem_type: format!("urn:certmint:problem:{}", self.code),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.clone(),
            request_id: self.request_id.clone(),
            refusals: self.refusals.clone(),
        };
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS)));
        }
        if status == StatusCode::UNAUTHORIZED && self.code.as_str().starts_with("auth.") {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(body)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every holder error, one after the other: each variant's arm names the
    /// variant after it. The match has no wildcard, so a new variant does not
    /// compile until it has an arm here, and so joins the walk below.
    fn after(error: &HolderError) -> Option<HolderError> {
        let serial = || "01".to_owned();
        Some(match error {
            HolderError::CertificateRequired => HolderError::Unknown,
            HolderError::Unknown => HolderError::Revoked {
                serial: serial(),
                reason: "key_compromise".into(),
            },
            HolderError::Revoked { .. } => HolderError::Expired {
                serial: serial(),
                not_after: "2026-01-01T00:00:00Z".into(),
            },
            HolderError::Expired { .. } => HolderError::RenewalNotAllowed {
                policy: "p".into(),
                version: 1,
            },
            HolderError::RenewalNotAllowed { .. } => HolderError::ChainTooOld {
                policy: "p".into(),
                started: "2026-01-01T00:00:00Z".into(),
                max_age_seconds: 1,
            },
            HolderError::ChainTooOld { .. } => HolderError::IdentityMismatch {
                requested: "a".into(),
                current: "b".into(),
            },
            HolderError::IdentityMismatch { .. } => HolderError::KeyNotRotated { serial: serial() },
            HolderError::KeyNotRotated { .. } => HolderError::ReasonNotAllowed {
                reason: "ca_compromise".into(),
            },
            HolderError::ReasonNotAllowed { .. } => return None,
        })
    }

    #[test]
    fn ok_every_holder_error_has_its_own_code() {
        let mut errors = vec![HolderError::CertificateRequired];
        while let Some(next) = errors.last().and_then(after) {
            let seen = errors
                .iter()
                .any(|error| std::mem::discriminant(error) == std::mem::discriminant(&next));
            assert!(!seen, "the walk loops at {next:?}");
            errors.push(next);
        }
        let codes: BTreeSet<String> = errors
            .iter()
            .map(|error| holder_code(error).to_string())
            .collect();
        assert_eq!(codes.len(), errors.len(), "{codes:?}");
    }

    #[test]
    fn ok_every_code_has_a_status_and_only_internal_is_500() {
        for code in ProblemCode::ALL {
            let (status, title) = status_and_title(code);
            assert!(!title.is_empty());
            assert_eq!(
                status == StatusCode::INTERNAL_SERVER_ERROR,
                matches!(code, ProblemCode::Internal),
                "{code}"
            );
        }
    }
}

#[cfg(test)]
mod documentation_tests {
    use super::*;

    /// docs/ERRORS.md is the operator's copy of the table; it must not drift.
    #[test]
    fn ok_every_code_is_documented_with_its_status() {
        let doc = include_str!("../../../docs/ERRORS.md");
        for code in ProblemCode::ALL {
            let (status, _) = status_and_title(code);
            let row = format!("| `{}` | {} |", code, status.as_u16());
            assert!(doc.contains(&row), "docs/ERRORS.md lacks the row {row}");
        }
    }
}
