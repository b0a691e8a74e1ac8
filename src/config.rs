//! Typed configuration: defaults, `config/kgate.toml`, then `KGATE_*` environment
//! overrides, validated at load so a bad value fails fast and names its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod mqtt;
mod security;
mod topics;
pub use mqtt::MqttConfig;
pub use security::{AuthConfig, AuthMode, KeyAlgorithm, KeyConfig, PublishConfig, TlsConfig};
pub use topics::{
    DecodeFailurePolicy, MAX_RATE, MIN_RATE, PayloadFormat, SchemaRegistryConfig,
    SlowConsumerPolicy, TopicConfig, valid_rate,
};

/// Environment variable prefix; `KGATE_KAFKA__BOOTSTRAP_SERVERS` sets `kafka.bootstrap_servers`.
pub const ENV_PREFIX: &str = "KGATE_";

/// The configuration's environment variables: `KGATE_<SECTION>__<KEY>` (a double
/// underscore between section and key) and `KGATE_TOPICS`. Other `KGATE_*` names
/// (`KGATE_TOKEN` of `kgate tail`, `KGATE_CONFIG`, a user's own) are not config keys and
/// are left alone rather than refused as unknown fields.
fn environment() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__") || key.as_str().eq_ignore_ascii_case("topics"))
        .split("__")
}

/// `KGATE_*` variables that look like a config key with one underscore where two belong
/// (`KGATE_SERVER_LISTEN`): ignored, so worth a warning naming the spelling that works.
pub fn misspelled_env_vars() -> Vec<(String, String)> {
    const SECTIONS: [&str; 16] = [
        "server",
        "tls",
        "auth",
        "publish",
        "poll",
        "kafka",
        "embedded_broker",
        "topics",
        "schema_registry",
        "websocket",
        "replay",
        "sessions",
        "cluster",
        "limits",
        "heartbeat",
        "log",
    ];
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter_map(|name| {
            let rest = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            if rest.contains("__") || rest == "topics" {
                return None;
            }
            let section = SECTIONS
                .iter()
                .find(|s| rest.starts_with(&format!("{s}_")) && rest.len() > s.len() + 1)?;
            let fixed = format!("{ENV_PREFIX}{}__{}", section, &rest[section.len() + 1..]);
            Some((name, fixed.to_ascii_uppercase()))
        })
        .collect()
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("config file {path} does not exist")]
    Missing { path: PathBuf },
    /// A value failed to parse: the message names the key, the value, its source and what was expected.
    #[error("{0}")]
    Parse(String),
    /// A value parsed but is out of its allowed range.
    #[error("invalid value for `{key}`: {value} ({expected})")]
    Invalid {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// The whole gateway configuration. Every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub publish: PublishConfig,
    pub mqtt: MqttConfig,
    pub poll: PollConfig,
    pub kafka: KafkaConfig,
    pub embedded_broker: EmbeddedBrokerConfig,
    pub topics: Vec<TopicConfig>,
    pub schema_registry: SchemaRegistryConfig,
    pub websocket: WebSocketConfig,
    pub replay: ReplayConfig,
    pub sessions: SessionsConfig,
    pub cluster: ClusterConfig,
    pub limits: LimitsConfig,
    pub heartbeat: HeartbeatConfig,
    pub log: LogConfig,
}

/// HTTP/WebSocket listener and local storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP and WebSocket listener binds.
    pub listen: SocketAddr,
    /// Directory for RocksDB and the embedded broker's sqlite file.
    pub data_dir: PathBuf,
    /// Seconds to wait for connections to close on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Connections the kernel queues before they are accepted (capped by
    /// net.core.somaxconn): a burst of reconnects overflowing it waits seconds for SYN retries.
    pub listen_backlog: u32,
    /// An HTTP connection must send a request's headers within this many seconds of
    /// opening or of its previous answer (slowloris, silent and idle keep-alive sockets).
    pub header_read_timeout_secs: u64,
    /// A publish body must arrive within this many seconds.
    pub body_read_timeout_secs: u64,
    /// Open HTTP connections that have not become a WebSocket (those count against
    /// `limits.max_connections` instead); past it, new sockets are closed at once.
    pub max_http_connections: usize,
}

/// Several gateway nodes on one Kafka cluster (see `store::replication`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id, unique among the nodes; empty: `server.listen`.
    pub node_id: String,
    /// Compacted topic every node writes its session positions to and follows;
    /// empty (the default): a single node, sessions stay local.
    pub positions_topic: String,
}

impl ClusterConfig {
    /// The node id, defaulting to the listen address.
    pub fn node(&self, server: &ServerConfig) -> String {
        match self.node_id.is_empty() {
            true => server.listen.to_string(),
            false => self.node_id.clone(),
        }
    }
}

/// `GET /v1/poll`: long-polling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// Longest a poll waits for a record when none is there (a request's `wait_ms` is capped here).
    pub max_wait_ms: u64,
    /// Most events one poll answers with (a request's `max` is capped here).
    pub max_events: usize,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            max_wait_ms: 25_000,
            max_events: 1_000,
        }
    }
}

/// How kgate reaches Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list. Empty: start the embedded development broker.
    pub bootstrap_servers: String,
    /// Kafka client id sent to the brokers.
    pub client_id: String,
    /// Longest time the broker may hold a fetch when no data is there (fetch.wait.max.ms).
    pub fetch_wait_max_ms: u32,
    /// Create configured topics that do not exist (always on with the embedded broker).
    pub create_missing_topics: bool,
    /// First delay before retrying an unreachable cluster; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    /// Longest delay between retries.
    pub retry_max_ms: u64,
    /// Timeout for metadata, watermark and offsets-for-times requests.
    pub request_timeout_ms: u64,
    /// How often the served topics' metadata is read again: partitions a topic gains are
    /// served from then on, a deleted topic's subscriptions end with `topic_deleted`.
    pub metadata_refresh_secs: u64,
}

/// The in-process development broker (tansu with sqlite storage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedBrokerConfig {
    /// Loopback address the embedded broker listens on.
    pub listen: SocketAddr,
    /// How often the embedded broker applies retention (deletes records past retention.ms).
    pub retention_check_secs: u64,
}

/// WebSocket transport limits and buffer sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Largest inbound WebSocket message; larger ones close the connection with 1009.
    pub max_message_bytes: usize,
    /// Largest inbound WebSocket frame.
    pub max_frame_bytes: usize,
    /// Largest command the protocol parses; larger ones get a `message_too_large` error.
    pub max_command_bytes: usize,
    /// Read buffer per connection (tungstenite's default is 128 KiB; commands are small, and
    /// every idle connection holds this buffer). A larger frame gets room for all of it
    /// once its header is read, so this only bounds how many small frames one read takes.
    pub read_buffer_bytes: usize,
    /// Bytes of outgoing frames gathered before a socket write.
    pub write_buffer_bytes: usize,
    /// Records queued for one connection before the slow-consumer policy applies.
    pub outbox_max_messages: usize,
    /// Bytes queued for one connection before the slow-consumer policy applies.
    pub outbox_max_bytes: usize,
    /// Seconds a socket write (at most 256 frames) may take before the connection is closed (4009).
    pub write_timeout_secs: u64,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Longest channel name accepted.
    pub max_channel_bytes: usize,
    /// Accept permessage-deflate (RFC 7692) when a client offers it: event frames are
    /// compressed once per record and shared by every recipient.
    pub deflate: bool,
    /// Event frames shorter than this go uncompressed (they barely shrink).
    pub deflate_min_bytes: usize,
}

/// Catch-up reads for subscriptions that start behind the live position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Kafka readers that may run at once across all clients (a thread each; at most 1024).
    pub max_kafka_readers: usize,
    /// Live records held per partition while a replay catches up; older ones are re-read.
    pub handoff_buffer_records: usize,
    /// Bytes of recent records kept in memory per partition: the memory tier of replay, and
    /// the window of readers with `live_from_ring` (0 turns it off).
    pub ring_bytes_per_partition: usize,
    /// Whole-topic `catch_up` subscriptions read live records from the ring by position
    /// instead of having them pushed to their outbox (experimental; see docs/architecture.md).
    pub live_from_ring: bool,
}

/// Durable sessions (positions in RocksDB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Sessions not attached and not seen for this long are deleted.
    pub ttl_secs: u64,
    /// Acknowledged positions are written as one batch this often (group commit).
    pub commit_interval_ms: u64,
    /// fsync every batch (survives power loss; without it a killed process still loses nothing committed).
    pub sync_writes: bool,
}

/// Rate and count limits that protect the gateway from any one client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// WebSocket upgrade attempts per second from one IP address (HTTP 429 past it).
    pub connection_attempts_per_ip_per_sec: u32,
    /// Burst of attempts one IP may make at once.
    pub connection_attempts_burst: u32,
    /// Open WebSocket connections in total (HTTP 503 past it).
    pub max_connections: usize,
    /// Open connections per identity (the client IP until authentication exists; HTTP 429 past it).
    pub max_connections_per_identity: usize,
    /// Commands per second one connection may send (error `rate_limited` past it).
    pub commands_per_sec: u32,
    /// Burst of commands one connection may send at once.
    pub commands_burst: u32,
    /// Connections closed with 4029 after this many rate-limited commands in a row.
    pub max_rate_limited_commands: u32,
    /// A record whose event frame is larger is not delivered: subscribers get a `skipped` notice.
    pub max_outbound_record_bytes: usize,
    /// With slow_consumer = "disconnect": how long an outbox may stay full before the close.
    pub slow_consumer_grace_ms: u64,
    /// Keys per topic a connection with delta subscriptions remembers having sent (past
    /// it, it forgets them all and sends each key whole once more).
    pub delta_keys_per_connection: usize,
}

/// Liveness checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Seconds between server pings.
    pub ping_interval_secs: u64,
    /// A connection that shows no sign of life (no pong, no frame, its TCP not reading) for
    /// this long is closed (4011).
    pub timeout_secs: u64,
    /// A connection with no subscription for this long is closed (4012).
    pub idle_timeout_secs: u64,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `kgate=debug,rdkafka=warn`.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            publish: PublishConfig::default(),
            mqtt: MqttConfig::default(),
            poll: PollConfig::default(),
            kafka: KafkaConfig::default(),
            embedded_broker: EmbeddedBrokerConfig::default(),
            // The demo board opens with every symbol at once: prices keeps a snapshot.
            topics: vec![
                TopicConfig {
                    snapshot: true,
                    ..TopicConfig::json("prices")
                },
                TopicConfig::json("telemetry"),
            ],
            schema_registry: SchemaRegistryConfig::default(),
            websocket: WebSocketConfig::default(),
            replay: ReplayConfig::default(),
            sessions: SessionsConfig::default(),
            cluster: ClusterConfig::default(),
            limits: LimitsConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            shutdown_timeout_secs: 10,
            listen_backlog: 4096,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_http_connections: 10_000,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: String::new(),
            client_id: "kgate".into(),
            fetch_wait_max_ms: 100,
            create_missing_topics: false,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            request_timeout_ms: 5_000,
            metadata_refresh_secs: 30,
        }
    }
}

impl Default for EmbeddedBrokerConfig {
    fn default() -> Self {
        EmbeddedBrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 19092)),
            retention_check_secs: 60,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 64 * 1024,
            max_command_bytes: 4 * 1024,
            read_buffer_bytes: 256,
            write_buffer_bytes: 64 * 1024,
            outbox_max_messages: 10_000,
            outbox_max_bytes: 8 * 1024 * 1024,
            write_timeout_secs: 30,
            max_subscriptions: 256,
            max_channel_bytes: 512,
            deflate: true,
            deflate_min_bytes: 64,
        }
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            max_kafka_readers: 16,
            handoff_buffer_records: 10_000,
            ring_bytes_per_partition: 4 * 1024 * 1024,
            live_from_ring: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            connection_attempts_per_ip_per_sec: 50,
            connection_attempts_burst: 100,
            max_connections: 50_000,
            max_connections_per_identity: 1_000,
            commands_per_sec: 100,
            commands_burst: 200,
            max_rate_limited_commands: 100,
            max_outbound_record_bytes: 1024 * 1024,
            slow_consumer_grace_ms: 5_000,
            delta_keys_per_connection: 4_096,
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            ping_interval_secs: 15,
            timeout_secs: 45,
            idle_timeout_secs: 120,
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            ttl_secs: 86_400,
            commit_interval_ms: 20,
            sync_writes: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (required when given explicitly), then `KGATE_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_over(Config::default(), file)
    }

    /// The defaults of `serve --demo`: local development, so `auth.mode = "none"` unless
    /// the file or the environment says otherwise.
    pub fn demo_defaults() -> Config {
        let mut config = Config::default();
        config.auth.mode = AuthMode::None;
        config.mqtt.listen = Some(SocketAddr::new(config.server.listen.ip(), 1883));
        config
    }

    /// As [`Config::load`], on top of `defaults`.
    pub fn load_over(defaults: Config, file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(defaults));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing {
                    path: path.to_path_buf(),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        Self::extract(figment.merge(environment()))
    }

    /// Parses a TOML document on top of the defaults (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::extract(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(describe(&figment, e)))?;
        config.validate()?;
        Ok(config)
    }

    /// True when no cluster is configured and the embedded development broker must run.
    pub fn uses_embedded_broker(&self) -> bool {
        self.kafka.bootstrap_servers.trim().is_empty()
    }

    /// The bootstrap list clients use: the configured cluster or the embedded broker.
    pub fn bootstrap_servers(&self) -> String {
        if self.uses_embedded_broker() {
            self.embedded_broker.listen.to_string()
        } else {
            self.kafka.bootstrap_servers.trim().to_string()
        }
    }

    /// The configuration of topic `name`, if the gateway serves it.
    pub fn topic(&self, name: &str) -> Option<&TopicConfig> {
        self.topics.iter().find(|t| t.name == name)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, value: impl ToString, expected: &'static str) -> ConfigError {
            ConfigError::Invalid {
                key,
                value: value.to_string(),
                expected,
            }
        }
        topics::validate(&self.topics, &self.schema_registry)?;
        for server in self.kafka.bootstrap_servers.split(',').map(str::trim) {
            if !server.is_empty() && !server.contains(':') {
                return Err(invalid(
                    "kafka.bootstrap_servers",
                    format!("{server:?}"),
                    "a comma-separated list of host:port",
                ));
            }
        }
        if self.kafka.fetch_wait_max_ms == 0 || self.kafka.fetch_wait_max_ms > 300_000 {
            return Err(invalid(
                "kafka.fetch_wait_max_ms",
                self.kafka.fetch_wait_max_ms,
                "1 to 300000 milliseconds",
            ));
        }
        if !(1..=3600).contains(&self.kafka.metadata_refresh_secs) {
            return Err(invalid(
                "kafka.metadata_refresh_secs",
                self.kafka.metadata_refresh_secs,
                "1 to 3600 seconds",
            ));
        }
        if self.kafka.retry_initial_ms == 0 || self.kafka.retry_initial_ms > self.kafka.retry_max_ms
        {
            return Err(invalid(
                "kafka.retry_initial_ms",
                self.kafka.retry_initial_ms,
                "at least 1 and at most kafka.retry_max_ms",
            ));
        }
        if self.kafka.request_timeout_ms < 100 {
            return Err(invalid(
                "kafka.request_timeout_ms",
                self.kafka.request_timeout_ms,
                "at least 100 milliseconds",
            ));
        }
        if !self.embedded_broker.listen.ip().is_loopback() {
            return Err(invalid(
                "embedded_broker.listen",
                self.embedded_broker.listen,
                "a loopback address: the embedded broker is for development only",
            ));
        }
        let positions = &self.cluster.positions_topic;
        if !positions.is_empty()
            && (!is_valid_topic_name(positions) || self.topics.iter().any(|t| &t.name == positions))
        {
            return Err(invalid(
                "cluster.positions_topic",
                positions,
                "a Kafka topic name ([a-zA-Z0-9._-], at most 249 characters) that is not a served topic",
            ));
        }
        let ws = &self.websocket;
        let positive = [
            ("server.listen_backlog", self.server.listen_backlog as usize),
            (
                "server.header_read_timeout_secs",
                self.server.header_read_timeout_secs as usize,
            ),
            (
                "server.body_read_timeout_secs",
                self.server.body_read_timeout_secs as usize,
            ),
            (
                "server.max_http_connections",
                self.server.max_http_connections,
            ),
            ("websocket.max_message_bytes", ws.max_message_bytes),
            ("websocket.max_frame_bytes", ws.max_frame_bytes),
            ("websocket.max_command_bytes", ws.max_command_bytes),
            ("websocket.read_buffer_bytes", ws.read_buffer_bytes),
            ("websocket.outbox_max_messages", ws.outbox_max_messages),
            ("websocket.outbox_max_bytes", ws.outbox_max_bytes),
            ("websocket.max_subscriptions", ws.max_subscriptions),
            (
                "websocket.write_timeout_secs",
                ws.write_timeout_secs as usize,
            ),
            ("websocket.max_channel_bytes", ws.max_channel_bytes),
            (
                "limits.delta_keys_per_connection",
                self.limits.delta_keys_per_connection,
            ),
            ("poll.max_wait_ms", self.poll.max_wait_ms as usize),
            ("poll.max_events", self.poll.max_events),
            ("replay.max_kafka_readers", self.replay.max_kafka_readers),
            (
                "replay.handoff_buffer_records",
                self.replay.handoff_buffer_records,
            ),
            ("sessions.ttl_secs", self.sessions.ttl_secs as usize),
            (
                "sessions.commit_interval_ms",
                self.sessions.commit_interval_ms as usize,
            ),
            (
                "embedded_broker.retention_check_secs",
                self.embedded_broker.retention_check_secs as usize,
            ),
            (
                "limits.connection_attempts_per_ip_per_sec",
                self.limits.connection_attempts_per_ip_per_sec as usize,
            ),
            (
                "limits.connection_attempts_burst",
                self.limits.connection_attempts_burst as usize,
            ),
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_connections_per_identity",
                self.limits.max_connections_per_identity,
            ),
            (
                "limits.commands_per_sec",
                self.limits.commands_per_sec as usize,
            ),
            ("limits.commands_burst", self.limits.commands_burst as usize),
            (
                "limits.max_rate_limited_commands",
                self.limits.max_rate_limited_commands as usize,
            ),
            (
                "limits.max_outbound_record_bytes",
                self.limits.max_outbound_record_bytes,
            ),
            (
                "heartbeat.ping_interval_secs",
                self.heartbeat.ping_interval_secs as usize,
            ),
            (
                "heartbeat.timeout_secs",
                self.heartbeat.timeout_secs as usize,
            ),
            (
                "heartbeat.idle_timeout_secs",
                self.heartbeat.idle_timeout_secs as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, 0, "a positive integer"));
            }
        }
        if self.heartbeat.timeout_secs <= self.heartbeat.ping_interval_secs {
            return Err(invalid(
                "heartbeat.timeout_secs",
                self.heartbeat.timeout_secs,
                "more than heartbeat.ping_interval_secs",
            ));
        }
        if ws.max_frame_bytes > ws.max_message_bytes {
            return Err(invalid(
                "websocket.max_frame_bytes",
                ws.max_frame_bytes,
                "at most websocket.max_message_bytes",
            ));
        }
        // One thread per reader, started with the gateway.
        if self.replay.max_kafka_readers > 1024 {
            return Err(invalid(
                "replay.max_kafka_readers",
                self.replay.max_kafka_readers,
                "at most 1024 (a thread each)",
            ));
        }
        if ws.max_command_bytes > ws.max_message_bytes {
            return Err(invalid(
                "websocket.max_command_bytes",
                ws.max_command_bytes,
                "at most websocket.max_message_bytes",
            ));
        }
        self.validate_security()?;
        self.validate_mqtt()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{:?}", self.log.level),
                "a tracing filter such as \"info\" or \"kgate=debug,warn\"",
            ));
        }
        Ok(())
    }
}

/// One line per problem: the key, the value given, where it came from, and what was expected.
fn describe(figment: &Figment, error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e.metadata.as_ref().map(|m| match &m.source {
                Some(figment::Source::File(path)) => path.display().to_string(),
                _ if m.name.contains("environment") => {
                    format!("{ENV_PREFIX}{}", e.path.join("__").to_uppercase())
                }
                _ => m.name.to_string(),
            });
            let value = figment
                .find_value(&key)
                .ok()
                .map(|v| match v.into_string() {
                    Some(text) => format!(" = {text:?}"),
                    None => String::new(),
                })
                .unwrap_or_default();
            let from = source.map(|s| format!(" (from {s})")).unwrap_or_default();
            if key.is_empty() {
                format!("{}{from}", e.kind)
            } else {
                format!("invalid value for `{key}`{value}{from}: {}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Kafka's legal topic names: 1-249 characters of `[a-zA-Z0-9._-]`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_file_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kgate.toml");
        let text = std::fs::read_to_string(&path).expect("config/kgate.toml is readable");
        let parsed: Config = toml_only(&text);
        assert_eq!(
            parsed,
            Config::default(),
            "config/kgate.toml drifted from the defaults"
        );
    }

    fn toml_only(text: &str) -> Config {
        // Parse the file alone (no defaults underneath) so a missing key is noticed.
        Figment::from(Toml::string(text))
            .extract()
            .expect("config/kgate.toml parses on its own")
    }

    #[test]
    fn bad_type_names_key_value_and_expectation() {
        let err = Config::from_toml("[kafka]\nfetch_wait_max_ms = \"soon\"").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("fetch_wait_max_ms"), "{text}");
        assert!(text.contains("soon"), "{text}");
        assert!(text.contains("u32"), "{text}");
    }

    #[test]
    fn auth_is_required_unless_turned_off_and_keys_are_checked() {
        let err = Config::from_toml("").unwrap_err().to_string();
        assert!(
            err.contains("auth.keys") && err.contains("auth.mode = \"none\""),
            "{err}"
        );
        assert!(Config::from_toml("[auth]\nmode = \"none\"").is_ok());
        let short = "[[auth.keys]]\nalg = \"HS256\"\nkey = \"short\"";
        let err = Config::from_toml(short).unwrap_err().to_string();
        assert!(
            err.contains("auth.keys.key") && err.contains("32 bytes"),
            "{err}"
        );
        let both = "[[auth.keys]]\nalg = \"RS256\"\nkey = \"x\"\nkey_file = \"y\"";
        let err = Config::from_toml(both).unwrap_err().to_string();
        assert!(err.contains("exactly one of key and key_file"), "{err}");
        let origin = "[auth]\nmode = \"none\"\nallowed_origins = [\"app.example.com\"]";
        let err = Config::from_toml(origin).unwrap_err().to_string();
        assert!(err.contains("auth.allowed_origins"), "{err}");
        let tls = "[auth]\nmode = \"none\"\n[tls]\ncert_file = \"c.pem\"";
        let err = Config::from_toml(tls).unwrap_err().to_string();
        assert!(err.contains("tls.key_file"), "{err}");
    }

    #[test]
    fn production_config_is_valid_and_authenticated() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.toml");
        let text = std::fs::read_to_string(&path).expect("config/production.toml is readable");
        let config = Config::from_toml(&text).expect("config/production.toml is valid");
        assert_eq!(
            config.auth.mode,
            AuthMode::Jwt,
            "never auth.mode = \"none\" in production"
        );
        assert!(config.tls.cert_file.is_some() && config.tls.key_file.is_some());
        assert!(!config.auth.allowed_origins.is_empty());
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = Config::from_toml("[server]\nlisten_adress = \"1.2.3.4:5\"").unwrap_err();
        assert!(err.to_string().contains("listen_adress"), "{err}");
    }

    #[test]
    fn range_errors_name_the_key() {
        let err = Config::from_toml("[websocket]\noutbox_max_messages = 0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `websocket.outbox_max_messages`: 0 (a positive integer)"
        );
        let err = Config::from_toml("[[topics]]\nname = \"bad topic\"").unwrap_err();
        assert!(err.to_string().contains("topics.name"), "{err}");
        let err = Config::from_toml("[kafka]\nbootstrap_servers = \"nohost\"").unwrap_err();
        assert!(err.to_string().contains("kafka.bootstrap_servers"), "{err}");
    }

    #[test]
    fn embedded_broker_only_without_bootstrap() {
        let config = Config::default();
        assert!(config.uses_embedded_broker());
        assert_eq!(config.bootstrap_servers(), "127.0.0.1:19092");
        let config = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"k1:9092, k2:9092\"\n[auth]\nmode = \"none\"",
        )
        .unwrap();
        assert!(!config.uses_embedded_broker());
        assert_eq!(config.bootstrap_servers(), "k1:9092, k2:9092");
    }
}
