//! The session store as async code sees it: every RocksDB read and write runs on
//! the store's own threads, never on tokio's workers (where a slow disk would stall
//! every connection of that worker) and never on the shared blocking pool (where it
//! would queue behind Kafka replays).

use std::sync::Arc;

use super::{SessionStore, StoreError};
use crate::blocking::Pool;

/// Threads running store calls: RocksDB serves concurrent readers and groups
/// concurrent writers' commits, so a few calls in flight keep it busy.
const THREADS: usize = 4;

/// A handle to the session store; cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    store: Arc<SessionStore>,
    pool: Pool,
}

impl StoreHandle {
    /// Starts the store's threads; they end when the last handle is dropped.
    pub fn start(store: Arc<SessionStore>) -> Result<StoreHandle, StoreError> {
        let pool = Pool::start("store", THREADS).map_err(StoreError::Thread)?;
        Ok(StoreHandle { store, pool })
    }

    /// Runs `f` on a store thread and waits for its answer.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SessionStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        self.pool
            .run(move || f(&store))
            .await
            .map_err(|_| StoreError::Stopped)?
    }

    /// Records an acknowledged position (in memory until the next commit; no I/O).
    pub fn ack(&self, session: &str, channel: &str, partition: i32, next: i64) {
        self.store.ack(session, channel, partition, next);
    }

    /// The store itself, for code already off the async workers (startup, shutdown,
    /// the committer's own blocking task) and for in-memory reads such as its size.
    pub fn blocking(&self) -> &Arc<SessionStore> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_on_store_threads_and_answer_in_order_per_caller() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SessionStore::open(dir.path(), false).expect("store"));
        let handle = StoreHandle::start(store).expect("threads");
        let thread = handle
            .call(|_| Ok(std::thread::current().name().map(str::to_string)))
            .await
            .expect("answer");
        assert!(thread.is_some_and(|n| n.starts_with("kgate-store-")));
        let (record, existed) = handle.call(|s| s.touch("a")).await.expect("touch");
        assert_eq!((record.id.as_str(), existed), ("a", false));
        let (_, existed) = handle.call(|s| s.touch("a")).await.expect("touch");
        assert!(existed);
        assert!(handle.call(|s| s.delete("a")).await.expect("delete"));
        assert!(handle.call(|s| s.load("a")).await.expect("load").is_none());
    }
}
