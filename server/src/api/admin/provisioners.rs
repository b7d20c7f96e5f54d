//! `/v1/admin/provisioners[/{name}]`: register, list, read and disable
//! external token issuers.

use actix_web::{web, HttpResponse};
use certmint::wire::NewProvisioner;

use super::Caller;
use crate::admin::WriteAccess;
use crate::api::error::ApiError;
use crate::api::json::JsonBody;
use crate::api::{blocking, AppState, RequestId};

/// Registers the routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/admin/provisioners", web::get().to(list))
        .route("/v1/admin/provisioners", web::post().to(register))
        .route("/v1/admin/provisioners/{name}", web::get().to(read))
        .route("/v1/admin/provisioners/{name}", web::delete().to(disable));
}

/// `POST /v1/admin/provisioners` (admin) -> 201. Codes:
/// `provisioner.invalid`, `provisioner.already_exists`, `policy.not_found`.
async fn register(
    state: web::Data<AppState>,
    access: WriteAccess,
    id: RequestId,
    body: JsonBody<NewProvisioner>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let registered = blocking(&id, move || admin.register_provisioner(&access, &body)).await?;
    Ok(HttpResponse::Created().json(registered))
}

/// `GET /v1/admin/provisioners` (admin, auditor): all, by name.
async fn list(
    state: web::Data<AppState>,
    _caller: Caller,
    id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let page = blocking(&id, move || admin.list_provisioners()).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// `GET /v1/admin/provisioners/{name}` (admin, auditor). Code:
/// `provisioner.not_found`.
async fn read(
    state: web::Data<AppState>,
    _caller: Caller,
    id: RequestId,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let provisioner = blocking(&id, move || admin.provisioner(&name)).await?;
    Ok(HttpResponse::Ok().json(provisioner))
}

/// `DELETE /v1/admin/provisioners/{name}` (admin): disable. Its tokens are
/// refused from then on; the name is never reused.
async fn disable(
    state: web::Data<AppState>,
    access: WriteAccess,
    id: RequestId,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let provisioner = blocking(&id, move || admin.disable_provisioner(&access, &name)).await?;
    Ok(HttpResponse::Ok().json(provisioner))
}
