//! Issue 6: the SSE and long-poll transports, and resuming them from their cursor.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// One SSE message: its id (if any) and its data, as text and as JSON.
#[derive(Debug, Clone)]
pub struct SseMessage {
    pub id: Option<String>,
    pub text: String,
    pub data: Value,
}

/// Reads SSE messages from `url` (sending `last_id` as Last-Event-ID) until `stop` says so;
/// returns them, the response headers, and the number of comment lines seen.
pub fn read_sse(
    url: &str,
    last_id: Option<&str>,
    mut stop: impl FnMut(&[SseMessage]) -> bool,
) -> (Vec<SseMessage>, http::HeaderMap, usize) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let response = request.call().expect("SSE request");
    let headers = response.headers().clone();
    let mut reader = BufReader::new(response.into_body().into_reader());
    let (mut messages, mut comments) = (Vec::new(), 0);
    let (mut id, mut data) = (None, String::new());
    let mut line = String::new();
    while !stop(&messages) {
        line.clear();
        if reader.read_line(&mut line).expect("SSE line") == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if !data.is_empty() {
                let parsed = serde_json::from_str(&data).expect("SSE data is JSON");
                messages.push(SseMessage {
                    id: id.take(),
                    text: data.clone(),
                    data: parsed,
                });
                data.clear();
            }
        } else if line.starts_with(':') {
            comments += 1;
        } else if let Some(v) = line.strip_prefix("data:") {
            // As EventSource reads it: one leading space is dropped, and the lines of one
            // message's data join with line feeds.
            let v = v.strip_prefix(' ').unwrap_or(v);
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v);
        } else if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.to_string());
        }
    }
    (messages, headers, comments)
}

pub fn offsets(messages: &[SseMessage]) -> Vec<i64> {
    messages
        .iter()
        .filter(|m| m.data["type"] == "event")
        .map(|m| m.data["offset"].as_i64().expect("offset"))
        .collect()
}

pub async fn produce(topic: &str, range: std::ops::Range<i64>) {
    let producer = producer();
    for i in range {
        let body = format!(r#"{{"seq":{i}}}"#);
        producer
            .send(topic, Some(b"k"), Some(body.as_bytes()), None)
            .await
            .expect("produce");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_from_last_event_id_with_nothing_missing_or_repeated() {
    let t = topic("sse");
    let gw = Gateway::start(
        &[(&t, 2)],
        "[heartbeat]\nping_interval_secs = 1\ntimeout_secs = 3\n",
    );
    let url = format!("http://127.0.0.1:{}/v1/sse?channel={t}", gw.port);
    // First connection: read until live, let 40 records arrive, take 25 of them and drop.
    let first = {
        let url = url.clone();
        let t = t.clone();
        tokio::spawn(async move {
            let producing = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                produce(&t, 0..40).await;
            });
            let read = tokio::task::spawn_blocking(move || {
                read_sse(&url, None, |m| offsets(m).len() >= 25)
            })
            .await
            .expect("reader");
            producing.await.expect("producer");
            read
        })
    };
    let (messages, headers, _) = first.await.expect("first connection");
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache, no-transform");
    assert_eq!(headers["x-accel-buffering"], "no");
    let last_id = messages
        .iter()
        .rev()
        .find_map(|m| m.id.clone())
        .expect("events carry ids");
    let got_first = offsets(&messages);
    // While disconnected, more records arrive.
    produce(&t, 40..60).await;
    let (resumed, _, comments) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        read_sse(&url, Some(&last_id), move |m| {
            offsets(m).len() >= 60 - 25 && started.elapsed() > Duration::from_millis(2500)
        })
    })
    .await
    .expect("second connection");
    let got_second = offsets(&resumed);
    assert!(comments >= 1, "heartbeat comments arrive");
    // Every record exactly once across the two connections, per partition in order.
    let all: Vec<i64> = got_first.iter().chain(&got_second).copied().collect();
    let mut by_partition = std::collections::BTreeMap::<i64, Vec<i64>>::new();
    for m in messages
        .iter()
        .chain(&resumed)
        .filter(|m| m.data["type"] == "event")
    {
        by_partition
            .entry(m.data["partition"].as_i64().unwrap())
            .or_default()
            .push(m.data["offset"].as_i64().unwrap());
    }
    let total: usize = by_partition.values().map(Vec::len).sum();
    assert_eq!(
        total, 60,
        "60 records, none missing, none repeated: {all:?}"
    );
    for (p, offs) in &by_partition {
        assert!(
            offs.windows(2).all(|w| w[1] == w[0] + 1),
            "partition {p} in order without gaps: {offs:?}"
        );
    }
}

/// The event frames of a poll answer.
fn events_of(page: &Value) -> Vec<Value> {
    page["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter(|f| f["type"] == "event")
        .cloned()
        .collect()
}

/// One long-poll request: (status, JSON body).
fn get(url: String) -> tokio::task::JoinHandle<(u16, Value)> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent.get(&url).call().expect("poll");
        let status = response.status().as_u16();
        (
            status,
            response
                .body_mut()
                .read_json::<Value>()
                .unwrap_or(Value::Null),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_pages_through_records_by_cursor_and_waits_when_there_are_none() {
    let t = topic("poll");
    let gw = Gateway::start(&[(&t, 1)], "");
    let base = format!("http://127.0.0.1:{}/v1/poll?channel={t}", gw.port);
    // No records yet: the poll waits, then answers with no events and a cursor at the live end.
    let started = Instant::now();
    let (status, first) = get(format!("{base}&wait_ms=700")).await.unwrap();
    assert_eq!(status, 200, "{first}");
    assert!(started.elapsed() >= Duration::from_millis(600), "waited");
    assert!(events_of(&first).is_empty(), "{first}");
    let mut cursor = first["cursor"].as_str().expect("cursor").to_string();
    produce(&t, 0..30).await;
    let mut seen = Vec::new();
    while seen.len() < 30 {
        let (status, page) = get(format!("{base}&cursor={cursor}&max=10&wait_ms=5000"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{page}");
        let events = events_of(&page);
        assert!(!events.is_empty() && events.len() <= 10, "{page}");
        seen.extend(events.iter().map(|e| e["offset"].as_i64().unwrap()));
        cursor = page["cursor"].as_str().unwrap().to_string();
    }
    assert_eq!(
        seen,
        (0..30).collect::<Vec<_>>(),
        "every record once, in order"
    );
    // A waiting poll answers as soon as a record arrives.
    let waiting = get(format!("{base}&cursor={cursor}&wait_ms=20000"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    produce(&t, 30..31).await;
    let (_, page) = waiting.await.unwrap();
    assert_eq!(events_of(&page)[0]["offset"], 30, "{page}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered before its wait ran out"
    );
    // A bad cursor is refused with its reason.
    let (status, page) = get(format!("{base}&cursor=p1.%25%25")).await.unwrap();
    assert_eq!(
        (status, page["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
}

/// Issue 16.1: a poll answered before catch-up delivered anything hands out a cursor that
/// names no partition; resuming from it must start at the earliest record, not the live end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_from_a_cursor_naming_no_partition_skips_nothing() {
    let t = topic("pollempty");
    let gw = Gateway::start(&[(&t, 2)], "");
    produce(&t, 0..28).await;
    let base = format!("http://127.0.0.1:{}/v1/poll?channel={t}", gw.port);
    // What a first `from=earliest&wait_ms=0` poll may hand out: no position at all.
    let mut cursor = "p1.".to_string();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let (status, page) = get(format!("{base}&cursor={cursor}&wait_ms=1000"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{page}");
        seen.extend(
            events_of(&page)
                .iter()
                .map(|e| e["offset"].as_i64().unwrap()),
        );
        cursor = page["cursor"].as_str().expect("cursor").to_string();
        if seen.len() >= 28 {
            break;
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..28).collect::<Vec<_>>(),
        "every retained record, once"
    );
    // The same from a first poll that answers at once, as the SDK's does.
    let (_, first) = get(format!("{base}&from=earliest&wait_ms=0"))
        .await
        .unwrap();
    let mut seen: Vec<i64> = events_of(&first)
        .iter()
        .map(|e| e["offset"].as_i64().unwrap())
        .collect();
    let mut cursor = first["cursor"].as_str().expect("cursor").to_string();
    for _ in 0..20 {
        if seen.len() >= 28 {
            break;
        }
        let (_, page) = get(format!("{base}&cursor={cursor}&wait_ms=1000"))
            .await
            .unwrap();
        seen.extend(
            events_of(&page)
                .iter()
                .map(|e| e["offset"].as_i64().unwrap()),
        );
        cursor = page["cursor"].as_str().expect("cursor").to_string();
    }
    assert_eq!(seen.len(), 28, "{seen:?}");
}

/// Issue 16.9: a draining node tells a long-poll client so, with the close frame SSE gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_on_a_draining_node_gets_a_close_frame() {
    let t = topic("polldrain");
    let gw = Gateway::start(&[(&t, 1)], "");
    let base = format!("http://127.0.0.1:{}/v1/poll?channel={t}", gw.port);
    let waiting = get(format!("{base}&wait_ms=20000"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let port = gw.port;
    let drained = tokio::task::spawn_blocking(move || {
        ureq::post(&format!("http://127.0.0.1:{port}/v1/admin/drain"))
            .send_empty()
            .map(|r| r.status().as_u16())
    })
    .await
    .unwrap();
    assert_eq!(drained.ok(), Some(200));
    // The poll that was waiting ends with a close frame and its cursor.
    let (status, page) = waiting.await.unwrap();
    assert_eq!(status, 200, "{page}");
    let close = page["frames"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["type"] == "close"))
        .cloned()
        .unwrap_or_else(|| panic!("no close frame: {page}"));
    assert_eq!(close["code"], 1001, "{close}");
    assert!(page["cursor"].is_string(), "{page}");
    // A new poll is turned away before it subscribes, keeping the client's cursor valid.
    let (status, page) = get(format!("{base}&wait_ms=1000")).await.unwrap();
    assert_eq!(
        (status, page["code"].as_str()),
        (503, Some("draining")),
        "{page}"
    );
}
