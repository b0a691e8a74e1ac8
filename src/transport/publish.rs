//! `POST /v1/publish/{topic}`: produce one record to Kafka and answer where it landed.
//!
//! The body is the record's value (JSON is checked when the content type says JSON);
//! the key comes from `?key=`, headers from `kgate-header-<name>` request headers.

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use serde_json::json;
use warp::Filter;
use warp::reply::Reply;

use super::access::{forbidden, identify, request_parts};
use super::reply::error_reply;
use crate::gateway::Gateway;
use crate::publish::{self, Publication, PublishError};
use std::sync::Arc;

/// Request headers with this prefix become Kafka record headers (prefix removed).
pub const HEADER_PREFIX: &str = "kgate-header-";

/// The publish route (absent when `publish.enabled` is off).
pub fn route(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "publish" / String)
        .and(warp::post())
        .and(request_parts())
        // The body as a stream: nothing of it is read until the request passed every check.
        .and(warp::body::stream())
        .then(
            move |topic: String, headers: HeaderMap, query: String, body| {
                let gateway = gateway.clone();
                async move { publish(&gateway, &topic, &headers, &query, body).await }
            },
        )
}

/// Why a body could not be read within its limit.
enum BodyError {
    TooLarge,
    Read(warp::Error),
}

/// Reads at most `max` bytes of `body`.
async fn read_body(
    body: impl futures_util::Stream<Item = Result<impl Buf, warp::Error>>,
    expected: usize,
    max: usize,
) -> Result<Bytes, BodyError> {
    let mut body = std::pin::pin!(body);
    let mut out = bytes::BytesMut::with_capacity(expected.min(max));
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(BodyError::Read)?;
        if out.len() + chunk.remaining() > max {
            return Err(BodyError::TooLarge);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// The HTTP answer for a refused or failed publication.
fn refused(e: &PublishError) -> warp::reply::Response {
    let status = match e {
        PublishError::Disabled | PublishError::UnknownTopic(_) => StatusCode::NOT_FOUND,
        PublishError::Forbidden(_) => return forbidden(&e.to_string()),
        PublishError::TooLarge { .. } | PublishError::RecordTooLarge(_) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        PublishError::InvalidJson(_) | PublishError::TooDeep(_) => StatusCode::BAD_REQUEST,
        PublishError::Kafka { .. } => StatusCode::SERVICE_UNAVAILABLE,
        PublishError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
    };
    error_reply(status, e.code(), &e.to_string())
}

async fn publish(
    gateway: &Gateway,
    topic: &str,
    headers: &HeaderMap,
    query: &str,
    body: impl futures_util::Stream<Item = Result<impl Buf, warp::Error>>,
) -> warp::reply::Response {
    let Some(producer) = &gateway.services.producer else {
        return refused(&PublishError::Disabled);
    };
    // Token, permission and size come first: an unauthenticated or oversized body is
    // refused without reading it.
    let identity = match identify(gateway, headers, query) {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    if let Err(e) = publish::check_topic(&identity.permissions, &gateway.services.router, topic) {
        return refused(&e);
    }
    let limits = &gateway.services.config.publish;
    let too_large = || {
        error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!(
                "the body must be at most publish.max_body_bytes = {} bytes, with a Content-Length",
                limits.max_body_bytes
            ),
        )
    };
    let length = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(length) = length.filter(|l| *l <= limits.max_body_bytes as u64) else {
        return too_large();
    };
    let within =
        std::time::Duration::from_secs(gateway.services.config.server.body_read_timeout_secs);
    let read = read_body(body, length as usize, limits.max_body_bytes);
    let Ok(read) = tokio::time::timeout(within, read).await else {
        return error_reply(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            &format!(
                "the body did not arrive within server.body_read_timeout_secs = {}",
                within.as_secs()
            ),
        );
    };
    let body = match read {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Read(e)) => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &format!("the body could not be read: {e}"),
            );
        }
    };
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if let Err(e) = publish::check_value(limits, &body, json) {
        return refused(&e);
    }
    let key = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "key")
        .map(|(_, v)| Bytes::from(v.into_owned()));
    let record_headers = headers
        .iter()
        .filter_map(|(name, value)| {
            let short = name.as_str().strip_prefix(HEADER_PREFIX)?;
            Some((short.to_string(), Bytes::copy_from_slice(value.as_bytes())))
        })
        .collect();
    let publication = Publication {
        topic: topic.to_string(),
        key,
        headers: record_headers,
        value: body,
        json,
    };
    match publish::produce(producer, &publication).await {
        Ok(delivered) => warp::reply::json(&json!({
            "topic": topic,
            "partition": delivered.partition,
            "offset": delivered.offset,
        }))
        .into_response(),
        Err(e) => refused(&e),
    }
}
