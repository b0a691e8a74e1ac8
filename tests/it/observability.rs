//! Issue 8: /metrics after a known workload, /readyz checks, the status page.

use std::time::Duration;

use kgate_client::{Client, Incoming};
use serde_json::{Value, json};

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(60);

/// Sums the samples of `name` whose labels include every `label="value"` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

fn scrape(gw: &Gateway) -> String {
    let (status, body) = http_get(gw.port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_the_workload() {
    let t = topic("metrics");
    let gw = Gateway::start(
        &[(&t, 1)],
        "[websocket]\nmax_message_bytes = 1024\nmax_frame_bytes = 1024\nmax_command_bytes = 1024\n",
    );
    let before = scrape(&gw);
    let ws = [("transport", "websocket")];

    // Three live readers of 50 records: 150 deliveries, their exact bytes.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(subscribed_client(&gw.ws_url(), &t, json!("latest")).await);
    }
    let during = scrape(&gw);
    assert_eq!(metric(&during, "kgate_connections_active", &ws), 3.0);
    let producer = producer();
    for i in 0..50 {
        let body = json!({"seq": i, "pad": "x".repeat(i)}).to_string();
        producer
            .send(&t, Some(b"k"), Some(body.as_bytes()), None)
            .await
            .unwrap();
    }
    let mut bytes = 0;
    for c in &mut clients {
        for e in read_events(c, 50, WAIT).await {
            bytes += serde_json::to_string(&e).unwrap().len();
        }
    }
    // A replay of the same 50 from the memory ring (an offset start; `earliest` asks Kafka).
    let mut replayer = subscribed_client(&gw.ws_url(), &t, json!({"offsets": {"0": 0}})).await;
    let replayed = read_events(&mut replayer, 50, WAIT).await;
    for e in &replayed {
        bytes += serde_json::to_string(e).unwrap().len();
    }
    replayer.until("live", WAIT).await.unwrap();
    // One client leaves; another sends a message over the size limit (close 1009).
    clients.pop().unwrap().close().await;
    let mut big = Client::connect(&gw.ws_url()).await.unwrap();
    big.send_text("x".repeat(4096)).await.unwrap();
    loop {
        match big.next_within(WAIT).await {
            Ok(Incoming::Closed(c)) => {
                assert_eq!(c.map(|c| c.0), Some(1009));
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let after = scrape(&gw);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(moved("kgate_delivered_records_total", &ws), 200.0);
    // Frames are compact JSON, so re-serializing the parsed frame gives the same bytes.
    assert_eq!(moved("kgate_delivered_bytes_total", &ws), bytes as f64);
    assert_eq!(moved("kgate_connections_opened_total", &ws), 5.0);
    assert_eq!(
        moved(
            "kgate_connections_closed_total",
            &[("transport", "websocket"), ("reason", "peer_gone")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "kgate_connections_closed_total",
            &[("reason", "message_too_big")]
        ),
        1.0
    );
    assert_eq!(metric(&after, "kgate_connections_active", &ws), 3.0);
    assert_eq!(
        moved("kgate_refusals_total", &[("reason", "oversize_message")]),
        1.0
    );
    assert_eq!(
        moved("kgate_replays_started_total", &[("tier", "memory")]),
        1.0
    );
    assert_eq!(
        moved("kgate_replays_completed_total", &[("tier", "memory")]),
        1.0
    );
    assert_eq!(
        moved("kgate_replayed_records_total", &[("tier", "memory")]),
        50.0
    );
    assert!(moved("kgate_delivery_latency_seconds_count", &[]) >= 1.0);
    assert_eq!(
        moved("kgate_connection_lifetime_seconds_count", &ws),
        2.0,
        "two connections ended"
    );
    assert_eq!(
        metric(
            &after,
            "kgate_consumer_lag_records",
            &[("topic", &t), ("partition", "0")]
        ),
        0.0
    );
    assert!(after.contains("kgate_session_store_keys"));
    assert!(metric(&after, "kgate_process_resident_bytes_per_connection", &[]) > 0.0);
    assert!(after.contains("# TYPE kgate_delivery_latency_seconds histogram"));

    let (status, ready) = http_get(gw.port, "/readyz").unwrap();
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        ready["node"],
        format!("127.0.0.1:{}", gw.port),
        "node id defaults to the listen address"
    );
    assert_eq!(
        ready["checks"],
        json!({"ingest": true, "kafka": true, "session_store": true, "not_draining": true})
    );
    assert_eq!(ready["ready"], true);
    let (status, page) = http_get(gw.port, "/status").unwrap();
    assert!(status == 200 && page.contains("kgate status"), "{status}");
}

#[test]
fn json_logs_name_connection_and_session_and_no_tokens() {
    let t = topic("logs");
    let secret = "s3cret-signing-key-for-tests-only";
    let gw = Gateway::start(
        &[(&t, 1)],
        &format!(
            "[log]\nformat = \"json\"\nlevel = \"info\"\n\n[auth]\nmode = \"jwt\"\nkeys = [{{ alg = \"HS256\", key = \"{secret}\" }}]\n"
        ),
    );
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "exp": 4_000_000_000_u64, "channels": ["*"]}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn = rt.block_on(async {
        let mut c = Client::connect_with_token(&gw.ws_url(), Some(&token))
            .await
            .unwrap();
        c.attach("board-1").await.unwrap();
        c.subscribe(&t, json!("latest")).await.unwrap();
        c.until("subscribed", WAIT).await.unwrap();
        let id = c.connection_id;
        c.close().await;
        id
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = gw.proc.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "JSON log lines:\n{log}");
    // At the default level, the connection's last line names it, its transport and its session.
    let closed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "connection closed" && l["fields"]["conn"] == conn)
        .collect();
    assert_eq!(closed.len(), 1, "one close line for the connection:\n{log}");
    assert_eq!(closed[0]["fields"]["session"], "alice/board-1", "{log}");
    assert_eq!(closed[0]["fields"]["transport"], "websocket", "{log}");
    assert!(
        !log.contains(&token) && !log.contains(secret),
        "no token or key in the log"
    );
}
