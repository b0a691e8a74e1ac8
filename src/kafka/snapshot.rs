//! The start-up read of snapshot topics: every partition from its beginning up
//! to where live ingest starts, into the topic's last-value cache. On a
//! compacted topic that is about one record per key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::Config;
use crate::router::Router;

/// Starts the read in its own thread; each topic's cache is marked loaded when
/// all its partitions reach their live start. Call before ingest starts.
pub fn spawn_load(config: &Config, router: Arc<Router>) -> Result<(), KafkaError> {
    // (topic, partition) -> the live start: records below it belong to the load.
    let mut until: HashMap<(Arc<str>, i32), i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for route in router.topics().filter(|r| r.latest().is_some()) {
        for p in 0..route.partitions() {
            let start = route.live_offset(p).unwrap_or(0);
            if start > 0 {
                until.insert((route.name().clone(), p), start);
                tpl.add_partition_offset(route.name(), p, Offset::Beginning)?;
            }
        }
    }
    let consumer: BaseConsumer = super::consumer_config(config, "snapshot")
        .set("enable.partition.eof", "true")
        .create()?;
    if until.is_empty() {
        finish_topics(&router, &until);
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let max_bytes = config.limits.max_outbound_record_bytes;
    let spawned = std::thread::Builder::new()
        .name("kgate-snapshot".into())
        .spawn(move || read(consumer, router, until, max_bytes));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the snapshot load thread; snapshots stay unavailable");
    }
    Ok(())
}

fn read(
    consumer: BaseConsumer,
    router: Arc<Router>,
    mut until: HashMap<(Arc<str>, i32), i64>,
    max_bytes: usize,
) {
    let started = Instant::now();
    let mut loaded = 0_u64;
    let mut last_report = Instant::now();
    finish_topics(&router, &until);
    while !until.is_empty() {
        let mut done = Vec::new();
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                let Some(route) = router.topic(message.topic()) else {
                    continue;
                };
                let key = (route.name().clone(), message.partition());
                let end = until.get(&key).copied().unwrap_or(0);
                if message.offset() < end {
                    let record = Arc::new(super::encode_message(
                        route.name(),
                        &super::Consumed::from(&message),
                        route.codec(),
                        max_bytes,
                    ));
                    if let Some(latest) = route.latest() {
                        latest.lock().load(&record);
                    }
                    loaded += 1;
                }
                if message.offset() + 1 >= end {
                    done.push(key);
                }
            }
            // The end of some partition (its topic is not named): a partition whose
            // last offsets are holes (transaction markers) is done once its position passes.
            Some(Err(KafkaError::PartitionEOF(_))) => {
                if let Ok(positions) = consumer.position() {
                    for elem in positions.elements() {
                        let key = (Arc::<str>::from(elem.topic()), elem.partition());
                        let end = until.get(&key).copied();
                        if let (Offset::Offset(at), Some(end)) = (elem.offset(), end) {
                            if at >= end {
                                done.push(key);
                            }
                        }
                    }
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "snapshot load: transient Kafka error"),
        }
        if !done.is_empty() {
            done.iter().for_each(|key| {
                until.remove(key);
            });
            finish_topics(&router, &until);
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            tracing::info!(
                records = loaded,
                partitions_left = until.len(),
                "loading snapshots"
            );
            last_report = Instant::now();
        }
    }
    tracing::info!(
        records = loaded,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshots loaded"
    );
}

/// Marks loaded every snapshot topic with no partition left to read.
fn finish_topics(router: &Router, until: &HashMap<(Arc<str>, i32), i64>) {
    for route in router.topics() {
        let Some(latest) = route.latest() else {
            continue;
        };
        if until.keys().any(|(t, _)| t == route.name()) {
            continue;
        }
        let mut latest = latest.lock();
        if !latest.is_loaded() {
            latest.finish_load();
            tracing::info!(topic = %route.name(), keys = latest.len(), "snapshot ready");
        }
    }
}
