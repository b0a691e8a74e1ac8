//! The command line: the embedded broker with demo data, `tail`, config errors,
//! and an unreachable cluster.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

#[test]
fn serve_with_embedded_broker_and_demo_data_is_tailed() {
    let dir = tempfile::tempdir().unwrap();
    let [port, broker_port, mqtt_port] = free_ports();
    let gw = Proc::spawn(
        &["serve", "--demo", "--exit-on-stdin-eof"],
        &[
            ("KGATE_SERVER__LISTEN", format!("127.0.0.1:{port}")),
            ("KGATE_MQTT__LISTEN", format!("127.0.0.1:{mqtt_port}")),
            (
                "KGATE_SERVER__DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
            (
                "KGATE_EMBEDDED_BROKER__LISTEN",
                format!("127.0.0.1:{broker_port}"),
            ),
        ],
        &dir.path().join("serve.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(port, "/readyz").is_some_and(|(s, _)| s == 200) {
        assert!(Instant::now() < deadline, "not ready:\n{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nobody subscribes yet: ingest fetches from the embedded broker in short windows once
    // a second, not continuously (each fetch costs the broker sqlite queries; issue 16.7).
    let fetches = || {
        let (_, body) = http_get(port, "/metrics").expect("metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("kgate_ingest_fetch_requests_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("kgate_ingest_fetch_requests_total in /metrics")
    };
    // ...and ingest still keeps up with what the demo produces.
    let ingested = || {
        let (_, body) = http_get(port, "/v1/topics").expect("topics");
        let topics: Value = serde_json::from_str(&body).expect("topics JSON");
        topics["topics"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["live_offsets"].as_array().cloned().unwrap_or_default())
            .filter_map(|o| o.as_i64())
            .sum::<i64>()
    };
    std::thread::sleep(Duration::from_secs(2));
    let (before, offsets_before) = (fetches(), ingested());
    std::thread::sleep(Duration::from_secs(4));
    let idle = fetches() - before;
    assert!(
        idle < 40.0,
        "{idle} fetch requests in 4 s while idle (continuous fetching makes about 160)"
    );
    assert!(ingested() > offsets_before, "ingest stalled while idle");
    let out = Command::new(kgate_bin())
        .args([
            "tail",
            "prices:AAPL",
            "--count",
            "3",
            "--idle-timeout-secs",
            "30",
        ])
        .args(["--url", &format!("ws://127.0.0.1:{port}/v1/ws")])
        .stderr(Stdio::piped())
        .output()
        .expect("run tail");
    assert!(
        out.status.success(),
        "tail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = lines(&out.stdout)
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!(e["type"], "event");
        assert_eq!(e["key"], "AAPL");
        assert!(e["data"]["price"].as_f64().is_some(), "{e}");
    }
    // The demo's devices publish over MQTT (device → kgate → Kafka → kgate): an MQTT
    // client tails them, and what they sent counts as published through the gateway.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt_port.to_string()])
        .args(["-t", "telemetry/#", "-v", "-C", "3", "-W", "30"])
        .output()
        .expect("run mosquitto_sub (install it with .ci/setup-tests)");
    let readings = lines(&out.stdout);
    assert_eq!(readings.len(), 3, "{readings:?}");
    for line in &readings {
        let (topic, payload) = line.split_once(' ').expect("topic and payload");
        assert!(topic.starts_with("telemetry/device-"), "{line}");
        let reading: Value = serde_json::from_str(payload).expect("JSON reading");
        assert!(reading["temperature"].as_f64().is_some(), "{line}");
    }
    let (_, metrics) = http_get(port, "/metrics").expect("metrics");
    let published = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kgate_published_records_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        published > 0.0,
        "the devices published nothing through kgate"
    );
    let log = gw.log_text();
    assert!(log.contains("telemetry from 8 devices over MQTT"), "{log}");
    assert!(log.contains("embedded development broker started"), "{log}");
    assert!(log.contains("For development only"), "{log}");
    assert!(
        dir.path().join("data/broker/tansu.db").exists(),
        "sqlite storage under the data dir"
    );
    // High watermarks come from ingest statistics (once a second) and track the live position.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(port, "/v1/topics").expect("topics");
        let topics: Value = serde_json::from_str(&body).expect("topics JSON");
        let prices = topics["topics"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == "prices"))
            .cloned();
        assert!(prices.is_some() && body.contains("\"telemetry\""), "{body}");
        let prices = prices.unwrap_or_default();
        let high: i64 = prices["high_watermarks"]
            .as_array()
            .map_or(0, |h| h.iter().filter_map(Value::as_i64).sum());
        if high > 0 {
            assert_eq!(prices["partitions"], 3);
            break;
        }
        assert!(Instant::now() < deadline, "no high watermarks: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `kgate serve` expecting it to exit with an error within 60 s; returns its stderr.
fn serve_fails(env: &[(&str, &str)], args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut cmd = Command::new(kgate_bin());
    cmd.arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for serve") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve still running after 60 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "serve should have failed:\n{stderr}");
    stderr
}

#[test]
fn invalid_config_names_key_value_and_expectation() {
    let err = serve_fails(&[("KGATE_KAFKA__FETCH_WAIT_MAX_MS", "soon")], &[]);
    assert!(
        err.contains("fetch_wait_max_ms") && err.contains("soon") && err.contains("u32"),
        "{err}"
    );

    let err = serve_fails(&[("KGATE_WEBSOCKET__OUTBOX_MAX_MESSAGES", "0")], &[]);
    assert!(
        err.contains("websocket.outbox_max_messages") && err.contains("positive"),
        "{err}"
    );

    let err = serve_fails(&[("KGATE_SERVER__LISTEN", "localhost-ish")], &[]);
    assert!(
        err.contains("listen") && err.contains("localhost-ish"),
        "{err}"
    );

    // `[[topics]]` from the environment, as one inline array of tables.
    let err = serve_fails(
        &[
            ("KGATE_AUTH__MODE", "none"),
            ("KGATE_TOPICS", r#"[{name="ok"}, {name="bad topic"}]"#),
        ],
        &[],
    );
    assert!(
        err.contains("topics.name") && err.contains("bad topic"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[[topics]]\nname = \"ok\"\nformat = \"xml\"\n").unwrap();
    let err = serve_fails(&[], &["--config", &file.display().to_string()]);
    assert!(
        err.contains("format") && err.contains("xml") && err.contains("bad.toml"),
        "{err}"
    );

    // Authentication is on unless turned off explicitly: no keys is an error, not an open door.
    let err = serve_fails(&[], &[]);
    assert!(
        err.contains("auth.keys") && err.contains("auth.mode = \"none\""),
        "{err}"
    );

    let err = serve_fails(&[], &["--config", "/no/such/kgate.toml"]);
    assert!(
        err.contains("/no/such/kgate.toml") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn unreachable_kafka_is_retried_with_backoff_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    let mut gw = Proc::spawn(
        &["serve", "--exit-on-stdin-eof"],
        &[
            ("KGATE_SERVER__LISTEN", format!("127.0.0.1:{}", free_port())),
            ("KGATE_SERVER__DATA_DIR", dir.path().display().to_string()),
            (
                "KGATE_KAFKA__BOOTSTRAP_SERVERS",
                format!("127.0.0.1:{dead}"),
            ),
            ("KGATE_KAFKA__REQUEST_TIMEOUT_MS", "300".into()),
            ("KGATE_KAFKA__RETRY_INITIAL_MS", "100".into()),
            ("KGATE_AUTH__MODE", "none".into()),
            // Not config keys (issue 16.5): `tail`'s own variable and a user's.
            ("KGATE_TOKEN", "not-a-config-key".into()),
            ("KGATE_BIN", "/usr/local/bin/kgate".into()),
        ],
        &dir.path().join("serve.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.log_text().matches("Kafka not reachable").count() < 3 {
        assert!(
            Instant::now() < deadline,
            "no retries logged:\n{}",
            gw.log_text()
        );
        assert!(
            gw.child.try_wait().unwrap().is_none(),
            "exited:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = gw.log_text();
    assert!(
        log.contains(&format!("127.0.0.1:{dead}")),
        "names the address: {log}"
    );
    assert!(
        log.contains("retry_in_ms=100") && log.contains("retry_in_ms=200"),
        "backs off: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    gw.kill();
}

/// Issue 16.6: with the embedded broker's port taken, `serve --demo` exits naming the
/// address and the key to change, instead of using whatever answers there.
#[test]
fn embedded_broker_port_in_use_stops_serve_with_the_address_and_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let err = serve_fails(
        &[
            ("KGATE_SERVER__LISTEN", &listen),
            ("KGATE_SERVER__DATA_DIR", &data),
            ("KGATE_EMBEDDED_BROKER__LISTEN", &addr),
        ],
        &["--demo"],
    );
    assert!(
        err.contains(&addr) && err.contains("embedded_broker.listen"),
        "{err}"
    );
}
