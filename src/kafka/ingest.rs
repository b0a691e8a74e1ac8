//! Live ingest: one consumer with every partition of every served topic assigned
//! (no group balancing), decoding each record once and handing it to the router.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::EncodedRecord;
use crate::codec::delta::Bases;
use crate::config::Config;
use crate::router::{Router, TopicRoute};

/// Why ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot create or assign the ingest consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot spawn the ingest thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// How ingest fetches while no client subscribes to anything. Only for the embedded
/// broker: it holds every fetch for the full wait and each one costs it sqlite queries,
/// so an idle gateway fetching continuously keeps a core busy. Real Kafka answers a fetch
/// when data arrives and costs nothing while waiting.
#[derive(Debug, Clone, Copy)]
pub struct IdleFetch {
    /// Fetch once this often while idle (lag and the ring stay this fresh)...
    pub every: Duration,
    /// ...staying unpaused this long each time (a few fetch waits).
    pub window: Duration,
}

/// The running ingest thread; stopped and joined on drop.
pub struct Ingest {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ingest {
    /// Assigns every partition of the router's topics at its live position and starts consuming.
    /// With `idle`, partitions are paused while the router has no subscription.
    pub fn start(
        config: &Config,
        router: Arc<Router>,
        idle: Option<IdleFetch>,
    ) -> Result<Ingest, IngestError> {
        let mut settings = super::consumer_config(config, "ingest");
        if idle.is_some() {
            // librdkafka waits this long after a resume before it fetches (default 500 ms):
            // longer than an idle fetch window, which would then never fetch.
            settings.set("fetch.error.backoff.ms", "20");
        }
        let consumer: BaseConsumer<IngestContext> = settings
            // Large fetches keep up with fan-out; the queue is bounded by librdkafka.
            .set("queued.max.messages.kbytes", "65536")
            // Statistics carry each partition's high watermark (for lag) at no extra request.
            .set("statistics.interval.ms", "1000")
            .create_with_context(IngestContext {
                router: router.clone(),
            })?;
        assign_live(&consumer, &router)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kgate-ingest".into())
            .spawn({
                let stop = stop.clone();
                let max_bytes = config.limits.max_outbound_record_bytes;
                move || run(consumer, router, stop, max_bytes, idle)
            })?;
        Ok(Ingest {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Receives librdkafka's statistics on the ingest thread and records high watermarks.
struct IngestContext {
    router: Arc<Router>,
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        // Readiness: librdkafka has a live connection to at least one broker.
        let up = statistics
            .brokers
            .values()
            .any(|b| b.state == "UP" && b.nodeid >= 0);
        self.router.set_kafka_reachable(up);
        let fetches: i64 = statistics
            .brokers
            .values()
            .filter_map(|b| b.req.get("Fetch"))
            .sum();
        crate::telemetry::ingest_fetch_requests(fetches.max(0) as u64);
        for (name, topic) in &statistics.topics {
            let Some(route) = self.router.topic(name) else {
                continue;
            };
            for (partition, p) in &topic.partitions {
                if *partition >= 0 && p.hi_offset >= 0 {
                    route.set_high_watermark(*partition, p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for IngestContext {}

/// Assigns every partition of the router's topics at the next offset it will dispatch.
fn assign_live<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    router: &Router,
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for route in router.topics().filter(|r| !r.is_deleted()) {
        for p in 0..route.partitions() {
            let offset = route.live_offset(p).unwrap_or(0);
            tpl.add_partition_offset(route.name(), p, Offset::Offset(offset))?;
        }
    }
    consumer.assign(&tpl)
}

/// Pauses and resumes fetching for [`IdleFetch`].
struct Pacer {
    idle: IdleFetch,
    /// While paused: when the next fetch window opens. While fetching: `None`.
    paused_until: Option<Instant>,
    /// When the current fetch window opened.
    resumed_at: Instant,
}

impl Pacer {
    /// Pauses or resumes every assigned partition as the router's subscriptions require;
    /// returns how long the next poll may wait.
    fn pace(&mut self, consumer: &BaseConsumer<IngestContext>, router: &Router) -> Duration {
        let now = Instant::now();
        let idle = router.topics().all(|t| t.subscription_count() == 0);
        match self.paused_until {
            Some(until) if !idle || now >= until => {
                // Assigned afresh at the next offsets to dispatch: nothing skipped, nothing
                // repeated. (librdkafka's pause/resume fetched again only after seconds.)
                if let Err(e) = assign_live(consumer, router) {
                    tracing::warn!(error = %e, "ingest: cannot resume fetching");
                    return POLL;
                }
                self.paused_until = None;
                self.resumed_at = now;
            }
            Some(until) => return (until - now).min(POLL),
            None if idle && now.duration_since(self.resumed_at) >= self.idle.window => {
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "ingest: cannot pause fetching");
                    return POLL;
                }
                self.paused_until = Some(now + self.idle.every);
            }
            None => {}
        }
        POLL
    }
}

/// The delta bases of `route`'s topic while a subscription wants its deltas; dropped
/// (their memory with them) while none does.
fn delta_bases<'a>(bases: &'a mut Vec<Option<Bases>>, route: &TopicRoute) -> Option<&'a mut Bases> {
    let id = route.id() as usize;
    if bases.len() <= id {
        bases.resize_with(id + 1, || None);
    }
    let slot = &mut bases[id];
    if route.delta_keys() == 0 || !route.wants_deltas() {
        *slot = None;
        return None;
    }
    Some(slot.get_or_insert_with(|| Bases::new(route.id(), route.delta_keys())))
}

/// Records dispatched together at most (what one poll round finds ready).
const BATCH: usize = 64;

/// The longest single poll: how often `stop` and the pacer are looked at.
const POLL: Duration = Duration::from_millis(100);

fn run(
    consumer: BaseConsumer<IngestContext>,
    router: Arc<Router>,
    stop: Arc<AtomicBool>,
    max_bytes: usize,
    idle: Option<IdleFetch>,
) {
    router.set_ready(true);
    let mut last_error_log: Option<Instant> = None;
    let mut pacer = idle.map(|idle| Pacer {
        idle,
        paused_until: None,
        resumed_at: Instant::now(),
    });
    let mut layout = router.layout_version();
    // Per topic (by id): the last record of each key, while some subscription wants deltas.
    let mut bases: Vec<Option<Bases>> = Vec::new();
    // Reused by every poll round.
    let mut batch: Vec<Arc<EncodedRecord>> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Acquire) {
        let mut wait = match &mut pacer {
            Some(pacer) => pacer.pace(&consumer, &router),
            None => POLL,
        };
        // A topic gained partitions or was deleted: assign afresh (a paused pacer will).
        let paused = pacer.as_ref().is_some_and(|p| p.paused_until.is_some());
        let current = router.layout_version();
        if current != layout && !paused {
            match assign_live(&consumer, &router) {
                Ok(()) => layout = current,
                Err(e) => tracing::warn!(error = %e, "ingest: cannot assign the new partitions"),
            }
        }
        // What is ready now goes out as one batch per topic: each outbox is locked once
        // per batch instead of once per record. Nothing waits to fill a batch.
        batch.clear();
        let mut batch_route: Option<&TopicRoute> = None;
        while batch.len() < BATCH {
            match consumer.poll(std::mem::replace(&mut wait, Duration::ZERO)) {
                None => break,
                Some(Ok(message)) => {
                    let Some(route) = router.topic(rdkafka::Message::topic(&message)) else {
                        continue;
                    };
                    if let Some(previous) = batch_route.filter(|r| !std::ptr::eq(*r, route)) {
                        router.dispatch(previous, &batch);
                        batch.clear();
                    }
                    batch_route = Some(route);
                    let mut record = super::encode_message(
                        route.name(),
                        &super::Consumed::from(&message),
                        route.codec(),
                        max_bytes,
                    );
                    match delta_bases(&mut bases, route) {
                        Some(bases) => {
                            bases.diff(&mut record);
                            let record = Arc::new(record);
                            bases.remember(&record);
                            batch.push(record);
                        }
                        None => batch.push(Arc::new(record)),
                    }
                }
                Some(Err(e)) => {
                    // librdkafka reconnects by itself; log at most every 5 s so an outage is visible, not noisy.
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(error = %e, "ingest: Kafka error (librdkafka retries)");
                        last_error_log = Some(Instant::now());
                    }
                    break;
                }
            }
        }
        if let Some(route) = batch_route {
            router.dispatch(route, &batch);
        }
    }
    router.set_ready(false);
}
