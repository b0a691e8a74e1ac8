//! The last-value cache of a snapshot topic: the latest record per key, fed by
//! ingest and, at start, by a read of the topic from its beginning (a compacted
//! topic holds exactly that).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{Channel, HeaderFilter};
use crate::codec::EncodedRecord;

/// The latest record per key of one topic.
#[derive(Debug, Default)]
pub struct LastValues {
    by_key: HashMap<Bytes, Arc<EncodedRecord>>,
    /// The start-up read is complete; until then tombstones are kept so an older
    /// value read late cannot resurrect a deleted key.
    loaded: bool,
}

impl LastValues {
    /// A record from ingest: always the newest of its key.
    pub fn update(&mut self, record: &Arc<EncodedRecord>) {
        let Some(key) = &record.key else { return };
        if record.deleted && self.loaded {
            self.by_key.remove(key);
        } else {
            self.by_key.insert(key.clone(), record.clone());
        }
    }

    /// A record from the start-up read: kept unless ingest already has a newer one.
    pub fn load(&mut self, record: &Arc<EncodedRecord>) {
        let Some(key) = &record.key else { return };
        let newer_known = self.by_key.get(key).is_some_and(|known| {
            known.meta.partition == record.meta.partition && known.meta.offset >= record.meta.offset
        });
        if !newer_known {
            self.by_key.insert(key.clone(), record.clone());
        }
    }

    /// Ends the start-up read: tombstones are dropped and snapshots may be served.
    pub fn finish_load(&mut self) {
        self.by_key.retain(|_, r| !r.deleted);
        self.loaded = true;
    }

    /// True once the start-up read is complete.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Keys cached.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no key is cached.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The latest live record of every key the channel and filter select, in
    /// (partition, offset) order so per-partition offsets only grow.
    pub fn snapshot(
        &self,
        channel: &Channel,
        filter: Option<&HeaderFilter>,
    ) -> Vec<Arc<EncodedRecord>> {
        let selected = |r: &&Arc<EncodedRecord>| !r.deleted && filter.is_none_or(|f| f.matches(r));
        let mut records: Vec<Arc<EncodedRecord>> = match &channel.key {
            Some(key) => self
                .by_key
                .get(key)
                .filter(selected)
                .cloned()
                .into_iter()
                .collect(),
            None => self.by_key.values().filter(selected).cloned().collect(),
        };
        records.sort_by_key(|r| (r.meta.partition, r.meta.offset));
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;

    fn rec(partition: i32, offset: i64, key: &str, deleted: bool) -> Arc<EncodedRecord> {
        let mut r = EncodedRecord::new(
            RecordMeta {
                topic: "t".into(),
                partition,
                offset,
            },
            Some(Bytes::copy_from_slice(key.as_bytes())),
            "{}".into(),
        );
        r.deleted = deleted;
        Arc::new(r)
    }

    fn offsets(v: &[Arc<EncodedRecord>]) -> Vec<(i32, i64)> {
        v.iter()
            .map(|r| (r.meta.partition, r.meta.offset))
            .collect()
    }

    #[test]
    fn late_loads_never_override_newer_values_or_deletes() {
        let all = Channel::parse("t", 10).unwrap();
        let mut lv = LastValues::default();
        // Ingest runs while the start-up read is still going.
        lv.update(&rec(0, 10, "a", false));
        lv.update(&rec(0, 11, "b", true));
        lv.load(&rec(0, 3, "a", false));
        lv.load(&rec(0, 4, "b", false));
        lv.load(&rec(1, 5, "c", false));
        lv.load(&rec(1, 2, "c", false));
        lv.load(&rec(1, 6, "d", false));
        lv.load(&rec(1, 7, "d", true));
        lv.finish_load();
        assert_eq!(offsets(&lv.snapshot(&all, None)), vec![(0, 10), (1, 5)]);
        lv.update(&rec(1, 8, "c", true));
        assert_eq!(lv.len(), 1, "after loading, a tombstone removes its key");
        let keyed = Channel::parse("t:a", 10).unwrap();
        assert_eq!(offsets(&lv.snapshot(&keyed, None)), vec![(0, 10)]);
    }
}
