//! The bounded queue between the router and one connection.
//!
//! Bounded by messages and bytes. When it is full, nothing more is queued until
//! the connection drains it ("sticky full", so per-partition order is kept);
//! what could not be queued is reported per subscription and partition, and the
//! connection applies the subscription's slow-consumer policy.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
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

/// Deliveries taken from an outbox by one drain, in order.
///
/// The drain swaps buffers with the outbox rather than moving each delivery, so the
/// outbox's lock is held for a constant time however much was queued.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// `None` marks a record superseded by a newer one of the same key (conflation).
    items: VecDeque<Option<Delivery>>,
}

impl Deliveries {
    /// The deliveries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.items.iter().flatten()
    }

    /// Takes out up to `n` deliveries, oldest first.
    pub fn take(&mut self, n: usize) -> impl Iterator<Item = Delivery> + '_ {
        std::iter::from_fn(|| {
            while let Some(slot) = self.items.pop_front() {
                if slot.is_some() {
                    return slot;
                }
            }
            None
        })
        .take(n)
    }

    /// How many deliveries there are.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Forgets the deliveries.
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Gives back the memory the buffer does not use now.
    pub fn shrink(&mut self) {
        self.items.shrink_to_fit();
    }
}

/// Queue changes made by pushes, added to the process-wide gauges in one go
/// (per record dispatched, not per delivery: those counters are shared by every core).
#[derive(Debug, Default)]
pub struct Tally {
    messages: u64,
    bytes_added: u64,
    bytes_removed: u64,
    max_messages: u64,
    max_bytes: u64,
    conflated: u64,
}

impl Tally {
    /// Adds the changes to the gauges.
    pub fn commit(self) {
        let s = stats();
        if self.messages > 0 {
            s.outbox_messages.add(self.messages);
        }
        if self.bytes_added > 0 {
            s.outbox_bytes.add(self.bytes_added);
        }
        if self.bytes_removed > 0 {
            s.outbox_bytes.sub(self.bytes_removed);
        }
        if self.conflated > 0 {
            s.slow_consumer_conflated.add(self.conflated);
        }
        // Reads first: high-water marks rarely move, and a read keeps the line shared.
        if self.max_messages > s.outbox_max_messages_seen.get() {
            s.outbox_max_messages_seen.max(self.max_messages);
        }
        if self.max_bytes > s.outbox_max_bytes_seen.get() {
            s.outbox_max_bytes_seen.max(self.max_bytes);
        }
    }
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
    /// A wake-up not yet taken by the reader: one set while the reader is busy is not lost.
    woken: AtomicBool,
    /// The reader's task, waiting in [`ready`](Self::ready). Cheaper than a `Notify` for
    /// one waiter: a wake-up is a flag and a compare-and-swap, with no lock and no list.
    reader: AtomicWaker,
    /// Signalled when a `Disconnect` subscription's record is first refused since the last drain.
    refused: Notify,
    /// The durable session of the connection reading this outbox was attached elsewhere
    /// (or deleted); the connection learns it at its next wake-up.
    taken_over: AtomicBool,
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
    /// Fast hash: looked up per refused record, and the ids are kgate's own.
    dropped: FxHashMap<(SubscriptionId, i32), DroppedRange>,
}

impl Outbox {
    /// An empty outbox with the given limits.
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            woken: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            refused: Notify::new(),
            taken_over: AtomicBool::new(false),
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

    /// Queues a delivery, conflating by key for `Conflate` subscriptions; the gauge
    /// changes go to `tally`.
    pub fn push(&self, delivery: Delivery, policy: SlowConsumerPolicy, tally: &mut Tally) -> Push {
        self.locked(|q| self.push_locked(q, delivery, policy, tally))
    }

    /// Queues deliveries in order under one lock (a batch of records for one
    /// subscription); returns how many were dropped.
    pub fn push_all(
        &self,
        deliveries: impl Iterator<Item = Delivery>,
        policy: SlowConsumerPolicy,
        tally: &mut Tally,
    ) -> usize {
        self.locked(|q| {
            deliveries
                .map(|d| self.push_locked(q, d, policy, tally))
                .filter(|&pushed| pushed == Push::Dropped)
                .count()
        })
    }

    /// Runs `f` on the locked queue, then wakes the reader if the queue became non-empty
    /// or its first drop was recorded: the reader drains everything, so only those edges
    /// need a wake-up.
    fn locked<R>(&self, f: impl FnOnce(&mut Queue) -> R) -> R {
        let mut q = self.queue.lock();
        let (was_empty, no_drops) = (q.count == 0, q.dropped.is_empty());
        let result = f(&mut q);
        let wake = (was_empty && q.count > 0) || (no_drops && !q.dropped.is_empty());
        drop(q);
        if wake {
            self.wake();
        }
        result
    }

    fn push_locked(
        &self,
        q: &mut Queue,
        delivery: Delivery,
        policy: SlowConsumerPolicy,
        tally: &mut Tally,
    ) -> Push {
        let size = delivery.record.frame.len();
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
                        tally.conflated += 1;
                        tally.bytes_added += size as u64;
                        tally.bytes_removed += old_size as u64;
                        return Push::Conflated;
                    }
                }
            }
        }
        q.full = q.full
            || q.count >= self.max_messages
            || (q.bytes + size > self.max_bytes && q.count > 0);
        if q.full {
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
            return Push::Dropped;
        }
        if policy == SlowConsumerPolicy::Conflate {
            if let Some(key) = &delivery.record.key {
                let seq = q.head_seq + q.items.len() as u64;
                q.by_key.insert((delivery.subscription, key.clone()), seq);
            }
        }
        q.bytes += size;
        q.count += 1;
        q.items.push_back(Some(delivery));
        tally.messages += 1;
        tally.bytes_added += size as u64;
        tally.max_messages = tally.max_messages.max(q.count as u64);
        tally.max_bytes = tally.max_bytes.max(q.bytes as u64);
        Push::Queued
    }

    /// Moves every queued delivery to the end of `into` and reports what was dropped.
    pub fn drain_into(&self, into: &mut Deliveries) -> Drained {
        let mut q = self.queue.lock();
        let (n, bytes) = (q.count, q.bytes);
        q.head_seq += q.items.len() as u64;
        if into.items.is_empty() {
            std::mem::swap(&mut into.items, &mut q.items);
        } else {
            into.items.extend(q.items.drain(..));
        }
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

    /// Tells the reader its durable session was taken away, and wakes it.
    pub fn take_over(&self) {
        self.taken_over.store(true, Ordering::Release);
        self.wake();
    }

    /// True once [`take_over`](Self::take_over) was called.
    pub fn is_taken_over(&self) -> bool {
        self.taken_over.load(Ordering::Acquire)
    }

    /// Wakes the reader without queueing anything: records it pulls from the ring arrived,
    /// or the gateway is shutting down.
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.reader.wake();
    }

    /// Takes a pending wake-up without waiting: true when there was one.
    pub fn try_ready(&self) -> bool {
        // A load first: while nothing is pending, the line stays shared with the router.
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }

    /// Waits until something was queued or dropped since the last drain, or a wake.
    /// One reader at a time.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            if self.try_ready() {
                return std::task::Poll::Ready(());
            }
            self.reader.register(cx.waker());
            // A wake-up between the check and the registration found no waker to wake.
            match self.try_ready() {
                true => std::task::Poll::Ready(()),
                false => std::task::Poll::Pending,
            }
        })
        .await
    }

    /// Gives back the memory the queue does not use now (its buffer keeps the size of
    /// the largest burst otherwise).
    pub fn shrink(&self) {
        let mut q = self.queue.lock();
        let len = q.items.len();
        q.items.shrink_to(len);
        q.by_key.shrink_to_fit();
    }

    /// Forgets what is queued (the connection is closing).
    pub fn clear(&self) {
        self.drain_into(&mut Deliveries::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;

    fn push(outbox: &Outbox, delivery: Delivery, policy: SlowConsumerPolicy) -> Push {
        outbox.push(delivery, policy, &mut Tally::default())
    }

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
                push(&outbox, delivery(i, 10, "k"), SlowConsumerPolicy::CatchUp),
                Push::Queued
            );
        }
        assert_eq!(
            push(&outbox, delivery(3, 10, "k"), SlowConsumerPolicy::CatchUp),
            Push::Dropped
        );
        assert_eq!(
            push(&outbox, delivery(4, 10, "k"), SlowConsumerPolicy::CatchUp),
            Push::Dropped
        );
        let mut buf = Deliveries::default();
        let drained = outbox.drain_into(&mut buf);
        assert_eq!(buf.len(), 3);
        assert_eq!(
            drained.dropped,
            vec![((1, 0), DroppedRange { first: 3, last: 4 })]
        );

        let outbox = Outbox::new(100, 25);
        assert_eq!(
            push(&outbox, delivery(0, 20, "k"), SlowConsumerPolicy::CatchUp),
            Push::Queued
        );
        assert_eq!(
            push(&outbox, delivery(1, 20, "k"), SlowConsumerPolicy::CatchUp),
            Push::Dropped
        );
        // Sticky: a small record that would fit is refused too, so order per partition holds.
        assert_eq!(
            push(&outbox, delivery(2, 1, "k"), SlowConsumerPolicy::CatchUp),
            Push::Dropped
        );
        // A single record larger than the byte limit still passes when the queue is empty.
        let outbox = Outbox::new(100, 5);
        assert_eq!(
            push(&outbox, delivery(0, 20, "k"), SlowConsumerPolicy::CatchUp),
            Push::Queued
        );
    }

    #[test]
    fn conflation_keeps_the_latest_value_per_key_in_place() {
        let outbox = Outbox::new(2, 1000);
        let c = SlowConsumerPolicy::Conflate;
        assert_eq!(push(&outbox, delivery(0, 10, "AAPL"), c), Push::Queued);
        assert_eq!(push(&outbox, delivery(1, 10, "MSFT"), c), Push::Queued);
        assert_eq!(push(&outbox, delivery(2, 12, "AAPL"), c), Push::Conflated);
        assert_eq!(push(&outbox, delivery(3, 10, "IBM"), c), Push::Dropped);
        let mut buf = Deliveries::default();
        outbox.drain_into(&mut buf);
        let offsets: Vec<i64> = buf.iter().map(|d| d.record.meta.offset).collect();
        assert_eq!(offsets, vec![1, 2], "order kept, old AAPL value gone");
        // After a drain the index starts afresh.
        assert_eq!(push(&outbox, delivery(4, 10, "AAPL"), c), Push::Queued);
        assert_eq!(push(&outbox, delivery(5, 10, "AAPL"), c), Push::Conflated);
    }

    #[test]
    fn only_disconnect_refusals_start_the_grace_clock_and_a_drain_reports_it() {
        let outbox = Outbox::new(1, 1000);
        push(&outbox, delivery(0, 10, "k"), SlowConsumerPolicy::CatchUp);
        push(&outbox, delivery(1, 10, "k"), SlowConsumerPolicy::CatchUp);
        assert_eq!(
            outbox.refused_since(),
            None,
            "catch_up refusals never disconnect"
        );
        push(
            &outbox,
            delivery(2, 10, "k"),
            SlowConsumerPolicy::Disconnect,
        );
        let first = outbox.refused_since().expect("clock started");
        push(
            &outbox,
            delivery(3, 10, "k"),
            SlowConsumerPolicy::Disconnect,
        );
        assert_eq!(
            outbox.refused_since(),
            Some(first),
            "later refusals keep the first time"
        );
        let drained = outbox.drain_into(&mut Deliveries::default());
        assert_eq!(drained.refused_since, Some(first));
        assert_eq!(outbox.refused_since(), None);
    }
}
