//! Issue 3: durable sessions, resume, gap frames, and fault tests against the real broker.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use kgate::kafka::producer::Producer;
use kgate_client::{Client, Incoming};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(120);
/// The least time between two rounds of acks, as docs/protocol.md advises ("every second or so").
const ACK_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    partition: Option<i64>,
    offset: Option<i64>,
    requested: Option<i64>,
    earliest: Option<i64>,
}

/// What one durable client has seen across all its connections.
#[derive(Default)]
struct Ledger {
    /// Per partition: how many times each offset arrived.
    counts: BTreeMap<i64, Vec<u8>>,
    /// Per connection, per partition: offsets in arrival order.
    connections: Vec<BTreeMap<i64, Vec<i64>>>,
    /// Last acknowledged offset per partition, and when each ack was sent.
    acked: HashMap<i64, i64>,
    ack_log: Vec<(Instant, i64, i64)>,
    events: usize,
    gaps: Vec<(i64, i64, i64)>,
}

impl Ledger {
    fn record(&mut self, partition: i64, offset: i64) {
        let counts = self.counts.entry(partition).or_default();
        if counts.len() <= offset as usize {
            counts.resize(offset as usize + 1, 0);
        }
        counts[offset as usize] = counts[offset as usize].saturating_add(1);
        if let Some(conn) = self.connections.last_mut() {
            conn.entry(partition).or_default().push(offset);
        }
        self.events += 1;
    }

    /// True when every offset below `ends[p]` arrived at least once.
    fn complete(&self, ends: &BTreeMap<i64, i64>) -> bool {
        ends.iter().all(|(p, end)| {
            let counts = self.counts.get(p).map(Vec::as_slice).unwrap_or_default();
            counts.len() >= *end as usize && counts[..*end as usize].iter().all(|c| *c > 0)
        })
    }

    fn assert_ordered(&self) {
        for (i, conn) in self.connections.iter().enumerate() {
            for (p, offsets) in conn {
                assert!(
                    offsets.windows(2).all(|w| w[0] < w[1]),
                    "connection {i}, partition {p}: out of order or duplicate"
                );
            }
        }
    }
}

/// Acks the newest offset of each partition in `last`; false when the connection is gone.
async fn ack(
    c: &mut Client,
    topic: &str,
    ledger: &mut Ledger,
    last: &mut HashMap<i64, i64>,
) -> bool {
    for (p, o) in last.drain() {
        if c.ack(topic, p, o).await.is_err() {
            return false;
        }
        ledger.acked.insert(p, o);
        ledger.ack_log.push((Instant::now(), p, o));
    }
    true
}

/// Connects, attaches `session`, and subscribes to `topic` when `subscribe` is set.
async fn durable(
    url: &str,
    session: &str,
    topic: &str,
    subscribe: bool,
) -> Result<(Client, serde_json::Value), kgate_client::ClientError> {
    let mut c = Client::connect(url).await?;
    let attached = c.attach(session).await?;
    if subscribe {
        c.subscribe(topic, json!("latest")).await?;
        c.until("subscribed", WAIT).await?;
    }
    Ok((c, attached))
}

/// Reads events into `ledger`, acking the last offset per partition every `ack_every` events
/// but at most every [`ACK_INTERVAL`] (acks count against `limits.commands_per_sec`, and a
/// replay from Kafka delivers tens of thousands of events a second), and once more when
/// `done` holds (true); false when the connection ends first.
async fn pump(
    c: &mut Client,
    topic: &str,
    ledger: &mut Ledger,
    ack_every: usize,
    done: &(dyn Fn(&Ledger) -> bool + Sync),
) -> bool {
    let mut last: HashMap<i64, i64> = HashMap::new();
    let mut since_ack = 0;
    let mut acked_at = Instant::now();
    loop {
        if done(ledger) {
            return ack(c, topic, ledger, &mut last).await;
        }
        let text = match tokio::time::timeout(Duration::from_millis(200), c.next_text()).await {
            Err(_) => continue, // re-check `done`
            Ok(Ok(Some(text))) => text,
            Ok(_) => return false,
        };
        let f: Frame = serde_json::from_str(&text).expect("frame");
        match f.kind.as_str() {
            "event" => {
                let (p, o) = (f.partition.unwrap(), f.offset.unwrap());
                ledger.record(p, o);
                last.insert(p, o);
                since_ack += 1;
                if since_ack >= ack_every && acked_at.elapsed() >= ACK_INTERVAL {
                    since_ack = 0;
                    acked_at = Instant::now();
                    if !ack(c, topic, ledger, &mut last).await {
                        return false;
                    }
                }
            }
            "gap" => ledger.gaps.push((
                f.partition.unwrap(),
                f.requested.unwrap(),
                f.earliest.unwrap(),
            )),
            "error" => panic!("error frame: {text}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_mid_stream_and_resume_covers_every_offset() {
    let t = topic("resume");
    let gw = Gateway::start(&[(&t, 3)], "");
    let url = gw.ws_url();
    let session = format!("a-{t}");
    let (mut c, attached) = durable(&url, &session, &t, true).await.expect("connect");
    assert_eq!(attached["resumed"], false);
    let mut ledger = Ledger::default();
    ledger.connections.push(BTreeMap::new());
    let producer = producer();
    let topic2 = t.clone();
    let produced = tokio::spawn(async move {
        produce_paced(
            &producer,
            &topic2,
            3000,
            100,
            Duration::from_millis(20),
            None,
        )
        .await
    });

    assert!(pump(&mut c, &t, &mut ledger, 50, &|l| l.events >= 800).await);
    drop(c); // abrupt: no close handshake
    let acked = ledger.acked.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut c, attached) = durable(&url, &session, &t, false).await.expect("reconnect");
    assert_eq!(attached["resumed"], true);
    assert_eq!(attached["subscriptions"], json!([t]));
    ledger.connections.push(BTreeMap::new());
    let ends = produced.await.expect("producer");
    assert!(
        pump(&mut c, &t, &mut ledger, 50, &|l| l.complete(&ends)).await,
        "connection ended early"
    );
    ledger.assert_ordered();
    // The second connection starts exactly after what was acknowledged.
    for (p, offsets) in &ledger.connections[1] {
        if let Some(a) = acked.get(p) {
            assert_eq!(
                offsets[0],
                a + 1,
                "partition {p} resumed at the acknowledged position"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_sigkill_while_streaming_100k_records_to_100_durable_clients() {
    let t = topic("sigkill");
    let mut gw = Gateway::start(&[(&t, 3)], "");
    let port = gw.port;
    let url = gw.ws_url();
    let (ends_tx, ends_rx) = watch::channel::<Option<BTreeMap<i64, i64>>>(None);
    let mut clients = Vec::new();
    for i in 0..100 {
        let (url, t, ends_rx) = (url.clone(), t.clone(), ends_rx.clone());
        let session = format!("b{i}-{t}");
        let (first, _) = durable(&url, &session, &t, true).await.expect("connect");
        clients.push(tokio::spawn(async move {
            let mut ledger = Ledger::default();
            let mut conn = Some(first);
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => loop {
                        assert!(Instant::now() < deadline, "{session}: cannot reconnect");
                        match durable(&url, &session, &t, false).await {
                            Ok((c, _)) => break c,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    },
                };
                ledger.connections.push(BTreeMap::new());
                let ends = ends_rx.clone();
                let done = move |l: &Ledger| ends.borrow().as_ref().is_some_and(|e| l.complete(e));
                if pump(&mut c, &t, &mut ledger, 500, &done).await {
                    return ledger;
                }
            }
        }));
    }
    let (progress_tx, mut progress_rx) = watch::channel(0usize);
    let producer = producer();
    let t2 = t.clone();
    let produced = tokio::spawn(async move {
        produce_paced(
            &producer,
            &t2,
            100_000,
            1000,
            Duration::from_millis(5),
            Some(progress_tx),
        )
        .await
    });
    while *progress_rx.borrow() < 30_000 {
        progress_rx.changed().await.expect("producer alive");
    }
    let killed_at = Instant::now();
    gw.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.restart();
    assert_eq!(gw.port, port);
    let ends = produced.await.expect("producer");
    assert_eq!(ends.values().sum::<i64>(), 100_000);
    ends_tx.send(Some(ends.clone())).expect("clients alive");
    let mut duplicates = 0usize;
    for client in clients {
        let ledger = tokio::time::timeout(Duration::from_secs(600), client)
            .await
            .expect("client finished")
            .expect("client");
        assert!(ledger.complete(&ends));
        ledger.assert_ordered();
        // Duplicates only from the unacknowledged window: at or after the last ack that was
        // surely committed (sent a second before the kill; commits run every 20 ms).
        let mut floor: HashMap<i64, i64> = HashMap::new();
        for (at, p, o) in &ledger.ack_log {
            if *at + Duration::from_secs(1) < killed_at {
                floor.insert(*p, *o + 1);
            }
        }
        for (p, counts) in &ledger.counts {
            for (o, n) in counts.iter().enumerate() {
                if *n > 1 {
                    duplicates += 1;
                    assert!(
                        o as i64 >= floor.get(p).copied().unwrap_or(0),
                        "partition {p} offset {o} delivered twice below the acked position"
                    );
                }
            }
        }
    }
    eprintln!(
        "sigkill test: 100 clients × 100000 records, {duplicates} duplicate deliveries (all from unacked windows)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_broker_restart_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port_pair());
    let mut broker = spawn_broker(&addr, dir.path());
    let t = topic("brokerrestart");
    let gw = Gateway::start_on(&addr, &[(&t, 3)], "");
    let mut config = client_config();
    config.kafka.bootstrap_servers = addr.clone();
    let producer = Producer::new(&config).expect("producer");
    let (mut c, _) = durable(&gw.ws_url(), &format!("c-{t}"), &t, true)
        .await
        .expect("connect");
    let (progress_tx, mut progress_rx) = watch::channel(0usize);
    let t2 = t.clone();
    let produced = tokio::spawn(async move {
        produce_paced(
            &producer,
            &t2,
            3000,
            50,
            Duration::from_millis(20),
            Some(progress_tx),
        )
        .await
    });
    while *progress_rx.borrow() < 1000 {
        progress_rx.changed().await.expect("producer alive");
    }
    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _broker = spawn_broker(&addr, dir.path());
    let ends = tokio::time::timeout(WAIT, produced)
        .await
        .expect("producer finished")
        .expect("producer");
    let mut ledger = Ledger::default();
    ledger.connections.push(BTreeMap::new());
    let done = |l: &Ledger| l.complete(&ends);
    assert!(
        tokio::time::timeout(WAIT, pump(&mut c, &t, &mut ledger, 100, &done))
            .await
            .expect("all records within the wait"),
        "connection ended"
    );
    ledger.assert_ordered();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_thousand_durable_clients_resume_at_once_after_restart() {
    let t = topic("storm");
    let mut gw = Gateway::start(&[(&t, 3)], "");
    let url = gw.ws_url();
    let producer = producer();
    let mut conns = Vec::new();
    for chunk in 0..10 {
        let connects = (0..100).map(|i| {
            let session = format!("d{}-{t}", chunk * 100 + i);
            let (url, t) = (url.clone(), t.clone());
            async move { durable(&url, &session, &t, true).await.expect("connect").0 }
        });
        conns.extend(futures_util::future::join_all(connects).await);
    }
    let first = produce_paced(&producer, &t, 500, 500, Duration::ZERO, None).await;
    // Every client reads and acknowledges the first 500.
    let reads = conns.into_iter().map(|mut c| {
        let (t, first) = (t.clone(), first.clone());
        tokio::spawn(async move {
            let mut ledger = Ledger::default();
            ledger.connections.push(BTreeMap::new());
            assert!(pump(&mut c, &t, &mut ledger, 50, &|l| l.complete(&first)).await);
            tokio::time::sleep(Duration::from_millis(100)).await; // let the acks commit
            ledger
        })
    });
    let ledgers: Vec<Ledger> = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .map(|r| r.expect("reader"))
        .collect();
    gw.terminate();
    let ends = produce_paced(&producer, &t, 500, 500, Duration::ZERO, None).await;
    gw.restart();
    let started = Instant::now();
    let resumes = ledgers.into_iter().enumerate().map(|(i, mut ledger)| {
        let (url, t, ends) = (url.clone(), t.clone(), ends.clone());
        tokio::spawn(async move {
            let (mut c, attached) = durable(&url, &format!("d{i}-{t}"), &t, false)
                .await
                .expect("reconnect");
            assert_eq!(attached["subscriptions"], json!([t]));
            ledger.connections.push(BTreeMap::new());
            assert!(pump(&mut c, &t, &mut ledger, 1000, &|l| l.complete(&ends)).await);
            ledger
        })
    });
    let ledgers: Vec<Ledger> = tokio::time::timeout(
        Duration::from_secs(300),
        futures_util::future::join_all(resumes),
    )
    .await
    .expect("all resumed")
    .into_iter()
    .map(|r| r.expect("resume"))
    .collect();
    let elapsed = started.elapsed();
    for ledger in &ledgers {
        ledger.assert_ordered();
        // Everything before the restart was acknowledged: no duplicates at all.
        assert!(
            ledger.counts.values().flatten().all(|n| *n == 1),
            "duplicate after a clean restart"
        );
    }
    eprintln!("1000 durable clients resumed 500 missed records each in {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_resume_before_the_retained_range_gets_a_gap_frame() {
    let aging = AgingTopic::create("gap").await;
    let t = aging.name.clone();
    let mut gw = Gateway::start(&[(&t, 1)], "");
    let url = gw.ws_url();
    let session = format!("e-{t}");
    // The session starts at offset 0 and goes away before reading anything.
    let mut c = Client::connect(&url).await.unwrap();
    c.attach(&session).await.unwrap();
    c.subscribe(&t, json!({"offsets": {"0": 0}})).await.unwrap();
    c.until("subscribed", WAIT).await.unwrap();
    c.close().await;

    // Five records an hour old (past retention), then five new ones.
    for i in 0..10 {
        if i == 5 {
            // The new records go into a later segment than the old ones.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let age = match i < 5 {
            true => AgingTopic::EXPIRED,
            false => Duration::ZERO,
        };
        aging.send(None, &format!("{{\"i\":{i}}}"), age).await;
    }
    aging.wait_deleted_below(5).await;
    // A restart empties the memory ring, which would still serve the deleted records.
    gw.restart();

    let (mut c, _) = durable(&url, &session, &t, false).await.unwrap();
    let mut ledger = Ledger::default();
    ledger.connections.push(BTreeMap::new());
    let done = |l: &Ledger| {
        (5..10).all(|o| {
            l.counts
                .get(&0)
                .is_some_and(|c| c.get(o).is_some_and(|n| *n > 0))
        })
    };
    assert!(pump(&mut c, &t, &mut ledger, 100, &done).await);
    assert_eq!(
        ledger.gaps,
        vec![(0, 0, 5)],
        "a gap frame names the lost range"
    );
    assert_eq!(ledger.connections[0][&0], (5..10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_shown_deleted_and_expire() {
    let t = topic("admin");
    let mut gw = Gateway::start(&[(&t, 2)], "[sessions]\nttl_secs = 2\n");
    let url = gw.ws_url();
    let base = format!("http://127.0.0.1:{}", gw.port);
    let (keep, _) = durable(&url, "keeper", &t, true).await.unwrap();
    let (gone, _) = durable(&url, "leaver", &t, true).await.unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(kgate_bin())
            .arg("sessions")
            .args(args)
            .output()
            .expect("run sessions");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = cli(&["list", "--url", &base]);
    assert!(
        ok && out.contains("keeper") && out.contains("leaver"),
        "{out}"
    );
    let (ok, out) = cli(&["show", "keeper", "--url", &base]);
    assert!(ok, "{out}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["subscriptions"][0]["channel"], t.as_str());
    assert_eq!(
        shown["subscriptions"][0]["positions"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(shown["attached"], true);
    // An idle, detached session expires; an attached one does not.
    gone.close().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out) = cli(&["list", "--url", &base]);
        if !out.contains("leaver") {
            assert!(out.contains("keeper"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "session did not expire: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, out) = cli(&["show", "nobody", "--url", &base]);
    assert!(!ok && out.contains("session_not_found"), "{out}");
    // Offline access to a stopped gateway's store.
    drop(keep);
    gw.terminate();
    let data = gw.dir.path().join("data").display().to_string();
    let (ok, out) = cli(&["delete", "keeper", "--data-dir", &data]);
    assert!(ok && out.contains("deleted"), "{out}");
    let (ok, out) = cli(&["list", "--data-dir", &data]);
    assert!(ok && !out.contains("keeper"), "{out}");
}

/// Issue 16.4: deleting an attached session closes its connection with 4010, and the
/// connection's last writes as it ends do not bring the session back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_session_stays_deleted() {
    let t = topic("delsession");
    let gw = Gateway::start(&[(&t, 1)], "");
    let url = gw.ws_url();
    let (mut c, _) = durable(&url, "doomed", &t, true).await.unwrap();
    let port = gw.port;
    let deleted = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let status = |r: Result<http::Response<ureq::Body>, ureq::Error>| {
            r.map(|r| r.status().as_u16()).unwrap_or(0)
        };
        let session = format!("http://127.0.0.1:{port}/v1/admin/sessions/doomed");
        let delete = status(agent.delete(&session).call());
        // Give the closing connection time for whatever it writes as it ends.
        std::thread::sleep(Duration::from_millis(500));
        (delete, status(agent.get(&session).call()))
    })
    .await
    .unwrap();
    loop {
        match c.next_within(WAIT).await.expect("close") {
            Incoming::Closed(close) => {
                assert_eq!(close.map(|c| c.0), Some(4010));
                break;
            }
            Incoming::Frame(_) => {}
        }
    }
    assert_eq!(deleted, (200, 404), "deleted, then gone");
    let (_, attached) = durable(&url, "doomed", &t, false).await.unwrap();
    assert_eq!(attached["resumed"], false, "{attached}");
    assert_eq!(attached["subscriptions"], json!([]), "{attached}");
}
