//! Prometheus metrics at `/metrics`, through the `metrics` facade and its
//! Prometheus exporter (one process-wide recorder: a registry by design).
//!
//! Event-site metrics (connections, deliveries, latency, replays) are recorded
//! here, where they happen; gauges that describe state (lag, outbox depth, store
//! size, memory) and the refusal counters kept in [`crate::stats`] are set at
//! scrape time by the HTTP layer (`transport::metrics`), so the hot paths pay
//! nothing for them.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The transports whose delivery metrics are looked up once, at install, rather than per
/// write (a registry lookup per write cost about 3% of the gateway's CPU at 100k msgs/s).
/// Any other transport name still works, through the registry.
const TRANSPORTS: &[&str] = &["websocket", "sse", "poll", "mqtt", "mqtt-ws"];

/// Delivery metric handles, registered with the recorder by [`install`].
struct DeliveryHandles {
    /// Per entry of [`TRANSPORTS`]: records and bytes delivered.
    per_transport: Vec<(Counter, Counter)>,
    latency: Histogram,
}

static DELIVERY: OnceLock<DeliveryHandles> = OnceLock::new();

/// Latency buckets (seconds): 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Connection lifetime buckets (seconds): 1 s to a day.
const LIFETIME_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    24.0 * 3600.0,
];

/// Installs the recorder (once per process) and starts its upkeep; later calls reuse it.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("kgate_delivery_latency_seconds".into()),
                LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("kgate_connection_lifetime_seconds".into()),
                    LIFETIME_BUCKETS,
                )
            });
        let handle = match builder.map(PrometheusBuilder::install_recorder) {
            Ok(Ok(handle)) => handle,
            // Only reachable if another recorder was installed first: serve an empty one.
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics stays empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        };
        // Histogram samples are folded into buckets here, not only at scrape time.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("kgate-metrics".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .ok();
        DELIVERY.get_or_init(|| DeliveryHandles {
            per_transport: TRANSPORTS
                .iter()
                .map(|&transport| {
                    (
                        counter!("kgate_delivered_records_total", "transport" => transport),
                        counter!("kgate_delivered_bytes_total", "transport" => transport),
                    )
                })
                .collect(),
            latency: histogram!("kgate_delivery_latency_seconds"),
        });
        handle
    })
}

/// A connection opened on `transport`.
pub fn connection_opened(transport: &'static str) {
    counter!("kgate_connections_opened_total", "transport" => transport).increment(1);
    gauge!("kgate_connections_active", "transport" => transport).increment(1.0);
}

/// A WebSocket connection negotiated permessage-deflate.
pub fn deflate_negotiated() {
    counter!("kgate_websocket_deflate_connections_total").increment(1);
}

/// Fetch requests ingest has sent to Kafka so far (from librdkafka's statistics).
pub fn ingest_fetch_requests(total: u64) {
    counter!("kgate_ingest_fetch_requests_total").absolute(total);
}

/// A connection ended: why, and how long it lived.
pub fn connection_closed(transport: &'static str, reason: &'static str, lifetime: Duration) {
    counter!("kgate_connections_closed_total", "transport" => transport, "reason" => reason)
        .increment(1);
    gauge!("kgate_connections_active", "transport" => transport).decrement(1.0);
    histogram!("kgate_connection_lifetime_seconds", "transport" => transport)
        .record(lifetime.as_secs_f64());
}

/// A batch of events written to a client; `newest_timestamp_ms` is the Kafka timestamp of
/// its newest record (one latency sample per write keeps the cost flat at any rate).
pub fn delivered(
    transport: &'static str,
    records: u64,
    bytes: u64,
    newest_timestamp_ms: Option<i64>,
) {
    let handles = DELIVERY.get();
    let cached = handles.and_then(|h| {
        let i = TRANSPORTS.iter().position(|&t| t == transport)?;
        h.per_transport.get(i)
    });
    match cached {
        Some((delivered, sent)) => {
            delivered.increment(records);
            sent.increment(bytes);
        }
        None => {
            counter!("kgate_delivered_records_total", "transport" => transport).increment(records);
            counter!("kgate_delivered_bytes_total", "transport" => transport).increment(bytes);
        }
    }
    if let Some(ts) = newest_timestamp_ms {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // A producer clock ahead of ours is not a negative latency.
        let seconds = (now - ts).max(0) as f64 / 1000.0;
        match handles {
            Some(h) => h.latency.record(seconds),
            None => histogram!("kgate_delivery_latency_seconds").record(seconds),
        }
    }
}

/// A replay began on `tier` (`memory` or `kafka`).
pub fn replay_started(tier: &'static str) {
    counter!("kgate_replays_started_total", "tier" => tier).increment(1);
}

/// A replay reached its hand-off point on `tier`, having delivered `records`.
pub fn replay_completed(tier: &'static str) {
    counter!("kgate_replays_completed_total", "tier" => tier).increment(1);
}

/// Records read for replays on `tier`.
pub fn replayed(tier: &'static str, records: u64) {
    counter!("kgate_replayed_records_total", "tier" => tier).increment(records);
}
