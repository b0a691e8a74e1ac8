//! Cluster metadata: reaching Kafka (with retry and backoff), creating topics,
//! partition counts, watermarks and offsets-for-times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;

/// A failed cluster request, naming what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot create a Kafka client for {servers}: {source}")]
    Client { servers: String, source: KafkaError },
    #[error("cannot reach Kafka at {servers}: {source}")]
    Unreachable { servers: String, source: KafkaError },
    #[error(
        "topics missing on the cluster at {servers}: {topics} (create them or set kafka.create_missing_topics = true)"
    )]
    MissingTopics { servers: String, topics: String },
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
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Blocking metadata queries on one shared client, run off the async threads.
#[derive(Clone)]
pub struct Cluster {
    consumer: Arc<BaseConsumer>,
    servers: String,
    timeout: Duration,
}

/// The partition count of every topic the cluster has.
pub type TopicPartitions = HashMap<String, i32>;

impl Cluster {
    /// Creates the metadata client (this does not contact the cluster yet).
    pub fn new(config: &Config) -> Result<Cluster, ClusterError> {
        let servers = config.bootstrap_servers();
        let consumer: BaseConsumer = crate::kafka::consumer_config(config, "meta")
            .create()
            .map_err(|source| ClusterError::Client {
                servers: servers.clone(),
                source,
            })?;
        Ok(Cluster {
            consumer: Arc::new(consumer),
            servers,
            timeout: Duration::from_millis(config.kafka.request_timeout_ms),
        })
    }

    /// The bootstrap servers this cluster was reached through.
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// Fetches the topic list once.
    pub async fn topics(&self) -> Result<TopicPartitions, ClusterError> {
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
                .filter(|t| t.error().is_none())
                .map(|t| (t.name().to_string(), t.partitions().len() as i32))
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
    /// (`None` when no such record exists yet: the subscription starts live).
    pub async fn offsets_for_time(
        &self,
        topic: &str,
        partitions: i32,
        timestamp: i64,
    ) -> Result<Vec<Option<i64>>, ClusterError> {
        let this = self.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(&topic, p, Offset::Offset(timestamp))
                    .map_err(|source| ClusterError::OffsetsForTimes {
                        topic: topic.clone(),
                        timestamp,
                        source,
                    })?;
            }
            let answer = this
                .consumer
                .offsets_for_times(tpl, this.timeout)
                .map_err(|source| ClusterError::OffsetsForTimes {
                    topic: topic.clone(),
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
            Ok(out)
        })
        .await?
    }
}
