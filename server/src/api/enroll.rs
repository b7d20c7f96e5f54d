//! `POST /v1/enroll`: first enrollment with a bootstrap token.

use actix_web::{web, HttpResponse};
use certmint::wire::EnrollRequest;

use super::error::ApiError;
use super::json::JsonBody;
use super::{blocking, AppState, RequestId};

/// Registers the route.
pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/v1/enroll", web::post().to(enroll));
}

/// `POST /v1/enroll` -> 201 [`certmint::wire::CertificateBundle`].
///
/// Problem codes: `request.*`, `csr.*`, `token.*`, `policy.*`,
/// `hsm.unavailable`, `store.unavailable`.
async fn enroll(
    state: web::Data<AppState>,
    id: RequestId,
    body: JsonBody<EnrollRequest>,
) -> Result<HttpResponse, ApiError> {
    let issuer = state.issuer.clone();
    let request = body.into_inner();
    let bundle = blocking(&id, move || issuer.enroll(&request)).await?;
    tracing::info!(
        request.id = %id.0,
        cert.serial = %bundle.serial,
        policy.name = %bundle.policy,
        policy.version = bundle.policy_version,
        "certificate issued"
    );
    Ok(HttpResponse::Created().json(bundle))
}
