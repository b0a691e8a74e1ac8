//! Everything that talks to Kafka: the embedded development broker, cluster
//! metadata, live ingest, catch-up replay readers and the producer.

pub mod batch;
pub mod cluster;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
#[cfg(not(feature = "embedded-broker"))]
#[path = "embedded_off.rs"]
pub mod embedded;
pub mod ingest;
pub mod layout;
pub mod producer;
pub mod replay;
pub mod snapshot;

use rdkafka::ClientConfig;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::codec::{
    Data, Decoded, EncodedRecord, RecordMeta, TopicCodec, encode_envelope, encode_event,
};
use crate::config::Config;

/// Client settings shared by every rdkafka client kgate creates.
pub fn client_config(config: &Config, role: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", config.bootstrap_servers())
        .set("client.id", format!("{}-{role}", config.kafka.client_id))
        // Quiet librdkafka's own retries; kgate logs the failures it acts on.
        .set("log_level", "3")
        .set(
            "socket.connection.setup.timeout.ms",
            config.kafka.request_timeout_ms.max(1000).to_string(),
        );
    cc
}

/// Consumer settings for manually assigned partitions (no group, no commits).
pub fn consumer_config(config: &Config, role: &str) -> ClientConfig {
    let mut cc = client_config(config, role);
    cc.set("group.id", format!("{}-{role}", config.kafka.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "fetch.wait.max.ms",
            config.kafka.fetch_wait_max_ms.to_string(),
        )
        .set("fetch.min.bytes", "1")
        // Once a reader holds `queued.min.messages` unread, librdkafka stops fetching for
        // this long (default 1 s): a replay reader that fell slightly behind its fetcher
        // then sat idle for most of each second (17% of a raw consumer's rate on Kafka).
        .set("fetch.queue.backoff.ms", "10")
        .set("auto.offset.reset", "earliest");
    cc
}

/// What kgate encodes of a consumed message, from rust-rdkafka's one-message poll or
/// from a [`batch::BatchReader`].
pub struct Consumed<'a> {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, when the record has a timestamp.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    /// None for a tombstone.
    pub payload: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl<'a> From<&'a BorrowedMessage<'_>> for Consumed<'a> {
    fn from(message: &'a BorrowedMessage<'_>) -> Self {
        Consumed {
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key(),
            payload: message.payload(),
            headers: message
                .headers()
                .map(|hs| hs.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default(),
        }
    }
}

/// Decodes and encodes one consumed message into the frame every recipient shares.
/// A value that fails to decode under policy `skip`, or a frame over `max_bytes`, is
/// replaced by a `skipped` notice (counted and logged with its position).
pub fn encode_message(
    topic: &std::sync::Arc<str>,
    message: &Consumed<'_>,
    codec: &TopicCodec,
    max_bytes: usize,
) -> EncodedRecord {
    let meta = RecordMeta {
        topic: topic.clone(),
        partition: message.partition,
        offset: message.offset,
    };
    let headers = &message.headers;
    let skipped = |reason: &str, detail: serde_json::Value| {
        crate::codec::skipped_frame(&meta.topic, meta.partition, meta.offset, reason, detail).into()
    };
    let mut frame = match codec.decode(message.payload) {
        Decoded::Deliver(data) => {
            if let Data::Undecodable(_, why) = &data {
                tracing::warn!(topic = %meta.topic, partition = meta.partition, offset = meta.offset, error = %why, "value does not decode; delivered raw (on_decode_error = \"raw\")");
            }
            encode_event(&meta, message.timestamp, message.key, headers, &data)
        }
        Decoded::Skip(why) => {
            tracing::warn!(topic = %meta.topic, partition = meta.partition, offset = meta.offset, error = %why, "value does not decode; skipped (on_decode_error = \"skip\")");
            skipped(
                "decode_failed",
                serde_json::json!({"error": why.to_string()}),
            )
        }
    };
    if frame.len() > max_bytes {
        crate::stats::stats().oversize_records_skipped.add(1);
        tracing::info!(topic = %meta.topic, partition = meta.partition, offset = meta.offset, bytes = frame.len(), "record too large to deliver; subscribers get a skipped notice");
        frame = skipped(
            "record_too_large",
            serde_json::json!({"bytes": frame.len()}),
        );
    }
    let mut record =
        EncodedRecord::new(meta, message.key.map(bytes::Bytes::copy_from_slice), frame);
    record.deleted = message.payload.is_none();
    record.timestamp = message.timestamp;
    if codec.binary {
        let envelope = encode_envelope(
            &record.meta,
            message.timestamp,
            message.key,
            headers,
            message.payload,
        );
        // Too large for a client: it gets the JSON `skipped` notice instead.
        record.binary = (envelope.len() <= max_bytes).then_some(envelope);
    }
    record.headers = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.map(bytes::Bytes::copy_from_slice)))
        .collect();
    record
}
