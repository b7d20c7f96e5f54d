//! The audit log's vocabulary, as pure code.
//!
//! Every state change certmint makes (a policy version, a token minted or
//! revoked, a certificate about to be signed, issued, failed or revoked, the
//! CA set up) is recorded as an [`AuditEvent`] in the same database
//! transaction as the change itself; `store` does the writing. This module
//! only defines the event kinds and the input shape [`NewAuditEvent`]. The
//! hash chain that links the events, and its encoding, are the SDK's
//! ([`certmint::audit`]), so that clients verify with the same code the
//! server writes with.
//!
//! Invariants: no I/O here; an event's `data` never holds a secret (no JWT,
//! PIN or private key), only identifiers and facts.

use serde_json::Value;

/// A new policy (version 1) was created.
pub const POLICY_CREATED: &str = "policy.created";
/// A policy was replaced by a new version.
pub const POLICY_REPLACED: &str = "policy.replaced";
/// A policy was disabled (a new version with `enabled: false`).
pub const POLICY_DISABLED: &str = "policy.disabled";
/// A bootstrap token was minted (never with the JWT itself).
pub const TOKEN_MINTED: &str = "token.minted";
/// A bootstrap token was revoked.
pub const TOKEN_REVOKED: &str = "token.revoked";
/// An external token issuer was registered.
pub const PROVISIONER_REGISTERED: &str = "provisioner.registered";
/// A provisioner was disabled; its tokens are refused from then on.
pub const PROVISIONER_DISABLED: &str = "provisioner.disabled";
/// A certificate was recorded and is about to be signed on the HSM.
pub const CERTIFICATE_SIGNING: &str = "certificate.signing";
/// A signed certificate was recorded as issued.
pub const CERTIFICATE_ISSUED: &str = "certificate.issued";
/// Signing failed; no certificate exists for the serial.
pub const CERTIFICATE_FAILED: &str = "certificate.failed";
/// A certificate was revoked.
pub const CERTIFICATE_REVOKED: &str = "certificate.revoked";
/// An issued certificate was delivered again to a retry of the enrollment
/// that made it (same token, same key) whose response was lost.
pub const CERTIFICATE_REDELIVERED: &str = "certificate.redelivered";
/// The CA's keys and certificates were recorded.
pub const CA_INITIALIZED: &str = "ca.initialized";
/// An externally signed issuing certificate completed a pending CA set-up.
pub const CA_IMPORTED: &str = "ca.imported";

/// An event to append: the store assigns `seq`, `at`, `prev_hash` and `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// One of the kind constants in this module, e.g. [`POLICY_CREATED`].
    pub kind: String,
    /// Who: `admin:<subject>`, `token:<id>`, `system`.
    pub actor: String,
    /// What the event is about: a policy name, token id or serial.
    pub subject: String,
    /// Details (identifiers and facts, never secrets).
    pub data: Value,
}

impl NewAuditEvent {
    /// Builds an event from borrowed parts.
    pub fn new(kind: &str, actor: &str, subject: &str, data: Value) -> Self {
        Self {
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            subject: subject.to_owned(),
            data,
        }
    }
}
