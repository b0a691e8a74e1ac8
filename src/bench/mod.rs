//! `kgate bench`: load scenarios that start their own broker and gateways and
//! measure kgate against a baseline in the same run.

mod fanout;
mod procs;
mod replay;
mod resume;
mod wire;

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use crate::client::Client;
use crate::kafka::producer::Producer;

pub use fanout::{FanoutOptions, run_fanout};
pub use procs::{GatewayProc, Proc};
pub use replay::{ReplayOptions, run_replay};
pub use resume::{ResumeOptions, run_resume};
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
    println!(
        "{:<28} {:<44} {:>14} {:<10} {:>8}",
        "scenario", "metric", "value", "unit", "ratio"
    );
    for r in rows {
        let ratio = r.ratio.map_or(String::new(), |x| format!("{x:.2}"));
        println!(
            "{:<28} {:<44} {:>14.1} {:<10} {:>8}",
            r.scenario, r.metric, r.value, r.unit, ratio
        );
    }
}

/// Progress on stderr, so `--json` output stays clean.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

/// Produces `n` ~100-byte JSON records to `topic` (keys cycle over 100 symbols), reporting progress.
pub async fn produce(producer: &Producer, topic: &str, n: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut sent = 0;
    let mut last_report = Instant::now();
    while sent < n {
        let size = 10_000.min(n - sent);
        let sends = (sent..sent + size).map(|i| {
            let key = format!("SYM{:03}", i % 100);
            let body = format!(r#"{{"seq":{i},"symbol":"{key}","price":{:.2},"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#, 100.0 + (i % 997) as f64 / 10.0);
            async move { producer.send(topic, Some(key.as_bytes()), Some(body.as_bytes()), None).await }
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

/// A durable client for the resume scenario: attaches, optionally subscribes.
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
