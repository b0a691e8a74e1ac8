//! `kgate bench`: load scenarios that start their own broker and gateways and
//! measure kgate against a baseline in the same run.

mod baseline;
mod centrifugo;
mod fanout;
mod floor;
mod idle;
mod latency;
mod load;
mod mqtt;
mod procs;
mod replay;
mod storm;
mod ticker;
mod wire;

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use kgate::kafka::producer::Producer;
use kgate_client::Client;

pub use fanout::{FanoutOptions, run_fanout};
pub use floor::serve as floor_serve;
pub use idle::{IdleOptions, run_hold, run_idle};
pub use latency::{LatencyOptions, run_latency};
pub use load::Connect;
pub use mqtt::{MqttOptions, run_mqtt};
pub use procs::{BrokerChoice, CpuMeter, GatewayProc, choose_broker};
pub use replay::{ReplayOptions, run_replay};
pub use storm::{StormOptions, run_storm};
pub use ticker::{TickerOptions, run_ticker};
pub use wire::{WireOptions, run_wire};

/// One line of a summary table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    /// kgate's figure divided by the baseline's, where there is a baseline.
    pub ratio: Option<f64>,
}

/// Prints rows as an aligned table.
pub fn print_table(rows: &[Row]) {
    let s = rows
        .iter()
        .map(|r| r.scenario.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let m = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!(
        "{:<s$}  {:<m$}  {:>14}  {:<10}  {:>8}",
        "scenario", "metric", "value", "unit", "ratio"
    );
    for r in rows {
        let ratio = r.ratio.map_or(String::new(), |x| format!("{x:.2}"));
        println!(
            "{:<s$}  {:<m$}  {:>14.2}  {:<10}  {:>8}",
            r.scenario, r.metric, r.value, r.unit, ratio
        );
    }
}

/// Settings for the bench's own Kafka clients (producers, the raw consumer) on `bootstrap`,
/// with the same fetch wait the gateways get.
pub fn kafka_config(bootstrap: &str) -> kgate::config::Config {
    let mut config = kgate::config::Config::default();
    config.kafka.bootstrap_servers = bootstrap.to_string();
    config.kafka.fetch_wait_max_ms = procs::fetch_wait_max_ms();
    config
}

/// Progress on stderr, so `--json` output stays clean.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

/// Symbols the bench records' keys cycle over.
pub const SYMBOLS: usize = 100;

/// The key and 100-byte JSON value of bench record `i`, stamped with `ts_us` (see [`load::timestamp_us`]).
pub fn bench_record(i: usize, ts_us: u64) -> (String, String) {
    let key = format!("SYM{:03}", i % SYMBOLS);
    let mut body = format!(
        r#"{{"seq":{i},"symbol":"{key}","price":{:.2},"ts_us":{ts_us},"pad":""#,
        100.0 + (i % 997) as f64 / 10.0
    );
    body.push_str(&"x".repeat(98usize.saturating_sub(body.len())));
    body.push_str(r#""}"#);
    (key, body)
}

/// Produces `n` 100-byte JSON records to `topic` (keys cycle over 100 symbols), reporting progress.
pub async fn produce(producer: &Producer, topic: &str, n: usize) -> anyhow::Result<Duration> {
    produce_with(producer, topic, n, None).await
}

/// [`produce`], each record carrying `headers`.
pub async fn produce_with(
    producer: &Producer,
    topic: &str,
    n: usize,
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> anyhow::Result<Duration> {
    produce_each(producer, topic, n, headers, |i| {
        bench_record(i, load::now_us())
    })
    .await
}

/// Produces `n` records to `topic`, record `i` being `record(i)` (key, value).
pub async fn produce_each(
    producer: &Producer,
    topic: &str,
    n: usize,
    headers: Option<rdkafka::message::OwnedHeaders>,
    record: impl Fn(usize) -> (String, String),
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut sent = 0;
    let mut last_report = Instant::now();
    while sent < n {
        let size = 10_000.min(n - sent);
        let sends = (sent..sent + size).map(|i| {
            let (key, body) = record(i);
            let headers = headers.clone();
            async move {
                producer
                    .send(topic, Some(key.as_bytes()), Some(body.as_bytes()), headers)
                    .await
            }
        });
        for r in futures_util::future::join_all(sends).await {
            r?;
        }
        sent += size;
        if last_report.elapsed() > Duration::from_secs(2) || sent == n {
            progress(format!("produced {sent}/{n} records to {topic}"));
            last_report = Instant::now();
        }
    }
    Ok(started.elapsed())
}

#[derive(Deserialize)]
struct EventPosition {
    #[serde(rename = "type")]
    kind: String,
    partition: Option<i64>,
    offset: Option<i64>,
}

/// Subscribes and reads `n` events; returns the time from subscribe to the n-th event.
pub async fn read_n(
    url: &str,
    channel: &str,
    from: serde_json::Value,
    n: usize,
) -> anyhow::Result<Duration> {
    let mut client = Client::connect(url).await?;
    let started = Instant::now();
    client.subscribe(channel, from).await?;
    let mut seen = 0;
    while seen < n {
        match client.next_text().await? {
            Some(text) if text.starts_with(r#"{"type":"event""#) => seen += 1,
            Some(_) => {}
            None => anyhow::bail!("connection closed after {seen} of {n} events"),
        }
    }
    Ok(started.elapsed())
}

/// A durable client for the storm scenario: attaches, optionally subscribes.
pub async fn durable(
    url: &str,
    session: &str,
    channel: &str,
    subscribe: bool,
) -> anyhow::Result<Client> {
    let mut client = Client::connect(url).await?;
    client.attach(session).await?;
    if subscribe {
        client.subscribe(channel, json!("latest")).await?;
        client.until("subscribed", Duration::from_secs(60)).await?;
    }
    Ok(client)
}

/// Reads until `n` events arrived, acking each partition's last offset at the end.
pub async fn read_and_ack(client: &mut Client, topic: &str, n: usize) -> anyhow::Result<()> {
    let mut last = std::collections::HashMap::new();
    let mut seen = 0;
    while seen < n {
        let Some(text) = client.next_text().await? else {
            anyhow::bail!("connection closed after {seen} of {n} events");
        };
        let f: EventPosition = serde_json::from_str(&text)?;
        if f.kind == "event" {
            seen += 1;
            if let (Some(p), Some(o)) = (f.partition, f.offset) {
                last.insert(p, o);
            }
        }
    }
    for (p, o) in last {
        client.ack(topic, p, o).await?;
    }
    Ok(())
}
