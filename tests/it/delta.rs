//! Issue 21.2: deltas (docs/protocol.md, "Deltas") on WebSocket, SSE and long-poll,
//! applied by a third-party client (Python `websockets`, tests/python/ws_client.py)
//! and by kgate's Rust client; never sent where the client lacks the base (after a
//! resume, a conflated record, a frame that cannot be diffed).

use std::time::Duration;

use kgate_client::Client;
use kgate_client::delta::Deltas;
use serde_json::{Value, json};

use crate::harness::*;
use crate::http_transports::read_sse;

/// A ticker value of record `i`: only the price and size change between records of a symbol.
fn tick(i: usize) -> (&'static str, String) {
    let symbol = ["AAPL", "MSFT", "NVDA"][i % 3];
    let value = json!({"symbol": symbol, "venue": "XNAS", "currency": "USD",
                       "price": 100.0 + i as f64 / 8.0, "size": 100 * i});
    (symbol, value.to_string())
}

async fn produce_values(topic: &str, values: &[(&str, String)]) {
    let producer = producer();
    for (key, value) in values {
        producer
            .send(topic, Some(key.as_bytes()), Some(value.as_bytes()), None)
            .await
            .expect("produce");
    }
}

/// A client subscribed to `channel` from latest with `fields`, and the `subscribed` reply.
async fn subscribe_with(url: &str, channel: &str, fields: Value) -> (Client, Value) {
    let mut client = Client::connect(url).await.expect("connect");
    client
        .subscribe_with(channel, json!("latest"), fields)
        .await
        .expect("subscribe");
    let (reply, _) = client
        .until("subscribed", Duration::from_secs(30))
        .await
        .expect("subscribed");
    (client, reply)
}

/// A client that wants deltas of `channel`, subscribed: from then on ingest makes them.
async fn delta_client(url: &str, channel: &str, fields: Value) -> Client {
    let (client, reply) = subscribe_with(url, channel, fields).await;
    assert_eq!(reply["delta"], true, "{reply}");
    client
}

/// The values a client may not get as deltas: one that is not ASCII, and one with a
/// different header set is still a delta (headers are in the frame), among 60 ticks.
fn feed() -> Vec<(&'static str, String)> {
    let mut values: Vec<(&str, String)> = (0..60).map(tick).collect();
    values[30] = (
        "AAPL",
        json!({"symbol": "AAPL", "note": "Zürich"}).to_string(),
    );
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_and_plain_clients_get_identical_events_in_fewer_bytes() {
    let t = topic("delta");
    let gw = Gateway::start(&[(&t, 1)], "");
    let url = gw.ws_url();
    let mut live = delta_client(&url, &t, json!({"delta": true})).await;
    produce_values(&t, &feed()).await;
    // The Rust client applies deltas inside next(): a delta it cannot apply is an error.
    let rust = read_events(&mut live, 60, Duration::from_secs(30)).await;

    // Read again from the earliest record: the ring holds the records with their deltas.
    let plain = ws_client(&["read", &url, &t, "60"]);
    let delta = ws_client(&["read", &url, &t, "60", "--delta"]);
    let both = ws_client(&["read", &url, &t, "60", "--delta", "--deflate"]);
    assert_eq!(plain["events"].as_array().map(Vec::len), Some(60));
    assert_eq!(delta["events"], plain["events"]);
    assert_eq!(both["events"], plain["events"]);
    assert_eq!(Value::from(rust), plain["events"]);
    assert_eq!(plain["deltas"], 0, "not asked for, never sent");
    // Whole: the first record of each of the 3 keys, the non-ASCII one and the AAPL
    // record after it (its base cannot be diffed).
    assert_eq!(delta["deltas"], 60 - 5, "{}", delta["deltas"]);
    let (plain_bytes, delta_bytes) = (
        plain["bytes"].as_u64().unwrap(),
        delta["bytes"].as_u64().unwrap(),
    );
    eprintln!("60 events: {plain_bytes} bytes of frames, {delta_bytes} with deltas");
    assert!(
        delta_bytes * 2 < plain_bytes,
        "{delta_bytes} vs {plain_bytes}"
    );
}

/// A topic with `delta_keys = 0` sends none; the subscription says so and streams whole frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_without_deltas_grants_none() {
    let t = topic("delta-off");
    let gw = Gateway::start(
        &[],
        &format!("[[topics]]\nname = \"{t}\"\npartitions = 1\ndelta_keys = 0\n"),
    );
    let (mut client, reply) = subscribe_with(&gw.ws_url(), &t, json!({"delta": true})).await;
    assert_eq!(reply.get("delta"), None, "{reply}");
    produce_values(&t, &feed()[..10]).await;
    for _ in 0..10 {
        let text = client.next_text().await.expect("frame").expect("open");
        if text.starts_with('[') {
            panic!("a delta on a topic without deltas: {text}");
        }
    }
}

/// After a resume the client holds nothing: each key's first record comes whole, and a
/// record conflated away by `max_rate` never becomes the base of a delta the client gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_and_conflation_never_send_a_delta_the_client_cannot_apply() {
    let t = topic("delta-resume");
    let gw = Gateway::start(&[(&t, 1)], "");
    let url = gw.ws_url();
    let mut client = Client::connect(&url).await.expect("connect");
    let attached = client.attach("phone").await.expect("attach");
    assert_eq!(attached["resumed"], false);
    client
        .subscribe_with(&t, json!("latest"), json!({"delta": true}))
        .await
        .expect("subscribe");
    client
        .until("live", Duration::from_secs(30))
        .await
        .expect("live");
    let values = feed();
    produce_values(&t, &values[..30]).await;
    let first = read_events(&mut client, 30, Duration::from_secs(30)).await;
    client
        .ack(&t, 0, first[29]["offset"].as_i64().unwrap())
        .await
        .expect("ack");
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.close().await;

    produce_values(&t, &values[30..]).await;
    let mut resumed = Client::connect(&url).await.expect("reconnect");
    let attached = resumed.attach("phone").await.expect("attach");
    assert_eq!(attached["resumed"], true, "{attached}");
    let (reply, _) = resumed
        .until("subscribed", Duration::from_secs(30))
        .await
        .expect("resubscribed");
    assert_eq!(
        reply["delta"], true,
        "the session kept the delta option: {reply}"
    );
    let rest = read_events(&mut resumed, 30, Duration::from_secs(30)).await;
    let offsets: Vec<i64> = rest.iter().map(|e| e["offset"].as_i64().unwrap()).collect();
    assert_eq!(offsets, (30..60).collect::<Vec<_>>());

    // 200 updates of one key as fast as they come, at most 5 a second delivered.
    let mut throttled = delta_client(
        &url,
        &format!("{t}:AAPL"),
        json!({"delta": true, "max_rate": 5}),
    )
    .await;
    let burst: Vec<(&str, String)> = (0..200).map(|i| ("AAPL", tick(3 * i).1)).collect();
    produce_values(&t, &burst).await;
    let last = burst
        .last()
        .map(|(_, v)| serde_json::from_str::<Value>(v).unwrap());
    let mut got = 0;
    loop {
        let event = &read_events(&mut throttled, 1, Duration::from_secs(30)).await[0];
        got += 1;
        if Some(&event["data"]) == last.as_ref() {
            break;
        }
    }
    assert!(got < 100, "{got} of 200 arrived: conflation did not apply");
}

/// SSE and long-poll with `delta=true`: SSE sends delta frames as its messages' data;
/// long-poll answers with full frames as strings and deltas as arrays. Both decode to
/// the frames a plain WebSocket client gets, including a value with line breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_long_poll_carry_deltas_that_decode_to_the_plain_frames() {
    let t = topic("delta-http");
    let gw = Gateway::start(&[(&t, 1)], "");
    let mut values = feed();
    values[40] = (
        "MSFT",
        "{\n  \"symbol\": \"MSFT\",\n  \"pretty\": true\n}".to_string(),
    );
    let sse_url = format!("http://127.0.0.1:{}/v1/sse?channel={t}&delta=true", gw.port);
    let sse = std::thread::spawn(move || {
        read_sse(&sse_url, None, |m| {
            m.iter()
                .filter(|m| m.data["type"] == "event" || m.data.is_array())
                .count()
                >= 60
        })
        .0
    });
    // The stream subscribes from latest: produce once it has.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while topic_stat(gw.port, &t, "subscriptions") < 1 {
        assert!(std::time::Instant::now() < deadline, "SSE never subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce_values(&t, &values).await;
    let messages = tokio::task::spawn_blocking(move || sse.join().expect("SSE reader"))
        .await
        .expect("join");
    let mut plain = subscribed_client(&gw.ws_url(), &t, json!("earliest")).await;
    let expected = read_events(&mut plain, 60, Duration::from_secs(30)).await;

    let mut deltas = Deltas::default();
    let mut sse_events = Vec::new();
    let mut sse_deltas = 0;
    for m in messages {
        sse_deltas += usize::from(m.text.starts_with('['));
        let received = m.text.clone();
        let text = deltas.receive(m.text).expect("SSE delta applies");
        let frame: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {received} made {text}"));
        if frame["type"] == "event" {
            sse_events.push(frame);
        }
    }
    assert_eq!(sse_events, expected);
    assert!(sse_deltas >= 50, "{sse_deltas} deltas over SSE");

    // From offset 0 of partition 0 (cursor `p1.` + base64url of varints 0, 0, 0): a
    // replay the memory ring serves, whose records carry their deltas.
    let poll_url = format!(
        "http://127.0.0.1:{}/v1/poll?channel={t}&cursor=p1.AAAA&delta=true&wait_ms=5000&max=100",
        gw.port
    );
    let page: Value = tokio::task::spawn_blocking(move || {
        ureq::get(&poll_url)
            .call()
            .expect("poll")
            .body_mut()
            .read_json()
            .expect("JSON")
    })
    .await
    .expect("poll");
    let mut deltas = Deltas::default();
    let (mut poll_events, mut poll_deltas) = (Vec::new(), 0);
    for frame in page["frames"].as_array().expect("frames") {
        let text = match frame {
            Value::String(text) => text.clone(),
            Value::Array(_) => {
                poll_deltas += 1;
                frame.to_string()
            }
            other => other.to_string(),
        };
        let frame: Value = serde_json::from_str(&deltas.receive(text).expect("applies")).unwrap();
        if frame["type"] == "event" {
            poll_events.push(frame);
        }
    }
    assert_eq!(poll_events, expected);
    assert!(poll_deltas >= 50, "{poll_deltas} deltas by long-poll");
}
