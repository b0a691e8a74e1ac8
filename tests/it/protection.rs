//! Issue 4: flow control and protection. Each test matches a row of the README's
//! table of bad or hostile inputs.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kgate_client::{Client, Incoming};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(60);

fn stats(port: u16) -> Value {
    let (_, body) = http_get(port, "/v1/stats").expect("stats");
    serde_json::from_str(&body).expect("stats JSON")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Opens a WebSocket from `local` (a 127.0.0.x address); the HTTP status on refusal.
async fn connect_from(
    local: IpAddr,
    port: u16,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, u16> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(local, 0)).expect("bind");
    let stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("tcp connect");
    let request = format!("ws://127.0.0.1:{port}/v1/ws")
        .into_client_request()
        .expect("request");
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

async fn produce_sized(topic: &str, n: usize, size: usize) {
    let producer = producer();
    let pad = "x".repeat(size.saturating_sub(40));
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let sends = chunk.iter().map(|i| {
            let body = format!(r#"{{"seq":{i},"pad":"{pad}"}}"#);
            let key = format!("k{}", i % 10);
            let producer = producer.clone();
            async move {
                producer
                    .send(topic, Some(key.as_bytes()), Some(body.as_bytes()), None)
                    .await
            }
        });
        for r in futures_util::future::join_all(sends).await {
            r.expect("produce");
        }
    }
}

async fn closed_with(c: &mut Client) -> Option<u16> {
    loop {
        match c.next_within(WAIT).await {
            Ok(Incoming::Closed(close)) => return close.map(|(code, _)| code),
            Ok(Incoming::Frame(_)) => continue,
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_stay_bounded_and_fast_readers_get_everything() {
    let t = topic("slow");
    let gw = Gateway::start(
        &[(&t, 1)],
        "[websocket]\noutbox_max_messages = 300\noutbox_max_bytes = 131072\n[heartbeat]\nidle_timeout_secs = 600\n",
    );
    let port = gw.port;
    let url = gw.ws_url();
    const RECORDS: usize = 4000;
    // 900 clients read as fast as they can.
    let mut fast = Vec::new();
    for _ in 0..9 {
        let connects = (0..100).map(|_| subscribed_client(&url, &t, json!("latest")));
        fast.extend(futures_util::future::join_all(connects).await);
    }
    let fast: Vec<_> = fast
        .into_iter()
        .map(|mut c| {
            tokio::spawn(
                async move { read_offsets(&mut c, RECORDS, Duration::from_secs(300)).await },
            )
        })
        .collect();
    // 100 clients subscribe, then stop reading, with a small receive buffer so the gateway feels it.
    let mut slow = Vec::new();
    for _ in 0..100 {
        slow.push(stalled_subscriber(port, &t).await);
    }
    let rss_before = rss_kib(gw.proc.child.id());
    produce_sized(&t, RECORDS, 400).await;
    let mut want = Received::new();
    want.insert(0, (0..RECORDS as i64).collect());
    for (i, f) in fast.into_iter().enumerate() {
        assert_eq!(
            f.await.expect("fast reader"),
            want,
            "fast client {i} got every record in order"
        );
    }
    let s = stats(port);
    let rss_after = rss_kib(gw.proc.child.id());
    eprintln!(
        "slow-consumer test: gateway RSS {rss_before} KiB before, {rss_after} KiB after streaming {RECORDS} records to 1000 clients (100 not reading); stats {s}"
    );
    assert!(
        s["outbox"]["max_messages_seen"].as_u64().unwrap() <= 300,
        "{s}"
    );
    assert!(
        s["outbox"]["max_bytes_seen"].as_u64().unwrap() <= 131_072 + 1024,
        "{s}"
    );
    assert!(
        s["slow_consumer"]["catch_up"].as_u64().unwrap() > 0,
        "the slow clients were taken off the live path: {s}"
    );
    // The slow clients start reading again: catch_up lost nothing.
    let readers = slow
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { stalled_offsets(&mut ws, RECORDS).await }));
    for offsets in futures_util::future::join_all(readers).await {
        assert_eq!(
            offsets.expect("slow reader"),
            (0..RECORDS as i64).collect::<Vec<_>>()
        );
    }
}

/// With `replay.live_from_ring`, a whole-topic reader that stops reading until the ring no
/// longer holds its position catches up from Kafka once it reads again: every record, in
/// order, once; a reader that kept up on the same topic is not affected.
/// Both readers fall off the 64 KiB ring again and again; until replay events named
/// their replay, events of a replaced replay moved the new one past records it had not
/// read, and a reader stopped short (about half the runs on Apache Kafka).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_off_the_ring_catches_up_from_kafka() {
    let t = topic("offring");
    // 64 KiB of ring: about 140 of the 2,000 records.
    let gw = Gateway::start(
        &[(&t, 1)],
        "[replay]\nring_bytes_per_partition = 65536\nlive_from_ring = true\n\
         [heartbeat]\nidle_timeout_secs = 600\n",
    );
    const RECORDS: usize = 2000;
    let mut reader = subscribed_client(&gw.ws_url(), &t, json!("latest")).await;
    let reader = tokio::spawn(async move { read_offsets(&mut reader, RECORDS, WAIT).await });
    let mut stalled = stalled_subscriber(gw.port, &t).await;
    produce_sized(&t, RECORDS, 400).await;
    let mut want = Received::new();
    want.insert(0, (0..RECORDS as i64).collect());
    assert_eq!(
        reader.await.expect("reader"),
        want,
        "the reader that kept up"
    );
    let offsets = stalled_offsets(&mut stalled, RECORDS).await;
    assert_eq!(offsets, (0..RECORDS as i64).collect::<Vec<_>>());
    let s = stats(gw.port);
    assert!(
        s["slow_consumer"]["catch_up"].as_u64() >= Some(1),
        "the stalled reader fell off the ring and caught up: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_per_ip_per_identity_and_in_total() {
    let t = topic("connlimits");
    let gw = Gateway::start(
        &[(&t, 1)],
        "[limits]\nconnection_attempts_per_ip_per_sec = 100\nconnection_attempts_burst = 100\nmax_connections = 5\nmax_connections_per_identity = 3\n",
    );
    let a: IpAddr = [127, 0, 0, 1].into();
    let b: IpAddr = [127, 0, 0, 2].into();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            connect_from(a, gw.port)
                .await
                .expect("within the identity limit"),
        );
    }
    assert_eq!(
        connect_from(a, gw.port).await.err(),
        Some(429),
        "4th from one identity"
    );
    for _ in 0..2 {
        open.push(
            connect_from(b, gw.port)
                .await
                .expect("within the total limit"),
        );
    }
    assert_eq!(
        connect_from(b, gw.port).await.err(),
        Some(503),
        "6th in total"
    );
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        connect_from(b, gw.port).await.is_ok(),
        "a freed place can be taken again"
    );
    let s = stats(gw.port);
    assert_eq!(s["refused"]["identity_connections"], 1);
    assert_eq!(s["refused"]["max_connections"], 1);

    let gw = Gateway::start(
        &[(&t, 1)],
        "[limits]\nconnection_attempts_per_ip_per_sec = 1\nconnection_attempts_burst = 3\n",
    );
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect_from(a, gw.port).await.expect("within the burst"));
    }
    assert_eq!(
        connect_from(a, gw.port).await.err(),
        Some(429),
        "attempt rate"
    );
    assert!(
        connect_from(b, gw.port).await.is_ok(),
        "another address is not affected"
    );
    assert_eq!(stats(gw.port)["refused"]["connection_attempt_rate"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_flood_is_refused_then_closed() {
    let t = topic("flood");
    let gw = Gateway::start(
        &[(&t, 1)],
        "[limits]\ncommands_per_sec = 5\ncommands_burst = 5\nmax_rate_limited_commands = 10\n",
    );
    let mut bystander = subscribed_client(&gw.ws_url(), &t, json!("latest")).await;
    // A backlog the client has not read yet: 2 MB of events queued towards it when the
    // gateway closes (a reset throws away what the gateway's kernel still holds of them,
    // and the close frame after them; issue 16.3).
    produce_sized(&t, 2000, 1000).await;
    let mut c = Client::connect(&gw.ws_url()).await.unwrap();
    c.send_text(json!({"type":"subscribe","id":"s","channel": t, "from": "earliest"}).to_string())
        .await
        .unwrap();
    c.until("event", WAIT).await.expect("the backlog starts");
    // The socket buffers fill while the client reads nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Hundreds of commands at once, far more than the gateway reads before it decides to
    // close: the rest is still unread on its side when it does.
    for i in 0..1000 {
        if c.send_text(json!({"type":"ping","id": i}).to_string())
            .await
            .is_err()
        {
            break;
        }
    }
    // A client that reads slowly: everything is written before it looks.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut pongs = 0;
    let mut limited = 0;
    let mut frames = 0;
    let close = loop {
        // Slower than the gateway writes: its send queue stays full until it closes.
        frames += 1;
        if frames % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match c.next_within(WAIT).await {
            Ok(Incoming::Frame(f)) if f["type"] == "pong" => pongs += 1,
            Ok(Incoming::Frame(f)) if f["code"] == "rate_limited" => limited += 1,
            Ok(Incoming::Frame(f))
                if ["subscribed", "event", "live"].contains(&f["type"].as_str().unwrap_or("")) => {}
            Ok(Incoming::Frame(f)) => panic!("unexpected {f}"),
            Ok(Incoming::Closed(close)) => break close.map(|c| c.0),
            Err(e) => panic!("the close must arrive intact, not as a reset: {e}"),
        }
    };
    assert_eq!(close, Some(4029));
    assert_eq!(stats(gw.port)["refused"]["rate_limit_disconnects"], 1);
    // The documented count: `max_rate_limited_commands` refusals in a row, then the close
    // (more only if a refilled token served a command in between and restarted the count).
    assert!(limited >= 10, "{limited} refusals, {pongs} pongs");
    assert!(
        pongs <= 7,
        "at most the burst (and its refill) was served: {pongs} pongs"
    );
    assert!(
        stats(gw.port)["refused"]["rate_limited_commands"]
            .as_u64()
            .unwrap()
            > 10
    );
    produce_sized(&t, 10, 100).await;
    assert_eq!(
        read_events(&mut bystander, 2010, WAIT).await.len(),
        2010,
        "others keep streaming"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_record_is_skipped_with_a_notice() {
    let t = topic("bigrecord");
    let gw = Gateway::start(&[(&t, 1)], "[limits]\nmax_outbound_record_bytes = 1000\n");
    let mut c = subscribed_client(&gw.ws_url(), &t, json!("latest")).await;
    produce_sized(&t, 1, 5000).await;
    produce_sized(&t, 1, 100).await;
    let (skipped, _) = c.until("skipped", WAIT).await.unwrap();
    assert_eq!(skipped["offset"], 0);
    assert_eq!(skipped["reason"], "record_too_large");
    assert!(skipped["bytes"].as_u64().unwrap() > 5000);
    let events = read_events(&mut c, 1, WAIT).await;
    assert_eq!(events[0]["offset"], 1);
    assert_eq!(stats(gw.port)["refused"]["oversize_records_skipped"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_and_idle_connections_are_closed() {
    let t = topic("heartbeat");
    let gw = Gateway::start(
        &[(&t, 1)],
        "[heartbeat]\nping_interval_secs = 1\ntimeout_secs = 3\nidle_timeout_secs = 4\n",
    );
    // A peer that never reads: it answers no ping (as if it vanished without a FIN).
    let (mut silent, _) = tokio_tungstenite::connect_async(gw.ws_url()).await.unwrap();
    silent
        .send(Message::Text(
            json!({"type":"subscribe","channel": t}).to_string().into(),
        ))
        .await
        .unwrap();
    // A peer behind a link that goes dark: both directions stop, no FIN, no RST.
    let (dark_url, go_dark) = blackhole_proxy(gw.port).await;
    let dark = subscribed_client(&dark_url, &t, json!("latest")).await;
    go_dark.store(true, std::sync::atomic::Ordering::SeqCst);
    // A live subscriber answers pings (tungstenite does while reading) and stays.
    let mut live = subscribed_client(&gw.ws_url(), &t, json!("latest")).await;
    // A connection that never subscribes is closed as idle.
    let mut idle = Client::connect(&gw.ws_url()).await.unwrap();
    let started = Instant::now();
    let live_task = tokio::spawn(async move {
        // Keep reading (which answers pings) for 7 seconds; the connection must stay open.
        let until = tokio::time::Instant::now() + Duration::from_secs(7);
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match live.next_within(left).await {
                Ok(Incoming::Frame(_)) => continue,
                other => return (live, other),
            }
        }
    });
    assert_eq!(closed_with(&mut idle).await, Some(4012));
    assert!(started.elapsed() >= Duration::from_secs(4));
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats(gw.port)["heartbeat"]["timeouts"] != 2 {
        assert!(
            Instant::now() < deadline,
            "silent and blackholed peers not detected: {}",
            stats(gw.port)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_live, r) = live_task.await.unwrap();
    assert_eq!(
        stats(gw.port)["heartbeat"]["timeouts"],
        2,
        "only the silent and blackholed peers timed out"
    );
    assert!(
        matches!(r, Err(kgate_client::ClientError::Timeout(_))),
        "the live client was kept: {r:?}"
    );
    // The idle client's close handshake may take up to its 5 s linger.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats(gw.port)["connections"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the silent and blackholed peers' resources were not freed: {}",
            stats(gw.port)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop((silent, dark));
}

/// A peer reading a long backlog slowly meets each ping only after the records queued
/// before it, long after `heartbeat.timeout_secs`; it shows it is alive by reading (its
/// TCP takes more data, its window opens), and is not closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_whose_pongs_wait_behind_its_backlog_is_kept() {
    let t = topic("backlog");
    let gw = Gateway::start(
        &[(&t, 1)],
        "[heartbeat]\nping_interval_secs = 1\ntimeout_secs = 2\n",
    );
    let records = 4_000;
    produce_sized(&t, records, 1_000).await;
    let mut c = subscribed_client(&gw.ws_url(), &t, json!("earliest")).await;
    let started = Instant::now();
    for _ in 0..records {
        // Panics if the connection is closed.
        read_events(&mut c, 1, WAIT).await;
        tokio::time::sleep(Duration::from_micros(1_500)).await;
    }
    assert!(
        started.elapsed() > Duration::from_secs(4),
        "the backlog took {:?} to read: not enough to outlast the heartbeat timeout",
        started.elapsed()
    );
    assert_eq!(stats(gw.port)["heartbeat"]["timeouts"], 0);
}

/// A TCP proxy to the gateway on `port` whose link goes dark when the flag is set:
/// it stops moving bytes both ways but keeps both sockets open (no FIN, no RST).
async fn blackhole_proxy(port: u16) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    let dark = std::sync::Arc::new(AtomicBool::new(false));
    let flag = dark.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let pipe = |mut from: tokio::net::tcp::OwnedReadHalf,
                    mut to: tokio::net::tcp::OwnedWriteHalf,
                    dark: std::sync::Arc<AtomicBool>| async move {
            let mut buf = vec![0u8; 16384];
            loop {
                let Ok(n) = from.read(&mut buf).await else {
                    break;
                };
                if n == 0 {
                    break;
                }
                if dark.load(Ordering::SeqCst) {
                    // Swallow this and everything after; hold the sockets open.
                    std::future::pending::<()>().await;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            (from, to)
        };
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let _ = tokio::join!(pipe(cr, sw, flag.clone()), pipe(sr, cw, flag));
    });
    (url, dark)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_subscription_max_rate_delivers_the_latest_value() {
    let t = topic("maxrate");
    let gw = Gateway::start(&[(&t, 1)], "");
    let mut c = Client::connect(&gw.ws_url()).await.unwrap();
    c.send_text(
        json!({"type":"subscribe","id":1,"channel": format!("{t}:k0"),"max_rate": 4}).to_string(),
    )
    .await
    .unwrap();
    c.until("subscribed", WAIT).await.unwrap();
    let producer = producer();
    let started = Instant::now();
    for i in 0..40 {
        let body = json!({"seq": i}).to_string();
        producer
            .send(&t, Some(b"k0"), Some(body.as_bytes()), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let span = started.elapsed();
    let mut seqs = Vec::new();
    while seqs.last() != Some(&39) {
        match c.next_within(Duration::from_secs(5)).await.expect("events") {
            Incoming::Frame(f) if f["type"] == "event" => {
                seqs.push(f["data"]["seq"].as_i64().unwrap())
            }
            Incoming::Frame(_) => {}
            Incoming::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    let allowed = (span.as_secs_f64() * 4.0).ceil() as usize + 2;
    assert!(
        seqs.len() <= allowed,
        "{} updates in {span:?} at 4/s: {seqs:?}",
        seqs.len()
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "never an older value after a newer one: {seqs:?}"
    );
    assert_eq!(seqs.last(), Some(&39), "the latest value arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_bad_inputs_get_their_codes() {
    let t = topic("badmore");
    let gw = Gateway::start(
        &[(&t, 1)],
        "[websocket]\nmax_subscriptions = 2\nmax_channel_bytes = 64\n",
    );
    let mut c = Client::connect(&gw.ws_url()).await.unwrap();
    let expect = |code: &'static str| code;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"type":"subscribe","id":1,"channel": format!("{t}:{}", "k".repeat(80))}),
            expect("invalid_channel"),
        ),
        (
            json!({"type":"subscribe","id":2,"channel": t, "max_rate": -1}),
            "invalid_frame",
        ),
        (
            json!({"type":"ack","id":3,"topic": t,"partition":0,"offset":1}),
            "no_session",
        ),
        (
            json!({"type":"attach","id":4,"session":"bad id"}),
            "invalid_session",
        ),
    ];
    for (cmd, code) in &cases {
        c.send_text(cmd.to_string()).await.unwrap();
        let (err, _) = c.until("error", WAIT).await.unwrap();
        assert_eq!(err["code"], *code, "{cmd}");
    }
    for ch in [format!("{t}:a"), format!("{t}:b")] {
        c.subscribe(&ch, json!("latest")).await.unwrap();
        c.until("subscribed", WAIT).await.unwrap();
    }
    c.subscribe(&format!("{t}:c"), json!("latest"))
        .await
        .unwrap();
    assert_eq!(
        c.until("error", WAIT).await.unwrap().0["code"],
        "too_many_subscriptions"
    );
    c.send_text(json!({"type":"attach","session":"late"}).to_string())
        .await
        .unwrap();
    assert_eq!(
        c.until("error", WAIT).await.unwrap().0["code"],
        "invalid_state"
    );
    // Binary frames carry no commands.
    let (mut raw, _) = tokio_tungstenite::connect_async(gw.ws_url()).await.unwrap();
    raw.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let mut code = None;
    while code.is_none() {
        if let Some(Ok(Message::Text(text))) = raw.next().await {
            let f: Value = serde_json::from_str(&text).unwrap();
            code = f["code"].as_str().map(String::from);
        }
    }
    assert_eq!(code.as_deref(), Some("binary_not_supported"));
    // HTTP-level refusals.
    let (status, body) = http_get(gw.port, "/v1/ws").unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("not_websocket"), "{body}");
    let mut request = gw.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(r)) => assert_eq!(r.status().as_u16(), 400),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drain_tells_clients_to_reconnect_and_loses_nothing() {
    let t = topic("drain");
    let mut gw = Gateway::start(&[(&t, 2)], "");
    let url = gw.ws_url();
    let mut c = Client::connect(&url).await.unwrap();
    c.attach(&format!("drain-{t}")).await.unwrap();
    c.subscribe(&t, json!("latest")).await.unwrap();
    c.until("subscribed", WAIT).await.unwrap();
    produce_sized(&t, 200, 100).await;
    let first = read_events(&mut c, 200, WAIT).await;
    for e in first.iter().rev().take(2) {
        c.ack(
            &t,
            e["partition"].as_i64().unwrap(),
            e["offset"].as_i64().unwrap(),
        )
        .await
        .unwrap();
    }
    let mut acked = std::collections::HashMap::new();
    for e in &first {
        let p = e["partition"].as_i64().unwrap();
        let o = e["offset"].as_i64().unwrap();
        let slot = acked.entry(p).or_insert(o);
        *slot = (*slot).max(o);
    }
    for (p, o) in &acked {
        c.ack(&t, *p, *o).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    gw.terminate();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exit within the deadline"
    );
    assert_eq!(closed_with(&mut c).await, Some(1001), "told to reconnect");
    produce_sized(&t, 100, 100).await;
    gw.restart();
    let mut c = Client::connect(&url).await.unwrap();
    c.attach(&format!("drain-{t}")).await.unwrap();
    let events = read_events(&mut c, 100, WAIT).await;
    let got = by_partition(&events);
    for (p, offsets) in &got {
        assert_eq!(
            offsets[0],
            acked.get(p).map_or(0, |o| o + 1),
            "partition {p} resumed right after the ack"
        );
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "no gap");
    }
    assert_eq!(events.len(), 100, "nothing lost, nothing repeated");
}

/// The offsets of the next `n` events a stalled subscriber reads once it reads again.
async fn stalled_offsets(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    n: usize,
) -> Vec<i64> {
    let mut offsets = Vec::new();
    while offsets.len() < n {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let f: Value = serde_json::from_str(&text).unwrap();
                if f["type"] == "event" {
                    offsets.push(f["offset"].as_i64().unwrap());
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("stalled reader after {} records: {other:?}", offsets.len()),
        }
    }
    offsets
}

/// A subscriber that has stopped reading, with a small receive buffer so the gateway feels it.
async fn stalled_subscriber(
    port: u16,
    channel: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let (mut ws, _) = tokio_tungstenite::client_async(url.into_client_request().unwrap(), stream)
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"type":"subscribe","channel": channel})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(m))) if m.to_text().is_ok_and(|t| t.contains(r#""type":"live""#)) => break,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no live marker: {other:?}"),
        }
    }
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflate_policy_keeps_the_latest_value_per_key() {
    let conflated = topic("conflate");
    let extra = format!(
        "[[topics]]\nname = \"{conflated}\"\npartitions = 1\nslow_consumer = \"conflate\"\n\n\
         [websocket]\noutbox_max_messages = 50\noutbox_max_bytes = 65536\n"
    );
    let gw = Gateway::start(&[], &extra);
    let mut ticker = stalled_subscriber(gw.port, &conflated).await;
    produce_sized(&conflated, 3000, 400).await;
    eprintln!("conflate: produced");
    let mut last_seq: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let started = Instant::now();
    let mut n = 0;
    while !(0..10).all(|k| last_seq.get(&format!("k{k}")).is_some_and(|s| *s >= 2990)) {
        assert!(
            started.elapsed() < WAIT,
            "latest values not delivered after {n} frames: {last_seq:?}"
        );
        let frame = tokio::time::timeout(Duration::from_secs(10), ticker.next()).await;
        n += 1;
        let text = match frame {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
            other => panic!("conflating reader after {n} frames, {last_seq:?}: {other:?}"),
        };
        let f: Value = serde_json::from_str(&text).unwrap();
        if f["type"] == "event" {
            let key = f["key"].as_str().unwrap().to_string();
            let seq = f["data"]["seq"].as_i64().unwrap();
            let prev = last_seq.insert(key, seq);
            assert!(
                prev.is_none_or(|p| p < seq),
                "an older value after a newer one"
            );
        }
    }
    let s = stats(gw.port);
    eprintln!("conflate: {n} frames, stats {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policy_closes_a_stalled_reader_after_its_grace() {
    let t = topic("disconnect");
    // The write timeout is far longer than the grace, so only the policy can close the reader.
    let extra = format!(
        "[[topics]]\nname = \"{t}\"\npartitions = 1\nslow_consumer = \"disconnect\"\n\n\
         [websocket]\noutbox_max_messages = 200\noutbox_max_bytes = 262144\nwrite_timeout_secs = 120\n\n\
         [limits]\nslow_consumer_grace_ms = 1000\n"
    );
    let gw = Gateway::start(&[], &extra);
    // 8 MB: more than the kernel buffers (4 MiB send buffer at most) can hide from the gateway.
    const RECORDS: usize = 8000;
    let mut healthy = subscribed_client(&gw.ws_url(), &t, json!("latest")).await;
    let healthy =
        tokio::spawn(
            async move { read_offsets(&mut healthy, RECORDS, Duration::from_secs(120)).await },
        );
    let mut stalled = stalled_subscriber(gw.port, &t).await;
    let started = Instant::now();
    produce_sized(&t, RECORDS, 1000).await;
    let mut want = Received::new();
    want.insert(0, (0..RECORDS as i64).collect());
    assert_eq!(healthy.await.expect("healthy reader"), want);
    // Wait for the policy before reading: a reader that drains its socket is no longer stalled.
    let mut s = stats(gw.port);
    while s["slow_consumer"]["disconnected"] != 1 {
        assert!(
            started.elapsed() < WAIT,
            "stalled reader not disconnected: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = stats(gw.port);
    }
    eprintln!(
        "disconnect: stalled reader closed {} ms after production started; stats {s}",
        started.elapsed().as_millis()
    );
    let close = loop {
        match tokio::time::timeout(WAIT, stalled.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("stalled reader: expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close, Some(4008), "closed as a slow consumer");
    assert!(s["slow_consumer"]["catch_up"].as_u64() >= Some(1), "{s}");
}
