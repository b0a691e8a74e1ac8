//! Issue 7: Avro from a third-party producer in both framings, the schema
//! registry and its local directory, poison records, snapshots, header filters,
//! per-topic conflation defaults.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kgate_client::{Client, Incoming};
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::{Value, json};

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test schema registry (tests/python/registry.py); stops when dropped.
struct Registry {
    child: Child,
    url: String,
}

impl Registry {
    fn start() -> Registry {
        let mut child = Command::new(python())
            .arg(repo().join("tests/python/registry.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test registry");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("registry port");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .expect("listening line");
        Registry {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn get(&self, path: &str) -> Value {
        ureq::get(format!("{}{path}", self.url))
            .call()
            .and_then(|mut r| r.body_mut().read_json::<Value>())
            .unwrap_or_else(|e| panic!("GET {path} from the test registry: {e}"))
    }

    /// How many times kgate (or anyone) looked schema `id` up.
    fn lookups(&self, id: u32) -> u64 {
        self.get("/_stats")["lookups"][id.to_string()]
            .as_u64()
            .unwrap_or(0)
    }

    fn schema(&self, id: u32) -> String {
        let body = self.get(&format!("/schemas/ids/{id}"));
        body["schema"].as_str().expect("schema text").to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs tests/python/produce_avro.py; returns its delivery lines.
fn produce_avro(topic: &str, framing: &str, count: usize, registry: Option<&str>) -> Vec<Value> {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/python/produce_avro.py"))
        .args([&broker().addr, topic, framing, &count.to_string()])
        .arg(repo().join("schemas/tick.avsc"));
    if let Some(url) = registry {
        cmd.arg(url);
    }
    let out = cmd.arg("--poison").output().expect("run produce_avro.py");
    assert!(
        out.status.success(),
        "produce_avro.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines(&out.stdout)
        .iter()
        .map(|l| serde_json::from_str(l).expect("delivery line"))
        .collect()
}

/// Reads frames until `n` events or skipped notices arrived.
async fn read_records(client: &mut Client, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        match client.next_within(WAIT).await.expect("frames") {
            Incoming::Frame(f) if f["type"] == "event" || f["type"] == "skipped" => got.push(f),
            Incoming::Frame(_) => {}
            Incoming::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    got
}

fn topic_entry(name: &str, partitions: i32, fields: &str) -> String {
    format!("[[topics]]\nname = \"{name}\"\npartitions = {partitions}\n{fields}\n\n")
}

/// The JSON every good tick must decode to (see produce_avro.py).
fn tick(i: i64) -> Value {
    json!({"symbol": format!("S{}", i % 5), "price": format!("{}.25", 100 + i),
           "size": if i % 2 == 1 { json!(i) } else { Value::Null }, "seq": i})
}

fn check_good_ticks(records: &[Value], count: i64) {
    for (i, r) in records.iter().take(count as usize).enumerate() {
        assert_eq!(r["type"], "event", "{r}");
        assert_eq!(r["data"], tick(i as i64), "record {i}: {r}");
        assert_eq!(r["key"], format!("S{}", i % 5));
    }
    let last = &records[count as usize + 2];
    assert_eq!(
        last["type"], "event",
        "the partition flows after poison: {last}"
    );
    assert_eq!(last["data"]["seq"], count);
    assert_eq!(last["data"]["price"], "1.25");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_in_both_framings_from_a_third_party_producer() {
    let registry = Registry::start();
    let plain = topic("avro-plain");
    let framed = topic("avro-confluent");
    let schema = repo().join("schemas/tick.avsc");
    let extra = format!(
        "{}{}[schema_registry]\nurl = \"{}\"\n",
        topic_entry(
            &plain,
            1,
            &format!("format = \"avro\"\nschema = \"{}\"", schema.display())
        ),
        topic_entry(
            &framed,
            1,
            "format = \"avro_confluent\"\non_decode_error = \"skip\""
        ),
        registry.url
    );
    let gw = Gateway::start(&[], &extra);
    let mut a = subscribed_client(&gw.ws_url(), &plain, json!("latest")).await;
    let mut b = subscribed_client(&gw.ws_url(), &framed, json!("latest")).await;

    const N: i64 = 40;
    let sent_plain = produce_avro(&plain, "plain", N as usize, None);
    let sent_framed = produce_avro(&framed, "confluent", N as usize, Some(&registry.url));
    assert_eq!(
        (sent_plain.len(), sent_framed.len()),
        (N as usize + 3, N as usize + 3)
    );

    // Plain framing, policy `raw`: the poison records arrive as bytes with the reason.
    let got = read_records(&mut a, N as usize + 3).await;
    check_good_ticks(&got, N);
    for poison in &got[N as usize..N as usize + 2] {
        assert_eq!(poison["type"], "event");
        assert!(poison["data_b64"].is_string(), "{poison}");
        assert!(poison["decode_error"].is_string(), "{poison}");
    }

    // Confluent framing, policy `skip`: `skipped` notices naming the reason, in order.
    let got = read_records(&mut b, N as usize + 3).await;
    check_good_ticks(&got, N);
    let unknown_id = &got[N as usize];
    assert_eq!(
        (&unknown_id["type"], &unknown_id["reason"]),
        (&json!("skipped"), &json!("decode_failed"))
    );
    assert!(
        unknown_id["error"]
            .as_str()
            .unwrap()
            .contains("schema id 999"),
        "{unknown_id}"
    );
    assert!(
        got[N as usize + 1]["error"]
            .as_str()
            .unwrap()
            .contains("Confluent framing"),
        "{}",
        got[N as usize + 1]
    );
    assert_eq!(
        registry.lookups(1),
        1,
        "one registry lookup, then the cache"
    );
    let log = gw.proc.log_text();
    assert!(
        log.contains(&format!("topic={framed} partition=0 offset={N}"))
            && log.contains("skipped (on_decode_error = \"skip\")"),
        "the log names the poison record's position:\n{log}"
    );
    let (_, stats) = http_get(gw.port, "/v1/stats").expect("stats");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["decode_failures"], 4, "{stats}");
    assert_eq!(
        (
            topic_stat(gw.port, &plain, "decode_failures"),
            topic_stat(gw.port, &framed, "decode_failures")
        ),
        (2, 2),
        "per topic in /v1/topics"
    );

    // Air-gapped: no registry URL, the schema by id from a local directory; a replay
    // from Kafka decodes the same way.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1.avsc"), registry.schema(1)).unwrap();
    let offline = Gateway::start(
        &[],
        &format!(
            "{}[schema_registry]\nlocal_dir = \"{}\"\n",
            topic_entry(&framed, 1, "format = \"avro_confluent\""),
            dir.path().display()
        ),
    );
    let mut c = subscribed_client(&offline.ws_url(), &framed, json!("earliest")).await;
    let got = read_records(&mut c, N as usize + 3).await;
    check_good_ticks(&got, N);
    assert!(
        got[N as usize]["decode_error"]
            .as_str()
            .unwrap()
            .contains("no schema_registry.url"),
        "{}",
        got[N as usize]
    );
}

#[test]
fn avro_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |toml: &str, key: &str| {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(kgate_bin())
            .args(["serve", "--config", &path.display().to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{key}: {err}");
    };
    check(
        "[[topics]]\nname = \"t\"\nformat = \"avro\"\n",
        "topics.schema",
    );
    check(
        "[[topics]]\nname = \"t\"\nformat = \"avro\"\nschema = \"/nonexistent.avsc\"\n",
        "topics.schema",
    );
    check(
        "[[topics]]\nname = \"t\"\nformat = \"avro_confluent\"\n",
        "schema_registry.url",
    );
    check(
        "[[topics]]\nname = \"t\"\nmax_rate = 0\n",
        "topics.max_rate",
    );
}

/// Produces `(key, seq)` JSON records; returns (partition, offset) of each, in order.
async fn produce_keys(t: &str, keys: &[String], first_seq: usize) -> Vec<(i32, i64)> {
    let producer = producer();
    let mut out = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let body = json!({"seq": first_seq + i}).to_string();
        let d = producer
            .send(t, Some(key.as_bytes()), Some(body.as_bytes()), None)
            .await
            .expect("produce");
        out.push((d.partition, d.offset));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live_with_no_gap() {
    let t = topic("snap");
    let mut gw = Gateway::start(&[], &topic_entry(&t, 3, "snapshot = true"));
    // History written before the gateway (re)starts: the snapshot comes from the topic.
    let keys: Vec<String> = (0..300).map(|i| format!("SYM{}", i % 30)).collect();
    let history = produce_keys(&t, &keys, 0).await;
    // A tombstone: SYM0 is deleted and must not be in the snapshot.
    producer()
        .send(&t, Some(b"SYM0"), None, None)
        .await
        .expect("tombstone");
    gw.restart();
    gw.wait_log("snapshot ready", WAIT);

    // Producers keep writing while the board opens: no gap between snapshot and live.
    let live_keys: Vec<String> = (0..200).map(|i| format!("SYM{}", i % 30)).collect();
    let t2 = t.clone();
    let writer = tokio::spawn(async move { produce_keys(&t2, &live_keys, 1000).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = Client::connect(&gw.ws_url()).await.unwrap();
    c.send_text(json!({"type":"subscribe","id":1,"channel": t,"snapshot": true}).to_string())
        .await
        .unwrap();
    let (subscribed, _) = c.until("subscribed", WAIT).await.unwrap();
    let live: BTreeMap<i64, i64> = subscribed["live_offsets"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
        .collect();
    let (end, snapshot) = c.until("snapshot_end", WAIT).await.unwrap();
    let snapshot: Vec<Value> = snapshot
        .into_iter()
        .filter(|f| f["type"] == "event")
        .collect();
    assert_eq!(end["count"], snapshot.len());
    let sent_live = writer.await.unwrap();

    // The snapshot: the latest value of every live key below the live offsets, and nothing else.
    let mut latest: HashMap<String, (i64, i64, u64)> = HashMap::new();
    for (i, (p, o)) in history.iter().enumerate() {
        latest.insert(keys[i].clone(), (*p as i64, *o, i as u64));
    }
    latest.remove("SYM0");
    for (i, (p, o)) in sent_live.iter().enumerate() {
        if *o < live[&(*p as i64)] {
            latest.insert(format!("SYM{}", i % 30), (*p as i64, *o, 1000 + i as u64));
        }
    }
    let mut seen = HashMap::new();
    for e in &snapshot {
        let key = e["key"].as_str().unwrap().to_string();
        let at = (
            e["partition"].as_i64().unwrap(),
            e["offset"].as_i64().unwrap(),
            e["data"]["seq"].as_u64().unwrap(),
        );
        assert!(seen.insert(key, at).is_none(), "one event per key: {e}");
    }
    assert_eq!(
        seen, latest,
        "snapshot = latest value per key at the live offsets"
    );
    let arrived = by_partition(&snapshot);
    for (p, offsets) in &arrived {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {p} in offset order"
        );
    }

    // Live: every record from the live offsets on, none skipped.
    let expected_live: usize = sent_live
        .iter()
        .filter(|(p, o)| *o >= live[&(*p as i64)])
        .count();
    let events = read_events(&mut c, expected_live, WAIT).await;
    for (p, offsets) in by_partition(&events) {
        let want: Vec<i64> = (live[&p]..live[&p] + offsets.len() as i64).collect();
        assert_eq!(
            offsets, want,
            "partition {p}: contiguous from the live offset"
        );
    }

    // A second board sees what ingest cached since; a keyed snapshot holds one key.
    let mut d = Client::connect(&gw.ws_url()).await.unwrap();
    d.send_text(
        json!({"type":"subscribe","channel": format!("{t}:SYM7"),"snapshot": true}).to_string(),
    )
    .await
    .unwrap();
    let (end, frames) = d.until("snapshot_end", WAIT).await.unwrap();
    assert_eq!(end["count"], 1);
    let last_sym7 = 1000 + (0..200).filter(|i| i % 30 == 7).max().unwrap();
    let e = frames.iter().find(|f| f["type"] == "event").unwrap();
    assert_eq!(e["data"]["seq"], last_sym7, "{e}");

    // A topic without `snapshot = true` refuses with its own code.
    let plain = topic("nosnap");
    let other = Gateway::start(&[(&plain, 1)], "");
    let mut e = Client::connect(&other.ws_url()).await.unwrap();
    e.send_text(json!({"type":"subscribe","id":5,"channel": plain,"snapshot": true}).to_string())
        .await
        .unwrap();
    let (err, _) = e.until("error", WAIT).await.unwrap();
    assert_eq!(err["code"], "snapshot_unavailable", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_filters_apply_live_and_in_replay() {
    let t = topic("hdr");
    let gw = Gateway::start(&[(&t, 2)], "");
    let filter = json!({"headers": {"region": ["eu", "uk"]}});
    let mut live = Client::connect(&gw.ws_url()).await.unwrap();
    live.send_text(json!({"type":"subscribe","channel": t,"filter": filter}).to_string())
        .await
        .unwrap();
    live.until("subscribed", WAIT).await.unwrap();
    let producer = producer();
    let regions = ["eu", "us", "uk", "apac"];
    let mut wanted = Vec::new();
    for i in 0..80 {
        let region = regions[i % 4];
        let headers = OwnedHeaders::new().insert(Header {
            key: "region",
            value: Some(region),
        });
        let body = json!({"seq": i}).to_string();
        let key = format!("k{i}");
        producer
            .send(
                &t,
                Some(key.as_bytes()),
                Some(body.as_bytes()),
                Some(headers),
            )
            .await
            .unwrap();
        if region == "eu" || region == "uk" {
            wanted.push(i as i64);
        }
    }
    // A record with no region header never matches.
    producer
        .send(&t, Some(b"k"), Some(b"{}"), None)
        .await
        .unwrap();
    let seqs = |events: &[Value]| {
        let mut s: Vec<i64> = events
            .iter()
            .map(|e| e["data"]["seq"].as_i64().unwrap())
            .collect();
        s.sort();
        s
    };
    let got = read_events(&mut live, wanted.len(), WAIT).await;
    assert_eq!(seqs(&got), wanted);
    assert!(
        got.iter()
            .all(|e| ["eu", "uk"].contains(&e["headers"]["region"].as_str().unwrap()))
    );

    // A replay from Kafka applies the same filter.
    let mut replay = Client::connect(&gw.ws_url()).await.unwrap();
    replay
        .send_text(json!({"type":"subscribe","channel": t,"from":"earliest","filter": {"headers": {"region": "us"}}}).to_string())
        .await
        .unwrap();
    let got = read_events(&mut replay, 20, WAIT).await;
    assert_eq!(
        seqs(&got),
        (0..80).filter(|i| i % 4 == 1).collect::<Vec<i64>>()
    );
    // Nothing else follows: the next frame within a second is not an event.
    match replay.next_within(Duration::from_secs(1)).await {
        Ok(Incoming::Frame(f)) => assert_ne!(f["type"], "event", "{f}"),
        _ => {}
    }
    // A malformed filter is refused; the connection keeps streaming.
    live.send_text(json!({"type":"subscribe","id":9,"channel": format!("{t}:x"),"filter": {"headers": {"region": 5}}}).to_string())
        .await
        .unwrap();
    let (err, _) = live.until("error", WAIT).await.unwrap();
    assert_eq!(
        (&err["code"], &err["id"]),
        (&json!("invalid_frame"), &json!(9)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_conflation_default_never_reorders_a_key() {
    let t = topic("conflate");
    let gw = Gateway::start(&[], &topic_entry(&t, 3, "max_rate = 5"));
    let mut c = subscribed_client(&gw.ws_url(), &t, json!("latest")).await;
    let keys: Vec<String> = (0..3000).map(|i| format!("T{}", i % 10)).collect();
    let sent = produce_keys(&t, &keys, 0).await;
    assert_eq!(sent.len(), 3000);
    let last: HashMap<String, i64> = (0..10).map(|k| (format!("T{k}"), 2990 + k)).collect();
    let mut per_key: HashMap<String, Vec<i64>> = HashMap::new();
    let mut done = 0;
    while done < last.len() {
        match c.next_within(WAIT).await.expect("events") {
            Incoming::Frame(f) if f["type"] == "event" => {
                let key = f["key"].as_str().unwrap().to_string();
                let seq = f["data"]["seq"].as_i64().unwrap();
                if last[&key] == seq {
                    done += 1;
                }
                per_key.entry(key).or_default().push(seq);
            }
            Incoming::Frame(_) => {}
            Incoming::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    let total: usize = per_key.values().map(Vec::len).sum();
    for (key, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key} reordered: {seqs:?}"
        );
        assert_eq!(
            seqs.last(),
            Some(&last[key]),
            "{key} ends with its latest value"
        );
    }
    assert!(
        total < 3000 / 2,
        "the topic's max_rate conflated: {total} of 3000 delivered"
    );
    println!("conflation: {total} of 3000 updates delivered at the topic default of 5/s per key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_subprotocol_delivers_avro_envelopes() {
    use apache_avro::types::Value as Avro;
    use kgate_client::Raw;

    let bin = topic("bin");
    let text = topic("bintext");
    let gw = Gateway::start(&[(&text, 1)], &topic_entry(&bin, 1, "binary = true"));
    let mut c = Client::connect_binary(&gw.ws_url()).await.unwrap();
    assert_eq!(
        c.protocol, "kgate.v1.avro",
        "welcome names the negotiated subprotocol"
    );
    for t in [&bin, &text] {
        c.subscribe(t, json!("latest")).await.unwrap();
        c.until("subscribed", WAIT).await.unwrap();
    }
    let mut json_client = subscribed_client(&gw.ws_url(), &bin, json!("latest")).await;
    let producer = producer();
    let headers = OwnedHeaders::new().insert(Header {
        key: "src",
        value: Some("x"),
    });
    let d = producer
        .send(&bin, Some(b"AAPL"), Some(br#"{"p":1}"#), Some(headers))
        .await
        .unwrap();
    producer
        .send(&text, Some(b"k"), Some(b"{}"), None)
        .await
        .unwrap();

    let schema = apache_avro::Schema::parse_str(kgate::codec::ENVELOPE_SCHEMA).unwrap();
    let (mut binary, mut texts) = (Vec::new(), Vec::new());
    while binary.len() + texts.len() < 2 {
        match tokio::time::timeout(WAIT, c.next_raw())
            .await
            .unwrap()
            .unwrap()
        {
            Some(Raw::Binary(data)) => binary.push(data),
            Some(Raw::Text(t)) if t.starts_with(r#"{"type":"event""#) => texts.push(t),
            Some(Raw::Text(_)) => {}
            None => panic!("closed"),
        }
    }
    assert_eq!(
        (binary.len(), texts.len()),
        (1, 1),
        "binary for the binary topic, JSON for the other"
    );
    let v = apache_avro::from_avro_datum(&schema, &mut &binary[0][..], None).unwrap();
    let Avro::Record(fields) = v else {
        panic!("{v:?}")
    };
    let get = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(get("topic"), Avro::String(bin.clone()));
    assert_eq!(get("offset"), Avro::Long(d.offset));
    assert_eq!(
        get("key"),
        Avro::Union(1, Box::new(Avro::Bytes(b"AAPL".to_vec())))
    );
    assert_eq!(
        get("value"),
        Avro::Union(1, Box::new(Avro::Bytes(br#"{"p":1}"#.to_vec())))
    );
    assert!(texts[0].contains(&text));
    // JSON clients of the same topic are unaffected.
    let e = read_events(&mut json_client, 1, WAIT).await;
    assert_eq!(e[0]["data"], json!({"p": 1}));
}
