//! The replay scenario: one client (and then many) resuming far behind, from
//! Kafka and from the memory ring, against a raw rdkafka consumer.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use super::procs::CpuMeter;
use super::{GatewayProc, Row, produce, progress, read_n};
use kgate::config::Config;
use kgate::kafka::producer::Producer;

/// Options of the replay scenario.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Records behind.
    pub records: usize,
    /// Concurrent clients for the many-clients run.
    pub clients: usize,
}

/// Runs the scenario; returns the summary rows.
pub async fn run_replay(opts: &ReplayOptions) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let (broker, bootstrap) = super::procs::broker(dir.path())?;
    progress(format!("broker on {bootstrap}"));
    let topic = "bench-replay";
    // Gateway A serves replays from Kafka (no ring); B keeps every record in memory.
    let a = GatewayProc::start(
        &dir.path().join("a"),
        &bootstrap,
        &[(topic, 1)],
        "[replay]\nring_bytes_per_partition = 0\n",
    )?;
    let b = GatewayProc::start(
        &dir.path().join("b"),
        &bootstrap,
        &[(topic, 1)],
        "[replay]\nring_bytes_per_partition = 2147483648\n",
    )?;
    let config = super::kafka_config(&bootstrap);
    let producer = Producer::new(&config)?;
    produce(&producer, topic, opts.records).await?;
    // Let gateway B's ingest take everything into its ring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let n = opts.records;
    // CPU per record read, in microseconds, of each process measured (this process is the
    // raw consumer, then the load client): the rates move with the shared machine's load.
    let per_record = |meter: CpuMeter| -> Vec<f64> {
        let to_us = |d: &Duration| d.as_secs_f64() * 1e6 / n as f64;
        meter.used().iter().map(to_us).collect()
    };
    let bench = std::process::id();
    progress("baseline: raw rdkafka consumer from offset 0");
    let meter = CpuMeter::start(&[bench, broker.proc.pid()]);
    let raw = tokio::task::spawn_blocking({
        let config = config.clone();
        move || raw_read(&config, topic, n)
    })
    .await??;
    let raw_rate = n as f64 / raw.as_secs_f64();
    let [raw_cpu, raw_broker_cpu] = per_record(meter)[..] else {
        unreachable!("two processes measured")
    };

    progress("kgate, Kafka tier: one client from earliest");
    let meter = CpuMeter::start(&[a.proc.pid(), bench, broker.proc.pid()]);
    let kafka = read_n(&a.ws_url(), topic, json!("earliest"), n).await?;
    let kafka_rate = n as f64 / kafka.as_secs_f64();
    let [kgate_cpu, client_cpu, kgate_broker_cpu] = per_record(meter)[..] else {
        unreachable!("three processes measured")
    };

    progress("kgate, memory tier: one client from offset 0");
    let memory = read_n(&b.ws_url(), topic, json!({"offsets": {"0": 0}}), n).await?;
    let memory_rate = n as f64 / memory.as_secs_f64();

    progress(format!(
        "kgate, Kafka tier: {} clients from earliest at once",
        opts.clients
    ));
    let started = Instant::now();
    let url = a.ws_url();
    let many = (0..opts.clients).map(|_| read_n(&url, topic, json!("earliest"), n));
    for r in futures_util::future::join_all(many).await {
        r?;
    }
    let many_rate = (n * opts.clients) as f64 / started.elapsed().as_secs_f64();

    let row = |metric: &str, value: f64, ratio: Option<f64>| Row {
        scenario: format!("replay ({n} behind)"),
        metric: metric.into(),
        value,
        unit: "records/s".into(),
        ratio,
    };
    let cpu_row = |metric: &str, value: f64, ratio: Option<f64>| Row {
        unit: "us/record".into(),
        ..row(metric, value, ratio)
    };
    Ok(vec![
        row("raw rdkafka consumer (baseline)", raw_rate, None),
        row(
            "kgate 1 client, Kafka tier",
            kafka_rate,
            Some(kafka_rate / raw_rate),
        ),
        cpu_row("raw rdkafka consumer: CPU per record", raw_cpu, None),
        cpu_row(
            "kgate 1 client, Kafka tier: gateway CPU per record",
            kgate_cpu,
            Some(kgate_cpu / raw_cpu),
        ),
        cpu_row(
            "kgate 1 client, Kafka tier: load client CPU per record",
            client_cpu,
            None,
        ),
        cpu_row(
            "broker CPU per record: raw consumer's read",
            raw_broker_cpu,
            None,
        ),
        cpu_row(
            "broker CPU per record: kgate's Kafka-tier read",
            kgate_broker_cpu,
            Some(kgate_broker_cpu / raw_broker_cpu),
        ),
        row(
            "kgate 1 client, memory ring",
            memory_rate,
            Some(memory_rate / raw_rate),
        ),
        row(
            &format!("kgate {} clients, Kafka tier (total)", opts.clients),
            many_rate,
            Some(many_rate / raw_rate),
        ),
    ])
}

/// Reads `n` records of partition 0 from offset 0 with a plain consumer; returns the time taken.
pub(super) fn raw_read(config: &Config, topic: &str, n: usize) -> anyhow::Result<Duration> {
    raw_read_all(config, topic, 1, n)
}

/// Reads `n` records of `partitions` partitions from offset 0; returns the time taken.
pub(super) fn raw_read_all(
    config: &Config,
    topic: &str,
    partitions: i32,
    n: usize,
) -> anyhow::Result<Duration> {
    let consumer: BaseConsumer = kgate::kafka::consumer_config(config, "bench-raw").create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))?;
    }
    let started = Instant::now();
    consumer.assign(&tpl)?;
    let mut seen = 0;
    while seen < n {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => seen += 1,
            Some(Err(e)) => anyhow::bail!("raw consumer: {e}"),
            None => anyhow::bail!("raw consumer stalled after {seen} of {n}"),
        }
    }
    Ok(started.elapsed())
}
