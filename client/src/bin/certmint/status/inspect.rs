//! The layered usability check behind `certmint status`, as pure code:
//! file contents and a time go in, a [`Report`] comes out.
//!
//! Layers, in order (a layer that needs what an earlier one could not
//! provide is reported as `skip`, never guessed):
//! 1. `files`: key, certificate chain and CA parse; the key file is not
//!    readable by group or others.
//! 2. `key`: the private key matches the leaf's public key (rustls's own
//!    check, the one a handshake would fail on).
//! 3. `chain`: the leaf and the intermediates in the certificate file
//!    verify to a root in the CA file (rustls-webpki, as a peer would
//!    verify them). It is checked at a time inside the leaf's validity so
//!    that dates are reported by their own layer, not as a chain error.
//! 4. `dates`: every certificate is within its validity now; a notBefore in
//!    the future gets a clock-skew hint.
//! 5. `names`: the subjectAltNames a peer will see.
//! 6. `eku`: which side of a mutual TLS connection the certificate can play.
//! 7. `renewal`: when renewal is due (the server's `renew_after` hint from
//!    `meta.json`, else two thirds of the lifetime) and whether it is overdue.
//! 8. `crl`: the CRLs in the agent's `crl.pem`, each verified as the agent
//!    verifies them (signed by a CA of this chain or `ca.pem`); a missing
//!    file, a CRL that does not verify or one past its nextUpdate warns.
//! 9. `revocation`: whether those CRLs list the leaf (or an intermediate):
//!    listed fails; no CRL of the leaf's issuer warns (unknown).
//!
//! Invariants: no I/O and no clock reads here (the caller passes `now`, so
//! tests need no sleeping); no hand-written ASN.1 (x509-cert, rustls and
//! rustls-webpki parse everything); a private key's bytes never reach a
//! detail string.

use std::net::IpAddr;

use certmint::client::trust::{certificates_from_pem, fingerprint, time_within_validity};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyPurposeIdIter, KeyUsage};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode as _;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, ExtendedKeyUsage, SubjectAltName};
use x509_cert::Certificate;

use crate::agent::crl::{check_crl, crls_from_pem, trusted_cas, CheckedCrl};

/// Key mode bits that earn a warning: group write, and any access by others.
const KEY_MODE_TOO_OPEN: u32 = 0o027;
/// id-kp-serverAuth (RFC 5280 §4.2.1.12).
const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
/// id-kp-clientAuth.
const CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// One file as read by the caller.
#[derive(Debug, Clone)]
pub struct FileInput {
    /// How to name the file in messages.
    pub path: String,
    /// Its text, or why it could not be read.
    pub text: Result<String, String>,
    /// Unix permission bits, when known.
    pub mode: Option<u32>,
}

/// `meta.json` as the caller found it.
#[derive(Debug, Clone)]
pub enum MetaInput {
    /// No meta file (explicit paths, or an agent that did not write one).
    Absent,
    /// The file's text, or why it could not be read.
    Present {
        /// How to name the file in messages.
        path: String,
        /// Its text, or why it could not be read.
        text: Result<String, String>,
    },
}

/// Everything `status` looks at.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The private key (PKCS#8 PEM).
    pub key: FileInput,
    /// Leaf, then intermediates (PEM).
    pub certificate: FileInput,
    /// The trust anchors (PEM).
    pub ca: FileInput,
    /// The agent's `meta.json`.
    pub meta: MetaInput,
    /// The agent's `crl.pem`.
    pub crl: CrlInput,
}

/// `crl.pem` as the caller found it.
#[derive(Debug, Clone)]
pub enum CrlInput {
    /// Not asked for (explicit paths without `--crl`).
    NotGiven,
    /// Expected at `path` but not there.
    Absent {
        /// How to name the file in messages.
        path: String,
    },
    /// The file's text, or why it could not be read.
    Present {
        /// How to name the file in messages.
        path: String,
        /// Its text, or why it could not be read.
        text: Result<String, String>,
    },
}

/// One CRL of `crl.pem`, as `--json` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrlReport {
    /// The CRL's issuer (RFC 4514).
    pub issuer: String,
    /// Lower-case hex of its authority key identifier.
    pub issuer_key_id: String,
    /// Shard number (from its distribution point URL).
    pub shard: u32,
    /// CRL number, decimal.
    pub number: String,
    /// thisUpdate.
    #[serde(with = "time::serde::rfc3339")]
    pub this_update: OffsetDateTime,
    /// Seconds since thisUpdate.
    pub age_seconds: i64,
    /// nextUpdate, when it has one.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_update: Option<OffsetDateTime>,
    /// True when nextUpdate has passed.
    pub stale: bool,
    /// How many certificates it lists.
    pub revoked: usize,
    /// Its distribution point URL.
    pub url: Option<String>,
}

/// Which side of mutual TLS the certificate must be able to play.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Either side is fine; a certificate that cannot be a client is a warning.
    Any,
    /// The client side: clientAuth is required.
    Client,
    /// The server side: serverAuth is required.
    Server,
}

/// Outcome of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Usable, but someone should look.
    Warn,
    /// Not usable for mutual TLS.
    Fail,
    /// Not checked: an earlier layer did not provide what this one needs.
    Skip,
}

impl Status {
    /// The word printed in the text report.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One checked layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Layer {
    /// `files`, `key`, `chain`, `dates`, `names`, `eku`, `renewal`.
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// Why, for a person.
    pub detail: String,
}

/// The whole check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// True when no layer failed.
    pub usable: bool,
    /// The leaf certificate's serial, lower-case hex as the server and
    /// `meta.json` write it; `None` when the files could not be parsed.
    pub serial: Option<String>,
    /// Every layer, in check order.
    pub layers: Vec<Layer>,
    /// The CRLs of `crl.pem` that verify, in file order.
    pub crls: Vec<CrlReport>,
}

impl Report {
    /// The layer called `name`.
    #[cfg(test)]
    pub fn layer(&self, name: &str) -> &Layer {
        self.layers
            .iter()
            .find(|layer| layer.name == name)
            .unwrap_or_else(|| panic!("no layer {name}"))
    }
}

/// The agent's `meta.json` fields `status` reads (others are ignored).
#[derive(Debug, Deserialize)]
struct Meta {
    #[serde(default)]
    serial: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    renew_after: Option<OffsetDateTime>,
}

/// Parsed material that later layers share.
struct Parsed {
    key: PrivateKeyDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    leaf: Certificate,
    intermediates: Vec<Certificate>,
    roots_der: Vec<CertificateDer<'static>>,
    roots: Vec<Certificate>,
}

/// Runs every layer at time `now`, requiring `role`.
pub fn inspect(inputs: &Inputs, now: OffsetDateTime, role: Role) -> Report {
    let mut layers = Vec::new();
    let mut crls = Vec::new();
    let parsed = match files_layer(inputs) {
        Ok((parsed, layer)) => {
            layers.push(layer);
            Some(parsed)
        }
        Err(layer) => {
            layers.push(layer);
            None
        }
    };
    match &parsed {
        Some(parsed) => {
            layers.push(key_layer(parsed));
            let verify_at = time_within_validity(&parsed.leaf, now);
            let chain = chain_layer(parsed, verify_at);
            let chain_ok = chain.status == Status::Ok;
            layers.push(chain);
            layers.push(dates_layer(parsed, now));
            layers.push(names_layer(&parsed.leaf));
            layers.push(eku_layer(parsed, chain_ok, verify_at, role));
            layers.push(renewal_layer(&parsed.leaf, &inputs.meta, now));
            let (crl, checked) = crl_layer(inputs, now);
            layers.push(crl);
            layers.push(revocation_layer(parsed, checked.as_deref()));
            crls = checked
                .iter()
                .flatten()
                .map(|crl| crl_report(crl, now))
                .collect();
        }
        None => {
            for name in [
                "key",
                "chain",
                "dates",
                "names",
                "eku",
                "renewal",
                "crl",
                "revocation",
            ] {
                layers.push(Layer {
                    name,
                    status: Status::Skip,
                    detail: "needs readable key, certificate and CA files".into(),
                });
            }
        }
    }
    Report {
        usable: layers.iter().all(|layer| layer.status != Status::Fail),
        serial: parsed.as_ref().map(|parsed| serial_of(&parsed.leaf)),
        layers,
        crls,
    }
}

fn layer(name: &'static str, status: Status, detail: impl Into<String>) -> Layer {
    Layer {
        name,
        status,
        detail: detail.into(),
    }
}

fn files_layer(inputs: &Inputs) -> Result<(Parsed, Layer), Layer> {
    let fail = |detail: String| layer("files", Status::Fail, detail);
    let text = |file: &FileInput| -> Result<String, Layer> {
        file.text
            .clone()
            .map_err(|error| fail(format!("cannot read {}: {error}", file.path)))
    };

    let key_text = text(&inputs.key)?;
    let key = match rustls_pemfile::private_key(&mut key_text.as_bytes()) {
        Ok(Some(key)) => key,
        Ok(None) => return Err(fail(format!("{}: no PEM private key", inputs.key.path))),
        Err(error) => {
            return Err(fail(format!(
                "{}: unreadable PEM private key: {error}",
                inputs.key.path
            )))
        }
    };

    let chain =
        parse_pem_certificates(&inputs.certificate, &text(&inputs.certificate)?).map_err(fail)?;
    let roots_der = parse_pem_certificates(&inputs.ca, &text(&inputs.ca)?).map_err(fail)?;
    let decode = |file: &FileInput, der: &CertificateDer<'_>, index: usize| {
        Certificate::from_der(der.as_ref()).map_err(|error| {
            fail(format!(
                "{}: certificate #{} is not valid X.509: {error}",
                file.path,
                index + 1
            ))
        })
    };
    let mut decoded = Vec::new();
    for (index, der) in chain.iter().enumerate() {
        decoded.push(decode(&inputs.certificate, der, index)?);
    }
    let mut roots = Vec::new();
    for (index, der) in roots_der.iter().enumerate() {
        roots.push(decode(&inputs.ca, der, index)?);
    }
    let mut decoded = decoded.into_iter();
    let Some(leaf) = decoded.next() else {
        return Err(fail(format!("{}: no certificate", inputs.certificate.path)));
    };
    let intermediates: Vec<Certificate> = decoded.collect();

    let mut detail = format!(
        "{}: private key; {}: leaf + {} more; {}: {} CA certificate(s)",
        inputs.key.path,
        inputs.certificate.path,
        intermediates.len(),
        inputs.ca.path,
        roots.len()
    );
    let mut status = Status::Ok;
    // A key file others can read is a leak waiting to happen, but it still
    // works, so it warns rather than fails. Group read is how a workload
    // running as another user reads it (`group` in the agent's settings).
    if let Some(mode) = inputs.key.mode {
        if mode & KEY_MODE_TOO_OPEN != 0 {
            status = Status::Warn;
            detail = format!(
                "{} is readable by others or writable by more than its owner (mode {:04o}): \
                 chmod 600 (or 640 for a group) it; {detail}",
                inputs.key.path,
                mode & 0o7777
            );
        }
    }
    let parsed = Parsed {
        key,
        chain,
        leaf,
        intermediates,
        roots_der,
        roots,
    };
    Ok((parsed, layer("files", status, detail)))
}

fn parse_pem_certificates(
    file: &FileInput,
    text: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates =
        certificates_from_pem(text).map_err(|error| format!("{}: {error}", file.path))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate", file.path));
    }
    Ok(certificates)
}

fn key_layer(parsed: &Parsed) -> Layer {
    use rustls::{Error, InconsistentKeys};
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(
        parsed.chain[..1].to_vec(),
        parsed.key.clone_key(),
        &provider,
    ) {
        Ok(_) => layer(
            "key",
            Status::Ok,
            "the private key matches the leaf certificate's public key",
        ),
        Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => layer(
            "key",
            Status::Fail,
            "the private key does not match the leaf certificate's public key \
             (key and certificate from different enrollments?)",
        ),
        Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => layer(
            "key",
            Status::Warn,
            "cannot tell whether the private key matches the leaf (its public key is not derivable)",
        ),
        Err(error) => layer(
            "key",
            Status::Fail,
            format!("the private key is not usable for TLS: {error}"),
        ),
    }
}

/// Accepts any extended key usage: the chain layer checks the path only;
/// usages are the `eku` layer's business.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _usages: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

fn verify(
    parsed: &Parsed,
    at: UnixTime,
    usage: impl webpki::ExtendedKeyUsageValidator,
) -> Result<(), String> {
    let leaf = EndEntityCert::try_from(&parsed.chain[0])
        .map_err(|error| format!("the leaf is not a usable end-entity certificate: {error}"))?;
    let mut anchors = Vec::new();
    for root in &parsed.roots_der {
        anchors.push(
            webpki::anchor_from_trusted_cert(root).map_err(|error| {
                format!("a CA certificate is not a usable trust anchor: {error}")
            })?,
        );
    }
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &parsed.chain[1..],
        at,
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|error| match error {
        webpki::Error::UnknownIssuer => "UnknownIssuer: the chain does not lead to a root in the \
             CA file (wrong CA file, or the certificate file lacks its intermediate)"
            .to_owned(),
        webpki::Error::InvalidSignatureForPublicKey => {
            "InvalidSignatureForPublicKey: a signature in the chain does not verify with its \
             issuer's key (a CA file with a different CA of the same name?)"
                .to_owned()
        }
        webpki::Error::CaUsedAsEndEntity => {
            "CaUsedAsEndEntity: the leaf is a CA certificate, not a workload certificate".to_owned()
        }
        other => format!("{other}"),
    })
}

fn chain_layer(parsed: &Parsed, at: UnixTime) -> Layer {
    match verify(parsed, at, AnyUsage) {
        Ok(()) => {
            let root = match parsed.roots_der.as_slice() {
                [only] => format!(" {}", fingerprint(only.as_ref())),
                _ => String::new(),
            };
            layer(
                "chain",
                Status::Ok,
                format!(
                    "leaf <- {} intermediate(s) <- root{root}: signatures and constraints verify",
                    parsed.intermediates.len()
                ),
            )
        }
        Err(error) => layer("chain", Status::Fail, error),
    }
}

pub(crate) fn unix(time: x509_cert::time::Time) -> i64 {
    i64::try_from(time.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

pub(crate) fn rfc3339(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{seconds}"))
}

/// `2d 3h`, `5h 10m`, `42m 5s`, `12s`: two units at most.
pub fn human(seconds: i64) -> String {
    let seconds = seconds.unsigned_abs();
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut parts = Vec::new();
    let mut rest = seconds;
    for (name, size) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        } else if !parts.is_empty() {
            // Two adjacent units at most: stop at the first gap.
            break;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

fn dates_layer(parsed: &Parsed, now: OffsetDateTime) -> Layer {
    let now = now.unix_timestamp();
    let validity = parsed.leaf.tbs_certificate().validity();
    let (not_before, not_after) = (unix(validity.not_before), unix(validity.not_after));
    if now < not_before {
        return layer(
            "dates",
            Status::Fail,
            format!(
                "not yet valid: notBefore is {}s in the future ({}): is this host's clock behind?",
                not_before - now,
                rfc3339(not_before)
            ),
        );
    }
    if now > not_after {
        return layer(
            "dates",
            Status::Fail,
            format!(
                "expired {} ago (notAfter {}); if it should not have, is this host's clock ahead?",
                human(now - not_after),
                rfc3339(not_after)
            ),
        );
    }
    // The leaf cannot be used past its issuers' validity either.
    let issuers = parsed
        .intermediates
        .iter()
        .map(|cert| ("intermediate", cert))
        .chain(parsed.roots.iter().map(|cert| ("CA", cert)));
    for (kind, cert) in issuers {
        let validity = cert.tbs_certificate().validity();
        let (start, end) = (unix(validity.not_before), unix(validity.not_after));
        let subject = cert.tbs_certificate().subject();
        if now > end {
            return layer(
                "dates",
                Status::Fail,
                format!("{kind} certificate {subject} expired at {}", rfc3339(end)),
            );
        }
        if now < start {
            return layer(
                "dates",
                Status::Fail,
                format!(
                    "{kind} certificate {subject}: notBefore is {}s in the future: is this host's clock behind?",
                    start - now
                ),
            );
        }
    }
    let lifetime = (not_after - not_before).max(1);
    let left = not_after - now;
    layer(
        "dates",
        Status::Ok,
        format!(
            "valid {} to {}; {} left ({}% of its lifetime)",
            rfc3339(not_before),
            rfc3339(not_after),
            human(left),
            left * 100 / lifetime
        ),
    )
}

fn names_layer(leaf: &Certificate) -> Layer {
    let names = match leaf.tbs_certificate().get_extension::<SubjectAltName>() {
        Ok(Some((_, names))) => names.0,
        Ok(None) => {
            return layer(
                "names",
                Status::Warn,
                "no subjectAltName: peers have no name to check this certificate against",
            )
        }
        Err(error) => {
            return layer(
                "names",
                Status::Fail,
                format!("the subjectAltName extension does not parse: {error}"),
            )
        }
    };
    let parts = san_parts(&names);
    if parts.is_empty() {
        return layer(
            "names",
            Status::Warn,
            "the subjectAltName extension is empty",
        );
    }
    layer("names", Status::Ok, parts.join("; "))
}

/// A subjectAltName as text, one part per kind: `dns: a, b`, `ip: c`,
/// `uri: d`, `N other name(s)`; empty for an empty extension.
pub(crate) fn san_parts(names: &[GeneralName]) -> Vec<String> {
    let (mut dns, mut ip, mut uri, mut other) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
    for name in names {
        match name {
            GeneralName::DnsName(name) => dns.push(name.to_string()),
            GeneralName::UniformResourceIdentifier(name) => uri.push(name.to_string()),
            GeneralName::IpAddress(bytes) => ip.push(ip_text(bytes.as_bytes())),
            _ => other += 1,
        }
    }
    let mut parts = Vec::new();
    for (kind, list) in [("dns", &dns), ("ip", &ip), ("uri", &uri)] {
        if !list.is_empty() {
            parts.push(format!("{kind}: {}", list.join(", ")));
        }
    }
    if other > 0 {
        parts.push(format!("{other} other name(s)"));
    }
    parts
}

fn ip_text(bytes: &[u8]) -> String {
    let address = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    };
    address.map_or_else(|| format!("<{} bytes>", bytes.len()), |ip| ip.to_string())
}

fn eku_layer(parsed: &Parsed, chain_ok: bool, at: UnixTime, role: Role) -> Layer {
    let declared = match parsed
        .leaf
        .tbs_certificate()
        .get_extension::<ExtendedKeyUsage>()
    {
        Ok(found) => found.map(|(_, usages)| usages.0),
        Err(error) => {
            return layer(
                "eku",
                Status::Fail,
                format!("the extendedKeyUsage extension does not parse: {error}"),
            )
        }
    };
    let listed = match &declared {
        None => "no extendedKeyUsage extension (any usage)".to_owned(),
        Some(usages) => usages
            .iter()
            .map(|oid| match *oid {
                CLIENT_AUTH => "clientAuth".to_owned(),
                SERVER_AUTH => "serverAuth".to_owned(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    // With a verified chain, ask the verifier a peer runs; otherwise fall
    // back to what the leaf declares (absent EKU means any usage).
    let (client, server) = if chain_ok {
        (
            verify(parsed, at, KeyUsage::client_auth()).is_ok(),
            verify(parsed, at, KeyUsage::server_auth()).is_ok(),
        )
    } else {
        let has = |oid| declared.as_ref().is_none_or(|usages| usages.contains(&oid));
        (has(CLIENT_AUTH), has(SERVER_AUTH))
    };
    let roles = match (client, server) {
        (true, true) => "can be either side of mutual TLS",
        (true, false) => "can be the client side of mutual TLS, not a TLS server",
        (false, true) => "can be the server side of mutual TLS only: mTLS clients need clientAuth",
        (false, false) => "can be neither side of mutual TLS: needs clientAuth or serverAuth",
    };
    let status = match (role, client, server) {
        (_, false, false) => Status::Fail,
        (Role::Client, false, _) | (Role::Server, _, false) => Status::Fail,
        (Role::Any, false, true) => Status::Warn,
        _ => Status::Ok,
    };
    let required = match role {
        Role::Any => String::new(),
        Role::Client => " (required: client)".to_owned(),
        Role::Server => " (required: server)".to_owned(),
    };
    layer("eku", status, format!("{listed}: {roles}{required}"))
}

/// A certificate's serial as certmint writes it everywhere: the DER
/// integer's bytes, lower-case hex.
fn serial_of(certificate: &Certificate) -> String {
    hex::encode(certificate.tbs_certificate().serial_number().as_bytes())
}

/// Serial numbers compared as numbers: hex, case and leading zeros ignored.
fn same_serial(a: &str, b: &str) -> bool {
    let normal = |text: &str| {
        text.trim()
            .trim_start_matches("0x")
            .replace(':', "")
            .to_ascii_lowercase()
            .trim_start_matches('0')
            .to_owned()
    };
    normal(a) == normal(b)
}

fn renewal_layer(leaf: &Certificate, meta: &MetaInput, now: OffsetDateTime) -> Layer {
    let now = now.unix_timestamp();
    let validity = leaf.tbs_certificate().validity();
    let (not_before, not_after) = (unix(validity.not_before), unix(validity.not_after));
    let two_thirds = not_before + (not_after - not_before).max(0) * 2 / 3;
    let leaf_serial = serial_of(leaf);

    let mut note = String::new();
    let mut status = Status::Ok;
    let (due, source) = match meta {
        MetaInput::Absent => (two_thirds, "two thirds of the lifetime; no meta.json"),
        MetaInput::Present { path, text } => {
            let parsed = text.as_ref().map_err(ToString::to_string).and_then(|text| {
                serde_json::from_str::<Meta>(text).map_err(|error| error.to_string())
            });
            match parsed {
                Err(error) => {
                    status = Status::Warn;
                    note = format!("; {path} is unusable ({error})");
                    (two_thirds, "two thirds of the lifetime")
                }
                Ok(meta) => match (&meta.serial, meta.renew_after) {
                    (Some(serial), _) if !same_serial(serial, &leaf_serial) => {
                        status = Status::Warn;
                        note = format!(
                            "; {path} describes serial {serial}, not this leaf ({leaf_serial}): stale?"
                        );
                        (two_thirds, "two thirds of the lifetime")
                    }
                    (_, Some(renew_after)) => (renew_after.unix_timestamp(), "server hint"),
                    (_, None) => (two_thirds, "two thirds of the lifetime; no renew_after"),
                },
            }
        }
    };
    let detail = if now >= due {
        status = Status::Warn;
        format!(
            "renewal overdue by {} (due {}, {source}): is the agent running?{note}",
            human(now - due),
            rfc3339(due)
        )
    } else {
        format!(
            "renewal due in {} ({}, {source}){note}",
            human(due - now),
            rfc3339(due)
        )
    };
    layer("renewal", status, detail)
}

/// The `crl` layer, and the CRLs that verified (`None` when there is no
/// file to read).
fn crl_layer(inputs: &Inputs, now: OffsetDateTime) -> (Layer, Option<Vec<CheckedCrl>>) {
    let (path, text) = match &inputs.crl {
        CrlInput::NotGiven => {
            return (
                layer("crl", Status::Skip, "no CRL file given (--crl FILE)"),
                None,
            )
        }
        CrlInput::Absent { path } => {
            return (
                layer(
                    "crl",
                    Status::Warn,
                    format!(
                        "{path} is absent: revocation is unknown (is the agent running, \
                         and new enough to write it?)"
                    ),
                ),
                None,
            )
        }
        CrlInput::Present { path, text } => (path, text),
    };
    let text = match text {
        Ok(text) => text,
        Err(error) => {
            return (
                layer("crl", Status::Warn, format!("cannot read {path}: {error}")),
                None,
            )
        }
    };
    let cas = trusted_cas(
        inputs.certificate.text.as_deref().ok(),
        inputs.ca.text.as_deref().unwrap_or_default(),
        now,
    );
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    let blocks = crls_from_pem(text);
    for (index, der) in blocks.iter().enumerate() {
        match check_crl(der, &cas) {
            Ok(crl) => checked.push(crl),
            Err(refusal) => problems.push(format!("CRL #{} does not verify: {refusal}", index + 1)),
        }
    }
    for crl in &checked {
        if let Some(next_update) = crl.next_update.filter(|next| *next < now) {
            problems.push(format!(
                "the CRL of {} shard {} (number {}) is past its nextUpdate by {}: is the agent \
                 reaching the server?",
                crl.issuer,
                crl.shard(),
                crl.number_text(),
                human((now - next_update).whole_seconds())
            ));
        }
    }
    if blocks.is_empty() {
        problems.push(format!("{path} holds no CRL"));
    }
    let summary = match checked.iter().map(|crl| crl.this_update).max() {
        Some(newest) => format!(
            "{path}: {} CRL(s) verify; newest thisUpdate {} ago",
            checked.len(),
            human((now - newest).whole_seconds())
        ),
        None => format!("{path}: no CRL verifies"),
    };
    let status = if problems.is_empty() {
        Status::Ok
    } else {
        Status::Warn
    };
    let detail = if problems.is_empty() {
        summary
    } else {
        format!("{}; {summary}", problems.join("; "))
    };
    (layer("crl", status, detail), Some(checked))
}

/// The `revocation` layer: is the leaf, or a CA certificate of its chain,
/// listed by its issuer's CRLs?
fn revocation_layer(parsed: &Parsed, crls: Option<&[CheckedCrl]>) -> Layer {
    let Some(crls) = crls else {
        return layer("revocation", Status::Skip, "needs crl.pem");
    };
    let certificates = std::iter::once(("the certificate", &parsed.leaf)).chain(
        parsed
            .intermediates
            .iter()
            .map(|ca| ("the intermediate", ca)),
    );
    let mut leaf_covered = 0;
    for (index, (what, certificate)) in certificates.enumerate() {
        let tbs = certificate.tbs_certificate();
        let key_id = tbs
            .get_extension::<AuthorityKeyIdentifier>()
            .ok()
            .flatten()
            .and_then(|(_, aki)| aki.key_identifier)
            .map(|id| hex::encode(id.as_bytes()));
        let issuer = tbs.issuer().to_string();
        // By key id when the certificate names one, else by issuer name:
        // either way the CRL itself verified under a trusted CA.
        let by_issuer: Vec<&CheckedCrl> = crls
            .iter()
            .filter(|crl| match &key_id {
                Some(key_id) => &crl.issuer_key_id == key_id,
                None => crl.issuer == issuer,
            })
            .collect();
        if index == 0 {
            leaf_covered = by_issuer.len();
        }
        let serial = tbs.serial_number().as_bytes();
        for crl in by_issuer {
            if let Some(entry) = crl.entry(serial) {
                let reason = entry
                    .reason
                    .as_deref()
                    .map(|reason| format!(", reason {reason}"))
                    .unwrap_or_default();
                return layer(
                    "revocation",
                    Status::Fail,
                    format!(
                        "{what} {} ({}) is REVOKED: listed by the CRL of {issuer} shard {} \
                         (number {}) since {}{reason}",
                        hex::encode(serial),
                        tbs.subject(),
                        crl.shard(),
                        crl.number_text(),
                        rfc3339(entry.revoked_at.unix_timestamp())
                    ),
                );
            }
        }
    }
    let leaf_issuer = parsed.leaf.tbs_certificate().issuer();
    if leaf_covered == 0 {
        return layer(
            "revocation",
            Status::Warn,
            format!("no CRL of the issuer {leaf_issuer} in crl.pem: revocation is unknown"),
        );
    }
    layer(
        "revocation",
        Status::Ok,
        format!(
            "serial {} is not listed by the {leaf_covered} CRL(s) of {leaf_issuer}",
            serial_of(&parsed.leaf)
        ),
    )
}

fn crl_report(crl: &CheckedCrl, now: OffsetDateTime) -> CrlReport {
    CrlReport {
        issuer: crl.issuer.clone(),
        issuer_key_id: crl.issuer_key_id.clone(),
        shard: crl.shard(),
        number: crl.number_text(),
        this_update: crl.this_update,
        age_seconds: (now - crl.this_update).whole_seconds(),
        next_update: crl.next_update,
        stale: crl.next_update.is_some_and(|next| next < now),
        revoked: crl.revoked.len(),
        url: crl.url.clone(),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };
    use time::Duration;

    use super::*;

    /// A root, an intermediate and a leaf, like a certmint CA issues them.
    struct Pki {
        root_pem: String,
        intermediate_pem: String,
        leaf_pem: String,
        leaf_key_pem: String,
        leaf_serial: String,
        root_issuer: Issuer<'static, KeyPair>,
        intermediate_issuer: Issuer<'static, KeyPair>,
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = OffsetDateTime::now_utc() - Duration::days(30);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(365);
        params
    }

    fn pki_with(leaf: impl FnOnce(&mut CertificateParams)) -> Pki {
        pki_named("test root", leaf)
    }

    fn pki_named(root_name: &str, leaf: impl FnOnce(&mut CertificateParams)) -> Pki {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params(root_name);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);

        let intermediate_key = KeyPair::generate().unwrap();
        let intermediate_params = ca_params("test intermediate");
        let intermediate = intermediate_params
            .signed_by(&intermediate_key, &root_issuer)
            .unwrap();
        let intermediate_issuer = Issuer::new(intermediate_params, intermediate_key);

        let leaf_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["web.test".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("10.0.0.7".parse().unwrap()));
        params
            .subject_alt_names
            .push(SanType::URI("spiffe://test/ns/web".try_into().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::hours(23);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
        leaf(&mut params);
        let serial = params
            .serial_number
            .as_ref()
            .map(|serial| hex::encode(serial.to_bytes()))
            .unwrap_or_default();
        let leaf_cert = params.signed_by(&leaf_key, &intermediate_issuer).unwrap();
        Pki {
            root_pem: root.pem(),
            intermediate_pem: intermediate.pem(),
            leaf_pem: leaf_cert.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
            leaf_serial: serial,
            root_issuer,
            intermediate_issuer,
        }
    }

    fn file(path: &str, text: &str, mode: Option<u32>) -> FileInput {
        FileInput {
            path: path.into(),
            text: Ok(text.into()),
            mode,
        }
    }

    fn inputs(pki: &Pki) -> Inputs {
        Inputs {
            key: file("key.pem", &pki.leaf_key_pem, Some(0o600)),
            certificate: file(
                "cert.pem",
                &format!("{}{}", pki.leaf_pem, pki.intermediate_pem),
                Some(0o644),
            ),
            ca: file("ca.pem", &pki.root_pem, Some(0o644)),
            meta: MetaInput::Absent,
            crl: CrlInput::NotGiven,
        }
    }

    /// A CRL signed by `issuer`, listing `serials`, valid from `this_update`
    /// for an hour.
    fn crl_pem(
        issuer: &Issuer<'_, KeyPair>,
        serials: &[&[u8]],
        this_update: OffsetDateTime,
    ) -> String {
        let der = rcgen::CertificateRevocationListParams {
            this_update,
            next_update: this_update + Duration::hours(1),
            crl_number: rcgen::SerialNumber::from(3u64),
            issuing_distribution_point: Some(rcgen::CrlIssuingDistributionPoint {
                distribution_point: rcgen::CrlDistributionPoint {
                    uris: vec!["http://ca.test:8080/crl/ab/2.crl".into()],
                },
                scope: None,
            }),
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(serial),
                    revocation_time: this_update,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .der()
        .to_vec();
        certmint::client::trust::pem_block("X509 CRL", &der)
    }

    fn with_crl(pki: &Pki, text: String) -> Inputs {
        Inputs {
            crl: CrlInput::Present {
                path: "crl.pem".into(),
                text: Ok(text),
            },
            ..inputs(pki)
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[track_caller]
    fn assert_status(report: &Report, name: &str, status: Status) {
        assert_eq!(
            report.layer(name).status,
            status,
            "layer {name}: {:#?}",
            report.layers
        );
    }

    #[test]
    fn fail_a_leaf_listed_by_its_issuers_crl_is_revoked() {
        let pki = pki_with(|_| {});
        let crl = crl_pem(&pki.intermediate_issuer, &[&[0x0a, 0xbc]], now());
        let report = inspect(&with_crl(&pki, crl), now(), Role::Client);
        assert_status(&report, "crl", Status::Ok);
        assert_status(&report, "revocation", Status::Fail);
        assert!(!report.usable);
        let detail = &report.layer("revocation").detail;
        assert!(
            detail.contains("0abc") && detail.contains("keyCompromise"),
            "{detail}"
        );
        assert_eq!(report.crls.len(), 1);
        assert_eq!(report.crls[0].shard, 2);
        assert_eq!(report.crls[0].number, "3");
        assert_eq!(report.crls[0].revoked, 1);
    }

    #[test]
    fn ok_a_leaf_its_issuers_crl_does_not_list() {
        let pki = pki_with(|_| {});
        let crl = crl_pem(&pki.intermediate_issuer, &[&[0x0a, 0xbd]], now());
        let report = inspect(&with_crl(&pki, crl), now(), Role::Client);
        assert_status(&report, "crl", Status::Ok);
        assert_status(&report, "revocation", Status::Ok);
        assert!(report.usable, "{report:#?}");
        assert!(!report.crls[0].stale);
    }

    #[test]
    fn fail_an_intermediate_listed_by_the_roots_crl() {
        let pki = pki_with(|_| {});
        let intermediate = Certificate::from_der(
            certificates_from_pem(&pki.intermediate_pem).unwrap()[0].as_ref(),
        )
        .unwrap();
        let serial = intermediate
            .tbs_certificate()
            .serial_number()
            .as_bytes()
            .to_vec();
        let text = crl_pem(&pki.intermediate_issuer, &[], now())
            + &crl_pem(&pki.root_issuer, &[&serial], now());
        let report = inspect(&with_crl(&pki, text), now(), Role::Client);
        assert_status(&report, "revocation", Status::Fail);
        assert!(report.layer("revocation").detail.contains("intermediate"));
        assert_eq!(report.crls.len(), 2);
    }

    #[test]
    fn warn_crl_absent_forged_or_past_next_update() {
        let pki = pki_with(|_| {});
        let absent = Inputs {
            crl: CrlInput::Absent {
                path: "out/crl.pem".into(),
            },
            ..inputs(&pki)
        };
        let report = inspect(&absent, now(), Role::Client);
        assert_status(&report, "crl", Status::Warn);
        assert_status(&report, "revocation", Status::Skip);
        assert!(report.usable);

        // Listed by a CRL from a key nobody trusts: not believed.
        let other = pki_with(|_| {});
        let forged = crl_pem(&other.intermediate_issuer, &[&[0x0a, 0xbc]], now());
        let report = inspect(&with_crl(&pki, forged), now(), Role::Client);
        assert_status(&report, "crl", Status::Warn);
        assert!(report.layer("crl").detail.contains("does not verify"));
        assert_status(&report, "revocation", Status::Warn);
        assert!(report.usable);
        assert!(report.crls.is_empty());

        let stale = crl_pem(&pki.intermediate_issuer, &[], now() - Duration::hours(3));
        let report = inspect(&with_crl(&pki, stale), now(), Role::Client);
        assert_status(&report, "crl", Status::Warn);
        assert!(report.layer("crl").detail.contains("past its nextUpdate"));
        assert!(report.crls[0].stale);
        assert!(report.crls[0].age_seconds >= 3 * 3600);
    }

    #[test]
    fn ok_fresh_certificate_is_usable_in_every_layer() {
        let pki = pki_with(|_| {});
        let report = inspect(&inputs(&pki), now(), Role::Client);
        assert!(report.usable, "{report:#?}");
        for name in ["files", "key", "chain", "dates", "names", "eku", "renewal"] {
            assert_status(&report, name, Status::Ok);
        }
        let names = &report.layer("names").detail;
        assert!(names.contains("dns: web.test"), "{names}");
        assert!(names.contains("ip: 10.0.0.7"), "{names}");
        assert!(names.contains("uri: spiffe://test/ns/web"), "{names}");
        assert_eq!(report.serial.as_deref(), Some(pki.leaf_serial.as_str()));
    }

    #[test]
    fn fail_mismatched_key() {
        let pki = pki_with(|_| {});
        let mut inputs = inputs(&pki);
        inputs.key.text = Ok(KeyPair::generate().unwrap().serialize_pem());
        let report = inspect(&inputs, now(), Role::Any);
        assert!(!report.usable);
        assert_status(&report, "key", Status::Fail);
        assert_status(&report, "chain", Status::Ok);
    }

    #[test]
    fn fail_expired_certificate() {
        let pki = pki_with(|params| {
            params.not_before = now() - Duration::days(2);
            params.not_after = now() - Duration::hours(3);
        });
        let report = inspect(&inputs(&pki), now(), Role::Any);
        assert!(!report.usable);
        assert_status(&report, "dates", Status::Fail);
        assert!(report.layer("dates").detail.starts_with("expired 3h"));
        // The path itself is fine: the chain layer does not blame dates.
        assert_status(&report, "chain", Status::Ok);
        assert_status(&report, "renewal", Status::Warn);
    }

    #[test]
    fn fail_not_yet_valid_with_a_clock_skew_hint() {
        let pki = pki_with(|params| {
            params.not_before = now() + Duration::seconds(300);
            params.not_after = now() + Duration::days(1);
        });
        let at = now();
        let report = inspect(&inputs(&pki), at, Role::Any);
        assert!(!report.usable);
        assert_status(&report, "dates", Status::Fail);
        let detail = &report.layer("dates").detail;
        assert!(detail.contains("clock behind"), "{detail}");
        assert!(
            detail.contains("notBefore is 300s in the future")
                || detail.contains("notBefore is 299s in the future"),
            "{detail}"
        );
    }

    #[test]
    fn fail_wrong_root() {
        let pki = pki_with(|_| {});
        let other = pki_named("another root", |_| {});
        let mut inputs = inputs(&pki);
        inputs.ca.text = Ok(other.root_pem.clone());
        let report = inspect(&inputs, now(), Role::Any);
        assert!(!report.usable);
        assert_status(&report, "chain", Status::Fail);
        let detail = &report.layer("chain").detail;
        assert!(detail.starts_with("UnknownIssuer"), "{detail}");
    }

    #[test]
    fn fail_root_with_the_same_name_but_another_key() {
        let pki = pki_with(|_| {});
        let impostor = pki_with(|_| {});
        let mut inputs = inputs(&pki);
        inputs.ca.text = Ok(impostor.root_pem.clone());
        let report = inspect(&inputs, now(), Role::Any);
        assert_status(&report, "chain", Status::Fail);
        let detail = &report.layer("chain").detail;
        assert!(
            detail.starts_with("InvalidSignatureForPublicKey"),
            "{detail}"
        );
    }

    #[test]
    fn fail_missing_intermediate() {
        let pki = pki_with(|_| {});
        let mut inputs = inputs(&pki);
        inputs.certificate.text = Ok(pki.leaf_pem.clone());
        let report = inspect(&inputs, now(), Role::Any);
        assert_status(&report, "chain", Status::Fail);
    }

    #[test]
    fn warn_or_fail_without_client_auth_depending_on_the_role() {
        let pki = pki_with(|params| {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        let report = inspect(&inputs(&pki), now(), Role::Any);
        assert!(report.usable);
        assert_status(&report, "eku", Status::Warn);
        assert!(report.layer("eku").detail.contains("serverAuth"));

        let report = inspect(&inputs(&pki), now(), Role::Client);
        assert!(!report.usable);
        assert_status(&report, "eku", Status::Fail);

        let report = inspect(&inputs(&pki), now(), Role::Server);
        assert_status(&report, "eku", Status::Ok);
    }

    #[test]
    fn fail_neither_client_nor_server_auth() {
        let pki = pki_with(|params| {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        });
        let report = inspect(&inputs(&pki), now(), Role::Any);
        assert_status(&report, "eku", Status::Fail);
    }

    #[test]
    fn ok_group_readable_key_warn_group_writable_key() {
        let pki = pki_with(|_| {});
        let mut inputs = inputs(&pki);
        inputs.key.mode = Some(0o640);
        let report = inspect(&inputs, now(), Role::Any);
        assert_status(&report, "files", Status::Ok);
        inputs.key.mode = Some(0o660);
        let report = inspect(&inputs, now(), Role::Any);
        assert_status(&report, "files", Status::Warn);
        assert!(report.layer("files").detail.contains("0660"));
    }

    #[test]
    fn warn_world_readable_key() {
        let pki = pki_with(|_| {});
        let mut inputs = inputs(&pki);
        inputs.key.mode = Some(0o644);
        let report = inspect(&inputs, now(), Role::Any);
        assert!(report.usable);
        assert_status(&report, "files", Status::Warn);
        assert!(report.layer("files").detail.contains("0644"));
    }

    #[test]
    fn fail_unreadable_or_garbage_files_skip_the_rest() {
        let pki = pki_with(|_| {});
        let mut unreadable = inputs(&pki);
        unreadable.key.text = Err("Permission denied".into());
        let report = inspect(&unreadable, now(), Role::Any);
        assert_status(&report, "files", Status::Fail);
        assert_status(&report, "key", Status::Skip);
        assert!(!report.usable);

        let mut garbage = inputs(&pki);
        garbage.ca.text = Ok("not pem".into());
        assert_status(&inspect(&garbage, now(), Role::Any), "files", Status::Fail);
    }

    #[test]
    fn ok_renewal_uses_the_server_hint_and_reports_overdue() {
        let pki = pki_with(|_| {});
        let mut inputs = inputs(&pki);
        let hint = now() + Duration::hours(2);
        inputs.meta = MetaInput::Present {
            path: "meta.json".into(),
            text: Ok(serde_json::json!({
                "serial": pki.leaf_serial,
                "renew_after": hint.format(&time::format_description::well_known::Rfc3339).unwrap(),
            })
            .to_string()),
        };
        let report = inspect(&inputs, now(), Role::Any);
        assert_status(&report, "renewal", Status::Ok);
        let detail = &report.layer("renewal").detail;
        assert!(detail.contains("server hint"), "{detail}");
        assert!(
            detail.contains("due in 1h 59m") || detail.contains("due in 2h"),
            "{detail}"
        );

        let report = inspect(&inputs, now() + Duration::hours(3), Role::Any);
        assert_status(&report, "renewal", Status::Warn);
        assert!(report.layer("renewal").detail.contains("overdue"));
    }

    #[test]
    fn warn_meta_for_another_serial() {
        let pki = pki_with(|_| {});
        let mut inputs = inputs(&pki);
        inputs.meta = MetaInput::Present {
            path: "meta.json".into(),
            text: Ok(r#"{"serial":"ffff","renew_after":"2020-01-01T00:00:00Z"}"#.into()),
        };
        let report = inspect(&inputs, now(), Role::Any);
        assert_status(&report, "renewal", Status::Warn);
        assert!(report.layer("renewal").detail.contains("stale"));
        assert!(report.usable);
    }

    #[test]
    fn ok_human_durations() {
        assert_eq!(human(0), "0s");
        assert_eq!(human(12), "12s");
        assert_eq!(human(3_725), "1h 2m");
        assert_eq!(human(86_400 * 2 + 3_600 * 3 + 5), "2d 3h");
        assert_eq!(human(86_400 + 30), "1d");
        assert_eq!(human(-90), "1m 30s");
    }
}
