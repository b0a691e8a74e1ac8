//! `[[topics]]` (what each served topic carries and how its subscribers are
//! treated) and `[schema_registry]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, is_valid_topic_name};

/// The slowest `max_rate` accepted: one update per key every 1,000 s.
pub const MIN_RATE: f64 = 0.001;
/// The fastest `max_rate` accepted, updates per second per key.
pub const MAX_RATE: f64 = 1000.0;

/// True for a `max_rate` (a subscription's or a topic's default) from [`MIN_RATE`] to [`MAX_RATE`].
pub fn valid_rate(rate: f64) -> bool {
    (MIN_RATE..=MAX_RATE).contains(&rate)
}

/// How the payloads of a topic are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// JSON passed through as the event's `data`.
    Json,
    /// Opaque bytes, delivered base64-encoded in `data_b64`.
    Raw,
    /// Avro datums of the schema in `schema` (a `.avsc` file), delivered as JSON.
    Avro,
    /// Confluent wire format (magic byte 0, 4-byte schema id, Avro datum); schemas come
    /// from `[schema_registry]`. Delivered as JSON.
    AvroConfluent,
}

/// What happens to a record whose value does not decode in the topic's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeFailurePolicy {
    /// Deliver the bytes base64-encoded in `data_b64`, with `decode_error` saying why.
    #[default]
    Raw,
    /// Deliver a `skipped` notice (reason `decode_failed`) in the record's place.
    Skip,
}

/// What kgate does with a subscription whose connection's outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Move the subscription off the live path; it continues from the ring or Kafka at the
    /// client's pace. No record is lost.
    #[default]
    CatchUp,
    /// Keep only the latest queued record per key (tickers); older queued values are replaced.
    Conflate,
    /// As `CatchUp`, but close with 4008 if not live again within `limits.slow_consumer_grace_ms`.
    Disconnect,
}

/// A Kafka topic the gateway serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Kafka topic name; also the channel name.
    pub name: String,
    /// Payload format.
    #[serde(default = "TopicConfig::default_format")]
    pub format: PayloadFormat,
    /// The Avro schema file of a `format = "avro"` topic.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// What happens to a value that does not decode.
    #[serde(default)]
    pub on_decode_error: DecodeFailurePolicy,
    /// Partition count used when kgate creates the topic.
    #[serde(default = "TopicConfig::default_partitions")]
    pub partitions: i32,
    /// What happens to a subscriber of this topic whose connection cannot keep up.
    #[serde(default)]
    pub slow_consumer: SlowConsumerPolicy,
    /// Default per-key update rate (per second) of subscriptions that do not set `max_rate`.
    #[serde(default)]
    pub max_rate: Option<f64>,
    /// Keep the latest record per key in memory (loaded from the topic at start) so
    /// subscriptions can ask for a snapshot.
    #[serde(default)]
    pub snapshot: bool,
    /// Also encode each record as a binary envelope for `kgate.v1.avro` clients
    /// (costs one more encoding per record at ingest and its bytes in the ring).
    #[serde(default)]
    pub binary: bool,
    /// Keys whose last record ingest keeps to diff the next one against, for
    /// subscriptions that ask for deltas (0: this topic sends no deltas).
    #[serde(default = "TopicConfig::default_delta_keys")]
    pub delta_keys: usize,
}

impl TopicConfig {
    fn default_format() -> PayloadFormat {
        PayloadFormat::Json
    }
    fn default_delta_keys() -> usize {
        10_000
    }
    fn default_partitions() -> i32 {
        3
    }
    /// A JSON topic with the default partition count.
    pub fn json(name: &str) -> Self {
        TopicConfig {
            name: name.to_string(),
            format: PayloadFormat::Json,
            schema: None,
            on_decode_error: DecodeFailurePolicy::default(),
            partitions: Self::default_partitions(),
            slow_consumer: SlowConsumerPolicy::default(),
            max_rate: None,
            snapshot: false,
            binary: false,
            delta_keys: Self::default_delta_keys(),
        }
    }
}

/// A Confluent-compatible schema registry, for `format = "avro_confluent"` topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL (`GET {url}/schemas/ids/{id}`); empty: none, only `local_dir`.
    pub url: String,
    /// `user:password` (Confluent Cloud: `api_key:api_secret`) sent as HTTP basic auth.
    pub basic_auth: Option<String>,
    /// A directory of `<id>.avsc` files consulted before the registry (air-gapped use).
    pub local_dir: Option<PathBuf>,
    /// Timeout of one registry request.
    pub timeout_ms: u64,
    /// After a failed lookup, records with that schema id fail at once for this long.
    pub retry_after_ms: u64,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        SchemaRegistryConfig {
            url: String::new(),
            basic_auth: None,
            local_dir: None,
            timeout_ms: 2_000,
            retry_after_ms: 10_000,
        }
    }
}

/// Checks `[[topics]]` and `[schema_registry]`.
pub(super) fn validate(
    topics: &[TopicConfig],
    registry: &SchemaRegistryConfig,
) -> Result<(), ConfigError> {
    let invalid = |key: &'static str, value: String, expected: &'static str| ConfigError::Invalid {
        key,
        value,
        expected,
    };
    if topics.is_empty() {
        return Err(invalid("topics", "[]".into(), "at least one topic"));
    }
    for (i, topic) in topics.iter().enumerate() {
        let which = format!("(topic {:?})", topic.name);
        if !is_valid_topic_name(&topic.name) {
            return Err(invalid(
                "topics.name",
                format!("{:?} (topic #{})", topic.name, i + 1),
                "1-249 characters of [a-zA-Z0-9._-]",
            ));
        }
        if topics[..i].iter().any(|t| t.name == topic.name) {
            return Err(invalid(
                "topics.name",
                format!("{:?}", topic.name),
                "each topic listed once",
            ));
        }
        if !(1..=10_000).contains(&topic.partitions) {
            return Err(invalid(
                "topics.partitions",
                format!("{} {which}", topic.partitions),
                "an integer from 1 to 10000",
            ));
        }
        match (topic.format, &topic.schema) {
            (PayloadFormat::Avro, None) => {
                return Err(invalid(
                    "topics.schema",
                    format!("none {which}"),
                    "the path of an .avsc file: format = \"avro\" needs a schema",
                ));
            }
            (PayloadFormat::Avro, Some(path)) if !path.is_file() => {
                return Err(invalid(
                    "topics.schema",
                    format!("{} {which}", path.display()),
                    "an existing .avsc file",
                ));
            }
            (PayloadFormat::Avro, Some(_)) | (_, None) => {}
            (_, Some(path)) => {
                return Err(invalid(
                    "topics.schema",
                    format!("{} {which}", path.display()),
                    "only for format = \"avro\"",
                ));
            }
        }
        if topic.format == PayloadFormat::AvroConfluent
            && registry.url.trim().is_empty()
            && registry.local_dir.is_none()
        {
            return Err(invalid(
                "schema_registry.url",
                format!("\"\" {which}"),
                "a registry URL or schema_registry.local_dir: format = \"avro_confluent\" resolves schema ids",
            ));
        }
        if let Some(rate) = topic.max_rate.filter(|r| !valid_rate(*r)) {
            return Err(invalid(
                "topics.max_rate",
                format!("{rate} {which}"),
                "updates per second per key, from 0.001 to 1000",
            ));
        }
        if topic.delta_keys > 10_000_000 {
            return Err(invalid(
                "topics.delta_keys",
                format!("{} {which}", topic.delta_keys),
                "at most 10000000 (0 turns deltas off)",
            ));
        }
    }
    let url = registry.url.trim();
    if !url.is_empty() && !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid(
            "schema_registry.url",
            format!("{url:?}"),
            "an http:// or https:// URL",
        ));
    }
    if let Some(dir) = registry.local_dir.as_ref().filter(|d| !d.is_dir()) {
        return Err(invalid(
            "schema_registry.local_dir",
            dir.display().to_string(),
            "an existing directory of <id>.avsc files",
        ));
    }
    if registry.timeout_ms == 0 {
        return Err(invalid(
            "schema_registry.timeout_ms",
            "0".into(),
            "at least 1 millisecond",
        ));
    }
    Ok(())
}
