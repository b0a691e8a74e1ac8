//! `POST /v1/publish/{topic}`: produce one record to Kafka and answer where it landed.
//!
//! The body is the record's value (JSON is checked when the content type says JSON);
//! the key comes from `?key=`, headers from `kgate-header-<name>` request headers.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::json;
use warp::Filter;
use warp::reply::Reply;

use super::access::{forbidden, identify, request_parts};
use super::reply::error_reply;
use crate::gateway::Gateway;
use crate::stats::stats;
use std::sync::Arc;

/// Request headers with this prefix become Kafka record headers (prefix removed).
pub const HEADER_PREFIX: &str = "kgate-header-";

/// The publish route (absent when `publish.enabled` is off).
pub fn route(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let max = gateway.config.publish.max_body_bytes as u64;
    warp::path!("v1" / "publish" / String)
        .and(warp::post())
        .and(request_parts())
        .and(
            // Refuse by Content-Length before reading; a chunked body is capped as it is read.
            warp::body::content_length_limit(max)
                .and(warp::body::bytes())
                .map(Ok)
                .or(warp::any().map(|| Err(())))
                .unify(),
        )
        .then(
            move |topic: String, headers: HeaderMap, query: String, body: Result<Bytes, ()>| {
                let gateway = gateway.clone();
                async move { publish(&gateway, &topic, &headers, &query, body).await }
            },
        )
}

async fn publish(
    gateway: &Gateway,
    topic: &str,
    headers: &HeaderMap,
    query: &str,
    body: Result<Bytes, ()>,
) -> warp::reply::Response {
    let Some(producer) = &gateway.producer else {
        return error_reply(
            StatusCode::NOT_FOUND,
            "publish_disabled",
            "publish.enabled is off",
        );
    };
    let identity = match identify(gateway, headers, query) {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    if gateway.router.topic(topic).is_none() {
        return error_reply(
            StatusCode::NOT_FOUND,
            "unknown_topic",
            &format!("topic {topic:?} is not served here"),
        );
    }
    if !identity.permissions.can_publish(topic) {
        return forbidden(&format!(
            "the token does not permit publishing to {topic:?}"
        ));
    }
    let Ok(body) = body else {
        return error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!(
                "the body must be at most publish.max_body_bytes = {} bytes, with a Content-Length",
                gateway.config.publish.max_body_bytes
            ),
        );
    };
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                &format!("the body is not JSON: {e}"),
            );
        }
    }
    let key = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned());
    let mut record_headers = OwnedHeaders::new();
    for (name, value) in headers {
        if let Some(short) = name.as_str().strip_prefix(HEADER_PREFIX) {
            record_headers = record_headers.insert(Header {
                key: short,
                value: Some(value.as_bytes()),
            });
        }
    }
    match producer
        .send(
            topic,
            key.as_deref().map(str::as_bytes),
            Some(&body),
            Some(record_headers),
        )
        .await
    {
        Ok(delivered) => {
            stats().published.add(1);
            warp::reply::json(&json!({
                "topic": topic,
                "partition": delivered.partition,
                "offset": delivered.offset,
            }))
            .into_response()
        }
        Err(e) => error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            &format!("could not produce to {topic:?}: {e}"),
        ),
    }
}
