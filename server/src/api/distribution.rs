//! What relying parties fetch without credentials and, on the plain-HTTP
//! listener, without trusting the CA's TLS first: the CRLs and the CA chain.
//!
//! CRLs come from the publisher's in-memory snapshot (refreshed from the
//! database every second on every replica), so serving them touches
//! neither the database nor the HSM. Each CRL is served with a strong
//! `ETag` (`"sha256:<hex>"` of its DER) and answers a matching
//! `If-None-Match` with 304, so a workload that polls moves only the shards
//! that changed.

use actix_web::http::header::{self, EntityTag, HttpDate};
use actix_web::{web, HttpRequest, HttpResponse};
use certmint::ProblemCode;

use super::error::ApiError;
use super::{AppState, RequestId};

/// How long a cache may keep a CRL without asking again: short, so a
/// revocation is not hidden behind a cache for long, and cheap, since
/// revalidation is a 304.
const CRL_MAX_AGE_SECONDS: u32 = 30;

/// Registers the routes (on the HTTPS API and on the CRL listener).
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/crls", web::get().to(index))
        .route("/crl/{issuer}/{file}", web::get().to(crl))
        .route("/v1/ca/chain.pem", web::get().to(chain));
}

/// `GET /v1/crls`: the newest CRL of every shard of every issuer.
async fn index(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(state.crls.snapshot().index())
}

/// `GET /crl/{issuer}/{shard}.crl`: one DER CRL.
/// Problem codes: `crl.not_found`.
async fn crl(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: RequestId,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (issuer, file) = path.into_inner();
    let not_found = || {
        ApiError::new(
            ProblemCode::CrlNotFound,
            format!("no CRL is published at /crl/{issuer}/{file}; GET /v1/crls lists them"),
        )
        .with_request_id(&id.0)
    };
    let shard: u32 = file
        .strip_suffix(".crl")
        .and_then(|number| number.parse().ok())
        .ok_or_else(not_found)?;
    let snapshot = state.crls.snapshot();
    let published = snapshot.get(&issuer, shard).ok_or_else(not_found)?;
    let tag = EntityTag::new_strong(published.summary.sha256.clone());
    let last_modified = HttpDate::from(std::time::SystemTime::from(published.summary.this_update));
    let unchanged = request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|candidate| {
            candidate == "*"
                || candidate
                    .trim_start_matches("W/")
                    .parse::<EntityTag>()
                    .is_ok_and(|given| given.weak_eq(&tag))
        });
    let mut response = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header(header::ETag(tag))
        .insert_header(header::LastModified(last_modified))
        .insert_header((
            header::CACHE_CONTROL,
            format!("public, max-age={CRL_MAX_AGE_SECONDS}"),
        ));
    if unchanged {
        return Ok(response.finish());
    }
    Ok(response
        .content_type("application/pkix-crl")
        .body(published.der.as_ref().clone()))
}

/// `GET /v1/ca/chain.pem`: issuing certificate, intermediates, root.
async fn chain(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/pem-certificate-chain")
        .body(state.issuer.ca().chain_pem.clone())
}
