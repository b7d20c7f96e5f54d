//! Admin services: policies, bootstrap tokens, provisioners (external
//! token issuers), certificate inventory and revocation, audit. Called by the admin API handlers; no HTTP here.
//!
//! Invariants: every write goes through the store together with its audit
//! event; a policy is compiled (fully validated) before it is stored; a
//! token's identity must lie within its policy when it is minted; the JWT is
//! returned once and never stored or logged.

use std::sync::Arc;

use certmint::wire::{
    AuditEvent, CertificateInfo, CertificateStatus, MintTokenRequest, MintedToken, NewProvisioner,
    Page, Policy, PolicySpec, ProvisionerInfo, RevokeRequest, TokenInfo,
};
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::error::ServiceError;
use crate::policy::{existing_policy_name, validate_policy_name, CompiledPolicy, Decision};
use crate::store::{
    CertificateFilter, ExpiryWindow, NewProvisionerRecord, NewToken, Store, StoreError,
};
use crate::tokens::provisioner::ProvisionerKey;
use crate::tokens::TokenAuthority;

/// Largest `max_uses` a bootstrap token may have.
pub const MAX_TOKEN_USES: u32 = 10_000;
/// A provisioner token's longest lifetime unless registered otherwise.
pub const DEFAULT_PROVISIONER_TOKEN_TTL_SECONDS: u64 = 300;
/// The longest lifetime a provisioner may allow its tokens.
pub const MAX_PROVISIONER_TOKEN_TTL_SECONDS: u64 = 3600;

/// Settings for minting bootstrap tokens.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Audience of bootstrap tokens.
    pub enroll_audience: String,
    /// Lifetime when the request names none.
    pub default_ttl_seconds: u64,
    /// Longest lifetime.
    pub max_ttl_seconds: u64,
}

/// Why an admin request was refused before the store saw it. Each variant
/// is one rule; `api::error` gives each its problem code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A new policy's name breaks the naming rule.
    #[error("{reason}")]
    PolicyNameInvalid {
        /// The rule it breaks.
        reason: String,
    },
    /// A replacement names another policy than its path.
    #[error(
        "the body names policy {body:?} but the path names {path:?}; renaming is not supported"
    )]
    PolicyRenamed {
        /// The name in the body.
        body: String,
        /// The name in the path.
        path: String,
    },
    /// Tokens cannot be minted for a disabled policy.
    #[error("policy {policy:?} is disabled; no tokens can be minted for it")]
    PolicyDisabled {
        /// The policy.
        policy: String,
    },
    /// A token must name something.
    #[error("identity must name at least one DNS name, IP or URI (or pattern)")]
    IdentityEmpty,
    /// A token lifetime above `tokens.max_ttl`.
    #[error("token ttl {ttl_seconds}s exceeds the server's maximum of {max_seconds}s")]
    TokenTtlTooLong {
        /// Asked for.
        ttl_seconds: u64,
        /// The server's maximum.
        max_seconds: u64,
    },
    /// A token lifetime past the end of the calendar.
    #[error("token ttl is out of range")]
    TokenTtlOutOfRange,
    /// `max_uses` of 0 or above [`MAX_TOKEN_USES`].
    #[error("max_uses must be between 1 and {MAX_TOKEN_USES}")]
    MaxUsesOutOfRange,
    /// A provisioner registration breaks a rule.
    #[error("{reason}")]
    ProvisionerInvalid {
        /// Which rule, and how.
        reason: String,
    },
    /// A serial in a path that no certificate can have.
    #[error("no certificate with serial {serial:?}: serials are hex, at most 40 digits")]
    SerialMalformed {
        /// The serial given.
        serial: String,
    },
    /// A token id in a path that no token can have.
    #[error("no bootstrap token with id {id:?}")]
    TokenIdMalformed {
        /// The id given.
        id: String,
    },
    /// A provisioner name in a path that no provisioner can have.
    #[error("no provisioner {name:?}")]
    ProvisionerNameMalformed {
        /// The name given.
        name: String,
    },
    /// The inventory's policy filter breaks the naming rule.
    #[error("policy filter {name:?}: {reason}")]
    PolicyFilterInvalid {
        /// The filter given.
        name: String,
        /// The rule it breaks.
        reason: String,
    },
    /// `expiring_within` reaches past the end of the calendar.
    #[error("expiring_within reaches past the end of the calendar")]
    ExpiryFilterOutOfRange,
}

/// Proof that the caller may write: only the API's authentication (after
/// checking the `admin` role) and server-side commands can make one, so a
/// read-only caller cannot reach a write method even by mistake.
#[derive(Debug, Clone)]
pub struct WriteAccess {
    actor: String,
}

impl WriteAccess {
    /// Grants write access to `actor` (e.g. `admin:alice`). Call only after
    /// the role check.
    pub(crate) fn granted_to(actor: String) -> Self {
        Self { actor }
    }

    /// Who writes, as recorded in audit events.
    pub fn actor(&self) -> &str {
        &self.actor
    }
}

/// The admin service.
pub struct Admin {
    store: Store,
    tokens: Arc<TokenAuthority>,
    clock: Arc<dyn Clock>,
    settings: TokenSettings,
}

impl Admin {
    /// Assembles the service.
    pub fn new(
        store: Store,
        tokens: Arc<TokenAuthority>,
        clock: Arc<dyn Clock>,
        settings: TokenSettings,
    ) -> Self {
        Self {
            store,
            tokens,
            clock,
            settings,
        }
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Creates version 1 of a policy.
    pub fn create_policy(
        &self,
        access: &WriteAccess,
        spec: &PolicySpec,
    ) -> Result<Policy, ServiceError> {
        validate_policy_name(&spec.name)
            .map_err(|reason| AdminError::PolicyNameInvalid { reason })?;
        CompiledPolicy::compile_new_version(spec, 1)?;
        Ok(self.store.create_policy(spec, access.actor(), self.now())?)
    }

    /// Writes the next version of a policy.
    pub fn replace_policy(
        &self,
        access: &WriteAccess,
        name: &str,
        spec: &PolicySpec,
    ) -> Result<Policy, ServiceError> {
        let name = existing_policy_name(name)?;
        if spec.name != name {
            return Err(AdminError::PolicyRenamed {
                body: spec.name.clone(),
                path: name.to_owned(),
            }
            .into());
        }
        CompiledPolicy::compile_new_version(spec, 0)?;
        Ok(self
            .store
            .replace_policy(spec, access.actor(), self.now())?)
    }

    /// Writes a disabled version of a policy.
    pub fn disable_policy(&self, access: &WriteAccess, name: &str) -> Result<Policy, ServiceError> {
        let name = existing_policy_name(name)?;
        Ok(self
            .store
            .disable_policy(name, access.actor(), self.now())?)
    }

    /// The current version of a policy.
    pub fn policy(&self, name: &str) -> Result<Policy, ServiceError> {
        let name = existing_policy_name(name)?;
        Ok(self
            .store
            .current_policy(name)?
            .ok_or_else(|| StoreError::PolicyNotFound {
                name: name.to_owned(),
            })?)
    }

    /// Current versions of all policies.
    pub fn list_policies(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Policy>, ServiceError> {
        Ok(self.store.list_policies(cursor, limit)?)
    }

    /// Mints a bootstrap token bound to a policy and an identity.
    pub fn mint_token(
        &self,
        access: &WriteAccess,
        request: &MintTokenRequest,
    ) -> Result<MintedToken, ServiceError> {
        let stored = self.policy(&request.policy)?;
        let policy = CompiledPolicy::compile(&stored.spec, stored.version)?;
        if !policy.is_enabled() {
            return Err(AdminError::PolicyDisabled {
                policy: request.policy.clone(),
            }
            .into());
        }
        if request.identity.is_empty() {
            return Err(AdminError::IdentityEmpty.into());
        }
        if let Decision::Deny(refusals) = policy.check_identity_within(&request.identity) {
            return Err(ServiceError::denied(refusals));
        }
        let ttl = request
            .ttl
            .map_or(self.settings.default_ttl_seconds, |ttl| ttl.as_seconds());
        if ttl > self.settings.max_ttl_seconds {
            return Err(AdminError::TokenTtlTooLong {
                ttl_seconds: ttl,
                max_seconds: self.settings.max_ttl_seconds,
            }
            .into());
        }
        let max_uses = request.max_uses.unwrap_or(1);
        if max_uses == 0 || max_uses > MAX_TOKEN_USES {
            return Err(AdminError::MaxUsesOutOfRange.into());
        }
        let now = self.now();
        // ttl is at most max_ttl (checked above), so this cannot overflow
        // for any configuration that loads; refuse rather than panic anyway.
        let expires_at = i64::try_from(ttl)
            .ok()
            .and_then(|seconds| now.checked_add(time::Duration::seconds(seconds)))
            .ok_or(AdminError::TokenTtlOutOfRange)?;
        let id = crate::random::hex_id()?;
        let jwt = self.tokens.mint_bootstrap(
            &id,
            &request.policy,
            &request.identity,
            &self.settings.enroll_audience,
            now,
            expires_at,
        )?;
        let info = self.store.insert_token(
            &NewToken {
                id: id.clone(),
                policy: request.policy.clone(),
                identity: request.identity.clone(),
                max_uses,
                expires_at,
            },
            access.actor(),
            now,
        )?;
        Ok(MintedToken {
            id,
            token: jwt,
            expires_at: info.expires_at,
            max_uses,
            policy: request.policy.clone(),
        })
    }

    /// One token.
    pub fn token(&self, id: &str) -> Result<TokenInfo, ServiceError> {
        let id = existing_token_id(id)?;
        Ok(self
            .store
            .token(id)?
            .ok_or_else(|| StoreError::TokenNotFound { id: id.to_owned() })?)
    }

    /// Tokens, paginated.
    pub fn list_tokens(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<TokenInfo>, ServiceError> {
        Ok(self.store.list_tokens(cursor, limit)?)
    }

    /// Revokes a token: no further enrollment with it.
    pub fn revoke_token(&self, access: &WriteAccess, id: &str) -> Result<TokenInfo, ServiceError> {
        let id = existing_token_id(id)?;
        Ok(self.store.revoke_token(id, access.actor(), self.now())?)
    }

    /// Registers a provisioner: an external issuer of bootstrap tokens.
    pub fn register_provisioner(
        &self,
        access: &WriteAccess,
        request: &NewProvisioner,
    ) -> Result<ProvisionerInfo, ServiceError> {
        let invalid = |reason: String| AdminError::ProvisionerInvalid { reason };
        validate_policy_name(&request.name)
            .map_err(|reason| invalid(format!("name {:?} {reason}", request.name)))?;
        let key = ProvisionerKey::from_pem(&request.public_key_pem)
            .map_err(|error| invalid(error.to_string()))?;
        if request.policies.is_empty() {
            return Err(invalid("policies must name at least one policy".into()).into());
        }
        for policy in &request.policies {
            // Typos are caught now rather than as refusals at enrollment.
            self.policy(policy)?;
        }
        let mut policies = request.policies.clone();
        policies.sort();
        policies.dedup();
        let ttl = request
            .max_token_ttl
            .map_or(DEFAULT_PROVISIONER_TOKEN_TTL_SECONDS, |ttl| {
                ttl.as_seconds()
            });
        if !(1..=MAX_PROVISIONER_TOKEN_TTL_SECONDS).contains(&ttl) {
            return Err(invalid(format!(
                "max_token_ttl must be between 1s and {MAX_PROVISIONER_TOKEN_TTL_SECONDS}s: \
                 provisioner tokens are short-lived"
            ))
            .into());
        }
        let record = NewProvisionerRecord {
            name: request.name.clone(),
            public_key_pem: request.public_key_pem.trim().to_owned() + "\n",
            algorithm: key.algorithm_name().to_owned(),
            key_id: key.key_id().to_owned(),
            policies,
            max_token_ttl_seconds: ttl,
        };
        Ok(self
            .store
            .insert_provisioner(&record, access.actor(), self.now())?)
    }

    /// One provisioner.
    pub fn provisioner(&self, name: &str) -> Result<ProvisionerInfo, ServiceError> {
        let name = existing_provisioner_name(name)?;
        Ok(self
            .store
            .provisioner(name)?
            .ok_or_else(|| StoreError::ProvisionerNotFound {
                name: name.to_owned(),
            })?)
    }

    /// Every provisioner, by name, in one page.
    pub fn list_provisioners(&self) -> Result<Page<ProvisionerInfo>, ServiceError> {
        Ok(Page {
            items: self.store.list_provisioners()?,
            next: None,
        })
    }

    /// Disables a provisioner: its tokens are refused from now on.
    pub fn disable_provisioner(
        &self,
        access: &WriteAccess,
        name: &str,
    ) -> Result<ProvisionerInfo, ServiceError> {
        let name = existing_provisioner_name(name)?;
        Ok(self
            .store
            .disable_provisioner(name, access.actor(), self.now())?)
    }

    /// One certificate, with its PEM.
    pub fn certificate(&self, serial: &str) -> Result<CertificateInfo, ServiceError> {
        let serial = existing_serial(serial)?;
        Ok(self
            .store
            .certificate(&serial)?
            .ok_or_else(|| StoreError::CertificateNotFound {
                serial: serial.to_owned(),
            })?)
    }

    /// Inventory, filtered and paginated.
    pub fn list_certificates(
        &self,
        policy: Option<String>,
        status: Option<CertificateStatus>,
        expiring_within_seconds: Option<u64>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<CertificateInfo>, ServiceError> {
        if let Some(name) = &policy {
            validate_policy_name(name).map_err(|reason| AdminError::PolicyFilterInvalid {
                name: name.clone(),
                reason,
            })?;
        }
        let now = self.now();
        let expiring = match expiring_within_seconds {
            None => None,
            Some(seconds) => Some(ExpiryWindow {
                from: now,
                until: i64::try_from(seconds)
                    .ok()
                    .and_then(|seconds| now.checked_add(time::Duration::seconds(seconds)))
                    .ok_or(AdminError::ExpiryFilterOutOfRange)?,
            }),
        };
        let filter = CertificateFilter {
            policy,
            status,
            expiring,
        };
        Ok(self.store.list_certificates(&filter, cursor, limit)?)
    }

    /// Revokes a certificate with an RFC 5280 reason (and, for a key
    /// compromise, the invalidity date when known).
    pub fn revoke_certificate(
        &self,
        access: &WriteAccess,
        serial: &str,
        request: &RevokeRequest,
    ) -> Result<CertificateInfo, ServiceError> {
        let serial = existing_serial(serial)?;
        let now = self.now();
        let revocation = crate::revocation::checked_revocation(request, now)?;
        Ok(self
            .store
            .revoke_certificate(&serial, revocation, access.actor(), now)?)
    }

    /// Audit events, oldest first.
    pub fn audit(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEvent>, ServiceError> {
        Ok(self.store.list_audit(cursor, limit)?)
    }
}

/// A serial from a path: lower-case hex of at most 20 bytes.
fn existing_serial(serial: &str) -> Result<String, AdminError> {
    let lower = serial.to_ascii_lowercase();
    if lower.is_empty() || lower.len() > 40 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AdminError::SerialMalformed {
            serial: serial.to_owned(),
        });
    }
    Ok(lower)
}

/// A bootstrap token id from a path: 32 lower-case hex digits.
fn existing_token_id(id: &str) -> Result<&str, AdminError> {
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(AdminError::TokenIdMalformed { id: id.to_owned() });
    }
    Ok(id)
}

/// A provisioner name from a path; names follow the policy naming rule.
fn existing_provisioner_name(name: &str) -> Result<&str, AdminError> {
    validate_policy_name(name).map_err(|_| AdminError::ProvisionerNameMalformed {
        name: name.to_owned(),
    })?;
    Ok(name)
}
