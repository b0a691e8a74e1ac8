//! Catch-up reads from an exact offset. Tiers, in order: the router's ring of
//! recent records (memory), then Kafka through a bounded pool of readers.
//! Concurrent replays of one partition share a scan: a replay whose start is at
//! or ahead of a running scan's position joins it instead of opening a reader.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::blocking::Pool;
use crate::codec::EncodedRecord;
use crate::config::Config;
use crate::kafka::Consumed;
use crate::kafka::batch::BatchReader;
use crate::kafka::cluster::{ClusterError, Offsets};
use crate::router::outbox::SubscriptionId;
use crate::router::{Router, TopicRoute};
use crate::telemetry;

/// Where a partition of a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The live end: only records produced from now on.
    Latest,
    /// The oldest offset Kafka still holds (no gap is reported).
    Earliest,
    /// An exact offset; a gap is reported if Kafka no longer holds it.
    Offset(i64),
}

/// What a replay reports for one partition.
#[derive(Debug)]
pub enum ReplayEvent {
    /// Records read in offset order: a batch per send, so a fast replay wakes its
    /// connection once per batch rather than once per record.
    Records(Vec<Arc<EncodedRecord>>),
    /// The replay starts here (resolves `Earliest`).
    Started { offset: i64 },
    /// The requested offset is gone (retention); the replay continues from `earliest`.
    Gap { requested: i64, earliest: i64 },
    /// The reader reached the end of the partition; `position` is the next offset Kafka will write.
    End { position: i64 },
    /// The reader failed; the message says why.
    Failed(String),
}

/// A replay event addressed to the replay of one subscription's partition that asked
/// for it: a connection drops the events of a replay it has since replaced.
#[derive(Debug)]
pub struct Addressed {
    pub subscription: SubscriptionId,
    pub partition: i32,
    /// The replay's [`ReplayHandle::id`].
    pub replay: u64,
    pub event: ReplayEvent,
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub subscription: SubscriptionId,
    pub topic: Arc<str>,
    pub partition: i32,
    pub start: Start,
    /// The subscription's live position: the replay is needed only below it.
    pub until: i64,
}

/// Stops a running replay when cancelled, and tells which tier serves it.
#[derive(Debug, Clone, Default)]
pub struct ReplayHandle {
    /// Names the replay in its events; 0 for a handle no replay was started with.
    id: u64,
    cancelled: Arc<AtomicBool>,
    /// Set when the replay goes to Kafka (else it is served from memory).
    from_kafka: Arc<AtomicBool>,
}

impl ReplayHandle {
    /// The replay's number, unique in this gateway; its events carry it.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// `event`, addressed to this replay of `request`.
    fn address(&self, request: &ReplayRequest, event: ReplayEvent) -> Addressed {
        Addressed {
            subscription: request.subscription,
            partition: request.partition,
            replay: self.id,
            event,
        }
    }
    /// Asks the reader to stop delivering to this replay.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
    /// True once cancelled (the subscription went live or was dropped).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
    /// The tier serving this replay.
    pub fn tier(&self) -> Tier {
        match self.from_kafka.load(Ordering::Acquire) {
            true => Tier::Kafka,
            false => Tier::Memory,
        }
    }
}

/// Which tier served a replay (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Kafka,
}

impl Tier {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Kafka => "kafka",
        }
    }
}

struct Follower {
    from: i64,
    tx: mpsc::Sender<Addressed>,
    cancel: ReplayHandle,
    request: ReplayRequest,
}

/// One Kafka reader shared by the replays of one partition.
struct Scan {
    /// Next offset the scan will distribute, and who receives it.
    state: Mutex<ScanState>,
}

struct ScanState {
    position: i64,
    followers: Vec<Follower>,
    open: bool,
}

impl ScanState {
    /// True while the scan has followers; once it has none it closes, under the same
    /// lock, so no replay joins a scan that is about to stop (it would wait forever).
    fn keep_open(&mut self) -> bool {
        if self.followers.is_empty() {
            self.open = false;
        }
        self.open
    }
}

type ScanKey = (Arc<str>, i32);

/// Records per replay send: one wake of the connection per batch, at most this many
/// records held per send. The size of a connection's write (its route chunk): with 64,
/// a one-client Kafka replay cost the gateway 15% more CPU per record (BENCHMARKS.md).
const BATCH: usize = 256;

/// Threads for watermark and offsets-for-times lookups.
const LOOKUP_THREADS: usize = 4;

/// How long a shared scan waits for one slow follower before detaching it.
const FOLLOWER_PATIENCE: Duration = Duration::from_millis(250);

/// How long a scan with one follower waits for it. Longer: detaching a lone follower ends
/// its scan, and a client that is only briefly slower than Kafka should keep it. Bounded:
/// a client that stopped reading must not hold one of the few reader threads.
const LONE_FOLLOWER_PATIENCE: Duration = Duration::from_secs(1);

/// Sends from a reader thread, waiting (parked) for room at most `patience`. On `Full` the
/// event is dropped: the follower is detached and re-reads from the batch's first offset.
fn patient_send(
    runtime: &tokio::runtime::Handle,
    tx: &mpsc::Sender<Addressed>,
    event: Addressed,
    patience: Duration,
) -> Result<(), TrySendError<()>> {
    match tx.try_send(event) {
        Ok(()) => Ok(()),
        Err(TrySendError::Closed(_)) => Err(TrySendError::Closed(())),
        Err(TrySendError::Full(event)) => {
            // The timer is made inside the runtime: this thread is not one of its own.
            let send = async { tokio::time::timeout(patience, tx.send(event)).await };
            match runtime.block_on(send) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(TrySendError::Closed(())),
                Err(_) => Err(TrySendError::Full(())),
            }
        }
    }
}

/// Replay readers shared by every connection.
pub struct ReplayPool {
    config: Arc<Config>,
    offsets: Arc<dyn Offsets>,
    router: Arc<Router>,
    /// Kafka scans, at most `replay.max_kafka_readers` at once (one thread each).
    readers: Pool,
    /// Watermark and offsets-for-times lookups: short, and never queued behind scans.
    lookups: Pool,
    /// Where replays deliver from memory and report failures (scans start replays too).
    runtime: tokio::runtime::Handle,
    idle: Mutex<Vec<BaseConsumer>>,
    /// The next replay's number (its handle's id); 0 is no replay's.
    next_replay: AtomicU64,
    scans: Mutex<HashMap<ScanKey, Vec<Arc<Scan>>>>,
}

impl ReplayPool {
    /// A pool of at most `replay.max_kafka_readers` concurrent Kafka readers; must be
    /// made inside the runtime its replays deliver on.
    pub fn new(
        config: Arc<Config>,
        offsets: Arc<dyn Offsets>,
        router: Arc<Router>,
    ) -> std::io::Result<Arc<ReplayPool>> {
        Ok(Arc::new(ReplayPool {
            readers: Pool::start("replay", config.replay.max_kafka_readers)?,
            lookups: Pool::start("lookup", LOOKUP_THREADS)?,
            runtime: tokio::runtime::Handle::current(),
            config,
            offsets,
            router,
            idle: Mutex::new(Vec::new()),
            next_replay: AtomicU64::new(1),
            scans: Mutex::new(HashMap::new()),
        }))
    }

    /// Low and high watermarks of a partition, asked on the lookup threads.
    pub async fn watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), ClusterError> {
        let (offsets, topic) = (self.offsets.clone(), topic.to_string());
        self.lookups
            .run(move || offsets.watermarks_blocking(&topic, partition))
            .await?
    }

    /// Per partition, the first offset at or after `timestamp`, asked on the lookup threads.
    pub async fn offsets_for_time(
        &self,
        topic: &str,
        partitions: i32,
        timestamp: i64,
    ) -> Result<Vec<Option<i64>>, ClusterError> {
        let (offsets, topic) = (self.offsets.clone(), topic.to_string());
        self.lookups
            .run(move || offsets.offsets_for_time_blocking(&topic, partitions, timestamp))
            .await?
    }

    /// Starts a replay; its events go to `tx` until it reaches `until`, the partition's end, or cancellation.
    pub fn start(
        self: &Arc<Self>,
        request: ReplayRequest,
        tx: mpsc::Sender<Addressed>,
    ) -> ReplayHandle {
        let handle = ReplayHandle {
            id: self.next_replay.fetch_add(1, Ordering::Relaxed),
            ..ReplayHandle::default()
        };
        self.start_with(request, tx, handle.clone());
        handle
    }

    fn start_with(
        self: &Arc<Self>,
        request: ReplayRequest,
        tx: mpsc::Sender<Addressed>,
        cancel: ReplayHandle,
    ) {
        let pool = self.clone();
        self.runtime.spawn(async move {
            if let Start::Offset(from) = request.start {
                if let Some(records) = pool
                    .router
                    .topic(&request.topic)
                    .and_then(|t| t.ring_range(request.partition, from, request.until))
                {
                    telemetry::replay_started(Tier::Memory.as_str());
                    pool.serve_from_memory(&request, records, &tx, &cancel)
                        .await;
                    return;
                }
            }
            cancel.from_kafka.store(true, Ordering::Release);
            telemetry::replay_started(Tier::Kafka.as_str());
            let pool2 = pool.clone();
            let joined = pool
                .lookups
                .run(move || pool2.resolve_and_join(request, tx, cancel))
                .await;
            match joined {
                Ok(Some(scan_key_and_scan)) => pool.run_scan(scan_key_and_scan).await,
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "replay task failed"),
            }
        });
    }

    async fn serve_from_memory(
        &self,
        req: &ReplayRequest,
        records: Vec<Arc<EncodedRecord>>,
        tx: &mpsc::Sender<Addressed>,
        cancel: &ReplayHandle,
    ) {
        tracing::debug!(topic = %req.topic, partition = req.partition, records = records.len(), tier = ?Tier::Memory, "replay");
        telemetry::replayed(Tier::Memory.as_str(), records.len() as u64);
        let mut records = records.into_iter();
        loop {
            let batch: Vec<_> = records.by_ref().take(BATCH).collect();
            if batch.is_empty() {
                break;
            }
            if cancel.is_cancelled()
                || tx
                    .send(cancel.address(req, ReplayEvent::Records(batch)))
                    .await
                    .is_err()
            {
                return;
            }
        }
        let end = ReplayEvent::End {
            position: req.until,
        };
        let _ = tx.send(cancel.address(req, end)).await;
    }

    /// Resolves the start against Kafka's watermarks, then joins a running scan or creates one.
    /// Returns a new scan to run, if one was created.
    fn resolve_and_join(
        &self,
        req: ReplayRequest,
        tx: mpsc::Sender<Addressed>,
        cancel: ReplayHandle,
    ) -> Option<(ScanKey, Arc<Scan>)> {
        let send = |event| tx.blocking_send(cancel.address(&req, event)).is_ok();
        let (low, high) = self.watermarks_with_retry(&req, &cancel)?;
        let from = match req.start {
            Start::Latest => high,
            Start::Earliest => {
                if !send(ReplayEvent::Started { offset: low }) {
                    return None;
                }
                low
            }
            Start::Offset(o) if o < low => {
                if !send(ReplayEvent::Gap {
                    requested: o,
                    earliest: low,
                }) {
                    return None;
                }
                low
            }
            Start::Offset(o) => o,
        };
        if from >= high {
            send(ReplayEvent::End {
                position: from.max(high),
            });
            return None;
        }
        let follower = Follower {
            from,
            tx: tx.clone(),
            cancel,
            request: req.clone(),
        };
        let key: ScanKey = (req.topic.clone(), req.partition);
        let mut scans = self.scans.lock();
        let list = scans.entry(key.clone()).or_default();
        for scan in list.iter() {
            let mut state = scan.state.lock();
            if state.open && state.position <= from {
                state.followers.push(follower);
                return None;
            }
        }
        let scan = Arc::new(Scan {
            state: Mutex::new(ScanState {
                position: from,
                followers: vec![follower],
                open: true,
            }),
        });
        list.push(scan.clone());
        Some((key, scan))
    }

    async fn run_scan(self: &Arc<Self>, (key, scan): (ScanKey, Arc<Scan>)) {
        let pool = self.clone();
        let scan2 = scan.clone();
        let result = self.readers.run(move || pool.read(&key, &scan2)).await;
        let failure = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %failure, "replay reader failed");
        let followers = std::mem::take(&mut scan.state.lock().followers);
        for f in followers {
            let failed = ReplayEvent::Failed(failure.clone());
            let _ = f.tx.send(f.cancel.address(&f.request, failed)).await;
        }
    }

    /// The scan loop: read from Kafka and distribute to followers until none remain or the partition ends.
    fn read(self: &Arc<Self>, key: &ScanKey, scan: &Arc<Scan>) -> Result<(), KafkaError> {
        let (topic, partition) = key;
        let from = scan.state.lock().position;
        let Some(route) = self.router.topic(topic) else {
            self.finish(key, scan);
            return Ok(());
        };
        tracing::debug!(%topic, partition, from, tier = ?Tier::Kafka, "replay scan");
        let consumer = match self.idle.lock().pop() {
            Some(c) => c,
            None => super::consumer_config(&self.config, "replay")
                .set("enable.partition.eof", "true")
                .create()?,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, *partition, Offset::Offset(from))?;
        let mut backfill = Backfill::new(
            from,
            route.ring_covered_from(*partition),
            self.config.replay.ring_bytes_per_partition,
        );
        let max_bytes = self.config.limits.max_outbound_record_bytes;
        let outcome = (|| {
            consumer.assign(&tpl)?;
            let mut reader = BatchReader::new(&consumer, BATCH)?;
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let mut ended = false;
                let mut take = |message: Result<Consumed<'_>, KafkaError>| match message {
                    Ok(message) => {
                        let record =
                            super::encode_message(topic, &message, route.codec(), max_bytes);
                        let record = Arc::new(record);
                        backfill.read(route, *partition, &record);
                        batch.push(record);
                    }
                    Err(KafkaError::PartitionEOF(_)) => ended = true,
                    Err(e) => tracing::debug!(error = %e, "replay reader: transient Kafka error"),
                };
                // What is queued goes out at once; wait only when nothing is, for one
                // message, then take what came with it.
                if reader.drain(BATCH, &mut take) == 0 {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(message)) => take(Ok(Consumed::from(&message))),
                        Some(Err(e)) => take(Err(e)),
                        None => {}
                    }
                    reader.drain(BATCH - 1, &mut take);
                }
                if ended {
                    self.distribute(scan, std::mem::take(&mut batch));
                    self.finish(key, scan);
                    return Ok(());
                }
                if !batch.is_empty() && !self.distribute(scan, std::mem::take(&mut batch)) {
                    return Ok(());
                }
                if self.prune(scan) {
                    return Ok(());
                }
            }
        })();
        self.close(key, scan);
        consumer.unassign()?;
        self.idle.lock().push(consumer);
        outcome
    }

    /// Sends a batch of records to every follower that wants them; false when none remain.
    fn distribute(self: &Arc<Self>, scan: &Scan, mut batch: Vec<Arc<EncodedRecord>>) -> bool {
        let Some(last) = batch.last() else {
            return scan.state.lock().keep_open();
        };
        // Sent with the state unlocked: a follower slow to take its batch must not hold up
        // the replays that join this scan meanwhile (they join at or after `position`).
        let followers = {
            let mut state = scan.state.lock();
            state.position = last.meta.offset + 1;
            std::mem::take(&mut state.followers)
        };
        let alone = followers.len() == 1;
        let mut kept = Vec::with_capacity(followers.len());
        let mut detached = Vec::new();
        let mut sent = 0;
        for f in followers {
            if f.cancel.is_cancelled() {
                continue;
            }
            // A follower that joined mid-batch wants only what follows its start.
            let skip = batch.partition_point(|r| r.meta.offset < f.from);
            let Some(first) = batch.get(skip).map(|r| r.meta.offset) else {
                kept.push(f);
                continue;
            };
            let wanted = match alone && skip == 0 {
                true => std::mem::take(&mut batch),
                false => batch[skip..].to_vec(),
            };
            let count = wanted.len() as u64;
            let event = f.cancel.address(&f.request, ReplayEvent::Records(wanted));
            let patience = match alone {
                true => LONE_FOLLOWER_PATIENCE,
                false => FOLLOWER_PATIENCE,
            };
            match patient_send(&self.runtime, &f.tx, event, patience) {
                Ok(()) => {
                    sent += count;
                    kept.push(f);
                }
                Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(_)) => {
                    // A follower that stays slow must not stall the others, nor hold this
                    // thread: it continues on a scan of its own once it has room again.
                    detached.push((f.request, f.tx, f.cancel, first));
                }
            }
        }
        let any = {
            let mut state = scan.state.lock();
            kept.append(&mut state.followers);
            state.followers = kept;
            state.keep_open()
        };
        telemetry::replayed(Tier::Kafka.as_str(), sent);
        for (mut request, tx, cancel, offset) in detached {
            request.start = Start::Offset(offset);
            let pool = self.clone();
            // Waits without a thread: a client that stopped reading (a stalled socket)
            // would otherwise keep a reader blocked, and enough of them every reader.
            self.runtime.spawn(async move {
                let room = tx.reserve().await.is_ok();
                if room && !cancel.is_cancelled() {
                    pool.start_with(request, tx, cancel);
                }
            });
        }
        any
    }

    /// Drops cancelled followers; true when none remain.
    fn prune(&self, scan: &Scan) -> bool {
        let mut state = scan.state.lock();
        state
            .followers
            .retain(|f| !f.cancel.is_cancelled() && !f.tx.is_closed());
        !state.keep_open()
    }

    /// The partition's end: every follower learns the position the scan reached.
    fn finish(&self, key: &ScanKey, scan: &Arc<Scan>) {
        self.close(key, scan);
        let (position, followers) = {
            let mut state = scan.state.lock();
            (state.position, std::mem::take(&mut state.followers))
        };
        for f in followers {
            let end = f.cancel.address(&f.request, ReplayEvent::End { position });
            // A follower with no room gets it when it reads again, without holding this thread.
            if let Err(TrySendError::Full(end)) = f.tx.try_send(end) {
                self.runtime.spawn(async move {
                    let _ = f.tx.send(end).await;
                });
            }
        }
    }

    /// Stops new followers from joining and forgets the scan.
    fn close(&self, key: &ScanKey, scan: &Arc<Scan>) {
        scan.state.lock().open = false;
        let mut scans = self.scans.lock();
        if let Some(list) = scans.get_mut(key) {
            list.retain(|s| !Arc::ptr_eq(s, scan));
            if list.is_empty() {
                scans.remove(key);
            }
        }
    }

    fn watermarks_with_retry(
        &self,
        req: &ReplayRequest,
        cancel: &ReplayHandle,
    ) -> Option<(i64, i64)> {
        let mut delay = Duration::from_millis(self.config.kafka.retry_initial_ms);
        loop {
            match self.offsets.watermarks_blocking(&req.topic, req.partition) {
                Ok(w) => return Some(w),
                Err(_) if cancel.is_cancelled() => return None,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "replay waits for Kafka");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(self.config.kafka.retry_max_ms));
                }
            }
        }
    }
}

/// Records a scan reads below the memory ring, handed to the ring once the scan
/// reaches it: after a restart, when every client resumes from about the same
/// offset, the first scan fills the ring and the rest are served from memory.
struct Backfill {
    start: i64,
    /// Where the ring began when the scan started (`None`: no ring, or the scan starts in it).
    until: Option<i64>,
    /// The newest records read, at most the ring's size (older ones would not fit).
    records: VecDeque<Arc<EncodedRecord>>,
    bytes: usize,
    max_bytes: usize,
}

impl Backfill {
    fn new(start: i64, ring_from: Option<i64>, max_bytes: usize) -> Backfill {
        Backfill {
            start,
            until: ring_from.filter(|&r| start < r && max_bytes > 0),
            records: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Keeps `record` if it is below the ring; hands everything over once the scan reaches the ring.
    fn read(&mut self, route: &TopicRoute, partition: i32, record: &Arc<EncodedRecord>) {
        let Some(until) = self.until else { return };
        if record.meta.offset < until {
            self.bytes += record.size();
            self.records.push_back(record.clone());
            while self.bytes > self.max_bytes {
                let Some(old) = self.records.pop_front() else {
                    break;
                };
                self.bytes -= old.size();
                self.start = old.meta.offset + 1;
            }
        }
        if record.meta.offset + 1 >= until {
            let records = std::mem::take(&mut self.records).into();
            let added = route.ring_backfill(partition, self.start, until, records);
            tracing::debug!(topic = %route.name(), partition, added, "replay backfilled the ring");
            self.until = None;
        }
    }
}
