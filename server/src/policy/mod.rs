//! Issuance policies: compile an administrator's [`PolicySpec`] into a
//! checked [`CompiledPolicy`], and decide whether a verified request may be
//! issued under it.
//!
//! # Job
//!
//! - [`CompiledPolicy::compile`] validates a spec and lists *every* problem
//!   it finds ([`PolicyError::Invalid`]), so an administrator fixes a policy
//!   in one round trip.
//! - [`evaluate`] decides a request (the CSR's names, key type, requested
//!   lifetime and, for enrollment, the token's identity):
//!   [`Decision::Allow`] with the lifetime to issue, or [`Decision::Deny`]
//!   with one [`NameRefusal`] per refused name or property, each with a
//!   stable [`ProblemCode`]. The `/evaluate` dry run and real enrollment
//!   call the same function and return the same value.
//! - [`CompiledPolicy::check_identity_within`] decides whether a bootstrap
//!   token may bind an identity: every entry must be within the policy.
//!
//! # Matching rules
//!
//! - DNS: compared in lower case. `*` in a pattern is exactly one whole
//!   label and never matches a dot; it may stand anywhere but the rightmost
//!   label (`*.example.com`, `api.*.example.com`; `a*.example.com` is
//!   refused). A requested `*.foo.example.com` is a wildcard certificate: it
//!   needs `allow_wildcard_certificates` *and* a pattern with `*` in that
//!   position, and must leave at least two labels under the `*`
//!   (`*.internal` is refused as invalid). Names must be LDH (letters,
//!   digits, `-`), labels 1–63 characters, at most 253 in all, no empty
//!   label, no trailing dot, at least two labels, not an IP address, the
//!   rightmost label not all-numeric, and `--` in positions 3–4 only as the
//!   `xn--` punycode prefix. An `xn--` label must be canonical IDNA: it
//!   decodes, passes UTS #46 processing (STD3 rules, hyphen and joiner
//!   checks; the `idna` crate), and encodes back to itself.
//! - IP: policy and token entries are CIDR ranges (a bare address is one
//!   host); an IPv4-mapped IPv6 address is compared as the IPv4 address.
//! - URI: see the `uri` submodule: a strict `scheme://host[:port]/path`
//!   shape, scheme and host case-insensitive, path case-sensitive, `*` one
//!   whole path segment or host label, no userinfo, query, fragment,
//!   percent-encoding or dot segments; ports compare exactly (an explicit
//!   default port is not the same as none).
//! - Token identities hold exact names or patterns; a pattern `*` label
//!   covers a requested `*` label, so a token pattern `*.svc.example` also
//!   lets its holder ask for the wildcard certificate `*.svc.example` when
//!   the policy allows wildcard certificates.
//!
//! # Invariants
//!
//! - A [`CompiledPolicy`] exists only if its spec passed every check: at
//!   least one allowed name, at least one key type and extended key usage,
//!   `ttl.default <= ttl.max`.
//! - [`evaluate`] reports every refusal, not the first: a disabled policy
//!   gives exactly one refusal and nothing else; otherwise it reports a
//!   request without names, then each refused DNS name, IP address and URI
//!   in request order, then the key type, then the lifetime. A name outside
//!   both the token's identity and the policy gets both refusals, the
//!   token's ([`ProblemCode::TokenNameNotAllowed`]) first. A name that is
//!   invalid, or a wildcard the policy does not allow, gets that one
//!   refusal only.
//! - Anything malformed fails closed: a malformed token identity entry
//!   matches nothing.
//! - Requested names are judged as the CSR wrote them; the certificate
//!   should carry the lower-cased DNS form ([`canonical_dns_name`]).
//!   Duplicate requested names are not this module's concern.
//!
//! # Never
//!
//! No I/O, no clock, no HTTP status, no logging of decisions (the caller
//! logs once at its boundary), no panics on any input.

mod dns;
mod ip;
mod uri;

use std::net::IpAddr;

use certmint::wire::{Identity, KeyType, NameRefusal, PolicySpec, Verdict};
use certmint::{Duration, ProblemCode};
use ipnet::IpNet;

use self::dns::DnsName;
use self::uri::UriName;

/// `NameRefusal::kind` of a DNS name.
const KIND_DNS: &str = "dns";
/// `NameRefusal::kind` of an IP address or range.
const KIND_IP: &str = "ip";
/// `NameRefusal::kind` of a URI.
const KIND_URI: &str = "uri";
/// `NameRefusal::kind` of the key type.
const KIND_KEY_TYPE: &str = "key_type";
/// `NameRefusal::kind` of the lifetime.
const KIND_TTL: &str = "ttl";
/// `NameRefusal::kind` of the policy (or request) as a whole.
const KIND_POLICY: &str = "policy";

/// Longest policy name.
const MAX_POLICY_NAME_LEN: usize = 63;

/// Name recorded as the "policy" of the server's own TLS certificates;
/// administrators cannot create a policy of that name.
pub const SERVER_POLICY_NAME: &str = "certmint-server-tls";

/// A policy that passed validation, ready to evaluate requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    name: String,
    version: i64,
    enabled: bool,
    dns: Vec<DnsName>,
    ip: Vec<IpNet>,
    uri: Vec<UriName>,
    key_types: Vec<KeyType>,
    ttl_default: u64,
    ttl_max: u64,
    extended_key_usages: Vec<ExtendedKeyUsage>,
    allow_wildcard_certificates: bool,
    renewal_allowed: bool,
    max_chain_age: Option<u64>,
}

impl CompiledPolicy {
    /// Validates `spec` and compiles it as version `version` (the store's
    /// number; not checked here).
    ///
    /// Every problem found is listed in [`PolicyError::Invalid`], each
    /// prefixed with the field it concerns (`allowed.dns[2] "a*.example"`).
    pub fn compile(spec: &PolicySpec, version: i64) -> Result<CompiledPolicy, PolicyError> {
        let mut problems = Vec::new();

        if let Err(problem) = validate_policy_name(&spec.name) {
            problems.push(format!("name {:?}: {problem}", spec.name));
        }

        let allowed = &spec.allowed;
        if allowed.dns.is_empty() && allowed.ip.is_empty() && allowed.uri.is_empty() {
            problems.push("allowed: at least one dns, ip or uri entry is required".to_owned());
        }
        let dns = collect(&allowed.dns, "allowed.dns", &mut problems, |entry| {
            DnsName::parse(entry, dns::Mode::Pattern).map_err(|error| error.to_string())
        });
        let ip = collect(&allowed.ip, "allowed.ip", &mut problems, |entry| {
            ip::parse_range(entry).map_err(|error| error.to_string())
        });
        let uri = collect(&allowed.uri, "allowed.uri", &mut problems, |entry| {
            UriName::parse(entry, uri::Mode::Pattern).map_err(|error| error.to_string())
        });

        if spec.key_types.is_empty() {
            problems.push("key_types: at least one key type is required".to_owned());
        }
        let mut key_types = collect(&spec.key_types, "key_types", &mut problems, |entry| {
            KeyType::parse(entry).ok_or_else(|| {
                let known: Vec<&str> = KeyType::ALL.iter().map(|kind| kind.as_str()).collect();
                format!("is not a known key type ({})", known.join(", "))
            })
        });
        dedup_in_order(&mut key_types);

        if spec.extended_key_usage.is_empty() {
            problems.push("extended_key_usage: at least one usage is required".to_owned());
        }
        let mut extended_key_usages = collect(
            &spec.extended_key_usage,
            "extended_key_usage",
            &mut problems,
            |entry| {
                ExtendedKeyUsage::parse(entry)
                    .ok_or_else(|| "is not client_auth or server_auth".to_owned())
            },
        );
        dedup_in_order(&mut extended_key_usages);

        if spec.ttl.default > spec.ttl.max {
            problems.push(format!(
                "ttl: default {} is longer than max {}",
                spec.ttl.default, spec.ttl.max
            ));
        }

        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }
        Ok(CompiledPolicy {
            name: spec.name.clone(),
            version,
            enabled: spec.enabled,
            dns,
            ip,
            uri,
            key_types,
            ttl_default: spec.ttl.default.as_seconds(),
            ttl_max: spec.ttl.max.as_seconds(),
            extended_key_usages,
            allow_wildcard_certificates: spec.allow_wildcard_certificates,
            renewal_allowed: spec.renewal.allowed,
            max_chain_age: spec.renewal.max_chain_age.map(|age| age.as_seconds()),
        })
    }

    /// [`CompiledPolicy::compile`] plus the rules only a new version must
    /// meet: what administrators write through the API. Versions stored
    /// before a rule existed still load with `compile`.
    ///
    /// - The name is not [`SERVER_POLICY_NAME`], which the server's own TLS
    ///   certificates are recorded under.
    /// - Renewal needs `client_auth`: a holder renews by presenting its
    ///   certificate as a TLS client certificate, and a certificate without
    ///   clientAuth fails that handshake (with a bare TLS alert, no problem
    ///   document), so such a policy would issue certificates that can never
    ///   renew nor revoke themselves.
    pub fn compile_new_version(
        spec: &PolicySpec,
        version: i64,
    ) -> Result<CompiledPolicy, PolicyError> {
        let mut problems = Vec::new();
        if spec.name == SERVER_POLICY_NAME {
            problems.push(format!(
                "name {SERVER_POLICY_NAME:?}: is reserved for the server's own TLS certificates"
            ));
        }
        let client_auth = spec
            .extended_key_usage
            .iter()
            .any(|usage| ExtendedKeyUsage::parse(usage) == Some(ExtendedKeyUsage::ClientAuth));
        if spec.renewal.allowed && !client_auth {
            problems.push(
                "renewal.allowed: holders renew over mutual TLS, which needs client_auth in \
                 extended_key_usage; add client_auth or set renewal.allowed = false"
                    .to_owned(),
            );
        }
        match CompiledPolicy::compile(spec, version) {
            Ok(compiled) if problems.is_empty() => Ok(compiled),
            Ok(_) => Err(PolicyError::Invalid(problems)),
            Err(PolicyError::Invalid(mut found)) => {
                found.append(&mut problems);
                Err(PolicyError::Invalid(found))
            }
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy version this value was compiled from.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Whether the policy issues anything at all.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Extended key usages every certificate under this policy carries.
    pub fn extended_key_usages(&self) -> &[ExtendedKeyUsage] {
        &self.extended_key_usages
    }

    /// Lifetime in seconds when the request names none (never above [`Self::ttl_max`]).
    pub fn ttl_default(&self) -> u64 {
        self.ttl_default
    }

    /// Longest lifetime in seconds a request may ask for.
    pub fn ttl_max(&self) -> u64 {
        self.ttl_max
    }

    /// Key types a CSR may use.
    pub fn key_types(&self) -> &[KeyType] {
        &self.key_types
    }

    /// Whether wildcard certificates (`*.example.com`) may be issued.
    pub fn allows_wildcard_certificates(&self) -> bool {
        self.allow_wildcard_certificates
    }

    /// Whether holders may renew over mTLS.
    pub fn renewal_allowed(&self) -> bool {
        self.renewal_allowed
    }

    /// Longest time in seconds since first enrollment a renewal chain may
    /// run, when limited.
    pub fn max_chain_age(&self) -> Option<u64> {
        self.max_chain_age
    }

    /// The DNS patterns, lower-cased.
    pub fn dns_patterns(&self) -> impl Iterator<Item = &str> {
        self.dns.iter().map(DnsName::as_str)
    }

    /// The IP ranges, IPv4-mapped ranges written as IPv4.
    pub fn ip_ranges(&self) -> &[IpNet] {
        &self.ip
    }

    /// The URI patterns, scheme and host lower-cased.
    pub fn uri_patterns(&self) -> impl Iterator<Item = &str> {
        self.uri.iter().map(UriName::as_str)
    }

    /// Decides whether a bootstrap token may bind `identity` under this
    /// policy: every entry (exact name or pattern, address or CIDR range)
    /// must be within the policy, that is a DNS or URI pattern equal to or
    /// narrower than some policy pattern, or a range inside some policy
    /// range.
    ///
    /// Refuses each offending entry with
    /// [`ProblemCode::PolicyIdentityOutsidePolicy`], or
    /// [`ProblemCode::PolicyInvalidName`] when malformed, and an empty
    /// identity with one `policy` refusal
    /// ([`ProblemCode::PolicyIdentityOutsidePolicy`]): a token must bind at
    /// least one name. Does not look at [`Self::is_enabled`]: whether tokens
    /// may be minted for a disabled policy is the caller's decision. The
    /// `Allow` lifetime is the policy default, for completeness.
    pub fn check_identity_within(&self, identity: &Identity) -> Decision {
        let mut refusals = Vec::new();
        if identity.is_empty() {
            refusals.push(refusal(
                "",
                KIND_POLICY,
                ProblemCode::PolicyIdentityOutsidePolicy,
                "the identity names nothing; a token must bind at least one name or pattern",
            ));
        }
        for entry in &identity.dns {
            match DnsName::parse(entry, dns::Mode::Pattern) {
                Err(error) => refusals.push(invalid(entry, KIND_DNS, &error)),
                Ok(pattern) if !self.dns.iter().any(|policy| policy.covers(&pattern)) => {
                    refusals.push(self.outside(entry, KIND_DNS, "dns pattern"));
                }
                Ok(_) => {}
            }
        }
        for entry in &identity.ip {
            match ip::parse_range(entry) {
                Err(error) => refusals.push(invalid(entry, KIND_IP, &error)),
                Ok(range)
                    if !self
                        .ip
                        .iter()
                        .any(|policy| ip::range_within(policy, &range)) =>
                {
                    refusals.push(self.outside(entry, KIND_IP, "ip range"));
                }
                Ok(_) => {}
            }
        }
        for entry in &identity.uri {
            match UriName::parse(entry, uri::Mode::Pattern) {
                Err(error) => refusals.push(invalid(entry, KIND_URI, &error)),
                Ok(pattern) if !self.uri.iter().any(|policy| policy.covers(&pattern)) => {
                    refusals.push(self.outside(entry, KIND_URI, "uri pattern"));
                }
                Ok(_) => {}
            }
        }
        Decision::from_refusals(refusals, self.ttl_default)
    }

    /// Refusal of a token identity entry wider than the policy.
    fn outside(&self, entry: &str, kind: &str, what: &str) -> NameRefusal {
        refusal(
            entry,
            kind,
            ProblemCode::PolicyIdentityOutsidePolicy,
            format!(
                "{entry:?} is not within any {what} of policy {} (version {})",
                self.name, self.version
            ),
        )
    }
}

/// An extended key usage a policy puts in its certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ExtendedKeyUsage {
    /// TLS client authentication (`client_auth`, id-kp-clientAuth).
    ClientAuth,
    /// TLS server authentication (`server_auth`, id-kp-serverAuth).
    ServerAuth,
}

impl ExtendedKeyUsage {
    /// The wire name: `client_auth` or `server_auth`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtendedKeyUsage::ClientAuth => "client_auth",
            ExtendedKeyUsage::ServerAuth => "server_auth",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn parse(name: &str) -> Option<ExtendedKeyUsage> {
        match name {
            "client_auth" => Some(ExtendedKeyUsage::ClientAuth),
            "server_auth" => Some(ExtendedKeyUsage::ServerAuth),
            _ => None,
        }
    }
}

impl std::fmt::Display for ExtendedKeyUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The subjectAltNames a CSR asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestedNames {
    /// DNS names, as written in the CSR.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ip: Vec<IpAddr>,
    /// URIs, as written in the CSR.
    pub uri: Vec<String>,
}

impl RequestedNames {
    /// True when no name of any kind is requested.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ip.is_empty() && self.uri.is_empty()
    }
}

/// A verified request to decide: the CSR's names and key type, the
/// requested lifetime, and the identity the token binds (enrollment only).
#[derive(Clone, Copy, Debug)]
pub struct IssuanceRequest<'a> {
    /// The subjectAltNames asked for.
    pub names: &'a RequestedNames,
    /// The CSR's key type.
    pub key_type: KeyType,
    /// Requested lifetime in seconds; the policy default when `None`.
    pub ttl: Option<u64>,
    /// The identity a bootstrap token binds; `None` when no token is
    /// involved (renewal, a dry run without identity).
    pub token_identity: Option<&'a Identity>,
}

/// The outcome of a policy decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Everything requested may be issued, with this lifetime.
    Allow {
        /// Lifetime to issue, in seconds: the requested one or the default.
        ttl_seconds: u64,
    },
    /// At least one check failed; every refusal is listed (never empty).
    Deny(Vec<NameRefusal>),
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The refusals of a deny; empty for an allow.
    pub fn refusals(&self) -> &[NameRefusal] {
        match self {
            Decision::Allow { .. } => &[],
            Decision::Deny(refusals) => refusals,
        }
    }

    /// The wire verdict.
    pub fn verdict(&self) -> Verdict {
        match self {
            Decision::Allow { .. } => Verdict::Allow,
            Decision::Deny(_) => Verdict::Deny,
        }
    }

    /// `Allow` when nothing was refused.
    fn from_refusals(refusals: Vec<NameRefusal>, ttl_seconds: u64) -> Decision {
        if refusals.is_empty() {
            Decision::Allow { ttl_seconds }
        } else {
            Decision::Deny(refusals)
        }
    }
}

/// Why a policy spec could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The spec breaks one or more rules; each entry names the field and the
    /// problem.
    #[error("policy is invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// A name from a path, query or token that breaks the naming rule, so no
/// policy can have it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no policy {name:?}: {reason}")]
pub struct NoSuchPolicyName {
    /// The name given.
    pub name: String,
    /// The rule it breaks.
    pub reason: String,
}

/// A policy name from a path, query, body or token. Names that fail the
/// naming rule cannot exist, so they are reported as not found before they
/// reach the database (PostgreSQL, for one, refuses NUL bytes in text).
pub fn existing_policy_name(name: &str) -> Result<&str, NoSuchPolicyName> {
    validate_policy_name(name).map_err(|reason| NoSuchPolicyName {
        name: name.to_owned(),
        reason,
    })?;
    Ok(name)
}

/// Decides `request` under `policy`, collecting every refusal.
///
/// Order of checks and of refusals (see the module doc): a disabled policy
/// refuses alone ([`ProblemCode::PolicyDisabled`]); otherwise no names
/// ([`ProblemCode::CsrNoNames`]), then each DNS name, IP address and URI
/// (invalid [`ProblemCode::PolicyInvalidName`]; a wildcard without
/// permission [`ProblemCode::PolicyWildcardNotAllowed`]; outside the token
/// identity [`ProblemCode::TokenNameNotAllowed`]; outside the policy
/// [`ProblemCode::PolicyNameNotAllowed`], both when both apply), then the
/// key type ([`ProblemCode::PolicyKeyTypeNotAllowed`]), then the lifetime
/// ([`ProblemCode::PolicyTtlExceedsMax`], or [`ProblemCode::RequestMalformed`]
/// for a zero lifetime, which the wire's durations cannot express).
pub fn evaluate(policy: &CompiledPolicy, request: &IssuanceRequest) -> Decision {
    if !policy.enabled {
        return Decision::Deny(vec![refusal(
            &policy.name,
            KIND_POLICY,
            ProblemCode::PolicyDisabled,
            format!("policy {} is disabled and issues nothing", policy.name),
        )]);
    }
    let mut refusals = Vec::new();
    let names = request.names;
    if names.is_empty() {
        refusals.push(refusal(
            "",
            KIND_POLICY,
            ProblemCode::CsrNoNames,
            "the request names nothing: no DNS name, IP address or URI",
        ));
    }

    let token = request.token_identity.map(TokenIdentity::parse);
    for name in &names.dns {
        check_dns(policy, token.as_ref(), name, &mut refusals);
    }
    for addr in &names.ip {
        check_ip(policy, token.as_ref(), *addr, &mut refusals);
    }
    for name in &names.uri {
        check_uri(policy, token.as_ref(), name, &mut refusals);
    }

    if !policy.key_types.contains(&request.key_type) {
        let allowed: Vec<&str> = policy.key_types.iter().map(|kind| kind.as_str()).collect();
        refusals.push(refusal(
            request.key_type.as_str(),
            KIND_KEY_TYPE,
            ProblemCode::PolicyKeyTypeNotAllowed,
            format!(
                "key type {} is not allowed by policy {}; allowed: {}",
                request.key_type,
                policy.name,
                allowed.join(", ")
            ),
        ));
    }

    let ttl_seconds = request.ttl.unwrap_or(policy.ttl_default);
    match request.ttl {
        Some(0) => refusals.push(refusal(
            "0s",
            KIND_TTL,
            ProblemCode::RequestMalformed,
            "a requested lifetime must be longer than zero",
        )),
        Some(ttl) if ttl > policy.ttl_max => refusals.push(refusal(
            &display_seconds(ttl),
            KIND_TTL,
            ProblemCode::PolicyTtlExceedsMax,
            format!(
                "requested lifetime {} exceeds the maximum {} of policy {}",
                display_seconds(ttl),
                display_seconds(policy.ttl_max),
                policy.name
            ),
        )),
        _ => {}
    }

    Decision::from_refusals(refusals, ttl_seconds)
}

/// Checks a policy name: 1–63 characters of `[a-z0-9-]`, not starting or
/// ending with `-`. The error says what is wrong.
pub fn validate_policy_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if name.len() > MAX_POLICY_NAME_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_POLICY_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may hold only lower-case letters, digits and '-'".to_owned());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not start or end with '-'".to_owned());
    }
    Ok(())
}

/// Validates and lower-cases a requested DNS name the way [`evaluate`]
/// does, so the certificate carries the same form the policy approved.
/// A wildcard (`*.example.com`) is accepted here; whether it may be issued
/// is [`evaluate`]'s decision.
pub fn canonical_dns_name(name: &str) -> Result<String, String> {
    DnsName::parse(name, dns::Mode::Requested)
        .map(|parsed| parsed.as_str().to_owned())
        .map_err(|error| error.to_string())
}

/// Validates a requested URI the way [`evaluate`] does and returns the form
/// it approves: scheme and host lower-cased, the port as a plain number.
/// The certificate must carry this form: `SPIFFE://Prod.Example.ORG/…` is
/// allowed by a policy for `spiffe://prod.example.org/…` but is not a valid
/// SPIFFE ID as written.
pub fn canonical_uri_name(name: &str) -> Result<String, String> {
    UriName::parse(name, uri::Mode::Requested)
        .map(|parsed| parsed.as_str().to_owned())
        .map_err(|error| error.to_string())
}

/// A token identity parsed for matching. Malformed entries are dropped, so
/// they match nothing (minting refuses them anyway).
struct TokenIdentity {
    dns: Vec<DnsName>,
    ip: Vec<IpNet>,
    uri: Vec<UriName>,
}

impl TokenIdentity {
    fn parse(identity: &Identity) -> TokenIdentity {
        TokenIdentity {
            dns: identity
                .dns
                .iter()
                .filter_map(|entry| DnsName::parse(entry, dns::Mode::Pattern).ok())
                .collect(),
            ip: identity
                .ip
                .iter()
                .filter_map(|entry| ip::parse_range(entry).ok())
                .collect(),
            uri: identity
                .uri
                .iter()
                .filter_map(|entry| UriName::parse(entry, uri::Mode::Pattern).ok())
                .collect(),
        }
    }
}

/// Checks one requested DNS name.
fn check_dns(
    policy: &CompiledPolicy,
    token: Option<&TokenIdentity>,
    name: &str,
    refusals: &mut Vec<NameRefusal>,
) {
    let parsed = match DnsName::parse(name, dns::Mode::Requested) {
        Ok(parsed) => parsed,
        Err(error) => return refusals.push(invalid(name, KIND_DNS, &error)),
    };
    if parsed.is_wildcard() && !policy.allow_wildcard_certificates {
        return refusals.push(refusal(
            name,
            KIND_DNS,
            ProblemCode::PolicyWildcardNotAllowed,
            format!(
                "{name:?} is a wildcard certificate name; policy {} does not allow wildcard certificates",
                policy.name
            ),
        ));
    }
    if let Some(token) = token {
        if !token.dns.iter().any(|pattern| pattern.covers(&parsed)) {
            refusals.push(token_refusal(name, KIND_DNS));
        }
    }
    if !policy.dns.iter().any(|pattern| pattern.covers(&parsed)) {
        refusals.push(policy_refusal(policy, name, KIND_DNS, "dns pattern"));
    }
}

/// Checks one requested IP address.
fn check_ip(
    policy: &CompiledPolicy,
    token: Option<&TokenIdentity>,
    addr: IpAddr,
    refusals: &mut Vec<NameRefusal>,
) {
    let name = addr.to_string();
    if let Some(token) = token {
        if !token.ip.iter().any(|range| ip::range_contains(range, addr)) {
            refusals.push(token_refusal(&name, KIND_IP));
        }
    }
    if !policy
        .ip
        .iter()
        .any(|range| ip::range_contains(range, addr))
    {
        refusals.push(policy_refusal(policy, &name, KIND_IP, "ip range"));
    }
}

/// Checks one requested URI.
fn check_uri(
    policy: &CompiledPolicy,
    token: Option<&TokenIdentity>,
    name: &str,
    refusals: &mut Vec<NameRefusal>,
) {
    let parsed = match UriName::parse(name, uri::Mode::Requested) {
        Ok(parsed) => parsed,
        Err(error) => return refusals.push(invalid(name, KIND_URI, &error)),
    };
    if let Some(token) = token {
        if !token.uri.iter().any(|pattern| pattern.covers(&parsed)) {
            refusals.push(token_refusal(name, KIND_URI));
        }
    }
    if !policy.uri.iter().any(|pattern| pattern.covers(&parsed)) {
        refusals.push(policy_refusal(policy, name, KIND_URI, "uri pattern"));
    }
}

/// Builds a refusal.
fn refusal(name: &str, kind: &str, code: ProblemCode, reason: impl Into<String>) -> NameRefusal {
    NameRefusal {
        name: name.to_owned(),
        kind: kind.to_owned(),
        code,
        reason: reason.into(),
    }
}

/// Refusal of a malformed name or entry.
fn invalid(name: &str, kind: &str, error: &dyn std::fmt::Display) -> NameRefusal {
    refusal(
        name,
        kind,
        ProblemCode::PolicyInvalidName,
        format!("{name:?} {error}"),
    )
}

/// Refusal of a name outside the token's identity.
fn token_refusal(name: &str, kind: &str) -> NameRefusal {
    refusal(
        name,
        kind,
        ProblemCode::TokenNameNotAllowed,
        format!("{name:?} is outside the identity the bootstrap token binds"),
    )
}

/// Refusal of a name outside the policy.
fn policy_refusal(policy: &CompiledPolicy, name: &str, kind: &str, what: &str) -> NameRefusal {
    refusal(
        name,
        kind,
        ProblemCode::PolicyNameNotAllowed,
        format!(
            "{name:?} is not covered by any {what} of policy {} (version {})",
            policy.name, policy.version
        ),
    )
}

/// Parses every entry of `entries`, recording a problem per bad one.
fn collect<T>(
    entries: &[String],
    field: &str,
    problems: &mut Vec<String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<T> {
    let mut parsed = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        match parse(entry) {
            Ok(value) => parsed.push(value),
            Err(problem) => problems.push(format!("{field}[{index}] {entry:?}: {problem}")),
        }
    }
    parsed
}

/// Removes later duplicates, keeping the first occurrence's position.
fn dedup_in_order<T: PartialEq>(items: &mut Vec<T>) {
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in items.drain(..) {
        if !kept.contains(&item) {
            kept.push(item);
        }
    }
    *items = kept;
}

/// `72h`-style rendering of a number of seconds.
fn display_seconds(seconds: u64) -> String {
    Duration::from_seconds(seconds).map_or_else(|| format!("{seconds}s"), |d| d.to_string())
}

#[cfg(test)]
mod tests;
