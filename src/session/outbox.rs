//! The bounded queue between the router and one connection.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec::EncodedRecord;

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
    /// The outbox is full; this delivery was dropped and the connection must be closed.
    Overflow,
}

/// A bounded (messages and bytes) queue the router fills and the connection drains.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
    max_messages: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
    overflowed: bool,
}

impl Outbox {
    /// An empty outbox with the given limits.
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            max_messages,
            max_bytes,
        }
    }

    /// Queues a delivery unless that would pass a limit.
    pub fn push(&self, delivery: Delivery) -> Push {
        let size = delivery.record.frame.len();
        let mut q = self.queue.lock();
        if q.overflowed
            || q.items.len() >= self.max_messages
            || (q.bytes + size > self.max_bytes && !q.items.is_empty())
        {
            let first = !q.overflowed;
            q.overflowed = true;
            drop(q);
            if first {
                self.notify.notify_one();
            }
            return Push::Overflow;
        }
        let was_empty = q.items.is_empty();
        q.bytes += size;
        q.items.push_back(delivery);
        drop(q);
        // Only the empty-to-non-empty edge needs a wake-up: the reader drains everything.
        if was_empty {
            self.notify.notify_one();
        }
        Push::Queued
    }

    /// Moves every queued delivery to the end of `into`; true if the outbox overflowed.
    pub fn drain_into(&self, into: &mut VecDeque<Delivery>) -> bool {
        let mut q = self.queue.lock();
        if into.is_empty() {
            // Swapping keeps both allocations alive for reuse: no per-drain allocation.
            std::mem::swap(&mut q.items, into);
        } else {
            into.extend(q.items.drain(..));
        }
        q.bytes = 0;
        q.overflowed
    }

    /// Waits until something was queued (or the outbox overflowed) since the last drain.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Messages and bytes currently queued.
    pub fn depth(&self) -> (usize, usize) {
        let q = self.queue.lock();
        (q.items.len(), q.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;

    fn delivery(offset: i64, size: usize) -> Delivery {
        Delivery {
            subscription: 1,
            record: Arc::new(EncodedRecord {
                meta: RecordMeta {
                    topic: "t".into(),
                    partition: 0,
                    offset,
                },
                key: None,
                frame: "x".repeat(size).into(),
            }),
        }
    }

    #[test]
    fn bounded_by_messages_and_bytes() {
        let outbox = Outbox::new(3, 1000);
        for i in 0..3 {
            assert_eq!(outbox.push(delivery(i, 10)), Push::Queued);
        }
        assert_eq!(outbox.push(delivery(3, 10)), Push::Overflow);
        assert_eq!(outbox.depth(), (3, 30));
        let mut buf = VecDeque::new();
        assert!(
            outbox.drain_into(&mut buf),
            "overflow is reported to the reader"
        );
        assert_eq!(buf.len(), 3);

        let outbox = Outbox::new(100, 25);
        assert_eq!(outbox.push(delivery(0, 20)), Push::Queued);
        assert_eq!(outbox.push(delivery(1, 20)), Push::Overflow);
        // A single record larger than the byte limit still passes when the queue is empty.
        let outbox = Outbox::new(100, 5);
        assert_eq!(outbox.push(delivery(0, 20)), Push::Queued);
    }
}
