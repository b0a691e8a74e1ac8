//! The router: which subscriptions get a record, and the live position of every
//! partition.
//!
//! Registration and dispatch share one lock per topic, so the live position a
//! new subscription is given is exact: every record at or after it is pushed to
//! the subscription, every record before it is the replay's job.

mod channel;
mod filter;
mod latest;
mod ring;

pub use channel::{Channel, ChannelError};
pub use filter::{FilterError, HeaderFilter};
pub use latest::LastValues;
pub use ring::Ring;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::codec::{EncodedRecord, TopicCodec};
use crate::config::{PayloadFormat, SlowConsumerPolicy};
use crate::session::outbox::{Delivery, Outbox, Push, SubscriptionId};

/// Routes ingested records to the outboxes of subscribed connections.
pub struct Router {
    topics: HashMap<Arc<str>, TopicRoute>,
    next_id: AtomicU64,
    ready: AtomicBool,
    /// Ingest's client reports a connected broker (from its statistics, every second).
    kafka_reachable: AtomicBool,
}

/// One served topic: its partitions' live positions and its subscribers.
pub struct TopicRoute {
    name: Arc<str>,
    format: PayloadFormat,
    codec: Arc<TopicCodec>,
    slow_consumer: SlowConsumerPolicy,
    max_rate: Option<f64>,
    /// The latest record per key (snapshot topics only).
    latest: Option<Mutex<LastValues>>,
    /// Next offset ingest will dispatch, per partition.
    live: Vec<AtomicI64>,
    /// High watermark per partition, from ingest's statistics (-1 until known).
    high: Vec<AtomicI64>,
    /// Recent records per partition (the memory tier of replay).
    rings: Vec<Mutex<Ring>>,
    subscribers: RwLock<Subscribers>,
}

#[derive(Default)]
struct Subscribers {
    all: HashMap<SubscriptionId, Target>,
    by_key: HashMap<Bytes, HashMap<SubscriptionId, Target>>,
}

/// Where a subscription's records go, and which of them it wants.
struct Target {
    outbox: Arc<Outbox>,
    filter: Option<Arc<HeaderFilter>>,
}

/// A topic to serve, with its partition count and the offsets ingest starts from.
pub struct TopicSpec {
    pub name: String,
    pub format: PayloadFormat,
    pub codec: Arc<TopicCodec>,
    pub slow_consumer: SlowConsumerPolicy,
    /// Default per-key rate of subscriptions that set none.
    pub max_rate: Option<f64>,
    /// Keep a last-value cache for snapshots.
    pub snapshot: bool,
    pub start_offsets: Vec<i64>,
}

impl TopicSpec {
    /// A JSON topic with default policies (tests, benches and tools).
    pub fn json(name: &str, start_offsets: Vec<i64>) -> TopicSpec {
        TopicSpec {
            name: name.to_string(),
            format: PayloadFormat::Json,
            codec: Arc::new(TopicCodec::plain(true)),
            slow_consumer: SlowConsumerPolicy::CatchUp,
            max_rate: None,
            snapshot: false,
            start_offsets,
        }
    }
}

/// A registered subscription: its id, the live position of every partition and,
/// when asked for, the snapshot taken at exactly those positions.
pub struct Registered {
    pub id: SubscriptionId,
    pub live: Vec<i64>,
    pub snapshot: Vec<Arc<EncodedRecord>>,
}

impl Router {
    /// A router for a fixed set of topics, keeping `ring_bytes` of recent records per partition.
    pub fn new(topics: Vec<TopicSpec>, ring_bytes: usize) -> Router {
        let topics = topics
            .into_iter()
            .map(|spec| {
                let name: Arc<str> = spec.name.into();
                let route = TopicRoute {
                    name: name.clone(),
                    format: spec.format,
                    codec: spec.codec,
                    slow_consumer: spec.slow_consumer,
                    max_rate: spec.max_rate,
                    latest: spec.snapshot.then(Mutex::default),
                    high: spec
                        .start_offsets
                        .iter()
                        .map(|&o| AtomicI64::new(o))
                        .collect(),
                    rings: spec
                        .start_offsets
                        .iter()
                        .map(|&o| Mutex::new(Ring::new(o, ring_bytes)))
                        .collect(),
                    live: spec.start_offsets.into_iter().map(AtomicI64::new).collect(),
                    subscribers: RwLock::new(Subscribers::default()),
                };
                (name, route)
            })
            .collect();
        Router {
            topics,
            next_id: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            // Start-up just read metadata from the cluster.
            kafka_reachable: AtomicBool::new(true),
        }
    }

    /// The route of a served topic.
    pub fn topic(&self, name: &str) -> Option<&TopicRoute> {
        self.topics.get(name)
    }

    /// Every served topic.
    pub fn topics(&self) -> impl Iterator<Item = &TopicRoute> {
        self.topics.values()
    }

    /// Marks ingest as running (readiness).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// True once ingest runs.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records whether ingest's Kafka client has a connected broker.
    pub fn set_kafka_reachable(&self, up: bool) {
        self.kafka_reachable.store(up, Ordering::Release);
    }

    /// True while ingest's Kafka client has a connected broker.
    pub fn is_kafka_reachable(&self) -> bool {
        self.kafka_reachable.load(Ordering::Acquire)
    }

    /// Registers a subscription. With `snapshot`, the latest record per selected key
    /// is taken under the same lock as the live positions: the snapshot holds
    /// everything below them and dispatch delivers everything from them on.
    pub fn subscribe(
        &self,
        route: &TopicRoute,
        channel: &Channel,
        filter: Option<Arc<HeaderFilter>>,
        outbox: Arc<Outbox>,
        snapshot: bool,
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut subs = route.subscribers.write();
        let snapshot = match (&route.latest, snapshot) {
            (Some(latest), true) => latest.lock().snapshot(channel, filter.as_deref()),
            _ => Vec::new(),
        };
        let target = Target { outbox, filter };
        match &channel.key {
            None => {
                subs.all.insert(id, target);
            }
            Some(key) => {
                subs.by_key
                    .entry(key.clone())
                    .or_default()
                    .insert(id, target);
            }
        }
        let live = route
            .live
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .collect();
        Registered { id, live, snapshot }
    }

    /// Removes a subscription; deliveries already queued for it are ignored by the session.
    pub fn unsubscribe(&self, route: &TopicRoute, channel: &Channel, id: SubscriptionId) {
        let mut subs = route.subscribers.write();
        match &channel.key {
            None => {
                subs.all.remove(&id);
            }
            Some(key) => {
                if let Some(set) = subs.by_key.get_mut(key) {
                    set.remove(&id);
                    if set.is_empty() {
                        subs.by_key.remove(key);
                    }
                }
            }
        }
    }

    /// Pushes one ingested record to every matching subscription; returns how many outboxes were full.
    pub fn dispatch(&self, route: &TopicRoute, record: Arc<EncodedRecord>) -> usize {
        let subs = route.subscribers.read();
        let partition = record.meta.partition as usize;
        if let Some(p) = route.live.get(partition) {
            p.store(record.meta.offset + 1, Ordering::Release);
        }
        if let Some(ring) = route.rings.get(partition) {
            ring.lock().push(record.clone());
        }
        if let Some(latest) = &route.latest {
            latest.lock().update(&record);
        }
        let mut dropped = 0;
        let policy = route.slow_consumer;
        let mut send = |(id, Target { outbox, filter }): (&SubscriptionId, &Target)| {
            if filter.as_ref().is_some_and(|f| !f.matches(&record)) {
                return;
            }
            let delivery = Delivery {
                subscription: *id,
                record: record.clone(),
            };
            if outbox.push(delivery, policy) == Push::Dropped {
                dropped += 1;
            }
        };
        subs.all.iter().for_each(&mut send);
        if let Some(key) = &record.key {
            if let Some(set) = subs.by_key.get(key) {
                set.iter().for_each(&mut send);
            }
        }
        dropped
    }
}

impl TopicRoute {
    /// The topic name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// What happens to subscribers that cannot keep up.
    pub fn slow_consumer(&self) -> SlowConsumerPolicy {
        self.slow_consumer
    }

    /// How payloads of this topic are decoded.
    pub fn format(&self) -> PayloadFormat {
        self.format
    }

    /// The topic's decoder.
    pub fn codec(&self) -> &TopicCodec {
        &self.codec
    }

    /// The per-key rate of subscriptions that set none.
    pub fn default_max_rate(&self) -> Option<f64> {
        self.max_rate
    }

    /// The last-value cache, for snapshot topics.
    pub fn latest(&self) -> Option<&Mutex<LastValues>> {
        self.latest.as_ref()
    }

    /// Partition count.
    pub fn partitions(&self) -> i32 {
        self.live.len() as i32
    }

    /// Next offset ingest will dispatch on `partition`.
    pub fn live_offset(&self, partition: i32) -> Option<i64> {
        self.live
            .get(partition as usize)
            .map(|p| p.load(Ordering::Acquire))
    }

    /// Records the partition's high watermark (reported by ingest statistics).
    pub fn set_high_watermark(&self, partition: i32, offset: i64) {
        if let Some(h) = self.high.get(partition as usize) {
            h.fetch_max(offset, Ordering::AcqRel);
        }
    }

    /// The partition's last known high watermark.
    pub fn high_watermark(&self, partition: i32) -> Option<i64> {
        self.high
            .get(partition as usize)
            .map(|h| h.load(Ordering::Acquire))
    }

    /// Where the partition's ring begins (every record from there on is in memory).
    pub fn ring_covered_from(&self, partition: i32) -> Option<i64> {
        Some(self.rings.get(partition as usize)?.lock().covered_from())
    }

    /// Hands records a Kafka replay read from `start` up to `until` (where the ring began)
    /// to the ring, so later replays of them are served from memory.
    pub fn ring_backfill(
        &self,
        partition: i32,
        start: i64,
        until: i64,
        records: Vec<Arc<EncodedRecord>>,
    ) -> usize {
        self.rings
            .get(partition as usize)
            .map_or(0, |ring| ring.lock().backfill(start, until, records))
    }

    /// Records of `partition` in `from..until` from memory, if the ring still covers `from`.
    pub fn ring_range(
        &self,
        partition: i32,
        from: i64,
        until: i64,
    ) -> Option<Vec<Arc<EncodedRecord>>> {
        self.rings
            .get(partition as usize)?
            .lock()
            .range(from, until)
    }

    /// Subscriptions currently registered (whole-topic and keyed).
    pub fn subscription_count(&self) -> usize {
        let subs = self.subscribers.read();
        subs.all.len() + subs.by_key.values().map(HashMap::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RecordMeta;
    use std::collections::VecDeque;

    fn record(partition: i32, offset: i64, key: &str) -> Arc<EncodedRecord> {
        Arc::new(EncodedRecord::new(
            RecordMeta {
                topic: "prices".into(),
                partition,
                offset,
            },
            Some(Bytes::copy_from_slice(key.as_bytes())),
            "{}".into(),
        ))
    }

    #[test]
    fn routes_by_topic_and_key_and_tracks_live_positions() {
        let router = Router::new(vec![TopicSpec::json("prices", vec![10, 20])], 1 << 20);
        let route = router.topic("prices").unwrap();
        let all = Arc::new(Outbox::new(100, 1 << 20));
        let aapl = Arc::new(Outbox::new(100, 1 << 20));
        let Registered {
            id: all_id, live, ..
        } = router.subscribe(
            route,
            &Channel::parse("prices", 64).unwrap(),
            None,
            all.clone(),
            false,
        );
        assert_eq!(live, vec![10, 20]);
        let aapl_channel = Channel::parse("prices:AAPL", 64).unwrap();
        let aapl_id = router
            .subscribe(route, &aapl_channel, None, aapl.clone(), false)
            .id;

        router.dispatch(route, record(0, 10, "AAPL"));
        router.dispatch(route, record(1, 20, "MSFT"));
        assert_eq!(route.live_offset(0), Some(11));
        assert_eq!(route.live_offset(1), Some(21));

        let mut got = VecDeque::new();
        all.drain_into(&mut got);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|d| d.subscription == all_id));
        got.clear();
        aapl.drain_into(&mut got);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].subscription, got[0].record.meta.offset),
            (aapl_id, 10)
        );

        let ring: Vec<i64> = route
            .ring_range(0, 10, 11)
            .unwrap()
            .iter()
            .map(|r| r.meta.offset)
            .collect();
        assert_eq!(ring, vec![10]);
        router.unsubscribe(route, &aapl_channel, aapl_id);
        assert_eq!(route.subscription_count(), 1);
        router.dispatch(route, record(0, 11, "AAPL"));
        got.clear();
        aapl.drain_into(&mut got);
        assert!(got.is_empty());
    }
}
