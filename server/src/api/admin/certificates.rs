//! `/v1/admin/certificates[/{serial}]`: inventory and revocation.

use actix_web::{web, HttpResponse};
use certmint::wire::{CertificateStatus, RevokeRequest};
use certmint::{Duration, ProblemCode};
use serde::Deserialize;

use super::Caller;
use crate::admin::WriteAccess;
use crate::api::error::ApiError;
use crate::api::json::JsonBody;
use crate::api::{blocking, AppState, RequestId};

/// Registers the routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/admin/certificates", web::get().to(list))
        .route("/v1/admin/certificates/{serial}", web::get().to(read))
        .route(
            "/v1/admin/certificates/{serial}/revoke",
            web::post().to(revoke),
        );
}

/// Inventory filters.
#[derive(Debug, Deserialize)]
struct ListQuery {
    policy: Option<String>,
    status: Option<String>,
    expiring_within: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/admin/certificates?policy=&status=&expiring_within=&cursor=&limit=`
/// (admin, auditor). Code: `request.invalid_parameter`.
async fn list(
    state: web::Data<AppState>,
    _caller: Caller,
    id: RequestId,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let invalid = |detail: String| {
        ApiError::new(ProblemCode::RequestInvalidParameter, detail).with_request_id(&id.0)
    };
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(
            serde_json::from_value::<CertificateStatus>(serde_json::Value::String(text.into()))
                .map_err(|_| {
                    invalid(format!(
                        "status {text:?} must be pending, issued, revoked or failed"
                    ))
                })?,
        ),
    };
    let expiring_within = match query.expiring_within.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<Duration>()
                .map_err(|error| invalid(format!("expiring_within: {error}")))?
                .as_seconds(),
        ),
    };
    let admin = state.admin.clone();
    let page = blocking(&id, move || {
        admin.list_certificates(
            query.policy,
            status,
            expiring_within,
            query.cursor.as_deref(),
            query.limit.unwrap_or(100),
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// `GET /v1/admin/certificates/{serial}` (admin, auditor).
async fn read(
    state: web::Data<AppState>,
    _caller: Caller,
    id: RequestId,
    serial: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let certificate = blocking(&id, move || admin.certificate(&serial)).await?;
    Ok(HttpResponse::Ok().json(certificate))
}

/// `POST /v1/admin/certificates/{serial}/revoke` (admin).
/// Codes: `certificate.not_found`, `certificate.already_revoked`,
/// `request.invalid_parameter` (an invalidity date without key compromise,
/// or in the future).
async fn revoke(
    state: web::Data<AppState>,
    access: WriteAccess,
    id: RequestId,
    serial: web::Path<String>,
    body: JsonBody<RevokeRequest>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let certificate = blocking(&id, move || {
        admin.revoke_certificate(&access, &serial, &body)
    })
    .await?;
    Ok(HttpResponse::Ok().json(certificate))
}
