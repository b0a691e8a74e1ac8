//! The fan-out scenario: N clients live on one channel while records are
//! produced as fast as the broker takes them; the figure is deliveries per
//! second across all clients. Baselines, with the same load client: a raw
//! rdkafka consumer reading the same records (what one Kafka reader gets), Centrifugo
//! consuming the same Kafka, the floor (a broadcast server with no Kafka; once with bare
//! records, once with kgate's event frames), the kafkajs + ws bridge, and nchan fed by
//! HTTP POST. kgate, Centrifugo and the floor also report their CPU time per delivered
//! message.

use std::future::Future;
use std::time::{Duration, Instant};

use super::baseline::{Bridge, Nchan};
use super::centrifugo::{Centrifugo, Mode};
use super::floor::{Floor, Frames};
use super::load::{Connect, LoadClient, Stop, Target, connect_many};
use super::{CpuMeter, GatewayProc, Row, produce, produce_with, progress};
use kgate::kafka::producer::Producer;

/// Options of the fan-out scenario.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// Clients on the channel.
    pub clients: usize,
    /// Records produced while they listen.
    pub records: usize,
    /// Records for the kafkajs and nchan baselines (slower, so fewer); 0 skips them.
    pub baseline_records: usize,
}

/// What the clients of one run received.
pub struct Delivery {
    /// Messages received over all clients.
    pub received: usize,
    /// Messages that should have arrived (clients × records).
    pub expected: usize,
    /// From the start of the feed to the last message received.
    pub elapsed: Duration,
    /// How long the feed took.
    pub fed: Duration,
    /// Clients that stopped before their last record.
    pub stopped: Stops,
}

/// Clients that stopped before their last record, by why.
#[derive(Debug, Default)]
pub struct Stops {
    pub closed: usize,
    pub quiet: usize,
    pub failed: usize,
    pub first_failure: Option<String>,
}

impl Stops {
    fn add(&mut self, stop: Stop) {
        match stop {
            Stop::Closed => self.closed += 1,
            Stop::Quiet => self.quiet += 1,
            Stop::Failed(why) => {
                self.failed += 1;
                self.first_failure.get_or_insert(why);
            }
        }
    }
}

impl std::fmt::Display for Stops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} clients closed by the server, {} got nothing for 15 s, {} failed",
            self.closed, self.quiet, self.failed
        )?;
        match &self.first_failure {
            Some(why) => write!(f, " (the first: {why})"),
            None => Ok(()),
        }
    }
}

impl Delivery {
    /// Messages per second over all clients.
    pub fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Microseconds of a server's CPU time (`cpu`, over this delivery) per message delivered.
    pub fn cpu_per_message(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.received.max(1) as f64
    }
}

/// Lets every client read up to `n` records while `feed` runs; a client stops
/// early when nothing arrives for 15 s (the baselines may drop messages; a kgate
/// client that fell behind may wait seconds for a Kafka reader to catch it up).
pub async fn deliver(
    clients: Vec<LoadClient>,
    n: usize,
    feed: impl Future<Output = anyhow::Result<Duration>>,
) -> anyhow::Result<Delivery> {
    deliver_each(clients.into_iter().map(|c| (c, n)).collect(), feed).await
}

/// [`deliver`] with a number of records per client.
pub async fn deliver_each(
    clients: Vec<(LoadClient, usize)>,
    feed: impl Future<Output = anyhow::Result<Duration>>,
) -> anyhow::Result<Delivery> {
    let expected = clients.iter().map(|(_, n)| n).sum();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(mut c, n)| {
            tokio::spawn(async move { c.count_up_to(n, Duration::from_secs(15)).await })
        })
        .collect();
    let started = Instant::now();
    let fed = feed.await?;
    let mut received = 0;
    let mut last = started;
    let mut stopped = Stops::default();
    for r in readers {
        let (seen, at, stop) = r.await?;
        received += seen;
        last = last.max(at.unwrap_or(started));
        stop.into_iter().for_each(|s| stopped.add(s));
    }
    Ok(Delivery {
        received,
        expected,
        elapsed: last.duration_since(started),
        fed,
        stopped,
    })
}

/// Runs the scenario; returns the summary rows.
pub async fn run_fanout(opts: &FanoutOptions) -> anyhow::Result<Vec<Row>> {
    let mut dir = tempfile::tempdir()?;
    if std::env::var_os("KGATE_BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    let (broker, bootstrap) = super::procs::broker(dir.path())?;
    let (topic, bridge_topic, centrifugo_topic) = (
        "bench-fanout",
        "bench-fanout-bridge",
        "bench-fanout-centrifugo",
    );
    let mut gw = GatewayProc::start(
        &dir.path().join("gw"),
        &bootstrap,
        &[(topic, 1), (bridge_topic, 1), (centrifugo_topic, 1)],
        "",
    )?;
    let config = super::kafka_config(&bootstrap);
    let producer = Producer::new(&config)?;
    let (n, clients) = (opts.records, opts.clients);
    let scenario = format!("fanout ({clients} clients)");
    let row = |metric: String, value: f64, unit: &str, ratio: Option<f64>| Row {
        scenario: scenario.clone(),
        metric,
        value,
        unit: unit.into(),
        ratio,
    };

    let load = connect_many(
        &Target::kgate(&gw.ws_url(), topic),
        clients,
        Connect::default(),
    )
    .await?;
    progress(format!("kgate: producing {n} records to {clients} clients"));
    let cpu = CpuMeter::start(&[gw.proc.pid(), broker.proc.pid()]);
    let kgate = deliver(load, n, produce(&producer, topic, n)).await?;
    let [kgate_cpu, broker_cpu] = cpu.used()[..] else {
        unreachable!("two processes measured")
    };
    if kgate.received != kgate.expected {
        anyhow::bail!(
            "kgate lost messages: {} of {} arrived; {}",
            kgate.received,
            kgate.expected,
            kgate.stopped
        );
    }
    gw.stop();
    let mut rows = vec![
        row(
            format!("kgate: messages delivered ({n} records)"),
            kgate.rate(),
            "msgs/s",
            None,
        ),
        row(
            "kgate: CPU per delivered message".into(),
            kgate.cpu_per_message(kgate_cpu),
            "us/msg",
            None,
        ),
        row(
            format!("{}: CPU during the kgate run", broker.kind),
            broker_cpu.as_secs_f64(),
            "s",
            None,
        ),
        row(
            "producer rate during the kgate run".into(),
            n as f64 / kgate.fed.as_secs_f64(),
            "records/s",
            None,
        ),
    ];

    progress("baseline: a raw rdkafka consumer reading the same records");
    let raw = tokio::task::spawn_blocking({
        let config = config.clone();
        move || super::replay::raw_read(&config, topic, n)
    })
    .await??;
    let raw_rate = n as f64 / raw.as_secs_f64();
    rows.push(row(
        "baseline: raw rdkafka consumer, records read".into(),
        raw_rate,
        "records/s",
        Some(kgate.rate() / raw_rate),
    ));

    // The peers that deliver every record: Centrifugo on the same Kafka, and the floor.
    let peer_rows = |name: &str, d: &Delivery, cpu: Duration| {
        let lost = d.expected - d.received;
        vec![
            row(
                format!("{name}: messages delivered ({n} records, {lost} lost)"),
                d.rate(),
                "msgs/s",
                Some(kgate.rate() / d.rate()),
            ),
            row(
                format!("{name}: CPU per delivered message"),
                d.cpu_per_message(cpu),
                "us/msg",
                Some(kgate.cpu_per_message(kgate_cpu) / d.cpu_per_message(cpu)),
            ),
        ]
    };
    if let Some(centrifugo) = Centrifugo::start_if_installed(
        &dir.path().join("centrifugo"),
        &bootstrap,
        centrifugo_topic,
        Mode::Live,
    )? {
        centrifugo
            .wait_consuming(&producer, centrifugo_topic)
            .await?;
        let load = connect_many(&centrifugo.target(), clients, Connect::default()).await?;
        progress(format!(
            "Centrifugo {}: producing {n} records to {clients} clients",
            super::centrifugo::VERSION
        ));
        let cpu = CpuMeter::start(&[centrifugo.proc.pid()]);
        let feed = produce_with(
            &producer,
            centrifugo_topic,
            n,
            Some(super::centrifugo::headers()),
        );
        let d = deliver(load, n, feed).await?;
        rows.extend(peer_rows(
            &format!("peer: Centrifugo {}", super::centrifugo::VERSION),
            &d,
            cpu.used()[0],
        ));
    }
    // The floor twice: with the bare records, then with kgate's event frames (the same
    // bytes per message as kgate), to tell the frame's size from kgate's delivery path.
    let floors = [
        (Frames::Bare, "floor", "floor: broadcast server, no Kafka"),
        (
            Frames::Event,
            "floor with kgate's event frames",
            "floor, kgate's event frames",
        ),
    ];
    for (frames, what, name) in floors {
        let mut floor = Floor::start(dir.path())?;
        let load = connect_many(&floor.target(), clients, Connect::default()).await?;
        progress(format!(
            "{what}: generating {n} records for {clients} clients"
        ));
        let cpu = CpuMeter::start(&[floor.proc.pid()]);
        let d = deliver(load, n, floor.generate_as(n, 0.0, frames)).await?;
        rows.extend(peer_rows(name, &d, cpu.used()[0]));
    }

    let bn = opts.baseline_records;
    let baseline_row = |name: &str, d: &Delivery| {
        let lost = d.expected - d.received;
        row(
            format!("baseline: {name}, messages delivered ({bn} records, {lost} lost)"),
            d.rate(),
            "msgs/s",
            Some(kgate.rate() / d.rate()),
        )
    };
    // True when the baseline cannot run here (or is turned off), saying why.
    let skipped = |name: &str, why: Option<String>| {
        match why.or_else(|| (bn == 0).then(|| "--baseline-records 0".into())) {
            Some(why) => progress(format!("skipping the {name} baseline: {why}")),
            None => return false,
        }
        true
    };
    let plain = |url: String| Target::Plain { url };

    if !skipped("kafkajs + ws bridge", Bridge::unavailable()) {
        let bridge = Bridge::start(dir.path(), &bootstrap, bridge_topic)?;
        let load = connect_many(&plain(bridge.ws_url()), clients, Connect::default()).await?;
        progress(format!(
            "kafkajs bridge: producing {bn} records to {clients} clients"
        ));
        let d = deliver(load, bn, produce(&producer, bridge_topic, bn)).await?;
        rows.push(baseline_row("kafkajs + ws bridge", &d));
    }
    if !skipped("nchan", Nchan::unavailable()) {
        let nchan = Nchan::start(&dir.path().join("nchan"))?;
        let load = connect_many(&plain(nchan.ws_url()), clients, Connect::default()).await?;
        progress(format!(
            "nchan: publishing {bn} records to {clients} clients"
        ));
        let d = deliver(load, bn, nchan.publish(bn, 2)).await?;
        rows.push(baseline_row("nchan", &d));
    }
    Ok(rows)
}
