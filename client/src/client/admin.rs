//! Admin API calls (`/v1/admin/...`), made with a bearer admin JWT
//! ([`super::Client::with_bearer`]).
//!
//! Every endpoint of `openapi/openapi.yaml` under `/v1/admin` has a typed
//! method on [`Client`]. Each is built from an [`AdminRequest`], which a
//! caller can also send itself with [`Client::admin`] to decode the answer
//! as another type (the CLI decodes `serde_json::Value` to print the
//! server's JSON unchanged for `--json`).
//!
//! Invariants:
//! - Path segments (policy names, token ids, provisioner names, serials)
//!   are percent-encoded
//!   and never `""`, `.` or `..`, so a value can only ever name one
//!   resource, never walk to another route.
//! - Query values are form-encoded by `url`, the same encoding the
//!   server's query extractor decodes.
//! - The bearer token is only ever sent in the `Authorization` header by
//!   [`Client`]; nothing here formats it.
//!
//! [`crate::audit::verify_chain`] checks the pages of the audit log that
//! [`Client::audit`] returns, with the same encoding the server writes.

use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Client, Error};
use crate::duration::Duration;
use crate::wire::{
    AuditEvent, CertificateInfo, CertificateStatus, EvaluateRequest, EvaluateResponse,
    MintTokenRequest, MintedToken, NewProvisioner, Page, Policy, PolicySpec, ProvisionerInfo,
    RevokeRequest, TokenInfo,
};

/// Filters of `GET /v1/admin/certificates`; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateFilter {
    /// Only certificates allowed by this policy (any version).
    pub policy: Option<String>,
    /// Only certificates in this lifecycle state.
    pub status: Option<CertificateStatus>,
    /// Only certificates whose `not_after` is within this span from now.
    pub expiring_within: Option<Duration>,
    /// Cursor from a previous page's `next`.
    pub cursor: Option<String>,
    /// Page size (the server clamps it into 1–500).
    pub limit: Option<u32>,
}

/// One admin API request: method, encoded path and query, and body.
///
/// Built by the associated functions, one per endpoint; sent with
/// [`Client::admin`].
#[derive(Clone, Debug)]
pub struct AdminRequest<'a> {
    method: Method,
    path_and_query: String,
    body: Option<Body<'a>>,
}

/// The request bodies the admin API takes.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Policy(&'a PolicySpec),
    Evaluate(&'a EvaluateRequest),
    MintToken(&'a MintTokenRequest),
    Provisioner(&'a NewProvisioner),
    Revoke(&'a RevokeRequest),
}

impl<'a> AdminRequest<'a> {
    /// `GET /v1/admin/policies?cursor=&limit=`.
    pub fn list_policies(cursor: Option<&str>, limit: Option<u32>) -> Self {
        Self::get(&["policies"], &page_query(cursor, limit))
    }

    /// `GET /v1/admin/policies/{name}`.
    pub fn policy(name: &str) -> Result<Self, Error> {
        Ok(Self::get(&["policies", segment("policy name", name)?], &[]))
    }

    /// `POST /v1/admin/policies`.
    pub fn create_policy(spec: &'a PolicySpec) -> Self {
        Self::with_body(Method::POST, &["policies"], Body::Policy(spec))
    }

    /// `PUT /v1/admin/policies/{name}`.
    pub fn replace_policy(name: &str, spec: &'a PolicySpec) -> Result<Self, Error> {
        Ok(Self::with_body(
            Method::PUT,
            &["policies", segment("policy name", name)?],
            Body::Policy(spec),
        ))
    }

    /// `DELETE /v1/admin/policies/{name}`.
    pub fn disable_policy(name: &str) -> Result<Self, Error> {
        Ok(Self::new(
            Method::DELETE,
            &["policies", segment("policy name", name)?],
            &[],
            None,
        ))
    }

    /// `POST /v1/admin/policies/{name}/evaluate`.
    pub fn evaluate_policy(name: &str, request: &'a EvaluateRequest) -> Result<Self, Error> {
        Ok(Self::with_body(
            Method::POST,
            &["policies", segment("policy name", name)?, "evaluate"],
            Body::Evaluate(request),
        ))
    }

    /// `POST /v1/admin/tokens`.
    pub fn mint_token(request: &'a MintTokenRequest) -> Self {
        Self::with_body(Method::POST, &["tokens"], Body::MintToken(request))
    }

    /// `GET /v1/admin/tokens?cursor=&limit=`.
    pub fn list_tokens(cursor: Option<&str>, limit: Option<u32>) -> Self {
        Self::get(&["tokens"], &page_query(cursor, limit))
    }

    /// `GET /v1/admin/tokens/{id}`.
    pub fn token(id: &str) -> Result<Self, Error> {
        Ok(Self::get(&["tokens", segment("token id", id)?], &[]))
    }

    /// `DELETE /v1/admin/tokens/{id}`.
    pub fn revoke_token(id: &str) -> Result<Self, Error> {
        Ok(Self::new(
            Method::DELETE,
            &["tokens", segment("token id", id)?],
            &[],
            None,
        ))
    }

    /// `POST /v1/admin/provisioners`.
    pub fn register_provisioner(request: &'a NewProvisioner) -> Self {
        Self::with_body(Method::POST, &["provisioners"], Body::Provisioner(request))
    }

    /// `GET /v1/admin/provisioners` (every provisioner, in one page).
    pub fn list_provisioners() -> Self {
        Self::get(&["provisioners"], &[])
    }

    /// `GET /v1/admin/provisioners/{name}`.
    pub fn provisioner(name: &str) -> Result<Self, Error> {
        Ok(Self::get(
            &["provisioners", segment("provisioner name", name)?],
            &[],
        ))
    }

    /// `DELETE /v1/admin/provisioners/{name}`.
    pub fn disable_provisioner(name: &str) -> Result<Self, Error> {
        Ok(Self::new(
            Method::DELETE,
            &["provisioners", segment("provisioner name", name)?],
            &[],
            None,
        ))
    }

    /// `GET /v1/admin/certificates?policy=&status=&expiring_within=&cursor=&limit=`.
    pub fn list_certificates(filter: &CertificateFilter) -> Self {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(policy) = &filter.policy {
            query.push(("policy", policy.clone()));
        }
        if let Some(status) = filter.status {
            query.push(("status", status_name(status).to_owned()));
        }
        if let Some(within) = &filter.expiring_within {
            query.push(("expiring_within", within.to_string()));
        }
        query.extend(page_query(filter.cursor.as_deref(), filter.limit));
        Self::get(&["certificates"], &query)
    }

    /// `GET /v1/admin/certificates/{serial}`.
    pub fn certificate(serial: &str) -> Result<Self, Error> {
        Ok(Self::get(
            &["certificates", segment("serial", serial)?],
            &[],
        ))
    }

    /// `POST /v1/admin/certificates/{serial}/revoke`.
    pub fn revoke_certificate(serial: &str, request: &'a RevokeRequest) -> Result<Self, Error> {
        Ok(Self::with_body(
            Method::POST,
            &["certificates", segment("serial", serial)?, "revoke"],
            Body::Revoke(request),
        ))
    }

    /// `GET /v1/admin/audit?cursor=&limit=`.
    pub fn audit(cursor: Option<&str>, limit: Option<u32>) -> Self {
        Self::get(&["audit"], &page_query(cursor, limit))
    }

    /// The HTTP method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The encoded path, followed by `?query` only when there is a query.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    fn get(segments: &[&str], query: &[(&str, String)]) -> Self {
        Self::new(Method::GET, segments, query, None)
    }

    fn with_body(method: Method, segments: &[&str], body: Body<'a>) -> Self {
        Self::new(method, segments, &[], Some(body))
    }

    fn new(
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Body<'a>>,
    ) -> Self {
        Self {
            method,
            path_and_query: encode_path(segments, query),
            body,
        }
    }
}

impl Client {
    /// Sends an admin request and decodes the 2xx body as `T` (a wire type,
    /// or `serde_json::Value` to keep every field the server sent).
    pub async fn admin<T: DeserializeOwned>(&self, request: &AdminRequest<'_>) -> Result<T, Error> {
        self.call(
            request.method.clone(),
            &request.path_and_query,
            request.body.as_ref(),
        )
        .await
    }

    /// `GET /v1/admin/policies`: one page of current policy versions.
    pub async fn list_policies(
        &self,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Policy>, Error> {
        self.admin(&AdminRequest::list_policies(cursor, limit))
            .await
    }

    /// `GET /v1/admin/policies/{name}`: the current version.
    pub async fn policy(&self, name: &str) -> Result<Policy, Error> {
        self.admin(&AdminRequest::policy(name)?).await
    }

    /// `POST /v1/admin/policies`: creates version 1.
    pub async fn create_policy(&self, spec: &PolicySpec) -> Result<Policy, Error> {
        self.admin(&AdminRequest::create_policy(spec)).await
    }

    /// `PUT /v1/admin/policies/{name}`: writes the next version.
    pub async fn replace_policy(&self, name: &str, spec: &PolicySpec) -> Result<Policy, Error> {
        self.admin(&AdminRequest::replace_policy(name, spec)?).await
    }

    /// `DELETE /v1/admin/policies/{name}`: writes a disabled version.
    pub async fn disable_policy(&self, name: &str) -> Result<Policy, Error> {
        self.admin(&AdminRequest::disable_policy(name)?).await
    }

    /// `POST /v1/admin/policies/{name}/evaluate`: a dry run.
    pub async fn evaluate_policy(
        &self,
        name: &str,
        request: &EvaluateRequest,
    ) -> Result<EvaluateResponse, Error> {
        self.admin(&AdminRequest::evaluate_policy(name, request)?)
            .await
    }

    /// `POST /v1/admin/tokens`: mints a bootstrap token (the JWT is only
    /// in this answer).
    pub async fn mint_token(&self, request: &MintTokenRequest) -> Result<MintedToken, Error> {
        self.admin(&AdminRequest::mint_token(request)).await
    }

    /// `GET /v1/admin/tokens`: one page of tokens (never the JWTs).
    pub async fn list_tokens(
        &self,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<TokenInfo>, Error> {
        self.admin(&AdminRequest::list_tokens(cursor, limit)).await
    }

    /// `GET /v1/admin/tokens/{id}`.
    pub async fn token(&self, id: &str) -> Result<TokenInfo, Error> {
        self.admin(&AdminRequest::token(id)?).await
    }

    /// `DELETE /v1/admin/tokens/{id}`: revokes (idempotent).
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo, Error> {
        self.admin(&AdminRequest::revoke_token(id)?).await
    }

    /// `POST /v1/admin/provisioners`: registers an external token issuer.
    pub async fn register_provisioner(
        &self,
        request: &NewProvisioner,
    ) -> Result<ProvisionerInfo, Error> {
        self.admin(&AdminRequest::register_provisioner(request))
            .await
    }

    /// `GET /v1/admin/provisioners`: every provisioner, by name, in one page.
    pub async fn list_provisioners(&self) -> Result<Page<ProvisionerInfo>, Error> {
        self.admin(&AdminRequest::list_provisioners()).await
    }

    /// `GET /v1/admin/provisioners/{name}`.
    pub async fn provisioner(&self, name: &str) -> Result<ProvisionerInfo, Error> {
        self.admin(&AdminRequest::provisioner(name)?).await
    }

    /// `DELETE /v1/admin/provisioners/{name}`: disables it (its tokens are
    /// refused from then on; nothing is deleted).
    pub async fn disable_provisioner(&self, name: &str) -> Result<ProvisionerInfo, Error> {
        self.admin(&AdminRequest::disable_provisioner(name)?).await
    }

    /// `GET /v1/admin/certificates`: one page of the inventory.
    pub async fn list_certificates(
        &self,
        filter: &CertificateFilter,
    ) -> Result<Page<CertificateInfo>, Error> {
        self.admin(&AdminRequest::list_certificates(filter)).await
    }

    /// `GET /v1/admin/certificates/{serial}` (with its PEM once issued).
    pub async fn certificate(&self, serial: &str) -> Result<CertificateInfo, Error> {
        self.admin(&AdminRequest::certificate(serial)?).await
    }

    /// `POST /v1/admin/certificates/{serial}/revoke`.
    pub async fn revoke_certificate(
        &self,
        serial: &str,
        request: &RevokeRequest,
    ) -> Result<CertificateInfo, Error> {
        self.admin(&AdminRequest::revoke_certificate(serial, request)?)
            .await
    }

    /// `GET /v1/admin/audit`: one page of audit events, oldest first.
    pub async fn audit(
        &self,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<AuditEvent>, Error> {
        self.admin(&AdminRequest::audit(cursor, limit)).await
    }
}

/// The wire name of a status (`issued`, …), as the server's filter reads it.
fn status_name(status: CertificateStatus) -> &'static str {
    match status {
        CertificateStatus::Pending => "pending",
        CertificateStatus::Issued => "issued",
        CertificateStatus::Revoked => "revoked",
        CertificateStatus::Failed => "failed",
    }
}

fn page_query(cursor: Option<&str>, limit: Option<u32>) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor.to_owned()));
    }
    if let Some(limit) = limit {
        query.push(("limit", limit.to_string()));
    }
    query
}

/// Refuses values that cannot name exactly one resource as a path segment.
fn segment<'s>(what: &str, value: &'s str) -> Result<&'s str, Error> {
    if value.is_empty() || value == "." || value == ".." {
        return Err(Error::Url(format!("{value:?} is not a valid {what}")));
    }
    Ok(value)
}

/// `/v1/admin/<segments…>[?query]`, each segment percent-encoded.
fn encode_path(segments: &[&str], query: &[(&str, String)]) -> String {
    // A fixed base only borrows `url`'s encoders; the host never leaves here.
    let mut url = match Url::parse("https://certmint.invalid/v1/admin") {
        Ok(url) => url,
        // The literal above always parses; a failure would be a bug in `url`.
        Err(_) => return String::from("/v1/admin"),
    };
    if let Ok(mut path) = url.path_segments_mut() {
        path.extend(segments);
    }
    if !query.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(key, value)| (*key, value.as_str())));
    }
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ok_paths_and_queries_are_encoded() {
        assert_eq!(
            AdminRequest::policy("web").unwrap().path_and_query(),
            "/v1/admin/policies/web"
        );
        assert_eq!(
            AdminRequest::policy("a/b?c#d%").unwrap().path_and_query(),
            "/v1/admin/policies/a%2Fb%3Fc%23d%25"
        );
        let filter = CertificateFilter {
            policy: Some("pay ments&x=1".into()),
            status: Some(CertificateStatus::Revoked),
            expiring_within: Some("24h".parse().unwrap()),
            cursor: Some("abc+/=".into()),
            limit: Some(50),
        };
        assert_eq!(
            AdminRequest::list_certificates(&filter).path_and_query(),
            "/v1/admin/certificates?policy=pay+ments%26x%3D1&status=revoked\
             &expiring_within=24h&cursor=abc%2B%2F%3D&limit=50"
        );
        assert_eq!(
            AdminRequest::audit(None, None).path_and_query(),
            "/v1/admin/audit"
        );
        let revoke = RevokeRequest {
            reason: crate::wire::RevocationReason::KeyCompromise,
            invalidity_date: None,
        };
        let request = AdminRequest::revoke_certificate("0aFF", &revoke).unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(
            request.path_and_query(),
            "/v1/admin/certificates/0aFF/revoke"
        );
    }

    #[test]
    fn fail_dot_segments_and_empty_names() {
        for bad in ["", ".", ".."] {
            assert!(matches!(AdminRequest::policy(bad), Err(Error::Url(_))));
            assert!(matches!(AdminRequest::token(bad), Err(Error::Url(_))));
            assert!(matches!(AdminRequest::provisioner(bad), Err(Error::Url(_))));
            assert!(matches!(
                AdminRequest::disable_provisioner(bad),
                Err(Error::Url(_))
            ));
            assert!(matches!(AdminRequest::certificate(bad), Err(Error::Url(_))));
        }
    }

    #[test]
    fn ok_provisioner_requests() {
        let shown = AdminRequest::provisioner("a/b?c").unwrap();
        assert_eq!(shown.method(), Method::GET);
        assert_eq!(shown.path_and_query(), "/v1/admin/provisioners/a%2Fb%3Fc");
        let listed = AdminRequest::list_provisioners();
        assert_eq!(listed.method(), Method::GET);
        assert_eq!(listed.path_and_query(), "/v1/admin/provisioners");
        let disabled = AdminRequest::disable_provisioner("k8s").unwrap();
        assert_eq!(disabled.method(), Method::DELETE);
        assert_eq!(disabled.path_and_query(), "/v1/admin/provisioners/k8s");
        assert!(disabled.body.is_none());

        let new = NewProvisioner {
            name: "k8s".into(),
            public_key_pem: "-----BEGIN PUBLIC KEY-----\n".into(),
            policies: vec!["web".into()],
            max_token_ttl: None,
        };
        let registered = AdminRequest::register_provisioner(&new);
        assert_eq!(registered.method(), Method::POST);
        assert_eq!(registered.path_and_query(), "/v1/admin/provisioners");
        // The body is the wire type as is; an absent TTL is left to the server.
        assert_eq!(
            serde_json::to_value(&registered.body).unwrap(),
            json!({
                "name": "k8s",
                "public_key_pem": "-----BEGIN PUBLIC KEY-----\n",
                "policies": ["web"],
            })
        );
    }
}
