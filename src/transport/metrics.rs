//! `GET /metrics`: brings the state gauges and the refusal counters up to date,
//! then renders the Prometheus text of [`crate::telemetry`]'s recorder.

use metrics::{counter, gauge};

use crate::gateway::Gateway;
use crate::stats::stats;

/// The Prometheus text: state gauges and counters are brought up to date first.
pub fn render(gateway: &Gateway) -> String {
    let handle = crate::telemetry::install();
    for route in gateway.services.router.topics() {
        for p in 0..route.partitions() {
            let (Some(high), Some(live)) = (route.high_watermark(p), route.live_offset(p)) else {
                continue;
            };
            gauge!("kgate_consumer_lag_records", "topic" => route.name().to_string(), "partition" => p.to_string())
                .set((high - live).max(0) as f64);
        }
        gauge!("kgate_subscriptions", "topic" => route.name().to_string())
            .set(route.subscription_count() as f64);
        counter!("kgate_decode_failures_total", "topic" => route.name().to_string())
            .absolute(route.codec().failures());
    }
    let s = stats();
    gauge!("kgate_outbox_messages").set(s.outbox_messages.level() as f64);
    gauge!("kgate_outbox_bytes").set(s.outbox_bytes.level() as f64);
    for (action, c) in [
        ("catch_up", &s.slow_consumer_catch_up),
        ("conflated", &s.slow_consumer_conflated),
        ("disconnected", &s.slow_consumer_disconnected),
    ] {
        counter!("kgate_slow_consumer_actions_total", "action" => action).absolute(c.get());
    }
    for (reason, c) in [
        ("connection_attempt_rate", &s.refused_attempt_rate),
        ("max_connections", &s.refused_max_connections),
        ("identity_connections", &s.refused_identity_connections),
        ("http_connections", &s.refused_http_connections),
        ("header_timeout", &s.header_timeouts),
        ("rate_limited_command", &s.rate_limited_commands),
        ("rate_limit_disconnect", &s.rate_limit_disconnects),
        ("oversize_record", &s.oversize_records_skipped),
        ("oversize_message", &s.oversize_messages_closed),
        ("origin", &s.refused_origin),
    ] {
        counter!("kgate_refusals_total", "reason" => reason).absolute(c.get());
    }
    for (reason, c) in [
        ("token", &s.auth_failures),
        ("forbidden", &s.auth_forbidden),
        ("expired_close", &s.token_expired_closes),
    ] {
        counter!("kgate_auth_failures_total", "reason" => reason).absolute(c.get());
    }
    counter!("kgate_published_records_total").absolute(s.published.get());
    if let Some(size) = gateway.services.sessions.blocking().size() {
        gauge!("kgate_session_store_keys").set(size.keys as f64);
        gauge!("kgate_session_store_bytes").set(size.bytes as f64);
    }
    if let Some(rss) = resident_bytes() {
        gauge!("kgate_process_resident_bytes").set(rss as f64);
        let connections = gateway.services.connections.count();
        if connections > 0 {
            gauge!("kgate_process_resident_bytes_per_connection")
                .set(rss as f64 / connections as f64);
        }
    }
    handle.render()
}

/// Resident set size from /proc (Linux); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
