//! Unauthenticated endpoints: directory, health, readiness, metrics and
//! the OpenAPI document (the CA chain and CRLs are in `distribution`).

use actix_web::{web, HttpResponse};
use certmint::ProblemCode;

use super::error::ApiError;
use super::{blocking, AppState, RequestId};
use crate::error::ServiceError;

/// Registers the routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/directory", web::get().to(directory))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi));
}

/// `GET /v1/directory`: endpoints and CA facts.
async fn directory(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(&state.directory)
}

/// `GET /healthz`: the process is alive.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: the database and the HSM answer, and the server's own TLS
/// certificate has not expired. 503 (`store.unavailable` /
/// `hsm.unavailable` / `server.certificate_expired`) otherwise.
async fn readyz(state: web::Data<AppState>, id: RequestId) -> Result<HttpResponse, ApiError> {
    let expires = state.server_certificate.not_after();
    if state.clock.now() >= expires {
        return Err(ApiError::new(
            ProblemCode::ServerCertificateExpired,
            format!(
                "the server's TLS certificate expired at {expires}; its renewal keeps failing (see the server log)"
            ),
        )
        .with_request_id(&id.0));
    }
    let store = state.store.clone();
    let hsm = state.hsm.clone();
    blocking(&id, move || {
        store.ping().map_err(ServiceError::from)?;
        hsm.ping().map_err(ServiceError::HsmNotReady)?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({"status": "ready", "database": "ok", "hsm": "ok"})))
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

/// `GET /openapi.json`: the REST contract.
async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi_json.clone())
}
