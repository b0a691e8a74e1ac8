//! Publishing into Kafka on a client's behalf, for every front end (`POST
//! /v1/publish`, the `publish` command of the connection protocol): the checks
//! (permission, served topic, size, JSON) and the produce, with a typed error
//! naming what failed.

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};

use crate::auth::Permissions;
use crate::codec::depth::nests_deeper_than;
use crate::config::PublishConfig;
use crate::kafka::producer::{Delivered, Producer};
use crate::router::Router;
use crate::stats::stats;

/// One record a client asks to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub topic: String,
    pub key: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    pub value: Bytes,
    /// The value must be JSON (checked, and its depth bounded).
    pub json: bool,
}

/// Why a publication was refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    #[error("publishing is off here (publish.enabled = false)")]
    Disabled,
    #[error("the token does not permit publishing to {0:?}")]
    Forbidden(String),
    #[error("topic {0:?} is not served here")]
    UnknownTopic(String),
    #[error("the value is {size} bytes; the limit is publish.max_body_bytes = {max}")]
    TooLarge { size: usize, max: usize },
    #[error("the value is not JSON: {0}")]
    InvalidJson(String),
    #[error("the value nests arrays and objects deeper than publish.max_json_depth = {0}")]
    TooDeep(usize),
    #[error(
        "the record (value, key and headers) is larger than topic {0:?} accepts (its max.message.bytes)"
    )]
    RecordTooLarge(String),
    #[error("could not produce to {topic:?}: {reason}")]
    Kafka { topic: String, reason: String },
    #[error(
        "more than publish.max_per_connection_per_sec = {0} publishes per second on this connection; this one was not produced"
    )]
    RateLimited(u32),
}

impl PublishError {
    /// The stable code HTTP answers and `error` frames carry.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::Disabled => "publish_disabled",
            PublishError::Forbidden(_) => "forbidden",
            PublishError::UnknownTopic(_) => "unknown_topic",
            PublishError::TooLarge { .. } => "body_too_large",
            PublishError::InvalidJson(_) | PublishError::TooDeep(_) => "invalid_json",
            PublishError::RecordTooLarge(_) => "record_too_large",
            PublishError::Kafka { .. } => "kafka_unavailable",
            PublishError::RateLimited(_) => "rate_limited",
        }
    }
}

/// Checks what can be checked before the value is read: the permission first (so the
/// answer tells a stranger nothing of what is served), then the topic.
pub fn check_topic(
    permissions: &Permissions,
    router: &Router,
    topic: &str,
) -> Result<(), PublishError> {
    if !permissions.can_publish(topic) {
        return Err(PublishError::Forbidden(topic.to_string()));
    }
    if router.topic(topic).is_none() {
        return Err(PublishError::UnknownTopic(topic.to_string()));
    }
    Ok(())
}

/// Checks the value: its size, and for JSON that it parses within the depth limit.
pub fn check_value(limits: &PublishConfig, value: &[u8], json: bool) -> Result<(), PublishError> {
    if value.len() > limits.max_body_bytes {
        return Err(PublishError::TooLarge {
            size: value.len(),
            max: limits.max_body_bytes,
        });
    }
    if json {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(value) {
            return Err(PublishError::InvalidJson(e.to_string()));
        }
        if nests_deeper_than(value, limits.max_json_depth) {
            return Err(PublishError::TooDeep(limits.max_json_depth));
        }
    }
    Ok(())
}

/// Produces a checked publication and waits for Kafka's acknowledgement.
pub async fn produce(
    producer: &Producer,
    publication: &Publication,
) -> Result<Delivered, PublishError> {
    let headers = publication
        .headers
        .iter()
        .fold(OwnedHeaders::new(), |h, (name, value)| {
            h.insert(Header {
                key: name,
                value: Some(&value[..]),
            })
        });
    let topic = &publication.topic;
    let sent = producer
        .send(
            topic,
            publication.key.as_deref(),
            Some(&publication.value),
            Some(headers),
        )
        .await;
    match sent {
        Ok(delivered) => {
            stats().published.add(1);
            Ok(delivered)
        }
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
            Err(PublishError::RecordTooLarge(topic.clone()))
        }
        Err(e) => Err(PublishError::Kafka {
            topic: topic.clone(),
            reason: e.to_string(),
        }),
    }
}
