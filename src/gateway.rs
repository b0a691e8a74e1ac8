//! Startup: the embedded broker, Kafka, topics, the session store and ingest, then
//! the [`Services`] every connection shares, and what only HTTP uses besides.

use std::sync::Arc;
use tokio::sync::watch;

use crate::codec::{Registry, TopicCodec};
use crate::config::Config;
use crate::connection::services::{Connections, Services};
use crate::kafka::cluster::{Cluster, ClusterError};
use crate::kafka::embedded::{EmbeddedBroker, EmbeddedBrokerError};
use crate::kafka::ingest::{IdleFetch, Ingest, IngestError};
use crate::kafka::replay::ReplayPool;
use crate::router::{Router, TopicSpec};
use crate::session::attachments::Attachments;
use crate::store::{SessionStore, StoreError, StoreHandle};

/// The longest fetch wait used with the embedded broker (see `Gateway::start`).
pub const EMBEDDED_FETCH_WAIT_MAX_MS: u32 = 15;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] EmbeddedBrokerError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Schema(#[from] crate::codec::payload::SchemaFileError),
    #[error("cannot start the snapshot load: {0}")]
    Snapshot(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] crate::auth::KeyError),
    #[error("cannot create the publish producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    #[error("cannot start the replay threads: {0}")]
    Threads(std::io::Error),
    #[error(transparent)]
    Replication(#[from] crate::store::replication::ReplicationError),
}

/// The running gateway: the services its connections share, plus what only the HTTP
/// layer and startup use.
pub struct Gateway {
    pub services: Arc<Services>,
    pub cluster: Cluster,
    shutdown: watch::Sender<bool>,
}

/// A started gateway: the shared state plus what must live as long as it.
pub struct Running {
    pub gateway: Arc<Gateway>,
    _ingest: Ingest,
    _broker: Option<EmbeddedBroker>,
    _positions: Option<crate::store::replication::Follower>,
}

impl Gateway {
    /// Starts the embedded broker if configured, waits for Kafka, prepares topics and starts ingest.
    pub async fn start(mut config: Config) -> Result<Running, StartError> {
        // Keys first: a bad key file fails in milliseconds, not after Kafka is reached.
        let auth = crate::auth::Authenticator::new(&config.auth)?;
        if !auth.required() {
            tracing::warn!(
                "authentication is off (auth.mode = \"none\"): any client may subscribe, publish and \
                 administer sessions. For local development only"
            );
        }
        let data_dir = config.server.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let broker = if config.uses_embedded_broker() {
            let broker = EmbeddedBroker::start(
                config.embedded_broker.listen,
                &data_dir,
                std::time::Duration::from_secs(config.embedded_broker.retention_check_secs),
            )
            .await?;
            tracing::warn!(
                address = %broker.addr(),
                storage = %broker.db_path().display(),
                "embedded development broker started (tansu, sqlite). For development only: \
                 set kafka.bootstrap_servers to use a real Kafka cluster"
            );
            // tansu reads at the start of a fetch and then holds it for the full wait, so
            // latency is up to twice the wait; 15 ms keeps the demo's p99 near 30 ms.
            config.kafka.fetch_wait_max_ms = config
                .kafka
                .fetch_wait_max_ms
                .min(EMBEDDED_FETCH_WAIT_MAX_MS);
            Some(broker)
        } else {
            None
        };
        let config = Arc::new(config);
        let cluster = Cluster::new(&config)?;
        let mut existing = cluster.wait_reachable(&config).await;
        tracing::info!(
            servers = cluster.servers(),
            topics = existing.len(),
            "connected to Kafka"
        );
        let creating = config.uses_embedded_broker() || config.kafka.create_missing_topics;
        if creating {
            let created = cluster.create_topics(&config, &existing).await?;
            if !created.is_empty() {
                tracing::info!(topics = ?created, "created topics");
            }
            // Another node may have created them a moment ago ("already exists" is success to
            // both): either way, wait until the metadata shows them.
            existing = wait_for_topics(&cluster, &config, existing).await?;
        }
        let missing: Vec<&str> = config
            .topics
            .iter()
            .filter(|t| !existing.contains_key(&t.name))
            .map(|t| t.name.as_str())
            .collect();
        if !missing.is_empty() {
            let hint = match creating {
                true => {
                    "kgate created them, but the cluster's metadata did not show them within 5 s; \
                     see the broker's log"
                }
                false => "create them, or set kafka.create_missing_topics = true",
            };
            return Err(ClusterError::MissingTopics {
                servers: cluster.servers().to_string(),
                topics: missing.join(", "),
                hint,
            }
            .into());
        }
        let sessions = Arc::new(SessionStore::open(
            &config.server.data_dir,
            config.sessions.sync_writes,
        )?);
        let positions = match config.cluster.positions_topic.is_empty() {
            true => None,
            false => Some(share_sessions(&config, &sessions).await?),
        };
        let mut specs = Vec::new();
        let registry = Arc::new(Registry::new(&config.schema_registry));
        for topic in &config.topics {
            let codec = TopicCodec::for_topic(topic, &registry)?;
            let partitions = existing.get(&topic.name).copied().unwrap_or(0);
            let mut start_offsets = Vec::with_capacity(partitions as usize);
            for p in 0..partitions {
                start_offsets.push(cluster.watermarks(&topic.name, p).await?.1);
            }
            tracing::info!(topic = %topic.name, partitions, format = ?topic.format, "serving topic from its live end");
            specs.push(TopicSpec {
                name: topic.name.clone(),
                format: topic.format,
                codec: Arc::new(codec),
                slow_consumer: topic.slow_consumer,
                max_rate: topic.max_rate,
                snapshot: topic.snapshot,
                delta_keys: topic.delta_keys,
                start_offsets,
            });
        }
        let router = Arc::new(Router::new(specs, config.replay.ring_bytes_per_partition));
        router.set_live_from_ring(config.replay.live_from_ring);
        // Before ingest: the load reads up to the live start that ingest begins at.
        crate::kafka::snapshot::spawn_load(&config, router.clone())?;
        // The embedded broker charges for every fetch: while no client subscribes, fetch
        // for 100 ms every 2 s (enough for the status page and lag), not continuously.
        let idle = config.uses_embedded_broker().then_some(IdleFetch {
            every: std::time::Duration::from_secs(2),
            window: std::time::Duration::from_millis(100),
        });
        let ingest = Ingest::start(&config, router.clone(), idle)?;
        crate::kafka::layout::spawn_watch(
            cluster.clone(),
            &router,
            std::time::Duration::from_secs(config.kafka.metadata_refresh_secs),
        );
        let replay = ReplayPool::new(config.clone(), Arc::new(cluster.clone()), router.clone())
            .map_err(StartError::Threads)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let admission = crate::limits::Admission::new(&config.limits);
        let producer = match config.publish.enabled {
            true => Some(
                crate::kafka::producer::Producer::for_publish(&config)
                    .map_err(StartError::Producer)?,
            ),
            false => None,
        };
        let services = Arc::new(Services {
            node: config.cluster.node(&config.server),
            config,
            router,
            replay,
            producer,
            sessions: StoreHandle::start(sessions)?,
            attachments: Attachments::default(),
            auth,
            admission,
            connections: Connections::default(),
            shutdown: shutdown_rx,
        });
        let weak = Arc::downgrade(&services);
        crate::store::spawn_background(
            services.sessions.clone(),
            std::time::Duration::from_millis(services.config.sessions.commit_interval_ms),
            std::time::Duration::from_secs(services.config.sessions.ttl_secs),
            Arc::new(move |id: &str| {
                weak.upgrade()
                    .is_some_and(|s| s.attachments.is_attached(id))
            }),
        );
        let gateway = Arc::new(Gateway {
            services,
            cluster,
            shutdown,
        });
        Ok(Running {
            gateway,
            _ingest: ingest,
            _broker: broker,
            _positions: positions,
        })
    }

    /// Tells every connection to close with "going away" (reconnect elsewhere); on drain,
    /// new ones too.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.services.connections.wake_all();
    }

    /// True once draining or shutting down: connections are refused with "going away".
    pub fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Replicates this node's session writes to the positions topic and follows the other
/// nodes' writes, returning once caught up with what they wrote before this start.
async fn share_sessions(
    config: &Arc<Config>,
    sessions: &Arc<SessionStore>,
) -> Result<crate::store::replication::Follower, StartError> {
    use crate::store::replication::{self, ReplicationError};
    let node = config.cluster.node(&config.server);
    let topic = config.cluster.positions_topic.clone();
    let tx = replication::spawn_publisher(config, node.clone())
        .map_err(|source| ReplicationError::Kafka { topic, source })?;
    sessions.replicate_to(tx);
    let (config, store) = (config.clone(), sessions.clone());
    let follower = tokio::task::spawn_blocking(move || replication::follow(&config, node, store))
        .await
        .map_err(|e| ReplicationError::Thread(std::io::Error::other(e.to_string())))??;
    Ok(follower)
}

/// Topic creation is asynchronous on some brokers: waits (up to 5 s) until metadata shows
/// every configured topic; `known` is the metadata already fetched.
async fn wait_for_topics(
    cluster: &Cluster,
    config: &Config,
    known: crate::kafka::cluster::TopicPartitions,
) -> Result<crate::kafka::cluster::TopicPartitions, ClusterError> {
    let positions = &config.cluster.positions_topic;
    let complete = |topics: &crate::kafka::cluster::TopicPartitions| {
        config.topics.iter().all(|t| topics.contains_key(&t.name))
            && (positions.is_empty() || topics.contains_key(positions))
    };
    let mut topics = known;
    for _ in 0..50 {
        if complete(&topics) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        topics = cluster.topics().await?;
    }
    Ok(topics)
}
