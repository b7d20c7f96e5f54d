//! `POST /v1/renew` and `POST /v1/revoke`: what the holder of a certificate
//! may do with it, authenticated by that certificate over mutual TLS.

use actix_web::{web, HttpResponse};
use certmint::wire::{RenewRequest, RevokeRequest};

use super::error::ApiError;
use super::json::JsonBody;
use super::{blocking, AppState, ClientCertificate, RequestId};

/// Registers the routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/renew", web::post().to(renew))
        .route("/v1/revoke", web::post().to(revoke));
}

/// `POST /v1/renew` -> 201 [`certmint::wire::CertificateBundle`].
///
/// Problem codes: `request.*`, `mtls.*`, `certificate.revoked`,
/// `certificate.expired`, `renewal.*`, `csr.*`, `policy.*`,
/// `hsm.unavailable`, `store.unavailable`.
async fn renew(
    state: web::Data<AppState>,
    id: RequestId,
    client: ClientCertificate,
    body: JsonBody<RenewRequest>,
) -> Result<HttpResponse, ApiError> {
    let issuer = state.issuer.clone();
    let request = body.into_inner();
    let bundle = blocking(&id, move || {
        issuer.renew(client.0.as_deref().map(Vec::as_slice), &request)
    })
    .await?;
    tracing::info!(
        request.id = %id.0,
        cert.serial = %bundle.serial,
        policy.name = %bundle.policy,
        policy.version = bundle.policy_version,
        "certificate renewed"
    );
    Ok(HttpResponse::Created().json(bundle))
}

/// `POST /v1/revoke` -> 200 [`certmint::wire::CertificateInfo`]: revokes the
/// certificate presented in the handshake.
///
/// Problem codes: `request.*`, `mtls.*`, `certificate.already_revoked`,
/// `store.unavailable`.
async fn revoke(
    state: web::Data<AppState>,
    id: RequestId,
    client: ClientCertificate,
    body: JsonBody<RevokeRequest>,
) -> Result<HttpResponse, ApiError> {
    let issuer = state.issuer.clone();
    let request = body.into_inner();
    let info = blocking(&id, move || {
        issuer.revoke_presented(client.0.as_deref().map(Vec::as_slice), &request)
    })
    .await?;
    tracing::info!(request.id = %id.0, cert.serial = %info.serial, "certificate revoked by its holder");
    Ok(HttpResponse::Ok().json(info))
}
