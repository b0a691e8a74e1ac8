//! Issue 2: records produced to Kafka reach WebSocket clients.

use std::collections::BTreeSet;
use std::time::Duration;

use kgate_client::{Client, Incoming};
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::{Value, json};

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(60);

/// Produces `n` JSON records with keys `k0..k{keys}`; returns (partition, offset) of each.
async fn produce(topic: &str, n: usize, keys: usize) -> Vec<(i32, i64)> {
    let producer = producer();
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let sends = chunk.iter().map(|i| {
            let key = format!("k{}", i % keys.max(1));
            let body = json!({"seq": i}).to_string();
            let producer = producer.clone();
            let topic = topic.to_string();
            async move {
                producer
                    .send(&topic, Some(key.as_bytes()), Some(body.as_bytes()), None)
                    .await
            }
        });
        for d in futures_util::future::join_all(sends).await {
            let d = d.expect("produce");
            out.push((d.partition, d.offset));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_receive_full_event_frames() {
    let t = topic("recv");
    let gw = Gateway::start(&[(&t, 3)], "");
    let mut client = subscribed_client(&gw.ws_url(), &t, json!("latest")).await;
    let producer = producer();
    let headers = OwnedHeaders::new().insert(Header {
        key: "source",
        value: Some("test"),
    });
    let d = producer
        .send(&t, Some(b"AAPL"), Some(br#"{"price": 1.5}"#), Some(headers))
        .await
        .expect("produce");
    let events = read_events(&mut client, 1, WAIT).await;
    let e = &events[0];
    assert_eq!(e["topic"], t.as_str());
    assert_eq!(e["partition"], d.partition);
    assert_eq!(e["offset"], d.offset);
    assert_eq!(e["key"], "AAPL");
    assert_eq!(e["headers"], json!({"source": "test"}));
    assert_eq!(e["data"], json!({"price": 1.5}));
    assert!(
        e["timestamp"]
            .as_i64()
            .is_some_and(|ts| ts > 1_600_000_000_000),
        "{e}"
    );
    assert!(e.get("deleted").is_none(), "{e}");
    // A tombstone (null value) becomes a delete event that carries the key.
    let d = producer
        .send(&t, Some(b"AAPL"), None, None)
        .await
        .expect("produce a tombstone");
    let events = read_events(&mut client, 1, WAIT).await;
    let e = &events[0];
    assert_eq!(
        (e["offset"].as_i64(), e["key"].as_str()),
        (Some(d.offset), Some("AAPL"))
    );
    assert_eq!(e["deleted"], true, "{e}");
    assert!(
        e.get("data").is_none() && e.get("data_b64").is_none(),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_filter_delivers_only_that_key() {
    let t = topic("keys");
    let gw = Gateway::start(&[(&t, 3)], "");
    let mut k1 = subscribed_client(&gw.ws_url(), &format!("{t}:k1"), json!("latest")).await;
    let produced = produce(&t, 300, 3).await;
    let expected: BTreeSet<(i32, i64)> = produced
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 1)
        .map(|(_, p)| *p)
        .collect();
    let events = read_events(&mut k1, expected.len(), WAIT).await;
    assert!(events.iter().all(|e| e["key"] == "k1"));
    let got: BTreeSet<(i32, i64)> = events
        .iter()
        .map(|e| {
            (
                e["partition"].as_i64().unwrap() as i32,
                e["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    // Nothing else arrives for that channel.
    let extra = k1.next_within(Duration::from_millis(500)).await;
    assert!(
        !matches!(extra, Ok(Incoming::Frame(ref f)) if f["type"] == "event"),
        "{extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_earliest_offset_and_timestamp() {
    let t = topic("start");
    let gw = Gateway::start(&[(&t, 1)], "");
    produce(&t, 10, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let middle = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(100)).await;
    produce(&t, 10, 1).await;

    // earliest: every offset, then the live marker, then live records with no gap.
    let mut c = subscribed_client(&gw.ws_url(), &t, json!("earliest")).await;
    let events = read_events(&mut c, 20, WAIT).await;
    assert_eq!(by_partition(&events)[&0], (0..20).collect::<Vec<_>>());
    let (live, _) = c.until("live", WAIT).await.expect("live marker");
    assert_eq!(live["channel"], t.as_str());
    produce(&t, 5, 1).await;
    let events = read_events(&mut c, 5, WAIT).await;
    assert_eq!(by_partition(&events)[&0], (20..25).collect::<Vec<_>>());

    // explicit offset
    let mut c = subscribed_client(&gw.ws_url(), &t, json!({"offsets": {"0": 15}})).await;
    let events = read_events(&mut c, 10, WAIT).await;
    assert_eq!(by_partition(&events)[&0], (15..25).collect::<Vec<_>>());

    // timestamp: the first record at or after `middle` is offset 10
    let mut c = subscribed_client(&gw.ws_url(), &t, json!({"timestamp": middle})).await;
    let events = read_events(&mut c, 15, WAIT).await;
    assert_eq!(by_partition(&events)[&0], (10..25).collect::<Vec<_>>());

    // A timestamp after every record starts at the live end, whatever the broker answers
    // for it (tansu answers offset 0; issue 16.2): no replay, then live records.
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1_000;
    let mut c = subscribed_client(&gw.ws_url(), &t, json!({"timestamp": after})).await;
    let (_, before_live) = c.until("live", WAIT).await.expect("live marker");
    let early = c.next_within(Duration::from_millis(500)).await;
    assert!(
        before_live.iter().all(|f| f["type"] != "event")
            && !matches!(early, Ok(Incoming::Frame(ref f)) if f["type"] == "event"),
        "nothing replayed: {before_live:?} {early:?}"
    );
    produce(&t, 3, 1).await;
    let events = read_events(&mut c, 3, WAIT).await;
    assert_eq!(by_partition(&events)[&0], (25..28).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_preserved_per_partition_across_100k_records() {
    let t = topic("order");
    let gw = Gateway::start(&[(&t, 3)], "");
    let mut c = subscribed_client(&gw.ws_url(), &t, json!("latest")).await;
    let reader =
        tokio::spawn(async move { read_events(&mut c, 100_000, Duration::from_secs(600)).await });
    let produced = produce(&t, 100_000, 97).await;
    let events = reader.await.expect("reader");
    let got = by_partition(&events);
    let mut want = Received::new();
    for (p, o) in produced {
        want.entry(p as i64).or_default().push(o);
    }
    for offsets in want.values_mut() {
        offsets.sort_unstable();
    }
    assert_eq!(got, want, "every offset, once, in order per partition");
    // seq numbers of one key are increasing too (same key, same partition)
    let mut last_seq_by_key = std::collections::HashMap::new();
    for e in &events {
        let seq = e["data"]["seq"].as_i64().unwrap();
        let prev = last_seq_by_key.insert(e["key"].as_str().unwrap().to_string(), seq);
        assert!(prev.is_none_or(|p| p < seq), "key order broken at {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_clients_each_get_every_record() {
    let t = topic("fanout");
    let gw = Gateway::start(&[(&t, 3)], "");
    let url = gw.ws_url();
    let mut clients = Vec::new();
    for chunk in 0..10 {
        let connects = (0..100).map(|_| subscribed_client(&url, &t, json!("latest")));
        clients.extend(futures_util::future::join_all(connects).await);
        assert_eq!(clients.len(), (chunk + 1) * 100);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move { read_offsets(&mut c, 1000, Duration::from_secs(300)).await })
        })
        .collect();
    let produced = produce(&t, 1000, 10).await;
    let mut want = Received::new();
    for (p, o) in produced {
        want.entry(p as i64).or_default().push(o);
    }
    want.values_mut().for_each(|v| v.sort_unstable());
    for (i, reader) in readers.into_iter().enumerate() {
        let got = reader.await.expect("reader");
        assert_eq!(got, want, "client {i}: no loss, no duplicate, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_codes_and_nothing_else_is_affected() {
    let t = topic("bad");
    let gw = Gateway::start(
        &[(&t, 1)],
        "[websocket]\nmax_command_bytes = 1024\nmax_message_bytes = 8192\nmax_frame_bytes = 8192\n",
    );
    let url = gw.ws_url();
    let mut bystander = subscribed_client(&url, &t, json!("latest")).await;
    let mut c = Client::connect(&url).await.expect("connect");

    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "invalid_json"),
        (r#"{"type":"dance","id":1}"#.into(), "unknown_type"),
        (r#"{"type":"subscribe","id":2}"#.into(), "invalid_frame"),
        (
            r#"{"type":"subscribe","id":3,"channel":"no-such-topic"}"#.into(),
            "unknown_topic",
        ),
        (
            r#"{"type":"subscribe","id":4,"channel":"bad topic!"}"#.into(),
            "invalid_channel",
        ),
        (
            format!(r#"{{"type":"subscribe","id":5,"channel":"{t}:"}}"#),
            "invalid_channel",
        ),
        (
            format!(
                r#"{{"type":"subscribe","id":6,"channel":"{t}","from":{{"offsets":{{"7":0}}}}}}"#
            ),
            "invalid_position",
        ),
        (
            format!(r#"{{"type":"subscribe","id":7,"channel":"{t}","from":"yesterday"}}"#),
            "invalid_position",
        ),
        (
            format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000)),
            "message_too_large",
        ),
        (
            r#"{"type":"unsubscribe","id":8,"channel":"x"}"#.into(),
            "not_subscribed",
        ),
    ];
    for (text, code) in &cases {
        c.send_text(text.clone()).await.expect("send");
        let (err, _) = c
            .until("error", WAIT)
            .await
            .unwrap_or_else(|e| panic!("{code}: {e}"));
        assert_eq!(err["code"], *code, "for input {text}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The same connection still works.
    c.subscribe(&t, json!("latest")).await.expect("subscribe");
    c.until("subscribed", WAIT).await.expect("subscribed");
    produce(&t, 50, 5).await;
    assert_eq!(read_events(&mut c, 50, WAIT).await.len(), 50);

    // A message over the WebSocket limit closes that connection with 1009 ...
    let mut big = Client::connect(&url).await.expect("connect");
    big.send_text("x".repeat(20_000)).await.expect("send");
    let closed = loop {
        match big.next_within(WAIT).await {
            Ok(Incoming::Closed(c)) => break c,
            Ok(Incoming::Frame(_)) => continue,
            Err(e) => panic!("expected close 1009, got {e}"),
        }
    };
    assert_eq!(closed.map(|(code, _)| code), Some(1009));
    // ... and the bystander saw every record throughout.
    produce(&t, 50, 5).await;
    let events = read_events(&mut bystander, 100, WAIT).await;
    assert_eq!(by_partition(&events)[&0], (0..100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_twice_and_unsubscribing() {
    let t = topic("unsub");
    let gw = Gateway::start(&[(&t, 1)], "");
    let mut c = subscribed_client(&gw.ws_url(), &t, json!("latest")).await;
    c.subscribe(&t, json!("latest")).await.expect("send");
    let (err, _) = c.until("error", WAIT).await.expect("error");
    assert_eq!(err["code"], "already_subscribed");
    let id = c.unsubscribe(&t).await.expect("send");
    let (reply, _) = c.until("unsubscribed", WAIT).await.expect("unsubscribed");
    assert_eq!(reply["id"], Value::from(id));
    produce(&t, 5, 1).await;
    match c.next_within(Duration::from_millis(700)).await {
        Ok(Incoming::Frame(f)) => assert_ne!(f["type"], "event", "no events after unsubscribe"),
        _ => {}
    }
}
