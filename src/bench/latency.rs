//! The latency scenario: records stamped at produce time, sent at a steady
//! rate (by default half of kgate's saturation rate, measured first) to N live
//! clients; the figure is produce-to-receive time. The baseline is a raw
//! rdkafka consumer reading the same records at the same time, with the same
//! fetch settings: kgate's added latency is the difference. Centrifugo (on the same
//! Kafka) and the floor (a broadcast server generating the records itself) then serve
//! the same clients at the same rate; each server's CPU per delivered message is
//! measured over its run.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::centrifugo::{self, Centrifugo, Mode};
use super::fanout::deliver;
use super::floor::Floor;
use super::load::{Connect, LoadClient, Target, connect_many, now_us, timestamp_us};
use super::{CpuMeter, GatewayProc, Row, bench_record, produce, progress};
use kgate::config::Config;
use kgate::kafka::producer::Producer;

/// Options of the latency scenario.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Live clients.
    pub clients: usize,
    /// Records per second; `None` measures saturation first and uses half of it.
    pub rate: Option<f64>,
    /// How long records are produced.
    pub seconds: u64,
}

/// Microseconds, 1 µs to 60 s, three significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Runs the scenario; returns the summary rows.
pub async fn run_latency(opts: &LatencyOptions) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let (_broker, bootstrap) = super::procs::broker(dir.path())?;
    let (topic, peer_topic) = ("bench-latency", "bench-latency-centrifugo");
    let gw = GatewayProc::start(
        &dir.path().join("gw"),
        &bootstrap,
        &[(topic, 1), (peer_topic, 1)],
        "",
    )?;
    let config = super::kafka_config(&bootstrap);
    // 1 ms of batching: the test broker cannot take thousands of single-record requests a second.
    let producer = Producer::with_linger(&config, 1)?;
    let target = Target::kgate(&gw.ws_url(), topic);
    let clients = opts.clients;

    let rate = match opts.rate {
        Some(rate) => rate,
        None => {
            let n = (10_000_000 / clients.max(1)).clamp(1_000, 50_000);
            progress(format!(
                "measuring saturation: {n} records to {clients} clients"
            ));
            let load = connect_many(&target, clients, Connect::default()).await?;
            let saturated = deliver(load, n, produce(&producer, topic, n)).await?;
            let half = saturated.rate() / 2.0 / clients as f64;
            progress(format!(
                "saturation {:.0} msgs/s; measuring latency at half: {half:.0} records/s",
                saturated.rate()
            ));
            half
        }
    };
    let total = ((rate * opts.seconds as f64) as usize).max(1);

    let start = {
        let consumer: BaseConsumer = kgate::kafka::consumer_config(&config, "bench-wm").create()?;
        consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))?
            .1
    };
    let raw = tokio::task::spawn_blocking({
        let config = config.clone();
        move || raw_latencies(&config, topic, start, total)
    });
    let load = connect_many(&target, clients, Connect::default()).await?;
    progress(format!(
        "kgate: producing {total} records at {rate:.0}/s for {} s",
        opts.seconds
    ));
    let feed = produce_paced(&producer, topic, rate, total, None);
    let (kgate, kgate_cpu) = latencies(load, total, feed, gw.proc.pid()).await?;
    let raw = raw.await??;
    if kgate.len() != (total * clients) as u64 {
        anyhow::bail!(
            "kgate clients got {} of {} records",
            kgate.len(),
            total * clients
        );
    }

    let scenario = format!("latency ({clients} clients)");
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut rows = vec![Row {
        scenario: scenario.clone(),
        metric: format!("rate: {rate:.0} records/s to each client"),
        value: rate * clients as f64,
        unit: "msgs/s".into(),
        ratio: None,
    }];
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        rows.push(Row {
            scenario: scenario.clone(),
            metric: format!("baseline: raw rdkafka consumer {name}"),
            value: ms(&raw, q),
            unit: "ms".into(),
            ratio: None,
        });
        rows.push(Row {
            scenario: scenario.clone(),
            metric: format!("kgate client {name}"),
            value: ms(&kgate, q),
            unit: "ms".into(),
            ratio: Some(ms(&kgate, q) / ms(&raw, q).max(0.001)),
        });
    }
    rows.push(Row {
        scenario: scenario.clone(),
        metric: "gateway-added p99 (kgate p99 - raw p99)".into(),
        value: ms(&kgate, 0.99) - ms(&raw, 0.99),
        unit: "ms".into(),
        ratio: None,
    });
    let per_message =
        |h: &Histogram<u64>, cpu: Duration| cpu.as_secs_f64() * 1e6 / h.len().max(1) as f64;
    let kgate_cpu = per_message(&kgate, kgate_cpu);
    rows.push(Row {
        scenario: scenario.clone(),
        metric: "kgate: CPU per delivered message".into(),
        value: kgate_cpu,
        unit: "us/msg".into(),
        ratio: None,
    });
    // The peers, with the same clients and rate: Centrifugo on the same Kafka, the floor.
    let mut peer_rows = |name: &str, h: &Histogram<u64>, cpu: Duration| {
        let lost = (total * clients) as u64 - h.len();
        for (q_name, q) in [("p50", 0.5), ("p99", 0.99)] {
            rows.push(Row {
                scenario: scenario.clone(),
                metric: format!("{name} client {q_name} ({lost} lost)"),
                value: ms(h, q),
                unit: "ms".into(),
                ratio: Some(ms(&kgate, q) / ms(h, q).max(0.001)),
            });
        }
        rows.push(Row {
            scenario: scenario.clone(),
            metric: format!("{name}: CPU per delivered message"),
            value: per_message(h, cpu),
            unit: "us/msg".into(),
            ratio: Some(kgate_cpu / per_message(h, cpu).max(1e-9)),
        });
    };
    if let Some(centrifugo) = Centrifugo::start_if_installed(
        &dir.path().join("centrifugo"),
        &bootstrap,
        peer_topic,
        Mode::Live,
    )? {
        centrifugo.wait_consuming(&producer, peer_topic).await?;
        let load = connect_many(&centrifugo.target(), clients, Connect::default()).await?;
        progress(format!(
            "Centrifugo: producing {total} records at {rate:.0}/s"
        ));
        let feed = produce_paced(
            &producer,
            peer_topic,
            rate,
            total,
            Some(centrifugo::headers()),
        );
        let (h, cpu) = latencies(load, total, feed, centrifugo.proc.pid()).await?;
        peer_rows(
            &format!("peer: Centrifugo {}", centrifugo::VERSION),
            &h,
            cpu,
        );
    }
    let mut floor = Floor::start(dir.path())?;
    let load = connect_many(&floor.target(), clients, Connect::default()).await?;
    progress(format!("floor: generating {total} records at {rate:.0}/s"));
    let pid = floor.proc.pid();
    let feed = async { floor.generate(total, rate).await.map(|_| ()) };
    let (h, cpu) = latencies(load, total, feed, pid).await?;
    peer_rows("floor: broadcast server, no Kafka", &h, cpu);
    Ok(rows)
}

/// Every client's produce-to-receive times while `feed` sends `total` records, and the
/// CPU process `pid` used meanwhile.
async fn latencies(
    clients: Vec<LoadClient>,
    total: usize,
    feed: impl std::future::Future<Output = anyhow::Result<()>>,
    pid: u32,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let readers: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(client_latencies(c, total)))
        .collect();
    let cpu = CpuMeter::start(&[pid]);
    feed.await?;
    let mut all = histogram()?;
    for r in readers {
        all.add(r.await??)?;
    }
    Ok((all, cpu.used()[0]))
}

/// Produces `total` stamped records at `rate` per second without waiting for each acknowledgement.
async fn produce_paced(
    producer: &Producer,
    topic: &str,
    rate: f64,
    total: usize,
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut pending = Vec::with_capacity(total);
    let mut last_report = Instant::now();
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        for i in sent..due {
            let (key, body) = bench_record(i, now_us());
            let (producer, topic, headers) = (producer.clone(), topic.to_string(), headers.clone());
            pending.push(tokio::spawn(async move {
                producer
                    .send(&topic, Some(key.as_bytes()), Some(body.as_bytes()), headers)
                    .await
            }));
        }
        sent = due;
        if last_report.elapsed() > Duration::from_secs(2) {
            progress(format!("produced {sent}/{total}"));
            last_report = Instant::now();
        }
    }
    for p in pending {
        p.await??;
    }
    Ok(())
}

/// One client's produce-to-receive times for `n` records.
async fn client_latencies(mut client: LoadClient, n: usize) -> anyhow::Result<Histogram<u64>> {
    let mut h = histogram()?;
    for _ in 0..n {
        let wait = tokio::time::timeout(Duration::from_secs(10), client.next_record()).await;
        let Ok(Ok(Some(text))) = wait else { break };
        if let Some(ts) = timestamp_us(&text) {
            h.saturating_record(now_us().saturating_sub(ts).max(1));
        }
    }
    Ok(h)
}

/// A raw consumer's produce-to-receive times for `n` records from offset `start`.
fn raw_latencies(
    config: &Config,
    topic: &str,
    start: i64,
    n: usize,
) -> anyhow::Result<Histogram<u64>> {
    let consumer: BaseConsumer = kgate::kafka::consumer_config(config, "bench-raw").create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let mut h = histogram()?;
    while (h.len() as usize) < n {
        match consumer.poll(Duration::from_secs(30)) {
            Some(Ok(m)) => {
                let ts = m
                    .payload()
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(timestamp_us);
                if let Some(ts) = ts {
                    h.saturating_record(now_us().saturating_sub(ts).max(1));
                }
            }
            Some(Err(e)) => anyhow::bail!("raw consumer: {e}"),
            None => anyhow::bail!("raw consumer stalled after {} of {n}", h.len()),
        }
    }
    Ok(h)
}
