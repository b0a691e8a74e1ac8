//! The ticker scenario: N clients, each live on a random subset of symbol keys
//! (`topic:SYMxxx` channels), while records cycling over the symbols are
//! produced as fast as the broker takes them; the figure is deliveries per
//! second. The baseline is a raw rdkafka consumer reading the same records.

use rand::seq::index::sample;

use super::fanout::deliver_each;
use super::load::{Connect, Target, connect_each};
use super::{GatewayProc, Row, SYMBOLS, produce, progress};
use kgate::kafka::producer::Producer;

/// Options of the ticker scenario.
#[derive(Debug, Clone)]
pub struct TickerOptions {
    /// Clients.
    pub clients: usize,
    /// Symbols each client follows, chosen at random among 100.
    pub symbols: usize,
    /// Records produced while they listen.
    pub records: usize,
}

/// Runs the scenario; returns the summary rows.
pub async fn run_ticker(opts: &TickerOptions) -> anyhow::Result<Vec<Row>> {
    if opts.symbols == 0 || opts.symbols > SYMBOLS {
        anyhow::bail!(
            "--symbols must be between 1 and {SYMBOLS}, not {}",
            opts.symbols
        );
    }
    let dir = tempfile::tempdir()?;
    let (_broker, bootstrap) = super::procs::broker(dir.path())?;
    let topic = "bench-ticker";
    let gw = GatewayProc::start(&dir.path().join("gw"), &bootstrap, &[(topic, 3)], "")?;
    let config = super::kafka_config(&bootstrap);
    let producer = Producer::new(&config)?;
    let n = opts.records;
    let url = gw.ws_url();
    let mut rng = rand::rng();
    // Record i has key SYM(i % 100): a symbol gets n / 100 records, the first n % 100 one more.
    let per_symbol = |s: usize| n / SYMBOLS + usize::from(s < n % SYMBOLS);
    let mut targets = Vec::with_capacity(opts.clients);
    let mut expected = Vec::with_capacity(opts.clients);
    for _ in 0..opts.clients {
        let symbols = sample(&mut rng, SYMBOLS, opts.symbols);
        expected.push(symbols.iter().map(per_symbol).sum::<usize>());
        targets.push(Target::Kgate {
            url: url.clone(),
            channels: symbols
                .iter()
                .map(|s| format!("{topic}:SYM{s:03}"))
                .collect(),
        });
    }
    let load = connect_each(&targets, Connect::default()).await?;
    progress(format!(
        "producing {n} records over {SYMBOLS} symbols to {} clients on {} symbols each",
        opts.clients, opts.symbols
    ));
    let d = deliver_each(
        load.into_iter().zip(expected).collect(),
        produce(&producer, topic, n),
    )
    .await?;
    if d.received != d.expected {
        anyhow::bail!(
            "kgate lost messages: {} of {} arrived; {}",
            d.received,
            d.expected,
            d.stopped
        );
    }
    progress("baseline: a raw rdkafka consumer reading the same records");
    let raw = tokio::task::spawn_blocking({
        let config = config.clone();
        move || super::replay::raw_read_all(&config, topic, 3, n)
    })
    .await??;
    let raw_rate = n as f64 / raw.as_secs_f64();
    let scenario = format!(
        "ticker ({} clients x {} symbols)",
        opts.clients, opts.symbols
    );
    Ok(vec![
        Row {
            scenario: scenario.clone(),
            metric: format!("kgate: messages delivered ({} in all)", d.received),
            value: d.rate(),
            unit: "msgs/s".into(),
            ratio: None,
        },
        Row {
            scenario,
            metric: "baseline: raw rdkafka consumer, records read".into(),
            value: raw_rate,
            unit: "records/s".into(),
            ratio: Some(d.rate() / raw_rate),
        },
    ])
}
