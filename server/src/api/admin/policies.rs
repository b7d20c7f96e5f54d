//! `/v1/admin/policies[/{name}]` and the `/evaluate` dry run.

use actix_web::{web, HttpResponse};
use certmint::wire::{EvaluateRequest, PolicySpec};

use super::{Caller, PageQuery};
use crate::admin::WriteAccess;
use crate::api::error::ApiError;
use crate::api::json::JsonBody;
use crate::api::{blocking, AppState, RequestId};

/// Registers the routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/admin/policies", web::get().to(list))
        .route("/v1/admin/policies", web::post().to(create))
        .route("/v1/admin/policies/{name}", web::get().to(read))
        .route("/v1/admin/policies/{name}", web::put().to(replace))
        .route("/v1/admin/policies/{name}", web::delete().to(disable))
        .route(
            "/v1/admin/policies/{name}/evaluate",
            web::post().to(evaluate),
        );
}

/// `GET /v1/admin/policies` (admin, auditor).
async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    id: RequestId,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let _ = caller;
    let admin = state.admin.clone();
    let page = blocking(&id, move || {
        admin.list_policies(query.cursor.as_deref(), query.limit())
    })
    .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// `POST /v1/admin/policies` (admin) -> 201 version 1.
/// Codes: `policy.invalid`, `policy.already_exists`.
async fn create(
    state: web::Data<AppState>,
    access: WriteAccess,
    id: RequestId,
    body: JsonBody<PolicySpec>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let policy = blocking(&id, move || admin.create_policy(&access, &body)).await?;
    Ok(HttpResponse::Created().json(policy))
}

/// `GET /v1/admin/policies/{name}` (admin, auditor). Code: `policy.not_found`.
async fn read(
    state: web::Data<AppState>,
    _caller: Caller,
    id: RequestId,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let policy = blocking(&id, move || admin.policy(&name)).await?;
    Ok(HttpResponse::Ok().json(policy))
}

/// `PUT /v1/admin/policies/{name}` (admin) -> the next version.
async fn replace(
    state: web::Data<AppState>,
    access: WriteAccess,
    id: RequestId,
    name: web::Path<String>,
    body: JsonBody<PolicySpec>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let policy = blocking(&id, move || admin.replace_policy(&access, &name, &body)).await?;
    Ok(HttpResponse::Ok().json(policy))
}

/// `DELETE /v1/admin/policies/{name}` (admin): writes a disabled version.
async fn disable(
    state: web::Data<AppState>,
    access: WriteAccess,
    id: RequestId,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let policy = blocking(&id, move || admin.disable_policy(&access, &name)).await?;
    Ok(HttpResponse::Ok().json(policy))
}

/// `POST /v1/admin/policies/{name}/evaluate` (admin, auditor): dry run.
async fn evaluate(
    state: web::Data<AppState>,
    _caller: Caller,
    id: RequestId,
    name: web::Path<String>,
    body: JsonBody<EvaluateRequest>,
) -> Result<HttpResponse, ApiError> {
    let issuer = state.issuer.clone();
    let outcome = blocking(&id, move || issuer.evaluate(&name, &body)).await?;
    Ok(HttpResponse::Ok().json(outcome))
}
