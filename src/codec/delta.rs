//! Delta frames: an event frame sent as the edits that turn the frame of the previous
//! record of its key into it.
//!
//! A delta frame is a JSON array: `[topic_id, partition, base_offset, edit...]`. The
//! base is the event frame of record (`topic_id`'s topic, `partition`, `base_offset`),
//! which the client received last for that key on this connection. Each edit is
//! `copy, [remove,] insert`: copy `copy` characters of the base, skip `remove` of them
//! (when left out: as many as `insert` has), write `insert`; after the last edit the rest
//! of the base is copied. The result is the event frame's text, byte for byte, so a
//! client parses it as it parses any event. The diff is taken on the whole frame, so
//! the envelope (offset, timestamp) and the value change alike, and a raw value's
//! base64 text is diffed as text.
//!
//! Positions count characters; frames holding any non-ASCII character (or a carriage
//! return, which SSE turns into a line feed) are never sent as deltas, so a character
//! is a byte in Rust and a UTF-16 unit in JavaScript alike.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use similar::{Algorithm, DiffOp};

use super::{EncodedRecord, Frame};

/// Unchanged runs this short between two edits are folded into one edit: writing them
/// again costs less than the numbers of a second edit.
const MERGE_GAP: usize = 3;

/// A diff that takes longer than this settles for a coarser (still exact) result.
const DIFF_DEADLINE: Duration = Duration::from_millis(2);

/// A record's frame as a delta from the previous record of its key.
#[derive(Debug)]
pub struct Delta {
    /// The offset of the record it applies to (same topic, partition and key).
    pub base: i64,
    /// The delta frame (JSON text), shared by every recipient.
    pub frame: Frame,
    deflated: OnceLock<Option<Bytes>>,
}

impl Delta {
    /// The delta frame compressed for permessage-deflate, once and shared (see
    /// [`EncodedRecord::deflated`]).
    pub fn deflated(&self, min_bytes: usize) -> Option<&Bytes> {
        super::deflate::once(&self.deflated, &self.frame, min_bytes)
    }
}

/// Encodes `new` as a delta frame against `base`; `None` when either is not ASCII (or
/// holds a carriage return) or the delta would not be shorter than `new` itself.
pub fn encode(
    topic_id: u32,
    partition: i32,
    base_offset: i64,
    base: &str,
    new: &str,
) -> Option<String> {
    // A carriage return would not survive SSE, whose clients read it as a line end.
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii() && b != b'\r');
    if !plain(base) || !plain(new) {
        return None;
    }
    let deadline = Instant::now() + DIFF_DEADLINE;
    let ops = similar::capture_diff_slices_deadline(
        Algorithm::Myers,
        base.as_bytes(),
        new.as_bytes(),
        Some(deadline),
    );
    // (old start, old end, new start, new end) of each change, close ones merged. Changes
    // are read off the gaps between equal runs: those indexes are exact, where similar's
    // inserts and deletes may name a position in the other sequence loosely.
    let mut changes: Vec<(usize, usize, usize, usize)> = Vec::new();
    let (mut old_at, mut new_at) = (0, 0);
    let equals = ops.iter().filter_map(|op| match *op {
        DiffOp::Equal {
            old_index,
            new_index,
            len,
        } => Some((old_index, new_index, len)),
        _ => None,
    });
    for (old_index, new_index, len) in equals.chain([(base.len(), new.len(), 0)]) {
        if old_index > old_at || new_index > new_at {
            match changes.last_mut() {
                Some(last) if old_at - last.1 <= MERGE_GAP => {
                    last.1 = old_index;
                    last.3 = new_index;
                }
                _ => changes.push((old_at, old_index, new_at, new_index)),
            }
        }
        (old_at, new_at) = (old_index + len, new_index + len);
    }
    let mut out = String::with_capacity(new.len() / 2);
    // Writing to a String cannot fail.
    let _ = write!(out, "[{topic_id},{partition},{base_offset}");
    let mut at = 0;
    for (old_start, old_end, new_start, new_end) in changes {
        let _ = write!(out, ",{}", old_start - at);
        let insert = &new[new_start..new_end];
        if old_end - old_start != insert.len() {
            let _ = write!(out, ",{}", old_end - old_start);
        }
        out.push(',');
        push_json_string(&mut out, insert);
        at = old_end;
        if out.len() >= new.len() {
            return None;
        }
    }
    out.push(']');
    (out.len() < new.len()).then_some(out)
}

/// Appends `s` (ASCII) as a JSON string.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The previous event of each key of one topic, as ingest saw them: what the next
/// record of the key is diffed against. Bounded: past `max_keys` the older half is
/// forgotten (its keys' next records go whole).
#[derive(Debug)]
pub struct Bases {
    topic_id: u32,
    max_keys: usize,
    current: HashMap<Bytes, Arc<EncodedRecord>>,
    older: HashMap<Bytes, Arc<EncodedRecord>>,
}

impl Bases {
    /// An empty set of bases for the topic numbered `topic_id`, keeping at most `max_keys` keys.
    pub fn new(topic_id: u32, max_keys: usize) -> Bases {
        Bases {
            topic_id,
            max_keys: max_keys.max(2),
            current: HashMap::new(),
            older: HashMap::new(),
        }
    }

    /// Gives `record` its delta from the previous event of its key, when there is one in
    /// the same partition and the delta is shorter than the frame.
    pub fn diff(&self, record: &mut EncodedRecord) {
        let Some(key) = &record.key else { return };
        let Some(base) = self.current.get(key).or_else(|| self.older.get(key)) else {
            return;
        };
        if base.meta.partition != record.meta.partition
            || base.meta.offset >= record.meta.offset
            || !base.is_event()
            || !record.is_event()
        {
            return;
        }
        record.delta = encode(
            self.topic_id,
            record.meta.partition,
            base.meta.offset,
            &base.frame,
            &record.frame,
        )
        .map(|frame| Delta {
            base: base.meta.offset,
            frame: frame.into(),
            deflated: OnceLock::new(),
        });
    }

    /// Makes `record` the base of its key's next record.
    pub fn remember(&mut self, record: &Arc<EncodedRecord>) {
        let Some(key) = &record.key else { return };
        if self.current.len() >= self.max_keys / 2 && !self.current.contains_key(key) {
            self.older = std::mem::take(&mut self.current);
        }
        self.older.remove(key);
        self.current.insert(key.clone(), record.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;
    use proptest::prelude::*;

    fn roundtrip(base: &str, new: &str) -> Option<String> {
        let delta = encode(3, 1, 40, base, new)?;
        let applied =
            kgate_client::delta::apply(base, &delta).unwrap_or_else(|e| panic!("{delta}: {e}"));
        assert_eq!(applied.1, new, "delta {delta}");
        assert_eq!(applied.0, (3, 1, 40));
        Some(delta)
    }

    #[test]
    fn a_ticker_update_is_its_changed_digits() {
        let base = r#"{"type":"event","topic":"prices","partition":1,"offset":40,"timestamp":1764600000000,"key":"AAPL","data":{"symbol":"AAPL","price":187.23,"bid":187.19,"ts":1764600000000}}"#;
        let new = r#"{"type":"event","topic":"prices","partition":1,"offset":41,"timestamp":1764600000050,"key":"AAPL","data":{"symbol":"AAPL","price":187.25,"bid":187.21,"ts":1764600000050}}"#;
        let delta = roundtrip(base, new).expect("a delta");
        assert!(delta.len() < new.len() / 3, "{delta}");
        // Quotes and backslashes in what changed survive.
        roundtrip(r#"{"a":"x\"y","b":1}"#, r#"{"a":"x\\\"z\"","b":1}"#);
    }

    #[test]
    fn a_reordered_value_with_line_breaks_roundtrips() {
        let base = "{\"type\":\"event\",\"topic\":\"delta-http-1-0\",\"partition\":0,\"offset\":40,\"timestamp\":1796175455790,\"key\":\"MSFT\",\"data\":{\n  \"symbol\": \"MSFT\",\n  \"pretty\": true\n}}";
        let new = r#"{"type":"event","topic":"delta-http-1-0","partition":0,"offset":43,"timestamp":1796175455794,"key":"MSFT","data":{"currency":"USD","price":105.375,"size":4300,"symbol":"MSFT","venue":"XNAS"}}"#;
        roundtrip(base, new);
    }

    #[test]
    fn non_ascii_and_unrelated_frames_go_whole() {
        assert_eq!(encode(0, 0, 0, r#"{"a":"é"}"#, r#"{"a":"è"}"#), None);
        assert_eq!(encode(0, 0, 0, "abcdefgh", "12345678"), None);
    }

    fn record(partition: i32, offset: i64, key: &str, frame: &str) -> EncodedRecord {
        let meta = RecordMeta {
            topic: "t".into(),
            partition,
            offset,
        };
        EncodedRecord::new(
            meta,
            Some(Bytes::copy_from_slice(key.as_bytes())),
            frame.to_string().into(),
        )
    }

    #[test]
    fn bases_diff_only_within_a_partition_and_forget_past_their_bound() {
        let frame = |o: i64, v: i64| {
            format!(
                r#"{{"type":"event","topic":"t","partition":0,"offset":{o},"data":{{"value":{v},"name":"a long enough value"}}}}"#
            )
        };
        let mut bases = Bases::new(7, 4);
        let first = Arc::new(record(0, 1, "a", &frame(1, 100)));
        bases.remember(&first);
        let mut next = record(0, 2, "a", &frame(2, 101));
        bases.diff(&mut next);
        let delta = next.delta.as_ref().expect("a delta");
        assert_eq!(delta.base, 1);
        assert!(delta.frame.starts_with("[7,0,1,"), "{}", &*delta.frame);
        let mut other_partition = record(1, 3, "a", &frame(3, 101));
        bases.diff(&mut other_partition);
        assert!(other_partition.delta.is_none());
        let mut skipped = record(0, 4, "a", r#"{"type":"skipped","offset":4}"#);
        bases.diff(&mut skipped);
        assert!(skipped.delta.is_none(), "only events are diffed");
        // Three more keys push "a" out of the two generations kept for 4 keys.
        for key in ["b", "c", "d", "e"] {
            bases.remember(&Arc::new(record(0, 5, key, &frame(5, 1))));
        }
        let mut late = record(0, 9, "a", &frame(9, 102));
        bases.diff(&mut late);
        assert!(late.delta.is_none(), "forgotten");
    }

    proptest! {
        #[test]
        fn any_ascii_edit_roundtrips(base in "[ -~]{0,80}", new in "[ -~\n\t]{0,80}") {
            roundtrip(&base, &new);
        }

        #[test]
        fn small_edits_of_a_frame_roundtrip(
            digits in proptest::collection::vec((0usize..120, "[0-9\"\\\\]{0,4}"), 0..6)
        ) {
            let base = r#"{"type":"event","topic":"prices","partition":0,"offset":1234,"data":{"price":187.23,"volume":1200,"ts":1764600000000}}"#;
            let mut new = base.to_string();
            for (at, text) in digits {
                let at = at.min(new.len());
                new.insert_str(at, &text);
            }
            roundtrip(base, &new);
        }
    }
}
