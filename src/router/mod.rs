//! The router: which subscriptions get a record, and the live position of every
//! partition.
//!
//! Registration and dispatch share one lock per topic, so the live position a
//! new subscription is given is exact: every record at or after it reaches the
//! subscription, every record before it is the replay's job.
//!
//! With `replay.live_from_ring` (experimental, off by default), whole-topic
//! subscriptions under the `catch_up` policy *pull*: dispatch only
//! wakes them, and their connection reads the partition's ring from its own
//! position ([`TopicRoute::read`]), so a record costs nothing per subscriber until
//! it is read, and a reader that falls off the ring catches up from Kafka. Keyed
//! subscriptions (a few records each) and the `conflate` and `disconnect`
//! policies (which act per queued record) get records *pushed* to their outbox.

mod channel;
mod filter;
mod latest;
pub mod outbox;
mod ring;

pub use channel::{Channel, ChannelError};
pub use filter::{FilterError, HeaderFilter};
pub use latest::LastValues;
pub use ring::Ring;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::codec::{EncodedRecord, TopicCodec};
use crate::config::{PayloadFormat, SlowConsumerPolicy};
use crate::router::outbox::{Delivery, Outbox, Push, SubscriptionId, Tally};

/// Routes ingested records to the outboxes of subscribed connections.
pub struct Router {
    topics: HashMap<Arc<str>, TopicRoute>,
    /// Bumped when a topic gains partitions or is deleted: ingest assigns afresh.
    layout: AtomicU64,
    next_id: AtomicU64,
    ready: AtomicBool,
    /// Ingest's client reports a connected broker (from its statistics, every second).
    kafka_reachable: AtomicBool,
    /// Whole-topic `catch_up` subscriptions pull from the ring (`replay.live_from_ring`).
    live_from_ring: AtomicBool,
}

/// One served topic: its partitions' live positions and its subscribers.
pub struct TopicRoute {
    name: Arc<str>,
    /// The topic's number in this gateway (its place in the configuration), named by delta frames.
    id: u32,
    /// Keys ingest keeps a base of for deltas (0: no deltas).
    delta_keys: usize,
    /// Subscriptions that want deltas: while there are none, ingest makes none.
    delta_subscribers: AtomicUsize,
    format: PayloadFormat,
    codec: Arc<TopicCodec>,
    slow_consumer: SlowConsumerPolicy,
    max_rate: Option<f64>,
    /// The latest record per key (snapshot topics only).
    latest: Option<Mutex<LastValues>>,
    /// Per partition; grows when the topic gains partitions.
    partitions: RwLock<Vec<PartitionState>>,
    /// Memory each partition's ring may hold.
    ring_bytes: usize,
    /// The topic was deleted from the cluster.
    deleted: AtomicBool,
    subscribers: RwLock<Subscribers>,
}

/// One partition of a served topic.
struct PartitionState {
    /// Next offset ingest will dispatch.
    live: AtomicI64,
    /// High watermark, from ingest's statistics.
    high: AtomicI64,
    /// Recent records (the memory tier of replay).
    ring: Mutex<Ring>,
}

impl PartitionState {
    fn new(start: i64, ring_bytes: usize) -> PartitionState {
        PartitionState {
            live: AtomicI64::new(start),
            high: AtomicI64::new(start),
            ring: Mutex::new(Ring::new(start, ring_bytes)),
        }
    }
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
    /// Reads the ring itself: only woken by dispatch.
    pulls: bool,
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
    /// Keys ingest keeps a base of for deltas (0: no deltas).
    pub delta_keys: usize,
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
            delta_keys: 10_000,
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
    /// The connection reads live records from the ring ([`TopicRoute::read`]) when its
    /// outbox wakes it; otherwise they are pushed to the outbox.
    pub pulls: bool,
}

/// What [`TopicRoute::read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// This many records, in offset order, up to the live position or the limit.
    Records(usize),
    /// The ring no longer holds the asked offset: it begins here.
    Evicted { covered_from: i64 },
}

impl Router {
    /// A router for a fixed set of topics, keeping `ring_bytes` of recent records per partition.
    pub fn new(topics: Vec<TopicSpec>, ring_bytes: usize) -> Router {
        let topics = topics
            .into_iter()
            .enumerate()
            .map(|(id, spec)| {
                let name: Arc<str> = spec.name.into();
                let route = TopicRoute {
                    name: name.clone(),
                    id: id as u32,
                    delta_keys: spec.delta_keys,
                    delta_subscribers: AtomicUsize::new(0),
                    format: spec.format,
                    codec: spec.codec,
                    slow_consumer: spec.slow_consumer,
                    max_rate: spec.max_rate,
                    latest: spec.snapshot.then(Mutex::default),
                    partitions: RwLock::new(
                        spec.start_offsets
                            .iter()
                            .map(|&o| PartitionState::new(o, ring_bytes))
                            .collect(),
                    ),
                    ring_bytes,
                    deleted: AtomicBool::new(false),
                    subscribers: RwLock::new(Subscribers::default()),
                };
                (name, route)
            })
            .collect();
        Router {
            topics,
            layout: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            // Start-up just read metadata from the cluster.
            kafka_reachable: AtomicBool::new(true),
            live_from_ring: AtomicBool::new(false),
        }
    }

    /// Lets whole-topic `catch_up` subscriptions registered from now on pull from the ring.
    pub fn set_live_from_ring(&self, on: bool) {
        self.live_from_ring.store(on, Ordering::Release);
    }

    /// Adds partitions `route` gained in the cluster (they start at offset 0, so
    /// nothing written to them before this is missed); false when it has no more.
    pub fn grow(&self, route: &TopicRoute, count: i32) -> bool {
        let mut partitions = route.partitions.write();
        if count as usize <= partitions.len() {
            return false;
        }
        partitions.resize_with(count as usize, || PartitionState::new(0, route.ring_bytes));
        self.layout.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Marks `route` deleted from the cluster: ingest stops reading it, and connections
    /// end its subscriptions with an error; false if it already was.
    pub fn mark_deleted(&self, route: &TopicRoute) -> bool {
        let first = !route.deleted.swap(true, Ordering::AcqRel);
        if first {
            self.layout.fetch_add(1, Ordering::AcqRel);
        }
        first
    }

    /// Changes each time a topic gains partitions or is deleted.
    pub fn layout_version(&self) -> u64 {
        self.layout.load(Ordering::Acquire)
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
        let pulls = self.live_from_ring.load(Ordering::Acquire)
            && channel.key.is_none()
            && route.slow_consumer == SlowConsumerPolicy::CatchUp
            && route.ring_bytes > 0;
        let target = Target {
            outbox,
            filter,
            pulls,
        };
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
            .partitions
            .read()
            .iter()
            .map(|p| p.live.load(Ordering::Acquire))
            .collect();
        Registered {
            id,
            live,
            snapshot,
            pulls,
        }
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

    /// Adds ingested records (in offset order per partition) to the ring, wakes the
    /// subscriptions that pull and pushes them to every other matching subscription;
    /// returns how many deliveries were dropped because an outbox was full. Each
    /// whole-topic subscription's outbox is locked once for the whole batch.
    pub fn dispatch(&self, route: &TopicRoute, records: &[Arc<EncodedRecord>]) -> usize {
        let subs = route.subscribers.read();
        {
            let partitions = route.partitions.read();
            for record in records {
                if let Some(p) = partitions.get(record.meta.partition as usize) {
                    p.live.store(record.meta.offset + 1, Ordering::Release);
                    p.ring.lock().push(record.clone());
                }
                if let Some(latest) = &route.latest {
                    latest.lock().update(record);
                }
            }
        }
        let policy = route.slow_consumer;
        let mut tally = Tally::default();
        let wanted = |filter: &Option<Arc<HeaderFilter>>, record: &EncodedRecord| {
            filter.as_ref().is_none_or(|f| f.matches(record))
        };
        let mut dropped = 0;
        for (&subscription, target) in &subs.all {
            let Target {
                outbox,
                filter,
                pulls,
            } = target;
            if *pulls {
                outbox.wake();
                continue;
            }
            let deliveries = records
                .iter()
                .filter(|r| wanted(filter, r))
                .map(|record| Delivery {
                    subscription,
                    record: record.clone(),
                });
            dropped += outbox.push_all(deliveries, policy, &mut tally);
        }
        if !subs.by_key.is_empty() {
            for record in records {
                let Some(set) = record.key.as_ref().and_then(|k| subs.by_key.get(k)) else {
                    continue;
                };
                for (&subscription, Target { outbox, filter, .. }) in set {
                    if wanted(filter, record) {
                        let delivery = Delivery {
                            subscription,
                            record: record.clone(),
                        };
                        dropped +=
                            usize::from(outbox.push(delivery, policy, &mut tally) == Push::Dropped);
                    }
                }
            }
        }
        tally.commit();
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

    /// The topic's number in this gateway, as delta frames name it.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Keys ingest keeps a base of for deltas; 0 when the topic sends none.
    pub fn delta_keys(&self) -> usize {
        self.delta_keys
    }

    /// Counts a subscription that wants deltas (until [`TopicRoute::remove_delta_subscriber`]).
    pub fn add_delta_subscriber(&self) {
        self.delta_subscribers.fetch_add(1, Ordering::AcqRel);
    }

    /// Uncounts a subscription counted by [`TopicRoute::add_delta_subscriber`].
    pub fn remove_delta_subscriber(&self) {
        self.delta_subscribers.fetch_sub(1, Ordering::AcqRel);
    }

    /// True while some subscription wants deltas of this topic.
    pub fn wants_deltas(&self) -> bool {
        self.delta_subscribers.load(Ordering::Acquire) > 0
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
        self.partitions.read().len() as i32
    }

    /// Whether the topic was deleted from the cluster.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Next offset ingest will dispatch on `partition`.
    pub fn live_offset(&self, partition: i32) -> Option<i64> {
        self.partitions
            .read()
            .get(partition as usize)
            .map(|p| p.live.load(Ordering::Acquire))
    }

    /// Records the partition's high watermark (reported by ingest statistics).
    pub fn set_high_watermark(&self, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.read().get(partition as usize) {
            p.high.fetch_max(offset, Ordering::AcqRel);
        }
    }

    /// The partition's last known high watermark.
    pub fn high_watermark(&self, partition: i32) -> Option<i64> {
        self.partitions
            .read()
            .get(partition as usize)
            .map(|p| p.high.load(Ordering::Acquire))
    }

    /// Where the partition's ring begins (every record from there on is in memory).
    pub fn ring_covered_from(&self, partition: i32) -> Option<i64> {
        Some(
            self.partitions
                .read()
                .get(partition as usize)?
                .ring
                .lock()
                .covered_from(),
        )
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
        self.partitions
            .read()
            .get(partition as usize)
            .map_or(0, |p| p.ring.lock().backfill(start, until, records))
    }

    /// Records of `partition` in `from..until` from memory, if the ring still covers `from`.
    pub fn ring_range(
        &self,
        partition: i32,
        from: i64,
        until: i64,
    ) -> Option<Vec<Arc<EncodedRecord>>> {
        self.partitions
            .read()
            .get(partition as usize)?
            .ring
            .lock()
            .range(from, until)
    }

    /// Reads the records of `partition` from offset `from` on, up to the live position
    /// and at most `max` of them, handing each to `each` with the ring locked.
    pub fn read(
        &self,
        partition: i32,
        from: i64,
        max: usize,
        each: impl FnMut(&Arc<EncodedRecord>),
    ) -> Read {
        let partitions = self.partitions.read();
        let Some(p) = partitions.get(partition as usize) else {
            return Read::Records(0);
        };
        let ring = p.ring.lock();
        match ring.read(from, max, each) {
            Some(n) => Read::Records(n),
            None => Read::Evicted {
                covered_from: ring.covered_from(),
            },
        }
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
    use crate::router::outbox::Deliveries;

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
        router.set_live_from_ring(true);
        let route = router.topic("prices").unwrap();
        let all = Arc::new(Outbox::new(100, 1 << 20));
        let aapl = Arc::new(Outbox::new(100, 1 << 20));
        let Registered { live, pulls, .. } = router.subscribe(
            route,
            &Channel::parse("prices", 64).unwrap(),
            None,
            all.clone(),
            false,
        );
        assert_eq!(live, vec![10, 20]);
        assert!(pulls, "a whole-topic catch_up subscription reads the ring");
        let aapl_channel = Channel::parse("prices:AAPL", 64).unwrap();
        let aapl_sub = router.subscribe(route, &aapl_channel, None, aapl.clone(), false);
        assert!(!aapl_sub.pulls, "a keyed subscription is pushed to");
        let aapl_id = aapl_sub.id;

        router.dispatch(route, &[record(0, 10, "AAPL")]);
        router.dispatch(route, &[record(1, 20, "MSFT")]);
        assert_eq!(route.live_offset(0), Some(11));
        assert_eq!(route.live_offset(1), Some(21));

        // The pulling subscription was woken, and reads the records from its positions.
        assert!(has_wake(&all), "dispatch wakes a pulling subscription");
        let mut got = Deliveries::default();
        all.drain_into(&mut got);
        assert!(
            got.is_empty(),
            "nothing is queued for a pulling subscription"
        );
        let mut read = Vec::new();
        for (partition, from) in [(0, 10), (1, 20)] {
            let found = route.read(partition, from, 10, |r| read.push(r.meta.offset));
            assert_eq!(found, Read::Records(1));
        }
        assert_eq!(read, vec![10, 20]);
        aapl.drain_into(&mut got);
        assert_eq!(got.len(), 1);
        let first = got.iter().next().expect("one delivery");
        assert_eq!(
            (first.subscription, first.record.meta.offset),
            (aapl_id, 10)
        );

        assert_eq!(
            route.read(0, 9, 10, |_| {}),
            Read::Evicted { covered_from: 10 },
            "offset 9 was never in the ring"
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
        router.dispatch(route, &[record(0, 11, "AAPL")]);
        got.clear();
        aapl.drain_into(&mut got);
        assert!(got.is_empty());
    }

    /// Whether `outbox` has a wake-up pending.
    fn has_wake(outbox: &Outbox) -> bool {
        let ready = std::pin::pin!(outbox.ready());
        let waker = std::task::Waker::noop();
        ready
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    /// The push path (here with no ring, so nothing can pull).
    #[test]
    fn a_batch_keeps_order_per_subscription_applies_filters_and_counts_drops() {
        let router = Router::new(vec![TopicSpec::json("prices", vec![0, 0])], 0);
        let route = router.topic("prices").unwrap();
        let channel = Channel::parse("prices", 64).unwrap();
        let wide = Arc::new(Outbox::new(100, 1 << 20));
        let narrow = Arc::new(Outbox::new(3, 1 << 20));
        let filtered = Arc::new(Outbox::new(100, 1 << 20));
        router.subscribe(route, &channel, None, wide.clone(), false);
        router.subscribe(route, &channel, None, narrow.clone(), false);
        let only_eu = HeaderFilter::parse(&serde_json::json!({"region": "eu"})).unwrap();
        router.subscribe(
            route,
            &channel,
            Some(Arc::new(only_eu)),
            filtered.clone(),
            false,
        );

        let batch: Vec<_> = (0..6)
            .map(|i| {
                let mut r = record(i % 2, i as i64 / 2, "AAPL");
                let region = if i % 3 == 0 { "eu" } else { "us" };
                Arc::get_mut(&mut r)
                    .unwrap()
                    .headers
                    .push(("region".into(), Some(Bytes::from_static(region.as_bytes()))));
                r
            })
            .collect();
        // The narrow outbox takes 3 of 6 and drops the rest.
        assert_eq!(router.dispatch(route, &batch), 3);
        assert_eq!(
            (route.live_offset(0), route.live_offset(1)),
            (Some(3), Some(3))
        );

        let offsets = |outbox: &Outbox| {
            let mut got = Deliveries::default();
            let drained = outbox.drain_into(&mut got);
            let seen: Vec<(i32, i64)> = got
                .iter()
                .map(|d| (d.record.meta.partition, d.record.meta.offset))
                .collect();
            (seen, drained.dropped.len())
        };
        let all = vec![(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)];
        assert_eq!(offsets(&wide), (all.clone(), 0));
        assert_eq!(
            offsets(&narrow),
            (all[..3].to_vec(), 2),
            "drops reported per partition"
        );
        assert_eq!(
            offsets(&filtered),
            (vec![(0, 0), (1, 1)], 0),
            "only region=eu"
        );
    }
}
