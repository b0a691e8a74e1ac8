//! Which frame of a record goes out on a connection with delta subscriptions: the
//! delta, when the client holds its base, else the full frame.
//!
//! The client holds, per key, the last event frame it received (docs/protocol.md,
//! "Deltas"). The connection keeps the same account of what it sent, in the order it
//! sends: per topic with a delta subscription, the position of the last event of each
//! key. A delta whose base is that position applies; any other case (the first record
//! of a key on this connection, a record skipped, conflated, filtered out or not yet
//! replayed in between) goes out whole.

use std::hash::BuildHasher;
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

use super::ServerFrame;
use super::link::Outbound;

/// A key's hash -> (partition, offset) of the last event sent for it. Two keys with one
/// hash cost a full frame, never a wrong delta: a delta's base is one record of its own
/// key, so matching its position proves it was that key's last.
type LastSent = FxHashMap<u64, (i32, i64)>;

/// What one connection sent last per key, for the topics it takes deltas of.
pub(super) struct Sent {
    max_keys: usize,
    topics: Vec<(Arc<str>, LastSent)>,
}

impl Sent {
    /// Remembers at most `max_keys` keys per topic (then forgets them all).
    pub(super) fn new(max_keys: usize) -> Sent {
        Sent {
            max_keys,
            topics: Vec::new(),
        }
    }

    /// Starts keeping account of `topic`'s events.
    fn track(&mut self, topic: &str) {
        if !self.topics.iter().any(|(t, _)| &**t == topic) {
            self.topics.push((topic.into(), FxHashMap::default()));
        }
    }

    /// Decides, in sending order, which events of `batch` go as deltas: those that
    /// asked for one and whose base the client holds. Records what the client will hold.
    /// A topic's account starts at the first `subscribed` frame granting its deltas: the
    /// client starts holding frames there too, so it holds whatever is counted.
    pub(super) fn resolve(&mut self, batch: &mut [Outbound]) {
        for item in batch {
            let (record, delta) = match item {
                Outbound::Event { record, delta, .. } => (record, delta),
                Outbound::Frame(ServerFrame::Subscribed {
                    channel,
                    delta_topic: Some(_),
                    ..
                }) => {
                    self.track(channel.split(':').next().unwrap_or(channel));
                    continue;
                }
                _ => continue,
            };
            let wanted = std::mem::take(delta);
            let Some((_, last)) = self
                .topics
                .iter_mut()
                .find(|(t, _)| Arc::ptr_eq(t, &record.meta.topic) || *t == record.meta.topic)
            else {
                continue;
            };
            let Some(key) = record.key.as_ref().filter(|_| record.is_event()) else {
                continue;
            };
            let hash = FxBuildHasher.hash_one(key);
            let at = (record.meta.partition, record.meta.offset);
            *delta = wanted
                && record
                    .delta
                    .as_ref()
                    .is_some_and(|d| last.get(&hash) == Some(&(record.meta.partition, d.base)));
            if last.len() >= self.max_keys && !last.contains_key(&hash) {
                last.clear();
            }
            last.insert(hash, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::delta::Bases;
    use crate::codec::{EncodedRecord, RecordMeta};
    use bytes::Bytes;

    fn event(bases: &mut Bases, topic: &Arc<str>, offset: i64, key: &str) -> Outbound {
        let frame = format!(
            r#"{{"type":"event","topic":"{topic}","partition":0,"offset":{offset},"key":"{key}","data":{{"n":{offset},"text":"the same long text"}}}}"#
        );
        let meta = RecordMeta {
            topic: topic.clone(),
            partition: 0,
            offset,
        };
        let mut record = EncodedRecord::new(meta, Some(Bytes::from(key.to_string())), frame.into());
        bases.diff(&mut record);
        let record = Arc::new(record);
        bases.remember(&record);
        Outbound::Event {
            channel: topic.clone(),
            record,
            delta: true,
        }
    }

    fn subscribed(topic: &str) -> Outbound {
        Outbound::Frame(ServerFrame::Subscribed {
            id: None,
            channel: format!("{topic}:a").into(),
            live: vec![0],
            delta_topic: Some(0),
        })
    }

    fn deltas(batch: &[Outbound]) -> Vec<bool> {
        batch
            .iter()
            .map(|o| matches!(o, Outbound::Event { delta: true, .. }))
            .collect()
    }

    #[test]
    fn a_delta_goes_only_when_its_base_went_last_for_its_key() {
        let topic: Arc<str> = "t".into();
        let mut bases = Bases::new(0, 100);
        let mut sent = Sent::new(100);
        let mut untracked = vec![
            event(&mut bases, &topic, 1, "a"),
            event(&mut bases, &topic, 2, "a"),
        ];
        sent.resolve(&mut untracked);
        assert_eq!(
            deltas(&untracked),
            [false, false],
            "no delta subscription on t yet"
        );
        let mut batch = vec![
            subscribed("t"),
            event(&mut bases, &topic, 3, "a"), // first of "a" on this account: whole
            event(&mut bases, &topic, 4, "a"),
            event(&mut bases, &topic, 5, "b"),
        ];
        let skipped = event(&mut bases, &topic, 6, "a"); // never sent: conflated, say
        drop(skipped);
        batch.push(event(&mut bases, &topic, 7, "a")); // its base (6) never went
        batch.push(event(&mut bases, &topic, 8, "b"));
        batch.push(event(&mut bases, &topic, 9, "a"));
        sent.resolve(&mut batch);
        assert_eq!(
            deltas(&batch),
            [false, false, true, false, false, true, true]
        );
    }

    #[test]
    fn past_its_bound_it_forgets_and_sends_whole() {
        let topic: Arc<str> = "t".into();
        let mut bases = Bases::new(0, 100);
        let mut sent = Sent::new(2);
        let mut batch = vec![
            subscribed("t"),
            event(&mut bases, &topic, 1, "a"),
            event(&mut bases, &topic, 2, "b"),
            event(&mut bases, &topic, 3, "c"), // a third key: a and b forgotten
            event(&mut bases, &topic, 4, "a"),
        ];
        sent.resolve(&mut batch);
        assert_eq!(deltas(&batch), [false, false, false, false, false]);
    }
}
