//! Session state shared by several gateway nodes through Kafka: every write to
//! a node's session store is also produced to a compacted topic (key: the
//! store key, so one record per session and per subscription partition; a
//! delete is a tombstone), and every node follows that topic into its own
//! store. Reads stay local. A node applies what other nodes wrote and skips
//! its own records, which it applied when it wrote them.
//!
//! Consistency: a follower lags the writer by the replication delay, so a
//! session resuming on another node starts from a position no newer than the
//! one the client acknowledged: records may repeat, none are lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use tokio::sync::mpsc;

use super::{Op, SessionStore};
use crate::config::Config;

/// The header naming the node that wrote a record.
const NODE_HEADER: &str = "kgate-node";

/// Produces the store's writes to the positions topic, in order, from a task.
pub fn spawn_publisher(
    config: &Config,
    node: String,
) -> Result<mpsc::UnboundedSender<Vec<Op>>, rdkafka::error::KafkaError> {
    let producer: FutureProducer = crate::kafka::client_config(config, "positions")
        .set("linger.ms", "2")
        // One partition, in order, no duplicates from retries.
        .set("enable.idempotence", "true")
        .create()?;
    let topic = config.cluster.positions_topic.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Op>>();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            for op in batch {
                let headers = OwnedHeaders::new().insert(Header {
                    key: NODE_HEADER,
                    value: Some(node.as_bytes()),
                });
                let (key, value): (&[u8], Option<&[u8]>) = match &op {
                    Op::Put(k, v) => (k, Some(v)),
                    Op::Delete(k) => (k, None),
                };
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&topic).key(key).headers(headers);
                if let Some(v) = value {
                    record = record.payload(v);
                }
                // Queued in order; the delivery result is only logged.
                let delivery = producer.send_result(record);
                match delivery {
                    Ok(future) => {
                        tokio::spawn(async move {
                            if let Ok(Err((e, _))) = future.await {
                                tracing::warn!(error = %e, "cannot replicate a session write");
                            }
                        });
                    }
                    Err((e, _)) => tracing::warn!(error = %e, "cannot replicate a session write"),
                }
            }
        }
    });
    Ok(tx)
}

/// A replication failure at start, naming the topic.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("session replication through topic {topic}: {source}")]
    Kafka {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("session replication: topic {topic} has no partitions after 30 s")]
    NoTopic { topic: String },
    #[error("cannot start the positions follower thread: {0}")]
    Thread(std::io::Error),
}

/// The running follower; stops when dropped.
pub struct Follower {
    stop: Arc<AtomicBool>,
    /// Records applied while catching up at start.
    pub caught_up_with: usize,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Follows the positions topic into `store` from its beginning: first up to its end at
/// the time of the call (returning once there, so a node serves resumes only when caught
/// up), then on a thread until the returned [`Follower`] is dropped. Blocking.
pub fn follow(
    config: &Config,
    node: String,
    store: Arc<SessionStore>,
) -> Result<Follower, ReplicationError> {
    let topic = config.cluster.positions_topic.clone();
    let kafka = |source| ReplicationError::Kafka {
        topic: topic.clone(),
        source,
    };
    let consumer: BaseConsumer = crate::kafka::consumer_config(config, "positions")
        .create()
        .map_err(kafka)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let partitions = loop {
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(kafka)?;
        let n = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        if n > 0 {
            break n as i32;
        }
        if Instant::now() > deadline {
            return Err(ReplicationError::NoTopic { topic });
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .map_err(kafka)?;
        let (_, high) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .map_err(kafka)?;
        ends.push(high);
    }
    consumer.assign(&tpl).map_err(kafka)?;
    let mut positions: Vec<i64> = vec![0; ends.len()];
    let mut applied = 0;
    let started = Instant::now();
    while positions.iter().zip(&ends).any(|(p, e)| p < e) {
        // Catching up applies this node's own records too: replayed in topic order, they
        // leave each key as the last writer, whichever node, left it.
        if let Some((partition, next, theirs)) = poll_one(&consumer, None, &store).map_err(kafka)? {
            positions[partition as usize] = next;
            applied += usize::from(theirs);
        }
    }
    tracing::info!(%topic, applied, elapsed_ms = started.elapsed().as_millis() as u64, "session positions caught up");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("positions-follow".into())
        .spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                if let Err(e) = poll_one(&consumer, Some(&node), &store) {
                    tracing::warn!(error = %e, "positions follower: Kafka error (librdkafka retries)");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
        .map_err(ReplicationError::Thread)?;
    Ok(Follower {
        stop,
        caught_up_with: applied,
    })
}

/// Applies the next record, if one comes within 100 ms, unless `skip` wrote it (a node's own
/// writes are in its store already); returns its partition, next offset and whether it
/// was applied.
fn poll_one(
    consumer: &BaseConsumer,
    skip: Option<&str>,
    store: &SessionStore,
) -> Result<Option<(i32, i64, bool)>, rdkafka::error::KafkaError> {
    let Some(message) = consumer.poll(Duration::from_millis(100)) else {
        return Ok(None);
    };
    let message = message?;
    let from_here = skip.is_some_and(|node| {
        message.headers().is_some_and(|h| {
            h.iter()
                .any(|x| x.key == NODE_HEADER && x.value == Some(node.as_bytes()))
        })
    });
    let next = (message.partition(), message.offset() + 1, !from_here);
    if from_here {
        return Ok(Some(next));
    }
    let Some(key) = message.key() else {
        return Ok(Some(next));
    };
    let op = match message.payload() {
        Some(value) => Op::Put(key.to_vec(), value.to_vec()),
        None => Op::Delete(key.to_vec()),
    };
    if let Err(e) = store.apply_replicated(&op) {
        tracing::warn!(error = %e, "cannot apply a replicated session write");
    }
    Ok(Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_write_is_forwarded_and_applies_elsewhere() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = SessionStore::open(a_dir.path(), false).unwrap();
        let b = SessionStore::open(b_dir.path(), false).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        a.replicate_to(tx);
        a.touch("alice").unwrap();
        a.add_subscription("alice", "prices", &Default::default(), &[Some(7), None])
            .unwrap();
        a.touch("bob").unwrap();
        a.delete("bob").unwrap();
        let mut forwarded = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            forwarded.extend(batch);
        }
        assert!(
            forwarded.iter().any(|op| matches!(op, Op::Delete(_))),
            "the delete is a tombstone"
        );
        for op in &forwarded {
            b.apply_replicated(op).unwrap();
        }
        assert_eq!(b.load("alice").unwrap(), a.load("alice").unwrap());
        assert!(b.load("alice").unwrap().is_some());
        assert_eq!(b.load("bob").unwrap(), None);
    }
}
