//! Cluster metadata: reaching Kafka (with retry and backoff), creating topics,
//! partition counts, watermarks and offsets-for-times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;

/// A failed cluster request, naming what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot create a Kafka client for {servers}: {source}")]
    Client { servers: String, source: KafkaError },
    #[error("cannot reach Kafka at {servers}: {source}")]
    Unreachable { servers: String, source: KafkaError },
    #[error("topics missing on the cluster at {servers}: {topics} ({hint})")]
    MissingTopics {
        servers: String,
        topics: String,
        /// What to do: depends on whether kgate was allowed to create them.
        hint: &'static str,
    },
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("cannot read watermarks of {topic}/{partition}: {source}")]
    Watermarks {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error("cannot look up offsets for timestamp {timestamp} on {topic}: {source}")]
    OffsetsForTimes {
        topic: String,
        timestamp: i64,
        source: KafkaError,
    },
    #[error("cannot read {topic} to check an offsets-for-times answer: {source}")]
    Probe { topic: String, source: KafkaError },
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Stopped(#[from] crate::blocking::Stopped),
}

/// Blocking metadata queries on one shared client, run off the async threads.
#[derive(Clone)]
pub struct Cluster {
    consumer: Arc<BaseConsumer>,
    /// Reads single records to check offsets-for-times answers; one check at a time.
    probe: Arc<Mutex<BaseConsumer>>,
    servers: String,
    timeout: Duration,
}

/// The partition count of every topic the cluster has.
pub type TopicPartitions = HashMap<String, i32>;

impl Cluster {
    /// Creates the metadata client (this does not contact the cluster yet).
    pub fn new(config: &Config) -> Result<Cluster, ClusterError> {
        let servers = config.bootstrap_servers();
        let client = |role: &str| -> Result<BaseConsumer, ClusterError> {
            crate::kafka::consumer_config(config, role)
                .create()
                .map_err(|source| ClusterError::Client {
                    servers: servers.clone(),
                    source,
                })
        };
        let (consumer, probe) = (client("meta")?, client("probe")?);
        Ok(Cluster {
            consumer: Arc::new(consumer),
            probe: Arc::new(Mutex::new(probe)),
            servers,
            timeout: Duration::from_millis(config.kafka.request_timeout_ms),
        })
    }

    /// The bootstrap servers this cluster was reached through.
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// Fetches the topic list once: the topics listed without an error.
    pub async fn topics(&self) -> Result<TopicPartitions, ClusterError> {
        let layout = self.layout().await?;
        Ok(layout
            .into_iter()
            .filter_map(|(name, count)| Some((name, count?)))
            .collect())
    }

    /// Every topic the cluster lists, with its partition count, or `None` for a topic
    /// listed with an error (its layout is unknown for now, not gone).
    pub async fn layout(&self) -> Result<HashMap<String, Option<i32>>, ClusterError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let md = this
                .consumer
                .fetch_metadata(None, this.timeout)
                .map_err(|source| ClusterError::Unreachable {
                    servers: this.servers.clone(),
                    source,
                })?;
            Ok(md
                .topics()
                .iter()
                .map(|t| {
                    let count = t.error().is_none().then(|| t.partitions().len() as i32);
                    (t.name().to_string(), count)
                })
                .collect())
        })
        .await?
    }

    /// Retries [`Cluster::topics`] with exponential backoff until the cluster answers.
    pub async fn wait_reachable(&self, config: &Config) -> TopicPartitions {
        let mut delay = Duration::from_millis(config.kafka.retry_initial_ms);
        let max = Duration::from_millis(config.kafka.retry_max_ms);
        loop {
            match self.topics().await {
                Ok(topics) => return topics,
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "Kafka not reachable");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max);
                }
            }
        }
    }

    /// Creates the configured topics that the cluster lacks; returns the ones created.
    pub async fn create_topics(
        &self,
        config: &Config,
        existing: &TopicPartitions,
    ) -> Result<Vec<String>, ClusterError> {
        let positions = &config.cluster.positions_topic;
        let missing: Vec<(&str, i32)> = config
            .topics
            .iter()
            .map(|t| (t.name.as_str(), t.partitions))
            // One partition: each node applies the others' writes in the order they were made.
            .chain((!positions.is_empty()).then_some((positions.as_str(), 1)))
            .filter(|(name, _)| !existing.contains_key(*name))
            .collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let admin: AdminClient<DefaultClientContext> = crate::kafka::client_config(config, "admin")
            .create()
            .map_err(|source| ClusterError::Client {
                servers: self.servers.clone(),
                source,
            })?;
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|&(name, partitions)| {
                let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
                match name == positions {
                    // One record per session key is all a node needs to catch up.
                    true => topic.set("cleanup.policy", "compact"),
                    false => topic,
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results =
            admin
                .create_topics(&new, &opts)
                .await
                .map_err(|e| ClusterError::CreateTopic {
                    topic: missing
                        .iter()
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(","),
                    reason: e.to_string(),
                })?;
        let mut created = Vec::new();
        for result in results {
            match result {
                Ok(name) => created.push(name),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(ClusterError::CreateTopic {
                        topic: name,
                        reason: code.to_string(),
                    });
                }
            }
        }
        Ok(created)
    }

    /// Low and high watermarks of one partition.
    pub async fn watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), ClusterError> {
        let this = self.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || this.watermarks_blocking(&topic, partition)).await?
    }

    /// [`Cluster::watermarks`] for callers already on a blocking thread.
    pub fn watermarks_blocking(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), ClusterError> {
        self.consumer
            .fetch_watermarks(topic, partition, self.timeout)
            .map_err(|source| ClusterError::Watermarks {
                topic: topic.to_string(),
                partition,
                source,
            })
    }

    /// For each partition, the first offset whose timestamp is at or after `timestamp`
    /// (`None` when no such record exists yet: the subscription starts live). Blocks.
    ///
    /// The broker's answer is checked, not trusted: some brokers (tansu) answer 0 where
    /// Kafka answers "none". An answer at or past the partition's end, or whose record is
    /// older than `timestamp`, means no such record: `None`.
    pub fn offsets_for_time_blocking(
        &self,
        topic: &str,
        partitions: i32,
        timestamp: i64,
    ) -> Result<Vec<Option<i64>>, ClusterError> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(timestamp))
                .map_err(|source| ClusterError::OffsetsForTimes {
                    topic: topic.to_string(),
                    timestamp,
                    source,
                })?;
        }
        let answer = self
            .consumer
            .offsets_for_times(tpl, self.timeout)
            .map_err(|source| ClusterError::OffsetsForTimes {
                topic: topic.to_string(),
                timestamp,
                source,
            })?;
        let mut out = vec![None; partitions as usize];
        for elem in answer.elements() {
            if let (Offset::Offset(o), Some(slot)) =
                (elem.offset(), out.get_mut(elem.partition() as usize))
            {
                *slot = Some(o);
            }
        }
        for (p, slot) in out.iter_mut().enumerate() {
            let Some(o) = *slot else { continue };
            let (_, high) = self.watermarks_blocking(topic, p as i32)?;
            if o >= high {
                *slot = None;
            }
        }
        let found = self.first_timestamps(topic, &out)?;
        for (p, slot) in out.iter_mut().enumerate() {
            if found
                .get(&(p as i32))
                .copied()
                .flatten()
                .is_some_and(|ts| ts < timestamp)
            {
                tracing::debug!(topic, partition = p, timestamp, offset = ?slot, "offsets-for-times answer is older than asked: starting at the live end");
                *slot = None;
            }
        }
        Ok(out)
    }

    /// The timestamp (if it has one) of the first record at or after each `Some` offset,
    /// by partition, for the partitions that answer within the request timeout.
    fn first_timestamps(
        &self,
        topic: &str,
        offsets: &[Option<i64>],
    ) -> Result<HashMap<i32, Option<i64>>, ClusterError> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets.iter().enumerate() {
            if let Some(o) = o {
                let _ = tpl.add_partition_offset(topic, p as i32, Offset::Offset(*o));
            }
        }
        let mut found = HashMap::new();
        if tpl.count() == 0 {
            return Ok(found);
        }
        let probe = self.probe.lock();
        let error = |source| ClusterError::Probe {
            topic: topic.to_string(),
            source,
        };
        probe.assign(&tpl).map_err(error)?;
        let deadline = std::time::Instant::now() + self.timeout;
        while found.len() < tpl.count() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match probe.poll(left) {
                Some(Ok(m)) => {
                    found
                        .entry(m.partition())
                        .or_insert(m.timestamp().to_millis());
                }
                Some(Err(e)) => {
                    let _ = probe.unassign();
                    return Err(error(e));
                }
                None => {}
            }
        }
        let _ = probe.unassign();
        Ok(found)
    }
}

/// Where a partition begins and ends, and where a time falls in it: what resolving a
/// subscription's start and a replay ask Kafka. [`Cluster`] asks the cluster; the
/// connection engine's unit tests answer from memory. Both calls block.
pub trait Offsets: Send + Sync + 'static {
    /// Low and high watermarks of one partition.
    fn watermarks_blocking(&self, topic: &str, partition: i32) -> Result<(i64, i64), ClusterError>;
    /// Per partition, the first offset at or after `timestamp` (`None`: start live).
    fn offsets_for_time_blocking(
        &self,
        topic: &str,
        partitions: i32,
        timestamp: i64,
    ) -> Result<Vec<Option<i64>>, ClusterError>;
}

impl Offsets for Cluster {
    fn watermarks_blocking(&self, topic: &str, partition: i32) -> Result<(i64, i64), ClusterError> {
        Cluster::watermarks_blocking(self, topic, partition)
    }
    fn offsets_for_time_blocking(
        &self,
        topic: &str,
        partitions: i32,
        timestamp: i64,
    ) -> Result<Vec<Option<i64>>, ClusterError> {
        Cluster::offsets_for_time_blocking(self, topic, partitions, timestamp)
    }
}
