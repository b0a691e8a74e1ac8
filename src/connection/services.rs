//! What the connection engine uses besides its transport: a narrow set of shared
//! services (router, replay pool and Kafka lookups, session store, auth, limits), not the whole gateway,
//! so that it runs, and is unit-tested, without a broker or a socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::kafka::cluster::ClusterError;
use crate::kafka::producer::Producer;
use crate::kafka::replay::ReplayPool;
use crate::limits::Admission;
use crate::router::Router;
use crate::session::attachments::Attachments;
use crate::store::StoreHandle;

/// The services every connection shares.
pub struct Services {
    pub config: Arc<Config>,
    /// This node's id (`cluster.node_id`, or the listen address), in `welcome` and `/readyz`.
    pub node: String,
    pub router: Arc<Router>,
    pub replay: Arc<ReplayPool>,
    /// Produces what clients publish (`None` when `publish.enabled` is off).
    pub producer: Option<Producer>,
    /// The session store, called on its own threads.
    pub sessions: StoreHandle,
    pub attachments: Attachments,
    pub auth: Authenticator,
    pub admission: Arc<Admission>,
    pub connections: Connections,
    /// Turns true when the gateway starts shutting down.
    pub shutdown: watch::Receiver<bool>,
}

impl Services {
    /// The next offset of a partition in Kafka (its high watermark).
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, ClusterError> {
        Ok(self.replay.watermarks(topic, partition).await?.1)
    }
}

/// Counts open connections and hands out their ids.
pub struct Connections {
    open: Arc<AtomicUsize>,
    next_id: AtomicU64,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections {
            open: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl Connections {
    /// Registers a new connection; the guard unregisters it when dropped.
    pub fn opened(&self) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            open: self.open.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Open connections.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Counts a connection while it lives.
pub struct ConnectionGuard {
    open: Arc<AtomicUsize>,
    /// A process-unique connection id, used in logs and the welcome frame.
    pub id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}
