//! Live ingest: one consumer with every partition of every served topic assigned
//! (no group balancing), decoding each record once and handing it to the router.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::router::Router;

/// Why ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot create or assign the ingest consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot spawn the ingest thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// The running ingest thread; stopped and joined on drop.
pub struct Ingest {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ingest {
    /// Assigns every partition of the router's topics at its live position and starts consuming.
    pub fn start(config: &Config, router: Arc<Router>) -> Result<Ingest, IngestError> {
        let consumer: BaseConsumer<IngestContext> = super::consumer_config(config, "ingest")
            // Large fetches keep up with fan-out; the queue is bounded by librdkafka.
            .set("queued.max.messages.kbytes", "65536")
            // Statistics carry each partition's high watermark (for lag) at no extra request.
            .set("statistics.interval.ms", "1000")
            .create_with_context(IngestContext {
                router: router.clone(),
            })?;
        let mut tpl = TopicPartitionList::new();
        for route in router.topics() {
            for p in 0..route.partitions() {
                let offset = route.live_offset(p).unwrap_or(0);
                tpl.add_partition_offset(route.name(), p, Offset::Offset(offset))?;
            }
        }
        consumer.assign(&tpl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kgate-ingest".into())
            .spawn({
                let stop = stop.clone();
                let max_bytes = config.limits.max_outbound_record_bytes;
                move || run(consumer, router, stop, max_bytes)
            })?;
        Ok(Ingest {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Receives librdkafka's statistics on the ingest thread and records high watermarks.
struct IngestContext {
    router: Arc<Router>,
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        // Readiness: librdkafka has a live connection to at least one broker.
        let up = statistics
            .brokers
            .values()
            .any(|b| b.state == "UP" && b.nodeid >= 0);
        self.router.set_kafka_reachable(up);
        for (name, topic) in &statistics.topics {
            let Some(route) = self.router.topic(name) else {
                continue;
            };
            for (partition, p) in &topic.partitions {
                if *partition >= 0 && p.hi_offset >= 0 {
                    route.set_high_watermark(*partition, p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for IngestContext {}

fn run(
    consumer: BaseConsumer<IngestContext>,
    router: Arc<Router>,
    stop: Arc<AtomicBool>,
    max_bytes: usize,
) {
    router.set_ready(true);
    let mut last_error_log: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let Some(route) = router.topic(rdkafka::Message::topic(&message)) else {
                    continue;
                };
                let record = Arc::new(super::encode_message(
                    route.name(),
                    &message,
                    route.codec(),
                    max_bytes,
                ));
                router.dispatch(route, record);
            }
            Some(Err(e)) => {
                // librdkafka reconnects by itself; log at most every 5 s so an outage is visible, not noisy.
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(error = %e, "ingest: Kafka error (librdkafka retries)");
                    last_error_log = Some(Instant::now());
                }
            }
        }
    }
    router.set_ready(false);
}
