//! A topic's payload decoder: how a record value becomes an event's `data`, and
//! what happens to a value that does not decode.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::value::RawValue;

use super::avro::{AvroSchema, confluent_frame};
use super::registry::Registry;
use crate::config::{DecodeFailurePolicy, PayloadFormat, TopicConfig};

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error(
        "payload is {len} bytes; Confluent framing needs a magic byte 0 and a 4-byte schema id"
    )]
    NotConfluentFramed { len: usize },
    #[error("schema id {id}: {reason}")]
    Schema { id: u32, reason: String },
    #[error("not a datum of the topic's Avro schema: {0}")]
    Datum(String),
    #[error("{trailing} bytes left after the Avro datum")]
    Trailing { trailing: usize },
}

/// Decodes the values of one topic.
pub enum PayloadDecoder {
    /// JSON passed through verbatim.
    Json,
    /// Opaque bytes (base64 in JSON frames).
    Raw,
    /// Avro datums of one schema (from a file in `schemas/`).
    Avro(Arc<AvroSchema>),
    /// Confluent wire format: magic byte, schema id, Avro datum.
    Confluent(Arc<Registry>),
}

/// A decoded value, borrowed from the record where possible.
pub enum Data<'a> {
    /// A JSON value taken verbatim from the payload.
    Verbatim(&'a RawValue),
    /// JSON text produced by decoding (Avro).
    Decoded(String),
    /// Bytes sent base64-encoded (raw topics).
    Bytes(&'a [u8]),
    /// A value that failed to decode, passed through as bytes with the reason.
    Undecodable(&'a [u8], String),
    /// A tombstone: the key was deleted.
    Deleted,
}

/// What the decoder decided for one record.
pub enum Decoded<'a> {
    Deliver(Data<'a>),
    /// Deliver a `skipped` notice instead (policy `skip`); the error says why.
    Skip(DecodeError),
}

/// A topic's decoder and its failure policy.
pub struct TopicCodec {
    pub decoder: PayloadDecoder,
    pub on_error: DecodeFailurePolicy,
    /// Also encode the binary envelope (`kgate.v1.avro`) of each record.
    pub binary: bool,
    /// Values of this topic that did not decode.
    failures: AtomicU64,
}

/// Why a topic's decoder could not be built.
#[derive(Debug, thiserror::Error)]
#[error("topic {topic:?}: cannot load `topics.schema` {path}: {reason}")]
pub struct SchemaFileError {
    pub topic: String,
    pub path: String,
    pub reason: String,
}

impl TopicCodec {
    /// The codec for a configured topic; Avro topics read their schema file here.
    pub fn for_topic(
        topic: &TopicConfig,
        registry: &Arc<Registry>,
    ) -> Result<TopicCodec, SchemaFileError> {
        let decoder = match topic.format {
            PayloadFormat::Json => PayloadDecoder::Json,
            PayloadFormat::Raw => PayloadDecoder::Raw,
            PayloadFormat::AvroConfluent => PayloadDecoder::Confluent(registry.clone()),
            PayloadFormat::Avro => {
                let path = topic.schema.clone().unwrap_or_default();
                let fail = |reason: String| SchemaFileError {
                    topic: topic.name.clone(),
                    path: path.display().to_string(),
                    reason,
                };
                let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
                PayloadDecoder::Avro(Arc::new(AvroSchema::parse(&text).map_err(fail)?))
            }
        };
        Ok(TopicCodec {
            decoder,
            on_error: topic.on_decode_error,
            binary: topic.binary,
            failures: AtomicU64::new(0),
        })
    }

    /// A codec with no schema (JSON or raw), for tests and tools.
    pub fn plain(json: bool) -> TopicCodec {
        TopicCodec {
            decoder: if json {
                PayloadDecoder::Json
            } else {
                PayloadDecoder::Raw
            },
            on_error: DecodeFailurePolicy::Raw,
            binary: false,
            failures: AtomicU64::new(0),
        }
    }

    /// How many values of this topic did not decode.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Decodes a record value (`None`: a tombstone).
    pub fn decode<'a>(&self, payload: Option<&'a [u8]>) -> Decoded<'a> {
        let Some(bytes) = payload else {
            return Decoded::Deliver(Data::Deleted);
        };
        let result = match &self.decoder {
            PayloadDecoder::Raw => return Decoded::Deliver(Data::Bytes(bytes)),
            PayloadDecoder::Json => match serde_json::from_slice::<&RawValue>(bytes) {
                Ok(json) => return Decoded::Deliver(Data::Verbatim(json)),
                Err(e) => Err(DecodeError::Json(e.to_string())),
            },
            PayloadDecoder::Avro(schema) => schema.to_json(bytes),
            PayloadDecoder::Confluent(registry) => {
                confluent_frame(bytes).and_then(|(id, datum)| registry.schema(id)?.to_json(datum))
            }
        };
        if result.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
            crate::stats::stats().decode_failures.add(1);
        }
        match (result, self.on_error) {
            (Ok(json), _) => Decoded::Deliver(Data::Decoded(json)),
            (Err(e), DecodeFailurePolicy::Raw) => {
                Decoded::Deliver(Data::Undecodable(bytes, e.to_string()))
            }
            (Err(e), DecodeFailurePolicy::Skip) => Decoded::Skip(e),
        }
    }
}
