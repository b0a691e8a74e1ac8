//! The recent-records ring of one partition: the memory tier of replay.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::codec::EncodedRecord;

/// The most recent records of a partition, bounded by bytes.
#[derive(Debug)]
pub struct Ring {
    records: VecDeque<Arc<EncodedRecord>>,
    bytes: usize,
    max_bytes: usize,
    /// Every record at or after this offset (up to the live position) is in the ring.
    covered_from: i64,
}

impl Ring {
    /// An empty ring that covers from `start` (the live position when ingest began).
    pub fn new(start: i64, max_bytes: usize) -> Ring {
        Ring {
            records: VecDeque::new(),
            bytes: 0,
            max_bytes,
            covered_from: start,
        }
    }

    /// Appends a record, evicting the oldest past the byte bound.
    pub fn push(&mut self, record: Arc<EncodedRecord>) {
        if self.max_bytes == 0 {
            return;
        }
        self.bytes += record.size();
        self.records.push_back(record);
        while self.bytes > self.max_bytes {
            let Some(old) = self.records.pop_front() else {
                break;
            };
            self.bytes -= old.size();
            self.covered_from = old.meta.offset + 1;
        }
    }

    /// The offset from which the ring holds every record.
    pub fn covered_from(&self) -> i64 {
        self.covered_from
    }

    /// Puts records a Kafka replay read just below the ring in front of it, newest first,
    /// while they fit. `records` must be every record from `start` up to `until`, and
    /// `until` where the ring still begins; otherwise nothing changes. Returns how many were added.
    pub fn backfill(&mut self, start: i64, until: i64, records: Vec<Arc<EncodedRecord>>) -> usize {
        let contiguous = until == self.covered_from
            && start < until
            && records.first().is_none_or(|r| r.meta.offset >= start)
            && records.last().is_none_or(|r| r.meta.offset < until);
        if self.max_bytes == 0 || !contiguous {
            return 0;
        }
        let total = records.len();
        let mut added = 0;
        for r in records.into_iter().rev() {
            if self.bytes + r.size() > self.max_bytes {
                break;
            }
            self.bytes += r.size();
            self.covered_from = r.meta.offset;
            self.records.push_front(r);
            added += 1;
        }
        if added == total {
            self.covered_from = start;
        }
        added
    }

    /// Hands up to `max` records from offset `from` on to `each`, oldest first; how many,
    /// or `None` if the ring no longer covers `from`.
    pub fn read(
        &self,
        from: i64,
        max: usize,
        mut each: impl FnMut(&Arc<EncodedRecord>),
    ) -> Option<usize> {
        if self.max_bytes == 0 || from < self.covered_from {
            return None;
        }
        let start = self.records.partition_point(|r| r.meta.offset < from);
        let mut n = 0;
        for record in self.records.range(start..).take(max) {
            each(record);
            n += 1;
        }
        Some(n)
    }

    /// The records with offsets in `from..until`, if the ring still covers `from`.
    pub fn range(&self, from: i64, until: i64) -> Option<Vec<Arc<EncodedRecord>>> {
        if self.max_bytes == 0 || from < self.covered_from {
            return None;
        }
        let start = self.records.partition_point(|r| r.meta.offset < from);
        Some(
            self.records
                .range(start..)
                .take_while(|r| r.meta.offset < until)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;

    fn rec(offset: i64) -> Arc<EncodedRecord> {
        Arc::new(EncodedRecord::new(
            RecordMeta {
                topic: "t".into(),
                partition: 0,
                offset,
            },
            None,
            "0123456789".into(),
        ))
    }

    #[test]
    fn covers_recent_offsets_within_its_bound() {
        let mut ring = Ring::new(100, 35);
        assert_eq!(ring.range(100, 100).map(|v| v.len()), Some(0));
        assert!(ring.range(99, 100).is_none());
        for o in 100..105 {
            ring.push(rec(o));
        }
        // 3 records of 10 bytes fit: 102, 103, 104.
        assert!(ring.range(101, 105).is_none());
        let got: Vec<i64> = ring
            .range(102, 104)
            .unwrap()
            .iter()
            .map(|r| r.meta.offset)
            .collect();
        assert_eq!(got, vec![102, 103]);
        assert!(
            Ring::new(0, 0).range(0, 0).is_none(),
            "a zero-byte ring serves nothing"
        );
    }

    #[test]
    fn backfill_prepends_what_fits_and_only_when_contiguous() {
        let offsets = |ring: &Ring, from| -> Option<Vec<i64>> {
            Some(
                ring.range(from, i64::MAX)?
                    .iter()
                    .map(|r| r.meta.offset)
                    .collect(),
            )
        };
        let mut ring = Ring::new(100, 45);
        ring.push(rec(100));
        ring.push(rec(101));
        // Not ending where the ring begins: refused.
        assert_eq!(ring.backfill(90, 99, vec![rec(97), rec(98)]), 0);
        assert_eq!(ring.covered_from(), 100);
        // Everything from 97 (96 was compacted away) fits in full: covered from the scan's start.
        let mut ring2 = Ring::new(100, 1000);
        ring2.push(rec(100));
        assert_eq!(ring2.backfill(96, 100, vec![rec(97), rec(98), rec(99)]), 3);
        assert_eq!(ring2.covered_from(), 96);
        assert_eq!(offsets(&ring2, 96), Some(vec![97, 98, 99, 100]));
        // Only two of three fit in 45 bytes: the newest ones, covered from the oldest kept.
        assert_eq!(ring.backfill(97, 100, vec![rec(97), rec(98), rec(99)]), 2);
        assert_eq!(ring.covered_from(), 98);
        assert_eq!(offsets(&ring, 98), Some(vec![98, 99, 100, 101]));
        assert!(ring.range(97, 102).is_none());
    }
}
