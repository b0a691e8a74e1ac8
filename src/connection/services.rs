//! What the connection engine uses besides its transport: a narrow set of shared
//! services (router, replay pool and Kafka lookups, session store, auth, limits), not the whole gateway,
//! so that it runs, and is unit-tested, without a broker or a socket.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::kafka::cluster::ClusterError;
use crate::kafka::producer::Producer;
use crate::kafka::replay::ReplayPool;
use crate::limits::Admission;
use crate::router::Router;
use crate::router::outbox::Outbox;
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
    /// Turns true when the gateway starts shutting down (then every connection's outbox
    /// is woken: [`Connections::wake_all`]).
    pub shutdown: watch::Receiver<bool>,
}

impl Services {
    /// The next offset of a partition in Kafka (its high watermark).
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, ClusterError> {
        Ok(self.replay.watermarks(topic, partition).await?.1)
    }
}

/// Counts open connections, hands out their ids, and can wake them all (at shutdown):
/// a gateway-wide signal every connection waited on would take room in each one's task.
pub struct Connections {
    open: Arc<Open>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Open {
    count: AtomicUsize,
    outboxes: Mutex<FxHashMap<u64, Weak<Outbox>>>,
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
    /// Registers a new connection reading `outbox`; the guard unregisters it when dropped.
    pub fn opened(&self, outbox: &Arc<Outbox>) -> ConnectionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open.count.fetch_add(1, Ordering::AcqRel);
        self.open.outboxes.lock().insert(id, Arc::downgrade(outbox));
        ConnectionGuard {
            open: self.open.clone(),
            id,
        }
    }

    /// Open connections.
    pub fn count(&self) -> usize {
        self.open.count.load(Ordering::Acquire)
    }

    /// Wakes every open connection, to see a change of state such as the shutdown.
    pub fn wake_all(&self) {
        let outboxes: Vec<Arc<Outbox>> = self
            .open
            .outboxes
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        outboxes.iter().for_each(|outbox| outbox.wake());
    }
}

/// Counts a connection while it lives.
pub struct ConnectionGuard {
    open: Arc<Open>,
    /// A process-unique connection id, used in logs and the welcome frame.
    pub id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.outboxes.lock().remove(&self.id);
        self.open.count.fetch_sub(1, Ordering::AcqRel);
    }
}
