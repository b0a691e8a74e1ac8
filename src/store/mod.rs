//! Durable sessions in RocksDB: each session's subscriptions and, per
//! subscription and partition, the next offset to deliver.
//!
//! Positions advance only on client acknowledgement. Writes are group-committed:
//! acks update an in-memory map that a committer writes as one batch per
//! interval (through RocksDB's WAL, so a killed process loses nothing
//! committed). Sessions idle longer than their TTL are swept.

mod handle;
pub mod replication;

pub use handle::StoreHandle;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rocksdb::{
    DB, Direction, IteratorMode, Options as DbOptions, WriteBatch, WriteBatchIterator, WriteOptions,
};
use serde::{Deserialize, Serialize};

use crate::session::subscription::Options;
use tokio::sync::mpsc;

/// A failed store operation, naming what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the session store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("session store {op} failed: {source}")]
    Db {
        op: &'static str,
        source: rocksdb::Error,
    },
    #[error("session record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cannot start a session store thread: {0}")]
    Thread(std::io::Error),
    #[error("the session store's threads have stopped")]
    Stopped,
}

/// A subscription remembered by a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// The channel name as the client wrote it.
    pub channel: String,
    /// Its rate and header filter, restored with it.
    pub options: Options,
    /// Next offset to deliver per partition; `None` until the first position is known.
    pub positions: Vec<Option<i64>>,
}

/// Everything the store holds about one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub created_ms: i64,
    pub last_seen_ms: i64,
    pub subscriptions: Vec<StoredSubscription>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    created_ms: i64,
    last_seen_ms: i64,
    channels: Vec<String>,
    /// Options of channels that have any (absent in records written before they existed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    options: BTreeMap<String, Options>,
}

/// The RocksDB-backed session store.
pub struct SessionStore {
    db: DB,
    pending: Mutex<HashMap<Vec<u8>, i64>>,
    /// Held across each read-modify-write of a session's meta record and each delete:
    /// calls run on several threads, and a connection's last write could otherwise read
    /// a session just before its deletion and write it back just after.
    meta: Mutex<()>,
    sync: bool,
    /// Set on nodes that share sessions through Kafka.
    replicate: OnceLock<mpsc::UnboundedSender<Vec<Op>>>,
}

/// RocksDB's own estimate of what the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSize {
    pub keys: u64,
    /// Live data on disk plus memtables.
    pub bytes: u64,
}

const META: u8 = b'm';
const POSITION: u8 = b'p';
/// Resume-cursor checkpoints of the HTTP transports: created time, then encoded positions.
const CHECKPOINT: u8 = b'c';
/// Each owner's checkpoints, oldest first: owner, created time, checkpoint id (no value).
const CHECKPOINT_OWNER: u8 = b'o';
/// Checkpoints one owner (a token subject, or a client address) may hold: a client needs
/// only its latest few cursors, and unbounded polls must not grow the store.
pub const CHECKPOINTS_PER_OWNER: usize = 16;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn push_str(key: &mut Vec<u8>, s: &str) {
    key.extend_from_slice(&(s.len() as u32).to_be_bytes());
    key.extend_from_slice(s.as_bytes());
}

fn meta_key(session: &str) -> Vec<u8> {
    let mut k = vec![META];
    push_str(&mut k, session);
    k
}

fn checkpoint_key(id: &str) -> Vec<u8> {
    let mut k = vec![CHECKPOINT];
    push_str(&mut k, id);
    k
}

fn owner_prefix(owner: &str) -> Vec<u8> {
    let mut k = vec![CHECKPOINT_OWNER];
    push_str(&mut k, owner);
    k
}

fn position_prefix(session: &str) -> Vec<u8> {
    let mut k = vec![POSITION];
    push_str(&mut k, session);
    k
}

fn channel_prefix(session: &str, channel: &str) -> Vec<u8> {
    let mut k = position_prefix(session);
    push_str(&mut k, channel);
    k
}

/// The big-endian u32 at the start of `bytes` (0 when too short).
fn be_u32(bytes: Option<&[u8]>) -> u32 {
    bytes
        .and_then(|b| b.get(..4))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes)
}

/// The big-endian i64 at the start of `bytes` (0 when too short).
fn be_i64(bytes: Option<&[u8]>) -> i64 {
    bytes
        .and_then(|b| b.get(..8))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, i64::from_be_bytes)
}

/// The meta key of the session a position key belongs to.
fn session_meta_key(position_key: &[u8]) -> Vec<u8> {
    let len = be_u32(position_key.get(1..)) as usize;
    let mut k = vec![META];
    k.extend_from_slice(position_key.get(1..5 + len).unwrap_or_default());
    k
}

fn position_key(session: &str, channel: &str, partition: i32) -> Vec<u8> {
    let mut k = channel_prefix(session, channel);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

impl SessionStore {
    /// Opens (or creates) the store under `<data_dir>/sessions`.
    pub fn open(data_dir: &Path, sync: bool) -> Result<SessionStore, StoreError> {
        let path = data_dir.join("sessions");
        let mut opts = DbOptions::default();
        opts.create_if_missing(true);
        // Small: positions are tiny and the default 64 MiB memtable would be mostly empty.
        opts.set_write_buffer_size(8 * 1024 * 1024);
        opts.set_max_open_files(256);
        let db = DB::open(&opts, &path).map_err(|source| StoreError::Open { path, source })?;
        Ok(SessionStore {
            db,
            pending: Mutex::new(HashMap::new()),
            meta: Mutex::new(()),
            sync,
            replicate: OnceLock::new(),
        })
    }

    fn write_opts(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.sync);
        w
    }

    /// Every write goes through here: to RocksDB, then to the other nodes when replicating.
    fn write(&self, batch: WriteBatch, op: &'static str) -> Result<(), StoreError> {
        let ops = self.replicate.get().map(|_| ops(&batch));
        self.db
            .write_opt(batch, &self.write_opts())
            .map_err(|source| StoreError::Db { op, source })?;
        if let (Some(tx), Some(ops)) = (self.replicate.get(), ops) {
            // The publisher outlives the store in a running gateway; after shutdown nothing is lost
            // that RocksDB does not hold.
            let _ = tx.send(ops);
        }
        Ok(())
    }

    /// Sends every later write to the other nodes through `tx` (see `replication`).
    pub fn replicate_to(&self, tx: mpsc::UnboundedSender<Vec<Op>>) {
        let _ = self.replicate.set(tx);
    }

    /// Applies a write another node made (not replicated again).
    pub fn apply_replicated(&self, op: &Op) -> Result<(), StoreError> {
        let result = match op {
            Op::Put(key, value) => self.db.put_opt(key, value, &self.write_opts()),
            Op::Delete(key) => self.db.delete_opt(key, &self.write_opts()),
        };
        result.map_err(|source| StoreError::Db {
            op: "apply replicated write",
            source,
        })
    }

    fn get_meta(&self, session: &str) -> Result<Option<Meta>, StoreError> {
        let key = meta_key(session);
        let Some(bytes) = self
            .db
            .get(&key)
            .map_err(|source| StoreError::Db { op: "read", source })?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: format!("session {session:?}"),
                reason: e.to_string(),
            })
    }

    fn put_meta(&self, session: &str, meta: &Meta) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(meta).unwrap_or_default();
        let mut batch = WriteBatch::default();
        batch.put(meta_key(session), bytes);
        self.write(batch, "write")
    }

    /// The store's estimated size; `None` if RocksDB does not answer (a store that is not open).
    pub fn size(&self) -> Option<StoreSize> {
        let property = |name: &str| self.db.property_int_value(name).ok().flatten();
        Some(StoreSize {
            keys: property("rocksdb.estimate-num-keys")?,
            bytes: property("rocksdb.estimate-live-data-size")?
                + property("rocksdb.cur-size-all-mem-tables").unwrap_or(0),
        })
    }

    /// Loads a session with its subscriptions and committed positions (pending acks included).
    pub fn load(&self, session: &str) -> Result<Option<SessionRecord>, StoreError> {
        let Some(meta) = self.get_meta(session)? else {
            return Ok(None);
        };
        let mut subscriptions = Vec::with_capacity(meta.channels.len());
        for channel in &meta.channels {
            let prefix = channel_prefix(session, channel);
            let mut positions: Vec<Option<i64>> = Vec::new();
            for item in self
                .db
                .iterator(IteratorMode::From(&prefix, Direction::Forward))
            {
                let (key, value) = item.map_err(|source| StoreError::Db { op: "scan", source })?;
                if !key.starts_with(&prefix) {
                    break;
                }
                let (Ok(p), Ok(v)) = (
                    <[u8; 4]>::try_from(&key[prefix.len()..]),
                    <[u8; 8]>::try_from(&*value),
                ) else {
                    return Err(StoreError::Corrupt {
                        key: format!("position of {session:?} {channel:?}"),
                        reason: "bad key or value length".into(),
                    });
                };
                let p = i32::from_be_bytes(p) as usize;
                if positions.len() <= p {
                    positions.resize(p + 1, None);
                }
                positions[p] = Some(i64::from_be_bytes(v));
            }
            let pending = self.pending.lock();
            for (p, slot) in positions.iter_mut().enumerate() {
                if let Some(v) = pending.get(&position_key(session, channel, p as i32)) {
                    *slot = Some(slot.map_or(*v, |s| s.max(*v)));
                }
            }
            subscriptions.push(StoredSubscription {
                channel: channel.clone(),
                options: meta.options.get(channel).cloned().unwrap_or_default(),
                positions,
            });
        }
        Ok(Some(SessionRecord {
            id: session.to_string(),
            created_ms: meta.created_ms,
            last_seen_ms: meta.last_seen_ms,
            subscriptions,
        }))
    }

    /// Marks an existing session seen now; false if it does not exist (a deleted session
    /// stays deleted: a connection that held it must not bring it back as it ends).
    pub fn mark_seen(&self, session: &str) -> Result<bool, StoreError> {
        let _meta = self.meta.lock();
        let Some(mut meta) = self.get_meta(session)? else {
            return Ok(false);
        };
        meta.last_seen_ms = now_ms();
        self.put_meta(session, &meta)?;
        Ok(true)
    }

    /// Creates the session if new and marks it seen now; returns it, and whether it
    /// existed before (its timestamps cannot tell: two attaches may share a millisecond).
    pub fn touch(&self, session: &str) -> Result<(SessionRecord, bool), StoreError> {
        let _meta = self.meta.lock();
        let now = now_ms();
        let existing = self.get_meta(session)?;
        let existed = existing.is_some();
        let meta = match existing {
            Some(mut m) => {
                m.last_seen_ms = now;
                m
            }
            None => Meta {
                created_ms: now,
                last_seen_ms: now,
                channels: Vec::new(),
                options: BTreeMap::new(),
            },
        };
        self.put_meta(session, &meta)?;
        let record = self.load(session)?.ok_or_else(|| StoreError::Corrupt {
            key: format!("session {session:?}"),
            reason: "vanished after write".into(),
        })?;
        Ok((record, existed))
    }

    /// Records a new subscription with its starting positions (written at once, not batched).
    pub fn add_subscription(
        &self,
        session: &str,
        channel: &str,
        options: &Options,
        positions: &[Option<i64>],
    ) -> Result<(), StoreError> {
        let _meta = self.meta.lock();
        let mut meta = self.get_meta(session)?.unwrap_or(Meta {
            created_ms: now_ms(),
            last_seen_ms: now_ms(),
            channels: Vec::new(),
            options: BTreeMap::new(),
        });
        if !meta.channels.iter().any(|c| c == channel) {
            meta.channels.push(channel.to_string());
        }
        if *options == Options::default() {
            meta.options.remove(channel);
        } else {
            meta.options.insert(channel.to_string(), options.clone());
        }
        let mut batch = WriteBatch::default();
        batch.put(
            meta_key(session),
            serde_json::to_vec(&meta).unwrap_or_default(),
        );
        for (p, pos) in positions.iter().enumerate() {
            if let Some(pos) = pos {
                batch.put(position_key(session, channel, p as i32), pos.to_be_bytes());
            }
        }
        self.write(batch, "write")
    }

    /// Forgets one subscription of a session and its positions.
    pub fn remove_subscription(&self, session: &str, channel: &str) -> Result<(), StoreError> {
        let _meta = self.meta.lock();
        let Some(mut meta) = self.get_meta(session)? else {
            return Ok(());
        };
        meta.channels.retain(|c| c != channel);
        meta.options.remove(channel);
        let prefix = channel_prefix(session, channel);
        self.pending.lock().retain(|k, _| !k.starts_with(&prefix));
        let mut batch = WriteBatch::default();
        batch.put(
            meta_key(session),
            serde_json::to_vec(&meta).unwrap_or_default(),
        );
        self.delete_prefix_into(&prefix, &mut batch)?;
        self.write(batch, "write")
    }

    /// Queues an acknowledged position (next offset to deliver); written by the next commit.
    /// Positions only move forward.
    pub fn ack(&self, session: &str, channel: &str, partition: i32, next: i64) {
        let mut pending = self.pending.lock();
        let slot = pending
            .entry(position_key(session, channel, partition))
            .or_insert(next);
        *slot = (*slot).max(next);
    }

    /// Writes every queued position as one batch; returns how many were written.
    pub fn commit(&self) -> Result<usize, StoreError> {
        let pending = std::mem::take(&mut *self.pending.lock());
        if pending.is_empty() {
            return Ok(0);
        }
        let mut batch = WriteBatch::default();
        // Acks that raced a delete must not leave positions of a session that is gone.
        let mut exists: HashMap<Vec<u8>, bool> = HashMap::new();
        for (key, next) in &pending {
            let meta = session_meta_key(key);
            let live = match exists.get(&meta) {
                Some(live) => *live,
                None => {
                    let live = self
                        .db
                        .get(&meta)
                        .map_err(|source| StoreError::Db { op: "read", source })?
                        .is_some();
                    *exists.entry(meta).or_insert(live)
                }
            };
            if !live {
                continue;
            }
            // Keep positions monotonic even if an older value was committed later.
            let current = self
                .db
                .get(key)
                .map_err(|source| StoreError::Db { op: "read", source })?
                .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
                .map(i64::from_be_bytes);
            if current.is_none_or(|c| c < *next) {
                batch.put(key, next.to_be_bytes());
            }
        }
        let n = batch.len();
        self.write(batch, "commit")?;
        Ok(n)
    }

    /// Deletes a session and all its positions; false if it did not exist.
    pub fn delete(&self, session: &str) -> Result<bool, StoreError> {
        let _meta = self.meta.lock();
        if self.get_meta(session)?.is_none() {
            return Ok(false);
        }
        let prefix = position_prefix(session);
        self.pending.lock().retain(|k, _| !k.starts_with(&prefix));
        let mut batch = WriteBatch::default();
        batch.delete(meta_key(session));
        self.delete_prefix_into(&prefix, &mut batch)?;
        self.write(batch, "delete")?;
        Ok(true)
    }

    /// Calls `each` with every key starting with `prefix`, and its value, in key order.
    fn scan(&self, prefix: &[u8], mut each: impl FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (key, value) = item.map_err(|source| StoreError::Db { op: "scan", source })?;
            if !key.starts_with(prefix) {
                break;
            }
            each(&key, &value);
        }
        Ok(())
    }

    fn delete_prefix_into(&self, prefix: &[u8], batch: &mut WriteBatch) -> Result<(), StoreError> {
        self.scan(prefix, |key, _| batch.delete(key))
    }

    /// Stores a resume-cursor checkpoint (positions encoded by `codec::cursor`) for
    /// `owner`, deleting the owner's oldest beyond [`CHECKPOINTS_PER_OWNER`].
    pub fn put_checkpoint(
        &self,
        owner: &str,
        id: &str,
        positions: &[u8],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut value = now.to_be_bytes().to_vec();
        value.extend_from_slice(positions);
        let mut batch = WriteBatch::default();
        batch.put(checkpoint_key(id), value);
        let prefix = owner_prefix(owner);
        let mut index = prefix.clone();
        index.extend_from_slice(&now.to_be_bytes());
        index.extend_from_slice(id.as_bytes());
        batch.put(&index, []);
        let mut held = Vec::new();
        self.scan(&prefix, |key, _| held.push(key.to_vec()))?;
        let excess = (held.len() + 1).saturating_sub(CHECKPOINTS_PER_OWNER);
        for key in held.iter().take(excess) {
            if let Some(old) = key.get(prefix.len() + 8..) {
                batch.delete(checkpoint_key(&String::from_utf8_lossy(old)));
            }
            batch.delete(key);
        }
        self.write(batch, "write")
    }

    /// A checkpoint's encoded positions, if it exists.
    pub fn checkpoint(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self
            .db
            .get(checkpoint_key(id))
            .map_err(|source| StoreError::Db { op: "read", source })?;
        Ok(value.map(|v| v.get(8..).unwrap_or_default().to_vec()))
    }

    /// Deletes checkpoints older than `ttl` (and their owner index); returns how many.
    pub fn expire_checkpoints(&self, ttl: Duration) -> Result<usize, StoreError> {
        let cutoff = now_ms() - ttl.as_millis() as i64;
        let mut batch = WriteBatch::default();
        let mut n = 0;
        // Owner index keys: the owner (length-prefixed), then the created time.
        self.scan(&[CHECKPOINT_OWNER], |key, _| {
            let owner_len = be_u32(key.get(1..)) as usize;
            if be_i64(key.get(5 + owner_len..)) < cutoff {
                batch.delete(key);
            }
        })?;
        // Checkpoint values start with their created time.
        self.scan(&[CHECKPOINT], |key, value| {
            if be_i64(Some(value)) < cutoff {
                batch.delete(key);
                n += 1;
            }
        })?;
        self.write(batch, "write")?;
        Ok(n)
    }

    /// Every session id with its last-seen time, in id order.
    pub fn list(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&[META], Direction::Forward))
        {
            let (key, value) = item.map_err(|source| StoreError::Db { op: "scan", source })?;
            if key.first() != Some(&META) {
                break;
            }
            let id = String::from_utf8_lossy(key.get(5..).unwrap_or_default()).into_owned();
            let meta: Meta = serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                key: format!("session {id:?}"),
                reason: e.to_string(),
            })?;
            out.push((id, meta.last_seen_ms));
        }
        Ok(out)
    }

    /// Deletes sessions not seen for `ttl`, except those in `attached`; returns how many.
    pub fn expire(
        &self,
        ttl: Duration,
        attached: &dyn Fn(&str) -> bool,
    ) -> Result<usize, StoreError> {
        let cutoff = now_ms() - ttl.as_millis() as i64;
        let refresh = now_ms() - ttl.as_millis() as i64 / 2;
        let mut n = 0;
        for (id, last_seen) in self.list()? {
            if attached(&id) {
                // Other nodes only see writes: keep an attached session's last-seen time
                // fresh, so no node sweeps a session that is in use here.
                if last_seen < refresh {
                    self.mark_seen(&id)?;
                }
            } else if last_seen < cutoff && self.delete(&id)? {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Runs the group committer and the TTL sweeper, on the store's threads.
pub fn spawn_background(
    store: StoreHandle,
    commit_every: Duration,
    ttl: Duration,
    attached: Arc<dyn Fn(&str) -> bool + Send + Sync>,
) {
    let committer = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(commit_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = committer.call(|s| s.commit()).await {
                tracing::error!(error = %e, "session positions not committed; retrying");
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(
            (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)),
        );
        loop {
            tick.tick().await;
            let attached = attached.clone();
            // Cursor checkpoints live as long as an idle session would.
            let expired = store
                .call(move |s| Ok((s.expire(ttl, &*attached)?, s.expire_checkpoints(ttl)?)))
                .await;
            match expired {
                Ok((sessions, checkpoints)) if sessions + checkpoints > 0 => {
                    tracing::info!(
                        sessions,
                        checkpoints,
                        "expired idle sessions and cursor checkpoints"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "session expiry failed"),
                _ => {}
            }
        }
    });
}

/// One write to the store, as replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// The writes of a batch, in order.
pub fn ops(batch: &WriteBatch) -> Vec<Op> {
    struct Collect(Vec<Op>);
    impl WriteBatchIterator for Collect {
        fn put(&mut self, key: &[u8], value: &[u8]) {
            self.0.push(Op::Put(key.to_vec(), value.to_vec()));
        }
        fn delete(&mut self, key: &[u8]) {
            self.0.push(Op::Delete(key.to_vec()));
        }
    }
    let mut collect = Collect(Vec::new());
    batch.iterate(&mut collect);
    collect.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deleted session stays deleted while another thread marks it seen (a connection
    /// ending as its session is deleted): each read-modify-write is atomic with deletes.
    #[test]
    fn a_concurrent_mark_seen_never_brings_a_deleted_session_back() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SessionStore::open(dir.path(), false).unwrap());
        let ids: Arc<Vec<String>> = Arc::new((0..2_000).map(|i| format!("s{i}")).collect());
        for id in ids.iter() {
            store.touch(id).unwrap();
        }
        // The other thread marks seen whichever session is being deleted right now.
        let (current, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let seer = {
            let (store, ids, current, done) =
                (store.clone(), ids.clone(), current.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    store
                        .mark_seen(&ids[current.load(Ordering::Acquire)])
                        .unwrap();
                }
            })
        };
        for (i, id) in ids.iter().enumerate() {
            current.store(i, Ordering::Release);
            store.delete(id).unwrap();
        }
        done.store(true, Ordering::Release);
        seer.join().unwrap();
        let left = store.list().unwrap();
        assert!(left.is_empty(), "{} deleted sessions came back", left.len());
    }

    #[test]
    fn positions_are_committed_monotonic_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SessionStore::open(dir.path(), false).unwrap();
            store.touch("alice").unwrap();
            let options = Options {
                max_rate: Some(2.5),
                filter: None,
                qos: 1,
                delta: true,
            };
            store
                .add_subscription("alice", "prices:AAPL", &options, &[Some(5), Some(7)])
                .unwrap();
            store.ack("alice", "prices:AAPL", 0, 9);
            store.ack("alice", "prices:AAPL", 0, 8); // older ack: ignored
            // Pending acks are visible before the commit...
            assert_eq!(
                store.load("alice").unwrap().unwrap().subscriptions[0].positions,
                vec![Some(9), Some(7)]
            );
            assert_eq!(store.commit().unwrap(), 1);
            store.ack("alice", "prices:AAPL", 1, 3); // behind the committed 7: not written
            store.commit().unwrap();
        }
        let store = SessionStore::open(dir.path(), false).unwrap();
        let s = store.load("alice").unwrap().unwrap();
        assert_eq!(
            s.subscriptions,
            vec![StoredSubscription {
                channel: "prices:AAPL".into(),
                options: Options {
                    max_rate: Some(2.5),
                    filter: None,
                    qos: 1,
                    delta: true,
                },
                positions: vec![Some(9), Some(7)],
            }]
        );
        assert_eq!(store.list().unwrap().len(), 1);
    }

    /// Issue 17.9: a client that polls without end keeps at most 16 checkpoints.
    #[test]
    fn checkpoints_are_bounded_per_owner_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(dir.path(), false).unwrap();
        for i in 0..40 {
            store
                .put_checkpoint("mallory", &format!("m{i:02}"), &[1, 2, 3])
                .unwrap();
        }
        store.put_checkpoint("alice", "a0", &[4]).unwrap();
        let held = (0..40)
            .filter(|i| store.checkpoint(&format!("m{i:02}")).unwrap().is_some())
            .count();
        assert_eq!(held, CHECKPOINTS_PER_OWNER);
        assert!(
            store.checkpoint("m39").unwrap().is_some(),
            "the newest stay"
        );
        assert!(store.checkpoint("m00").unwrap().is_none(), "the oldest go");
        assert_eq!(
            store.checkpoint("a0").unwrap(),
            Some(vec![4]),
            "others keep theirs"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            store.expire_checkpoints(Duration::from_millis(10)).unwrap(),
            17
        );
        let index = store
            .db
            .iterator(IteratorMode::From(&[CHECKPOINT_OWNER], Direction::Forward))
            .filter_map(Result::ok)
            .take_while(|(k, _)| k.first() == Some(&CHECKPOINT_OWNER))
            .count();
        assert_eq!(index, 0, "expiry removes the owner index too");
    }

    #[test]
    fn remove_delete_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(dir.path(), false).unwrap();
        for s in ["a", "ab", "b"] {
            store.touch(s).unwrap();
            store
                .add_subscription(s, "t", &Options::default(), &[Some(1)])
                .unwrap();
            store
                .add_subscription(s, "u", &Options::default(), &[Some(2)])
                .unwrap();
        }
        store.remove_subscription("a", "t").unwrap();
        let a = store.load("a").unwrap().unwrap();
        assert_eq!(a.subscriptions.len(), 1);
        assert_eq!(a.subscriptions[0].channel, "u");
        // "ab" shares a byte prefix with "a" but not a key prefix.
        assert_eq!(store.load("ab").unwrap().unwrap().subscriptions.len(), 2);
        // A connection ending after its session was deleted (issue 16.4): its last-seen
        // write and late acks must not bring the session back.
        store.ack("a", "u", 0, 5);
        assert!(store.delete("a").unwrap());
        assert!(!store.delete("a").unwrap());
        store.ack("a", "u", 0, 6);
        assert!(!store.mark_seen("a").unwrap());
        store.commit().unwrap();
        assert!(store.load("a").unwrap().is_none());
        let prefix = position_prefix("a");
        let leftover = store
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
            .filter_map(Result::ok)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .count();
        assert_eq!(leftover, 0, "no positions of a deleted session");
        std::thread::sleep(Duration::from_millis(20));
        let n = store
            .expire(Duration::from_millis(10), &|id| id == "b")
            .unwrap();
        assert_eq!(n, 1);
        let ids: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, vec!["b".to_string()]);
    }
}
