//! The fan-out scenario: N clients live on one channel while records are
//! produced as fast as the broker takes them; the figure is deliveries per
//! second across all clients. The baseline is a raw rdkafka consumer reading
//! the same records (what one Kafka reader gets: the ceiling of ingest).

use std::time::{Duration, Instant};

use serde_json::json;

use super::{GatewayProc, Row, produce, progress};
use crate::client::Client;
use crate::config::Config;
use crate::kafka::producer::Producer;

/// Options of the fan-out scenario.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// Clients on the channel.
    pub clients: usize,
    /// Records produced while they listen.
    pub records: usize,
}

/// Runs the scenario; returns the summary rows.
pub async fn run_fanout(opts: &FanoutOptions) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let (_broker, bootstrap) = super::procs::broker(dir.path())?;
    let topic = "bench-fanout";
    let gw = GatewayProc::start(&dir.path().join("gw"), &bootstrap, &[(topic, 1)], "")?;
    let mut config = Config::default();
    config.kafka.bootstrap_servers = bootstrap;
    config.kafka.fetch_wait_max_ms = 5;
    let producer = Producer::new(&config)?;
    let url = gw.ws_url();
    progress(format!("connecting {} clients to {topic}", opts.clients));
    let mut clients = Vec::with_capacity(opts.clients);
    for chunk in (0..opts.clients).collect::<Vec<_>>().chunks(250) {
        let connects = chunk.iter().map(|_| {
            let url = url.clone();
            async move {
                let mut c = Client::connect(&url).await?;
                c.subscribe(topic, json!("latest")).await?;
                c.until("live", Duration::from_secs(60)).await?;
                anyhow::Ok(c)
            }
        });
        for c in futures_util::future::join_all(connects).await {
            clients.push(c?);
        }
    }
    let n = opts.records;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut seen = 0;
                while seen < n {
                    match c.next_text().await? {
                        Some(text) if text.starts_with(r#"{"type":"event""#) => seen += 1,
                        Some(_) => {}
                        None => anyhow::bail!("closed after {seen} of {n} events"),
                    }
                }
                anyhow::Ok(Instant::now())
            })
        })
        .collect();
    progress(format!("producing {n} records"));
    let started = Instant::now();
    produce(&producer, topic, n).await?;
    let produced = started.elapsed();
    let mut last = started;
    for r in readers {
        last = last.max(r.await??);
    }
    let elapsed = last.duration_since(started).as_secs_f64();
    let delivered = (opts.clients * n) as f64 / elapsed;
    progress("baseline: a raw rdkafka consumer reading the same records");
    let raw = tokio::task::spawn_blocking({
        let config = config.clone();
        move || super::replay::raw_read(&config, topic, n)
    })
    .await??;
    let raw_rate = n as f64 / raw.as_secs_f64();
    let scenario = format!("fanout ({} clients)", opts.clients);
    Ok(vec![
        Row {
            scenario: scenario.clone(),
            metric: "raw rdkafka consumer, records read (baseline)".into(),
            value: raw_rate,
            unit: "records/s".into(),
            ratio: Some(1.0),
        },
        Row {
            scenario: scenario.clone(),
            metric: format!("producer rate ({n} records)"),
            value: n as f64 / produced.as_secs_f64(),
            unit: "records/s".into(),
            ratio: None,
        },
        Row {
            scenario,
            metric: "messages delivered, all clients".into(),
            value: delivered,
            unit: "msgs/s".into(),
            ratio: Some(delivered / raw_rate),
        },
    ])
}
