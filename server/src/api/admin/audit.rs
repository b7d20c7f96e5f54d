//! `GET /v1/admin/audit`: the hash-chained audit log, oldest first.

use actix_web::{web, HttpResponse};

use super::{Caller, PageQuery};
use crate::api::error::ApiError;
use crate::api::{blocking, AppState, RequestId};

/// Registers the route.
pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/v1/admin/audit", web::get().to(list));
}

/// `GET /v1/admin/audit?cursor=&limit=` (admin, auditor).
async fn list(
    state: web::Data<AppState>,
    _caller: Caller,
    id: RequestId,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let admin = state.admin.clone();
    let page = blocking(&id, move || {
        admin.audit(query.cursor.as_deref(), query.limit())
    })
    .await?;
    Ok(HttpResponse::Ok().json(page))
}
