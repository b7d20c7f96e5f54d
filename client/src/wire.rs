//! Request and response bodies of the certmint REST API (v1).
//!
//! Invariants: times are RFC 3339 UTC on the wire; durations are
//! [`Duration`] strings; every list response carries an opaque `next`
//! cursor that is absent on the last page. Optional input fields default to
//! empty so that older clients keep working when fields are added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::duration::Duration;
use crate::problem::ProblemCode;

/// API version string served in the directory.
pub const API_VERSION: &str = "v1";

/// `GET /v1/directory`: where everything is, and which CA answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// `v1`.
    pub api_version: String,
    /// Endpoint name to absolute path, e.g. `"enroll" -> "/v1/enroll"`.
    pub endpoints: BTreeMap<String, String>,
    /// The issuing CA.
    pub ca: CaInfo,
    /// The `aud` every bootstrap token must carry (`<public_url>/v1/enroll`):
    /// what a provisioner puts in the tokens it signs. Absent from servers
    /// older than provisioners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_audience: Option<String>,
}

/// Public facts about the CA that signs enrollments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaInfo {
    /// `sha256:<hex>` of the root certificate's DER: pin this on first contact.
    pub root_fingerprint: String,
    /// Subject of the issuing (intermediate) certificate, RFC 4514 string.
    pub issuer_subject: String,
    /// Key type of the issuing key (`ec-p256`, …).
    pub issuer_key_type: String,
    /// End of the issuing certificate's validity; no leaf outlives it.
    #[serde(with = "time::serde::rfc3339")]
    pub issuer_not_after: OffsetDateTime,
}

/// The SANs a request asks for, or a token binds (exact names or patterns).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// DNS names (or, in a token, DNS patterns narrower than the policy's).
    #[serde(default)]
    pub dns: Vec<String>,
    /// IP addresses (or, in a token, CIDR ranges).
    #[serde(default)]
    pub ip: Vec<String>,
    /// URIs (or, in a token, URI patterns).
    #[serde(default)]
    pub uri: Vec<String>,
}

impl Identity {
    /// True when no name of any kind is present.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ip.is_empty() && self.uri.is_empty()
    }

    /// True when `other` holds the same exact names: DNS case-insensitively,
    /// IPs by value, URIs as certificates carry them ([`canonical_uri`]);
    /// order and duplicates do not matter. Meant for exact names (a
    /// request, a certificate), not for a token's patterns.
    pub fn same_names(&self, other: &Identity) -> bool {
        self.canonical() == other.canonical()
    }

    /// A short human list for log lines and summaries: `dns:a,b ip:c`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (kind, list) in [("dns", &self.dns), ("ip", &self.ip), ("uri", &self.uri)] {
            if !list.is_empty() {
                parts.push(format!("{kind}:{}", list.join(",")));
            }
        }
        parts.join(" ")
    }

    fn canonical(&self) -> [Vec<String>; 3] {
        let mut dns: Vec<String> = self.dns.iter().map(|n| n.to_ascii_lowercase()).collect();
        let mut ip: Vec<String> = self
            .ip
            .iter()
            .map(|a| {
                a.parse::<std::net::IpAddr>()
                    .map_or_else(|_| a.clone(), |ip| ip.to_string())
            })
            .collect();
        let mut uri: Vec<String> = self.uri.iter().map(|u| canonical_uri(u)).collect();
        for list in [&mut dns, &mut ip, &mut uri] {
            list.sort();
            list.dedup();
        }
        [dns, ip, uri]
    }
}

/// A URI SAN in the form certificates carry it and names compare: scheme
/// and host lower-cased, a port as its plain number, the path as written.
/// The server puts exactly this form in certificates (after validating the
/// URI); the agent compares configured and issued URIs by it. Anything not
/// shaped `scheme://host[:port][/path]` is returned as written.
pub fn canonical_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(port) => (host, format!(":{port}")),
            Err(_) => return uri.to_owned(),
        },
        None => (authority, String::new()),
    };
    format!(
        "{}://{}{port}{path}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    )
}

/// `POST /v1/enroll` body. Its `Debug` form leaves the token out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// PKCS#10 CSR, PEM (`-----BEGIN CERTIFICATE REQUEST-----`).
    pub csr: String,
    /// The bootstrap token (a JWT).
    pub token: String,
    /// Requested lifetime; the policy default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// What a `Debug` form shows instead of a bearer credential.
pub const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("csr", &self.csr)
            .field("token", &REDACTED)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// `POST /v1/renew` body. The caller authenticates with the certificate it
/// holds (mutual TLS); the new certificate keeps that certificate's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// PKCS#10 CSR, PEM, for a fresh key; its SANs must equal the names of
    /// the certificate presented in the TLS handshake.
    pub csr: String,
    /// Requested lifetime; the policy default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// `201` body of `POST /v1/enroll` and `POST /v1/renew`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateBundle {
    /// Lower-case hex serial number.
    pub serial: String,
    /// The leaf certificate, PEM.
    pub certificate_pem: String,
    /// Issuing chain up to and including the root, PEM, leaf excluded.
    pub chain_pem: String,
    /// Start of validity (backdated by the configured skew allowance).
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// When the holder should renew (the server's hint, ARI-style).
    #[serde(with = "time::serde::rfc3339")]
    pub renew_after: OffsetDateTime,
    /// Policy that allowed the certificate.
    pub policy: String,
    /// Version of that policy.
    pub policy_version: i64,
}

/// Names a policy allows, as patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedNames {
    /// DNS patterns: `*` is exactly one label.
    #[serde(default)]
    pub dns: Vec<String>,
    /// CIDR ranges (a bare address means a single host).
    #[serde(default)]
    pub ip: Vec<String>,
    /// URI patterns: `*` is exactly one path segment (or host label).
    #[serde(default)]
    pub uri: Vec<String>,
}

/// Certificate lifetime bounds of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlBounds {
    /// Lifetime when the request names none.
    pub default: Duration,
    /// Longest lifetime a request may ask for.
    pub max: Duration,
}

/// Renewal rules of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalRules {
    /// Whether holders may renew over mTLS.
    #[serde(default = "default_true")]
    pub allowed: bool,
    /// Longest time since first enrollment a renewal chain may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chain_age: Option<Duration>,
}

impl Default for RenewalRules {
    fn default() -> Self {
        Self {
            allowed: true,
            max_chain_age: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// A policy as written by an administrator (`POST`/`PUT /v1/admin/policies`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    /// Unique name: lower-case letters, digits and `-`, 1–63 characters.
    pub name: String,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// Name patterns certificates may carry.
    #[serde(default)]
    pub allowed: AllowedNames,
    /// Key types a CSR may use: `ec-p256`, `ec-p384`, `ed25519`, `rsa-2048`, `rsa-3072`, `rsa-4096`.
    pub key_types: Vec<String>,
    /// Lifetime bounds.
    pub ttl: TtlBounds,
    /// `client_auth`, `server_auth`.
    pub extended_key_usage: Vec<String>,
    /// Renewal rules.
    #[serde(default)]
    pub renewal: RenewalRules,
    /// Whether `*.example.com` may appear in a certificate.
    #[serde(default)]
    pub allow_wildcard_certificates: bool,
    /// Disabled policies issue nothing.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// A stored policy version (`GET /v1/admin/policies/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The policy as written.
    #[serde(flatten)]
    pub spec: PolicySpec,
    /// Version number, 1 for the first; each replace adds one.
    pub version: i64,
    /// When this version was written.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A page of items with an opaque cursor for the next page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items on this page.
    pub items: Vec<T>,
    /// Pass as `?cursor=` to read the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `POST /v1/admin/policies/{name}/evaluate` body: a dry run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluateRequest {
    /// PKCS#10 CSR, PEM.
    pub csr: String,
    /// Identity a token would bind; when absent only the policy is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Requested lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// Outcome of a policy evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Everything requested is allowed.
    Allow,
    /// At least one check failed; see `refusals`.
    Deny,
}

/// One refused name (or other requested property) and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRefusal {
    /// The refused value as requested (a name, a key type, a TTL).
    pub name: String,
    /// `dns`, `ip`, `uri`, `key_type`, `ttl`, `policy`.
    pub kind: String,
    /// Stable code for this refusal.
    pub code: ProblemCode,
    /// Human explanation.
    pub reason: String,
}

/// `200` body of an evaluation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluateResponse {
    /// allow or deny.
    pub decision: Verdict,
    /// Policy version evaluated.
    pub policy_version: i64,
    /// Every reason for a deny; empty on allow.
    pub refusals: Vec<NameRefusal>,
}

/// `POST /v1/admin/tokens` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintTokenRequest {
    /// Policy the token enrolls under.
    pub policy: String,
    /// Names (or narrower patterns) the holder may request.
    pub identity: Identity,
    /// Token lifetime; default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// How many enrollments the token allows; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
}

/// `201` body of `POST /v1/admin/tokens`. The JWT is shown only here (and
/// never in its `Debug` form).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedToken {
    /// Token id (also the JWT's `jti`).
    pub id: String,
    /// The bootstrap JWT: give it to exactly one workload.
    pub token: String,
    /// When the token stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Enrollments allowed.
    pub max_uses: u32,
    /// Policy bound.
    pub policy: String,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("id", &self.id)
            .field("token", &REDACTED)
            .field("expires_at", &self.expires_at)
            .field("max_uses", &self.max_uses)
            .field("policy", &self.policy)
            .finish()
    }
}

/// `POST /v1/admin/provisioners`: register an external token issuer. An
/// orchestrator keeps the private key and signs bootstrap tokens itself;
/// the server verifies them with `public_key_pem`. Unknown fields are
/// refused: a misspelt `max_token_ttl` must not silently become the default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProvisioner {
    /// Unique name; the `iss` claim of its tokens.
    pub name: String,
    /// The public key, SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC
    /// KEY-----`): P-256 (tokens signed ES256), P-384 (ES384) or Ed25519
    /// (EdDSA).
    pub public_key_pem: String,
    /// Policies its tokens may enroll under (each must exist).
    pub policies: Vec<String>,
    /// Longest lifetime (`exp - iat`) of a token; default 5m, at most 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_ttl: Option<Duration>,
}

/// A registered provisioner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionerInfo {
    /// Name, and `iss` of its tokens.
    pub name: String,
    /// The one JWS algorithm its tokens may use (from the key type).
    pub algorithm: String,
    /// The `kid` its tokens may carry: hex SHA-256 of the
    /// SubjectPublicKeyInfo DER, first 12 bytes.
    pub key_id: String,
    /// The public key, SubjectPublicKeyInfo PEM.
    pub public_key_pem: String,
    /// Policies its tokens may enroll under.
    pub policies: Vec<String>,
    /// Longest token lifetime accepted.
    pub max_token_ttl: Duration,
    /// Registration time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who registered it.
    pub created_by: String,
    /// When it was disabled; its tokens are refused from then on.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub disabled_at: Option<OffsetDateTime>,
}

/// A bootstrap token as listed (never with the JWT itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Token id.
    pub id: String,
    /// Policy bound.
    pub policy: String,
    /// Identity bound.
    pub identity: Identity,
    /// Enrollments allowed.
    pub max_uses: u32,
    /// Enrollments done.
    pub uses: u32,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Mint time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Revocation time, when revoked.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked_at: Option<OffsetDateTime>,
}

/// Lifecycle state of an issued certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateStatus {
    /// Recorded, sent to the HSM, not yet confirmed (or the signer failed).
    Pending,
    /// Issued and valid (possibly expired: see `not_after`).
    Issued,
    /// Revoked.
    Revoked,
    /// Signing failed; no certificate exists for this serial.
    Failed,
}

/// RFC 5280 §5.3.1 revocation reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// unspecified (0).
    Unspecified,
    /// keyCompromise (1).
    KeyCompromise,
    /// cACompromise (2).
    CaCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4).
    Superseded,
    /// cessationOfOperation (5).
    CessationOfOperation,
    /// certificateHold (6) is deliberately absent: holds are not supported.
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, in CRLReason order.
    pub const ALL: [RevocationReason; 7] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::CaCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::PrivilegeWithdrawn,
    ];

    /// The wire name (`key_compromise`, …), as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key_compromise",
            Self::CaCompromise => "ca_compromise",
            Self::AffiliationChanged => "affiliation_changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation_of_operation",
            Self::PrivilegeWithdrawn => "privilege_withdrawn",
        }
    }

    /// The RFC 5280 CRLReason number.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::CaCompromise => 2,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::PrivilegeWithdrawn => 9,
        }
    }
}

/// Which certificates a CRL covers (its Issuing Distribution Point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrlScope {
    /// Leaf certificates of an issuing CA (`onlyContainsUserCerts`).
    UserCerts,
    /// CA certificates signed by a root (`onlyContainsCACerts`).
    CaCerts,
}

/// `GET /v1/crls`: the latest CRL of every shard of every issuer this server
/// signs for. Every replica on one database answers the same list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlIndex {
    /// One entry per (issuer, shard), issuer then shard order.
    pub crls: Vec<CrlSummary>,
}

/// One current CRL, as listed by `GET /v1/crls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlSummary {
    /// Lower-case hex of the issuer's subject key identifier: the CRL's
    /// authority key identifier, and the path segment of its URL.
    pub issuer_key_id: String,
    /// The issuer's subject, RFC 4514 string.
    pub issuer_subject: String,
    /// Shard number within the issuer.
    pub shard: u32,
    /// What the CRL covers.
    pub scope: CrlScope,
    /// The CRL number (strictly increasing per issuer, across replicas).
    pub number: u64,
    /// thisUpdate.
    #[serde(with = "time::serde::rfc3339")]
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    #[serde(with = "time::serde::rfc3339")]
    pub next_update: OffsetDateTime,
    /// How many certificates it lists.
    pub revoked: u64,
    /// Server-relative path of the DER CRL, e.g. `/crl/<issuer_key_id>/3.crl`,
    /// served on the HTTPS API and on the plain-HTTP CRL listener.
    pub path: String,
    /// The distribution point URL the CRL and its certificates carry.
    pub url: String,
    /// `sha256:<hex>` of the DER: also the strong `ETag` of `path`
    /// (quoted there), so a client computes it from the CRL it holds.
    pub sha256: String,
}

/// `POST /v1/admin/certificates/{serial}/revoke` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// Why; `unspecified` when absent.
    #[serde(default = "default_reason")]
    pub reason: RevocationReason,
    /// When the key is known or suspected to have been compromised (the
    /// CRL entry's invalidityDate); only with `key_compromise`, and not in
    /// the future.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub invalidity_date: Option<OffsetDateTime>,
}

fn default_reason() -> RevocationReason {
    RevocationReason::Unspecified
}

/// A certificate in the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// Lower-case hex serial.
    pub serial: String,
    /// Lifecycle state.
    pub status: CertificateStatus,
    /// Policy that allowed it.
    pub policy: String,
    /// Version of that policy.
    pub policy_version: i64,
    /// Names in the certificate.
    pub identity: Identity,
    /// Key type of the subject key.
    pub key_type: String,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Bootstrap token used, for enrollments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Serial of the certificate this one renewed, for renewals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predecessor: Option<String>,
    /// When recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Revocation time.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked_at: Option<OffsetDateTime>,
    /// Revocation reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<RevocationReason>,
    /// The certificate, PEM (present once issued; only on single reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
}

/// One audit event; `hash` chains over `prev_hash` and the event's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `policy.created`, `token.minted`, `certificate.signing`, …
    pub kind: String,
    /// Who: `admin:<subject>`, `token:<id>`, `system`.
    pub actor: String,
    /// What it is about: a policy name, token id or serial.
    pub subject: String,
    /// Event details (never secrets).
    pub data: serde_json::Value,
    /// Hash of the previous event, hex (all zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this event's canonical fields, hex.
    pub hash: String,
}

/// Subject key types certmint knows, by their wire names.
///
/// One spelling each, everywhere: the wire name exactly, lower case
/// (`ec-p256`, `ec-p384`, `ed25519`, `rsa-2048`, `rsa-3072`, `rsa-4096`).
/// JSON (serde), [`KeyType::parse`] and [`FromStr`](std::str::FromStr)
/// (command lines, config files) all accept exactly these and nothing else:
/// no aliases such as `p256`, no other case, no surrounding blanks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KeyType {
    /// ECDSA on NIST P-256.
    #[serde(rename = "ec-p256")]
    EcP256,
    /// ECDSA on NIST P-384.
    #[serde(rename = "ec-p384")]
    EcP384,
    /// Ed25519.
    #[serde(rename = "ed25519")]
    Ed25519,
    /// RSA with a 2048-bit modulus.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyType {
    /// Every key type, in a stable order.
    pub const ALL: [KeyType; 6] = [
        KeyType::EcP256,
        KeyType::EcP384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    /// The wire name, e.g. `ec-p256`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    /// Parses a wire name, exactly as [`KeyType::as_str`] spells it.
    pub fn parse(name: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyType {
    type Err = UnknownKeyType;

    /// The same rule as [`KeyType::parse`] and serde: the wire name exactly.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        KeyType::parse(name).ok_or_else(|| UnknownKeyType(name.to_owned()))
    }
}

/// A string that is not the wire name of a [`KeyType`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a key type; expected one of ec-p256, ec-p384, ed25519, rsa-2048, rsa-3072, rsa-4096"
)]
pub struct UnknownKeyType(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_reason_names_are_the_serde_names() {
        for reason in RevocationReason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }

    #[test]
    fn ok_key_types_parse_by_their_wire_names_only() {
        for key_type in KeyType::ALL {
            let name = key_type.as_str();
            assert_eq!(name.parse::<KeyType>(), Ok(key_type));
            assert_eq!(KeyType::parse(name), Some(key_type));
            assert_eq!(serde_json::to_value(key_type).unwrap(), name);
            assert_eq!(
                serde_json::from_value::<KeyType>(name.into()).unwrap(),
                key_type
            );
        }
        // One rule for every reader: no aliases, no other case, no blanks.
        for alias in [
            "p256",
            "ecdsa-p256",
            "EC-P256",
            " ec-p256",
            "rsa",
            "rsa2048",
            "",
        ] {
            assert_eq!(
                alias.parse::<KeyType>(),
                Err(UnknownKeyType(alias.to_owned())),
                "{alias:?}"
            );
            assert_eq!(KeyType::parse(alias), None, "{alias:?}");
            assert!(
                serde_json::from_value::<KeyType>(alias.into()).is_err(),
                "{alias:?}"
            );
        }
    }

    #[test]
    fn ok_same_names_ignores_case_order_and_ip_spelling() {
        let one = Identity {
            dns: vec!["B.test".into(), "a.test".into()],
            ip: vec!["::1".into()],
            uri: vec![],
        };
        let two = Identity {
            dns: vec!["a.test".into(), "b.test".into()],
            ip: vec!["0:0:0:0:0:0:0:1".into()],
            uri: vec![],
        };
        assert!(one.same_names(&two));
        let three = Identity {
            dns: vec!["a.test".into()],
            ..Identity::default()
        };
        assert!(!one.same_names(&three));
        assert_eq!(one.summary(), "dns:B.test,a.test ip:::1");
    }

    #[test]
    fn ok_same_names_compares_uris_as_certificates_carry_them() {
        let configured = Identity {
            uri: vec![
                "SPIFFE://Prod.Example.ORG/ns/Payments/sa/api".into(),
                "https://API.example.com:0443/v1".into(),
            ],
            ..Identity::default()
        };
        let issued = Identity {
            uri: vec![
                "spiffe://prod.example.org/ns/Payments/sa/api".into(),
                "https://api.example.com:443/v1".into(),
            ],
            ..Identity::default()
        };
        assert!(configured.same_names(&issued));
        let other_path = Identity {
            uri: vec![
                "spiffe://prod.example.org/ns/payments/sa/api".into(),
                "https://api.example.com:443/v1".into(),
            ],
            ..Identity::default()
        };
        assert!(!configured.same_names(&other_path), "paths compare exactly");
    }

    #[test]
    fn debug_forms_never_show_a_bootstrap_token() {
        let jwt = "eyJhbGciOiJFZERTQSJ9.secret-claims.secret-signature";
        let request = EnrollRequest {
            csr: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            token: jwt.into(),
            ttl: None,
        };
        let minted = MintedToken {
            id: "0123".into(),
            token: jwt.into(),
            expires_at: OffsetDateTime::UNIX_EPOCH,
            max_uses: 1,
            policy: "p".into(),
        };
        for shown in [format!("{request:?}"), format!("{minted:?}")] {
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }
}
