//! Catch-up reads from an exact offset, through a bounded pool of Kafka readers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Semaphore, mpsc};

use crate::config::{Config, PayloadFormat};
use crate::kafka::cluster::Cluster;
use crate::session::outbox::SubscriptionId;
use crate::session::subscription::{ReplayEvent, Start};

/// A replay event addressed to one subscription's partition.
pub type Addressed = (SubscriptionId, i32, ReplayEvent);

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub subscription: SubscriptionId,
    pub topic: Arc<str>,
    pub format: PayloadFormat,
    pub partition: i32,
    pub start: Start,
}

/// Stops a running replay when set (or when dropped by the last holder and set).
#[derive(Debug, Clone, Default)]
pub struct ReplayHandle(Arc<AtomicBool>);

impl ReplayHandle {
    /// Asks the reader to stop at its next poll.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A bounded pool of Kafka readers shared by every connection.
pub struct ReplayPool {
    config: Arc<Config>,
    cluster: Cluster,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<BaseConsumer>>,
}

impl ReplayPool {
    /// A pool of at most `replay.max_kafka_readers` concurrent readers.
    pub fn new(config: Arc<Config>, cluster: Cluster) -> Arc<ReplayPool> {
        Arc::new(ReplayPool {
            permits: Arc::new(Semaphore::new(config.replay.max_kafka_readers)),
            config,
            cluster,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Starts a replay; its events go to `tx` until the partition's end or cancellation.
    pub fn start(
        self: &Arc<Self>,
        request: ReplayRequest,
        tx: mpsc::Sender<Addressed>,
    ) -> ReplayHandle {
        let handle = ReplayHandle::default();
        let pool = self.clone();
        let cancel = handle.clone();
        tokio::spawn(async move {
            let Ok(permit) = pool.permits.clone().acquire_owned().await else {
                return;
            };
            if cancel.is_cancelled() {
                return;
            }
            let result = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                pool.read(&request, &tx, &cancel)
                    .map_err(|e| (request, tx, e))
            })
            .await;
            if let Ok(Err((request, tx, e))) = result {
                tracing::warn!(topic = %request.topic, partition = request.partition, error = %e, "replay failed");
                let _ = tx
                    .send((
                        request.subscription,
                        request.partition,
                        ReplayEvent::Failed(e.to_string()),
                    ))
                    .await;
            }
        });
        handle
    }

    fn read(
        &self,
        req: &ReplayRequest,
        tx: &mpsc::Sender<Addressed>,
        cancel: &ReplayHandle,
    ) -> Result<(), KafkaError> {
        let send = |event| {
            tx.blocking_send((req.subscription, req.partition, event))
                .is_ok()
        };
        let (low, high) = self.watermarks_with_retry(req, cancel)?;
        let from = match req.start {
            Start::Latest => high,
            Start::Earliest => {
                if !send(ReplayEvent::Started { offset: low }) {
                    return Ok(());
                }
                low
            }
            Start::Offset(o) if o < low => {
                if !send(ReplayEvent::Gap {
                    requested: o,
                    earliest: low,
                }) {
                    return Ok(());
                }
                low
            }
            Start::Offset(o) => o,
        };
        if from >= high {
            send(ReplayEvent::End { position: high });
            return Ok(());
        }
        let consumer = match self.idle.lock().pop() {
            Some(c) => c,
            None => super::consumer_config(&self.config, "replay")
                .set("enable.partition.eof", "true")
                .create()?,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&req.topic, req.partition, Offset::Offset(from))?;
        consumer.assign(&tpl)?;
        let mut position = from;
        while !cancel.is_cancelled() {
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(message)) => {
                    let record = super::encode_message(&req.topic, &message, req.format);
                    position = record.meta.offset + 1;
                    if !send(ReplayEvent::Record(Arc::new(record))) {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    send(ReplayEvent::End { position });
                    break;
                }
                Some(Err(e)) => tracing::debug!(error = %e, "replay reader: transient Kafka error"),
            }
        }
        consumer.unassign()?;
        self.idle.lock().push(consumer);
        Ok(())
    }

    fn watermarks_with_retry(
        &self,
        req: &ReplayRequest,
        cancel: &ReplayHandle,
    ) -> Result<(i64, i64), KafkaError> {
        let mut delay = Duration::from_millis(self.config.kafka.retry_initial_ms);
        loop {
            match self.cluster.watermarks_blocking(&req.topic, req.partition) {
                Ok(w) => return Ok(w),
                Err(e) if !cancel.is_cancelled() => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "replay waits for Kafka");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(self.config.kafka.retry_max_ms));
                }
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
    }
}
