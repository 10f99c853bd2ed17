//! `GET /api/whoami`: which API key a bearer token is, so `cryptun login`
//! can check a key before saving it rather than at the first tunnel.
//!
//! The answer, always JSON and never cached:
//!
//! - 200 `{"id":"k7x2abcd","name":"laptop","auth":"required"}` for a key the
//!   store knows and has not revoked;
//! - 200 `{"auth":"off"}` when the server checks no keys at all (any key
//!   works, none is needed);
//! - 401 `{"error":"unauthorized",...}` for no key, an unknown one or a
//!   revoked one, counted as a failed attempt by the same per-address
//!   backoff as a refused `create_tunnel` (so this route is no faster a way
//!   to guess keys than `/ws`);
//! - 429 `{"error":"too_many_attempts",...}` with `Retry-After` while the
//!   address is in that backoff;
//! - 503 when the store cannot be asked.

use cryptun_proto::Secret;
use cryptun_proto::message::ErrorCode;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::Control;
use super::auth::Refusal;
use crate::body::{Body, full};
use crate::edge::Peer;
use crate::error::retry_secs;
use crate::ops::admin;

/// The path of the route.
pub(crate) const PATH: &str = "/api/whoami";

impl Control {
    /// Answers `GET /api/whoami` from `peer` with these `headers`.
    pub(crate) async fn whoami(&self, peer: Peer, headers: &HeaderMap) -> Response<Body> {
        let auth = &self.admit.auth;
        if let Some(wait) = auth.blocked(peer.ip()) {
            return refusal_json(StatusCode::TOO_MANY_REQUESTS, &Refusal::backoff(wait));
        }
        let Some(store) = auth.keys() else {
            return answer(StatusCode::OK, json!({ "auth": "off" }));
        };
        let unauthorized = |message: &str| {
            let refusal = auth.failure(
                peer.ip(),
                Refusal::new(ErrorCode::Unauthorized, message.to_owned()),
            );
            refusal_with_challenge(&refusal)
        };
        let Some(token) = bearer(headers) else {
            return unauthorized("no API key: send it as Authorization: Bearer KEY");
        };
        match store.identify(token).await {
            Ok(Some((id, name))) => answer(
                StatusCode::OK,
                json!({ "id": id, "name": name, "auth": self.config.auth.to_string() }),
            ),
            Ok(None) => unauthorized("the API key is unknown or revoked"),
            Err(err) => {
                tracing::warn!(%err, "could not check an API key");
                let refusal = Refusal::new(
                    ErrorCode::Internal,
                    "the server could not check the API key; try again later",
                );
                refusal_json(StatusCode::SERVICE_UNAVAILABLE, &refusal)
            }
        }
    }
}

/// The token of `Authorization: Bearer TOKEN`, if that is the header (the
/// admin token's rule).
fn bearer(headers: &HeaderMap) -> Option<Secret> {
    let token = admin::bearer(headers.get(header::AUTHORIZATION)?)?;
    let token = std::str::from_utf8(token).ok()?;
    (!token.is_empty()).then(|| Secret::new(token))
}

fn refusal_json(status: StatusCode, refusal: &Refusal) -> Response<Body> {
    let mut body = json!({
        "error": refusal.code.wire_name(),
        "message": refusal.message,
    });
    if let Some(wait) = refusal.retry_after {
        body["retry_after_ms"] = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).into();
    }
    let mut resp = answer(status, body);
    if let Some(wait) = refusal.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(wait)));
    }
    resp
}

fn refusal_with_challenge(refusal: &Refusal) -> Response<Body> {
    let mut resp = refusal_json(StatusCode::UNAUTHORIZED, refusal);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"cryptun\""),
    );
    resp
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(serde_json::to_vec(&body).unwrap_or_default()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_header_carries_a_token() {
        let mut headers = HeaderMap::new();
        assert!(bearer(&headers).is_none());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YTpi"),
        );
        assert!(bearer(&headers).is_none());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  ck_x "),
        );
        assert_eq!(
            bearer(&headers).map(|s| s.expose().to_owned()).as_deref(),
            Some("ck_x")
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(bearer(&headers).is_none());
    }
}
