//! `/v1/admin/tokens[/{id}]`: mint, list, read, revoke bootstrap tokens.

use actix_web::{web, HttpResponse};
use certmint::wire::MintTokenRequest;

use super::{Caller, PageQuery};
use crate::admin::WriteAccess;
use crate::api::error::ApiError;
use crate::api::json::JsonBody;
use crate::api::{blocking, AppState, RequestId};

/// Registers the routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/admin/tokens", web::get().to(list))
        .route("/v1/admin/tokens", web::post().to(mint))
        .route("/v1/admin/tokens/{id}", web::get().to(read))
        .route("/v1/admin/tokens/{id}", web::delete().to(revoke));
}

/// `POST /v1/admin/tokens` (admin) -> 201 with the JWT (shown once).
/// Codes: `policy.not_found`, `policy.disabled`, `policy.identity_outside_policy`.
async fn mint(
    state: web::Data<AppState>,
    access: WriteAccess,
    id: RequestId,
    body: JsonBody<MintTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let minted = blocking(&id, move || admin.mint_token(&access, &body)).await?;
    Ok(HttpResponse::Created().json(minted))
}

/// `GET /v1/admin/tokens` (admin, auditor).
async fn list(
    state: web::Data<AppState>,
    _caller: Caller,
    id: RequestId,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let page = blocking(&id, move || {
        admin.list_tokens(query.cursor.as_deref(), query.limit())
    })
    .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// `GET /v1/admin/tokens/{id}` (admin, auditor). Code: `token.not_found`.
async fn read(
    state: web::Data<AppState>,
    _caller: Caller,
    id: RequestId,
    token_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let token = blocking(&id, move || admin.token(&token_id)).await?;
    Ok(HttpResponse::Ok().json(token))
}

/// `DELETE /v1/admin/tokens/{id}` (admin): revoke.
async fn revoke(
    state: web::Data<AppState>,
    access: WriteAccess,
    id: RequestId,
    token_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let token = blocking(&id, move || admin.revoke_token(&access, &token_id)).await?;
    Ok(HttpResponse::Ok().json(token))
}
