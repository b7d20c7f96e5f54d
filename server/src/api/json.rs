//! The JSON body extractor every handler uses: [`JsonBody`].
//!
//! It is actix-web's `web::Json` (size limit, decoding, the error handler
//! of `json_config`) with one rule added in front: the body must be sent
//! as `application/json` or `application/<something>+json`, as the README
//! and the openapi promise. actix-web's own check also takes `text/json`,
//! `image/json` and `text/plain+json`; a browser sends some of those
//! cross-site without a preflight, and a browser holding a workload's
//! client certificate must not be able to post `/v1/renew` for it.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{mime, web, FromRequest, HttpMessage as _, HttpRequest};
use certmint::ProblemCode;
use serde::de::DeserializeOwned;

/// A decoded JSON request body of type `T`.
#[derive(Debug)]
pub struct JsonBody<T>(T);

impl<T> JsonBody<T> {
    /// The decoded body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for JsonBody<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // A missing or unparsable Content-Type is left to `web::Json`,
        // which refuses it through the same error handler.
        if let Ok(Some(media_type)) = request.mime_type() {
            if !is_json_media_type(&media_type) {
                let refusal = super::request_error(
                    ProblemCode::RequestMalformed,
                    super::NOT_JSON_DETAIL.to_owned(),
                    request,
                );
                return Box::pin(async move { Err(refusal) });
            }
        }
        let decoding = web::Json::<T>::from_request(request, payload);
        Box::pin(async move { decoding.await.map(|body| JsonBody(body.into_inner())) })
    }
}

/// `application/json` or `application/*+json`.
fn is_json_media_type(media_type: &mime::Mime) -> bool {
    media_type.type_() == mime::APPLICATION
        && (media_type.subtype() == mime::JSON || media_type.suffix() == Some(mime::JSON))
}

#[cfg(test)]
mod tests {
    use super::is_json_media_type;

    #[test]
    fn ok_json_media_types_are_application_json_or_a_json_suffix() {
        for accepted in [
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
            "application/merge-patch+json",
        ] {
            let media_type = accepted.parse().expect("a media type");
            assert!(is_json_media_type(&media_type), "{accepted}");
        }
    }

    #[test]
    fn fail_json_subtypes_of_other_top_level_types() {
        for refused in [
            "text/json",
            "image/json",
            "text/plain+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let media_type = refused.parse().expect("a media type");
            assert!(!is_json_media_type(&media_type), "{refused}");
        }
    }
}
