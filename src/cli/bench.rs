//! `kgate bench`: run a load scenario and print a summary table.

use std::net::IpAddr;

use crate::bench::{
    self, FanoutOptions, IdleOptions, LatencyOptions, MqttOptions, ReplayOptions, Row,
    StormOptions, TickerOptions, WireOptions,
};

/// Options of `kgate bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print the results as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The broker each scenario starts: Apache Kafka (run by `--kafka-script`) or tansu,
    /// kgate's embedded development broker.
    #[arg(long, global = true, value_enum, default_value_t = BrokerArg::Kafka)]
    broker: BrokerArg,
    /// The script that runs Apache Kafka (resolved from Maven Central on first use).
    #[arg(long, global = true, default_value = "tests/kafka/kafka")]
    kafka_script: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BrokerArg {
    Kafka,
    Tansu,
}

#[derive(Debug, clap::Subcommand)]
enum Scenario {
    /// N clients live on one channel while records are produced; deliveries/s vs a raw
    /// consumer, the kafkajs + ws bridge (benches/baseline) and nchan.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 20_000)]
        records: usize,
        /// Records for the bridge and nchan baselines [default: 2,000,000 / clients, at least 100]; 0 skips them.
        #[arg(long)]
        baseline_records: Option<usize>,
    },
    /// N clients each live on a random subset of symbol keys; deliveries/s vs a raw consumer.
    Ticker {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Symbols per client, out of 100.
        #[arg(long, default_value_t = 10)]
        symbols: usize,
        #[arg(long, default_value_t = 50_000)]
        records: usize,
    },
    /// Produce-to-receive latency percentiles of N live clients vs a raw consumer.
    Latency {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Records per second [default: half of kgate's saturation rate, measured first].
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Gateway memory per idle subscribed WebSocket connection vs nchan.
    Idle {
        #[arg(long, default_value_t = 15_000)]
        clients: usize,
        /// Load processes holding the connections, each from its own 127.0.0.x.
        #[arg(long, default_value_t = 4)]
        processes: usize,
    },
    /// MQTT fan-out at QoS 0 and QoS 1, and memory per idle MQTT connection, each vs
    /// kgate's WebSocket protocol on the same gateway.
    Mqtt {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 20_000)]
        records: usize,
        /// Idle connections of each memory run; 0 skips them.
        #[arg(long, default_value_t = 10_000)]
        idle_clients: usize,
        /// Load processes holding the idle connections.
        #[arg(long, default_value_t = 4)]
        processes: usize,
    },
    /// One client, then many, resuming far behind (Kafka tier and memory ring) vs a raw consumer.
    Replay {
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        #[arg(long, default_value_t = 10)]
        clients: usize,
    },
    /// Durable clients reconnecting at once after a gateway restart, each owed `missed` records.
    #[command(alias = "resume")]
    Storm {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        missed: usize,
    },
    /// Bytes per ticker event: JSON frames vs binary envelopes, JSON and Avro topics
    /// (run from the repository root: it reads schemas/tick.avsc); then
    /// permessage-deflate and deltas: bytes per event on the demo feeds (plain, deflate,
    /// delta, both), CPU per delivered message (plain, deflate, both) and memory per
    /// idle connection with and without deflate.
    Wire {
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        /// Clients of the CPU comparison (0 skips it).
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        /// Idle connections of the memory comparison (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        idle_clients: usize,
        /// Load processes holding the idle connections.
        #[arg(long, default_value_t = 4)]
        processes: usize,
    },
    /// Internal: the floor baseline's broadcast server (see src/bench/floor.rs).
    #[command(hide = true)]
    FloorServe {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Internal: hold idle connections for `idle` until stdin closes.
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        url: String,
        #[arg(long)]
        channel: Option<String>,
        /// Speak Centrifugo's protocol on `channel`.
        #[arg(long)]
        centrifugo: bool,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        bind: IpAddr,
        /// Negotiate permessage-deflate.
        #[arg(long)]
        deflate: bool,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    bench::choose_broker(match args.broker {
        BrokerArg::Kafka => bench::BrokerChoice::Kafka(args.kafka_script),
        BrokerArg::Tansu => bench::BrokerChoice::Tansu,
    });
    let rows: Vec<Row> = match args.scenario {
        Scenario::Fanout {
            clients,
            records,
            baseline_records,
        } => {
            let baseline_records =
                baseline_records.unwrap_or_else(|| (2_000_000 / clients.max(1)).max(100));
            bench::run_fanout(&FanoutOptions {
                clients,
                records,
                baseline_records,
            })
            .await?
        }
        Scenario::Ticker {
            clients,
            symbols,
            records,
        } => {
            bench::run_ticker(&TickerOptions {
                clients,
                symbols,
                records,
            })
            .await?
        }
        Scenario::Latency {
            clients,
            rate,
            seconds,
        } => {
            bench::run_latency(&LatencyOptions {
                clients,
                rate,
                seconds,
            })
            .await?
        }
        Scenario::Idle { clients, processes } => {
            bench::run_idle(&IdleOptions {
                clients,
                processes,
                deflate: false,
            })
            .await?
        }
        Scenario::Mqtt {
            clients,
            records,
            idle_clients,
            processes,
        } => {
            bench::run_mqtt(&MqttOptions {
                clients,
                records,
                idle_clients,
                processes,
            })
            .await?
        }
        Scenario::Replay { records, clients } => {
            bench::run_replay(&ReplayOptions { records, clients }).await?
        }
        Scenario::Storm { clients, missed } => {
            bench::run_storm(&StormOptions { clients, missed }).await?
        }
        Scenario::Wire {
            records,
            clients,
            idle_clients,
            processes,
        } => {
            bench::run_wire(&WireOptions {
                records,
                clients,
                idle_clients,
                processes,
            })
            .await?
        }
        Scenario::FloorServe { listen } => return bench::floor_serve(listen).await,
        Scenario::Hold {
            url,
            channel,
            centrifugo,
            clients,
            bind,
            deflate,
        } => {
            let how = bench::Connect {
                bind: Some(bind),
                idle: true,
                deflate,
                delta: false,
            };
            return bench::run_hold(&url, channel.as_deref(), centrifugo, clients, how).await;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        bench::print_table(&rows);
    }
    Ok(())
}
