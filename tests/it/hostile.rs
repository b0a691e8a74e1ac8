//! Issue 17: inputs from a hostile-input run that once panicked a connection, held
//! resources without limit or answered wrongly; each gets a clear refusal now, and
//! nothing the connection registered outlives it.

use std::time::{Duration, Instant};

use kgate::client::{Client, Incoming};
use serde_json::{Value, json};

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(60);

/// The next frame, skipping nothing; panics on a close or an error.
async fn next_frame(c: &mut Client) -> Value {
    match c.next_within(WAIT).await {
        Ok(Incoming::Frame(f)) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// A gauge or counter from `/metrics` (the sum over its label sets matching `labels`).
fn metric(port: u16, name: &str, labels: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").expect("metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The subscription count `/v1/topics` reports for `topic`.
fn subscriptions(port: u16, topic: &str) -> i64 {
    let (_, body) = http_get(port, "/v1/topics").expect("topics");
    let topics: Value = serde_json::from_str(&body).expect("topics JSON");
    topics["topics"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == topic))
        .and_then(|t| t["subscriptions"].as_i64())
        .unwrap_or(-1)
}

/// 17.1: a `max_rate` so small that its interval overflows once panicked the connection
/// and leaked its subscription and outbox; now it is `invalid_frame`, and a connection's
/// subscriptions and gauge are released when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_max_rates_are_refused_and_connections_release_everything() {
    let t = topic("hostile-rate");
    let gw = Gateway::start(&[(&t, 1)], "");
    let mut c = Client::connect(&gw.ws_url()).await.expect("connect");
    for rate in [json!(1e-300), json!(1e-19), json!(0.0005), json!(5000)] {
        c.send_text(json!({"type": "subscribe", "id": 1, "channel": t, "max_rate": rate}).to_string())
            .await
            .expect("send");
        let f = next_frame(&mut c).await;
        assert_eq!(f["code"], "invalid_frame", "max_rate {rate}: {f}");
    }
    // The slowest rate allowed works: the first value of a key goes out at once.
    c.send_text(json!({"type": "subscribe", "id": 2, "channel": t, "max_rate": 0.001}).to_string())
        .await
        .expect("send");
    c.until("live", WAIT).await.expect("live");
    producer()
        .send(&t, Some(b"k"), Some(b"{}"), None)
        .await
        .expect("produce");
    let (event, _) = c.until("event", WAIT).await.expect("event");
    assert_eq!(event["offset"], 0);
    assert_eq!(subscriptions(gw.port, &t), 1);
    c.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscriptions(gw.port, &t) != 0
        || metric(gw.port, "kgate_connections_active", "websocket") != 0.0
    {
        assert!(Instant::now() < deadline, "subscription or gauge left behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 17.8: acks count against the command rate like every command (they once bypassed it:
/// 20,000 acks got 20,000 `no_session` errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_flood_is_rate_limited_like_any_command() {
    let t = topic("hostile-acks");
    let gw = Gateway::start(
        &[(&t, 1)],
        "[limits]\ncommands_per_sec = 5\ncommands_burst = 5\nmax_rate_limited_commands = 10\n",
    );
    let mut c = Client::connect(&gw.ws_url()).await.expect("connect");
    for i in 0..500 {
        let ack = json!({"type": "ack", "topic": t, "partition": 0, "offset": i});
        if c.send_text(ack.to_string()).await.is_err() {
            break;
        }
    }
    let (mut no_session, mut limited) = (0, 0);
    let close = loop {
        match c.next_within(WAIT).await {
            Ok(Incoming::Frame(f)) if f["code"] == "no_session" => no_session += 1,
            Ok(Incoming::Frame(f)) if f["code"] == "rate_limited" => limited += 1,
            Ok(Incoming::Frame(f)) => panic!("unexpected {f}"),
            Ok(Incoming::Closed(close)) => break close.map(|c| c.0),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(close, Some(4029), "{no_session} no_session, {limited} rate_limited");
    assert!(no_session <= 7, "only the burst was executed: {no_session}");
    assert!(limited >= 10, "{limited}");
}
