//! `kgate demo`: produce demo ticker and telemetry records.

use std::time::Duration;

use anyhow::Context;

use super::ConfigArgs;
use crate::demo::DemoOptions;
use kgate::kafka::producer::Producer;

/// Options of `kgate demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Price updates per second per symbol (20 symbols).
    #[arg(long, default_value_t = 4.0)]
    ticks_per_symbol: f64,
    /// Number of telemetry devices.
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Readings per second per device.
    #[arg(long, default_value_t = 1.0)]
    readings_per_device: f64,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    duration_secs: Option<u64>,
    /// The devices publish their readings over MQTT to this gateway listener
    /// (`mqtt.listen`, plain TCP) instead of producing to Kafka.
    #[arg(long, value_name = "HOST:PORT")]
    mqtt: Option<std::net::SocketAddr>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config.load_clientless()?;
    kgate::logging::init(&config.log);
    if !(args.ticks_per_symbol > 0.0 && args.readings_per_device > 0.0) {
        anyhow::bail!("--ticks-per-symbol and --readings-per-device must be positive");
    }
    let producer = Producer::new(&config).context("cannot create the producer")?;
    let options = DemoOptions {
        ticks_per_symbol: args.ticks_per_symbol,
        devices: args.devices,
        readings_per_device: args.readings_per_device,
        duration: args.duration_secs.map(Duration::from_secs),
        mqtt: args.mqtt,
        ..DemoOptions::default()
    };
    eprintln!(
        "kgate demo: producing to {} and {} on {} (Ctrl-C to stop)",
        options.ticker_topic,
        options.telemetry_topic,
        config.bootstrap_servers()
    );
    let produced = tokio::select! {
        r = crate::demo::run(producer, options) => r.context("producing demo data")?,
        _ = super::termination() => 0,
    };
    eprintln!("kgate demo: produced {produced} records");
    Ok(())
}
