//! The HTTP side of the harness: whom a request authenticates as
//! ([`Auth`], [`Holder`]), what it carries ([`RequestBody`]), what came back
//! ([`Response`]), and the check every response passes
//! ([`assert_well_formed`]).
//!
//! Invariants: every client trusts the server's `root.pem` only (never the
//! system store) and uses ring; a [`Response`] keeps the body both as text
//! and as JSON, so a failing assertion can always print what was sent and
//! what came back. Problem assertions compare the `code`, never the
//! `detail`.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::verify::pem_chain;

/// Per-request timeout of the HTTP client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Whom a request authenticates as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth<'a> {
    /// No `Authorization` header.
    None,
    /// An `admin` role admin token.
    Admin,
    /// An `auditor` role admin token.
    Auditor,
    /// `Authorization: Bearer <this>`, whatever it is.
    Bearer(&'a str),
    /// No `Authorization` header; the TLS handshake presents this holder's
    /// client certificate ([`TestServer::holder`]).
    Holder(&'a Holder),
}

/// A TLS client with a client certificate (mutual TLS).
#[derive(Clone, Debug)]
pub struct Holder {
    pub(crate) client: reqwest::blocking::Client,
    pub(crate) description: String,
}

/// Holders compare by the certificate they present (for `Auth`'s derives).
impl PartialEq for Holder {
    fn eq(&self, other: &Self) -> bool {
        self.description == other.description
    }
}

impl Eq for Holder {}

/// A response, with the body kept both as text and (when it parses) JSON.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` header, empty when absent.
    pub content_type: String,
    /// `Retry-After` header, when present.
    pub retry_after: Option<String>,
    /// Body as text.
    pub text: String,
    /// Body as JSON, `Null` when it is not JSON.
    pub body: Value,
    /// What was sent, for failure messages.
    pub request: String,
}

impl Response {
    /// The problem `code`, or `""` when the body has none.
    pub fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }

    /// Asserts an RFC 9457 problem with this status and code (never the message).
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "{}\n  expected {status} {code}, got {} {}",
            self.request,
            self.status,
            self.text
        );
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "{}: problem without application/problem+json: {:?}",
            self.request,
            self.content_type
        );
        assert_eq!(
            self.body.get("status").and_then(Value::as_u64),
            Some(u64::from(status)),
            "{}: problem `status` member disagrees with the HTTP status: {}",
            self.request,
            self.text
        );
    }

    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "{}\n  expected {status}, got {} {}",
            self.request, self.status, self.text
        );
        self
    }

    /// The codes of the `refusals` member, in order.
    pub fn refusal_codes(&self) -> Vec<String> {
        self.body
            .get("refusals")
            .and_then(Value::as_array)
            .map(|refusals| {
                refusals
                    .iter()
                    .filter_map(|refusal| refusal.get("code").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deserialises the body.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.body.clone()).unwrap_or_else(|error| {
            panic!(
                "{}: body does not decode as {}: {error}\n{}",
                self.request,
                std::any::type_name::<T>(),
                self.text
            )
        })
    }
}

/// The harness's check on every response: never a 500, and every error is a
/// problem document with a `code`.
#[track_caller]
pub fn assert_well_formed(response: &Response) {
    assert_ne!(
        response.status, 500,
        "{}: the server answered 500: {}",
        response.request, response.text
    );
    if response.status >= 400 {
        assert!(
            response
                .content_type
                .starts_with("application/problem+json")
                && !response.code().is_empty(),
            "{}: error {} is not a problem document with a code: {:?} {}",
            response.request,
            response.status,
            response.content_type,
            response.text
        );
    }
}

/// A request body.
#[derive(Clone, Debug)]
pub enum RequestBody {
    /// Serialised JSON.
    Json(Value),
    /// Raw bytes with a content type.
    Raw {
        /// `Content-Type`.
        content_type: String,
        /// Body.
        bytes: Vec<u8>,
    },
    /// Raw bytes sent with `Transfer-Encoding: chunked` (no `Content-Length`).
    Chunked {
        /// `Content-Type`.
        content_type: String,
        /// Body.
        bytes: Vec<u8>,
    },
}

pub(crate) fn https_client(root_pem: &str) -> reqwest::blocking::Client {
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_chain(root_pem) {
        roots
            .add(rustls_pki_types::CertificateDer::from(der))
            .expect("root.pem is a usable trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(REQUEST_TIMEOUT)
        // See the SDK's IDLE_CONNECTION_REUSE: a test that sleeps about
        // 5 s between requests would otherwise race the server's
        // keep-alive close.
        .pool_idle_timeout(certmint::client::IDLE_CONNECTION_REUSE)
        .build()
        .expect("build the HTTPS client")
}

/// Like [`https_client`], presenting a client certificate.
pub(crate) fn mtls_client(
    root_pem: &str,
    certificate_pem: &str,
    key_pem: &str,
) -> reqwest::blocking::Client {
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_chain(root_pem) {
        roots
            .add(rustls_pki_types::CertificateDer::from(der))
            .expect("root.pem is a usable trust anchor");
    }
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> = pem_chain(certificate_pem)
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    use rustls_pki_types::pem::PemObject as _;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .expect("a PEM PKCS#8, SEC1 or PKCS#1 key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("a usable client certificate and key");
    install_crypto_provider();
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(REQUEST_TIMEOUT)
        // See the SDK's IDLE_CONNECTION_REUSE: a test that sleeps about
        // 5 s between requests would otherwise race the server's
        // keep-alive close.
        .pool_idle_timeout(certmint::client::IDLE_CONNECTION_REUSE)
        .build()
        .expect("build the mTLS client")
}

/// reqwest may look for a process-wide provider; install ring's once.
pub(crate) fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // An error means another provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub(crate) fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}
