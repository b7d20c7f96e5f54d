//! Issuance: from a verified request to a recorded, signed certificate.
//!
//! The pipeline runs in this order, and the order is the crash-safety
//! argument (see `docs/ISSUANCE.md`):
//!
//! 1. parse the CSR and verify its proof of possession ([`csr::verify`]);
//! 2. verify the bootstrap token (the server's own, or a registered
//!    provisioner's, whose `jti` becomes a one-use token record) and
//!    evaluate the current policy version
//!    (compiled policies are cached; see [`PolicyCache`] for why a cached
//!    version can never issue or refuse in place of the current one);
//! 3. build the TBS from the policy and the verified names only
//!    ([`profile::prepare_leaf`]), with a fresh random serial;
//! 4. in ONE database transaction: check that the evaluated policy version
//!    is still the current one, consume one token use (conditional
//!    update), record the intended certificate with its TBS, policy name and
//!    version (unique serial: a collision retries from 3), and audit
//!    `certificate.signing`;
//! 5. sign the TBS bytes on the HSM;
//! 6. verify the signature with the CA public key and re-check the parsed
//!    certificate against the request (same key, same names, CA:FALSE);
//! 7. mark the record issued (durably committed) and only then return it.
//!
//! A failure in 5 or 6 marks the record failed and refunds the token use,
//! because no certificate left the server. A crash anywhere leaves at worst
//! a `pending` record, never a certificate that a client holds but the
//! database does not know. A pending record older than
//! `issuance.pending_timeout` is reconciled (failed, use refunded) by a
//! background sweep or by a retry of its token; 7 is conditional on the
//! record still being pending, so a request that outlived the bound fails
//! (503) instead of returning an unrecorded certificate. A retry whose
//! token is used up by its own earlier, completed request (same key) gets
//! that certificate again.
//!
//! "Checked before signed" is a type: [`PreparedCertificate`] can only be
//! made by [`Issuer::prepare`] and is consumed by [`Issuer::sign`].

pub mod algorithms;
#[cfg(test)]
mod crash_recovery_tests;
pub mod csr;
pub mod holder;
pub mod profile;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use certmint::wire::{
    CertificateBundle, CertificateInfo, EnrollRequest, EvaluateRequest, EvaluateResponse, Identity,
    RevocationReason, Verdict,
};
use der::{Decode as _, Encode as _};
use time::OffsetDateTime;
use x509_cert::certificate::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, SubjectAltName};

use crate::clock::Clock;
use crate::error::ServiceError;
use crate::hsm::CaSigner;
use crate::metrics::Metrics;
use crate::policy::{self, CompiledPolicy, Decision};
use crate::revocation::sharding::{distribution_point, CrlSharding};
use crate::store::{
    CrlAssignment, NewCertificate, NewToken, Store, StoreError, UsedUpTokenRecovery,
};
use crate::tokens::{self, TokenAuthority, TokenError};
use csr::VerifiedCsr;
use profile::{LeafNames, LeafTemplate, UnsignedCertificate};

/// Serial collisions tolerated before giving up (each is a 2^-127 event).
const SERIAL_ATTEMPTS: usize = 4;

/// Evaluations of one request before giving up when its policy keeps
/// changing under it (each retry means an administrator wrote a new version
/// in the meantime).
const POLICY_ATTEMPTS: usize = 4;

/// Issuance attempts of one enrollment whose token keeps being found used
/// up after a refund (each refund went to a parallel request instead).
const RECOVERY_ATTEMPTS: usize = 3;

/// Why the pipeline stopped for a reason of its own (not a refusal of the
/// request, not a failing store or HSM). Every one is a 500: the request
/// was fine, the server is not.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuanceError {
    /// `issuance.backdate` pushes notBefore out of the calendar.
    #[error("issuance.backdate is out of range")]
    BackdateOutOfRange,
    /// The issuing certificate (or one above it) has expired.
    #[error("the issuing certificate has expired; rotate the CA")]
    IssuingCertificateExpired,
    /// Every random serial drawn was taken (each a 2^-127 event: a broken
    /// random source or a broken store).
    #[error("could not draw a unique serial in {attempts} attempts")]
    SerialsExhausted {
        /// Serials drawn.
        attempts: usize,
    },
    /// A signed certificate failed its post-signing checks (a bug or a
    /// misbehaving token); nothing was returned to the client.
    #[error("post-signing check failed: {0}")]
    PostSigningCheck(String),
}

/// Issuance settings from the configuration.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// Audience bootstrap tokens must carry.
    pub enroll_audience: String,
    /// Seconds notBefore is backdated.
    pub backdate_seconds: i64,
    /// Fraction of the lifetime after which renewal is suggested.
    pub renew_fraction: f64,
    /// ± jitter, as a fraction of the lifetime.
    pub renew_jitter: f64,
    /// Seconds after which a `pending` issuance is presumed dead and may be
    /// reconciled (`issuance.pending_timeout`).
    pub pending_timeout_seconds: i64,
    /// Which CRL each certificate is assigned to (`[crl]`).
    pub crl: CrlSharding,
}

/// The issuing CA as the pipeline sees it.
#[derive(Clone)]
pub struct IssuingCa {
    /// The issuing key on the HSM.
    pub signer: Arc<dyn CaSigner>,
    /// The issuing certificate.
    pub certificate: Certificate,
    /// Lower-case hex of the issuing certificate's subject key identifier:
    /// its leaves' AKI, its CRLs' AKI, and its CRLs' path segment.
    pub key_id: String,
    /// Issuing certificate, any intermediate CAs, then root, PEM.
    pub chain_pem: String,
    /// The earliest notAfter on the path: the issuing certificate's, an
    /// intermediate's or the root's. A leaf never outlives its path, or it
    /// would stop validating before its own notAfter while its holder saw
    /// no reason to renew.
    pub path_not_after: OffsetDateTime,
}

/// Everything issuance needs, built once at start.
pub struct IssuerParts {
    /// Database.
    pub store: Store,
    /// The CA.
    pub ca: IssuingCa,
    /// Token verifier.
    pub tokens: Arc<TokenAuthority>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Settings.
    pub settings: IssuerSettings,
    /// Where latencies and counts go.
    pub metrics: Arc<Metrics>,
}

/// What an enrollment does after finding its token used up.
enum AfterUsedUp {
    /// The certificate an earlier request with this token and key received.
    Delivered(Box<CertificateBundle>),
    /// A dead request's use was refunded: issue again.
    Retry,
    /// Nothing to recover: `token.used`.
    UsedUp,
}

/// Where a certificate comes from: the token that enrolled it, or the
/// certificate it renews, and when its renewal chain began.
#[derive(Clone, Debug)]
struct Lineage {
    token_id: Option<String>,
    predecessor: Option<String>,
    chain_started_at: OffsetDateTime,
    /// Renewal chains end at `chain_started_at + max_chain_age`.
    latest_not_after: Option<OffsetDateTime>,
}

impl Lineage {
    /// A first enrollment (or the server's own certificate) at `now`.
    fn first(token_id: Option<String>, now: OffsetDateTime) -> Self {
        Self {
            token_id,
            predecessor: None,
            chain_started_at: now,
            latest_not_after: None,
        }
    }

    fn actor(&self) -> String {
        match (&self.token_id, &self.predecessor) {
            (Some(id), _) => format!("token:{id}"),
            (None, Some(serial)) => format!("certificate:{serial}"),
            (None, None) => "system".to_owned(),
        }
    }
}

/// What a verified enrollment token allows: the policy, the identity, and
/// the token record whose use the issuance consumes.
struct Grant {
    token_id: String,
    policy: String,
    identity: Identity,
}

/// The issuance service.
pub struct Issuer {
    parts: IssuerParts,
    policies: PolicyCache,
}

/// The compiled current version of each policy issuance has used, so that
/// an enrollment neither reads nor compiles its policy (a database read was
/// ~7 % of server CPU per enrollment).
///
/// The database stays the authority, and no replica needs to tell another
/// about a change:
/// - a cached version that would *allow* a request is checked inside the
///   transaction that consumes the token (`begin_issuance` with
///   `require_current_policy`); when a newer version exists, the request is
///   evaluated again under it;
/// - a cached version that would *refuse* a request is compared with the
///   database before the refusal is returned; when a newer version exists,
///   the request is evaluated again under it.
#[derive(Default)]
struct PolicyCache {
    entries: RwLock<HashMap<String, Arc<CompiledPolicy>>>,
}

impl PolicyCache {
    fn get(&self, name: &str) -> Option<Arc<CompiledPolicy>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.get(name).cloned()
    }

    fn put(&self, policy: Arc<CompiledPolicy>) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.insert(policy.name().to_owned(), policy);
    }
}

/// What a policy decided for one request: the lifetime, and for renewals
/// the end of the renewal chain.
struct Decided {
    ttl_seconds: u64,
    latest_not_after: Option<OffsetDateTime>,
}

/// A certificate whose request passed every check, with its serial reserved
/// and its TBS recorded. Only [`Issuer::sign`] can use it, once.
#[derive(Debug)]
pub struct PreparedCertificate {
    serial: String,
    token_id: Option<String>,
    unsigned: UnsignedCertificate,
    request: VerifiedCsr,
    names: LeafNames,
    policy: String,
    policy_version: i64,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// When the request was decided: `not_before` plus the backdate.
    issued_at: OffsetDateTime,
    /// The certificate a renewal replaces.
    predecessor: Option<String>,
}

impl Issuer {
    /// Assembles the service.
    pub fn new(parts: IssuerParts) -> Self {
        Self {
            parts,
            policies: PolicyCache::default(),
        }
    }

    /// The issuing CA.
    pub fn ca(&self) -> &IssuingCa {
        &self.parts.ca
    }

    /// `POST /v1/enroll`: the whole pipeline.
    ///
    /// A token found used up is not the end when a crash took its use (see
    /// [`Issuer::after_used_up_token`]): the same token and key get their
    /// certificate again, a use held by a dead request is refunded and the
    /// issuance retried, and a use held by an earlier try of this request
    /// (same key) possibly still in flight is a retryable 503
    /// (`issuance.in_flight`).
    pub fn enroll(&self, request: &EnrollRequest) -> Result<CertificateBundle, ServiceError> {
        let now = self.parts.clock.now();
        let csr = csr::verify(&request.csr)?;
        let grant = self.enrollment_grant(&request.token, now)?;
        let ttl = request.ttl.map(|ttl| ttl.as_seconds());
        let jti = grant.token_id.clone();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let lineage = Lineage::first(Some(jti.clone()), now);
            let prepared = self.prepare_under_policy(&grant.policy, &csr, lineage, now, |policy| {
                match policy::evaluate(policy, &csr.issuance_request(ttl, Some(&grant.identity))) {
                    Decision::Allow { ttl_seconds } => Ok(Decided {
                        ttl_seconds,
                        latest_not_after: None,
                    }),
                    Decision::Deny(refusals) => Err(ServiceError::denied(refusals)),
                }
            });
            match prepared {
                Ok(prepared) => return self.sign(prepared),
                Err(ServiceError::Store(used_up @ StoreError::TokenUsedUp { .. })) => {
                    match self.after_used_up_token(&jti, &csr, now)? {
                        AfterUsedUp::Delivered(bundle) => return Ok(*bundle),
                        AfterUsedUp::Retry if attempts < RECOVERY_ATTEMPTS => continue,
                        AfterUsedUp::Retry | AfterUsedUp::UsedUp => return Err(used_up.into()),
                    }
                }
                Err(refusal) => return Err(self.token_refusal_first(&jti, now, refusal)),
            }
        }
    }

    /// What an enrollment whose token `token_id` is used up gets instead
    /// of `token.used`, in one store transaction:
    ///
    /// - an issued, unexpired certificate recorded for this token and this
    ///   CSR key is delivered again (same serial; `renew_after` from its
    ///   recorded dates): a crash lost the response, not the certificate,
    ///   and the CSR proves the key;
    /// - this token's pending rows older than `pending_timeout` are
    ///   reconciled (their uses refunded), then the caller retries;
    /// - a younger pending row of this token for this CSR key is
    ///   [`StoreError::TokenUseInFlight`] (503): an earlier try of this
    ///   request may still be signing here or on another replica. A younger
    ///   row for another key is a parallel request that won the use:
    ///   `token.used`, as it always was.
    fn after_used_up_token(
        &self,
        token_id: &str,
        csr: &VerifiedCsr,
        now: OffsetDateTime,
    ) -> Result<AfterUsedUp, ServiceError> {
        let stale_before =
            now - time::Duration::seconds(self.parts.settings.pending_timeout_seconds);
        let recovery = self.parts.store.recover_used_up_token(
            token_id,
            &csr.subject_key_sha256,
            stale_before,
            &format!("token:{token_id}"),
            now,
        )?;
        match recovery {
            UsedUpTokenRecovery::Redeliver(info) => {
                tracing::info!(cert.serial = %info.serial, token.id = %token_id,
                    "certificate delivered again to a retry of its enrollment");
                Ok(AfterUsedUp::Delivered(Box::new(self.redelivered(*info)?)))
            }
            UsedUpTokenRecovery::Refunded(count) => {
                tracing::info!(token.id = %token_id, store.reconciled = count,
                    "stale pending issuances of the token reconciled; issuing again");
                Ok(AfterUsedUp::Retry)
            }
            UsedUpTokenRecovery::InFlight { pending_since } => Err(StoreError::TokenUseInFlight {
                id: token_id.to_owned(),
                pending_since,
            }
            .into()),
            UsedUpTokenRecovery::UsedUp => Ok(AfterUsedUp::UsedUp),
        }
    }

    /// The response for a certificate delivered again, as it was first
    /// answered: its recorded dates, `renew_after` computed from when it
    /// was decided (its record's creation), today's chain.
    fn redelivered(&self, info: CertificateInfo) -> Result<CertificateBundle, ServiceError> {
        let certificate_pem = info.certificate_pem.ok_or_else(|| StoreError::Corrupt {
            what: format!("certificate {}: issued without DER", info.serial),
        })?;
        Ok(CertificateBundle {
            renew_after: renew_after(info.created_at, info.not_after, &self.parts.settings),
            serial: info.serial,
            certificate_pem,
            chain_pem: self.parts.ca.chain_pem.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            policy: info.policy,
            policy_version: info.policy_version,
        })
    }

    /// Verifies an enrollment token: the server's own (chosen by its `kid`)
    /// or a registered provisioner's (chosen by its unverified `iss`).
    ///
    /// A provisioner's token becomes, on first use, a one-use token record
    /// that the issuance transaction then consumes like any bootstrap
    /// token, so single use holds under parallel requests and a replay is
    /// `token.used`. Recording it is idempotent: parallel first uses race
    /// on the primary key, and every loser finds the winner's record.
    fn enrollment_grant(&self, token: &str, now: OffsetDateTime) -> Result<Grant, ServiceError> {
        let audience = &self.parts.settings.enroll_audience;
        let Some(name) = self.provisioner_named_by(token)? else {
            let claims = self.parts.tokens.verify_bootstrap(token, audience, now)?;
            return Ok(Grant {
                token_id: claims.registered.jti,
                policy: claims.policy,
                identity: claims.identity,
            });
        };
        let provisioner = self
            .parts
            .store
            .provisioner(&name)?
            .ok_or(TokenError::UnknownKey)?;
        let claims = tokens::provisioner::verify(token, &provisioner, audience, now)?;
        let token_id = tokens::provisioner::token_record_id(&name, &claims.jti);
        // Kept as long as the JWT check accepts it, leeway included.
        let expires_at =
            OffsetDateTime::from_unix_timestamp(claims.exp.saturating_add(tokens::LEEWAY_SECONDS))
                .map_err(|_| TokenError::Malformed("exp out of range".into()))?;
        let record = NewToken {
            id: token_id.clone(),
            policy: claims.policy.clone(),
            identity: claims.identity.clone(),
            max_uses: 1,
            expires_at,
        };
        self.parts
            .store
            .record_provisioner_token(&record, &name, now)?;
        Ok(Grant {
            token_id,
            policy: claims.policy,
            identity: claims.identity,
        })
    }

    /// The provisioner whose key must verify `token`, or `None` for the
    /// server's own key: a `kid` naming the server's key, and an `iss` that
    /// cannot be a provisioner's name (the server's URL; none at all), keep
    /// a token on the server's path, so hostile variants of the server's
    /// tokens (`alg: none` without a `kid`, say) get the same refusals as
    /// before provisioners existed. Nothing here is trusted beyond the
    /// choice of key.
    fn provisioner_named_by(&self, token: &str) -> Result<Option<String>, TokenError> {
        let header = tokens::UnverifiedHeader::parse(token)?;
        if header.kid.as_deref() == Some(self.parts.tokens.key_id()) {
            return Ok(None);
        }
        Ok(tokens::provisioner::unverified_issuer(token)
            .ok()
            .filter(|name| policy::validate_policy_name(name).is_ok()))
    }

    /// The token's own state is checked only in the issuance transaction,
    /// after the policy: a revoked, expired or used-up token would otherwise
    /// get the policy's refusals, which name what it allows, instead of its
    /// own. Read only when something was refused, so a successful
    /// enrollment pays nothing for it.
    fn token_refusal_first(
        &self,
        jti: &str,
        now: OffsetDateTime,
        refusal: ServiceError,
    ) -> ServiceError {
        match self.parts.store.check_token_usable(jti, now) {
            Err(
                token @ (StoreError::TokenUnknown { .. }
                | StoreError::TokenRevoked { .. }
                | StoreError::TokenExpired { .. }
                | StoreError::TokenUsedUp { .. }),
            ) => token.into(),
            _ => refusal,
        }
    }

    /// Issues a certificate the server requested for itself (its TLS
    /// certificate): no token, a built-in policy, the same recorded pipeline.
    pub fn issue_internal(
        &self,
        request: VerifiedCsr,
        policy: &CompiledPolicy,
        ttl_seconds: u64,
    ) -> Result<CertificateBundle, ServiceError> {
        let now = self.parts.clock.now();
        let prepared = self.prepare(
            request,
            policy,
            ttl_seconds,
            Lineage::first(None, now),
            now,
            false,
        )?;
        self.sign(prepared)
    }

    /// Revokes a certificate the server issued to itself and will not use
    /// (its TLS certificate failed the server's own path check), so the
    /// inventory shows it withdrawn rather than live.
    pub fn withdraw_internal(&self, serial: &str) -> Result<(), ServiceError> {
        self.parts.store.revoke_certificate(
            serial,
            RevocationReason::CessationOfOperation.into(),
            "system:server-tls",
            self.parts.clock.now(),
        )?;
        Ok(())
    }

    /// `POST /v1/admin/policies/{name}/evaluate`: the same checks, no token
    /// consumed, nothing signed.
    pub fn evaluate(
        &self,
        policy_name: &str,
        request: &EvaluateRequest,
    ) -> Result<EvaluateResponse, ServiceError> {
        let csr = csr::verify(&request.csr)?;
        let policy = self.load_policy(policy_name)?;
        let decision = policy::evaluate(
            &policy,
            &csr.issuance_request(
                request.ttl.map(|ttl| ttl.as_seconds()),
                request.identity.as_ref(),
            ),
        );
        Ok(match decision {
            Decision::Allow { .. } => EvaluateResponse {
                decision: Verdict::Allow,
                policy_version: policy.version(),
                refusals: Vec::new(),
            },
            Decision::Deny(refusals) => EvaluateResponse {
                decision: Verdict::Deny,
                policy_version: policy.version(),
                refusals,
            },
        })
    }

    /// Steps 2 to 4 under the current version of policy `name`: `decide`
    /// evaluates the request under a version, then the intent is recorded
    /// if that version is still current at commit. See [`PolicyCache`].
    fn prepare_under_policy(
        &self,
        name: &str,
        request: &VerifiedCsr,
        lineage: Lineage,
        now: OffsetDateTime,
        decide: impl Fn(&CompiledPolicy) -> Result<Decided, ServiceError>,
    ) -> Result<PreparedCertificate, ServiceError> {
        let (mut policy, mut fresh) = match self.policies.get(name) {
            Some(cached) => (cached, false),
            None => (self.refresh_policy(name)?, true),
        };
        for _ in 0..POLICY_ATTEMPTS {
            let decided = match decide(&policy) {
                Ok(decided) => decided,
                Err(refusal) if !fresh => {
                    let current = self.refresh_policy(name)?;
                    fresh = true;
                    if current.version() == policy.version() {
                        return Err(refusal);
                    }
                    policy = current;
                    continue;
                }
                Err(refusal) => return Err(refusal),
            };
            let lineage = Lineage {
                latest_not_after: decided.latest_not_after,
                ..lineage.clone()
            };
            match self.prepare(
                request.clone(),
                &policy,
                decided.ttl_seconds,
                lineage,
                now,
                true,
            ) {
                Err(ServiceError::Store(StoreError::PolicyChanged { .. })) => {
                    policy = self.refresh_policy(name)?;
                    fresh = true;
                }
                other => return other,
            }
        }
        Err(StoreError::PolicyChanged {
            name: name.to_owned(),
            evaluated: policy.version(),
        }
        .into())
    }

    /// Reads and compiles the current version of `name`, and caches it.
    fn refresh_policy(&self, name: &str) -> Result<Arc<CompiledPolicy>, ServiceError> {
        let policy = Arc::new(self.load_policy(name)?);
        self.policies.put(policy.clone());
        Ok(policy)
    }

    /// The current version of `name`, read from the database.
    fn load_policy(&self, name: &str) -> Result<CompiledPolicy, ServiceError> {
        let name = policy::existing_policy_name(name)?;
        let stored =
            self.parts
                .store
                .current_policy(name)?
                .ok_or_else(|| StoreError::PolicyNotFound {
                    name: name.to_owned(),
                })?;
        Ok(CompiledPolicy::compile(&stored.spec, stored.version)?)
    }

    /// Steps 3 and 4: build the TBS, then consume the token and record the
    /// intended certificate in one transaction.
    fn prepare(
        &self,
        request: VerifiedCsr,
        policy: &CompiledPolicy,
        ttl_seconds: u64,
        lineage: Lineage,
        now: OffsetDateTime,
        policy_is_stored: bool,
    ) -> Result<PreparedCertificate, ServiceError> {
        let token_id = lineage.token_id.clone();
        let issuer_not_after = self.parts.ca.path_not_after;
        let window = validity_window(
            now,
            ttl_seconds,
            policy.ttl_max(),
            self.parts.settings.backdate_seconds,
        )
        .ok_or(IssuanceError::BackdateOutOfRange)?;
        let not_before = window.not_before;
        let wanted_not_after = window.not_after.unwrap_or(issuer_not_after);
        let not_after = wanted_not_after
            .min(issuer_not_after)
            .min(lineage.latest_not_after.unwrap_or(issuer_not_after));
        if not_after <= now {
            return Err(IssuanceError::IssuingCertificateExpired.into());
        }
        let names = leaf_names(&request);
        let crl_shard = self.parts.settings.crl.shard_of(not_after.unix_timestamp());
        for _ in 0..SERIAL_ATTEMPTS {
            let serial = random_serial()?;
            let template = LeafTemplate {
                serial,
                subject_public_key_info: request.subject_public_key_info.clone(),
                key_type: request.key_type,
                names: names.clone(),
                extended_key_usages: policy.extended_key_usages().to_vec(),
                not_before,
                not_after,
                crl_distribution_point: distribution_point(
                    &self.parts.settings.crl.base_url,
                    &self.parts.ca.key_id,
                    crl_shard,
                ),
            };
            let unsigned = profile::prepare_leaf(
                &template,
                &self.parts.ca.certificate,
                self.parts.ca.signer.as_ref(),
            )?;
            let serial_hex = hex::encode(serial);
            let record = NewCertificate {
                serial: serial_hex.clone(),
                policy: policy.name().to_owned(),
                policy_version: policy.version(),
                identity: identity_of(&names),
                key_type: request.key_type,
                subject_key_sha256: request.subject_key_sha256.clone(),
                not_before,
                not_after,
                tbs_der: unsigned.tbs_der().to_vec(),
                crl: CrlAssignment {
                    issuer_key_id: self.parts.ca.key_id.clone(),
                    shard: crl_shard,
                },
                token_id: token_id.clone(),
                predecessor: lineage.predecessor.clone(),
                chain_started_at: lineage.chain_started_at,
                require_current_policy: policy_is_stored,
            };
            let actor = lineage.actor();
            let started = std::time::Instant::now();
            let reserved =
                self.parts
                    .store
                    .begin_issuance(&record, token_id.as_deref(), &actor, now);
            self.parts
                .metrics
                .database("begin_issuance", started.elapsed().as_secs_f64());
            match reserved {
                Ok(()) => {
                    return Ok(PreparedCertificate {
                        serial: serial_hex,
                        token_id,
                        unsigned,
                        request,
                        names,
                        policy: policy.name().to_owned(),
                        policy_version: policy.version(),
                        not_before,
                        not_after,
                        issued_at: now,
                        predecessor: lineage.predecessor.clone(),
                    })
                }
                Err(StoreError::SerialCollision { .. }) => {
                    tracing::warn!(cert.serial = %serial_hex, "serial collision, drawing again");
                    continue;
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(IssuanceError::SerialsExhausted {
            attempts: SERIAL_ATTEMPTS,
        }
        .into())
    }

    /// Steps 5 to 7.
    pub fn sign(&self, prepared: PreparedCertificate) -> Result<CertificateBundle, ServiceError> {
        let serial = prepared.serial.clone();
        let token_id = prepared.token_id.clone();
        match self.sign_and_check(prepared) {
            Ok(bundle) => Ok(bundle),
            // Reconciliation already failed the row and refunded the use.
            Err(error @ ServiceError::Store(StoreError::IssuanceWithdrawn { .. })) => {
                tracing::warn!(cert.serial = %serial,
                    "issuance outlived issuance.pending_timeout; the signed certificate is dropped");
                Err(error)
            }
            Err(error) => {
                let now = self.parts.clock.now();
                if let Err(store_error) = self.parts.store.abandon_issuance(
                    &serial,
                    &error.to_string(),
                    token_id.as_deref(),
                    now,
                ) {
                    tracing::error!(cert.serial = %serial, error = %store_error,
                        "could not mark a failed issuance; the record stays pending");
                }
                Err(error)
            }
        }
    }

    fn sign_and_check(
        &self,
        prepared: PreparedCertificate,
    ) -> Result<CertificateBundle, ServiceError> {
        let signer = self.parts.ca.signer.as_ref();
        let PreparedCertificate {
            unsigned,
            serial,
            request,
            names,
            policy,
            policy_version,
            not_before,
            not_after,
            issued_at,
            predecessor,
            token_id: _,
        } = prepared;
        let tbs_der = unsigned.tbs_der().to_vec();
        let started = std::time::Instant::now();
        let signature = signer.sign(&tbs_der)?;
        self.parts.metrics.hsm_sign(started.elapsed().as_secs_f64());
        let certificate = unsigned.assemble(&signature)?;
        let certificate_der = profile::to_der(&certificate)?;
        self.check_signed(&certificate, &tbs_der, &request, &names)?;
        let now = self.parts.clock.now();
        let started = std::time::Instant::now();
        self.parts.store.complete_issuance(
            &serial,
            predecessor.as_deref(),
            &certificate_der,
            now,
        )?;
        self.parts
            .metrics
            .database("complete_issuance", started.elapsed().as_secs_f64());
        self.parts.metrics.issued();
        Ok(CertificateBundle {
            serial,
            certificate_pem: pem("CERTIFICATE", &certificate_der)?,
            chain_pem: self.parts.ca.chain_pem.clone(),
            not_before,
            not_after,
            renew_after: renew_after(issued_at, not_after, &self.parts.settings),
            policy,
            policy_version,
        })
    }

    /// Step 6: the signature verifies under the CA key, and the certificate
    /// says exactly what was checked.
    fn check_signed(
        &self,
        certificate: &Certificate,
        tbs_der: &[u8],
        request: &VerifiedCsr,
        names: &LeafNames,
    ) -> Result<(), IssuanceError> {
        let fail = |what: &str| IssuanceError::PostSigningCheck(what.to_owned());
        let issuer_key = self
            .parts
            .ca
            .certificate
            .tbs_certificate()
            .subject_public_key_info();
        let signature = certificate
            .signature()
            .as_bytes()
            .ok_or_else(|| fail("signature bits"))?;
        algorithms::verify_signature(
            issuer_key,
            certificate.signature_algorithm(),
            tbs_der,
            signature,
        )
        .map_err(|error| fail(&format!("CA signature: {error}")))?;
        let tbs = certificate.tbs_certificate();
        if tbs.to_der().map_err(|_| fail("TBS re-encoding"))? != tbs_der {
            return Err(fail("certificate TBS differs from the recorded TBS"));
        }
        if tbs.subject_public_key_info() != &request.subject_public_key_info {
            return Err(fail("subject key differs from the CSR key"));
        }
        let (_, basic_constraints) = tbs
            .get_extension::<BasicConstraints>()
            .map_err(|_| fail("basicConstraints decoding"))?
            .ok_or_else(|| fail("basicConstraints missing"))?;
        if basic_constraints.ca {
            return Err(fail("leaf has CA:TRUE"));
        }
        let (_, alt_names) = tbs
            .get_extension::<SubjectAltName>()
            .map_err(|_| fail("subjectAltName decoding"))?
            .ok_or_else(|| fail("subjectAltName missing"))?;
        let expected = names.dns.len() + names.ip.len() + names.uri.len();
        if alt_names.0.len() != expected {
            return Err(fail("subjectAltName count differs from the request"));
        }
        Ok(())
    }
}

/// Verified names as they go into the certificate, each in the form the
/// policy approves ([`policy::canonical_dns_name`],
/// [`policy::canonical_uri_name`]), duplicates of those forms dropped,
/// order kept.
pub(crate) fn leaf_names(request: &VerifiedCsr) -> LeafNames {
    let mut names = LeafNames::default();
    // Invalid names stay as written (DNS lower-cased): the policy refuses
    // them by name.
    for dns in &request.names.dns {
        let canonical =
            policy::canonical_dns_name(dns).unwrap_or_else(|_| dns.to_ascii_lowercase());
        if !names.dns.contains(&canonical) {
            names.dns.push(canonical);
        }
    }
    for ip in &request.names.ip {
        if !names.ip.contains(ip) {
            names.ip.push(*ip);
        }
    }
    for uri in &request.names.uri {
        let canonical = policy::canonical_uri_name(uri).unwrap_or_else(|_| uri.clone());
        if !names.uri.contains(&canonical) {
            names.uri.push(canonical);
        }
    }
    names
}

pub(crate) fn identity_of(names: &LeafNames) -> Identity {
    Identity {
        dns: names.dns.clone(),
        ip: names.ip.iter().map(ToString::to_string).collect(),
        uri: names.uri.clone(),
    }
}

/// 16 random bytes, positive (top bit clear) and never starting with a zero
/// byte, so the DER INTEGER is always exactly 16 bytes long.
pub fn random_serial() -> Result<[u8; 16], ServiceError> {
    let mut serial = [0u8; 16];
    crate::random::fill(&mut serial)?;
    serial[0] = (serial[0] & 0x7f).max(1);
    Ok(serial)
}

/// A certificate's validity before the CA path and the renewal chain clamp
/// `not_after` (`None`: past what time can hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ValidityWindow {
    not_before: OffsetDateTime,
    not_after: Option<OffsetDateTime>,
}

/// The validity of a certificate decided at `now` for `ttl_seconds` under a
/// policy whose longest lifetime is `max_seconds`: `notBefore` is backdated
/// by `backdate_seconds` to absorb client clock skew, and the backdate
/// counts toward the maximum (as Let's Encrypt counts it), so `notAfter -
/// notBefore` never exceeds the policy's max: a certificate asked for at
/// the maximum gives up the backdate at its end. The backdate is at most a
/// tenth of the maximum, so a very short-lived policy (seconds, minutes)
/// keeps nine tenths of its lifetime ahead. `None` when the backdate cannot
/// be represented.
fn validity_window(
    now: OffsetDateTime,
    ttl_seconds: u64,
    max_seconds: u64,
    backdate_seconds: i64,
) -> Option<ValidityWindow> {
    let max = i64::try_from(max_seconds).unwrap_or(i64::MAX);
    let backdate = backdate_seconds.clamp(0, max / 10);
    let not_before = now.checked_sub(time::Duration::seconds(backdate))?;
    let ttl = i64::try_from(ttl_seconds).unwrap_or(i64::MAX);
    let not_after = match (
        now.checked_add(time::Duration::seconds(ttl)),
        not_before.checked_add(time::Duration::seconds(max)),
    ) {
        (Some(wanted), Some(longest)) => Some(wanted.min(longest)),
        (Some(wanted), None) => Some(wanted),
        (None, longest) => longest,
    };
    Some(ValidityWindow {
        not_before,
        not_after,
    })
}

/// `renew_after`: `issued_at + fraction × lifetime ± jitter × lifetime`,
/// where the lifetime runs from issuance to `not_after`, kept strictly
/// inside that window. It deliberately ignores the backdating of
/// `notBefore`: with short lifetimes the backdate would otherwise pull the
/// hint into the past and make holders renew at once, again and again.
pub fn renew_after(
    issued_at: OffsetDateTime,
    not_after: OffsetDateTime,
    settings: &IssuerSettings,
) -> OffsetDateTime {
    let lifetime = (not_after - issued_at).as_seconds_f64().max(0.0);
    let mut unit = [0u8; 8];
    let random = if crate::random::fill(&mut unit).is_ok() {
        (u64::from_le_bytes(unit) as f64 / u64::MAX as f64) * 2.0 - 1.0
    } else {
        0.0
    };
    let offset = lifetime * (settings.renew_fraction + settings.renew_jitter * random);
    let offset = offset.clamp(0.0, lifetime * 0.95);
    let at = issued_at + time::Duration::seconds_f64(offset);
    at.replace_nanosecond(0).unwrap_or(at)
}

/// `notAfter` of a certificate.
pub fn certificate_not_after(certificate: &Certificate) -> Result<OffsetDateTime, ServiceError> {
    let system = certificate
        .tbs_certificate()
        .validity()
        .not_after
        .to_system_time();
    Ok(OffsetDateTime::from(system))
}

/// PEM-encodes DER with `label`.
pub fn pem(label: &str, der: &[u8]) -> Result<String, ServiceError> {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        .map_err(|error| ServiceError::Profile(profile::ProfileError::Encoding(error.to_string())))
}

/// Parses DER into a certificate.
pub fn parse_certificate(der: &[u8]) -> Result<Certificate, ServiceError> {
    Certificate::from_der(der)
        .map_err(|error| ServiceError::Profile(profile::ProfileError::Encoding(error.to_string())))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn settings(jitter: f64) -> IssuerSettings {
        IssuerSettings {
            enroll_audience: "https://ca.test/v1/enroll".into(),
            backdate_seconds: 60,
            renew_fraction: 2.0 / 3.0,
            renew_jitter: jitter,
            pending_timeout_seconds: 120,
            crl: CrlSharding {
                base_url: "http://ca.test:8080".into(),
                shards: 16,
                width_seconds: 6 * 3600,
            },
        }
    }

    #[test]
    fn ok_validity_never_exceeds_the_policy_max() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a time");
        let at = |seconds: i64| now + time::Duration::seconds(seconds);
        let window = |ttl, max| validity_window(now, ttl, max, 60).expect("a window");
        // (case, ttl, max, not_before, not_after): seconds from now.
        let cases = [
            (
                "ok_short_ttl_keeps_its_lifetime_ahead",
                3600,
                86_400,
                -60,
                3600,
            ),
            (
                "ok_ttl_at_max_gives_up_the_backdate_at_the_end",
                86_400,
                86_400,
                -60,
                86_340,
            ),
            (
                "ok_ttl_just_under_max_is_clamped_too",
                86_380,
                86_400,
                -60,
                86_340,
            ),
            (
                "ok_policy_under_ten_backdates_loses_a_tenth",
                60,
                60,
                -6,
                54,
            ),
            (
                "ok_ten_minute_policy_keeps_the_full_backdate",
                600,
                600,
                -60,
                540,
            ),
            ("ok_tiny_policy", 12, 12, -1, 11),
        ];
        for (case, ttl, max, not_before, not_after) in cases {
            let got = window(ttl, max);
            assert_eq!(got.not_before, at(not_before), "{case}");
            assert_eq!(got.not_after, Some(at(not_after)), "{case}");
            let lifetime = (got.not_after.expect(case) - got.not_before).whole_seconds();
            assert!(
                lifetime <= i64::try_from(max).expect("small"),
                "{case}: {lifetime}"
            );
        }
        // Beyond what time can hold: no notAfter, the CA path decides.
        let endless = window(u64::MAX, u64::MAX);
        assert_eq!((endless.not_before, endless.not_after), (at(-60), None));
        // A zero backdate is allowed; a negative one is treated as zero.
        let none = validity_window(now, 3600, 86_400, -5).expect("a window");
        assert_eq!(none.not_before, now);
    }

    #[test]
    fn ok_renew_after_is_two_thirds_without_jitter() {
        let start = datetime!(2026-11-25 00:00 UTC);
        let end = start + time::Duration::hours(24);
        assert_eq!(
            renew_after(start, end, &settings(0.0)),
            start + time::Duration::hours(16)
        );
    }

    #[test]
    fn ok_renew_after_ignores_the_backdate_of_short_lifetimes() {
        // 12 s lifetime, 60 s backdate: renewal is due 8 s after issuance,
        // not 12 s before it.
        let issued = datetime!(2026-11-25 00:00 UTC);
        let at = renew_after(issued, issued + time::Duration::seconds(12), &settings(0.0));
        assert_eq!(at, issued + time::Duration::seconds(8));
    }

    #[test]
    fn ok_renew_after_jitter_stays_in_bounds_and_whole_seconds() {
        let start = datetime!(2026-11-25 00:00 UTC);
        let end = start + time::Duration::hours(24);
        for _ in 0..200 {
            let at = renew_after(start, end, &settings(0.1));
            assert!(at >= start + time::Duration::minutes(13 * 60 + 36));
            assert!(at <= start + time::Duration::minutes(18 * 60 + 24));
            assert_eq!(at.nanosecond(), 0);
        }
    }

    #[test]
    fn ok_random_serial_is_positive_and_sixteen_bytes() {
        for _ in 0..200 {
            let serial = random_serial().unwrap();
            assert!(serial[0] >= 1 && serial[0] <= 0x7f);
        }
    }
}
