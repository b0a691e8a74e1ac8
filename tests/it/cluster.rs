//! Issue 10: several gateway nodes on one broker sharing durable sessions
//! through a compacted positions topic. Real processes, killed for real.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kgate_client::{Client, Incoming};
use serde_json::json;
use tokio::sync::watch;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(120);

fn node_config(positions: &str, node: &str) -> String {
    format!("[cluster]\npositions_topic = \"{positions}\"\nnode_id = \"{node}\"\n")
}

/// A durable client that reads and acks, reconnecting `stride` nodes further on when its
/// connection ends, until it holds every offset below the ends it is given.
async fn durable_reader(
    urls: Vec<String>,
    first: usize,
    stride: usize,
    session: String,
    topic: String,
    ends: watch::Receiver<Option<BTreeMap<i64, i64>>>,
) -> (BTreeMap<i64, BTreeSet<i64>>, Vec<String>) {
    let mut seen: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    let mut node = first;
    // The node id each connection's welcome frame named, in order.
    let mut visited: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let complete = |seen: &BTreeMap<i64, BTreeSet<i64>>| {
        ends.borrow().as_ref().is_some_and(|e| {
            e.iter()
                .all(|(p, end)| seen.get(p).map_or(0, |s| s.range(..end).count()) == *end as usize)
        })
    };
    loop {
        assert!(
            Instant::now() < deadline,
            "{session}: incomplete after 600 s"
        );
        let mut c = match Client::connect(&urls[node]).await {
            Ok(c) => c,
            Err(_) => {
                node = (node + stride) % urls.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(attached) = c.attach(&session).await else {
            node = (node + stride) % urls.len();
            continue;
        };
        visited.push(c.node.clone());
        if visited.len() == 1 {
            c.subscribe(&topic, json!("latest"))
                .await
                .expect("subscribe");
        } else {
            // The node it reached knew the session, with its subscription, from the topic.
            assert_eq!(
                attached["resumed"], true,
                "{session}: not resumed on node {node}: {attached}"
            );
            assert_eq!(attached["subscriptions"], json!([topic]), "{session}");
        }
        let mut last: BTreeMap<i64, i64> = BTreeMap::new();
        let mut since_ack = 0;
        loop {
            if complete(&seen) {
                return (seen, visited);
            }
            let text = match tokio::time::timeout(Duration::from_millis(200), c.next_text()).await {
                Err(_) => continue,
                Ok(Ok(Some(text))) => text,
                Ok(_) => break,
            };
            let f: serde_json::Value = serde_json::from_str(&text).expect("frame");
            if f["type"] == "event" {
                let (p, o) = (
                    f["partition"].as_i64().unwrap(),
                    f["offset"].as_i64().unwrap(),
                );
                seen.entry(p).or_default().insert(o);
                last.insert(p, o);
                since_ack += 1;
                // Acks are commands (rate limited): one per partition every 300 events.
                if since_ack >= 300 {
                    since_ack = 0;
                    for (p, o) in std::mem::take(&mut last) {
                        let _ = c.ack(&topic, p, o).await;
                    }
                }
            }
        }
        node = (node + stride) % urls.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_rolling_restart_and_a_fresh_node_lose_nothing() {
    let t = topic("cluster");
    let positions = topic("positions");
    let mut nodes: Vec<Gateway> = ["a", "b", "c"]
        .iter()
        .map(|n| Gateway::start(&[(&t, 3)], &node_config(&positions, n)))
        .collect();
    let urls: Vec<String> = nodes.iter().map(Gateway::ws_url).collect();
    let (ends_tx, ends_rx) = watch::channel(None);
    let clients: Vec<_> = (0..30)
        .map(|i| {
            // Node a's clients split between b (stride 1) and c (stride 2).
            tokio::spawn(durable_reader(
                urls.clone(),
                i % 3,
                1 + (i / 3) % 2,
                format!("c{i}-{t}"),
                t.clone(),
                ends_rx.clone(),
            ))
        })
        .collect();
    // Every client subscribed before records flow (each reads from `latest`).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (progress_tx, progress) = watch::channel(0);
    let t2 = t.clone();
    let produced = tokio::spawn(async move {
        let producer = producer();
        produce_paced(
            &producer,
            &t2,
            30_000,
            500,
            Duration::from_millis(20),
            Some(progress_tx),
        )
        .await
    });
    let wait_for = |n: usize| {
        let mut p = progress.clone();
        async move {
            while *p.borrow() < n {
                p.changed().await.expect("producer alive");
            }
        }
    };
    wait_for(6_000).await;
    // Node a dies without a word; its ten clients move to b and c.
    nodes[0].kill();
    eprintln!("cluster test: node a killed at 6,000 records");
    wait_for(12_000).await;
    // Rolling restart: a comes back, then b and c each stop (SIGTERM) and start again.
    nodes[0].restart();
    for i in [1, 2] {
        wait_for(12_000 + 6_000 * i).await;
        nodes[i].terminate();
        tokio::time::sleep(Duration::from_millis(500)).await;
        nodes[i].restart();
        eprintln!("cluster test: node {i} restarted");
    }
    let ends = produced.await.expect("producer");
    ends_tx.send(Some(ends.clone())).expect("clients alive");
    let mut moved = 0;
    let mut from_a = BTreeSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let (seen, visited) = tokio::time::timeout(WAIT * 5, client)
            .await
            .expect("client finished")
            .expect("client");
        for (p, end) in &ends {
            assert_eq!(seen[p].range(..end).count(), *end as usize, "partition {p}");
        }
        moved += usize::from(visited.len() > 1);
        if i % 3 == 0 {
            assert_eq!(visited[0], "a");
            from_a.insert(visited[1].clone());
        }
    }
    assert_eq!(moved, 30, "every client was moved at least once");
    assert_eq!(
        from_a,
        BTreeSet::from(["b".to_string(), "c".to_string()]),
        "node a's clients went to b and c"
    );
    eprintln!(
        "cluster test: 30 clients, 30,000 records, SIGKILL and a rolling restart of 3 nodes: every offset arrived"
    );

    // A node that never saw these sessions learns them all from the topic.
    let d = Gateway::start(&[(&t, 3)], &node_config(&positions, "d"));
    d.wait_log("session positions caught up", Duration::from_secs(60));
    for i in 0..30 {
        let mut c = Client::connect(&d.ws_url()).await.expect("connect");
        let attached = c.attach(&format!("c{i}-{t}")).await.expect("attach");
        assert_eq!(
            attached["resumed"], true,
            "session c{i} unknown on the fresh node"
        );
        assert_eq!(attached["subscriptions"], json!([t]));
    }
    eprintln!("cluster test: a fresh node resumed all 30 sessions from the positions topic");

    // Drain: d tells its clients to reconnect elsewhere and stops being ready.
    let mut c = Client::connect(&d.ws_url()).await.expect("connect");
    assert_eq!(c.node, "d", "the welcome frame names the node");
    let url = format!("http://127.0.0.1:{}/v1/admin/drain", d.port);
    let reply: serde_json::Value = ureq::post(&url)
        .send_empty()
        .expect("drain")
        .body_mut()
        .read_json()
        .expect("drain reply");
    assert_eq!(reply["node"], "d");
    match c
        .next_within(Duration::from_secs(10))
        .await
        .expect("close frame")
    {
        Incoming::Closed(Some((code, _))) => {
            assert_eq!(code, 1001, "going away: reconnect elsewhere")
        }
        other => panic!("expected close 1001, got {other:?}"),
    }
    let (status, body) = http_get(d.port, "/readyz").expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""not_draining":false"#), "{body}");
    eprintln!("cluster test: drained node d closed its client with 1001 and answers /readyz 503");
}

/// Issue 16.8: nodes started at the same moment on a cluster that lacks their topics all
/// come up: a topic another node just created counts as created.
#[test]
fn nodes_started_together_create_topics_without_failing() {
    for round in 0..4 {
        let t = topic("together");
        let positions = topic("together-positions");
        let starts: Vec<_> = ["x", "y"]
            .into_iter()
            .map(|node| {
                let (t, config) = (t.clone(), node_config(&positions, node));
                std::thread::spawn(move || Gateway::start(&[(&t, 2)], &config))
            })
            .collect();
        for (start, node) in starts.into_iter().zip(["x", "y"]) {
            assert!(
                start.join().is_ok(),
                "round {round}: node {node} did not start (its log is above)"
            );
        }
    }
}

/// Issue 18: Kafka compacts the positions topic. Sessions that rewrite their positions
/// many times leave, once the cleaner has run, about one record per session key when
/// the topic is read from its start. (tansu does not compact: Kafka only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_compacts_the_positions_topic() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    if broker_kind() != BrokerKind::Kafka {
        eprintln!("kafka_compacts_the_positions_topic: runs with KGATE_TEST_BROKER=kafka");
        return;
    }
    let (t, positions) = (topic("compacted-data"), topic("compacted-positions"));
    // The gateway keeps a positions topic it finds; this one is cleaned eagerly.
    let admin: AdminClient<DefaultClientContext> =
        kgate::kafka::client_config(&client_config(), "test-admin")
            .create()
            .expect("admin");
    let spec = NewTopic::new(&positions, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("segment.ms", "200")
        .set("delete.retention.ms", "100");
    admin
        .create_topics(&[spec], &AdminOptions::new())
        .await
        .expect("create the positions topic");
    let gw = Gateway::start(&[(&t, 1)], &node_config(&positions, "compact-1"));
    let rounds = 40;
    produce_paced(&producer(), &t, rounds, rounds, Duration::ZERO, None).await;

    // 10 sessions, each acknowledging one more record per round.
    let sessions = 10;
    let mut clients = Vec::new();
    for s in 0..sessions {
        let mut c = Client::connect(&gw.ws_url()).await.expect("connect");
        c.attach(&format!("compact-{s}")).await.expect("attach");
        c.subscribe(&t, json!("earliest")).await.expect("subscribe");
        c.until("subscribed", WAIT).await.expect("subscribed");
        clients.push(c);
    }
    for offset in 0..rounds as i64 {
        for c in &mut clients {
            c.ack(&t, 0, offset).await.expect("ack");
        }
        // Past the store's commit interval: each round is its own write.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for c in clients {
        c.close().await;
    }

    let count_from_start = || {
        let consumer: BaseConsumer =
            kgate::kafka::consumer_config(&client_config(), "test-compaction")
                .create()
                .expect("consumer");
        let (_, high) = consumer
            .fetch_watermarks(&positions, 0, Duration::from_secs(10))
            .expect("watermarks");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&positions, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&tpl).expect("assign");
        let mut count = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    count += 1;
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                Some(Err(e)) => panic!("reading {positions}: {e}"),
                None => {}
            }
        }
        (count, high)
    };
    let (before, written) = count_from_start();
    assert!(
        written >= (sessions * rounds / 2) as i64,
        "the sessions rewrote their positions many times: {written} records written"
    );
    // Each session has two keys (its record and its partition position).
    let bound = sessions * 2 + 20;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // A later write rolls the active segment, which the cleaner never touches.
        let mut c = Client::connect(&gw.ws_url()).await.expect("connect");
        c.attach("compact-roll").await.expect("attach");
        c.close().await;
        let (now, written) = count_from_start();
        eprintln!(
            "positions topic: {written} records written, {now} left from the start (was {before})"
        );
        if now <= bound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Kafka did not compact {positions}: {now} records from the start, more than {bound}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
