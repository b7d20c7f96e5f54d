//! HTTP layer: actix-web routes, extractors and the error edge.
//!
//! Handlers do four things and nothing else: extract (size-limited bodies),
//! parse wire types, call one service function on a blocking thread, map the
//! result. No business rule lives here; all statuses live in [`error`].

pub mod admin;
pub mod distribution;
pub mod enroll;
pub mod error;
pub mod holder;
pub mod json;
pub mod public;

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::ServiceResponse;
use actix_web::{web, FromRequest, HttpMessage as _, HttpRequest};
use certmint::ProblemCode;

use crate::admin::Admin;
use crate::error::ServiceError;
use crate::hsm::Hsm;
use crate::issuance::Issuer;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tokens::TokenAuthority;
use error::ApiError;

/// Shared state of every handler.
pub struct AppState {
    /// Issuance pipeline.
    pub issuer: Arc<Issuer>,
    /// Admin services.
    pub admin: Arc<Admin>,
    /// For readiness.
    pub store: Store,
    /// For readiness.
    pub hsm: Hsm,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Admin token verification.
    pub tokens: Arc<TokenAuthority>,
    /// `<public_url>/v1/admin`.
    pub admin_audience: String,
    /// The directory document.
    pub directory: certmint::wire::Directory,
    /// Time source for admin token checks.
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// The TLS certificate being served, for readiness.
    pub server_certificate: Arc<crate::tls::ServerCertificate>,
    /// The OpenAPI document as JSON.
    pub openapi_json: String,
    /// The newest CRLs.
    pub crls: Arc<crate::revocation::publisher::CrlPublisher>,
}

/// Per-request id, set by the middleware and echoed in `x-request-id`.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl FromRequest for RequestId {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let id = request
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId("unknown".into()));
        std::future::ready(Ok(id))
    }
}

/// The DER of the client certificate presented in the TLS handshake, stored
/// per connection by [`capture_client_certificate`].
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub Option<Arc<Vec<u8>>>);

/// `HttpServer::on_connect` hook: remembers the verified client certificate
/// (if any) of each TLS connection for the handlers of its requests.
pub fn capture_client_certificate(
    connection: &dyn std::any::Any,
    data: &mut actix_web::dev::Extensions,
) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::rt::net::TcpStream;
    if let Some(stream) = connection.downcast_ref::<TlsStream<TcpStream>>() {
        let (_, session) = stream.get_ref();
        let leaf = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|der| Arc::new(der.as_ref().to_vec()));
        data.insert(ClientCertificate(leaf));
    }
}

impl FromRequest for ClientCertificate {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let certificate = request
            .conn_data::<ClientCertificate>()
            .cloned()
            .unwrap_or(ClientCertificate(None));
        std::future::ready(Ok(certificate))
    }
}

/// Runs a blocking service call on actix's thread pool and maps its error.
pub async fn blocking<T, F>(request_id: &RequestId, call: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ServiceError> + Send + 'static,
    T: Send + 'static,
{
    match web::block(call).await {
        Ok(result) => result.map_err(|error| ApiError::from_service(error, &request_id.0)),
        Err(_) => Err(ApiError::new(ProblemCode::Internal, "worker pool failure")
            .with_request_id(&request_id.0)),
    }
}

/// Registers every route, the JSON limits and the fallbacks.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config: &mut web::ServiceConfig| {
        let limit = state.max_body_bytes;
        config
            .app_data(state)
            .app_data(json_config(limit))
            .app_data(web::PayloadConfig::new(limit))
            .app_data(web::QueryConfig::default().error_handler(|error, request| {
                request_error(
                    ProblemCode::RequestInvalidParameter,
                    error.to_string(),
                    request,
                )
            }))
            .app_data(path_config())
            .configure(public::routes)
            .configure(distribution::routes)
            .configure(enroll::routes)
            .configure(holder::routes)
            .configure(admin::routes)
            .default_service(web::to(not_found));
    }
}

/// A path segment that does not parse is `request.invalid_parameter`.
fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|error, request| {
        request_error(
            ProblemCode::RequestInvalidParameter,
            error.to_string(),
            request,
        )
    })
}

/// The plain-HTTP CRL listener: CRLs and the CA chain, nothing else.
pub fn configure_distribution(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config: &mut web::ServiceConfig| {
        config
            .app_data(state)
            .app_data(path_config())
            .configure(distribution::routes)
            .default_service(web::to(not_found));
    }
}

/// JSON bodies must say so (`application/json` or `application/*+json`,
/// which [`json::JsonBody`] narrows actix-web's check to): a
/// browser sends a form or `text/plain` cross-site without asking first,
/// and one that holds a workload's client certificate would otherwise let
/// any page post `/v1/renew` or `/v1/revoke` with it.
fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .content_type_required(true)
        .error_handler(|error, request| {
            use actix_web::error::JsonPayloadError;
            let (code, detail) = match &error {
                JsonPayloadError::OverflowKnownLength { .. }
                | JsonPayloadError::Overflow { .. } => {
                    (ProblemCode::RequestTooLarge, error.to_string())
                }
                JsonPayloadError::ContentType => {
                    (ProblemCode::RequestMalformed, NOT_JSON_DETAIL.to_owned())
                }
                _ => (ProblemCode::RequestMalformed, error.to_string()),
            };
            request_error(code, detail, request)
        })
}

/// The detail of every refused Content-Type.
const NOT_JSON_DETAIL: &str = "the body must be JSON, sent with Content-Type: application/json";

fn request_error(code: ProblemCode, detail: String, request: &HttpRequest) -> actix_web::Error {
    let id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    ApiError::new(code, detail).with_request_id(&id).into()
}

async fn not_found(
    request: HttpRequest,
    id: RequestId,
) -> Result<actix_web::HttpResponse, ApiError> {
    // A known path with the wrong method is a 405, not a 404.
    let known = request.match_pattern().is_some();
    Err(if known {
        ApiError::new(
            ProblemCode::RequestMethodNotAllowed,
            format!("{} is not allowed on {}", request.method(), request.path()),
        )
        .with_request_id(&id.0)
    } else {
        ApiError::new(
            ProblemCode::RequestNotFound,
            format!("no endpoint at {}", request.path()),
        )
        .with_request_id(&id.0)
    })
}

/// Middleware: request id, latency metric, one access log line.
pub fn observe<S, B>(
    request: actix_web::dev::ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + 'static
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    S::Future: 'static,
    B: 'static,
{
    let started = Instant::now();
    let id = crate::random::hex_id().unwrap_or_else(|_| "no-entropy".into());
    request.extensions_mut().insert(RequestId(id.clone()));
    let metrics = request
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let method = request.method().to_string();
    let future = service.call(request);
    async move {
        let mut response = future.await?;
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        let status = response.status().as_u16();
        let seconds = started.elapsed().as_secs_f64();
        if let Some(metrics) = metrics {
            metrics.request(&method, &route, status, seconds);
            if let Some(error) = response.response().error() {
                if let Some(api) = error.as_error::<ApiError>() {
                    metrics.refused(api.code().as_str());
                }
            }
        }
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&id) {
            response.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("x-request-id"),
                value,
            );
        }
        tracing::info!(
            request.id = %id,
            http.method = %method,
            http.route = %route,
            http.status = status,
            duration_ms = seconds * 1000.0,
            "request"
        );
        Ok(response)
    }
}

#[cfg(test)]
mod contract_tests {
    //! The route half of the OpenAPI contract: every route registered in
    //! this module's files is in `openapi/openapi.yaml` and vice versa. (The
    //! body half runs against a live server in `tests/tests/openapi.rs`.)
    //! Routes are registered only with `.route("<path>", web::<method>()…)`,
    //! which is what this scan reads.

    use std::collections::BTreeSet;

    /// Every `.rs` file under `src/api`, read at test time, so that a new
    /// handler file cannot slip past the scan.
    fn sources() -> Vec<String> {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|ext| ext == "rs") {
                    out.push(std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut out = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api"),
            &mut out,
        );
        out
    }

    fn registered_routes() -> BTreeSet<(String, String)> {
        let mut routes = BTreeSet::new();
        for source in sources() {
            for call in source.split(".route(").skip(1) {
                let path = call.split('"').nth(1).unwrap_or_default().to_owned();
                let method = call
                    .split("web::")
                    .nth(1)
                    .and_then(|rest| rest.split("()").next())
                    .unwrap_or_default()
                    .to_owned();
                // This scanner's own source and docs mention `.route(` too.
                if path.starts_with('/') && method.chars().all(|c| c.is_ascii_lowercase()) {
                    routes.insert((method, path));
                }
            }
        }
        routes
    }

    fn documented_routes() -> BTreeSet<(String, String)> {
        let spec: serde_json::Value =
            serde_norway::from_str(include_str!("../../../openapi/openapi.yaml")).unwrap();
        let mut routes = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for method in ["get", "put", "post", "delete", "patch"] {
                if item.get(method).is_some() {
                    routes.insert((method.to_owned(), path.clone()));
                }
            }
        }
        routes
    }

    #[test]
    fn ok_every_route_is_documented_and_every_documented_route_exists() {
        let registered = registered_routes();
        let documented = documented_routes();
        assert!(
            registered.len() >= 20,
            "route scan found too little: {registered:?}"
        );
        let undocumented: Vec<_> = registered.difference(&documented).collect();
        let missing: Vec<_> = documented.difference(&registered).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.yaml: {undocumented:?}"
        );
        assert!(missing.is_empty(), "documented but not served: {missing:?}");
    }
}
