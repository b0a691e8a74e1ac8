//! Authentication of HTTP requests and WebSocket upgrades: the token from the
//! request, the Origin allowlist, and the HTTP answers for refusals.

use http::{HeaderMap, StatusCode};
use warp::Filter;

use super::reply::error_reply;
use crate::auth::{Identity, token_from_request};
use crate::gateway::Gateway;
use crate::stats::stats;

/// A request's headers and raw query string (empty when there is none).
pub fn request_parts()
-> impl Filter<Extract = (HeaderMap, String), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned().and(warp::query::raw().or(warp::any().map(String::new)).unify())
}

/// Who sent the request, or the 401 answer naming why the token was refused.
pub fn identify(
    gateway: &Gateway,
    headers: &HeaderMap,
    query: &str,
) -> Result<Identity, warp::reply::Response> {
    let token = token_from_request(headers, query, gateway.auth.query_param());
    gateway.auth.authenticate(token.as_deref()).map_err(|e| {
        stats().auth_failures.add(1);
        // The reason only: a token is never logged.
        tracing::info!(reason = e.code(), "request refused: bad or missing token");
        let mut response = error_reply(StatusCode::UNAUTHORIZED, e.code(), &e.to_string());
        response.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_static("Bearer realm=\"kgate\""),
        );
        response
    })
}

/// The 403 answer for an authenticated client that lacks a permission.
pub fn forbidden(message: &str) -> warp::reply::Response {
    stats().auth_forbidden.add(1);
    error_reply(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Refuses a browser request whose `Origin` is not allowed (requests without one pass).
pub fn check_origin(gateway: &Gateway, headers: &HeaderMap) -> Result<(), warp::reply::Response> {
    let allowed = &gateway.config.auth.allowed_origins;
    let Some(origin) = headers.get("origin") else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if allowed.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    stats().refused_origin.add(1);
    Err(error_reply(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        &format!("origin {origin:?} is not in auth.allowed_origins"),
    ))
}
