//! Producers: the one behind client publishes (every record acknowledged by all in-sync
//! replicas, idempotently: a retry never writes twice), and a plain one for the demo
//! generator, tools and benches.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::Config;

/// Produces records and waits for their acknowledgement.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

impl Producer {
    /// A producer for the configured (or embedded) cluster.
    pub fn new(config: &Config) -> Result<Producer, KafkaError> {
        Self::with_linger(config, 5)
    }

    /// The producer of what clients publish: acks from all in-sync replicas, idempotent.
    pub fn for_publish(config: &Config) -> Result<Producer, KafkaError> {
        let inner = Self::config(config, 5)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(Producer { inner })
    }

    /// A producer that batches for at most `linger_ms` (0 for latency measurements).
    pub fn with_linger(config: &Config, linger_ms: u32) -> Result<Producer, KafkaError> {
        let inner = Self::config(config, linger_ms).create()?;
        Ok(Producer { inner })
    }

    fn config(config: &Config, linger_ms: u32) -> rdkafka::ClientConfig {
        // Room for the largest publish body plus its key and headers; librdkafka's default
        // (1,000,000) refused bodies below the documented 1 MiB limit.
        let max_message = (config.publish.max_body_bytes + 65_536).max(1_000_000);
        let mut client = super::client_config(config, "producer");
        client
            .set("linger.ms", linger_ms.to_string())
            .set("message.max.bytes", max_message.to_string())
            .set("message.timeout.ms", "30000");
        client
    }

    /// Produces one record; the partition follows the key (or is chosen by librdkafka).
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<Delivered, KafkaError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        self.inner
            .send(record, Duration::from_secs(30))
            .await
            .map(|d| Delivered {
                partition: d.partition,
                offset: d.offset,
            })
            .map_err(|(e, _)| e)
    }
}
