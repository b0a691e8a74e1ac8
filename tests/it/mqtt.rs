//! MQTT with real third-party clients (docs/mqtt.md): paho-mqtt (PyPI) over TCP and
//! WebSocket, mosquitto_sub / mosquitto_pub (Debian's mosquitto-clients) over TCP.
//! mqtt.js in chromium is driven by tests/browser/mqtt.mjs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;
use crate::security::{auth_toml, claims, hs256, key_file};

/// A client process whose stdout lines arrive on a channel.
struct Client {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Client {
    fn spawn(program: impl AsRef<std::ffi::OsStr>, args: &[String]) -> Client {
        let mut child = Command::new(program.as_ref())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", program.as_ref()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Client {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// paho-mqtt (tests/python/mqtt_client.py) with `args`, split at whitespace.
    fn paho(args: &str) -> Client {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/mqtt_client.py");
        let mut all = vec![script.display().to_string()];
        all.extend(args.split_whitespace().map(str::to_string));
        Client::spawn(python(), &all)
    }

    /// A command of Debian's mosquitto-clients with `args`, split at whitespace.
    fn mosquitto(program: &str, args: &str) -> Client {
        let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
        Client::spawn(program, &args)
    }

    /// The next line for which `keep` holds (panics after `limit`).
    fn next_line(&mut self, limit: Duration, keep: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if keep(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no such line within {limit:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The next JSON event line (paho) of `kind`.
    fn event(&mut self, kind: &str) -> Value {
        let line = self.next_line(Duration::from_secs(60), |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v["event"] == kind)
        });
        serde_json::from_str(&line).expect("JSON line")
    }

    /// `n` messages (paho), in arrival order.
    fn messages(&mut self, n: usize) -> Vec<Value> {
        (0..n).map(|_| self.event("message")).collect()
    }

    fn wait(mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                break status;
            }
            assert!(Instant::now() < deadline, "client did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        self.seen.extend(self.lines.try_iter());
        assert!(
            status.success(),
            "client failed ({status}): {:?}",
            self.seen
        );
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port(gw: &Gateway) -> String {
    gw.mqtt_port.to_string()
}

async fn produce(topic: &str, key: &str, value: &str) {
    producer()
        .send(topic, Some(key.as_bytes()), Some(value.as_bytes()), None)
        .await
        .expect("produce");
}

/// A record as read from Kafka: key, value and headers, as text.
type Record = (String, String, Vec<(String, String)>);

/// Records of partition 0 of `topic`, read straight from Kafka.
fn kafka_records(topic: &str, n: usize) -> Vec<Record> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = kgate::kafka::consumer_config(&client_config(), "test-mqtt")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {out:?} in Kafka");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let text =
                |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
            let headers = m.headers().map_or_else(Vec::new, |hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), text(h.value)))
                    .collect()
            });
            out.push((text(m.key()), text(m.payload()), headers));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_live_reaches_mosquitto_sub_over_tcp_and_paho_over_websocket() {
    let t = topic("mqtt-live");
    let gw = Gateway::start(&[(&t, 2)], "");
    let mqtt_port = port(&gw);
    let filter = format!("{t}/#");
    let mut mosquitto = Client::mosquitto(
        "mosquitto_sub",
        &format!("-h 127.0.0.1 -p {mqtt_port} -t {filter} -q 0 -v -C 5 -i mosq-live"),
    );
    let ws_port = gw.port.to_string();
    let mut paho = Client::paho(&format!(
        "sub --port {ws_port} --ws --topic {filter} --count 5"
    ));
    assert_eq!(paho.event("suback")["codes"], json!([0]));
    // mosquitto_sub prints nothing until a message: give it time to subscribe.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..5 {
        produce(&t, &format!("dev-{i}"), &format!("{{\"n\":{i}}}")).await;
    }
    let got = paho.messages(5);
    let mut names: Vec<&str> = got.iter().map(|m| m["topic"].as_str().unwrap()).collect();
    names.sort();
    let expected: Vec<String> = (0..5).map(|i| format!("{t}/dev-{i}")).collect();
    assert_eq!(names, expected);
    assert!(got.iter().all(|m| m["qos"] == 0 && m["retain"] == false));
    assert!(got.iter().any(|m| m["payload"] == "{\"n\":3}"));
    let lines = mosquitto.next_line(Duration::from_secs(30), |l| l.contains("dev-4"));
    assert_eq!(lines, format!("{t}/dev-4 {{\"n\":4}}"));
    let out = mosquitto.wait();
    assert_eq!(out.len(), 5, "{out:?}");
}

/// A QoS 1 persistent session (MQTT 3.1.1, clean session 0) that disconnects, misses
/// records, reconnects and gets every one, acknowledged with PUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_qos1_session_gets_what_it_missed() {
    let t = topic("mqtt-persist");
    let gw = Gateway::start(&[(&t, 1)], "");
    let mqtt_port = port(&gw);
    let filter = format!("{t}/+");
    let args = |count: &str| {
        format!(
            "sub --port {mqtt_port} --client-id tracker-1 --persistent --resume-only \
             --topic {filter} --qos 1 --count {count}"
        )
    };
    let mut first = Client::paho(&args("3"));
    assert_eq!(first.event("connack")["session_present"], false);
    assert_eq!(first.event("suback")["codes"], json!([1]));
    for i in 0..3 {
        produce(&t, "truck", &format!("{i}")).await;
    }
    let got = first.messages(3);
    assert!(got.iter().all(|m| m["qos"] == 1));
    first.wait();
    // Offline: these are kept by Kafka and the session's positions.
    for i in 3..8 {
        produce(&t, "truck", &format!("{i}")).await;
    }
    let mut second = Client::paho(&args("5"));
    let connack = second.event("connack");
    assert_eq!(connack["session_present"], true, "{connack}");
    let got: Vec<String> = second
        .messages(5)
        .iter()
        .map(|m| m["payload"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ["3", "4", "5", "6", "7"]);
    second.wait();
    // A clean start discards the session.
    let mut clean = Client::paho(&format!(
        "sub --port {mqtt_port} --client-id tracker-1 --topic {filter} --seconds 1"
    ));
    assert_eq!(clean.event("connack")["session_present"], false);
}

/// A persistent session whose next records Kafka deleted (retention) while it was
/// away is told on `$kgate/gap/<topic>` (docs/mqtt.md), then gets what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_gap_is_signalled_on_kgate_gap() {
    let aging = AgingTopic::create("mqtt-gap").await;
    let t = aging.name.clone();
    let mut gw = Gateway::start(&[(&t, 1)], "");
    let mqtt_port = port(&gw);
    let args = |count: usize| {
        format!(
            "sub --port {mqtt_port} --client-id gap-1 --persistent --resume-only \
             --topic {t}/+ --qos 1 --count {count}"
        )
    };
    // The session reads and acknowledges offset 0, then goes away.
    let mut first = Client::paho(&args(1));
    assert_eq!(first.event("suback")["codes"], json!([1]));
    // Offset 0 expires 10 s after it is sent: tansu deletes expired records one by one
    // (every 5 s), so an expired offset 0 could go before the session has read it.
    aging
        .send(Some("truck"), "0", Duration::from_secs(50))
        .await;
    assert_eq!(first.messages(1)[0]["payload"], "0");
    first.wait();
    // Offsets 1 to 4 are long expired, so retention deletes them (with offset 0, once it
    // expires); 5 to 9 are new, in a later segment.
    for i in 1..5 {
        aging
            .send(Some("truck"), &i.to_string(), AgingTopic::EXPIRED)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 5..10 {
        aging
            .send(Some("truck"), &i.to_string(), Duration::ZERO)
            .await;
    }
    aging.wait_deleted_below(5).await;
    // A restart empties the memory ring, which would still hold the deleted records.
    gw.restart();
    let mut second = Client::paho(&args(6));
    assert_eq!(second.event("connack")["session_present"], true);
    let got = second.messages(6);
    let gap: Vec<&Value> = got
        .iter()
        .filter(|m| m["topic"] != format!("{t}/truck"))
        .collect();
    assert_eq!(gap.len(), 1, "{got:?}");
    assert_eq!(gap[0]["topic"], format!("$kgate/gap/{t}"));
    let frame: Value = serde_json::from_str(gap[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        (
            &frame["type"],
            &frame["partition"],
            &frame["requested"],
            &frame["earliest"]
        ),
        (&json!("gap"), &json!(0), &json!(1), &json!(5)),
        "{frame}"
    );
    let records: Vec<&str> = got
        .iter()
        .filter(|m| m["topic"] == format!("{t}/truck"))
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(records, ["5", "6", "7", "8", "9"]);
    second.wait();
}

/// 50 QoS 1 persistent subscribers; the gateway is SIGKILLed mid-stream and restarted;
/// every subscriber still gets every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_persistent_subscribers_lose_nothing_when_the_gateway_is_killed() {
    const RECORDS: usize = 300;
    let t = topic("mqtt-kill");
    let mut gw = Gateway::start(&[(&t, 2)], "");
    let mqtt_port = port(&gw);
    let expect = RECORDS.to_string();
    let filter = format!("{t}/#");
    let mut fleet = Client::paho(&format!(
        "fleet --port {mqtt_port} --client-id fleet --persistent --topic {filter} --clients 50 --expect {expect} --seconds 120"
    ));
    fleet.event("ready");
    let p = producer();
    for i in 0..RECORDS {
        if i == RECORDS / 2 {
            gw.kill();
            // Records produced while the gateway is down are read from Kafka later.
            for j in i..i + 20 {
                p.send(
                    &t,
                    Some(format!("k{}", j % 7).as_bytes()),
                    Some(j.to_string().as_bytes()),
                    None,
                )
                .await
                .expect("produce");
            }
            gw.restart();
        }
        if (RECORDS / 2..RECORDS / 2 + 20).contains(&i) {
            continue;
        }
        p.send(
            &t,
            Some(format!("k{}", i % 7).as_bytes()),
            Some(i.to_string().as_bytes()),
            None,
        )
        .await
        .expect("produce");
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let done: Vec<Value> = (0..50).map(|_| fleet.event("done")).collect();
    let short: Vec<&Value> = done.iter().filter(|d| d["received"] != RECORDS).collect();
    assert!(short.is_empty(), "subscribers missed records: {short:?}");
}

/// A snapshot topic: a new subscription gets the latest value per key as retained
/// messages, then live ones, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_snapshot_then_live() {
    let t = topic("mqtt-retained");
    let gw = Gateway::start(
        &[],
        &format!("[[topics]]\nname = \"{t}\"\npartitions = 2\nsnapshot = true\n\n"),
    );
    for (key, value) in [("AAPL", "1"), ("MSFT", "2"), ("AAPL", "3")] {
        produce(&t, key, value).await;
    }
    // The snapshot cache follows the topic: wait until it holds both keys.
    let ws = subscribed_snapshot(&gw, &t, 2).await;
    drop(ws);
    let mqtt_port = port(&gw);
    let filter = format!("{t}/#");
    // QoS 2 is asked, QoS 1 granted.
    let mut sub = Client::paho(&format!(
        "sub --port {mqtt_port} --v5 --topic {filter} --qos 2 --count 3"
    ));
    assert_eq!(sub.event("suback")["codes"], json!([1]));
    let mut retained = sub.messages(2);
    retained.sort_by_key(|m| m["topic"].as_str().unwrap().to_string());
    assert_eq!(retained[0]["topic"], format!("{t}/AAPL"));
    assert_eq!(retained[0]["payload"], "3", "the latest value of the key");
    assert_eq!(retained[1]["payload"], "2");
    assert!(retained.iter().all(|m| m["retain"] == true));
    produce(&t, "AAPL", "4").await;
    let live = sub.event("message");
    assert_eq!(
        (live["payload"].as_str(), live["retain"].as_bool()),
        (Some("4"), Some(false))
    );
}

/// Subscribes over the WebSocket protocol with a snapshot until it holds `keys` keys.
async fn subscribed_snapshot(gw: &Gateway, t: &str, keys: usize) -> kgate_client::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = kgate_client::Client::connect(&gw.ws_url())
            .await
            .expect("connect");
        c.send_text(json!({"type": "subscribe", "channel": t, "snapshot": true}).to_string())
            .await
            .expect("subscribe");
        if let Ok((end, _)) = c.until("snapshot_end", Duration::from_secs(10)).await
            && end["count"].as_u64() == Some(keys as u64)
        {
            return c;
        }
        assert!(Instant::now() < deadline, "snapshot never held {keys} keys");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Devices publish at QoS 1 (paho over TCP, mosquitto_pub); the PUBACK comes after
/// Kafka's ack, and the records are in Kafka with their key and (MQTT 5) headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_publish_qos1_into_kafka() {
    let t = topic("mqtt-pub");
    let gw = Gateway::start(&[(&t, 1)], "");
    let mqtt_port = port(&gw);
    let name = format!("{t}/dev-7");
    let mut paho = Client::paho(&format!(
        "pub --port {mqtt_port} --v5 --topic {name} --qos 1 --n 3 --header unit=C --message {{\"temp\":{{n}}}}"
    ));
    for _ in 0..3 {
        assert_eq!(paho.event("puback")["rc"], 0);
    }
    assert_eq!(paho.event("done")["unacked"], 0);
    let publisher = Client::mosquitto(
        "mosquitto_pub",
        &format!("-h 127.0.0.1 -p {mqtt_port} -q 1 -t {name} -m {{\"temp\":9}}"),
    );
    publisher.wait();
    let records = kafka_records(&t, 4);
    assert_eq!(records[0].0, "dev-7");
    assert_eq!(records[0].1, "{\"temp\":0}");
    assert!(
        records[0].2.contains(&("unit".into(), "C".into())),
        "{:?}",
        records[0].2
    );
    assert_eq!(records[3].1, "{\"temp\":9}", "mosquitto_pub's record");
    // Not JSON on a JSON topic: MQTT 5 PUBACK 0x99 (payload format invalid), nothing produced.
    let mut bad = Client::paho(&format!(
        "pub --port {mqtt_port} --v5 --topic {name} --qos 1 --message not-json"
    ));
    assert_eq!(bad.event("puback")["rc"], 0x99);
}

/// Bad packets get their reason code or a close; a well-behaved client on the same
/// gateway keeps streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_are_refused_and_others_keep_streaming() {
    let t = topic("mqtt-bad");
    let secret = topic("mqtt-secret");
    let gw = Gateway::start(
        &[(&t, 1), (&secret, 1)],
        &auth_toml("[mqtt]\nmax_packet_bytes = 4096\n"),
    );
    let mqtt_port = port(&gw);
    let token = hs256(&claims(
        "dev",
        json!({"channels": [t.clone()], "publish": [t.clone()]}),
    ));
    let filter = format!("{t}/#");
    let mut good = Client::paho(&format!(
        "sub --port {mqtt_port} --password {token} --topic {filter} --qos 1 --count 2 --seconds 60"
    ));
    assert_eq!(good.event("suback")["codes"], json!([1]));
    produce(&t, "a", "1").await;
    assert_eq!(good.event("message")["payload"], "1");

    let addr = format!("127.0.0.1:{mqtt_port}");
    // Wrong protocol level (9): CONNACK return code 1, then the close.
    let mut wrong = TcpStream::connect(&addr).unwrap();
    wrong
        .write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 30, 0, 0])
        .unwrap();
    assert_eq!(read_to_end(&mut wrong), [0x20, 2, 0, 1]);
    // Garbage first: closed without an answer.
    let mut garbage = TcpStream::connect(&addr).unwrap();
    garbage.write_all(&[0xff; 16]).unwrap();
    assert_eq!(read_to_end(&mut garbage), Vec::<u8>::new());
    // No token: MQTT 3.1.1 return code 5 (not authorized).
    let mut anonymous = Client::paho(&format!(
        "sub --port {mqtt_port} --topic {filter} --seconds 5 --exit-on-disconnect"
    ));
    let rc = anonymous.event("connack")["rc"].as_i64();
    // paho 2 reports MQTT 3 return codes as MQTT 5 reason codes: 5 is 0x87.
    assert_eq!(rc, Some(0x87), "not authorized");
    // Subscribing without permission: SUBACK 0x87 in MQTT 5.
    let secret_filter = format!("{secret}/#");
    let mut nosy = Client::paho(&format!(
        "sub --port {mqtt_port} --v5 --password {token} --topic {secret_filter} --seconds 3"
    ));
    assert_eq!(nosy.event("suback")["codes"], json!([0x87]));
    // Other wildcards: 0xA2 (wildcard subscriptions not supported).
    let mut wild = Client::paho(&format!(
        "sub --port {mqtt_port} --v5 --password {token} --topic # --seconds 3"
    ));
    assert_eq!(wild.event("suback")["codes"], json!([0xA2]));
    // Oversized: a PUBLISH past mqtt.max_packet_bytes ends with DISCONNECT 0x95 (MQTT 5),
    // sent as soon as its fixed header arrives.
    let mut oversized = TcpStream::connect(&addr).unwrap();
    oversized.write_all(&raw_connect(5, &token)).unwrap();
    oversized.write_all(&[0x30, 0xc0, 0x3e, 0, 3]).unwrap(); // remaining length 8000
    let answer = read_to_end(&mut oversized);
    assert_eq!(answer[0], 0x20, "CONNACK first: {answer:?}");
    let disconnect = &answer[2 + answer[1] as usize..];
    assert_eq!(&disconnect[..3], [0xe0, disconnect[1], 0x95], "{answer:?}");
    // A malformed packet after CONNECT (a SUBSCRIBE whose reserved flags are 0): closed.
    let mut malformed = TcpStream::connect(&addr).unwrap();
    malformed.write_all(&raw_connect(4, &token)).unwrap();
    malformed.write_all(&[0x80, 5, 0, 1, 0, 0, 0]).unwrap();
    let answer = read_to_end(&mut malformed);
    assert_eq!(answer, [0x20, 2, 0, 0], "CONNACK, then the close");

    produce(&t, "a", "2").await;
    assert_eq!(
        good.event("message")["payload"],
        "2",
        "the good client kept streaming"
    );
}

/// A CONNECT of protocol `level` (4: 3.1.1, 5: 5.0), client id "raw", clean, with `token`
/// as password and a 30 s keep-alive: written byte by byte, as a broken client would.
fn raw_connect(level: u8, token: &str) -> Vec<u8> {
    raw_connect_keep_alive(level, token, 30)
}

fn raw_connect_keep_alive(level: u8, token: &str, keep_alive: u8) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0xc2, 0, keep_alive];
    if level == 5 {
        body.push(0); // no properties
    }
    for field in [&b"raw"[..], b"u", token.as_bytes()] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// A client that vanishes has its will produced to Kafka; one silent for 1.5 times its
/// keep-alive is disconnected (MQTT 5: 0x8D); a second connection of a persistent client
/// id takes its session over (the first gets DISCONNECT 0x8E).
#[test]
fn wills_keep_alive_and_takeover() {
    let t = topic("mqtt-will");
    let gw = Gateway::start(&[(&t, 1)], "");
    let mqtt_port = port(&gw);
    let mut device = Client::paho(&format!(
        "sub --port {mqtt_port} --topic {t}/# --seconds 60 --will {t}/dev-9={{\"online\":false}}"
    ));
    device.event("suback");
    // Killed: the socket closes without DISCONNECT.
    let _ = device.child.kill();
    let records = kafka_records(&t, 1);
    assert_eq!(
        (records[0].0.as_str(), records[0].1.as_str()),
        ("dev-9", "{\"online\":false}")
    );

    let started = Instant::now();
    let mut quiet = TcpStream::connect(format!("127.0.0.1:{mqtt_port}")).unwrap();
    quiet.write_all(&raw_connect_keep_alive(5, "-", 1)).unwrap();
    let answer = read_to_end(&mut quiet);
    assert_eq!(answer[0], 0x20, "CONNACK first: {answer:?}");
    let disconnect = &answer[2 + answer[1] as usize..];
    assert_eq!(&disconnect[..3], [0xe0, disconnect[1], 0x8d], "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let twin = |n: u8| {
        Client::paho(&format!(
            "sub --port {mqtt_port} --v5 --client-id twin --persistent --resume-only \
             --topic {t}/# --seconds {n} --exit-on-disconnect"
        ))
    };
    let mut first = twin(30);
    first.event("connack");
    let mut second = twin(2);
    assert_eq!(second.event("connack")["session_present"], true);
    assert_eq!(first.event("disconnect")["rc"], 0x8e, "session taken over");
}

/// With `[tls]`, the MQTT listener speaks TLS (mqtts): mosquitto clients that trust the
/// certificate publish and receive through it.
#[test]
fn mqtt_over_tls_with_mosquitto_clients() {
    let t = topic("mqtt-tls");
    let cert = key_file("tls-cert.pem").display().to_string();
    let gw = Gateway::start(
        &[(&t, 1)],
        &format!(
            "[tls]\ncert_file = \"{cert}\"\nkey_file = \"{}\"\n",
            key_file("tls-key.pem").display()
        ),
    );
    let mqtt_port = port(&gw);
    let tls = format!("-h localhost -p {mqtt_port} --cafile {cert}");
    let mut sub = Client::mosquitto(
        "mosquitto_sub",
        &format!("{tls} -t {t}/# -q 1 -v -C 1 -W 30"),
    );
    // mosquitto_sub prints nothing until a message: give it time to subscribe.
    std::thread::sleep(Duration::from_secs(2));
    Client::mosquitto(
        "mosquitto_pub",
        &format!("{tls} -q 1 -t {t}/sensor -m {{\"via\":\"mqtts\"}}"),
    )
    .wait();
    let line = sub.next_line(Duration::from_secs(30), |_| true);
    assert_eq!(line, format!("{t}/sensor {{\"via\":\"mqtts\"}}"));
}

/// mqtt.js (npm) in Debian's chromium, MQTT 5 over WebSocket: QoS 1 live, a persistent
/// session resumed after a disconnect, a QoS 1 publish from the browser (tests/browser/mqtt.mjs).
#[test]
fn mqtt_js_in_chromium() {
    let t = topic("mqtt-browser");
    let gw = Gateway::start(&[(&t, 1)], "");
    let base = format!("http://127.0.0.1:{}", gw.port);
    browser_checks("mqtt.mjs", &[base, t], 3);
}
