//! Process-wide counters: the one registry of mutable global state, read by
//! `/v1/stats` (and by the metrics exporter once it exists).

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use serde_json::{Value, json};

/// A named monotonic counter or gauge.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Subtracts `n` (gauges only).
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    /// Raises the value to `n` if it is lower (high-water marks).
    pub fn max(&self, n: u64) {
        self.0.fetch_max(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge that many threads move at high rates (every connection's drain moves the outbox
/// gauges): each thread adds to a shard on a cache line of its own, and a read sums them.
/// One shared atomic bounced its cache line between the cores at every delivery.
#[derive(Debug, Default)]
pub struct Gauge([Shard; SHARDS]);

/// Shards of a [`Gauge`]; threads beyond this many share them.
const SHARDS: usize = 8;

/// One shard, alone on its cache line (128 bytes: adjacent-line prefetch pairs lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(AtomicI64);

impl Gauge {
    fn shard(&self) -> &AtomicI64 {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        &self.0[INDEX.with(|i| *i)].0
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.shard().fetch_add(n as i64, Ordering::Relaxed);
    }
    /// Subtracts `n`.
    pub fn sub(&self, n: u64) {
        self.shard().fetch_sub(n as i64, Ordering::Relaxed);
    }
    /// The current value. Pushes add once per dispatched batch, so a drain may subtract
    /// first: the gauge then reads 0 for that moment rather than a negative value.
    pub fn level(&self) -> u64 {
        self.0
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum::<i64>()
            .max(0) as u64
    }
}

/// Every counter kgate keeps.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records queued in all outboxes now, and their bytes.
    pub outbox_messages: Gauge,
    pub outbox_bytes: Gauge,
    /// The most records and bytes any one outbox has held.
    pub outbox_max_messages_seen: Counter,
    pub outbox_max_bytes_seen: Counter,
    /// Slow-consumer actions.
    pub slow_consumer_catch_up: Counter,
    pub slow_consumer_conflated: Counter,
    pub slow_consumer_disconnected: Counter,
    /// Refusals.
    pub refused_attempt_rate: Counter,
    pub refused_max_connections: Counter,
    pub refused_identity_connections: Counter,
    /// Sockets closed at accept: `server.max_http_connections` were open.
    pub refused_http_connections: Counter,
    /// HTTP connections closed for not sending their headers in time.
    pub header_timeouts: Counter,
    pub rate_limited_commands: Counter,
    pub rate_limit_disconnects: Counter,
    pub oversize_records_skipped: Counter,
    /// Record values that did not decode in their topic's format (skipped or passed raw).
    pub decode_failures: Counter,
    pub oversize_messages_closed: Counter,
    pub heartbeat_timeouts: Counter,
    pub idle_timeouts: Counter,
    /// Security: tokens refused (401), permissions refused (403 and `forbidden` errors),
    /// browser origins refused, connections closed at token expiry.
    pub auth_failures: Counter,
    pub auth_forbidden: Counter,
    pub refused_origin: Counter,
    pub token_expired_closes: Counter,
    /// Records produced through `POST /v1/publish/{topic}`.
    pub published: Counter,
}

/// The process's counters.
pub fn stats() -> &'static Stats {
    static STATS: std::sync::OnceLock<Stats> = std::sync::OnceLock::new();
    STATS.get_or_init(Stats::default)
}

impl Stats {
    /// All counters as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "outbox": {
                "messages": self.outbox_messages.level(),
                "bytes": self.outbox_bytes.level(),
                "max_messages_seen": self.outbox_max_messages_seen.get(),
                "max_bytes_seen": self.outbox_max_bytes_seen.get(),
            },
            "slow_consumer": {
                "catch_up": self.slow_consumer_catch_up.get(),
                "conflated": self.slow_consumer_conflated.get(),
                "disconnected": self.slow_consumer_disconnected.get(),
            },
            "refused": {
                "connection_attempt_rate": self.refused_attempt_rate.get(),
                "max_connections": self.refused_max_connections.get(),
                "identity_connections": self.refused_identity_connections.get(),
                "http_connections": self.refused_http_connections.get(),
                "header_timeouts": self.header_timeouts.get(),
                "rate_limited_commands": self.rate_limited_commands.get(),
                "rate_limit_disconnects": self.rate_limit_disconnects.get(),
                "oversize_records_skipped": self.oversize_records_skipped.get(),
                "oversize_messages_closed": self.oversize_messages_closed.get(),
            },
            "heartbeat": {
                "timeouts": self.heartbeat_timeouts.get(),
                "idle_timeouts": self.idle_timeouts.get(),
            },
            "auth": {
                "failures": self.auth_failures.get(),
                "forbidden": self.auth_forbidden.get(),
                "origin_refused": self.refused_origin.get(),
                "expired_closes": self.token_expired_closes.get(),
            },
            "published": self.published.get(),
            "decode_failures": self.decode_failures.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Gauge;

    #[test]
    fn a_gauge_subtracted_before_it_is_added_reads_zero_not_a_wrapped_value() {
        let gauge = Gauge::default();
        gauge.sub(3);
        assert_eq!(gauge.level(), 0);
        gauge.add(5);
        assert_eq!(gauge.level(), 2);
    }

    #[test]
    fn a_gauge_sums_what_every_thread_added_and_subtracted() {
        let gauge = std::sync::Arc::new(Gauge::default());
        let threads: Vec<_> = (0..12)
            .map(|i| {
                let gauge = gauge.clone();
                std::thread::spawn(move || {
                    gauge.add(100 + i);
                    gauge.sub(i);
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(gauge.level(), 1200);
        // Subtracted on another thread than the one that added.
        gauge.sub(200);
        assert_eq!(gauge.level(), 1000);
    }
}
