//! Authentication of HTTP requests and WebSocket upgrades: the token from the
//! request, the Origin allowlist, and the HTTP answers for refusals.

use http::{HeaderMap, StatusCode};
use warp::Filter;

use super::reply::error_reply;
use crate::auth::{Identity, token_from_request};
use crate::gateway::Gateway;
use crate::limits::{Refusal, Ticket};
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
    let token = token_from_request(headers, query, gateway.services.auth.query_param());
    gateway
        .services
        .auth
        .authenticate(token.as_deref())
        .map_err(|e| {
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
    let allowed = &gateway.services.config.auth.allowed_origins;
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

/// Admits a client of a streaming transport (WebSocket, SSE, long-poll): its Origin,
/// the per-address attempt rate (before the token check, so guessing tokens is
/// rate limited), its token, then the connection counts (per token subject, or per
/// address without authentication).
pub fn admit(
    gateway: &Gateway,
    headers: &HeaderMap,
    query: &str,
    remote: Option<std::net::SocketAddr>,
) -> Result<(Ticket, Identity), warp::reply::Response> {
    check_origin(gateway, headers)?;
    let ip = remote.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |r| r.ip());
    gateway
        .services
        .admission
        .attempt(ip)
        .map_err(|refusal| admission_refused(gateway, refusal))?;
    let identity = identify(gateway, headers, query)?;
    let who = match identity.subject.is_empty() {
        true => ip.to_string(),
        false => identity.subject.clone(),
    };
    let ticket = gateway
        .services
        .admission
        .admit(who)
        .map_err(|refusal| admission_refused(gateway, refusal))?;
    Ok((ticket, identity))
}

fn admission_refused(gateway: &Gateway, refusal: Refusal) -> warp::reply::Response {
    match refusal {
        Refusal::AttemptRate => error_reply(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many connection attempts from this address; retry later",
        ),
        Refusal::MaxConnections => error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "the gateway is at its connection limit; retry later or elsewhere",
        ),
        Refusal::IdentityConnections => error_reply(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections_for_identity",
            &format!(
                "at most {} open connections per identity",
                gateway.services.config.limits.max_connections_per_identity
            ),
        ),
    }
}
