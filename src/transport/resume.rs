//! Positions of an HTTP-transport client (SSE, long-poll): the subscribe commands
//! that start (or resume) its channels, and the cursor after each event.
//!
//! Channels are numbered in the order the client listed them; the cursor holds the
//! next offset of every partition of every channel that has one (see
//! [`crate::codec::cursor`]). A partition without a position (an `earliest` start
//! with nothing delivered yet) resumes from the earliest record, so nothing is skipped.
//!
//! Size bound: while all positions fit in [`INLINE_LIMIT`] bytes the cursor carries
//! them inline. Past that, the positions are stored as a checkpoint in the session
//! store and the cursor names it plus the positions changed since; when those
//! outgrow [`DELTA_LIMIT`], a new checkpoint is written. A cursor therefore never
//! exceeds about `INLINE_LIMIT` characters, and a client reading many partitions
//! costs one small store write every few dozen events.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::codec::EncodedRecord;
use crate::codec::cursor::{Cursor, CursorError, Position, decode_positions, encode_positions};
use crate::connection::ServerFrame;
use crate::store::StoreHandle;

/// Bytes of encoded positions a cursor carries inline before a checkpoint is used.
pub const INLINE_LIMIT: usize = 384;
/// Bytes of changed positions a checkpoint cursor carries before a new checkpoint.
pub const DELTA_LIMIT: usize = 192;

/// How a channel without a cursor position starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// The `from` of a subscribe command (`"latest"`, `"earliest"`, ...).
    From(Value),
    /// Resumed: these partitions at these offsets, others from the earliest record.
    Resume(BTreeMap<i32, i64>),
}

/// The positions of one client across its channels.
pub struct Resume {
    channels: Vec<(Arc<str>, Start)>,
    positions: BTreeMap<(u32, i32), i64>,
    store: StoreHandle,
    /// Whose checkpoints these are (bounded per owner): a token subject or a client address.
    owner: String,
    /// The last checkpoint written or resumed from, and the positions it holds.
    checkpoint: Option<(String, BTreeMap<(u32, i32), i64>)>,
}

impl Resume {
    /// Channels in the client's order, all starting at `from`, unless `cursor` resumes them.
    pub async fn new(
        channels: &[String],
        from: Value,
        cursor: Option<&str>,
        store: StoreHandle,
    ) -> Result<Resume, CursorError> {
        let mut resume = Resume {
            channels: channels
                .iter()
                .map(|c| (Arc::from(c.as_str()), Start::From(from.clone())))
                .collect(),
            positions: BTreeMap::new(),
            store,
            owner: String::new(),
            checkpoint: None,
        };
        let Some(text) = cursor else {
            return Ok(resume);
        };
        // With a cursor, `from` no longer applies: a partition the cursor does not name has
        // delivered nothing yet (the answer that handed out the cursor may have come before
        // any catch-up), so it resumes from its earliest record, never from the live end.
        for (_, start) in &mut resume.channels {
            *start = Start::Resume(BTreeMap::new());
        }
        let positions = match Cursor::decode(text)? {
            Cursor::Inline(positions) => positions,
            Cursor::Checkpoint { id, delta } => {
                let key = id.clone();
                let stored = match resume.store.call(move |s| s.checkpoint(&key)).await {
                    Ok(Some(bytes)) => decode_positions(&bytes)?,
                    Ok(None) => return Err(CursorError::UnknownCheckpoint),
                    Err(e) => {
                        tracing::warn!(checkpoint = %id, error = %e, "cannot read a cursor checkpoint");
                        return Err(CursorError::UnknownCheckpoint);
                    }
                };
                let base: BTreeMap<(u32, i32), i64> = stored
                    .iter()
                    .map(|p| ((p.channel, p.partition), p.next))
                    .collect();
                resume.checkpoint = Some((id, base.clone()));
                let mut merged = base;
                merged.extend(delta.iter().map(|p| ((p.channel, p.partition), p.next)));
                to_positions(merged.iter())
            }
        };
        for p in positions {
            let Some((_, start)) = resume.channels.get_mut(p.channel as usize) else {
                return Err(CursorError::OutOfRange);
            };
            if let Start::Resume(map) = start {
                map.insert(p.partition, p.next);
            }
            resume.positions.insert((p.channel, p.partition), p.next);
        }
        Ok(resume)
    }

    /// Stores this client's checkpoints under `owner` (a token subject or client address).
    pub fn owned_by(mut self, owner: String) -> Resume {
        self.owner = owner;
        self
    }

    /// The subscribe commands that start every channel, asking for deltas with `delta`.
    pub fn commands(&self, delta: bool) -> Vec<String> {
        self.channels
            .iter()
            .map(|(channel, start)| {
                let from = match start {
                    Start::From(from) => from.clone(),
                    Start::Resume(map) => {
                        let offsets: BTreeMap<String, i64> =
                            map.iter().map(|(p, o)| (p.to_string(), *o)).collect();
                        json!({"offsets": offsets, "others": "earliest"})
                    }
                };
                json!({"type": "subscribe", "id": &**channel, "channel": &**channel, "from": from,
                       "delta": delta})
                .to_string()
            })
            .collect()
    }

    /// Notes the starting positions a `subscribed` frame reveals (a `latest` start is at
    /// the live offsets it names); other frames are ignored.
    pub fn on_frame(&mut self, frame: &ServerFrame) {
        let ServerFrame::Subscribed { channel, live, .. } = frame else {
            return;
        };
        let Some(index) = self.index(channel) else {
            return;
        };
        let latest = matches!(&self.channels[index as usize].1, Start::From(f) if f == "latest");
        if !latest {
            return;
        }
        for (p, o) in live.iter().enumerate() {
            self.positions.entry((index, p as i32)).or_insert(*o);
        }
    }

    /// Records that `record` was sent on `channel`.
    pub fn on_event(&mut self, channel: &str, record: &EncodedRecord) {
        if let Some(index) = self.index(channel) {
            let next = record.meta.offset + 1;
            let slot = self
                .positions
                .entry((index, record.meta.partition))
                .or_insert(next);
            *slot = (*slot).max(next);
        }
    }

    /// The cursor that resumes right after everything recorded so far (bounded in size:
    /// see the module docs).
    pub async fn cursor(&mut self) -> String {
        let all = to_positions(self.positions.iter());
        if let Some((id, base)) = &self.checkpoint {
            let changed = self
                .positions
                .iter()
                .filter(|(k, v)| base.get(k) != Some(v));
            let delta = to_positions(changed);
            if encode_positions(&delta).len() <= DELTA_LIMIT {
                return Cursor::Checkpoint {
                    id: id.clone(),
                    delta,
                }
                .encode();
            }
        } else if encode_positions(&all).len() <= INLINE_LIMIT {
            return Cursor::Inline(all).encode();
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (owner, key, bytes) = (self.owner.clone(), id.clone(), encode_positions(&all));
        let stored = self
            .store
            .call(move |s| s.put_checkpoint(&owner, &key, &bytes))
            .await;
        if let Err(e) = stored {
            // Correct but long: the inline form.
            tracing::warn!(error = %e, "cannot store a cursor checkpoint; sending positions inline");
            return Cursor::Inline(all).encode();
        }
        self.checkpoint = Some((id.clone(), self.positions.clone()));
        Cursor::Checkpoint {
            id,
            delta: Vec::new(),
        }
        .encode()
    }

    #[cfg(test)]
    fn positions(&self) -> &BTreeMap<(u32, i32), i64> {
        &self.positions
    }

    fn index(&self, channel: &str) -> Option<u32> {
        self.channels
            .iter()
            .position(|(c, _)| &**c == channel)
            .map(|i| i as u32)
    }
}

fn to_positions<'a>(entries: impl Iterator<Item = (&'a (u32, i32), &'a i64)>) -> Vec<Position> {
    entries
        .map(|(&(channel, partition), &next)| Position {
            channel,
            partition,
            next,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;

    fn record(partition: i32, offset: i64) -> EncodedRecord {
        EncodedRecord::new(
            RecordMeta {
                topic: "t".into(),
                partition,
                offset,
            },
            None,
            "{}".into(),
        )
    }

    fn store(dir: &tempfile::TempDir) -> StoreHandle {
        let store = crate::store::SessionStore::open(dir.path(), false).expect("store");
        StoreHandle::start(Arc::new(store)).expect("store threads")
    }

    #[tokio::test]
    async fn cursors_stay_small_with_many_partitions_and_resume_exactly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(&dir);
        let channels = vec!["t".to_string()];
        let mut resume = Resume::new(&channels, "latest".into(), None, store.clone())
            .await
            .expect("new");
        let mut longest = 0;
        // 2,000 partitions, each at an offset in the millions: inline that is over 10 KB.
        for round in 0..3 {
            for p in 0..2_000 {
                resume.on_event("t", &record(p, 5_000_000 + round * 10 + i64::from(p % 7)));
                if p % 97 == 0 {
                    longest = longest.max(resume.cursor().await.len());
                }
            }
        }
        let cursor = resume.cursor().await;
        assert!(
            longest <= INLINE_LIMIT * 4 / 3 + 80,
            "a cursor of {longest} characters"
        );
        let resumed = Resume::new(&channels, "latest".into(), Some(&cursor), store)
            .await
            .expect("resume");
        assert_eq!(
            resumed.positions(),
            resume.positions(),
            "resumes exactly where it was"
        );
        assert_eq!(resumed.positions().len(), 2_000);
    }

    #[tokio::test]
    async fn few_partitions_stay_inline_and_unknown_checkpoints_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(&dir);
        let channels = vec!["a".to_string(), "b".to_string()];
        let mut resume = Resume::new(&channels, "latest".into(), None, store.clone())
            .await
            .expect("new");
        resume.on_event("b", &record(2, 41));
        let cursor = resume.cursor().await;
        assert!(cursor.starts_with("p1."), "{cursor}");
        let resumed = Resume::new(&channels, "latest".into(), Some(&cursor), store.clone())
            .await
            .expect("resume");
        assert_eq!(resumed.positions(), &BTreeMap::from([((1, 2), 42)]));
        let commands = resumed.commands(false);
        assert!(
            commands[1].contains(r#""others":"earliest""#),
            "{}",
            commands[1]
        );
        // A cursor that names no partition (handed out before catch-up delivered anything)
        // resumes every channel from its earliest record, whatever `from` says.
        let empty = Resume::new(&channels, "latest".into(), Some("p1."), store.clone())
            .await
            .expect("empty cursor");
        for command in empty.commands(false) {
            assert!(command.contains(r#""others":"earliest""#), "{command}");
        }
        assert_eq!(
            Resume::new(&channels, "latest".into(), Some("c1.nosuch.AAAA"), store)
                .await
                .err(),
            Some(CursorError::UnknownCheckpoint)
        );
    }
}
