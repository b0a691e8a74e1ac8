//! The bounded queue between the router and one connection.
//!
//! Bounded by messages and bytes. When it is full, nothing more is queued until
//! the connection drains it ("sticky full", so per-partition order is kept);
//! what could not be queued is reported per subscription and partition, and the
//! connection applies the subscription's slow-consumer policy.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec::EncodedRecord;
use crate::config::SlowConsumerPolicy;
use crate::stats::stats;

/// Identifies one subscription across the gateway.
pub type SubscriptionId = u64;

/// One record routed to one subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subscription: SubscriptionId,
    pub record: Arc<EncodedRecord>,
}

/// What happened to a pushed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Replaced an older queued record with the same key (conflation).
    Conflated,
    /// Not queued: reported to the connection, which re-reads it from the ring or Kafka.
    Dropped,
}

/// Offsets that could not be queued for one subscription's partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DroppedRange {
    pub first: i64,
    pub last: i64,
}

/// What a drain found besides the queued deliveries.
#[derive(Debug, Default)]
pub struct Drained {
    /// Per (subscription, partition): the offsets that were dropped.
    pub dropped: Vec<((SubscriptionId, i32), DroppedRange)>,
    /// When the first `Disconnect` record among them was refused.
    pub refused_since: Option<Instant>,
}

/// A bounded (messages and bytes) queue the router fills and the connection drains.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
    /// Signalled when a `Disconnect` subscription's record is first refused since the last drain.
    refused: Notify,
    max_messages: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Queue {
    /// `None` marks a record superseded by a newer one of the same key (conflation).
    items: VecDeque<Option<Delivery>>,
    /// Records queued (superseded ones excluded) and their bytes.
    count: usize,
    bytes: usize,
    /// Sequence number of `items[0]`, so conflation can find a queued record by key.
    head_seq: u64,
    by_key: HashMap<(SubscriptionId, Bytes), u64>,
    /// Set when a push found the outbox full; cleared by the drain.
    full: bool,
    /// When a `Disconnect` subscription's record was first refused since the last drain.
    refused_since: Option<Instant>,
    dropped: HashMap<(SubscriptionId, i32), DroppedRange>,
}

impl Outbox {
    /// An empty outbox with the given limits.
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            refused: Notify::new(),
            max_messages,
            max_bytes,
        }
    }

    /// Since when records of a `Disconnect` subscription have been refused (none since the last drain: `None`).
    pub fn refused_since(&self) -> Option<Instant> {
        self.queue.lock().refused_since
    }

    /// Resolves when `refused_since` may have changed from `None`.
    pub async fn refused(&self) {
        self.refused.notified().await
    }

    /// Queues a delivery, conflating by key for `Conflate` subscriptions.
    pub fn push(&self, delivery: Delivery, policy: SlowConsumerPolicy) -> Push {
        let size = delivery.record.frame.len();
        let mut q = self.queue.lock();
        // Once full, nothing is queued (not even by conflation) until the drain: order holds.
        if policy == SlowConsumerPolicy::Conflate && !q.full {
            if let Some(key) = &delivery.record.key {
                let slot = q.by_key.get(&(delivery.subscription, key.clone())).copied();
                if let Some(seq) = slot.filter(|s| *s >= q.head_seq) {
                    let index = (seq - q.head_seq) as usize;
                    // The new value goes to the back (per-partition order holds); the old one is dropped.
                    if let Some(old) = q.items.get_mut(index).and_then(Option::take) {
                        let old_size = old.record.frame.len();
                        let seq = q.head_seq + q.items.len() as u64;
                        q.by_key.insert((delivery.subscription, key.clone()), seq);
                        q.items.push_back(Some(delivery));
                        q.bytes = q.bytes + size - old_size;
                        stats().slow_consumer_conflated.add(1);
                        stats().outbox_bytes.add(size as u64);
                        stats().outbox_bytes.sub(old_size as u64);
                        return Push::Conflated;
                    }
                }
            }
        }
        q.full = q.full
            || q.count >= self.max_messages
            || (q.bytes + size > self.max_bytes && q.count > 0);
        if q.full {
            let first_drop = q.dropped.is_empty();
            if policy == SlowConsumerPolicy::Disconnect && q.refused_since.is_none() {
                q.refused_since = Some(Instant::now());
                self.refused.notify_one();
            }
            let offset = delivery.record.meta.offset;
            q.dropped
                .entry((delivery.subscription, delivery.record.meta.partition))
                .and_modify(|r| r.last = offset)
                .or_insert(DroppedRange {
                    first: offset,
                    last: offset,
                });
            drop(q);
            if first_drop {
                self.notify.notify_one();
            }
            return Push::Dropped;
        }
        let was_empty = q.count == 0;
        if policy == SlowConsumerPolicy::Conflate {
            if let Some(key) = &delivery.record.key {
                let seq = q.head_seq + q.items.len() as u64;
                q.by_key.insert((delivery.subscription, key.clone()), seq);
            }
        }
        q.bytes += size;
        q.count += 1;
        q.items.push_back(Some(delivery));
        let (len, bytes) = (q.count as u64, q.bytes as u64);
        drop(q);
        let s = stats();
        s.outbox_messages.add(1);
        s.outbox_bytes.add(size as u64);
        s.outbox_max_messages_seen.max(len);
        s.outbox_max_bytes_seen.max(bytes);
        // Only the empty-to-non-empty edge needs a wake-up: the reader drains everything.
        if was_empty {
            self.notify.notify_one();
        }
        Push::Queued
    }

    /// Moves every queued delivery to the end of `into` and reports what was dropped.
    pub fn drain_into(&self, into: &mut VecDeque<Delivery>) -> Drained {
        let mut q = self.queue.lock();
        let (n, bytes) = (q.count, q.bytes);
        q.head_seq += q.items.len() as u64;
        into.extend(q.items.drain(..).flatten());
        q.count = 0;
        q.bytes = 0;
        q.by_key.clear();
        q.full = false;
        let refused_since = q.refused_since.take();
        let dropped = q.dropped.drain().collect();
        drop(q);
        stats().outbox_messages.sub(n as u64);
        stats().outbox_bytes.sub(bytes as u64);
        Drained {
            dropped,
            refused_since,
        }
    }

    /// Waits until something was queued or dropped since the last drain.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Forgets what is queued (the connection is closing).
    pub fn clear(&self) {
        let mut sink = VecDeque::new();
        self.drain_into(&mut sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;

    fn delivery(offset: i64, size: usize, key: &str) -> Delivery {
        Delivery {
            subscription: 1,
            record: Arc::new(EncodedRecord::new(
                RecordMeta {
                    topic: "t".into(),
                    partition: 0,
                    offset,
                },
                Some(Bytes::copy_from_slice(key.as_bytes())),
                "x".repeat(size).into(),
            )),
        }
    }

    #[test]
    fn bounded_by_messages_and_bytes_and_sticky_when_full() {
        let outbox = Outbox::new(3, 1000);
        for i in 0..3 {
            assert_eq!(
                outbox.push(delivery(i, 10, "k"), SlowConsumerPolicy::CatchUp),
                Push::Queued
            );
        }
        assert_eq!(
            outbox.push(delivery(3, 10, "k"), SlowConsumerPolicy::CatchUp),
            Push::Dropped
        );
        assert_eq!(
            outbox.push(delivery(4, 10, "k"), SlowConsumerPolicy::CatchUp),
            Push::Dropped
        );
        let mut buf = VecDeque::new();
        let drained = outbox.drain_into(&mut buf);
        assert_eq!(buf.len(), 3);
        assert_eq!(
            drained.dropped,
            vec![((1, 0), DroppedRange { first: 3, last: 4 })]
        );

        let outbox = Outbox::new(100, 25);
        assert_eq!(
            outbox.push(delivery(0, 20, "k"), SlowConsumerPolicy::CatchUp),
            Push::Queued
        );
        assert_eq!(
            outbox.push(delivery(1, 20, "k"), SlowConsumerPolicy::CatchUp),
            Push::Dropped
        );
        // Sticky: a small record that would fit is refused too, so order per partition holds.
        assert_eq!(
            outbox.push(delivery(2, 1, "k"), SlowConsumerPolicy::CatchUp),
            Push::Dropped
        );
        // A single record larger than the byte limit still passes when the queue is empty.
        let outbox = Outbox::new(100, 5);
        assert_eq!(
            outbox.push(delivery(0, 20, "k"), SlowConsumerPolicy::CatchUp),
            Push::Queued
        );
    }

    #[test]
    fn conflation_keeps_the_latest_value_per_key_in_place() {
        let outbox = Outbox::new(2, 1000);
        let c = SlowConsumerPolicy::Conflate;
        assert_eq!(outbox.push(delivery(0, 10, "AAPL"), c), Push::Queued);
        assert_eq!(outbox.push(delivery(1, 10, "MSFT"), c), Push::Queued);
        assert_eq!(outbox.push(delivery(2, 12, "AAPL"), c), Push::Conflated);
        assert_eq!(outbox.push(delivery(3, 10, "IBM"), c), Push::Dropped);
        let mut buf = VecDeque::new();
        outbox.drain_into(&mut buf);
        let offsets: Vec<i64> = buf.iter().map(|d| d.record.meta.offset).collect();
        assert_eq!(offsets, vec![1, 2], "order kept, old AAPL value gone");
        // After a drain the index starts afresh.
        assert_eq!(outbox.push(delivery(4, 10, "AAPL"), c), Push::Queued);
        assert_eq!(outbox.push(delivery(5, 10, "AAPL"), c), Push::Conflated);
    }

    #[test]
    fn only_disconnect_refusals_start_the_grace_clock_and_a_drain_reports_it() {
        let outbox = Outbox::new(1, 1000);
        outbox.push(delivery(0, 10, "k"), SlowConsumerPolicy::CatchUp);
        outbox.push(delivery(1, 10, "k"), SlowConsumerPolicy::CatchUp);
        assert_eq!(
            outbox.refused_since(),
            None,
            "catch_up refusals never disconnect"
        );
        outbox.push(delivery(2, 10, "k"), SlowConsumerPolicy::Disconnect);
        let first = outbox.refused_since().expect("clock started");
        outbox.push(delivery(3, 10, "k"), SlowConsumerPolicy::Disconnect);
        assert_eq!(
            outbox.refused_since(),
            Some(first),
            "later refusals keep the first time"
        );
        let drained = outbox.drain_into(&mut VecDeque::new());
        assert_eq!(drained.refused_since, Some(first));
        assert_eq!(outbox.refused_since(), None);
    }
}
