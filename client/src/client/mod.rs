//! The typed HTTPS client for the certmint REST API.
//!
//! Invariants:
//! - Every call returns the wire type the server documents, or an [`Error`]
//!   whose [`Error::Problem`] variant carries the server's problem document
//!   with its stable [`ProblemCode`]: callers branch on codes, never on text.
//! - Every connection verifies the server against [`TrustAnchors`] the
//!   caller chose ([`Client::pin_root`] turns a fingerprint into anchors).
//! - A client with a [`ClientIdentity`] presents it on every connection
//!   (mutual TLS); renew and self-revoke need one.
//! - Nothing secret (tokens, keys) is put in an error or a log line.
//!
//! Admin calls live in [`admin`]; CRL fetching in [`crl`]; trust and
//! identity in [`trust`].

pub mod admin;
pub mod crl;
pub mod trust;

use std::time::Duration as StdDuration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::problem::{Problem, ProblemCode};
use crate::wire::{
    CertificateBundle, CertificateInfo, Directory, EnrollRequest, RenewRequest, RevokeRequest,
};
pub use trust::{ClientIdentity, TrustAnchors};

/// How long one request may take, connect to last byte, by default.
pub const DEFAULT_TIMEOUT: StdDuration = StdDuration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused with a problem document.
    #[error("{} ({}): {}", .0.code, .0.status, .0.detail)]
    Problem(Box<Problem>),
    /// The server could not be reached, or the connection broke (includes
    /// TLS handshake failures such as an untrusted server certificate).
    #[error("cannot reach the certmint server: {0}")]
    Transport(String),
    /// The server answered with something that is not the documented body.
    #[error("unexpected response from the server: HTTP {status}: {detail}")]
    UnexpectedResponse {
        /// HTTP status.
        status: u16,
        /// What was wrong with it.
        detail: String,
    },
    /// The CA chain the server serves does not contain the pinned root.
    #[error(
        "root fingerprint mismatch: expected {expected}, but the server's CA root is {got}; \
         refusing first contact (is the fingerprint for this server?)"
    )]
    RootFingerprintMismatch {
        /// The fingerprint the operator pinned.
        expected: String,
        /// The fingerprint of the root the server served (the last
        /// certificate of its chain).
        got: String,
    },
    /// A trust anchor could not be used.
    #[error("trust anchors: {0}")]
    Trust(String),
    /// The client key or certificate could not be used.
    #[error("client identity: {0}")]
    Identity(String),
    /// The server URL is not usable.
    #[error("server URL: {0}")]
    Url(String),
}

impl Error {
    /// The problem code, when the server refused with one.
    pub fn code(&self) -> Option<&ProblemCode> {
        match self {
            Error::Problem(problem) => Some(&problem.code),
            _ => None,
        }
    }

    /// True for failures worth retrying later: transport errors and
    /// 5xx/503 answers (HSM or database busy), not refusals.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Problem(problem) => problem.status >= 500,
            Error::UnexpectedResponse { status, .. } => *status >= 500,
            _ => false,
        }
    }

    fn transport(error: reqwest::Error) -> Self {
        // reqwest's Display omits the cause chain (where TLS errors live).
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Error::Transport(text)
    }
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Per-request timeout.
    pub timeout: StdDuration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A client of one certmint server. Its `Debug` form never shows the
/// bearer token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    anchors: TrustAnchors,
    bearer: Option<String>,
    options: ClientOptions,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("anchors", &self.anchors)
            .field(
                "bearer",
                &self.bearer.as_ref().map(|_| crate::wire::REDACTED),
            )
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client that trusts `anchors` and presents `identity` when given.
    pub fn new(
        server_url: &str,
        anchors: TrustAnchors,
        identity: Option<&ClientIdentity>,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        let base_url = normalise_base_url(server_url)?;
        let config = trust::client_config(&anchors, identity)?;
        let http = http_client(config, &options)?;
        Ok(Self {
            http,
            base_url,
            anchors,
            bearer: None,
            options,
        })
    }

    /// First contact: reads the server's CA chain and returns anchors holding
    /// only the root whose fingerprint is `fingerprint` (`sha256:<hex>`).
    /// Fails with [`Error::RootFingerprintMismatch`] otherwise.
    pub async fn pin_root(
        server_url: &str,
        fingerprint: &str,
        options: &ClientOptions,
    ) -> Result<TrustAnchors, Error> {
        let pinned = trust::parse_fingerprint(fingerprint).ok_or_else(|| {
            Error::Trust(format!(
                "{fingerprint:?} is not a SHA-256 fingerprint (expected sha256:<64 hex digits>)"
            ))
        })?;
        let base_url = normalise_base_url(server_url)?;
        let http = http_client(trust::pinning_config()?, options)?;
        let response = http
            .get(format!("{base_url}/v1/ca/chain.pem"))
            .send()
            .await
            .map_err(Error::transport)?;
        let status = response.status();
        let body = response.text().await.map_err(Error::transport)?;
        if !status.is_success() {
            return Err(Error::UnexpectedResponse {
                status: status.as_u16(),
                detail: "GET /v1/ca/chain.pem failed".into(),
            });
        }
        let root = trust::select_pinned_root(&body, &pinned)?;
        Ok(TrustAnchors::from_der(vec![root]))
    }

    /// The same server and trust, presenting `identity` (mutual TLS).
    /// Each call builds a new connection pool, so the next request makes a
    /// fresh handshake with the new certificate.
    pub fn with_identity(&self, identity: &ClientIdentity) -> Result<Self, Error> {
        let config = trust::client_config(&self.anchors, Some(identity))?;
        Ok(Self {
            http: http_client(config, &self.options)?,
            base_url: self.base_url.clone(),
            anchors: self.anchors.clone(),
            bearer: self.bearer.clone(),
            options: self.options.clone(),
        })
    }

    /// The same client, sending `Authorization: Bearer <token>` (admin API).
    pub fn with_bearer(mut self, token: &str) -> Self {
        self.bearer = Some(token.trim().to_owned());
        self
    }

    /// The anchors this client verifies the server against.
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    /// `https://host:port`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /v1/directory`.
    pub async fn directory(&self) -> Result<Directory, Error> {
        self.call(Method::GET, "/v1/directory", None::<&()>).await
    }

    /// `GET /v1/ca/chain.pem`: issuing chain, PEM.
    pub async fn ca_chain_pem(&self) -> Result<String, Error> {
        let response = self
            .send(Method::GET, "/v1/ca/chain.pem", None::<&()>)
            .await?;
        response.text().await.map_err(Error::transport)
    }

    /// `POST /v1/enroll`: first enrollment with a bootstrap token.
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<CertificateBundle, Error> {
        self.call(Method::POST, "/v1/enroll", Some(request)).await
    }

    /// `POST /v1/renew`: needs a client built [`Client::with_identity`] the
    /// certificate being renewed.
    pub async fn renew(&self, request: &RenewRequest) -> Result<CertificateBundle, Error> {
        self.call(Method::POST, "/v1/renew", Some(request)).await
    }

    /// `POST /v1/revoke`: the holder revokes the certificate it presents.
    pub async fn revoke_own(&self, request: &RevokeRequest) -> Result<CertificateInfo, Error> {
        self.call(Method::POST, "/v1/revoke", Some(request)).await
    }

    /// `GET /healthz`: true when the server answers 200.
    pub async fn healthy(&self) -> Result<bool, Error> {
        let response = self
            .request(Method::GET, "/healthz", None::<&()>)
            .send()
            .await
            .map_err(Error::transport)?;
        Ok(response.status() == StatusCode::OK)
    }

    /// Sends a request and decodes a JSON success body, or the problem.
    pub(crate) async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let response = self.send(method, path, body).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(Error::transport)?;
        serde_json::from_slice(&bytes).map_err(|error| Error::UnexpectedResponse {
            status,
            detail: format!("body is not the documented JSON: {error}"),
        })
    }

    /// Sends a request; a non-2xx answer becomes [`Error::Problem`] (or
    /// [`Error::UnexpectedResponse`] when it is not a problem document).
    pub(crate) async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, Error> {
        let response = self
            .request(method, path, body)
            .send()
            .await
            .map_err(Error::transport)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(Error::transport)?;
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(problem) => Err(Error::Problem(Box::new(problem))),
            Err(_) => Err(Error::UnexpectedResponse {
                status,
                detail: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            }),
        }
    }

    fn request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request
    }
}

fn http_client(
    config: rustls::ClientConfig,
    options: &ClientOptions,
) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(options.timeout)
        .connect_timeout(options.timeout.min(StdDuration::from_secs(10)))
        // The server (actix-web) closes an idle keep-alive connection after
        // 5 s; a request sent on it at that instant fails mid-flight
        // (hyper's IncompleteMessage). Connections idle longer than this are
        // not reused, so the race cannot happen.
        .pool_idle_timeout(IDLE_CONNECTION_REUSE)
        .build()
        .map_err(Error::transport)
}

/// How long an idle connection may wait for reuse: well inside the
/// server's 5 s keep-alive.
pub const IDLE_CONNECTION_REUSE: StdDuration = StdDuration::from_secs(2);

fn normalise_base_url(url: &str) -> Result<String, Error> {
    let trimmed = url.trim().trim_end_matches('/');
    if !trimmed.starts_with("https://") {
        return Err(Error::Url(format!(
            "{url:?}: certmint servers speak HTTPS only (expected https://host:port)"
        )));
    }
    if trimmed.len() == "https://".len() {
        return Err(Error::Url(format!("{url:?} names no host")));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_form_never_shows_the_bearer_token() {
        let key = rcgen::KeyPair::generate().expect("key");
        let root = rcgen::CertificateParams::new(vec!["root.test".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("root");
        let anchors = TrustAnchors::from_pem(&root.pem()).expect("anchors");
        let client = Client::new(
            "https://ca.test:8443",
            anchors,
            None,
            ClientOptions::default(),
        )
        .expect("client")
        .with_bearer("eyJhbGciOiJFZERTQSJ9.secret-claims.secret-signature");
        let shown = format!("{client:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains(crate::wire::REDACTED), "{shown}");
    }

    #[test]
    fn ok_base_url_loses_its_trailing_slash() {
        assert_eq!(
            normalise_base_url("https://ca.internal:8443/").unwrap(),
            "https://ca.internal:8443"
        );
    }

    #[test]
    fn refuses_plain_http_and_empty_hosts() {
        assert!(matches!(
            normalise_base_url("http://ca:80"),
            Err(Error::Url(_))
        ));
        assert!(matches!(normalise_base_url("https://"), Err(Error::Url(_))));
    }

    #[test]
    fn ok_only_server_side_failures_are_transient() {
        let problem = |status| {
            Error::Problem(Box::new(Problem {
                problem_type: "urn:certmint:problem:x".into(),
                title: "x".into(),
                status,
                detail: "x".into(),
                code: ProblemCode::Internal,
                request_id: None,
                refusals: Vec::new(),
            }))
        };
        assert!(problem(503).is_transient());
        assert!(!problem(403).is_transient());
        assert!(Error::Transport("refused".into()).is_transient());
        assert!(!Error::RootFingerprintMismatch {
            expected: "x".into(),
            got: "y".into(),
        }
        .is_transient());
    }
}
