//! What the connection engine uses besides its transport: a narrow set of shared
//! services (router, replay pool, session store, auth, limits), not the whole gateway,
//! so that it runs, and is unit-tested, without a broker or a socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::kafka::cluster::{ClusterError, Offsets};
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
    /// Kafka's watermarks and offsets-for-times, to resolve where a subscription starts.
    pub offsets: Arc<dyn Offsets>,
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
    /// The next offset of a partition in Kafka (its high watermark), asked off the async threads.
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, ClusterError> {
        let (offsets, topic) = (self.offsets.clone(), topic.to_string());
        let (_, high) =
            tokio::task::spawn_blocking(move || offsets.watermarks_blocking(&topic, partition))
                .await??;
        Ok(high)
    }

    /// Per partition, the first offset at or after `timestamp`, asked off the async threads.
    pub async fn offsets_for_time(
        &self,
        topic: &str,
        partitions: i32,
        timestamp: i64,
    ) -> Result<Vec<Option<i64>>, ClusterError> {
        let (offsets, topic) = (self.offsets.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            offsets.offsets_for_time_blocking(&topic, partitions, timestamp)
        })
        .await?
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
