//! permessage-deflate (docs/protocol.md, "Compression") with a third-party client, the
//! `websockets` package (tests/python/ws_client.py), and a bare socket that shows
//! which frames went compressed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

/// `n` ticker records keyed by symbol.
async fn produce_ticks(topic: &str, n: usize) {
    let producer = producer();
    for i in 0..n {
        let symbol = ["AAPL", "MSFT", "NVDA"][i % 3];
        let value = json!({"symbol": symbol, "price": 100.0 + i as f64 / 8.0, "size": 100 * i, "venue": "XNAS"});
        producer
            .send(
                topic,
                Some(symbol.as_bytes()),
                Some(value.to_string().as_bytes()),
                None,
            )
            .await
            .expect("produce");
    }
}

fn metric(port: u16, name: &str) -> f64 {
    let (_, text) = http_get(port, "/metrics").expect("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_and_plain_clients_get_identical_events() {
    let t = topic("deflate");
    let gw = Gateway::start(&[(&t, 1)], "");
    produce_ticks(&t, 60).await;
    let url = gw.ws_url();
    let compressed = ws_client(&["read", &url, &t, "60", "--deflate"]);
    let plain = ws_client(&["read", &url, &t, "60"]);
    assert_eq!(
        compressed["extensions"],
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert_eq!(plain["extensions"], Value::Null, "not offered, not used");
    assert_eq!(plain["events"].as_array().map(Vec::len), Some(60));
    assert_eq!(compressed["events"], plain["events"]);

    // On the wire: every event frame had RSV1 set and inflated to the plain frame;
    // the gateway's own frames (welcome, subscribed, live) went uncompressed.
    let raw = ws_client(&["raw", "127.0.0.1", &gw.port.to_string(), &t, "60"]);
    assert_eq!(raw["events"], plain["events"]);
    assert_eq!(raw["compressed"], 60, "{raw}");
    let sizes = raw["sizes"].as_array().unwrap();
    let wire: u64 = sizes.iter().map(|s| s["wire"].as_u64().unwrap()).sum();
    let frames: u64 = sizes.iter().map(|s| s["frame"].as_u64().unwrap()).sum();
    assert!(wire < frames, "{wire} compressed bytes for {frames}");
    eprintln!(
        "60 ticker events: {frames} bytes of frames went as {wire} ({:.0}%)",
        100.0 * wire as f64 / frames as f64
    );
    assert_eq!(
        metric(gw.port, "kgate_websocket_deflate_connections_total"),
        2.0
    );

    // Turned off, the offer is declined and every frame goes plain.
    let off = Gateway::start(&[(&t, 1)], "[websocket]\ndeflate = false\n");
    let raw = ws_client(&["raw", "127.0.0.1", &off.port.to_string(), &t, "60"]);
    assert_eq!(raw["extensions"], json!([]));
    assert_eq!(raw["compressed"], 0);
    assert_eq!(raw["events"], plain["events"]);
}

/// A decompression bomb and a message that inflates past `websocket.max_message_bytes`
/// are refused with 1009, each on its own connection; a client beside them streams on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflating_past_the_limit_closes_with_1009_and_others_stream_on() {
    let t = topic("deflate-bomb");
    let gw = Gateway::start(&[(&t, 1)], "");
    let url = gw.ws_url();
    let mut watcher = subscribed_client(&url, &t, json!("latest")).await;
    // 10 MB of spaces: a frame of about 10 KB.
    let bomb = ws_client(&["send", &url, "10000000", "bomb"]);
    assert_eq!(bomb["close_code"], 1009, "{bomb}");
    // 100 KB of text that compresses to less than the 64 KiB frame limit.
    let big = ws_client(&["send", &url, "100000", "text"]);
    assert_eq!(big["close_code"], 1009, "{big}");
    gw.wait_log("inbound message too big", Duration::from_secs(5));
    produce_ticks(&t, 5).await;
    let events = read_events(&mut watcher, 5, Duration::from_secs(30)).await;
    let offsets: Vec<i64> = events
        .iter()
        .map(|e| e["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
}
