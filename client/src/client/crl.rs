//! Fetching CRLs: the index of current CRLs (`GET /v1/crls`) and one DER
//! CRL (`GET /crl/<issuer_key_id>/<shard>.crl`) with `If-None-Match`, from
//! the HTTPS API or from the server's plain-HTTP CRL listener (same paths).
//!
//! Invariants:
//! - Nothing fetched here is trusted: a CRL is returned as bytes with the
//!   content type the server gave; the caller checks its signature against
//!   a CA it trusts before using it (over plain HTTP that check is the only
//!   protection, as for any CRL distribution point).
//! - A CRL path from the index is used only when it has the documented
//!   shape, so a hostile index cannot make the client fetch elsewhere.
//! - A body larger than [`MAX_CRL_BYTES`] is refused while it is read,
//!   never buffered whole.

use reqwest::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;

use super::{Client, ClientOptions, Error, IDLE_CONNECTION_REUSE};
use crate::problem::Problem;
use crate::wire::CrlIndex;

/// The media type of a DER CRL (RFC 2585).
pub const CRL_CONTENT_TYPE: &str = "application/pkix-crl";

/// The largest CRL body accepted: far above what a shard holds (about
/// 40 bytes per entry), far below what would hurt an agent's memory.
pub const MAX_CRL_BYTES: usize = 16 * 1024 * 1024;

/// The largest index body accepted.
const MAX_INDEX_BYTES: usize = 4 * 1024 * 1024;

/// Where CRLs are read from.
#[derive(Clone, Debug)]
pub struct CrlClient {
    http: reqwest::Client,
    base_url: String,
}

/// The answer to a conditional CRL request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrlFetch {
    /// `304 Not Modified`: the CRL with the ETag sent is still current.
    NotModified,
    /// `200 OK`: a body, not yet checked.
    Body {
        /// The body (a DER CRL, if the server is honest).
        der: Vec<u8>,
        /// The `Content-Type` header, when present.
        content_type: Option<String>,
        /// The `ETag` header, when present.
        etag: Option<String>,
    },
}

impl Client {
    /// A [`CrlClient`] over this client's HTTPS connection (same server,
    /// same trust anchors).
    pub fn crls(&self) -> CrlClient {
        CrlClient {
            http: self.http.clone(),
            base_url: self.base_url.clone(),
        }
    }
}

impl CrlClient {
    /// A client of a plain-HTTP CRL listener (`http://host:port`). CRLs are
    /// signed: the caller's signature check is what makes them trustworthy,
    /// not the transport.
    pub fn plain_http(url: &str, options: &ClientOptions) -> Result<Self, Error> {
        let base_url = listener_url(url)?;
        // reqwest is built without a default TLS provider; a config that
        // trusts no root at all keeps it from panicking and makes sure
        // nothing but plain HTTP could ever be spoken here.
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            super::trust::provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Trust(format!("TLS versions: {error}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(std::time::Duration::from_secs(10)))
            .pool_idle_timeout(IDLE_CONNECTION_REUSE)
            // A redirect could lead anywhere; the listener never sends one.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::transport)?;
        Ok(Self { http, base_url })
    }

    /// Where requests go, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /v1/crls`: the latest CRL of every shard of every issuer.
    pub async fn index(&self) -> Result<CrlIndex, Error> {
        let response = self
            .http
            .get(format!("{}/v1/crls", self.base_url))
            .send()
            .await
            .map_err(Error::transport)?;
        let status = response.status();
        let body = read_limited(response, MAX_INDEX_BYTES).await?;
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        serde_json::from_slice(&body).map_err(|error| Error::UnexpectedResponse {
            status: status.as_u16(),
            detail: format!("GET /v1/crls: body is not a CRL index: {error}"),
        })
    }

    /// `GET <path>` with `If-None-Match: <etag>` when given (the quoted
    /// `"sha256:<hex>"` of the CRL held). `path` must be a CRL path as the
    /// index lists it ([`is_crl_path`]).
    pub async fn fetch(&self, path: &str, etag: Option<&str>) -> Result<CrlFetch, Error> {
        if !is_crl_path(path) {
            return Err(Error::UnexpectedResponse {
                status: 200,
                detail: format!("the CRL index lists {path:?}, which is not a CRL path"),
            });
        }
        let mut request = self.http.get(format!("{}{path}", self.base_url));
        if let Some(etag) = etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let response = request.send().await.map_err(Error::transport)?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(CrlFetch::NotModified);
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(CONTENT_TYPE);
        let etag = header(ETAG);
        let body = read_limited(response, MAX_CRL_BYTES).await?;
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        Ok(CrlFetch::Body {
            der: body,
            content_type,
            etag,
        })
    }
}

/// `url` as a CRL listener base URL (`http://host:port`, no trailing
/// slash), or why it is not one.
pub fn listener_url(url: &str) -> Result<String, Error> {
    let trimmed = url.trim().trim_end_matches('/');
    let Some(host) = trimmed.strip_prefix("http://") else {
        return Err(Error::Url(format!(
            "{url:?}: a CRL listener URL is http://host:port"
        )));
    };
    if host.is_empty() || host.contains('/') {
        return Err(Error::Url(format!(
            "{url:?}: expected http://host:port, without a path"
        )));
    }
    Ok(trimmed.to_owned())
}

/// The quoted strong ETag the server gives a CRL: `"sha256:<hex of DER>"`.
pub fn crl_etag(der: &[u8]) -> String {
    format!("\"{}\"", super::trust::fingerprint(der))
}

/// True for `/crl/<lower-case hex>/<decimal>.crl`, the only paths the
/// index may name.
pub fn is_crl_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/crl/") else {
        return false;
    };
    let Some((key_id, file)) = rest.split_once('/') else {
        return false;
    };
    let Some(shard) = file.strip_suffix(".crl") else {
        return false;
    };
    !key_id.is_empty()
        && key_id
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        && !shard.is_empty()
        && shard.bytes().all(|byte| byte.is_ascii_digit())
}

/// Reads a body, refusing one longer than `limit`.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, Error> {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Error::transport)? {
        if body.len() + chunk.len() > limit {
            return Err(Error::UnexpectedResponse {
                status,
                detail: format!("the body is larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A non-2xx answer as [`Error::Problem`], or [`Error::UnexpectedResponse`].
fn refusal(status: StatusCode, body: &[u8]) -> Error {
    match serde_json::from_slice::<Problem>(body) {
        Ok(problem) => Error::Problem(Box::new(problem)),
        Err(_) => Error::UnexpectedResponse {
            status: status.as_u16(),
            detail: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_only_documented_crl_paths() {
        assert!(is_crl_path("/crl/0a1b2c/0.crl"));
        assert!(is_crl_path("/crl/ff/12.crl"));
        for path in [
            "/crl/0A1B/0.crl",
            "/crl//0.crl",
            "/crl/ab/.crl",
            "/crl/ab/x.crl",
            "/crl/ab/0.crl?x",
            "/crl/ab/../0.crl",
            "/crl/ab/0.pem",
            "/v1/admin/certificates",
            "//evil.test/crl/ab/0.crl",
            "crl/ab/0.crl",
        ] {
            assert!(!is_crl_path(path), "{path}");
        }
    }

    #[test]
    fn ok_etag_is_the_quoted_fingerprint() {
        assert_eq!(
            crl_etag(b"abc"),
            "\"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
        );
    }

    #[test]
    fn refuses_listener_urls_that_are_not_plain_http_host_port() {
        let options = ClientOptions::default();
        let client = CrlClient::plain_http("http://127.0.0.1:8080/", &options).unwrap();
        assert_eq!(client.base_url(), "http://127.0.0.1:8080");
        for url in ["https://ca:8443", "http://", "http://ca:80/crl", "ca:80"] {
            assert!(
                matches!(CrlClient::plain_http(url, &options), Err(Error::Url(_))),
                "{url}"
            );
        }
    }
}
