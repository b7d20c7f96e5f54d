//! RFC 9457 problem documents and the stable machine codes certmint uses.
//!
//! Invariant: codes are append-only. A code, once published, keeps its
//! meaning forever; a retired code stays listed here as reserved. Clients
//! match on [`ProblemCode`], never on the human `detail` text. The server maps
//! each code to an HTTP status in exactly one table (`server/src/api/error.rs`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! problem_codes {
    ($($(#[$doc:meta])* $variant:ident => $code:literal,)*) => {
        /// A stable, machine-readable reason for a refusal.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ProblemCode {
            $($(#[$doc])* $variant,)*
            /// A code this version of the SDK does not know (sent by a newer server).
            Unknown(String),
        }

        impl ProblemCode {
            /// Every code this version knows, in table order.
            pub const ALL: &'static [ProblemCode] = &[$(ProblemCode::$variant,)*];

            /// The dotted wire form, e.g. `token.used`.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ProblemCode::$variant => $code,)*
                    ProblemCode::Unknown(code) => code,
                }
            }

            /// Parses the wire form; unknown codes are kept, not refused.
            pub fn parse(code: &str) -> Self {
                match code {
                    $($code => ProblemCode::$variant,)*
                    other => ProblemCode::Unknown(other.to_owned()),
                }
            }
        }
    };
}

problem_codes! {
    /// The request body is not valid JSON or lacks a required field.
    RequestMalformed => "request.malformed",
    /// The request body is larger than the server accepts.
    RequestTooLarge => "request.too_large",
    /// No such route.
    RequestNotFound => "request.not_found",
    /// The route exists but not for this method.
    RequestMethodNotAllowed => "request.method_not_allowed",
    /// A path or query parameter is invalid (bad cursor, bad filter).
    RequestInvalidParameter => "request.invalid_parameter",

    /// The CSR is not a parseable PKCS#10 request, or asks for more than 100
    /// subject alternative names.
    CsrMalformed => "csr.malformed",
    /// The CSR's self-signature does not verify (no proof of possession).
    CsrBadSignature => "csr.bad_signature",
    /// The CSR's key algorithm is not supported at all.
    CsrUnsupportedKey => "csr.unsupported_key",
    /// The CSR's key is supported in kind but too weak (e.g. RSA-1024).
    CsrWeakKey => "csr.weak_key",
    /// The CSR's signature algorithm is not supported.
    CsrUnsupportedSignatureAlgorithm => "csr.unsupported_signature_algorithm",
    /// The CSR names nothing: no subjectAltName entries were requested.
    CsrNoNames => "csr.no_names",

    /// No policy by that name.
    PolicyNotFound => "policy.not_found",
    /// The policy exists but is disabled.
    PolicyDisabled => "policy.disabled",
    /// A policy with this name already exists (create) .
    PolicyAlreadyExists => "policy.already_exists",
    /// The submitted policy document is invalid (bad pattern, bad TTL, …).
    PolicyInvalid => "policy.invalid",
    /// A requested name is not covered by the policy.
    PolicyNameNotAllowed => "policy.name_not_allowed",
    /// A requested name is not a valid DNS name, IP address or URI.
    PolicyInvalidName => "policy.invalid_name",
    /// A wildcard certificate was requested but the policy does not allow it.
    PolicyWildcardNotAllowed => "policy.wildcard_not_allowed",
    /// The CSR's key type is not in the policy's `key_types`.
    PolicyKeyTypeNotAllowed => "policy.key_type_not_allowed",
    /// The requested lifetime exceeds the policy's maximum.
    PolicyTtlExceedsMax => "policy.ttl_exceeds_max",
    /// A token identity asks for names wider than the policy allows.
    PolicyIdentityOutsidePolicy => "policy.identity_outside_policy",

    /// The token is not a well-formed JWT.
    TokenMalformed => "token.malformed",
    /// The token's signature does not verify with the issuer's key.
    TokenBadSignature => "token.bad_signature",
    /// The token uses an algorithm not registered for its issuer (incl. `none`).
    TokenAlgorithmNotAllowed => "token.algorithm_not_allowed",
    /// The token has expired.
    TokenExpired => "token.expired",
    /// The token's `iat`/`nbf` lies in the future.
    TokenNotYetValid => "token.not_yet_valid",
    /// The token was minted for another audience.
    TokenWrongAudience => "token.wrong_audience",
    /// The token's issuer or id is unknown to this server.
    TokenUnknown => "token.unknown",
    /// The token was revoked by an administrator.
    TokenRevoked => "token.revoked",
    /// The token has no uses left.
    TokenUsed => "token.used",
    /// A requested name is outside the identity the token binds.
    TokenNameNotAllowed => "token.name_not_allowed",

    /// No bearer credential was presented.
    AuthMissing => "auth.missing",
    /// The bearer credential is invalid or expired.
    AuthInvalid => "auth.invalid",
    /// The credential is valid but its role may not do this.
    AuthForbidden => "auth.forbidden",

    /// No certificate with that serial.
    CertificateNotFound => "certificate.not_found",
    /// The certificate is already revoked.
    CertificateAlreadyRevoked => "certificate.already_revoked",
    /// The certificate was never issued (its signing is pending or failed).
    CertificateNotIssued => "certificate.not_issued",

    /// The certificate presented for renewal is revoked.
    CertificateRevoked => "certificate.revoked",
    /// The certificate presented for renewal has expired: enroll again.
    CertificateExpired => "certificate.expired",

    /// `/v1/renew` and `/v1/revoke` need a client certificate (mutual TLS).
    MtlsCertificateRequired => "mtls.certificate_required",
    /// The client certificate was not issued by this CA, or is not in its inventory.
    MtlsCertificateUnknown => "mtls.certificate_unknown",

    /// The policy does not allow renewal.
    RenewalNotAllowed => "renewal.not_allowed",
    /// The renewal chain is older than the policy's `max_chain_age`: enroll again.
    RenewalChainTooOld => "renewal.chain_too_old",
    /// The CSR's names differ from the names of the certificate being renewed.
    RenewalIdentityMismatch => "renewal.identity_mismatch",
    /// The CSR's key is the key of the certificate being renewed: every
    /// renewal needs a fresh key.
    RenewalKeyNotRotated => "renewal.key_not_rotated",
    /// A holder may not revoke with this reason (`ca_compromise`,
    /// `privilege_withdrawn`): those are an administrator's to assert.
    RevocationReasonNotAllowed => "revocation.reason_not_allowed",

    /// No bootstrap token with that id.
    TokenNotFound => "token.not_found",
    /// A provisioner's token names a policy the provisioner may not use.
    TokenPolicyNotAllowed => "token.policy_not_allowed",
    /// A provisioner's token lives longer than the provisioner allows.
    TokenLifetimeTooLong => "token.lifetime_too_long",
    /// The provisioner that signed the token is disabled.
    TokenIssuerDisabled => "token.issuer_disabled",

    /// No provisioner by that name.
    ProvisionerNotFound => "provisioner.not_found",
    /// A provisioner by that name exists (names are never reused).
    ProvisionerAlreadyExists => "provisioner.already_exists",
    /// The provisioner cannot be registered (name, key or lifetime).
    ProvisionerInvalid => "provisioner.invalid",

    /// The HSM could not sign right now; retry after the indicated delay.
    HsmUnavailable => "hsm.unavailable",
    /// The database could not be reached right now; retry later.
    StoreUnavailable => "store.unavailable",
    /// The server's own TLS certificate has expired (its in-process renewal
    /// keeps failing): not ready.
    ServerCertificateExpired => "server.certificate_expired",
    /// The token's last use is held by an issuance for the same key
    /// recorded moments ago, which may still be in flight (an earlier try
    /// of this request, here or on another replica): retry after the
    /// indicated delay. Once that
    /// issuance completes, the retry gets its certificate; once it is past
    /// `issuance.pending_timeout`, its use is refunded and the retry issues.
    IssuanceInFlight => "issuance.in_flight",
    /// No CRL is published for that issuer and shard.
    CrlNotFound => "crl.not_found",
    /// An unexpected server error; the detail names the request id only.
    Internal => "internal",
}

impl fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ProblemCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProblemCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(deserializer)?))
    }
}

/// An `application/problem+json` body (RFC 9457) with certmint's extensions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// URI naming the problem type: `urn:certmint:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short, human summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this request, and in which layer.
    pub detail: String,
    /// The stable machine code.
    pub code: ProblemCode,
    /// Server-assigned request id, to find the matching log line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// For policy/token refusals: every refused name with its own reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<crate::wire::NameRefusal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ProblemCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(&ProblemCode::parse(code.as_str()), code);
        }
    }

    #[test]
    fn ok_unknown_code_is_kept() {
        let code: ProblemCode = serde_json::from_str("\"acme.future\"").unwrap();
        assert_eq!(code, ProblemCode::Unknown("acme.future".into()));
        assert_eq!(serde_json::to_string(&code).unwrap(), "\"acme.future\"");
    }
}
