//! The engine's unit-test harness: real services (router with its ring, replay pool,
//! a RocksDB session store in a temp dir) with records dispatched as ingest would, an
//! in-memory [`Link`] in place of a socket, and Kafka's offsets answered from the
//! router. No broker and no socket: replays must start inside the memory ring.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::Connection;
use super::link::{Gone, Inbound, Link, Outbound};
use super::protocol::CloseCode;
use super::services::{Connections, Services};
use crate::auth::{Authenticator, Identity};
use crate::codec::{EncodedRecord, RecordMeta};
use crate::config::{Config, SlowConsumerPolicy};
use crate::kafka::cluster::{ClusterError, Offsets};
use crate::kafka::replay::ReplayPool;
use crate::limits::Admission;
use crate::router::{Router, TopicSpec};
use crate::session::attachments::Attachments;
use crate::store::{SessionStore, StoreHandle};

/// The topic every harness serves: one partition.
pub(super) const TOPIC: &str = "prices";

/// Kafka's offsets as the router knows them: the partition begins at 0 and ends where
/// the records dispatched so far end. Offsets-for-times is not asked by these tests.
struct RouterOffsets(Arc<Router>);

impl Offsets for RouterOffsets {
    fn watermarks_blocking(&self, topic: &str, partition: i32) -> Result<(i64, i64), ClusterError> {
        let end = self.0.topic(topic).and_then(|t| t.live_offset(partition));
        Ok((0, end.unwrap_or(0)))
    }
    fn offsets_for_time_blocking(
        &self,
        _topic: &str,
        partitions: i32,
        _timestamp: i64,
    ) -> Result<Vec<Option<i64>>, ClusterError> {
        Ok(vec![None; partitions as usize])
    }
}

/// Shared services over one topic, and the records dispatched to it.
pub(super) struct Harness {
    pub(super) services: Arc<Services>,
    next_offset: std::sync::atomic::AtomicI64,
    _shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Services for `config` (after `tweak`), serving [`TOPIC`] with `policy`.
    pub(super) fn new(policy: SlowConsumerPolicy, tweak: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.auth.mode = crate::config::AuthMode::None;
        tweak(&mut config);
        let config = Arc::new(config);
        let mut spec = TopicSpec::json(TOPIC, vec![0]);
        spec.slow_consumer = policy;
        let router = Arc::new(Router::new(
            vec![spec],
            config.replay.ring_bytes_per_partition,
        ));
        router.set_live_from_ring(config.replay.live_from_ring);
        let offsets: Arc<dyn Offsets> = Arc::new(RouterOffsets(router.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let replay =
            ReplayPool::new(config.clone(), offsets, router.clone()).expect("replay threads");
        let services = Services {
            node: "test".into(),
            replay,
            router,
            producer: None,
            sessions: StoreHandle::start(Arc::new(
                SessionStore::open(dir.path(), false).expect("session store"),
            ))
            .expect("store threads"),
            attachments: Attachments::default(),
            auth: Authenticator::new(&config.auth).expect("authenticator"),
            admission: Admission::new(&config.limits),
            connections: Connections::default(),
            shutdown: shutdown_rx,
            config,
        };
        Harness {
            services: Arc::new(services),
            next_offset: Default::default(),
            _shutdown: shutdown,
            _dir: dir,
        }
    }

    /// Opens a connection as `identity` (anonymous when `None`) and serves it on a task.
    pub(super) fn connect_as(&self, identity: Option<Identity>) -> Peer {
        let admission = &self.services.admission;
        let ticket = admission.admit(String::new()).expect("admitted");
        let identity = identity.unwrap_or_else(Identity::anonymous);
        let connection = Connection::new(self.services.clone(), None, ticket, identity);
        let (to_engine, inbound) = mpsc::unbounded_channel();
        let (outbound, from_engine) = mpsc::unbounded_channel();
        let (gate, open) = watch::channel(true);
        let (pace, per_frame) = watch::channel(Duration::ZERO);
        let link = MemoryLink {
            inbound,
            outbound,
            open,
            per_frame,
        };
        tokio::spawn(connection.run(link));
        Peer {
            to_engine,
            from_engine,
            gate,
            pace,
        }
    }

    /// Opens an anonymous connection.
    pub(super) fn connect(&self) -> Peer {
        self.connect_as(None)
    }

    /// Dispatches `n` records with the next offsets, `batch` at a time, as ingest does.
    pub(super) async fn publish(&self, n: usize, batch: usize) {
        let route = self.services.router.topic(TOPIC).expect("topic served");
        let mut records = Vec::with_capacity(batch);
        for _ in 0..n {
            let offset = self
                .next_offset
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            records.push(Arc::new(EncodedRecord::new(
                RecordMeta {
                    topic: TOPIC.into(),
                    partition: 0,
                    offset,
                },
                Some(Bytes::from(format!("k{}", offset % 3))),
                format!(r#"{{"type":"event","offset":{offset}}}"#).into(),
            )));
            if records.len() == batch {
                self.services.router.dispatch(route, &records);
                records.clear();
                tokio::task::yield_now().await;
            }
        }
        if !records.is_empty() {
            self.services.router.dispatch(route, &records);
        }
    }
}

/// What the engine wrote to the in-memory link.
#[derive(Debug)]
pub(super) enum Sent {
    /// A control frame, parsed.
    Frame(Value),
    /// An event at `offset` (partition 0).
    Event {
        offset: i64,
    },
    Ping,
    Close(CloseCode),
}

/// The engine's side: commands come from a channel, frames go to one, and sends wait
/// while the peer is paused (a client that stopped reading).
struct MemoryLink {
    inbound: mpsc::UnboundedReceiver<Inbound>,
    outbound: mpsc::UnboundedSender<Sent>,
    open: watch::Receiver<bool>,
    /// How long the peer takes to read each frame (a slow reader), zero by default.
    per_frame: watch::Receiver<Duration>,
}

impl Link for MemoryLink {
    const TRANSPORT: &'static str = "memory";
    const ANSWERS_PINGS: bool = false;

    fn recv(&mut self) -> impl Future<Output = Inbound> + Send {
        async { self.inbound.recv().await.unwrap_or(Inbound::Gone) }
    }

    fn send(&mut self, batch: &mut Vec<Outbound>) -> impl Future<Output = Result<(), Gone>> + Send {
        async move {
            self.open.wait_for(|open| *open).await.map_err(|_| Gone)?;
            let per_frame = *self.per_frame.borrow();
            if !per_frame.is_zero() {
                tokio::time::sleep(per_frame * batch.len() as u32).await;
            }
            for frame in batch.drain(..) {
                let sent = match frame {
                    Outbound::Frame(frame) => Sent::Frame(frame.to_value()),
                    Outbound::Event { record, .. } => Sent::Event {
                        offset: record.meta.offset,
                    },
                    Outbound::Ping => Sent::Ping,
                };
                self.outbound.send(sent).map_err(|_| Gone)?;
            }
            Ok(())
        }
    }

    fn close(&mut self, code: CloseCode) -> impl Future<Output = ()> + Send {
        let _ = self.outbound.send(Sent::Close(code));
        std::future::ready(())
    }
}

/// The client's side of an in-memory connection.
pub(super) struct Peer {
    to_engine: mpsc::UnboundedSender<Inbound>,
    from_engine: mpsc::UnboundedReceiver<Sent>,
    gate: watch::Sender<bool>,
    pace: watch::Sender<Duration>,
}

impl Peer {
    /// Reads each frame in `per_frame`: a write of many frames takes long.
    pub(super) fn read_slowly(&self, per_frame: Duration) {
        self.pace.send_replace(per_frame);
    }

    /// Sends a command.
    pub(super) fn send(&self, command: Value) {
        let _ = self.to_engine.send(Inbound::Command(command.to_string()));
    }

    /// Stops reading: the engine's writes wait until [`Peer::resume`].
    pub(super) fn pause(&self) {
        self.gate.send_replace(false);
    }

    /// Reads again.
    pub(super) fn resume(&self) {
        self.gate.send_replace(true);
    }

    /// Goes away, as a closed socket does.
    pub(super) fn hang_up(&self) {
        let _ = self.to_engine.send(Inbound::Gone);
    }

    /// The next thing written other than a ping (panics after 10 s of silence).
    pub(super) async fn next(&mut self) -> Sent {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.from_engine.recv()).await {
                Ok(Some(Sent::Ping)) => continue,
                Ok(Some(sent)) => return sent,
                Ok(None) => panic!("the connection ended without a close"),
                Err(_) => panic!("nothing written for 10 s"),
            }
        }
    }

    /// The next control frame, which must be of type `kind`.
    pub(super) async fn frame(&mut self, kind: &str) -> Value {
        match self.next().await {
            Sent::Frame(f) if f["type"] == kind => f,
            other => panic!("expected a {kind:?} frame, got {other:?}"),
        }
    }

    /// Offsets of the next `n` events; control frames between them are returned too.
    pub(super) async fn events(&mut self, n: usize) -> (Vec<i64>, Vec<Value>) {
        let (mut offsets, mut frames) = (Vec::new(), Vec::new());
        while offsets.len() < n {
            match self.next().await {
                Sent::Event { offset, .. } => offsets.push(offset),
                Sent::Frame(f) => frames.push(f),
                other => panic!("expected events, got {other:?} after {offsets:?}"),
            }
        }
        (offsets, frames)
    }

    /// The close code the connection ended with, skipping what was written before it.
    pub(super) async fn closed(&mut self) -> CloseCode {
        loop {
            if let Sent::Close(code) = self.next().await {
                return code;
            }
        }
    }

    /// Waits until the engine let go of the link (after a hang-up), skipping what it wrote.
    pub(super) async fn ended(&mut self) {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.from_engine.recv()).await {
                Ok(None) => return,
                Ok(Some(_)) => continue,
                Err(_) => panic!("the connection did not end within 10 s"),
            }
        }
    }

    /// Asserts nothing but what `ping` answers is pending: sends a ping and expects the
    /// pong as the very next frame.
    pub(super) async fn nothing_pending(&mut self) {
        self.send(serde_json::json!({"type": "ping", "id": "barrier"}));
        match self.next().await {
            Sent::Frame(f) if f["type"] == "pong" => {}
            other => panic!("expected nothing before the pong, got {other:?}"),
        }
    }
}
