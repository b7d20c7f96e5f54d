//! Admin API: bearer-authenticated with an admin JWT minted by
//! `certmint-server admin-token`. The `auditor` role reads; only `admin`
//! writes.

pub mod audit;
pub mod certificates;
pub mod policies;
pub mod provisioners;
pub mod tokens;

use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use certmint::ProblemCode;
use serde::Deserialize;

use super::error::ApiError;
use super::{AppState, RequestId};
use crate::admin::WriteAccess;
use crate::tokens::Role;

/// Registers every admin route.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .configure(policies::routes)
        .configure(tokens::routes)
        .configure(provisioners::routes)
        .configure(certificates::routes)
        .configure(audit::routes);
}

/// An authenticated admin caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token subject.
    pub subject: String,
    /// Role.
    pub role: Role,
    /// Request id, for errors.
    pub request_id: String,
}

impl Caller {
    /// `admin:<subject>`, as recorded in audit events.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.subject)
    }

    /// Refuses callers without the admin role; the returned capability is
    /// what the admin service's write methods require.
    pub fn require_admin(&self) -> Result<WriteAccess, ApiError> {
        match self.role {
            Role::Admin => Ok(WriteAccess::granted_to(self.actor())),
            Role::Auditor => Err(ApiError::new(
                ProblemCode::AuthForbidden,
                "the auditor role is read-only",
            )
            .with_request_id(&self.request_id)),
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(authenticate(request, payload))
    }
}

/// Write handlers take [`WriteAccess`] before their body: actix extracts
/// parameters in order, so an auditor gets 403 `auth.forbidden` before the
/// body is read, not a 400 or 413 about a body it may not send at all.
impl FromRequest for WriteAccess {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(authenticate(request, payload).and_then(|caller| caller.require_admin()))
    }
}

fn authenticate(
    request: &HttpRequest,
    payload: &mut actix_web::dev::Payload,
) -> Result<Caller, ApiError> {
    let request_id = RequestId::from_request(request, payload)
        .into_inner()
        .map(|id| id.0)
        .unwrap_or_default();
    let fail = |code, detail: &str| ApiError::new(code, detail).with_request_id(&request_id);
    let state = request
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| fail(ProblemCode::Internal, "application state missing"))?;
    let header_value = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            fail(
                ProblemCode::AuthMissing,
                "send Authorization: Bearer <admin token>",
            )
        })?;
    let token = header_value
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            fail(
                ProblemCode::AuthMissing,
                "Authorization must use the Bearer scheme",
            )
        })?;
    let now = state.clock.now();
    let claims = state
        .tokens
        .verify_admin(token, &state.admin_audience, now)
        .map_err(|error| {
            fail(
                ProblemCode::AuthInvalid,
                &format!("admin token refused: {error}"),
            )
        })?;
    Ok(Caller {
        subject: claims.registered.sub,
        role: claims.role,
        request_id,
    })
}

/// `?cursor=&limit=` on every list.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// Opaque cursor from a previous page's `next`.
    pub cursor: Option<String>,
    /// Page size (1–500, default 100).
    pub limit: Option<u32>,
}

impl PageQuery {
    /// The page size to use.
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(100)
    }
}
