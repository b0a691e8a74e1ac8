//! One subscription's position per partition and the replay-to-live hand-off.
//!
//! A partition starts either live (its start is at or past the router's live
//! position) or catching up. While catching up, live records are buffered
//! (bounded: the oldest are dropped and re-read from Kafka instead); the replay
//! delivers up to the first buffered offset, then the buffer is flushed and the
//! partition is live. Offsets below a partition's position are never sent twice.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::EncodedRecord;
pub use crate::kafka::replay::{ReplayEvent, Start};
use crate::router::outbox::SubscriptionId;
use crate::router::{Channel, HeaderFilter};

/// What a subscription asked for besides its channel and start; sessions keep it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Options {
    /// At most this many updates per second per key (latest value wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<f64>,
    /// Only records whose headers match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Arc<HeaderFilter>>,
    /// The MQTT QoS granted (0 or 1), kept so a resumed MQTT session delivers as
    /// subscribed; the WebSocket protocol leaves it 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub qos: u8,
    /// Send a record of a key as a delta from the key's previous record, when the client holds it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
}

fn is_zero(qos: &u8) -> bool {
    *qos == 0
}

/// A partition's delivery state.
#[derive(Debug)]
enum Cursor {
    Live {
        next: i64,
    },
    CatchingUp {
        next: Option<i64>,
        live_from: i64,
        buffer: VecDeque<Arc<EncodedRecord>>,
    },
}

/// What the connection does with a partition's replay after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStep {
    /// Keep reading.
    Continue,
    /// The partition is live: stop the replay.
    Live,
    /// The replay ended short of the hand-off point: start another from this offset.
    Restart(i64),
}

/// One subscription of one connection.
#[derive(Debug)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub channel: Channel,
    /// Only records whose headers match (replays apply it; the router filters live records).
    pub filter: Option<Arc<HeaderFilter>>,
    /// The id of the subscribe request, echoed in the `live` marker.
    pub request_id: Option<serde_json::Value>,
    cursors: Vec<Cursor>,
    buffer_cap: usize,
    announced_live: bool,
}

impl Subscription {
    /// Builds the cursors from the requested starts and the router's live positions.
    /// Returns the subscription and the partitions that need a replay, with their start.
    pub fn new(
        id: SubscriptionId,
        channel: Channel,
        filter: Option<Arc<HeaderFilter>>,
        request_id: Option<serde_json::Value>,
        starts: &[Start],
        live: &[i64],
        buffer_cap: usize,
    ) -> (Subscription, Vec<(i32, Start)>) {
        let mut replays = Vec::new();
        let cursors = live
            .iter()
            .enumerate()
            .map(|(p, &live_from)| {
                let start = starts.get(p).copied().unwrap_or(Start::Latest);
                match start {
                    Start::Latest => Cursor::Live { next: live_from },
                    Start::Offset(o) if o >= live_from => Cursor::Live { next: o },
                    Start::Offset(o) => {
                        replays.push((p as i32, start));
                        Cursor::CatchingUp {
                            next: Some(o),
                            live_from,
                            buffer: VecDeque::new(),
                        }
                    }
                    Start::Earliest => {
                        replays.push((p as i32, start));
                        Cursor::CatchingUp {
                            next: None,
                            live_from,
                            buffer: VecDeque::new(),
                        }
                    }
                }
            })
            .collect();
        let sub = Subscription {
            id,
            channel,
            filter,
            request_id,
            cursors,
            buffer_cap,
            announced_live: false,
        };
        (sub, replays)
    }

    /// Handles a live record from the router; pushes what must be sent to `out`.
    pub fn on_live(&mut self, record: Arc<EncodedRecord>, out: &mut Vec<Arc<EncodedRecord>>) {
        let cap = self.buffer_cap;
        let partition = record.meta.partition.max(0) as usize;
        if partition >= self.cursors.len() {
            // The topic gained partitions after this subscription began: all of their
            // records are newer than it.
            self.cursors
                .resize_with(partition + 1, || Cursor::Live { next: 0 });
        }
        let Some(cursor) = self.cursors.get_mut(partition) else {
            return;
        };
        match cursor {
            Cursor::Live { next } => {
                if record.meta.offset >= *next {
                    *next = record.meta.offset + 1;
                    out.push(record);
                }
            }
            Cursor::CatchingUp { buffer, .. } => {
                buffer.push_back(record);
                if buffer.len() > cap {
                    // The replay reads further instead; memory stays bounded.
                    buffer.pop_front();
                }
            }
        }
    }

    /// Handles a replay event for `partition`.
    pub fn on_replay(
        &mut self,
        partition: i32,
        event: ReplayEvent,
        out: &mut Vec<Arc<EncodedRecord>>,
    ) -> ReplayStep {
        let Some(cursor) = self.cursors.get_mut(partition as usize) else {
            return ReplayStep::Live;
        };
        let Cursor::CatchingUp { next, .. } = cursor else {
            return ReplayStep::Live;
        };
        match event {
            ReplayEvent::Started { offset }
            | ReplayEvent::Gap {
                earliest: offset, ..
            } => {
                *next = Some(next.map_or(offset, |n| n.max(offset)));
            }
            ReplayEvent::Records(records) => {
                for record in records {
                    let Cursor::CatchingUp { next, .. } = cursor else {
                        // Handed off: the rest is on the live path.
                        return ReplayStep::Live;
                    };
                    if next.is_none_or(|n| record.meta.offset >= n) {
                        *next = Some(record.meta.offset + 1);
                        if self.channel.matches(record.key.as_deref())
                            && self.filter.as_ref().is_none_or(|f| f.matches(&record))
                        {
                            out.push(record);
                        }
                    }
                    if Self::hand_off(cursor, out) {
                        return ReplayStep::Live;
                    }
                }
                return ReplayStep::Continue;
            }
            ReplayEvent::End { position } => {
                // Offsets up to the end may be holes (compaction, transaction markers).
                let reached = next.map_or(position, |n| n.max(position));
                *next = Some(reached);
                if Self::hand_off(cursor, out) {
                    return ReplayStep::Live;
                }
                // A memory replay ends where the ring ended; live records were dropped past it.
                return ReplayStep::Restart(reached);
            }
            ReplayEvent::Failed(_) => return ReplayStep::Continue,
        }
        if Self::hand_off(cursor, out) {
            ReplayStep::Live
        } else {
            ReplayStep::Continue
        }
    }

    /// Where a live partition's next record is, for a subscription that reads the ring
    /// itself; `None` while the partition catches up. Partitions the topic gained since
    /// the subscription began (up to `partitions`) are live from their first record.
    pub fn live_next(&mut self, partition: i32, partitions: i32) -> Option<i64> {
        if partitions as usize > self.cursors.len() {
            self.cursors
                .resize_with(partitions as usize, || Cursor::Live { next: 0 });
        }
        match self.cursors.get(partition as usize)? {
            Cursor::Live { next } => Some(*next),
            Cursor::CatchingUp { .. } => None,
        }
    }

    /// Moves a live partition past a record the subscription does not want (its header
    /// filter refused it), so reads of the ring go on after it.
    pub fn pass_live(&mut self, partition: i32, offset: i64) {
        if let Some(Cursor::Live { next }) = self.cursors.get_mut(partition as usize) {
            *next = (*next).max(offset + 1);
        }
    }

    /// The outbox dropped live records of `partition` up to `last_dropped`: leave the live
    /// path and re-read from where delivery stopped. Returns the replay start if one must begin.
    pub fn fall_behind(&mut self, partition: i32, last_dropped: i64) -> Option<Start> {
        let cursor = self.cursors.get_mut(partition as usize)?;
        match cursor {
            Cursor::Live { next } => {
                let from = *next;
                *cursor = Cursor::CatchingUp {
                    next: Some(from),
                    live_from: last_dropped + 1,
                    buffer: VecDeque::new(),
                };
                Some(Start::Offset(from))
            }
            Cursor::CatchingUp {
                live_from, buffer, ..
            } => {
                // Buffered records precede the dropped ones; the running replay re-reads them all.
                buffer.clear();
                *live_from = (*live_from).max(last_dropped + 1);
                None
            }
        }
    }

    /// Goes live if the replay reached the first buffered offset (or the live position).
    fn hand_off(cursor: &mut Cursor, out: &mut Vec<Arc<EncodedRecord>>) -> bool {
        let Cursor::CatchingUp {
            next: Some(next),
            live_from,
            buffer,
        } = cursor
        else {
            return false;
        };
        let target = buffer.front().map_or(*live_from, |r| r.meta.offset);
        if *next < target {
            return false;
        }
        let mut next = *next;
        for record in buffer.drain(..) {
            if record.meta.offset >= next {
                next = record.meta.offset + 1;
                out.push(record);
            }
        }
        *cursor = Cursor::Live {
            next: next.max(*live_from),
        };
        true
    }

    /// The offset after the last record sent or skipped on `partition`; `None` while unknown
    /// (an `earliest` replay that has not started). Acks are capped at it.
    pub fn delivered_next(&self, partition: i32) -> Option<i64> {
        match self.cursors.get(partition as usize)? {
            Cursor::Live { next } => Some(*next),
            Cursor::CatchingUp { next, .. } => *next,
        }
    }

    /// While `partition` catches up: the offset where its hand-off to live will happen.
    pub fn catch_up_target(&self, partition: i32) -> Option<i64> {
        match self.cursors.get(partition as usize)? {
            Cursor::Live { .. } => None,
            Cursor::CatchingUp {
                live_from, buffer, ..
            } => Some(buffer.front().map_or(*live_from, |r| r.meta.offset)),
        }
    }

    /// True when every partition is live.
    pub fn is_live(&self) -> bool {
        self.cursors
            .iter()
            .all(|c| matches!(c, Cursor::Live { .. }))
    }

    /// True the first time the subscription is found live (the `live` marker is due).
    pub fn take_live_marker(&mut self) -> bool {
        if !self.announced_live && self.is_live() {
            self.announced_live = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;
    use bytes::Bytes;

    fn rec(partition: i32, offset: i64, key: &str) -> Arc<EncodedRecord> {
        Arc::new(EncodedRecord::new(
            RecordMeta {
                topic: "t".into(),
                partition,
                offset,
            },
            Some(Bytes::copy_from_slice(key.as_bytes())),
            "".into(),
        ))
    }

    fn offsets(out: &[Arc<EncodedRecord>]) -> Vec<i64> {
        out.iter().map(|r| r.meta.offset).collect()
    }

    #[test]
    fn partitions_added_later_are_delivered_from_their_first_record() {
        let (mut s, _) = sub(&[Start::Latest], &[7], 10, "t");
        let mut out = Vec::new();
        s.on_live(rec(2, 0, "a"), &mut out);
        s.on_live(rec(0, 7, "a"), &mut out);
        s.on_live(rec(2, 0, "a"), &mut out);
        s.on_live(rec(1, 0, "a"), &mut out);
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.meta.partition, r.meta.offset))
            .collect();
        assert_eq!(
            got,
            [(2, 0), (0, 7), (1, 0)],
            "each once, the repeat dropped"
        );
    }

    fn sub(
        starts: &[Start],
        live: &[i64],
        cap: usize,
        channel: &str,
    ) -> (Subscription, Vec<(i32, Start)>) {
        Subscription::new(
            1,
            Channel::parse(channel, 100).unwrap(),
            None,
            None,
            starts,
            live,
            cap,
        )
    }

    #[test]
    fn latest_is_live_at_once_and_drops_older_offsets() {
        let (mut s, replays) = sub(&[Start::Latest], &[5], 10, "t");
        assert!(replays.is_empty() && s.is_live() && s.take_live_marker());
        let mut out = Vec::new();
        s.on_live(rec(0, 4, "k"), &mut out);
        s.on_live(rec(0, 5, "k"), &mut out);
        s.on_live(rec(0, 5, "k"), &mut out);
        assert_eq!(offsets(&out), vec![5]);
    }

    #[test]
    fn replay_hands_off_to_buffer_without_gap_or_duplicate() {
        let (mut s, replays) = sub(&[Start::Offset(2)], &[6], 10, "t");
        assert_eq!(replays, vec![(0, Start::Offset(2))]);
        let mut out = Vec::new();
        // Live records arrive while the replay runs.
        for o in 6..9 {
            s.on_live(rec(0, o, "k"), &mut out);
        }
        assert!(out.is_empty());
        for o in 2..6 {
            let step = s.on_replay(0, ReplayEvent::Records(vec![rec(0, o, "k")]), &mut out);
            assert_eq!(step == ReplayStep::Live, o == 5);
        }
        assert!(s.is_live());
        s.on_live(rec(0, 9, "k"), &mut out);
        assert_eq!(offsets(&out), (2..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_across_the_hand_off_delivers_each_offset_once() {
        let (mut s, _) = sub(&[Start::Offset(2)], &[6], 10, "t");
        let mut out = Vec::new();
        for o in 6..9 {
            s.on_live(rec(0, o, "k"), &mut out);
        }
        // One batch from before the hand-off point to past the buffered live records.
        let batch = (2..10).map(|o| rec(0, o, "k")).collect();
        assert_eq!(
            s.on_replay(0, ReplayEvent::Records(batch), &mut out),
            ReplayStep::Live
        );
        s.on_live(rec(0, 9, "k"), &mut out);
        s.on_live(rec(0, 10, "k"), &mut out);
        assert_eq!(offsets(&out), (2..11).collect::<Vec<_>>());
    }

    #[test]
    fn full_buffer_drops_oldest_and_replay_reads_further() {
        let (mut s, _) = sub(&[Start::Offset(0)], &[3], 2, "t");
        let mut out = Vec::new();
        for o in 3..8 {
            s.on_live(rec(0, o, "k"), &mut out);
        }
        // Buffer keeps 6 and 7; the replay must deliver 0..=5 itself.
        for o in 0..5 {
            let step = s.on_replay(0, ReplayEvent::Records(vec![rec(0, o, "k")]), &mut out);
            assert_eq!(step, ReplayStep::Continue);
        }
        let step = s.on_replay(0, ReplayEvent::Records(vec![rec(0, 5, "k")]), &mut out);
        assert_eq!(step, ReplayStep::Live);
        assert_eq!(offsets(&out), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn earliest_with_key_filter_and_end_of_partition() {
        let (mut s, replays) = sub(&[Start::Earliest], &[4], 10, "t:a");
        assert_eq!(replays, vec![(0, Start::Earliest)]);
        let mut out = Vec::new();
        let step = s.on_replay(0, ReplayEvent::Started { offset: 1 }, &mut out);
        assert_eq!(step, ReplayStep::Continue);
        for (o, k) in [(1, "a"), (2, "b")] {
            s.on_replay(0, ReplayEvent::Records(vec![rec(0, o, k)]), &mut out);
        }
        // Offset 3 is a transaction marker: the reader ends at position 4.
        let step = s.on_replay(0, ReplayEvent::End { position: 4 }, &mut out);
        assert_eq!(step, ReplayStep::Live);
        assert_eq!(offsets(&out), vec![1]);
        s.on_live(rec(0, 4, "a"), &mut out);
        assert_eq!(offsets(&out), vec![1, 4]);
    }

    #[test]
    fn gap_moves_the_start_forward() {
        let (mut s, _) = sub(&[Start::Offset(0)], &[20], 10, "t");
        let mut out = Vec::new();
        s.on_replay(
            0,
            ReplayEvent::Gap {
                requested: 0,
                earliest: 15,
            },
            &mut out,
        );
        for o in 15..20 {
            s.on_replay(0, ReplayEvent::Records(vec![rec(0, o, "k")]), &mut out);
        }
        assert!(s.is_live());
        assert_eq!(offsets(&out), (15..20).collect::<Vec<_>>());
    }

    #[test]
    fn falling_behind_rereads_the_dropped_records_then_goes_live() {
        let (mut s, _) = sub(&[Start::Latest], &[0], 10, "t");
        let mut out = Vec::new();
        s.on_live(rec(0, 0, "k"), &mut out);
        // The outbox dropped 1..=3.
        assert_eq!(s.fall_behind(0, 3), Some(Start::Offset(1)));
        assert!(!s.is_live());
        s.on_live(rec(0, 4, "k"), &mut out); // buffered
        // More drops while catching up: the buffer (older) is re-read too.
        assert_eq!(s.fall_behind(0, 5), None);
        s.on_live(rec(0, 6, "k"), &mut out);
        // A memory replay that ends at 3 must be continued.
        for o in 1..3 {
            s.on_replay(0, ReplayEvent::Records(vec![rec(0, o, "k")]), &mut out);
        }
        assert_eq!(
            s.on_replay(0, ReplayEvent::End { position: 3 }, &mut out),
            ReplayStep::Restart(3)
        );
        for o in 3..6 {
            s.on_replay(0, ReplayEvent::Records(vec![rec(0, o, "k")]), &mut out);
        }
        assert!(s.is_live());
        assert_eq!(offsets(&out), (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn future_offset_starts_live_and_waits_for_it() {
        let (mut s, replays) = sub(&[Start::Offset(10), Start::Latest], &[5, 7], 10, "t");
        assert!(replays.is_empty());
        let mut out = Vec::new();
        s.on_live(rec(0, 9, "k"), &mut out);
        s.on_live(rec(0, 10, "k"), &mut out);
        s.on_live(rec(1, 7, "k"), &mut out);
        assert_eq!(offsets(&out), vec![10, 7]);
    }
}
