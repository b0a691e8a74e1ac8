//! Issue 17: inputs from a hostile-input run that once panicked a connection, held
//! resources without limit or answered wrongly; each gets a clear refusal now, and
//! nothing the connection registered outlives it.

use std::time::{Duration, Instant};

use kgate_client::{Client, Incoming};
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

/// 17.1: a `max_rate` so small that its interval overflows once panicked the connection
/// and leaked its subscription and outbox; now it is `invalid_frame`, and a connection's
/// subscriptions and gauge are released when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_max_rates_are_refused_and_connections_release_everything() {
    let t = topic("hostile-rate");
    let gw = Gateway::start(&[(&t, 1)], "");
    let mut c = Client::connect(&gw.ws_url()).await.expect("connect");
    for rate in [json!(1e-300), json!(1e-19), json!(0.0005), json!(5000)] {
        c.send_text(
            json!({"type": "subscribe", "id": 1, "channel": t, "max_rate": rate}).to_string(),
        )
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
    assert_eq!(topic_stat(gw.port, &t, "subscriptions"), 1);
    c.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while topic_stat(gw.port, &t, "subscriptions") != 0
        || metric(gw.port, "kgate_connections_active", "websocket") != 0.0
    {
        assert!(
            Instant::now() < deadline,
            "subscription or gauge left behind"
        );
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
    assert_eq!(
        close,
        Some(4029),
        "{no_session} no_session, {limited} rate_limited"
    );
    assert!(no_session <= 7, "only the burst was executed: {no_session}");
    assert!(limited >= 10, "{limited}");
}

/// 17.10: a subscription from an offset past the partition's end was accepted and then
/// silent; it is refused with `invalid_position` naming the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_past_the_end_are_refused() {
    let t = topic("hostile-past-end");
    let gw = Gateway::start(&[(&t, 1)], "");
    producer()
        .send(&t, Some(b"k"), Some(b"{}"), None)
        .await
        .expect("produce");
    let mut c = Client::connect(&gw.ws_url()).await.expect("connect");
    c.send_text(
        json!({"type": "subscribe", "id": 1, "channel": t, "from": {"offsets": {"0": 1_000_000}}})
            .to_string(),
    )
    .await
    .expect("send");
    let f = next_frame(&mut c).await;
    assert_eq!(f["code"], "invalid_position", "{f}");
    let message = f["message"].as_str().unwrap_or("");
    assert!(
        message.contains("offset 1000000") && message.contains("will be offset 1"),
        "{f}"
    );
    // At the end exactly is fine: the next record.
    c.send_text(
        json!({"type": "subscribe", "id": 2, "channel": t, "from": {"offsets": {"0": 1}}})
            .to_string(),
    )
    .await
    .expect("send");
    let (subscribed, _) = c.until("subscribed", WAIT).await.expect("subscribed");
    assert_eq!(subscribed["id"], 2);
}

/// 17.4: an SSE reader that stops reading is closed at the write timeout, and its socket
/// and buffered frames go with it (they once stayed until the client went away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_sse_readers_lose_their_sockets() {
    use tokio::io::AsyncWriteExt;
    let t = topic("hostile-sse");
    let gw = Gateway::start(&[(&t, 1)], "[websocket]\nwrite_timeout_secs = 1\n");
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        // A small receive buffer, never read: the gateway's writes block soon.
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut s = socket
            .connect(([127, 0, 0, 1], gw.port).into())
            .await
            .expect("connect");
        let request = format!(
            "GET /v1/sse?channel={t} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.expect("request");
        stalled.push(s);
    }
    let ports: Vec<u16> = stalled
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect();
    assert!(
        ports.iter().all(|p| established(gw.port, *p)),
        "the streams are open"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    produce_sized(&t, 3000, 2000).await;
    // The gateway's side of each stalled socket leaves ESTABLISHED once it is closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| established(gw.port, *p))
            .collect();
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway still holds the stalled SSE sockets of client ports {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
}

/// True while the socket from `server` to client port `client` (loopback, IPv4) is
/// ESTABLISHED on the server's side, per /proc/net/tcp.
fn established(server: u16, client: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 3 && port(f[1]) == Some(server) && port(f[2]) == Some(client) && f[3] == "01"
    })
}

/// Produces `n` records of `size` bytes to `topic`.
async fn produce_sized(topic: &str, n: usize, size: usize) {
    let producer = producer();
    let body = format!("\"{}\"", "x".repeat(size));
    for i in 0..n {
        let key = format!("k{}", i % 7);
        producer
            .send(topic, Some(key.as_bytes()), Some(body.as_bytes()), None)
            .await
            .expect("produce");
    }
}

/// True when the server has closed `s` (a read gives end of file or an error) within `limit`.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// 17.2: slowloris headers and silent sockets are closed after the header-read timeout,
/// and connections not yet upgraded are counted against a limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_http_connections_are_closed_and_limited() {
    use tokio::io::AsyncWriteExt;
    let t = topic("hostile-slowloris");
    let gw = Gateway::start(
        &[(&t, 1)],
        "[server]\nheader_read_timeout_secs = 1\nmax_http_connections = 20\n",
    );
    let addr = format!("127.0.0.1:{}", gw.port);
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .await
        .expect("write");
    let dripping = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(b"a").await.is_err() {
                break;
            }
        }
        closed_within(&mut slow, Duration::from_secs(1)).await
    });
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "silent socket still open"
    );
    assert!(
        dripping.await.expect("slowloris"),
        "slowloris connection still open"
    );
    // 20 silent connections fill the HTTP slots: the next socket is closed at once...
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    assert!(
        closed_within(&mut refused, Duration::from_millis(500)).await,
        "over the limit"
    );
    // ...until the header-read timeout frees the slots.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(gw.port, "/healthz").is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "healthz never answered again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, stats) = http_get(gw.port, "/v1/stats").expect("stats");
    let stats: Value = serde_json::from_str(&stats).expect("stats JSON");
    assert!(
        stats["refused"]["http_connections"].as_u64() >= Some(1),
        "{stats}"
    );
    assert!(
        stats["refused"]["header_timeouts"].as_u64() >= Some(2),
        "{stats}"
    );
    drop(held);
}
